"""The WFDB readers (PTB-XL, the Challenge Chapman-Shaoxing / Ningbo layout, MIMIC-IV-ECG) on tiny
raw folders built from a real ECG: the 12-lead, 10 s, 1000 Hz recording in pydicom's test data
(microvolts), written with wfdb (and scipy.io.savemat for the Challenge .mat files), with small CSVs
and headers of our own (ids, patients and labels made up here) and one planted bad record of each
kind. Nothing is downloaded."""
import argparse
import os
import pickle

import numpy as np
import pandas as pd
import pydicom
import pytest
import scipy.io
import wfdb
from pydicom.data import get_testdata_file
from scipy.signal import resample_poly

from datasets.sources import BadRecord, RecordRef, source_class, standard_lead
from datasets.sources.arrhythmia import ArrhythmiaSource, snomed_table
from datasets.sources.mimic_iv_ecg import KEYWORDS, MimicIVECGSource, match_keywords
from datasets.sources.ptbxl import PTBXLSource
from datasets.store import STANDARD_LEADS
from util.errors import ConfigError



def options(cls, *argv):
    """The reader's options as its own add_arguments parses them."""
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def ecg():
    """(samples, 12) microvolts at 1000 Hz in our lead order, from the DICOM test file."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False))
    uv = ds.waveform_array(0)
    names = [standard_lead(ch.ChannelSourceSequence[0].CodeMeaning)
             for ch in ds.WaveformSequence[0].ChannelDefinitionSequence]
    assert names == list(STANDARD_LEADS) and uv.shape == (10000, 12)
    return uv


def write_wfdb(folder, name, mv, fs, sig_name):
    """A WFDB record as PTB-XL and MIMIC-IV-ECG store theirs: format 16, 1000 ADC units per mV."""
    os.makedirs(folder, exist_ok=True)
    wfdb.wrsamp(name, fs=fs, units=["mV"] * len(sig_name), sig_name=list(sig_name), p_signal=mv,
                fmt=["16"] * len(sig_name), adc_gain=[1000.0] * len(sig_name), baseline=[0] * len(sig_name),
                write_dir=str(folder))


def truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def garble_header(path):
    with open(path, "w") as f:
        f.write("this is not a WFDB header\n#Dx: 426783006\n")


# ----------------------------------------------------------------------------------------------
# PTB-XL

PTBXL_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]  # as its headers write them
# statement, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass (our choices, in the real columns)
SCP = [("NORM", 1, None, None, "NORM", "NORM"), ("IMI", 1, None, None, "MI", "IMI"), ("ASMI", 1, None, None, "MI", "AMI"),
       ("NDT", 1, 1, None, "STTC", "STTC"), ("LVH", 1, None, None, "HYP", "LVH"), ("ABQRS", None, 1, None, None, None),
       ("LVOLT", None, 1, None, None, None), ("SR", None, None, 1, None, None), ("AFIB", None, None, 1, None, None)]
# ecg_id, patient_id, strat_fold, scp_codes; 5 has a truncated .dat, 6 a header that does not parse,
# 7 unparseable scp_codes, 8 no files at all
PTBXL_ROWS = [(1, 15709.0, 1, "{'NORM': 100.0, 'SR': 0.0}"),
              (2, 15709.0, 9, "{'IMI': 50.0, 'ASMI': 15.0, 'ABQRS': 0.0, 'SR': 0.0}"),
              (3, 13243.0, 10, "{'NDT': 100.0, 'LVH': 50.0, 'AFIB': 0.0}"),
              (4, 20372.0, 3, "{'SR': 0.0, 'LVOLT': 0.0, 'XYZ': 0.0}"),  # XYZ: not in scp_statements.csv
              (5, 13243.0, 5, "{'NORM': 100.0}"),
              (6, 20372.0, 2, "{'NORM': 80.0, 'SR': 0.0}"),
              (7, 20372.0, 4, "NORM"),
              (8, 15709.0, 6, "{'IMI': 100.0}")]


@pytest.fixture(scope="module")
def ptbxl_raw(tmp_path_factory, ecg):
    raw = tmp_path_factory.mktemp("ptbxl")
    pd.DataFrame(SCP, columns=["", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"]
                 ).to_csv(raw / "scp_statements.csv", index=False)
    rows = []
    for ecg_id, patient, fold, codes in PTBXL_ROWS:
        lr, hr = f"records100/00000/{ecg_id:05d}_lr", f"records500/00000/{ecg_id:05d}_hr"
        rows.append(dict(ecg_id=ecg_id, patient_id=patient, age=56.0 + ecg_id, sex=ecg_id % 2, scp_codes=codes,
                         strat_fold=fold, filename_lr=lr, filename_hr=hr))
        if ecg_id == 8:
            continue
        for rel, mv, fs in ((hr, ecg[::2] / 1000.0, 500), (lr, resample_poly(ecg, 1, 10, axis=0) / 1000.0, 100)):
            write_wfdb(raw / os.path.dirname(rel), os.path.basename(rel), mv, fs, PTBXL_LEADS)
            if ecg_id == 5:
                truncate(raw / f"{rel}.dat")
            if ecg_id == 6:
                garble_header(raw / f"{rel}.hea")
    pd.DataFrame(rows).to_csv(raw / "ptbxl_database.csv", index=False)
    return raw


def ptbxl(raw, *argv):
    reader = PTBXLSource(raw, options(PTBXLSource, *argv))
    return reader, {ref.record_id: ref for ref in reader.index()}


def test_ptbxl_index_has_ids_patients_official_splits_and_counts_what_it_leaves_out(ptbxl_raw):
    reader, refs = ptbxl(ptbxl_raw)
    assert list(refs) == ["1", "2", "3", "5", "6", "8"]  # sorted; 4 has no diagnostic statement, 7 no dict
    assert [refs[i].patient_id for i in refs] == ["15709", "15709", "13243", "13243", "20372", "15709"]
    assert {i: refs[i].split for i in refs} == {"1": "train", "2": "val", "3": "test", "5": "train", "6": "train",
                                                "8": "train"}
    assert reader.excluded == {"no statement of the superdiagnostic label set": 1}
    assert [rid for rid, _ in reader.index_problems] == ["7"] and "scp_codes" in reader.index_problems[0][1]
    assert reader.task_type == "multilabel" and reader.label_names == ["HYP", "MI", "NORM", "STTC"]
    assert refs["3"].extra["scp_codes"] == {"NDT": 100.0, "LVH": 50.0, "AFIB": 0.0} and refs["3"].extra["strat_fold"] == 10
    assert refs["1"].location.endswith("records500/00000/00001_hr")


@pytest.mark.parametrize("label_set, expected, excluded", [
    ("superdiagnostic", {"1": ["NORM"], "2": ["MI"], "3": ["HYP", "STTC"]}, 1),
    ("subdiagnostic", {"1": ["NORM"], "2": ["AMI", "IMI"], "3": ["LVH", "STTC"]}, 1),
    ("diagnostic", {"1": ["NORM"], "2": ["ASMI", "IMI"], "3": ["LVH", "NDT"]}, 1),
    ("form", {"2": ["ABQRS"], "3": ["NDT"], "4": ["LVOLT"]}, 4),
    ("rhythm", {"1": ["SR"], "2": ["SR"], "3": ["AFIB"], "4": ["SR"]}, 2),
    ("all", {"1": ["NORM", "SR"], "2": ["ABQRS", "ASMI", "IMI", "SR"], "3": ["AFIB", "LVH", "NDT"], "4": ["LVOLT", "SR", "XYZ"]}, 0),
])
def test_ptbxl_label_sets_are_the_benchmark_aggregations_of_the_statement_keys(ptbxl_raw, label_set, expected, excluded):
    reader, refs = ptbxl(ptbxl_raw, "--labels", label_set)
    assert {i: refs[i].labels for i in expected} == expected
    assert not set(expected) ^ ({i for i in refs} & {"1", "2", "3", "4"})  # the others are left out
    assert sum(reader.excluded.values()) == excluded
    assert reader.label_names == sorted({label for ref in refs.values() for label in ref.labels})


@pytest.mark.parametrize("rate, samples", [("500", 5000), ("100", 1000)])
def test_ptbxl_read_gives_leads_by_time_in_the_header_units_at_the_chosen_rate(ptbxl_raw, ecg, rate, samples):
    reader, refs = ptbxl(ptbxl_raw, "--rate", rate)
    signal = reader.read(refs["1"])
    assert signal.data.shape == (12, samples) and signal.sampling_rate == float(rate)
    assert list(signal.lead_names) == PTBXL_LEADS and signal.units == "mV"
    assert [standard_lead(n) for n in signal.lead_names] == list(STANDARD_LEADS)
    assert 0.3 < np.abs(signal.data).max() < 5.0  # a few hundred to a few thousand microvolts
    if rate == "500":  # the stored values are the DICOM ones to the 1 uV ADC step
        np.testing.assert_allclose(signal.data, ecg[::2].T / 1000.0, atol=6e-4)


def test_ptbxl_rate_is_the_ingest_rate_when_the_parser_has_one(ptbxl_raw):
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=500.0)  # as datasets.ingest defines it for ECG sources
    PTBXLSource.add_arguments(parser)  # no second --rate
    for argv, samples in ((["--rate", "100"], 1000), (["--rate", "250"], 5000), ([], 5000)):
        reader = PTBXLSource(ptbxl_raw, parser.parse_args(argv))
        assert reader.read(next(iter(reader.index()))).data.shape == (12, samples)


def test_ptbxl_truncated_unparseable_or_missing_records_raise_badrecord_with_a_reason(ptbxl_raw):
    reader, refs = ptbxl(ptbxl_raw)
    for record_id, reason in (("5", r"shorter than the header says \(truncated\)"), ("6", "unreadable header"),
                              ("8", "missing file 00008_hr")):
        with pytest.raises(BadRecord, match=reason):
            reader.read(refs[record_id])


def test_ptbxl_reader_and_refs_pickle_for_worker_processes(ptbxl_raw):
    reader, refs = ptbxl(ptbxl_raw)
    clone, ref = pickle.loads(pickle.dumps((reader, refs["2"])))
    assert clone.read(ref).data.shape == (12, 5000)


def test_ptbxl_without_its_csv_files_is_a_user_error(tmp_path):
    with pytest.raises(ConfigError, match="ptbxl_database.csv|scp_statements.csv"):
        PTBXLSource(tmp_path, options(PTBXLSource)).index()


# ----------------------------------------------------------------------------------------------
# Chapman-Shaoxing / Ningbo in the Challenge 2021 layout

CHALLENGE_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
UNKNOWN_CODE = "999999999"  # not a code of the Challenge mapping files


def challenge_record(folder, rid, val, dx, baseline=0, mat_format="4", age="85", sex="Male"):
    """<rid>.mat holding val (leads x samples, int16 ADC units) and a header as the Challenge writes
    them: '<rid>.mat 16+24 1000/mV 16 0 <first value> <checksum> 0 <lead>'."""
    os.makedirs(folder, exist_ok=True)
    scipy.io.savemat(os.path.join(folder, f"{rid}.mat"), {"val": val}, format=mat_format)
    gain = "1000/mV" if baseline == 0 else f"1000({baseline})/mV"
    lines = [f"{rid} 12 500 {val.shape[1]}"]
    for k, lead in enumerate(CHALLENGE_LEADS):
        checksum = (int(val[k].astype(np.int64).sum()) + 32768) % 65536 - 32768
        lines.append(f"{rid}.mat 16+24 {gain} 16 0 {val[k, 0]} {checksum} 0 {lead}")
    lines += [f"#Age: {age}", f"#Sex: {sex}"] + ([f"#Dx: {dx}"] if dx is not None else [])
    lines += ["#Rx: Unknown", "#Hx: Unknown", "#Sx: Unknown"]
    with open(os.path.join(folder, f"{rid}.hea"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def challenge_raw(tmp_path_factory, ecg):
    raw = tmp_path_factory.mktemp("challenge")
    adc = np.round(ecg[::2].T).astype(np.int16)  # 1 ADC unit = 1 uV (gain 1000/mV), 500 Hz
    chapman, ningbo = raw / "WFDB_ChapmanShaoxing", raw / "WFDB_Ningbo" / "g1"
    challenge_record(chapman, "JS00001", adc, "164889003,59118001")
    challenge_record(chapman, "JS00002", adc + 10, "426783006", baseline=10)
    challenge_record(chapman, "JS00003", adc, "426177001")
    garble_header(chapman / "JS00003.hea")  # keeps a #Dx line: indexed, unreadable on read
    challenge_record(chapman, "JS00004", adc, "426177001,164934002")
    truncate(chapman / "JS00004.mat")
    challenge_record(ningbo, "JS10647", adc, f"426177001,{UNKNOWN_CODE}", age="NaN", sex="Female")
    challenge_record(ningbo, "JS10648", adc, UNKNOWN_CODE)
    challenge_record(ningbo, "JS10649", adc, None)  # no #Dx line: an index problem
    challenge_record(ningbo, "JS10650", adc - 5, "55827005", baseline=-5, mat_format="5")  # not what wfdb reads
    return raw, adc


def arrhythmia(raw, *argv):
    reader = ArrhythmiaSource(raw, options(ArrhythmiaSource, *argv))
    return reader, {ref.record_id: ref for ref in reader.index()}


def test_snomed_table_holds_the_challenge_codes_of_chapman_and_ningbo():
    table = snomed_table()
    assert len(table) == 94 and table.index.is_unique and table.abbreviation.is_unique
    # rows of physionetchallenges/evaluation-2021 dx_mapping_scored.csv / dx_mapping_unscored.csv
    assert table.loc["426783006"].tolist() == ["NSR", "sinus rhythm"]
    assert table.loc["164889003"].tolist() == ["AF", "atrial fibrillation"]
    assert table.loc["59118001"].tolist() == ["RBBB", "right bundle branch block"]
    assert table.loc["55827005"].tolist() == ["LVHV", "left ventricular high voltage"]
    assert table.loc["67751000119106"].tolist() == ["RAHV", "right atrial high voltage"]
    assert "164951009" not in table.index  # abnormal QRS: PTB-XL only


def test_arrhythmia_index_finds_records_below_the_raw_folder_with_snomed_labels(challenge_raw):
    raw, _ = challenge_raw
    reader, refs = arrhythmia(raw)
    assert list(refs) == ["JS00001", "JS00002", "JS00003", "JS00004", "JS10647", "JS10648", "JS10650"]
    assert refs["JS00001"].labels == ["AF", "RBBB"] and refs["JS00002"].labels == ["NSR"]
    assert refs["JS10647"].labels == ["SB", f"SNOMED {UNKNOWN_CODE}"] and refs["JS10648"].labels == [f"SNOMED {UNKNOWN_CODE}"]
    assert all(ref.patient_id == ref.record_id and ref.split is None for ref in refs.values())
    assert reader.unknown_codes == {UNKNOWN_CODE: 2} and reader.excluded == {}
    assert [rid for rid, _ in reader.index_problems] == ["JS10649"] and "#Dx" in reader.index_problems[0][1]
    assert reader.task_type == "multilabel" and reader.label_names == sorted(reader.label_names)
    assert refs["JS10647"].extra == {"age": None, "sex": "Female", "dx_codes": ["426177001", UNKNOWN_CODE],
                                     "folder": os.path.join("WFDB_Ningbo", "g1")}
    assert refs["JS00001"].extra["age"] == 85


def test_arrhythmia_names_or_drops_labels_as_the_options_say(challenge_raw):
    raw, _ = challenge_raw
    reader, refs = arrhythmia(raw, "--labels", "name", "--unknown-codes", "drop")
    assert refs["JS00001"].labels == ["atrial fibrillation", "right bundle branch block"]
    assert refs["JS10647"].labels == ["sinus bradycardia"] and "JS10648" not in refs
    assert reader.unknown_codes == {UNKNOWN_CODE: 2}  # still reported
    assert sum(reader.excluded.values()) == 1 and not any(n.startswith("SNOMED") for n in reader.label_names)


def test_arrhythmia_read_subtracts_the_baseline_and_divides_by_the_gain(challenge_raw, ecg, monkeypatch):
    raw, adc = challenge_raw
    reader, refs = arrhythmia(raw)
    through_scipy = []
    fallback = ArrhythmiaSource._read_loadmat
    monkeypatch.setattr(ArrhythmiaSource, "_read_loadmat",
                        staticmethod(lambda mat, header: through_scipy.append(mat.stem) or fallback(mat, header)))
    for record_id in ("JS00001", "JS00002", "JS10650"):  # wfdb; wfdb with a baseline; scipy (a v5 .mat)
        signal = reader.read(refs[record_id])
        assert signal.data.shape == (12, 5000) and signal.sampling_rate == 500.0
        assert list(signal.lead_names) == CHALLENGE_LEADS and signal.units == "mV"
        np.testing.assert_allclose(signal.data, adc / 1000.0, atol=1e-9)
        np.testing.assert_allclose(signal.data, ecg[::2].T / 1000.0, atol=6e-4)
        assert 0.3 < np.abs(signal.data).max() < 5.0
    assert through_scipy == ["JS10650"]  # wfdb reads the Challenge layout itself


def test_arrhythmia_truncated_mat_or_unparseable_header_raise_badrecord_with_a_reason(challenge_raw):
    raw, _ = challenge_raw
    reader, refs = arrhythmia(raw)
    with pytest.raises(BadRecord, match="JS00004.mat is truncated"):
        reader.read(refs["JS00004"])
    with pytest.raises(BadRecord, match="unreadable header"):
        reader.read(refs["JS00003"])
    missing = RecordRef(record_id="JS99999", location=str(raw / "WFDB_ChapmanShaoxing" / "JS99999"))
    with pytest.raises(BadRecord, match="missing file JS99999.hea"):
        reader.read(missing)


def test_arrhythmia_reader_and_refs_pickle_for_worker_processes(challenge_raw):
    raw, _ = challenge_raw
    reader, refs = arrhythmia(raw)
    clone, ref = pickle.loads(pickle.dumps((reader, refs["JS00001"])))
    assert clone.read(ref).data.shape == (12, 5000)


# ----------------------------------------------------------------------------------------------
# MIMIC-IV-ECG

MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]  # aVF before aVL
# subject, study, report statements; 40000001 truncated .dat, 40000002 unparseable header, 40000003 no
# report row, 40000005 no files at all
MIMIC_ROWS = [(10000032, 40689238, ["Sinus rhythm", "Incomplete right bundle branch block", "Borderline ECG"]),
              (10000032, 44458630, ["Atrial fibrillation with rapid ventricular response", "Left bundle branch block",
                                    "Inferior infarct - age undetermined"]),
              (10000117, 45090959, ["SINUS BRADYCARDIA", "1st degree A-V block", "Nonspecific ST and T wave abnormality"]),
              (10000117, 40000001, ["Sinus tachycardia", "Ventricular premature complex", "LVH with secondary repolarization abnormality"]),
              (10000560, 40000002, ["Ventricular paced rhythm"]),
              (10000560, 40000003, None),
              (10000560, 40000004, ["Technically unsatisfactory tracing", "Wandering atrial pacemaker"]),
              (10000560, 40000005, ["Atrial flutter", "RBBB and LAFB", "Left axis deviation"])]


def mimic_path(subject, study):
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


@pytest.fixture(scope="module")
def mimic_raw(tmp_path_factory, ecg):
    raw = tmp_path_factory.mktemp("mimic")
    order = [CHALLENGE_LEADS.index(lead) for lead in MIMIC_LEADS]
    records, reports = [], []
    for subject, study, statements in MIMIC_ROWS:
        path = mimic_path(subject, study)
        records.append(dict(subject_id=subject, study_id=study, file_name=study, ecg_time="2180-07-23 08:44:00", path=path))
        if statements is not None:
            cells = {f"report_{k}": statements[k] if k < len(statements) else None for k in range(18)}
            reports.append(dict(subject_id=subject, study_id=study, cart_id=6848296, ecg_time="2180-07-23 08:44:00",
                                **cells, bandwidth="0.005-150 Hz", rr_interval=659))
        if study != 40000005:
            write_wfdb(raw / os.path.dirname(path), str(study), ecg[::2][:, order] / 1000.0, 500, MIMIC_LEADS)
        if study == 40000001:
            truncate(raw / f"{path}.dat")
        if study == 40000002:
            garble_header(raw / f"{path}.hea")
    records.append(dict(subject_id=10000560, study_id=40000006, file_name=40000006, ecg_time="2180-07-23", path=None))
    pd.DataFrame(records).to_csv(raw / "record_list.csv", index=False)
    pd.DataFrame(reports).to_csv(raw / "machine_measurements.csv", index=False)
    return raw


def mimic(raw, *argv):
    reader = MimicIVECGSource(raw, options(MimicIVECGSource, *argv))
    return reader, {ref.record_id: ref for ref in reader.index()}


def test_mimic_index_reads_only_the_csvs_and_is_unlabelled_by_default(mimic_raw, monkeypatch):
    def no_signal_files(*args, **kwargs):
        raise AssertionError("index() opened a signal file")
    monkeypatch.setattr(wfdb, "rdsamp", no_signal_files)
    monkeypatch.setattr(wfdb, "rdheader", no_signal_files)
    monkeypatch.setattr(wfdb, "rdrecord", no_signal_files)
    reader, refs = mimic(mimic_raw)
    assert list(refs) == sorted(str(study) for _, study, _ in MIMIC_ROWS)  # 40000005 has no files: still listed
    assert refs["44458630"].patient_id == "10000032" and refs["40000003"].patient_id == "10000560"
    assert all(ref.labels is None and ref.split is None for ref in refs.values())
    assert reader.task_type is None and reader.label_names == [] and reader.excluded == {}
    assert reader.index_problems == [("40000006", "record_list.csv row without a usable path")]
    assert refs["40689238"].location == str(mimic_raw / mimic_path(10000032, 40689238))
    assert refs["40689238"].extra == {"ecg_time": "2180-07-23 08:44:00"}


def test_mimic_report_labels_come_from_the_keyword_table(mimic_raw):
    reader, refs = mimic(mimic_raw, "--labels", "report")
    assert {i: ref.labels for i, ref in refs.items()} == {
        "40000001": ["sinus tachycardia", "ventricular premature complexes", "left ventricular hypertrophy"],
        "40000002": ["pacemaker"],
        "40000005": ["atrial flutter", "RBBB", "left axis deviation"],
        "40689238": ["sinus rhythm"],
        "44458630": ["atrial fibrillation", "LBBB", "myocardial infarction"],
        "45090959": ["sinus bradycardia", "1st degree AV block", "ST changes", "T wave changes"]}
    assert reader.excluded == {"no machine report": 1, "no statement of the keyword table": 1}
    assert reader.task_type == "multilabel"
    assert reader.label_names == sorted({label for ref in refs.values() for label in ref.labels})


@pytest.mark.parametrize("text, labels", [
    ("Sinus rhythm", ["sinus rhythm"]),
    ("sinus rhythm with marked sinus arrhythmia", ["sinus rhythm"]),
    ("Sinus bradycardia", ["sinus bradycardia"]),
    ("SINUS TACHYCARDIA", ["sinus tachycardia"]),
    ("Atrial fibrillation with slow ventricular response", ["atrial fibrillation"]),
    ("Atrial flutter with 2:1 A-V conduction", ["atrial flutter"]),
    ("First degree AV block", ["1st degree AV block"]),
    ("Left bundle branch block", ["LBBB"]),
    ("Incomplete left bundle branch block", []),
    ("RBBB with left anterior fascicular block", ["RBBB"]),
    ("Incomplete right bundle branch block", []),
    ("Left axis deviation", ["left axis deviation"]),
    ("Multiple premature ventricular contractions", ["ventricular premature complexes"]),
    ("with occasional PVCs", ["ventricular premature complexes"]),
    ("ST elevation consider anterior injury", ["ST changes"]),
    ("Inferior ST segment depression", ["ST changes"]),
    ("Lateral ST-T changes are nonspecific", ["ST changes", "T wave changes"]),
    ("T wave inversion in lateral leads", ["T wave changes"]),
    ("Anteroseptal infarct, old", ["myocardial infarction"]),
    ("Possible acute myocardial infarction", ["myocardial infarction"]),
    ("Left ventricular hypertrophy", ["left ventricular hypertrophy"]),
    ("Electronic ventricular pacemaker", ["pacemaker"]),
    ("Atrial-sensed ventricular-paced rhythm", ["pacemaker"]),
    ("Wandering atrial pacemaker", []),
    ("Normal ECG", []),
])
def test_mimic_keyword_table_is_case_insensitive_and_keeps_near_misses_out(text, labels):
    hits = match_keywords(pd.Series([text, text.upper()]))
    assert list(hits.columns) == list(KEYWORDS)
    assert [label for label in KEYWORDS if hits.at[0, label]] == labels
    assert [label for label in KEYWORDS if hits.at[1, label]] == labels


def test_mimic_read_gives_the_record_in_mV_at_500_hz_with_the_header_lead_names(mimic_raw, ecg):
    reader, refs = mimic(mimic_raw)
    signal = reader.read(refs["40689238"])
    assert signal.data.shape == (12, 5000) and signal.sampling_rate == 500.0
    assert list(signal.lead_names) == MIMIC_LEADS and signal.units == "mV"
    np.testing.assert_allclose(signal.data[MIMIC_LEADS.index("aVF")], ecg[::2, 5] / 1000.0, atol=6e-4)
    assert 0.3 < np.abs(signal.data).max() < 5.0


def test_mimic_truncated_unparseable_or_missing_records_raise_badrecord_with_a_reason(mimic_raw):
    reader, refs = mimic(mimic_raw)
    for record_id, reason in (("40000001", "truncated"), ("40000002", "unreadable header"),
                              ("40000005", "missing file 40000005")):
        with pytest.raises(BadRecord, match=reason):
            reader.read(refs[record_id])


def test_mimic_report_labels_need_the_machine_measurements(tmp_path, mimic_raw):
    (tmp_path / "record_list.csv").write_bytes((mimic_raw / "record_list.csv").read_bytes())
    with pytest.raises(ConfigError, match="machine_measurements.csv"):
        mimic(tmp_path, "--labels", "report")


def test_mimic_reader_and_refs_pickle_for_worker_processes(mimic_raw):
    reader, refs = mimic(mimic_raw)
    clone, ref = pickle.loads(pickle.dumps((reader, refs["45090959"])))
    assert clone.read(ref).data.shape == (12, 5000)


def test_the_sources_registry_names_these_readers():
    assert source_class("ptbxl") is PTBXLSource and PTBXLSource.name == "ptbxl"
    assert source_class("arrhythmia") is ArrhythmiaSource and ArrhythmiaSource.name == "arrhythmia"
    assert source_class("mimic_iv_ecg") is MimicIVECGSource and MimicIVECGSource.name == "mimic_iv_ecg"
    assert {cls.modality for cls in (PTBXLSource, ArrhythmiaSource, MimicIVECGSource)} == {"ecg"}


# ----------------------------------------------------------------------------------------------
# Through python -m datasets.ingest: the store's splits, labels and report

def ingested(source, raw, out, *argv):
    from datasets import ingest
    from datasets.store import Store

    assert ingest.main([source, "--raw", str(raw), "--out", str(out), "--workers", "1", "--quiet", *argv]) == 0
    store = Store(out)
    report = __import__("json").loads((out / "ingest_report.json").read_text())
    return store, report


def labels_of(store):
    return {rid: [store.label_names[j] for j in np.flatnonzero(store.labels[i])] for i, rid in enumerate(store.record_ids)}


def split_of(store):
    return {store.record_ids[int(i)]: name for name in ("train", "val", "test") for i in store.split(name)}


def test_ptbxl_ingest_keeps_the_official_folds_and_reports_the_bad_records(ptbxl_raw, tmp_path):
    store, report = ingested("ptbxl", ptbxl_raw, tmp_path / "ptbxl")
    assert store.record_ids == ["1", "2", "3"]
    assert split_of(store) == {"1": "train", "2": "val", "3": "test"}  # strat_fold 1-8 / 9 / 10
    assert labels_of(store) == {"1": ["NORM"], "2": ["MI"], "3": ["HYP", "STTC"]}
    assert store.label_names == ["HYP", "MI", "NORM", "STTC"] and store.patient_ids == ["15709", "15709", "13243"]
    assert {b["record_id"] for b in report["skipped"]} == {"5", "6", "8"}
    assert report["excluded"] == {"no statement of the superdiagnostic label set": 1}
    assert [p[0] for p in report["index_problems"]] == ["7"]
    assert store.shape == (3, 12, 5000) and store.contract["source"] == "ptbxl"


def test_ptbxl_ingest_at_100_hz_reads_the_100_hz_files(ptbxl_raw, tmp_path):
    store, _ = ingested("ptbxl", ptbxl_raw, tmp_path / "ptbxl100", "--rate", "100")
    assert store.sampling_rate == 100.0 and store.shape == (3, 12, 1000)
    assert store.info["ingest"]["options"]["rate"] == 100.0


def test_arrhythmia_ingest_has_snomed_multilabels_and_names_the_unknown_codes(challenge_raw, tmp_path):
    raw, _ = challenge_raw
    store, report = ingested("arrhythmia", raw, tmp_path / "arrhythmia", "--val", "0.25", "--test", "0.25",
                             "--folds", "2")
    assert set(store.record_ids) == {"JS00001", "JS00002", "JS10647", "JS10648", "JS10650"}
    labels = labels_of(store)
    assert labels["JS00001"] == ["AF", "RBBB"] and labels["JS10648"] == [f"SNOMED {UNKNOWN_CODE}"]
    assert {b["record_id"] for b in report["skipped"]} == {"JS00003", "JS00004"}
    assert report["unknown_codes"] == {UNKNOWN_CODE: 2}
    assert sorted(split_of(store)) == sorted(store.record_ids)  # every record in exactly one split


def test_mimic_ingest_groups_the_splits_by_subject(mimic_raw, tmp_path):
    store, report = ingested("mimic_iv_ecg", mimic_raw, tmp_path / "mimic", "--val", "0.34", "--test", "0.34",
                             "--folds", "0")
    assert store.task_type is None and store.n == 5
    splits = split_of(store)
    by_subject = {}
    for rid, subject in zip(store.record_ids, store.patient_ids):
        by_subject.setdefault(subject, set()).add(splits[rid])
    assert all(len(s) == 1 for s in by_subject.values()), by_subject
    assert {b["record_id"] for b in report["skipped"]} == {"40000001", "40000002", "40000005"}
