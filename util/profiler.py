"""``trainer.profiler``: where the time of a run goes.

``simple`` times each phase (train / validate per epoch) and logs a table at the end; ``pytorch``
wraps the first training epoch in ``torch.profiler`` and writes a Chrome trace
(``<output_dir>/profiler/trace_epochNNN.json``) plus the top operators to the log.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Optional

import torch

from util.errors import ConfigError

log = logging.getLogger(__name__)

PROFILERS = (None, "simple", "pytorch")


class Profiler:
    """``trainer.profiler``: null, ``simple`` (wall time per phase, summarised at the end) or
    ``pytorch`` (torch.profiler over the first training epoch: a Chrome trace and a table).
    ``enabled=False`` (ranks other than 0) profiles nothing."""

    def __init__(self, kind: Optional[str], output_dir: str, device: torch.device, enabled: bool = True) -> None:
        if kind not in PROFILERS:
            raise ConfigError(f"trainer.profiler must be null, simple or pytorch, got '{kind}'")
        self.kind, self.output_dir, self.device = kind if enabled else None, output_dir, device
        self.times: dict[str, list[float]] = {}
        self.table = None

    @contextlib.contextmanager
    def phase(self, name: str, epoch: int):
        if self.kind == "pytorch" and name == "train" and self.table is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                yield
            os.makedirs(os.path.join(self.output_dir, "profiler"), exist_ok=True)
            prof.export_chrome_trace(os.path.join(self.output_dir, "profiler", f"trace_epoch{epoch:03d}.json"))
            self.table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            return
        start = time.perf_counter()
        yield
        self.times.setdefault(name, []).append(time.perf_counter() - start)

    def report(self) -> None:
        if self.kind == "simple" and self.times:
            rows = [f"{name:<10} {len(t):>6} {sum(t):>10.2f} {sum(t) / len(t):>10.3f}" for name, t in self.times.items()]
            log.info("profiler (simple):\n%-10s %6s %10s %10s\n%s", "phase", "calls", "total s", "mean s",
                     "\n".join(rows))
        if self.table is not None:
            log.info("profiler (pytorch, first training epoch):\n%s", self.table)
