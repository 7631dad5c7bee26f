"""Bringing one raw record to a store's preprocessing contract.

ECG (``signal_to_contract``): leads renamed and reordered to the project's order (I, II, III, aVR,
aVL, aVF, V1-V6), units to millivolts, polyphase resampling to the target rate
(``scipy.signal.resample_poly``), the first ``seconds`` seconds (a record shorter than that but at
least ``min_seconds`` long is zero-padded at the end), then the optional filters in this order:

    baseline  none | highpass (4th-order Butterworth at 0.5 Hz, zero-phase) |
              als (asymmetric least squares, lam 1e7, p 0.3, 5 iterations: the reference's)
    clip      none or k: clip each lead to mean +- k standard deviations (the reference: 4)
    zscore    none | lead (each lead to zero mean, unit variance) |
              group (the limb leads I-aVF and the chest leads V1-V6 each with their own statistics)

CMR (``image_to_contract``): the largest centred square, resized to ``size`` x ``size`` (bilinear),
intensities clipped to the 0.5 and 99.5 percentiles of the image and scaled to 0..255 (uint8).

Each step's settings are written to the store's ``info.json`` as its contract; a record that cannot
meet it (missing leads, unknown units, NaN/inf values, too short) raises ``BadRecord`` with why.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional, Sequence

import numpy as np

from datasets.sources import BadRecord, Image, Signal, standard_lead
from datasets.store import STANDARD_LEADS

__all__ = ["UNITS_TO_MV", "BASELINES", "ZSCORES", "zscore_leads", "signal_to_contract", "image_to_contract"]

UNITS_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}
BASELINES = ("none", "highpass", "als")
ZSCORES = ("none", "lead", "group")
_LIMB_LEADS = frozenset(STANDARD_LEADS[:6])  # I, II, III, aVR, aVL, aVF


def _units_factor(units: str) -> float:
    factor = UNITS_TO_MV.get(str(units).strip().lower())
    if factor is None:
        raise BadRecord(f"amplitude units {units!r} are not understood (known: mV, uV, V)")
    return factor


def _reorder(signal: Signal) -> np.ndarray:
    """(12, T) float64 in the project's lead order and in mV."""
    names = [standard_lead(n) for n in signal.lead_names]
    data = np.asarray(signal.data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] != len(names):
        raise BadRecord(f"the data has shape {data.shape} but {len(names)} lead names")
    missing = [lead for lead in STANDARD_LEADS if lead not in names]
    if missing:
        raise BadRecord(f"leads {', '.join(missing)} are missing (the record has {', '.join(map(str, signal.lead_names))})")
    return data[[names.index(lead) for lead in STANDARD_LEADS]] * _units_factor(signal.units)


def _resample(x: np.ndarray, rate: float, target: float) -> np.ndarray:
    if abs(rate - target) < 1e-9:
        return x
    from scipy.signal import resample_poly

    ratio = Fraction(target) / Fraction(rate).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=1)


def _highpass(x: np.ndarray, rate: float) -> np.ndarray:
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, 0.5, btype="highpass", fs=rate, output="sos")
    return sosfiltfilt(sos, x, axis=1)


def _als_baseline(y: np.ndarray, lam: float = 1e7, p: float = 0.3, iterations: int = 5) -> np.ndarray:
    """Asymmetric least squares baseline of one lead (Eilers and Boelens 2005)."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    n = len(y)
    d = sparse.diags([1.0, -2.0, 1.0], [0, -1, -2], shape=(n, n - 2))
    penalty = lam * d.dot(d.transpose())
    w = np.ones(n)
    z = y
    for _ in range(iterations):
        weights = sparse.spdiags(w, 0, n, n)
        z = spsolve(sparse.csc_matrix(weights + penalty), w * y)
        w = p * (y > z) + (1 - p) * (y < z)
    return z


def _zscore(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / max(float(x.std()), 1e-8)  # a constant lead (group) becomes zeros


def zscore_leads(x: np.ndarray, mode: str, lead_names: Sequence[str] = STANDARD_LEADS) -> np.ndarray:
    """``x`` (leads, T) with each lead (``lead``), or the limb leads I-aVF and the other leads each as
    one group (``group``, the reference's), at zero mean and unit variance; ``none``: unchanged.
    Ingest applies it to whole records (``--zscore``), ``data.normalize`` to each crop."""
    if mode == "none":
        return x
    if mode == "lead":
        return np.stack([_zscore(lead) for lead in x]).astype(x.dtype, copy=False)
    if mode != "group":
        raise ValueError(f"zscore must be one of {ZSCORES}, got {mode!r}")
    limb = np.array([str(name) in _LIMB_LEADS for name in lead_names])
    out = np.empty_like(x)
    for rows in (limb, ~limb):
        if rows.any():
            out[rows] = _zscore(x[rows])
    return out


def signal_to_contract(signal: Signal, *, rate: float, seconds: float, min_seconds: Optional[float] = None,
                       baseline: str = "none", clip: Optional[float] = None, zscore: str = "none") -> tuple:
    """``(x, padded)``: the record as (12, rate * seconds) float32 in mV under the contract, and
    whether it was zero-padded to that length. Raises ``BadRecord``."""
    x = _reorder(signal)
    if not np.isfinite(x).all():
        raise BadRecord("the signal holds NaN or inf values")
    if not signal.sampling_rate or signal.sampling_rate <= 0:
        raise BadRecord(f"the sampling rate {signal.sampling_rate!r} is not a positive number of Hz")
    x = _resample(x, float(signal.sampling_rate), float(rate))
    length, have = int(round(rate * seconds)), x.shape[1]
    need = int(round(rate * (seconds if min_seconds is None else min_seconds)))
    if have < need:
        raise BadRecord(f"{have / rate:.2f} s long; at least {need / rate:g} s are needed")
    padded = have < length
    x = np.pad(x, ((0, 0), (0, length - have))) if padded else x[:, :length]
    if baseline == "highpass":
        x = _highpass(x, rate)
    elif baseline == "als":
        x = np.stack([lead - _als_baseline(lead) for lead in x])
    elif baseline != "none":
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if clip is not None:
        mean, std = x.mean(axis=1, keepdims=True), x.std(axis=1, keepdims=True)
        x = np.clip(x, mean - clip * std, mean + clip * std)
    x = zscore_leads(x, zscore)
    return x.astype(np.float32), padded


def image_to_contract(image: Image, *, size: int) -> np.ndarray:
    """(1, size, size) uint8: the centred square, resized, intensities to 0..255. Raises ``BadRecord``."""
    import torch
    import torch.nn.functional as F

    data = np.asarray(image.data, dtype=np.float32)
    if data.ndim == 3 and data.shape[0] in (1, 3):
        data = data.mean(axis=0)
    if data.ndim != 2 or min(data.shape) < 8:
        raise BadRecord(f"an image of shape {tuple(np.shape(image.data))} is not a 2-D image of at least 8 x 8")
    if not np.isfinite(data).all():
        raise BadRecord("the image holds NaN or inf values")
    h, w = data.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = torch.from_numpy(np.ascontiguousarray(data[top:top + side, left:left + side]))[None, None]
    resized = F.interpolate(square, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = np.percentile(resized, [0.5, 99.5])
    if high - low <= 0:
        raise BadRecord("the image is constant")
    scaled = np.clip((resized - low) / (high - low), 0, 1) * 255
    return np.rint(scaled).astype(np.uint8)[None]
