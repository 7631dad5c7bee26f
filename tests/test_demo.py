"""The demo dataset: deterministic, learnable classes, paired CMR, concurrent builds, real ECGs."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

from datasets import demo
from datasets.store import STANDARD_LEADS, Store, StoreError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_equal(a, b):
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    return all(open(os.path.join(a, n), "rb").read() == open(os.path.join(b, n), "rb").read() for n in names)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    a = demo.build_demo(tmp_path / "a", n_records=40, seed=3)
    b = demo.build_demo(tmp_path / "b", n_records=40, seed=3)
    c = demo.build_demo(tmp_path / "c", n_records=40, seed=4, include_real=False)
    for key in ("ecg", "cmr"):
        assert files_equal(a[key], b[key])
    assert not np.array_equal(Store(a["ecg"]).signals[:40], Store(c["ecg"]).signals)


def test_stores_are_paired_and_described(tmp_path):
    paths = demo.build_demo(tmp_path, n_records=30, seed=0, include_real=False)
    ecg, cmr = Store(paths["ecg"]), Store(paths["cmr"])
    assert ecg.shape == (30, 12, 5000) and ecg.dtype == np.float16 and ecg.sampling_rate == 500
    assert ecg.lead_names == list(STANDARD_LEADS) and ecg.info["units"] == "mV"
    assert cmr.shape == (30, 1, 128, 128) and cmr.dtype == np.uint8
    assert ecg.record_ids == cmr.record_ids and np.array_equal(ecg.labels, cmr.labels)
    assert ecg.info["synthetic"] and "McSharry" in ecg.info["provenance"]
    assert ecg.label_names == demo.LABEL_NAMES and ecg.task_type == "multilabel"
    assert {f"fold_{k}_{s}" for k in range(1, 6) for s in ("train", "val")} <= set(ecg.splits)
    assert (np.asarray(ecg.labels).sum(1) >= 1).all()
    signals = np.asarray(ecg.signals, dtype=np.float32)
    assert 0.3 < np.abs(signals).max() < 6  # millivolts
    lead = {name: signals[:, i] for i, name in enumerate(STANDARD_LEADS)}
    assert np.abs(lead["III"] - (lead["II"] - lead["I"])).max() < 0.01  # Einthoven, up to float16 rounding
    with pytest.raises(StoreError, match="overwrite"):
        demo.build_demo(tmp_path, n_records=30)


SOS = butter(2, [5, 20], btype="band", fs=500, output="sos")


def lead_ii_features(x, fs=500):
    """[mean RR (s), RR irregularity, QRS width (s)] of a lead II trace: a plain QRS detector."""
    energy = np.convolve(np.abs(np.gradient(sosfiltfilt(SOS, x))), np.ones(20) / 20, mode="same")
    peaks, _ = find_peaks(energy, height=0.35 * np.percentile(energy, 99.5), distance=int(0.3 * fs))
    rr = np.diff(peaks) / fs
    floor = np.percentile(energy, 20)
    widths = [np.sum(energy[p - 100:p + 100] > floor + 0.2 * (energy[p] - floor)) / fs for p in peaks[1:-1]]
    return np.array([rr.mean(), np.median(np.abs(np.diff(rr))) / rr.mean(), np.median(widths)])


def test_classes_are_separable_from_lead_ii_rhythm_and_qrs_width(tmp_path):
    store = Store(demo.build_demo(tmp_path, n_records=300, seed=1, include_real=False)["ecg"])
    labels = np.asarray(store.labels)
    features = np.stack([lead_ii_features(store.signals[i, 1].astype(np.float64)) for i in range(len(store))])
    has = {name: labels[:, j] > 0 for j, name in enumerate(demo.LABEL_NAMES)}
    rr, irregular, width = features.T
    assert np.median(rr[has["SBRAD"]]) > np.median(rr[has["NORM"]]) > np.median(rr[has["STACH"]])
    assert np.median(irregular[has["AFIB"]]) > 4 * np.median(irregular[~has["AFIB"]])
    assert np.median(width[has["BBB"]]) > 1.3 * np.median(width[~has["BBB"]])
    # nearest centroid over the label combinations, fitted on half, scored on the other half
    combo = np.unique(labels, axis=0, return_inverse=True)[1].reshape(-1)
    fit = np.arange(len(store)) % 2 == 0
    z = (features - features[fit].mean(0)) / features[fit].std(0)
    centroids = np.stack([z[fit & (combo == k)].mean(0) for k in range(combo.max() + 1)])
    predicted = ((z[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    accuracy = (predicted[~fit] == combo[~fit]).mean()
    chance = np.bincount(combo[~fit]).max() / (~fit).sum()
    assert accuracy > 0.8 and chance < 0.5, (accuracy, chance)


def test_cmr_anatomy_follows_the_class_and_the_record(tmp_path):
    paths = demo.build_demo(tmp_path, n_records=200, seed=2, include_real=False)
    ecg = Store(paths["ecg"])
    labels = np.asarray(ecg.labels)
    images = np.asarray(Store(paths["cmr"]).images)[:, 0]
    blood = (images > 160).reshape(len(images), -1).sum(1)  # LV + RV blood pool area, px
    bbb, norm = labels[:, demo.LABEL_NAMES.index("BBB")] > 0, labels[:, 0] > 0
    assert blood[bbb].mean() > 1.3 * blood[norm].mean()  # dilated
    # within one class, the slower the heart (ECG), the larger the cavity (CMR)
    rr = np.array([lead_ii_features(ecg.signals[i, 1].astype(np.float64))[0] for i in np.flatnonzero(norm)])
    assert np.corrcoef(rr, blood[norm])[0, 1] > 0.3


def test_statement_labels():
    assert demo.statement_labels(["RITMO SINUSALE", "ECG NORMALE"]).tolist() == [1, 0, 0, 0, 0]
    assert demo.statement_labels(["Sinus bradycardia", "Otherwise normal ECG"]).tolist() == [0, 1, 0, 0, 0]
    assert demo.statement_labels(["ATRIAL FIBRILLATION", "ABNORMAL CHANGES"]).tolist() == [0, 0, 0, 1, 0]
    assert demo.statement_labels([]).tolist() == [0, 0, 0, 0, 0]


def test_ensure_demo_from_two_processes_builds_once(tmp_path):
    code = ("import os, sys; from datasets.demo import ensure_demo; "
            "p = ensure_demo(sys.argv[1], n_records=24, include_real=False); "
            "print(os.stat(p['ecg'] / 'signals.npy').st_ino, os.stat(p['cmr'] / 'images.npy').st_ino)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]  # both see the same files: nobody rebuilt after the first
    assert sorted(os.listdir(tmp_path)) == [".demo.lock", "demo_cmr", "demo_ecg"]
    assert len(Store(tmp_path / "demo_ecg")) == 24
    before = os.stat(tmp_path / "demo_ecg" / "signals.npy").st_ino
    demo.ensure_demo(tmp_path, n_records=24)
    assert os.stat(tmp_path / "demo_ecg" / "signals.npy").st_ino == before


def test_command_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "datasets.demo", "--data-dir", str(tmp_path), "--n-records", "20"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "demo_ecg" in res.stdout and "demo_cmr" in res.stdout and "built in" in res.stdout
    again = subprocess.run([sys.executable, "-m", "datasets.demo", "--data-dir", str(tmp_path), "--n-records", "20"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.skipif(importlib.util.find_spec("pydicom") is None, reason="pydicom is not installed")
def test_real_pydicom_ecg_is_included(tmp_path):
    store = Store(demo.build_demo(tmp_path, n_records=10, seed=0)["ecg"])
    rid = "real_pydicom_waveform_ecg"
    assert rid in store.record_ids
    i = store.record_ids.index(rid)
    assert i in store.split("test") and i not in store.split("train") and i not in store.split("val")
    assert store.labels[i].tolist() == [1, 0, 0, 0, 0]  # "RITMO SINUSALE", "ECG NORMALE"
    x = np.asarray(store.signals[i], dtype=np.float32)
    assert x.shape == (12, 5000) and 0.5 < np.abs(x).max() < 5  # mV at 500 Hz
    assert np.abs(x[2] - (x[1] - x[0])).mean() < 0.05  # III = II - I: leads mapped in order
    rr = lead_ii_features(x[1].astype(np.float64))[0]
    assert 0.5 < rr < 1.5  # a plausible sinus rhythm
    note = next(r for r in store.info["extras"]["real_records"] if r["record_id"] == rid)
    assert "pydicom" in note["source"] and note["original"]["sampling_rate"] == 1000
