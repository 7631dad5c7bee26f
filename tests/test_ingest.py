"""``python -m datasets.ingest`` end to end on a small MIMIC-IV-ECG-layout WFDB tree built from a real
ECG (pydicom's 12-lead test recording): bad records are skipped and reported with their reasons,
splits are grouped by patient, an interrupted ingest (killed, or stopped with Ctrl-C) continues to
the store an uninterrupted one writes, and shards merge into that same store."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file

from datasets import ingest
from datasets.sources import standard_lead
from datasets.store import STANDARD_LEADS, Store


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = 14
BAD = {"40000100": "truncated", "40000101": "nan", "40000102": "eleven leads"}
# the order pydicom's file has them in, which is ours
LEADS = list(STANDARD_LEADS)


def real_ecg():
    """(5000, 12) mV at 500 Hz from pydicom's waveform_ecg.dcm (1000 Hz, microvolts)."""
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm", download=False))
    names = [standard_lead(ch.ChannelSourceSequence[0].CodeMeaning)
             for ch in ds.WaveformSequence[0].ChannelDefinitionSequence]
    assert names == LEADS
    return ds.waveform_array(0)[::2] / 1000.0


def write_record(raw, path, mv, leads):
    folder = raw / os.path.dirname(path)
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(os.path.basename(path), fs=500, units=["mV"] * len(leads), sig_name=list(leads), p_signal=mv,
                fmt=["16"] * len(leads), adc_gain=[1000.0] * len(leads), baseline=[0] * len(leads),
                write_dir=str(folder))


def mimic_tree(raw, with_bad=True):
    """GOOD records of 5 patients (a different crop and scale each), and the three BAD ones."""
    ecg = real_ecg()
    rows = []
    for i in range(GOOD):
        subject, study = 10000000 + i % 5, 40000000 + i
        path = f"files/p1000/p{subject}/s{study}/{study}"
        write_record(raw, path, np.roll(ecg, 97 * i, axis=0) * (1 + 0.05 * i), LEADS)
        rows.append(dict(subject_id=subject, study_id=study, file_name=study, ecg_time="2180-01-01", path=path))
    if with_bad:
        for study, kind in BAD.items():
            path = f"files/p1000/p10000009/s{study}/{study}"
            mv, leads = ecg.copy(), LEADS
            if kind == "nan":
                mv[1000:1100, 3] = np.nan
            if kind == "eleven leads":
                mv, leads = mv[:, :11], LEADS[:11]
            write_record(raw, path, mv, leads)
            if kind == "truncated":
                dat = raw / f"{path}.dat"
                dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
            rows.append(dict(subject_id=10000009, study_id=int(study), file_name=study, ecg_time="2180-01-01",
                             path=path))
    pd.DataFrame(rows).to_csv(raw / "record_list.csv", index=False)
    return raw


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return mimic_tree(tmp_path_factory.mktemp("mimic_raw"))


def run(*argv):
    return ingest.main(["mimic_iv_ecg", *map(str, argv), "--quiet", "--val", "0.2", "--test", "0.2", "--folds", "2",
                        "--train-subsample", "0.5"])


def store_files(root):
    """Every file of a store, by name -> bytes (the report's timings left out)."""
    files = {}
    for name in sorted(os.listdir(root)):
        data = (root / name).read_bytes()
        if name == "ingest_report.json":
            report = json.loads(data)
            report.pop("seconds"), report.pop("store")
            data = json.dumps(report, sort_keys=True).encode()
        files[name] = data
    return files


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory):
    """The store of one uninterrupted ingest (1 worker, chunks of 4)."""
    out = tmp_path_factory.mktemp("ref") / "mimic"
    assert run("--raw", raw, "--out", out, "--workers", 1, "--chunk", 4) == 0
    return out


def test_the_good_records_are_written_and_exactly_the_three_bad_ones_reported(reference, capsys):
    store = Store(reference)
    assert store.n == GOOD and store.shape == (GOOD, 12, 5000) and store.dtype == np.float16
    report = json.loads((reference / "ingest_report.json").read_text())
    assert report["counts"] == {"indexed": GOOD + 3, "written": GOOD, "skipped": 3, "padded": 0}
    reasons = {b["record_id"]: b["reason"] for b in report["skipped"]}
    assert set(reasons) == set(BAD)
    assert "truncated" in reasons["40000100"]
    assert "NaN" in reasons["40000101"] or "missing" in reasons["40000101"]
    assert "V6" in reasons["40000102"] and "missing" in reasons["40000102"]
    assert not any(bad in store.record_ids for bad in BAD)


def test_the_store_holds_the_signals_in_mv_in_our_lead_order_with_its_contract(reference, raw):
    store = Store(reference)
    first = np.asarray(store.signals[0], dtype=np.float32)
    expected = real_ecg().T
    assert np.abs(first - expected).max() < 2e-3  # float16 and the 1 uV resolution of the files
    assert store.lead_names == LEADS and store.sampling_rate == 500.0
    contract = store.contract
    assert contract["source"] == "mimic_iv_ecg" and contract["units"] == "mV" and contract["seconds"] == 10.0
    assert contract["baseline"] == "none" and contract["zscore"] == "none"
    assert store.info["ingest"]["options"]["chunk"] == 4 and "workers" not in store.info["ingest"]["options"]


def test_splits_keep_each_patient_in_one_split(reference):
    store = Store(reference)
    patient_of = dict(zip(range(store.n), store.patient_ids))
    seen = {}
    for split in ("train", "val", "test"):
        for i in store.split(split):
            seen.setdefault(patient_of[int(i)], set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values()), seen
    assert sorted(store.split("train").tolist() + store.split("val").tolist() + store.split("test").tolist()) == \
        list(range(store.n))
    for k in (1, 2):  # folds are grouped too
        train = {patient_of[int(i)] for i in store.split(f"fold_{k}_train")}
        assert not train & {patient_of[int(i)] for i in store.split(f"fold_{k}_val")}


def test_workers_do_not_change_the_store(raw, reference, tmp_path):
    assert run("--raw", raw, "--out", tmp_path / "mimic", "--workers", 2, "--chunk", 4) == 0
    assert store_files(tmp_path / "mimic") == store_files(reference)


def test_shards_merged_give_the_same_store(raw, reference, tmp_path, capsys):
    out = tmp_path / "mimic"
    assert run("--raw", raw, "--out", out, "--workers", 1, "--chunk", 4, "--shard", "2/2") == 0
    assert ingest.main(["merge", "--out", str(out), "--quiet"]) == 2  # shard 1 is not done
    assert "shard_1_of_2" in capsys.readouterr().err
    assert run("--raw", raw, "--out", out, "--workers", 1, "--chunk", 4, "--shard", "1/2") == 0
    assert not out.exists()
    assert ingest.main(["merge", "--out", str(out), "--quiet"]) == 0
    assert store_files(out) == store_files(reference)
    assert not (tmp_path / "mimic.parts").exists()


def ingest_process(raw, out):
    """The ingest as a user starts it, in its own process group."""
    cmd = [sys.executable, "-m", "datasets.ingest", "mimic_iv_ecg", "--raw", str(raw), "--out", str(out), "--quiet",
           "--val", "0.2", "--test", "0.2", "--folds", "2", "--train-subsample", "0.5", "--workers", "1",
           "--chunk", "4"]
    # SIGINT at its default in the child, as from a terminal: a process started in the background
    # by a non-interactive shell (or a test that left it ignored) inherits SIG_IGN, and Ctrl-C
    # would then never reach the ingest
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(path, proc, seconds=120):
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGINT"])
def test_an_interrupted_ingest_rerun_gives_the_store_of_an_uninterrupted_one(raw, reference, tmp_path, stop):
    """The header of the 10th record is a FIFO, so reading it blocks: the ingest is stopped there,
    deterministically, after two of its chunks; the rerun (with the real header back) continues."""
    header = next(raw.glob("files/**/s40000009/40000009.hea"))
    copy = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(raw), str(copy)], check=True)
    blocked = copy / header.relative_to(raw)
    real = blocked.read_bytes()
    blocked.unlink()
    os.mkfifo(blocked)
    out = tmp_path / "mimic"
    proc = ingest_process(copy, out)
    wait_for(tmp_path / "mimic.parts" / "shard_1_of_1" / "chunk_000001.json", proc)
    if stop == "SIGKILL":
        os.killpg(proc.pid, signal.SIGKILL)  # everything, at once: nothing gets to clean up
        proc.wait()
    else:
        time.sleep(0.5)  # the worker is blocked in the FIFO
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "rerun the same command to continue" in err and "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "mimic.parts" / "shard_1_of_1" / "chunk_000002.json").exists()
    blocked.unlink()
    blocked.write_bytes(real)
    proc = ingest_process(copy, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "2 of 5 chunk(s) of shard 1/1 are done already" in err
    assert store_files(out) == store_files(reference)


def test_a_rerun_with_other_settings_is_refused_until_overwrite(raw, tmp_path, capsys):
    out = tmp_path / "mimic"
    work = tmp_path / "mimic.parts"
    work.mkdir()
    (work / "plan.json").write_text(json.dumps({"options": {"rate": 250.0}}))
    assert run("--raw", raw, "--out", out, "--workers", 1) == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "rate" in err and "--overwrite" in err
    assert run("--raw", raw, "--out", out, "--workers", 1, "--overwrite") == 0
    assert Store(out).n == GOOD


@pytest.mark.parametrize("argv, needle", [
    (["--rate", "0"], "--rate must be a positive number"),
    (["--val", "0.6", "--test", "0.5"], "--val and --test"),
    (["--shard", "3/2"], "--shard 3/2"),
    (["--workers", "0"], "--workers must be at least 1"),
    (["--min-seconds", "20"], "--min-seconds"),
])
def test_bad_options_are_one_message_before_any_work(raw, tmp_path, capsys, argv, needle):
    code = ingest.main(["mimic_iv_ecg", "--raw", str(raw), "--out", str(tmp_path / "x"), "--quiet", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("Error:") == 1 and needle in err, err
    assert not (tmp_path / "x.parts").exists()


def test_an_existing_store_is_kept_without_overwrite(reference, raw, capsys):
    before = store_files(reference)
    assert run("--raw", raw, "--out", reference, "--workers", 1, "--chunk", 4) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert store_files(reference) == before


def test_a_missing_raw_folder_is_one_message(tmp_path, capsys):
    assert run("--raw", tmp_path / "nope", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "nope" in err


def test_a_store_from_the_ingest_trains(reference, tmp_path):
    """main_pretrain runs a few steps on the ingested store."""
    import main_pretrain
    from builders import PRETRAIN_TINY
    from util import cli

    argv = [f"paths.data_dir={reference.parent}", f"modality.dataset_key={reference.name}", "~modality.build_demo",
            f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run", *PRETRAIN_TINY, "data.batch_size=4",
            "trainer.max_epochs=1"]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(x.get("val/loss", np.nan)) for x in lines)


# ---- the real packaged ECGs: DICOM (pydicom, ecgprocess) and GE CardioSoft XML (ecgprocess) ------------------
def packaged(name):
    """A file of ecgprocess's example data (a test-only dependency: located, never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("ecgprocess")
    if spec is None:
        pytest.skip("ecgprocess (the packaged GE ECGs) is not installed")
    return os.path.join(list(spec.submodule_search_locations)[0], "example_data", "example_datasets", name)


def plausible_mv(store):
    """Every record's leads peak between 0.1 and 5 mV (a millivolt ECG, not uV or V)."""
    peaks = np.abs(np.asarray(store.signals, dtype=np.float32)).max(axis=2)
    return bool(((peaks > 0.1) & (peaks < 5.0)).all()), peaks


def test_packaged_dicom_ecgs_ingest_with_their_statements_as_labels_and_pretrain(tmp_path):
    raw = tmp_path / "dicom"
    raw.mkdir()
    shutil.copy(get_testdata_file("waveform_ecg.dcm", download=False), raw / "pydicom_waveform_ecg.dcm")
    for name in ("example-DICOM1.dcm", "example-DICOM2.dcm"):
        shutil.copy(packaged(name), raw / name)
    out = tmp_path / "data" / "dicom_ecgs"
    assert ingest.main(["dicom_ecg", "--raw", str(raw), "--out", str(out), "--quiet", "--workers", "1",
                        "--val", "0.34", "--test", "0", "--folds", "0", "--train-subsample", "0"]) == 0
    store = Store(out)
    assert store.n == 3 and store.task_type == "multilabel" and store.sampling_rate == 500.0
    labelled = {rid: {store.label_names[j] for j in np.flatnonzero(store.labels[i])}
                for i, rid in enumerate(store.record_ids)}
    assert {"RITMO SINUSALE", "ECG NORMALE"} <= labelled["pydicom_waveform_ecg"]
    assert "ATRIAL FIBRILLATION" in labelled["example-DICOM2"]
    assert labelled["example-DICOM1"] == set()  # the file has no statements
    ok, peaks = plausible_mv(store)
    assert ok, peaks
    import main_pretrain
    from builders import PRETRAIN_TINY
    from util import cli

    argv = [f"paths.data_dir={out.parent}", f"modality.dataset_key={out.name}", "~modality.build_demo",
            f"paths.log_dir={tmp_path}/logs", f"hydra.run.dir={tmp_path}/run", *PRETRAIN_TINY, "data.batch_size=2",
            "trainer.max_epochs=2"]
    assert cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py") == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines if "val/loss" in x] == [0, 1]
    assert all(np.isfinite(x["val/loss"]) for x in lines if "val/loss" in x)


def test_packaged_cardiosoft_xml_ingests_as_ukb_ecg_in_mv_with_its_statements(tmp_path):
    raw = tmp_path / "ukb"
    raw.mkdir()
    shutil.copy(packaged("example-XML1.xml"), raw / "1234567_20205_2_0.xml")
    out = tmp_path / "ukb_ecg"
    assert ingest.main(["ukb_ecg", "--raw", str(raw), "--out", str(out), "--quiet", "--workers", "1",
                        "--val", "0", "--test", "0", "--folds", "0", "--train-subsample", "0"]) == 0
    store = Store(out)
    assert store.record_ids == ["1234567_20205_2_0"] and store.patient_ids == ["1234567"]
    assert store.label_names and store.labels[0].all()  # its statements are its labels
    assert any("brady" in name.lower() for name in store.label_names), store.label_names
    ok, peaks = plausible_mv(store)
    assert ok, peaks


def test_raw_data_a_reader_cannot_use_at_all_is_one_message(tmp_path, capsys):
    """A tensor file that needs pickle to load (here a NumPy array) is refused, not loaded."""
    import torch

    torch.save({"data": np.zeros((2, 12, 100))}, tmp_path / "x.pt")
    code = ingest.main(["reference_pt", "--raw", str(tmp_path), "--signals", "x.pt", "--native-rate", "500",
                        "--out", str(tmp_path / "store"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("Error:") == 1 and "Traceback" not in err, err
    assert "reference_pt: cannot index" in err


def test_a_worker_killed_by_the_system_is_one_error_and_the_rerun_completes(raw, reference, tmp_path, capsys,
                                                                             monkeypatch):
    """A worker that dies (as the out-of-memory killer does it: SIGKILL) stops the ingest with one
    message instead of a hang; the rerun continues from the chunks written before."""
    from datasets.sources.mimic_iv_ecg import MimicIVECGSource

    real_read = MimicIVECGSource.read

    def dies_on_the_tenth(self, ref):
        if ref.record_id == "40000009":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_read(self, ref)

    monkeypatch.setattr(MimicIVECGSource, "read", dies_on_the_tenth)  # the forked workers inherit it
    out = tmp_path / "mimic"
    assert run("--raw", raw, "--out", out, "--workers", 2, "--chunk", 4) == 2
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "worker process died (exit code -9" in err, err
    assert (tmp_path / "mimic.parts" / "shard_1_of_1" / "chunk_000001.json").exists()
    monkeypatch.setattr(MimicIVECGSource, "read", real_read)
    assert run("--raw", raw, "--out", out, "--workers", 2, "--chunk", 4) == 0
    assert store_files(out) == store_files(reference)
