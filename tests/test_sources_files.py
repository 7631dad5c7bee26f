"""File-based readers (code15, ukb_ecg, dicom_ecg, reference_pt) on tiny raw folders built from real
packaged ECGs: pydicom's waveform_ecg.dcm (12 leads, 10 s at 1000 Hz, microvolts) and, where
installed, ecgprocess's example DICOM and GE CardioSoft XML files. Nothing is downloaded."""
import argparse
import importlib.util
import pickle
import shutil
from functools import lru_cache
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from scipy.signal import resample_poly

from datasets import demo
from datasets.sources import BadRecord, RecordRef, standard_lead
from datasets.sources import code15, reference_pt
from datasets.sources.code15 import Code15Source
from datasets.sources.dicom_ecg import DicomECGSource
from datasets.sources.reference_pt import ReferencePTSource
from datasets.sources.ukb_ecg import UKBECGSource
from datasets.store import STANDARD_LEADS

TO_MV = {"mV": 1.0, "uV": 1e-3, "V": 1e3}
PYDICOM_ECG = get_testdata_file("waveform_ecg.dcm")


def _ecgprocess_folder():
    spec = importlib.util.find_spec("ecgprocess")  # test-only dependency: located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "example_data" / "example_datasets"
    return folder if folder.is_dir() else None


ECGPROCESS = _ecgprocess_folder()
needs_ecgprocess = pytest.mark.skipif(ECGPROCESS is None, reason="ecgprocess (example ECG files) is not installed")


def options(cls, *args):
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser.parse_args([str(a) for a in args])


@lru_cache(maxsize=1)
def real_uv() -> np.ndarray:
    """pydicom's ECG rhythm strip, (12, 10000) microvolts at 1000 Hz, in the standard lead order."""
    ds = pydicom.dcmread(PYDICOM_ECG)
    channels = ds.WaveformSequence[0].ChannelDefinitionSequence
    names = [standard_lead(c.ChannelSourceSequence[0].CodeMeaning) for c in channels]
    assert names == list(STANDARD_LEADS)
    return ds.waveform_array(0).T.copy()


def real_mv(rate: int) -> np.ndarray:
    """The same strip in mV at ``rate`` Hz (float32)."""
    return resample_poly(real_uv() * 1e-3, rate, 1000, axis=1).astype(np.float32)


@pytest.mark.parametrize("cls", [Code15Source, UKBECGSource, DicomECGSource, ReferencePTSource])
def test_source_options_do_not_clash_with_the_ingest_options(cls):
    from datasets import ingest

    parser = argparse.ArgumentParser()
    ingest._common_arguments(parser, cls.modality)
    cls.add_arguments(parser)  # argparse raises on a second --rate, --labels ...


# ---- CODE-15% --------------------------------------------------------------------------------------
STORED_PER_MV = 2.0  # CODE-15% tracings are 2 x mV (ecg-preprocessing README: "scaled by 2")


def _padded(mv: np.ndarray) -> np.ndarray:
    """(12, n) mV -> (4096, 12) stored units, zero-padded on both sides as in the release."""
    out = np.zeros((4096, 12), dtype=np.float32)
    start = (4096 - mv.shape[1]) // 2
    out[start:start + mv.shape[1]] = (mv * STORED_PER_MV).T
    return out


def _part(path: Path, exams: list, tracings: list, external: Path = None) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("exam_id", data=np.array(exams, dtype=np.int64))
        if external is None:
            f.create_dataset("tracings", data=np.stack(tracings))
        else:  # samples in a separate file, deleted below: the metadata reads, the samples do not
            d = f.create_dataset("tracings", shape=(len(exams), 4096, 12), dtype="f4",
                                 external=[(str(external), 0, len(exams) * 4096 * 12 * 4)])
            d[...] = np.stack(tracings)


@pytest.fixture
def code15_raw(tmp_path):
    ten, seven = real_mv(400), real_mv(400)[:, :2800]  # a 10 s and a 7 s exam
    _part(tmp_path / "exams_part0.hdf5", [101, 102], [_padded(ten), _padded(seven)])
    # exam 104 is all zeros; 999 has no exams.csv line; 0 is a filler row
    _part(tmp_path / "exams_part1.hdf5", [103, 104, 999, 0], [_padded(-0.8 * ten), _padded(ten[:, :0]),
                                                              _padded(ten), _padded(ten[:, :0])])
    _part(tmp_path / "exams_part2.hdf5", [106], [_padded(ten)])
    part2 = (tmp_path / "exams_part2.hdf5").read_bytes()
    (tmp_path / "exams_part2.hdf5").write_bytes(part2[:len(part2) // 3])  # a truncated download
    _part(tmp_path / "exams_part3.hdf5", [107], [_padded(ten)], external=tmp_path / "samples.bin")
    (tmp_path / "samples.bin").unlink()
    T, F = True, False
    rows = [  # exam_id, age, is_male, nn_age, 1dAVb, RBBB, LBBB, SB, ST, AF, patient, death, timey, normal, file
        (101, 63, T, 60.5, F, F, F, T, F, F, 7, F, 5.2, F, "exams_part0.hdf5"),
        (102, 64, T, 66.0, F, T, F, F, F, T, 7, None, None, F, "exams_part0.hdf5"),
        (103, 41, F, 39.1, F, F, F, F, F, F, 9, F, 3.1, T, "exams_part1.hdf5"),
        (104, 50, F, 51.0, F, F, F, F, F, F, 10, T, 1.0, F, "exams_part1.hdf5"),
        (105, 70, T, 72.0, T, F, F, F, F, F, 11, F, 2.0, F, "exams_part1.hdf5"),  # in no part
        (106, 55, F, 50.0, F, F, T, F, F, F, 12, F, 2.0, F, "exams_part2.hdf5"),  # part truncated
        (107, 45, F, 44.0, F, F, F, F, T, F, 13, F, 2.0, F, "exams_part3.hdf5"),  # samples missing
    ]
    columns = ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB", "ST", "AF",
               "patient_id", "death", "timey", "normal_ecg", "trace_file"]
    pd.DataFrame(rows, columns=columns).to_csv(tmp_path / "exams.csv", index=False)
    return tmp_path


def test_code15_index_maps_exams_to_parts_and_reports_missing_and_extra_rows(code15_raw):
    reader = Code15Source(code15_raw, options(Code15Source))
    refs = reader.index()
    by_id = {r.record_id: r for r in refs}
    assert [r.record_id for r in refs] == ["101", "102", "103", "104", "107"]
    assert reader.task_type == "multilabel" and reader.label_names == ["1dAVb", "RBBB", "LBBB", "SB", "ST", "AF"]
    assert by_id["101"].labels == ["SB"] and by_id["102"].labels == ["RBBB", "AF"] and by_id["103"].labels == []
    assert by_id["101"].patient_id == by_id["102"].patient_id == "7" and by_id["103"].patient_id == "9"
    assert by_id["101"].location == (str(code15_raw / "exams_part0.hdf5"), 0)
    assert by_id["103"].location == (str(code15_raw / "exams_part1.hdf5"), 0)
    assert by_id["101"].extra["age"] == 63 and "death" not in by_id["102"].extra
    problems = dict(reader.index_problems)
    assert set(problems) == {"105", "106"}
    assert "no HDF5 part" in problems["105"]
    assert "exams_part2.hdf5" in problems["106"] and "cannot be read" in problems["106"]
    assert reader.excluded == {code15.NO_CSV_LINE: 2}  # exam 999 and the filler row


def test_code15_read_strips_zero_padding_and_gives_millivolts(code15_raw):
    reader = Code15Source(code15_raw, options(Code15Source))
    by_id = {r.record_id: r for r in reader.index()}
    ten = reader.read(by_id["101"])
    assert ten.data.shape == (12, 4000) and ten.sampling_rate == 400 and ten.units == "mV"
    assert ten.lead_names[:6] == ["DI", "DII", "DIII", "AVR", "AVL", "AVF"]
    assert [standard_lead(n) for n in ten.lead_names] == list(STANDARD_LEADS)
    np.testing.assert_allclose(ten.data, real_mv(400), rtol=1e-6, atol=1e-7)
    peak = np.abs(ten.data).max() * TO_MV[ten.units]
    assert 0.5 < peak < 3, peak
    assert reader.read(by_id["102"]).data.shape == (12, 2800)  # the 7 s exam: 648 zeros each side stripped
    np.testing.assert_allclose(reader.read(by_id["103"]).data, -0.8 * real_mv(400), rtol=1e-5, atol=1e-6)
    with pytest.raises(BadRecord, match="all-zero"):
        reader.read(by_id["104"])
    with pytest.raises(BadRecord, match="exams_part3.hdf5"):  # index never touched the missing samples
        reader.read(by_id["107"])
    clone = pickle.loads(pickle.dumps(reader))  # as the worker processes get it, open files left behind
    np.testing.assert_array_equal(clone.read(by_id["101"]).data, ten.data)
    raw = Code15Source(code15_raw, options(Code15Source, "--stored-per-mv", 1)).read(by_id["101"])
    np.testing.assert_allclose(raw.data, STORED_PER_MV * ten.data, rtol=1e-6)


def test_code15_label_options(code15_raw):
    plain = Code15Source(code15_raw, options(Code15Source, "--labels", "none"))
    assert all(r.labels is None for r in plain.index()) and plain.task_type is None and plain.label_names == []
    normal = Code15Source(code15_raw, options(Code15Source, "--with-normal"))
    by_id = {r.record_id: r for r in normal.index()}
    assert normal.label_names[-1] == "normal_ecg" and len(normal.label_names) == 7
    assert by_id["103"].labels == ["normal_ecg"]
    with pytest.raises(ValueError, match="with-normal"):
        Code15Source(code15_raw, options(Code15Source, "--labels", "none", "--with-normal"))


# ---- UK Biobank GE CardioSoft XML ------------------------------------------------------------------
def cardiosoft_xml(path: Path, statements, resolution: float = 5.0, root: str = "CardiologyXML") -> np.ndarray:
    """A CardioSoft-style XML of the pydicom ECG at 500 Hz; returns the integers written, (12, 5000)."""
    counts = np.round(resample_poly(real_uv(), 1, 2, axis=1) / resolution).astype(int)
    diagnosis = "".join(f"<DiagnosisText>{s}</DiagnosisText>" for s in statements)
    waves = "".join(f'<WaveformData lead="{lead}">\t\t{",".join(map(str, row))},\n</WaveformData>'
                    for lead, row in zip(STANDARD_LEADS, counts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}><ObservationType>RestECG</ObservationType>'
                    f"<Interpretation><Diagnosis>{diagnosis}</Diagnosis></Interpretation>"
                    f'<StripData><NumberOfLeads>12</NumberOfLeads><SampleRate units="Hz">500</SampleRate>'
                    f'<Resolution units="uVperLsb">{resolution:g}</Resolution>{waves}</StripData></{root}>')
    return counts


def test_ukb_ecg_reads_the_strip_in_microvolts_with_the_eid_as_patient(tmp_path):
    counts = cardiosoft_xml(tmp_path / "1234567_20205_2_0.xml", ["Sinus rhythm", " Normal ECG ", "---"])
    cardiosoft_xml(tmp_path / "3" / "1234567_20205_3_0.xml", ["Sinus rhythm"])
    reader = UKBECGSource(tmp_path, options(UKBECGSource))
    refs = reader.index()
    assert [r.record_id for r in refs] == ["1234567_20205_2_0", "1234567_20205_3_0"]
    assert {r.patient_id for r in refs} == {"1234567"} and reader.index_problems == []
    assert refs[0].labels == ["Normal ECG", "Sinus rhythm"]  # stripped, separators dropped
    assert reader.task_type == "multilabel" and reader.label_names == ["Normal ECG", "Sinus rhythm"]
    signal = reader.read(refs[0])
    assert signal.data.shape == (12, 5000) and signal.sampling_rate == 500 and signal.units == "uV"
    assert list(signal.lead_names) == list(STANDARD_LEADS)
    np.testing.assert_array_equal(signal.data, counts * 5.0)
    assert 0.5 < np.abs(signal.data).max() * TO_MV[signal.units] < 3
    assert UKBECGSource(tmp_path, options(UKBECGSource, "--labels", "none")).index()[0].labels is None


def test_ukb_ecg_truncated_foreign_or_repeated_files_are_reported(tmp_path):
    cardiosoft_xml(tmp_path / "1000001_20205_2_0.xml", ["Sinus rhythm"])
    text = (tmp_path / "1000001_20205_2_0.xml").read_text()
    (tmp_path / "1000002_20205_2_0.xml").write_text(text[:len(text) // 2])  # cut inside the waveforms
    (tmp_path / "1000003_20205_2_0.xml").write_text(text[:60])              # cut inside the header
    cardiosoft_xml(tmp_path / "1000004_20205_2_0.xml", ["x"], root="RestingECG")  # another vendor's XML
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "1000001_20205_2_0.xml", tmp_path / "copy" / "1000001_20205_2_0.xml")
    reader = UKBECGSource(tmp_path, options(UKBECGSource))
    refs = {r.record_id: r for r in reader.index()}
    assert set(refs) == {"1000001_20205_2_0", "1000002_20205_2_0"}
    problems = dict(reader.index_problems)
    assert set(problems) == {"1000001_20205_2_0", "1000003_20205_2_0", "1000004_20205_2_0"}
    assert "second file" in problems["1000001_20205_2_0"] and "RestingECG" in problems["1000004_20205_2_0"]
    with pytest.raises(BadRecord, match="truncated"):
        reader.read(refs["1000002_20205_2_0"])


@needs_ecgprocess
def test_ukb_ecg_statements_of_the_packaged_cardiosoft_file_become_labels(tmp_path):
    shutil.copy(ECGPROCESS / "example-XML1.xml", tmp_path / "2345678_20205_2_0.xml")
    (tmp_path / "other").mkdir()
    shutil.copy(ECGPROCESS / "example-XML1.xml", tmp_path / "other" / "example-XML1.xml")
    reader = UKBECGSource(tmp_path, options(UKBECGSource))
    refs = {r.record_id: r for r in reader.index()}
    assert {k: r.patient_id for k, r in refs.items()} == {"2345678_20205_2_0": "2345678",
                                                           "example-XML1": "example-XML1"}
    labels = refs["2345678_20205_2_0"].labels
    assert "Sinus bradycardia" in labels and "Otherwise normal ECG" in labels and "---" not in labels
    assert reader.label_names == sorted(labels)
    signal = reader.read(refs["example-XML1"])
    assert signal.data.shape == (12, 5000) and signal.sampling_rate == 500 and signal.units == "uV"
    assert [standard_lead(n) for n in signal.lead_names] == list(STANDARD_LEADS)
    assert 0.3 < np.abs(signal.data).max() * TO_MV[signal.units] < 5


# ---- DICOM waveforms -------------------------------------------------------------------------------
def test_dicom_ecg_reads_the_rhythm_strip_with_its_units_and_statements(tmp_path):
    (tmp_path / "site").mkdir()
    shutil.copy(PYDICOM_ECG, tmp_path / "site" / "ecg_0001.dcm")
    reader = DicomECGSource(tmp_path, options(DicomECGSource))
    [ref] = reader.index()
    assert ref.record_id == "ecg_0001" and ref.patient_id == "642341" and reader.index_problems == []
    assert ref.labels == ["ECG NORMALE", "RITMO SINUSALE"] and reader.label_names == ref.labels
    signal = reader.read(ref)
    assert signal.data.shape == (12, 10000) and signal.sampling_rate == 1000 and signal.units == "uV"
    assert signal.lead_names[0] == "Lead I (Einthoven)"
    assert [standard_lead(n) for n in signal.lead_names] == list(STANDARD_LEADS)
    np.testing.assert_array_equal(signal.data, real_uv())  # the rhythm group, not the 1.2 s median beat
    assert 0.5 < np.abs(signal.data).max() * TO_MV[signal.units] < 3
    assert pickle.loads(pickle.dumps(reader)).read(ref).data.shape == (12, 10000)


def test_dicom_ecg_brings_mixed_channel_units_to_millivolts_and_refuses_unknown_ones(tmp_path):
    ds = pydicom.dcmread(PYDICOM_ECG)
    ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
    ds.save_as(tmp_path / "mixed.dcm")
    ds.WaveformSequence[0].ChannelDefinitionSequence[1].ChannelSensitivityUnitsSequence[0].CodeValue = "mm[Hg]"
    ds.save_as(tmp_path / "pressure.dcm")
    reader = DicomECGSource(tmp_path, options(DicomECGSource))
    refs = {r.record_id: r for r in reader.index()}
    mixed = reader.read(refs["mixed"])
    assert mixed.units == "mV"
    np.testing.assert_allclose(mixed.data[0], real_uv()[0])  # the channel now declared in mV kept as is
    np.testing.assert_allclose(mixed.data[1:], real_uv()[1:] * 1e-3)
    with pytest.raises(BadRecord, match="mm\\[Hg\\]"):
        reader.read(refs["pressure"])


def test_dicom_ecg_files_without_waveform_unreadable_or_repeated_land_in_index_problems(tmp_path):
    shutil.copy(PYDICOM_ECG, tmp_path / "a.dcm")
    (tmp_path / "b").mkdir()
    shutil.copy(PYDICOM_ECG, tmp_path / "b" / "a.dcm")
    ds = pydicom.dcmread(PYDICOM_ECG)
    del ds.WaveformSequence
    ds.save_as(tmp_path / "report.dcm")
    (tmp_path / "junk.dcm").write_bytes(b"not a DICOM file at all")
    reader = DicomECGSource(tmp_path, options(DicomECGSource, "--labels", "none"))
    refs = reader.index()
    assert [r.record_id for r in refs] == ["a"] and refs[0].labels is None and reader.task_type is None
    problems = dict(reader.index_problems)
    assert set(problems) == {"a", "report", "junk"}
    assert "second file" in problems["a"] and "no WaveformSequence" in problems["report"]
    assert "unreadable" in problems["junk"]
    with pytest.raises(BadRecord, match="no WaveformSequence"):
        reader.read(RecordRef("report", location=str(tmp_path / "report.dcm")))


@needs_ecgprocess
def test_dicom_ecg_packaged_examples_give_statements_and_anonymised_patients(tmp_path):
    for name in ("example-DICOM1.dcm", "example-DICOM2.dcm"):
        shutil.copy(ECGPROCESS / name, tmp_path / name)
    reader = DicomECGSource(tmp_path, options(DicomECGSource))
    refs = {r.record_id: r for r in reader.index()}
    assert refs["example-DICOM1"].patient_id is None  # PatientID "removed" by the anonymiser
    assert refs["example-DICOM2"].patient_id == "66954"
    assert refs["example-DICOM1"].labels == [] and "ATRIAL FIBRILLATION" in refs["example-DICOM2"].labels
    assert reader.label_names == sorted(refs["example-DICOM2"].labels)
    for ref in refs.values():
        signal = reader.read(ref)
        assert signal.data.shape == (12, 5000) and signal.sampling_rate == 500 and signal.units == "uV"
        assert [standard_lead(n) for n in signal.lead_names] == list(STANDARD_LEADS)
        assert 0.3 < np.abs(signal.data).max() * TO_MV[signal.units] < 5


# ---- tensors for the reference code ----------------------------------------------------------------
def windows(n: int = 4, seconds: int = 2) -> torch.Tensor:
    """(n, 12, 500 * seconds) mV windows of the pydicom ECG at 500 Hz."""
    x = real_mv(500)
    step = 500 * seconds
    return torch.from_numpy(np.stack([x[:, i * step:(i + 1) * step] for i in range(n)]).copy())


def test_reference_pt_tensor_file_with_class_indices_multihot_or_targets(tmp_path):
    x = windows()
    torch.save(x, tmp_path / "ecgs.pt")
    torch.save(x[:, None], tmp_path / "ecgs4d.pt")
    torch.save(torch.tensor([0, 2, 1, 2]), tmp_path / "cls.pt")
    torch.save(torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=torch.float32), tmp_path / "hot.pt")
    torch.save(torch.tensor([[60.0, 0.5], [72.5, 0.1], [80.0, 1.5], [55.0, 0.3]]), tmp_path / "reg.pt")
    reader = ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", "ecgs.pt", "--labels", "cls.pt",
                                                 "--label-names", "a,b,c", "--native-rate", 500))
    refs = reader.index()
    assert [r.record_id for r in refs] == [f"ecgs_{i:06d}" for i in range(4)]
    assert reader.task_type == "multiclass" and reader.label_names == ["a", "b", "c"]
    assert [r.labels for r in refs] == ["a", "c", "b", "c"] and all(r.split is None for r in refs)
    signal = reader.read(refs[1])
    assert signal.data.shape == (12, 1000) and signal.sampling_rate == 500 and signal.units == "mV"
    assert list(signal.lead_names) == list(STANDARD_LEADS)
    np.testing.assert_array_equal(signal.data, x[1].numpy())
    assert 0.5 < np.abs(reader.read(refs[0]).data).max() < 3

    four_d = ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", tmp_path / "ecgs4d.pt",
                                                 "--labels", "hot.pt", "--native-rate", 500))
    refs = four_d.index()
    assert four_d.task_type == "multilabel" and four_d.label_names == ["class_0", "class_1", "class_2"]
    assert refs[0].labels == ["class_0", "class_2"] and refs[1].labels == []
    np.testing.assert_array_equal(four_d.read(refs[3]).data, x[3].numpy())
    regression = ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", "ecgs.pt", "--labels", "reg.pt",
                                                     "--label-names", "hr,qrs", "--native-rate", 500))
    assert regression.index()[1].labels == [72.5, pytest.approx(0.1)] and regression.task_type == "regression"
    with pytest.raises(ValueError, match="has 12 leads but --leads names 3"):
        ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", "ecgs.pt", "--native-rate", 500,
                                            "--leads", "I,II,III")).index()


def test_reference_pt_split_files_give_official_splits(tmp_path):
    x = windows(6, seconds=1)
    for split, rows in (("train", [0, 1, 2]), ("val", [3]), ("test", [4, 5])):
        ids = [f"ecg{i}" for i in rows] if split != "test" else ["ecg4", "ecg0"]  # ecg0 also in train
        torch.save({"data": x[rows], "targets": torch.tensor([[1.0, 0.0]] * len(rows)), "record_ids": ids},
                   tmp_path / f"{split}_split.pt")
    reader = ReferencePTSource(tmp_path, options(ReferencePTSource, "--native-rate", 500, "--units", "uV",
                                                 "--label-names", "AF,NORM"))
    refs = {r.record_id: r for r in reader.index()}
    assert {k: r.split for k, r in refs.items()} == {"ecg0": "train", "ecg1": "train", "ecg2": "train",
                                                     "ecg3": "val", "ecg4": "test"}
    assert reader.index_problems == [("ecg0", "test_split.pt row 1: a record id seen before")]
    assert reader.task_type == "multilabel" and refs["ecg3"].labels == ["AF"]
    signal = reader.read(refs["ecg4"])
    assert signal.units == "uV" and signal.sampling_rate == 500
    np.testing.assert_array_equal(signal.data, x[4].numpy())
    assert "official splits" in reader.provenance


def test_reference_pt_refuses_files_that_need_pickle(tmp_path):
    torch.save({"data": windows(2), "targets": np.zeros(2), "record_ids": ["a", "b"]}, tmp_path / "train_split.pt")
    with pytest.raises(ValueError, match="needs pickle.*numpy"):
        ReferencePTSource(tmp_path, options(ReferencePTSource, "--native-rate", 500)).index()
    torch.save(windows(2).numpy(), tmp_path / "array.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", "array.pt", "--native-rate", 500)).index()


def test_reference_pt_read_loads_each_file_once_per_process_and_pickles_light(tmp_path, monkeypatch):
    x = windows()
    torch.save(x, tmp_path / "ecgs.pt", _use_new_zipfile_serialization=False)  # legacy format: no mmap
    torch.save(x, tmp_path / "mapped.pt")
    for name in ("ecgs.pt", "mapped.pt"):
        reader = ReferencePTSource(tmp_path, options(ReferencePTSource, "--signals", name, "--native-rate", 250))
        refs = reader.index()
        calls = []
        real_load = reference_pt.load_tensor_file
        monkeypatch.setattr(reference_pt, "load_tensor_file", lambda *a, **k: calls.append(a) or real_load(*a, **k))
        first, again = reader.read(refs[0]), reader.read(refs[2])
        assert len(calls) == 1 and first.sampling_rate == 250
        np.testing.assert_array_equal(again.data, x[2].numpy())
        blob = pickle.dumps(reader)
        assert len(blob) < 20_000  # the tensor stays behind; a worker maps its own
        np.testing.assert_array_equal(pickle.loads(blob).read(refs[3]).data, x[3].numpy())
        monkeypatch.setattr(reference_pt, "load_tensor_file", real_load)


# ---- the demo's real ECGs, now read through these modules -------------------------------------------
def _direct_dicom(path) -> np.ndarray:
    """The demo's reading of a DICOM ECG, done by hand: uV -> mV, our lead order, 500 Hz, 10 s."""
    ds = pydicom.dcmread(path)
    group = max(range(len(ds.WaveformSequence)), key=lambda i: int(ds.WaveformSequence[i].NumberOfWaveformSamples))
    data = ds.waveform_array(group)
    leads = {}
    for k, channel in enumerate(ds.WaveformSequence[group].ChannelDefinitionSequence):
        assert channel.ChannelSensitivityUnitsSequence[0].CodeValue == "uV"
        leads[standard_lead(channel.ChannelSourceSequence[0].CodeMeaning)] = data[:, k] * 1e-3
    assert float(ds.WaveformSequence[group].SamplingFrequency) == 1000.0
    x = np.stack([leads[lead] for lead in STANDARD_LEADS]).astype(np.float64)
    return resample_poly(x, 1, 2, axis=1)[:, :5000].astype(np.float32)


def test_demo_real_ecg_is_pydicoms_file_read_through_the_dicom_reader():
    """The demo's one real ECG (pydicom's; ecgprocess is test-only and never part of the demo)
    equals a by-hand reading of the file, with its statements as labels."""
    signals, labels, notes = demo.load_real_ecgs()
    assert [n["record_id"] for n in notes] == ["real_pydicom_waveform_ecg"]
    (x,), (y,), (note,) = signals, labels, notes
    assert x.shape == (12, 5000) and x.dtype == np.float32
    np.testing.assert_array_equal(x, _direct_dicom(demo.real_ecg_sources()[0]["path"]))
    assert note["labels"] == ["NORM"] and y.tolist() == [float(n == "NORM") for n in demo.LABEL_NAMES]
    assert note["original"]["units"] == ["uV"]
    assert note["statements"] == ["RITMO SINUSALE", "ECG NORMALE"]


# ---- through python -m datasets.ingest ------------------------------------------------------------
def test_code15_ingest_groups_by_patient_pads_short_exams_on_request_and_reports_the_rest(code15_raw, tmp_path):
    import json

    from datasets import ingest
    from datasets.store import Store

    out = tmp_path / "code15"
    argv = ["code15", "--raw", str(code15_raw), "--out", str(out), "--workers", "1", "--quiet", "--min-seconds", "7",
            "--val", "0.3", "--test", "0.3", "--folds", "0"]
    assert ingest.main(argv) == 0
    store = Store(out)
    report = json.loads((out / "ingest_report.json").read_text())
    assert store.record_ids == ["101", "102", "103"] and store.sampling_rate == 500.0
    assert report["counts"]["padded"] == 1  # the 7 s exam, zero-padded to 10 s
    assert {b["record_id"] for b in report["skipped"]} == {"104", "107"}  # all zeros; samples unreadable
    labels = {rid: [store.label_names[j] for j in np.flatnonzero(store.labels[i])]
              for i, rid in enumerate(store.record_ids)}
    assert labels == {"101": ["SB"], "102": ["RBBB", "AF"], "103": []}
    split = {store.record_ids[int(i)]: name for name in ("train", "val", "test") for i in store.split(name)}
    assert split["101"] == split["102"]  # one patient (7), one split
    x = np.asarray(store.signals[0], dtype=np.float32)
    np.testing.assert_allclose(x, resample_poly(real_mv(400), 5, 4, axis=1)[:, :5000], atol=3e-3)  # mV, at 500 Hz
