"""CMR readers (datasets/sources/acdc.py, ukb_cmr.py) on raw layouts built from real packaged files.

ACDC: nibabel's test volume example4d.nii.gz (a real 4-D MR series, 128 x 96 x 24 slices x 2 frames;
not cardiac) saved as patientNNN_frameXX.nii.gz 3-D volumes with Info.cfg files of our making.
UK Biobank: pydicom's MR_small.dcm (a real 64 x 64 MR slice) copied with edited SliceLocation /
ImagePositionPatient / TriggerTime / InstanceNumber into short-axis cine series. Nothing downloaded.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from datasets.sources import BadRecord, source_class
from datasets.sources.acdc import ACDCSource
from datasets.sources.ukb_cmr import UKBCMRSource

EXAMPLE4D = Path(importlib.util.find_spec("nibabel").submodule_search_locations[0]) / "tests/data/example4d.nii.gz"
MR_SMALL = get_testdata_file("MR_small.dcm")


def options(source_cls, *argv):
    parser = argparse.ArgumentParser()
    source_cls.add_arguments(parser)
    return parser.parse_args(list(argv))


# ---------------------------------------------------------------- ACDC

@pytest.fixture(scope="module")
def cine():
    """example4d's voxels: (128, 96, 24 slices, 2 frames) int16, and its affine."""
    image = nib.load(EXAMPLE4D)
    return np.asarray(image.dataobj), image.affine


def write_patient(root, part, patient, info, frames, affine):
    """One ACDC patient folder: Info.cfg from ``info`` lines and {frame number: H x W x S volume}."""
    folder = root / part / patient
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("".join(line + "\n" for line in info))
    for number, volume in frames.items():
        nib.save(nib.Nifti1Image(volume, affine), folder / f"{patient}_frame{number:02d}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def acdc_raw(tmp_path_factory, cine):
    vol, affine = cine
    root = tmp_path_factory.mktemp("acdc")
    p1 = write_patient(root, "training", "patient001",
                       ["ED: 1", "ES: 2", "Group: DCM", "Height: 184.0", "NbFrame: 2", "Weight: 95.0"],
                       {1: vol[..., 0], 2: vol[..., 1]}, affine)
    # segmentation and whole-cine files sit beside the frames and must not become records
    nib.save(nib.Nifti1Image((vol[..., 0] > 300).astype(np.uint8), affine), p1 / "patient001_frame01_gt.nii.gz")
    nib.save(nib.Nifti1Image(vol, affine), p1 / "patient001_4d.nii.gz")
    # ED is frame 2 here: the phase must follow Info.cfg, not file order; 9 slices, other voxel size
    write_patient(root, "training", "patient002",
                  ["ED: 2", "ES: 1", "Group: HCM", "Height: 170.0", "NbFrame: 2", "Weight: 70.0"],
                  {1: vol[:, :, :9, 0], 2: vol[:, :, :9, 1]}, np.diag([1.5, 1.25, 10.0, 1.0]))
    write_patient(root, "testing", "patient101",
                  ["ED: 1", "ES: 2", "Group: NOR", "Height: 160.0", "NbFrame: 2", "Weight: 60.0"],
                  {1: vol[..., 0], 2: vol[..., 1]}, affine)
    return root


def test_acdc_index_lists_the_mid_ed_slice_of_each_patient_with_group_and_official_test_split(acdc_raw):
    source = ACDCSource(acdc_raw, options(ACDCSource))
    refs = source.index()
    assert [r.record_id for r in refs] == ["patient001_ed_s12", "patient002_ed_s04", "patient101_ed_s12"]
    assert [r.patient_id for r in refs] == ["patient001", "patient002", "patient101"]
    assert [r.labels for r in refs] == ["DCM", "HCM", "NOR"]
    assert [r.split for r in refs] == [None, None, "test"]
    assert source.task_type == "multiclass"
    assert source.label_names == ["NOR", "MINF", "DCM", "HCM", "RV"]
    assert source.index_problems == []
    assert refs[0].extra["height_cm"] == 184.0 and refs[0].extra["n_slices"] == 24
    assert source_class("acdc") is ACDCSource


def test_acdc_read_returns_the_info_cfg_frame_and_middle_slice_with_header_pixel_spacing(acdc_raw, cine):
    vol, _ = cine
    source = ACDCSource(acdc_raw, options(ACDCSource))
    images = {r.record_id: source.read(r) for r in source.index()}
    first = images["patient001_ed_s12"]
    assert first.data.shape == (128, 96) and first.data.dtype == np.float32
    np.testing.assert_array_equal(first.data, vol[:, :, 12, 0])
    assert first.pixel_spacing == pytest.approx((2.0, 2.0))
    # patient002's ED is frame02, i.e. example4d's second frame; 9 slices -> slice 4
    np.testing.assert_array_equal(images["patient002_ed_s04"].data, vol[:, :, 4, 1])
    assert images["patient002_ed_s04"].pixel_spacing == pytest.approx((1.5, 1.25))
    assert "ED frame 2, slice 5 of 9" == images["patient002_ed_s04"].note


def test_acdc_both_frames_and_all_slices_give_one_record_per_phase_and_slice(acdc_raw, cine):
    vol, _ = cine
    source = ACDCSource(acdc_raw, options(ACDCSource, "--frames", "both", "--slices", "all"))
    refs = {r.record_id: r for r in source.index()}
    assert len(refs) == 2 * (24 + 9 + 24)
    np.testing.assert_array_equal(source.read(refs["patient001_es_s03"]).data, vol[:, :, 3, 1])
    np.testing.assert_array_equal(source.read(refs["patient002_es_s08"]).data, vol[:, :, 8, 0])
    es_only = ACDCSource(acdc_raw, options(ACDCSource, "--frames", "es")).index()
    assert [r.record_id for r in es_only] == ["patient001_es_s12", "patient002_es_s04", "patient101_es_s12"]


def test_acdc_labels_none_gives_unlabelled_records_and_accepts_info_without_group(tmp_path, cine):
    vol, affine = cine
    write_patient(tmp_path, "training", "patient007", ["ED: 1", "ES: 2"], {1: vol[..., 0], 2: vol[..., 1]}, affine)
    source = ACDCSource(tmp_path, options(ACDCSource, "--labels", "none"))
    refs = source.index()
    assert [(r.record_id, r.labels) for r in refs] == [("patient007_ed_s12", None)]
    assert source.task_type is None and source.label_names == [] and source.index_problems == []


def test_acdc_info_cfg_without_group_or_with_an_unknown_group_goes_to_index_problems(tmp_path, cine):
    vol, affine = cine
    frames = {1: vol[..., 0], 2: vol[..., 1]}
    write_patient(tmp_path, "training", "patient003", ["ED: 1", "ES: 2", "Height: 150.0"], frames, affine)
    write_patient(tmp_path, "training", "patient004", ["ED: 1", "ES: 2", "Group: XYZ"], frames, affine)
    write_patient(tmp_path, "training", "patient005", ["ED: 1", "ES: 2", "Group: MINF"], frames, affine)
    (tmp_path / "training" / "patient006").mkdir()  # no Info.cfg at all
    source = ACDCSource(tmp_path, options(ACDCSource))
    assert [r.record_id for r in source.index()] == ["patient005_ed_s12"]
    problems = dict(source.index_problems)
    assert set(problems) == {"patient003", "patient004", "patient006"}
    assert "no Group" in problems["patient003"]
    assert "unknown Group 'XYZ'" in problems["patient004"]
    assert "Info.cfg unreadable" in problems["patient006"]


def test_acdc_missing_frame_or_unreadable_header_goes_to_index_problems(tmp_path, cine):
    vol, affine = cine
    folder = write_patient(tmp_path, "training", "patient008", ["ED: 1", "ES: 2", "Group: RV"],
                           {1: vol[..., 0]}, affine)  # the ES file is absent
    write_patient(tmp_path, "training", "patient009", ["ED: 1", "ES: x", "Group: RV"], {1: vol[..., 0]}, affine)
    source = ACDCSource(tmp_path, options(ACDCSource, "--frames", "both"))
    assert [r.record_id for r in source.index()] == ["patient008_ed_s12", "patient009_ed_s12"]
    problems = dict(source.index_problems)
    assert "patient008_frame02.nii.gz (ES frame) is missing" in problems["patient008_es"]
    assert "not a frame number" in problems["patient009_es"]
    # a file cut inside its header cannot even be indexed
    (folder / "patient008_frame01.nii.gz").write_bytes((folder / "patient008_frame01.nii.gz").read_bytes()[:12])
    source.index()
    assert "unreadable NIfTI header" in dict(source.index_problems)["patient008_ed"]


def test_acdc_truncated_volume_is_indexed_from_its_header_and_raises_bad_record_on_read(tmp_path, cine):
    vol, affine = cine
    folder = write_patient(tmp_path, "training", "patient010", ["ED: 1", "ES: 2", "Group: NOR"],
                           {1: vol[..., 0], 2: vol[..., 1]}, affine)
    path = folder / "patient010_frame01.nii.gz"
    # keep the header and a little voxel data: a download cut short
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[:2000])
    source = ACDCSource(tmp_path, options(ACDCSource))
    (ref,) = source.index()
    with pytest.raises(BadRecord, match="patient010_frame01.nii.gz: unreadable NIfTI data"):
        source.read(ref)


def test_acdc_slice_index_beyond_the_volume_or_a_vanished_file_raises_bad_record(acdc_raw, tmp_path):
    source = ACDCSource(acdc_raw, options(ACDCSource))
    ref = source.index()[0]
    ref.location = (ref.location[0], 99)
    with pytest.raises(BadRecord, match="slice 99 out of range"):
        source.read(ref)
    ref.location = (str(tmp_path / "gone.nii.gz"), 0)
    with pytest.raises(BadRecord, match="missing"):
        source.read(ref)


def test_acdc_index_reads_no_voxel_data(acdc_raw, monkeypatch):
    def no_voxels(*args, **kwargs):
        raise AssertionError("index() read voxel data")
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__getitem__", no_voxels)
    monkeypatch.setattr(nib.Nifti1Image, "get_fdata", no_voxels)
    source = ACDCSource(acdc_raw, options(ACDCSource, "--frames", "both", "--slices", "all"))
    assert len(source.index()) == 114


def test_acdc_reader_and_refs_pickle_for_worker_processes(acdc_raw, cine):
    source = ACDCSource(acdc_raw, options(ACDCSource))
    refs = source.index()
    clone, clone_refs = pickle.loads(pickle.dumps((source, refs)))
    np.testing.assert_array_equal(clone.read(clone_refs[2]).data, cine[0][:, :, 12, 0])


def test_acdc_accepts_the_database_folder_or_its_parent_and_rejects_bad_option_values(acdc_raw, tmp_path):
    (tmp_path / "database").symlink_to(acdc_raw, target_is_directory=True)
    assert len(ACDCSource(tmp_path, options(ACDCSource)).index()) == 3
    with pytest.raises(ValueError, match="--slices"):
        ACDCSource(acdc_raw, argparse.Namespace(frames="ed", slices="base", labels="group"))
    with pytest.raises(FileNotFoundError):
        ACDCSource(tmp_path / "empty", options(ACDCSource)).index()


# ---------------------------------------------------------------- UK Biobank short-axis DICOM

def write_dicom(path, pixels, **fields):
    """MR_small.dcm with ``pixels`` as its image and header ``fields`` set (None deletes a field)."""
    ds = pydicom.dcmread(MR_SMALL)
    for name, value in fields.items():
        if value is None:
            if name in ds:
                delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.PixelData = pixels.astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)


@pytest.fixture(scope="module")
def ukb(tmp_path_factory):
    """Raw folder and {(folder, slice k, frame j): the pixels written there}."""
    root = tmp_path_factory.mktemp("ukb")
    base = pydicom.dcmread(MR_SMALL).pixel_array.astype(np.int16)
    expected = {}

    # 1234567: SliceLocation on every file; written out of order, InstanceNumber against time order,
    # so only the slice position and TriggerTime can put them right
    folder = root / "1234567_20209_2_0"
    locations = [30.0, -10.0, 10.0]              # sorted: -10 (s00), 10 (s01, the middle), 30 (s02)
    times = [450.0, 35.0]                        # the ED frame is the second written
    name = 0
    for loc in locations:
        for t_slot, t in enumerate(times):
            k, j = sorted(locations).index(loc), sorted(times).index(t)
            pixels = base + 10 * (3 * k + j)
            fields = dict(SliceLocation=loc, ImagePositionPatient=[-83.9, -91.2, loc], TriggerTime=t,
                          InstanceNumber=1 + name, SeriesNumber=20 + k)
            if (k, j) == (1, 0):
                fields.update(RescaleSlope=2, RescaleIntercept=-5, PixelSpacing=[1.8, 1.9])
            write_dicom(folder / f"img{name:03d}.dcm", pixels, **fields)
            expected[(folder.name, k, j)] = pixels
            name += 1
    (folder / "broken.dcm").write_bytes(b"this is not DICOM " * 20)
    (folder / "manifest.csv").write_text("filename,series discription\n")

    # 7654321: no SliceLocation; oblique planes whose raw z order differs from their order along
    # the normal; no TriggerTime, so frames go by InstanceNumber; files in a sub-folder
    folder = root / "7654321_20209_3_0"
    angle = np.deg2rad(30.0)
    row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(angle), np.sin(angle)])
    normal = np.cross(row, col)
    for k, (depth, shift) in enumerate([(0.0, 40.0), (8.0, 0.0), (16.0, -40.0)]):
        position = depth * normal + shift * col + [5.0 * k, 0.0, 0.0]
        for j, instance in enumerate([3, 7]):
            pixels = base + 100 + 10 * (3 * k + j)
            write_dicom(folder / "CINE_segmented_SAX" / f"{2 - k}_{1 - j}.dcm", pixels, SliceLocation=None,
                        TriggerTime=None, ImageOrientationPatient=[*row, *col],
                        ImagePositionPatient=[float(v) for v in position], InstanceNumber=instance)
            expected[(folder.name, k, j)] = pixels

    # 2222222: one slice acquired twice (series 5, then series 9): the later one is kept
    folder = root / "2222222_20209_2_0"
    for series in (5, 9):
        for j, t in enumerate([20.0, 300.0]):
            pixels = base + series * 10 + j
            write_dicom(folder / f"s{series}_{j}.dcm", pixels, SliceLocation=0.0, TriggerTime=t,
                        SeriesNumber=series, SeriesInstanceUID=f"1.2.826.0.1.3680043.9.{series}")
            if series == 9:
                expected[(folder.name, 0, j)] = pixels

    # 3333333: the header is whole, the pixel data cut short
    folder = root / "3333333_20209_2_0"
    write_dicom(folder / "cut.dcm", base, TriggerTime=0.0)
    data = (folder / "cut.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(data[:-3000])
    return root, expected


def test_ukb_index_picks_the_middle_slice_ed_frame_of_each_subject_visit(ukb):
    root, _ = ukb
    source = UKBCMRSource(root, options(UKBCMRSource))
    refs = source.index()
    assert [r.record_id for r in refs] == ["1234567_20209_2_0_s01_f00", "2222222_20209_2_0_s00_f00",
                                           "3333333_20209_2_0_s00_f00", "7654321_20209_3_0_s01_f00"]
    assert [r.patient_id for r in refs] == ["1234567", "2222222", "3333333", "7654321"]
    assert all(r.labels is None and r.split is None for r in refs)
    assert source.task_type is None and source.label_names == []
    assert refs[0].extra["n_slices"] == 3 and refs[0].extra["n_frames"] == 2
    assert refs[0].extra["slice_position_mm"] == 10.0 and refs[0].extra["trigger_time_ms"] == 35.0
    assert source_class("ukb_cmr") is UKBCMRSource


def test_ukb_unreadable_dicom_file_goes_to_index_problems_with_its_reason(ukb):
    root, _ = ukb
    source = UKBCMRSource(root, options(UKBCMRSource))
    source.index()
    problems = dict(source.index_problems)
    assert list(problems) == ["1234567_20209_2_0/broken.dcm"]  # manifest.csv is not a DICOM candidate
    assert "unreadable DICOM header (InvalidDicomError" in problems["1234567_20209_2_0/broken.dcm"]


def test_ukb_read_returns_the_ed_frame_by_trigger_time_with_rescale_and_pixel_spacing_applied(ukb):
    root, expected = ukb
    source = UKBCMRSource(root, options(UKBCMRSource))
    image = source.read(source.index()[0])
    assert image.data.shape == (64, 64) and image.data.dtype == np.float32
    np.testing.assert_array_equal(image.data, expected[("1234567_20209_2_0", 1, 0)] * 2.0 - 5.0)
    assert image.pixel_spacing == pytest.approx([1.8, 1.9])
    assert image.note == "slice 2 of 3, frame 1 of 2 (trigger time 35 ms)"


def test_ukb_without_slice_location_orders_slices_along_the_normal_and_frames_by_instance_number(ukb):
    root, expected = ukb
    source = UKBCMRSource(root, options(UKBCMRSource, "--slices", "all", "--frames", "all"))
    refs = {r.record_id: r for r in source.index() if r.patient_id == "7654321"}
    assert sorted(refs) == [f"7654321_20209_3_0_s{k:02d}_f{j:02d}" for k in range(3) for j in range(2)]
    assert [refs[f"7654321_20209_3_0_s{k:02d}_f00"].extra["slice_position_mm"] for k in range(3)] \
        == pytest.approx([0.0, 8.0, 16.0])
    for record_id, ref in refs.items():
        k, j = ref.extra["slice"], ref.extra["frame"]
        np.testing.assert_array_equal(source.read(ref).data, expected[("7654321_20209_3_0", k, j)])
        assert source.read(ref).pixel_spacing == pytest.approx([0.3125, 0.3125])


def test_ukb_all_slices_and_frames_give_every_image_once_in_position_and_time_order(ukb):
    root, expected = ukb
    source = UKBCMRSource(root, options(UKBCMRSource, "--slices", "all", "--frames", "all"))
    refs = [r for r in source.index() if r.patient_id == "1234567"]
    assert len(refs) == 6
    for ref in refs:
        k, j = ref.extra["slice"], ref.extra["frame"]
        assert ref.record_id == f"1234567_20209_2_0_s{k:02d}_f{j:02d}"
        want = expected[("1234567_20209_2_0", k, j)].astype(np.float32)
        if (k, j) == (1, 0):  # the file with RescaleSlope 2, RescaleIntercept -5
            want = want * 2 - 5
        np.testing.assert_array_equal(source.read(ref).data, want)


def test_ukb_slice_acquired_twice_keeps_the_later_series_and_counts_the_earlier_as_excluded(ukb):
    root, expected = ukb
    source = UKBCMRSource(root, options(UKBCMRSource, "--frames", "all"))
    refs = [r for r in source.index() if r.patient_id == "2222222"]
    assert [r.record_id for r in refs] == ["2222222_20209_2_0_s00_f00", "2222222_20209_2_0_s00_f01"]
    for ref in refs:
        want = expected[("2222222_20209_2_0", 0, ref.extra["frame"])]
        np.testing.assert_array_equal(source.read(ref).data, want)
    assert source.excluded == {"earlier series of a slice acquired twice": 2}
    ed_only = UKBCMRSource(root, options(UKBCMRSource))
    ed_only.index()
    assert ed_only.excluded == {"earlier series of a slice acquired twice": 1}


def test_ukb_truncated_pixel_data_or_a_vanished_file_raises_bad_record(ukb, tmp_path):
    root, _ = ukb
    source = UKBCMRSource(root, options(UKBCMRSource))
    (cut,) = [r for r in source.index() if r.patient_id == "3333333"]
    with pytest.raises(BadRecord, match="cut.dcm: unreadable DICOM image"):
        source.read(cut)
    cut.location = str(tmp_path / "gone.dcm")
    with pytest.raises(BadRecord, match="missing"):
        source.read(cut)


def test_ukb_file_without_any_slice_position_or_frame_order_goes_to_index_problems(tmp_path):
    base = pydicom.dcmread(MR_SMALL).pixel_array
    folder = tmp_path / "5555555_20209_2_0"
    write_dicom(folder / "a.dcm", base, SliceLocation=None, ImagePositionPatient=None)
    write_dicom(folder / "b.dcm", base, SliceLocation=None, TriggerTime=None, InstanceNumber=None)
    write_dicom(folder / "c.dcm", base, SliceLocation=None, TriggerTime=12.0)
    (tmp_path / "6666666_20209_2_0").mkdir()
    with pytest.raises(FileNotFoundError, match="no subject-visit folders"):
        UKBCMRSource(tmp_path / "6666666_20209_2_0", options(UKBCMRSource)).index()
    source = UKBCMRSource(tmp_path, options(UKBCMRSource))
    assert source.index() == []
    problems = dict(source.index_problems)
    assert "no slice position" in problems["5555555_20209_2_0/a.dcm"]
    (ordering,) = [reason for key, reason in problems.items() if key.startswith("5555555_20209_2_0@")]
    assert "frames cannot be ordered" in ordering
    assert "no readable DICOM images" in problems["6666666_20209_2_0"]


def test_ukb_index_reads_dicom_headers_only(ukb, monkeypatch):
    import datasets.sources.ukb_cmr as module
    real = pydicom.dcmread

    def headers_only(path, *args, **kwargs):
        assert kwargs.get("stop_before_pixels") is True, "index() read pixel data"
        return real(path, *args, **kwargs)
    monkeypatch.setattr(module.pydicom, "dcmread", headers_only)
    source = UKBCMRSource(ukb[0], options(UKBCMRSource, "--slices", "all", "--frames", "all"))
    assert len(source.index()) == 6 + 6 + 2 + 1


def test_ukb_reader_and_refs_pickle_and_labels_other_than_none_are_refused(ukb):
    root, expected = ukb
    source = UKBCMRSource(root, options(UKBCMRSource))
    clone, refs = pickle.loads(pickle.dumps((source, source.index())))
    np.testing.assert_array_equal(clone.read(refs[-1]).data, expected[("7654321_20209_3_0", 1, 0)])
    with pytest.raises(SystemExit):
        options(UKBCMRSource, "--labels", "group")
    with pytest.raises(ValueError, match="--frames"):
        UKBCMRSource(root, argparse.Namespace(slices="mid", frames="es", labels="none"))


# ---- through python -m datasets.ingest: image stores -------------------------------------------------
def ingested(source, raw, out, *argv):
    import json

    from datasets import ingest
    from datasets.store import Store

    assert ingest.main([source, "--raw", str(raw), "--out", str(out), "--workers", "1", "--quiet",
                        "--image-size", "64", *argv]) == 0
    return Store(out), json.loads((out / "ingest_report.json").read_text())


def test_acdc_ingest_keeps_the_official_test_patients_and_draws_val_from_training(acdc_raw, tmp_path):
    store, report = ingested("acdc", acdc_raw, tmp_path / "acdc", "--frames", "both", "--val", "0.5", "--folds", "0")
    assert store.modality == "cmr" and store.shape == (6, 1, 64, 64) and store.dtype == np.uint8
    assert store.task_type == "multiclass" and store.label_names == ["NOR", "MINF", "DCM", "HCM", "RV"]
    split = {store.record_ids[int(i)]: name for name in ("train", "val", "test") for i in store.split(name)}
    assert {rid for rid, name in split.items() if name == "test"} == {"patient101_ed_s12", "patient101_es_s12"}
    patient_split = {}
    for rid, name in split.items():
        patient_split.setdefault(rid.split("_")[0], set()).add(name)
    assert all(len(s) == 1 for s in patient_split.values())  # both frames of a patient in one split
    assert {n for s in patient_split.values() for n in s} == {"train", "val", "test"}
    assert report["counts"]["skipped"] == 0
    images = np.asarray(store.images)
    assert images.min() == 0 and images.max() == 255  # each image spans the intensity range
    assert store.contract["image_size"] == 64 and store.contract["modality"] == "cmr"


def test_ukb_cmr_ingest_writes_the_readable_slices_and_reports_the_cut_one(ukb, tmp_path):
    root, _ = ukb
    store, report = ingested("ukb_cmr", root, tmp_path / "ukb_cmr", "--val", "0", "--test", "0", "--folds", "0")
    assert store.task_type is None and store.patient_ids == ["1234567", "2222222", "7654321"]
    assert [b["record_id"] for b in report["skipped"]] == ["3333333_20209_2_0_s00_f00"]
