"""Model FLOPs and the device's matmul peak, for model-FLOP utilisation (MFU) in every training log
and in ``bench/``.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over a real forward + loss +
backward (the optimizer step is not counted), with formulas for the CPU flash-attention ops its
registry lacks. The peak is the measured GFLOP/s of a square ``torch.mm`` in the run's dtype on the
run's device (the best of a few samples), so MFU is against what this device does, not a datasheet.
"""
from __future__ import annotations

import time
import warnings
from typing import Optional

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_flash_formulas() -> dict:
    """FlopCounterMode formulas for the CPU flash-attention ops (absent from its registry)."""
    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        mapping[fwd] = lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v)  # (custom formulas get shapes)
    if bwd is not None:
        mapping[bwd] = lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v)
    return mapping


class _QuietCounter(FlopCounterMode):
    """FlopCounterMode without torch.compile's warning that its module hooks fire twice around a compiled
    module (they only attribute FLOPs to modules; the total, which is all we read, is unaffected)."""

    def __enter__(self):
        self._quiet = warnings.catch_warnings()
        self._quiet.__enter__()
        warnings.filterwarnings("ignore", message=".*global hooks on modules.*")
        return super().__enter__()

    def __exit__(self, *args):
        try:
            return super().__exit__(*args)
        finally:
            self._quiet.__exit__(*args)


def flop_counter(quiet: bool = False) -> FlopCounterMode:
    """A context that counts the FLOPs run inside it: ``with flop_counter() as c: ...; c.get_total_flops()``."""
    return (_QuietCounter if quiet else FlopCounterMode)(display=False, custom_mapping=_cpu_flash_formulas())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulPeak:
    """GFLOP/s of an ``n x n`` ``torch.mm`` in ``dtype`` (``reps`` products per sample, after 2 untimed)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int, reps: int) -> None:
        self.device, self.n, self.reps = device, n, reps
        # its own generator: measuring the peak must not move the run's random streams (a resumed run
        # restores them before it measures)
        generator = torch.Generator(device=device).manual_seed(0)
        self.a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        self.b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
        for _ in range(2):
            torch.mm(self.a, self.b)
        synchronize(device)

    def sample(self) -> float:
        synchronize(self.device)
        t0 = time.perf_counter()
        for _ in range(self.reps):
            torch.mm(self.a, self.b)
        synchronize(self.device)
        return self.reps * 2 * self.n ** 3 / (time.perf_counter() - t0) / 1e9


_PEAKS: dict = {}


def matmul_peak_gflops(device: torch.device, dtype: Optional[torch.dtype] = None) -> float:
    """The measured matmul peak of ``device`` in ``dtype`` (fp32 when None), once per process: a 1024
    matmul on a CPU (about 0.1 s), 8192 on a GPU (large enough to saturate it)."""
    dtype = dtype or torch.float32
    key = (str(device), dtype, torch.get_num_threads())
    if key not in _PEAKS:
        n, reps = (8192, 10) if device.type == "cuda" else (1024, 3)
        peak = MatmulPeak(device, dtype, n, reps)
        _PEAKS[key] = max(peak.sample() for _ in range(3))
    return _PEAKS[key]
