"""The deterministic demo dataset: synthetic 12-lead ECGs with learnable classes, paired synthetic
short-axis CMR frames, plus the real 12-lead DICOM ECG that pydicom ships.

ECG model. Each beat is a sum of Gaussian waves (P, Q, R, S, T; McSharry et al. 2003, ECGSYN) on
a 3-D cardiac dipole in Frank coordinates (X left, Y inferior, Z posterior). Each wave has its
own dipole direction, so the dipole traces P, QRS and T loops; the Dower matrix projects it onto
I, II and V1-V6. Beats follow an RR series with heart-rate variability (LF and respiratory HF
modulation); respiration also modulates QRS amplitude. Baseline wander, white noise and, in some
records, mains hum are added to those 8 leads (per electrode, not per lead); III, aVR, aVL and
aVF then follow from Einthoven's and Goldberger's relations, as in a real recording.
10 s at 500 Hz, in millivolts.

Classes (multi-hot over LABEL_NAMES; one each, plus AFIB+BBB, a common real combination):
    NORM   normal sinus rhythm, 60-98 bpm, narrow QRS
    SBRAD  sinus bradycardia, 42-58 bpm, strong respiratory sinus arrhythmia
    STACH  sinus tachycardia, 102-150 bpm, shorter PR
    AFIB   atrial fibrillation: irregularly irregular RR (lognormal), no P waves, 4-9 Hz
           fibrillatory baseline strongest in V1 and the inferior leads
    BBB    wide-QRS left-bundle-branch-block-like: no septal q, broad notched R (QRS ~150 ms),
           deep QS in V1, discordant T

CMR model. One 128 x 128 uint8 short-axis frame per record (about 1.6 mm per pixel): bright LV
blood pool, dark myocardial ring with papillary muscles, RV crescent, lungs and liver, Rician
noise. Anatomy follows the same per-record latents as the ECG: LV cavity radius from the class
(athlete-like bradycardia large, tachycardia under-filled small, BBB dilated with a thin wall,
AFIB thicker wall) and, within a class, from the record's mean RR; wall thickness from a latent
that also scales QRS voltage (hypertrophy raises voltage); heart orientation from a latent that
also rotates the electrical axis. So ECG<->CMR contrastive learning has something to find.

    python -m datasets.demo [--data-dir data] [--n-records 3000] [--seed 0] [--overwrite]
"""
from __future__ import annotations

import argparse
import fcntl
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

from datasets.preprocess import signal_to_contract
from datasets.sources import standard_lead
from datasets.sources.dicom_ecg import read_dicom_ecg
from datasets.store import STANDARD_LEADS, Store, StoreError, StoreWriter, make_splits

GENERATOR_VERSION = 1
LABEL_NAMES = ["NORM", "SBRAD", "STACH", "AFIB", "BBB"]
LABEL_DESCRIPTIONS = {
    "NORM": "normal sinus rhythm",
    "SBRAD": "sinus bradycardia",
    "STACH": "sinus tachycardia",
    "AFIB": "atrial fibrillation",
    "BBB": "wide-QRS left-bundle-branch-block-like conduction",
}
FS = 500
SECONDS = 10
T = FS * SECONDS
IMAGE_SIZE = 128
CHUNK = 250  # records generated together; fixed, so the output does not depend on memory

# Dower matrix: leads I, II, V1..V6 from the Frank dipole (X left, Y inferior, Z posterior).
_DOWER = np.array([
    [0.632, -0.235, 0.059],   # I
    [0.235, 1.066, -0.132],   # II
    [-0.515, 0.157, -0.917],  # V1
    [0.044, 0.164, -1.387],   # V2
    [0.882, 0.098, -1.277],   # V3
    [1.213, 0.127, -0.601],   # V4
    [1.125, 0.127, -0.086],   # V5
    [0.831, 0.076, 0.230],    # V6
])
# The 12 leads from the 8 independent ones (I, II, V1..V6): III = II - I, aVR = -(I + II) / 2,
# aVL = I - II / 2, aVF = II - I / 2. Noise is added to the 8 before this, as electrodes would.
EXPAND = np.zeros((12, 8), dtype=np.float32)
EXPAND[:6, :2] = [[1, 0], [0, 1], [-1, 1], [-0.5, -0.5], [1, -0.5], [-0.5, 1]]
EXPAND[6:, 2:] = np.eye(6)
LEAD_MATRIX = (EXPAND @ _DOWER).astype(np.float32)  # (12, 3): the 12 leads from the dipole

# Class mixture: (labels, probability, heart-rate range in bpm).
_CLASSES = [
    (("NORM",), 0.40, (60, 98)),
    (("SBRAD",), 0.15, (42, 58)),
    (("STACH",), 0.15, (102, 150)),
    (("AFIB",), 0.13, (65, 140)),
    (("BBB",), 0.13, (60, 98)),
    (("AFIB", "BBB"), 0.04, (65, 130)),
]
# Short-axis anatomy per class, in pixels: LV cavity radius, wall thickness (AFIB+BBB uses BBB's).
_ANATOMY = {"NORM": (16.0, 6.0), "SBRAD": (18.5, 7.0), "STACH": (14.0, 6.0), "AFIB": (16.5, 7.5), "BBB": (22.0, 4.5)}


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------------------------
# Per-record latents


def _latents(rng: np.random.Generator, n: int) -> dict:
    """Class, rhythm and anatomy parameters of ``n`` records (arrays of length n)."""
    probs = np.array([p for _, p, _ in _CLASSES])
    kind = rng.choice(len(_CLASSES), size=n, p=probs / probs.sum())
    labels = np.zeros((n, len(LABEL_NAMES)), dtype=np.float32)
    lo, hi = np.zeros(n), np.zeros(n)
    for k, (names, _, (a, b)) in enumerate(_CLASSES):
        for name in names:
            labels[kind == k, LABEL_NAMES.index(name)] = 1
        lo[kind == k], hi[kind == k] = a, b
    hr = rng.uniform(lo, hi)
    afib = labels[:, LABEL_NAMES.index("AFIB")] > 0
    bbb = labels[:, LABEL_NAMES.index("BBB")] > 0
    wall_z = rng.standard_normal(n)   # wall thickness <-> QRS voltage
    axis = rng.normal(0.0, np.deg2rad(15), n)  # heart orientation <-> electrical axis
    cav, wall = np.zeros(n), np.zeros(n)
    for name, (c, w) in _ANATOMY.items():
        rows = labels[:, LABEL_NAMES.index(name)] > 0
        cav[rows], wall[rows] = c, w
    ref_hr = np.array([np.mean(_CLASSES[k][2]) for k in kind])
    cav = cav * (ref_hr / hr) ** 0.35 * np.exp(rng.normal(0, 0.04, n))  # slower heart, larger filling
    wall = wall * np.exp(0.12 * wall_z)
    return dict(labels=labels, hr=hr, afib=afib, bbb=bbb, wall_z=wall_z, axis=axis, cavity=cav, wall=wall)


# ----------------------------------------------------------------------------------------------
# ECG


def _rr_series(rng: np.random.Generator, lat: dict, n_beats: int) -> np.ndarray:
    """(n, n_beats) RR intervals in seconds: sinus with HRV, or irregular AF."""
    n = len(lat["hr"])
    rr0 = 60.0 / lat["hr"]
    k = np.arange(n_beats)[None, :] * rr0[:, None]  # approximate beat times
    lf = rng.uniform(0.01, 0.04, n)[:, None] * np.sin(2 * np.pi * rng.uniform(0.08, 0.12, n)[:, None] * k
                                                      + rng.uniform(0, 2 * np.pi, n)[:, None])
    rsa = np.where(lat["hr"] < 60, rng.uniform(0.03, 0.07, n), rng.uniform(0.005, 0.03, n))
    hf = rsa[:, None] * np.sin(2 * np.pi * rng.uniform(0.15, 0.35, n)[:, None] * k
                               + rng.uniform(0, 2 * np.pi, n)[:, None])
    sinus = rr0[:, None] * (1 + lf + hf + 0.005 * rng.standard_normal((n, n_beats)))
    irregular = rr0[:, None] * np.exp(rng.uniform(0.18, 0.3, n)[:, None] * rng.standard_normal((n, n_beats)))
    rr = np.where(lat["afib"][:, None], irregular, sinus)
    return np.clip(rr, 0.3, 2.0)


def _rotation_z(angle: np.ndarray) -> np.ndarray:
    """(n, 3, 3) rotations in the frontal (X-Y) plane."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.zeros((len(angle), 3, 3), dtype=np.float32)
    rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
    return rot


def _waves(rng: np.random.Generator, lat: dict) -> list[tuple]:
    """Per-record (mu, sigma_left, sigma_right, amplitude, direction (n, 3)) of each wave, times in s from R."""
    n = len(lat["hr"])
    rr = 60.0 / lat["hr"]
    bbb, afib = lat["bbb"], lat["afib"]
    rot = _rotation_z(lat["axis"] + rng.normal(0, np.deg2rad(5), n))
    qrs_gain = np.exp(0.25 * lat["wall_z"] + rng.normal(0, 0.1, n))  # hypertrophy: higher voltage

    def direction(normal, wide):
        d = np.where(bbb[:, None], _unit(wide), _unit(normal))
        return np.einsum("nij,nj->ni", rot, d)

    def jitter(x, rel):
        return x * np.exp(rng.normal(0, rel, n))

    pr = np.clip(0.20 - 0.0008 * (lat["hr"] - 60), 0.12, 0.20) * np.exp(rng.normal(0, 0.06, n))
    qt_scale = np.sqrt(rr)
    width = np.where(bbb, 1.0, 0.0)
    return [
        # P: absent in AF
        (-pr, jitter(0.022, 0.1), jitter(0.022, 0.1), np.where(afib, 0.0, jitter(0.15, 0.2)),
         direction([0.5, 0.8, -0.1], [0.5, 0.8, -0.1])),
        # Q: septal, left-to-right and anterior; absent in LBBB
        (np.full(n, -0.030), np.full(n, 0.008), np.full(n, 0.008), np.where(bbb, 0.0, jitter(0.12, 0.2)) * qrs_gain,
         direction([-0.6, 0.1, -0.8], [-0.6, 0.1, -0.8])),
        # R (LBBB: first, slow part of a notched R)
        (-0.020 * width, jitter(0.012 + 0.008 * width, 0.08), jitter(0.012 + 0.008 * width, 0.08),
         jitter(1.3 - 0.4 * width, 0.1) * qrs_gain, direction([0.65, 0.65, 0.4], [0.5, 0.6, 0.5])),
        # S (LBBB: the late, leftward-posterior second R peak instead)
        (0.030 + 0.008 * width, jitter(0.010 + 0.012 * width, 0.08), jitter(0.010 + 0.012 * width, 0.08),
         jitter(0.45 + 0.55 * width, 0.15) * qrs_gain, direction([-0.5, -0.3, 0.8], [0.8, 0.3, 0.6])),
        # T: asymmetric, timing scales with sqrt(RR); discordant in LBBB
        ((0.30 + 0.02 * width) * qt_scale, jitter(0.06, 0.08) * qt_scale, jitter(0.04, 0.08) * qt_scale,
         jitter(0.35, 0.2) * (1 + 0.2 * width), direction([0.6, 0.6, -0.3], [-0.6, -0.2, -0.5])),
    ]


def _ecg_chunk(rng: np.random.Generator, lat: dict) -> np.ndarray:
    """(n, 12, T) float32 ECGs in mV for the records described by ``lat``."""
    n = len(lat["hr"])
    t = np.arange(T, dtype=np.float32) / FS
    n_beats = int(np.ceil((SECONDS + 2) / 0.3)) + 2  # enough beats even at the 0.3 s RR floor
    rr = _rr_series(rng, lat, n_beats)
    beats = np.cumsum(rr, axis=1) - rr[:, :1] * rng.uniform(0, 1, n)[:, None] - rr[:, :1]  # first R before 0
    # Index of the last R at or before each sample, via one sorted search over all records.
    offset = (np.arange(n) * 1000.0)[:, None]
    prev = np.searchsorted((beats + offset).ravel(), (t[None, :] + offset).ravel(), side="right").reshape(n, T) - 1
    prev -= np.arange(n)[:, None] * n_beats
    flat = beats.ravel()
    base = np.arange(n)[:, None] * n_beats
    dt_prev = (t[None, :] - flat[base + prev]).astype(np.float32)      # >= 0: time since the last R
    dt_next = (t[None, :] - flat[base + prev + 1]).astype(np.float32)  # < 0: time to the next R
    resp = 1 + rng.uniform(0.03, 0.1, n)[:, None] * np.sin(
        2 * np.pi * rng.uniform(0.15, 0.35, n)[:, None] * t[None, :] + rng.uniform(0, 2 * np.pi, n)[:, None])

    resp = resp.astype(np.float32)
    dipole = np.zeros((n, 3, T), dtype=np.float32)
    for i, (mu, sl, sr, amp, direction) in enumerate(_waves(rng, lat)):
        mu, sl, sr, amp = (np.asarray(a, dtype=np.float32)[:, None] for a in (mu, sl, sr, amp))
        g = np.zeros((n, T), dtype=np.float32)
        for dt in (dt_prev, dt_next):
            z = dt - mu
            z /= np.where(z < 0, sl, sr)
            g += np.exp(-0.5 * z * z)
        g *= amp
        if 1 <= i <= 3:  # QRS waves breathe
            g *= resp
        dipole += direction.astype(np.float32)[:, :, None] * g[:, None, :]

    afib = np.flatnonzero(lat["afib"])
    if afib.size:  # fibrillatory waves: a wandering 4-9 Hz atrial dipole, strongest in V1
        m = afib.size
        f0 = rng.uniform(4.5, 8.5, m)[:, None]
        phase = 2 * np.pi * f0 * t + rng.uniform(0.5, 2.0, m)[:, None] * np.sin(
            2 * np.pi * rng.uniform(0.1, 0.4, m)[:, None] * t + rng.uniform(0, 2 * np.pi, m)[:, None])
        amp = rng.uniform(0.03, 0.09, m)[:, None] * (
            1 + 0.4 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi, m)[:, None]))
        f = (amp * np.sin(phase + rng.uniform(0, 2 * np.pi, m)[:, None])).astype(np.float32)
        dipole[afib] += _unit([-0.3, 0.5, -0.8])[None, :, None] * f[:, None, :]

    ecg = np.matmul(_DOWER.astype(np.float32), dipole)  # (n, 8, T): I, II, V1..V6

    # Baseline wander: smooth per-lead curves from Gaussian bumps every 0.5 s.
    centers = np.linspace(-0.5, SECONDS + 0.5, 23, dtype=np.float32)
    basis = np.exp(-0.5 * ((t[None, :] - centers[:, None]) / 0.35) ** 2)  # (23, T)
    basis[basis < 1e-6] = 0  # no denormals: they make the product 100x slower
    coef = rng.standard_normal((n * 8, len(centers))).astype(np.float32)
    coef *= np.repeat(rng.uniform(0.01, 0.08, n).astype(np.float32), 8)[:, None]
    ecg += (coef @ basis).reshape(n, 8, T)
    # White noise and, in 20 % of records, 50/60 Hz mains hum.
    noise = rng.standard_normal((n, 8, T), dtype=np.float32)
    noise *= rng.uniform(0.004, 0.025, n).astype(np.float32)[:, None, None]
    ecg += noise
    hum = np.flatnonzero(rng.uniform(size=n) < 0.2)
    if hum.size:
        freq = rng.choice([50.0, 60.0], hum.size)[:, None]
        wave = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, hum.size)[:, None]).astype(np.float32)
        ecg[hum] += rng.uniform(0.005, 0.02, (hum.size, 8, 1)).astype(np.float32) * wave[:, None, :]
    return np.matmul(EXPAND, ecg)  # (n, 12, T)


# ----------------------------------------------------------------------------------------------
# CMR


def _paint(image: np.ndarray, inside: np.ndarray, value) -> None:
    """Blend ``value`` into ``image`` where ``inside`` (signed distance in px, > 0 inside) holds."""
    alpha = np.clip(0.5 + inside / 1.2, 0.0, 1.0)  # ~1 px partial-volume edge
    image += alpha * (value - image)


def _cmr_chunk(rng: np.random.Generator, lat: dict, size: int = IMAGE_SIZE) -> np.ndarray:
    """(n, 1, size, size) uint8 short-axis frames for the records described by ``lat``."""
    n = len(lat["hr"])
    col = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]  # noqa: E731
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = col(size * 0.52 + rng.normal(0, 2, n)), col(size * 0.48 + rng.normal(0, 2, n))
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    cav, wall = col(lat["cavity"]), col(lat["wall"])
    epi = cav + wall
    rv_angle = col(np.pi + 0.35 + lat["axis"])  # RV to the image left (patient right), anterior

    # Background tissue with a smooth texture, lungs, liver.
    img = np.full((n, size, size), 85.0, dtype=np.float32)
    for _ in range(3):
        k = rng.uniform(0.02, 0.08, (2, n))
        img += col(rng.uniform(4, 10, n)) * np.sin(col(k[0]) * xx + col(k[1]) * yy + col(rng.uniform(0, 6.3, n)))
    for ox, oy, ax, ay in ((1.0, 0.25, 0.7, 1.6), (-1.9, -0.1, 0.6, 1.7)):  # left lung (image right), right lung
        ex = (xx - (cx + ox * (epi + 14))) / (ax * 30)
        ey = (yy - (cy + oy * 30)) / (ay * 30)
        _paint(img, (1 - np.sqrt(ex * ex + ey * ey)) * 25, 15.0)
    ex, ey = (xx - (cx - 35)) / 45, (yy - (cy + 62)) / 30
    _paint(img, (1 - np.sqrt(ex * ex + ey * ey)) * 30, 110.0)

    # RV: an ellipse wrapped around the LV's RV side, wall then blood; the LV painted over it
    # leaves a crescent that hugs the septum.
    rv = 0.5 * cav * col(np.exp(rng.normal(0, 0.08, n)))  # RV cavity depth
    ux, uy = np.cos(rv_angle), np.sin(rv_angle)
    shift, half = 0.45 * epi + 0.3 * rv, 0.45 * epi + 0.9 * rv
    rx, ry = cx + shift * ux, cy + shift * uy
    along = (xx - rx) * ux + (yy - ry) * uy
    across = -(xx - rx) * uy + (yy - ry) * ux
    rv_r = np.sqrt((along / half) ** 2 + (across / (1.05 * epi + 0.3 * rv)) ** 2)
    _paint(img, (1 - rv_r) * half + 2.0, 70.0)
    _paint(img, (1 - rv_r) * half, 195.0)

    # LV: myocardium ring (slightly non-circular), blood pool, two papillary muscles.
    shape = 1 + col(rng.uniform(0.0, 0.06, n)) * np.cos(2 * (phi - col(rng.uniform(0, np.pi, n))))
    _paint(img, epi * shape - r, 65.0)
    _paint(img, cav * shape - r, 215.0)
    for offset in (0.75 * np.pi, 1.25 * np.pi):
        a = rv_angle + offset
        px, py = cx + 0.68 * cav * np.cos(a), cy + 0.68 * cav * np.sin(a)
        _paint(img, 0.14 * cav - np.sqrt((xx - px) ** 2 + (yy - py) ** 2), 70.0)

    # Scanner gain and Rician noise (magnitude of a complex signal with Gaussian noise).
    img *= col(np.exp(rng.normal(0, 0.08, n)))
    sigma = col(rng.uniform(4, 10, n))
    real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)[:, None]


# ----------------------------------------------------------------------------------------------
# Real ECGs shipped inside installed packages


def _read_dicom_ecg(path: str) -> tuple[np.ndarray, list[str], dict]:
    """A DICOM 12-lead ECG (read by ``datasets.sources.dicom_ecg``) as the demo stores it: ((12, T) mV
    at 500 Hz, the first 10 s, our lead order; no filtering), its statements, and notes."""
    ecg = read_dicom_ecg(path)
    x, _ = signal_to_contract(ecg.signal, rate=FS, seconds=SECONDS, min_seconds=None, baseline="none", clip=None,
                              zscore="none")
    mapped = [unit for name, unit in zip(ecg.signal.lead_names, ecg.channel_units) if standard_lead(name)]
    return x, ecg.statements, {"sampling_rate": float(ecg.signal.sampling_rate), "units": sorted(set(mapped))}


def statement_labels(statements: list[str]) -> np.ndarray:
    """Multi-hot over LABEL_NAMES from free-text diagnosis statements (English or Italian)."""
    text = " | ".join(statements).lower()
    y = np.zeros(len(LABEL_NAMES), dtype=np.float32)
    rules = {"SBRAD": ("sinus bradycardia", "bradicardia sinusale"),
             "STACH": ("sinus tachycardia", "tachicardia sinusale"),
             "AFIB": ("atrial fibrillation", "fibrillazione atriale"),
             "BBB": ("bundle branch block", "blocco di branca")}
    for name, keys in rules.items():
        y[LABEL_NAMES.index(name)] = float(any(k in text for k in keys))
    normal = any(k in text for k in ("normal ecg", "ecg normale"))
    if normal and not y.any() and "otherwise" not in text and "abnormal" not in text:
        y[LABEL_NAMES.index("NORM")] = 1
    return y


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - only a note in info.json
        return "unknown"


def real_ecg_sources() -> list[dict]:
    """The real 12-lead ECG files that installed packages ship (none when the packages are absent)."""
    sources = []
    if importlib.util.find_spec("pydicom") is not None:
        from pydicom.data import get_testdata_file

        try:
            path = get_testdata_file("waveform_ecg.dcm", download=False)
        except TypeError:  # older pydicom without the download argument
            path = get_testdata_file("waveform_ecg.dcm")
        if path:
            sources.append(dict(record_id="real_pydicom_waveform_ecg", path=str(path), reader="dicom",
                                package=f"pydicom {_package_version('pydicom')} (MIT)", file="waveform_ecg.dcm"))
    return sources


def load_real_ecgs() -> tuple[list[np.ndarray], list[np.ndarray], list[dict]]:
    """(signals (12, T) mV, labels (5,), provenance notes) of each readable real ECG; others are skipped."""
    signals, labels, notes = [], [], []
    for src in real_ecg_sources():
        try:
            x, statements, extra = _read_dicom_ecg(src["path"])
        except Exception as e:  # noqa: BLE001 - a package's example file we cannot use is skipped, not fatal
            print(f"demo: skipping real ECG {src['file']} from {src['package']}: {e}", file=sys.stderr)
            continue
        y = statement_labels(statements)
        signals.append(x)
        labels.append(y)
        notes.append(dict(record_id=src["record_id"], source=f"{src['file']} shipped with {src['package']}",
                          original=extra, statements=statements,
                          labels=[n for n, v in zip(LABEL_NAMES, y) if v],
                          processing=f"converted to mV, resampled to {FS} Hz (scipy resample_poly), first "
                                     f"{SECONDS} s, leads reordered to {list(STANDARD_LEADS)}; no filtering"))
    return signals, labels, notes


# ----------------------------------------------------------------------------------------------
# Building


def demo_paths(data_dir) -> dict[str, Path]:
    return {"ecg": Path(data_dir) / "demo_ecg", "cmr": Path(data_dir) / "demo_cmr"}


def build_demo(data_dir, *, n_records: int = 3000, seed: int = 0, overwrite: bool = False,
               include_real: bool = True) -> dict[str, Path]:
    """Write ``<data_dir>/demo_ecg`` and ``<data_dir>/demo_cmr``; returns {"ecg": path, "cmr": path}.

    The same seed gives bit-identical arrays (on the same machine and numpy). Real packaged
    ECGs (when installed) are appended to the ECG store only, in its test split.
    """
    paths = demo_paths(data_dir)
    for path in paths.values():
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True (--overwrite) to rebuild the demo")
    real_x, real_y, real_notes = load_real_ecgs() if include_real else ([], [], [])
    n_real = len(real_x)
    ecg = StoreWriter(paths["ecg"], n_records + n_real, (12, T), np.float16, kind="signals", overwrite=overwrite)
    cmr = StoreWriter(paths["cmr"], n_records, (1, IMAGE_SIZE, IMAGE_SIZE), np.uint8, kind="images",
                      overwrite=overwrite)
    labels = np.zeros((n_records + n_real, len(LABEL_NAMES)), dtype=np.float32)
    with ecg, cmr:
        for chunk, start in enumerate(range(0, n_records, CHUNK)):
            rng = np.random.default_rng([seed, chunk])
            lat = _latents(rng, min(CHUNK, n_records - start))
            ecg.write_batch(start, _ecg_chunk(rng, lat))
            cmr.write_batch(start, _cmr_chunk(rng, lat))
            labels[start:start + len(lat["hr"])] = lat["labels"]
        for k, (x, y) in enumerate(zip(real_x, real_y)):
            ecg[n_records + k] = x
            labels[n_records + k] = y

        splits = make_splits(n_records, labels[:n_records], val=0.1, test=0.1, folds=5, train_subsample=0.1,
                             seed=seed)
        ecg_splits = dict(splits, test=splits["test"] + list(range(n_records, n_records + n_real)))
        ids = [f"demo_{i:05d}" for i in range(n_records)]
        counts = {name: int(labels[:n_records, j].sum()) for j, name in enumerate(LABEL_NAMES)}
        common = dict(format_version=1, task_type="multilabel", label_names=LABEL_NAMES, synthetic=True)
        generator = dict(module="datasets.demo", version=GENERATOR_VERSION, seed=seed, n_records=n_records,
                         label_descriptions=LABEL_DESCRIPTIONS, class_counts=counts)
        ecg.finish(labels=labels, record_ids=ids + [n["record_id"] for n in real_notes], splits=ecg_splits, info=dict(
            common, modality="ecg", sampling_rate=FS, lead_names=list(STANDARD_LEADS), units="mV",
            provenance=(f"Synthetic 12-lead ECGs ({n_records} records, seed {seed}) from datasets/demo.py: "
                        "sum-of-Gaussians P-QRS-T beats (after McSharry et al. 2003, ECGSYN) on a 3-D cardiac "
                        "dipole projected with the Dower matrix, HRV, baseline wander, noise. "
                        f"Plus {n_real} real ECG(s) from installed packages (test split only, see "
                        "extras.real_records). Paired CMR frames: demo_cmr (same record ids)."),
            extras=dict(generator=generator, paired_store="demo_cmr", real_records=real_notes)))
        cmr.finish(labels=labels[:n_records], record_ids=ids, splits=splits, info=dict(
            common, modality="cmr", units="intensity (uint8)",
            provenance=(f"Synthetic short-axis CMR frames ({n_records}, {IMAGE_SIZE}x{IMAGE_SIZE} uint8, "
                        f"seed {seed}) "
                        "from datasets/demo.py; LV cavity, wall thickness and orientation follow the same "
                        "latents as the paired ECGs in demo_ecg."),
            extras=dict(generator=generator, paired_store="demo_ecg")))
    return paths


def _usable(paths: dict[str, Path]) -> bool:
    try:
        for path in paths.values():
            Store(path)
    except StoreError:
        return False
    return True


def ensure_demo(data_dir, **kwargs) -> dict[str, Path]:
    """Build the demo into ``data_dir`` unless it is already there; returns its paths.

    Safe when several processes (torchrun ranks) call it at once: the first takes a file lock and
    builds, the others wait for the lock and then find the stores. An existing demo is used as
    is, whatever ``n_records`` / ``seed`` it was built with (rebuild with ``--overwrite``).
    """
    paths = demo_paths(data_dir)
    if _usable(paths):
        return paths
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(data_dir) / ".demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _usable(paths):
                build_demo(data_dir, overwrite=True, **kwargs)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return paths


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data", help="folder for demo_ecg/ and demo_cmr/ (default: data)")
    parser.add_argument("--n-records", type=int, default=3000, help="synthetic records (default: 3000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace existing demo stores")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    try:
        paths = build_demo(args.data_dir, n_records=args.n_records, seed=args.seed, overwrite=args.overwrite)
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - began
    for key, path in paths.items():
        store = Store(path)
        print(f"{path}: {key} {store.shape} {store.dtype}, {_folder_size(path) / 2**20:.1f} MiB, "
              f"splits {', '.join(f'{k} {len(v)}' for k, v in store.splits.items() if not k.startswith('fold'))}")
    info = Store(paths["ecg"]).info
    counts = info["extras"]["generator"]["class_counts"]
    print("classes:", ", ".join(f"{name} {counts[name]}" for name in LABEL_NAMES))
    for note in info["extras"]["real_records"]:
        print(f"real ECG {note['record_id']}: {note['source']}; labels {note['labels'] or 'none mappable'}")
    print(f"built in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
