"""Preemption: SIGTERM / SIGUSR1 (SLURM's signals; torchrun forwards SIGTERM, and SIGUSR1 when run
through scripts/slurm/_torchrun.py, which adds it to --signals-to-handle) ask the run to
stop at the next optimizer step, write a resumable checkpoint and exit with ``EXIT_PREEMPTED``, so
a batch script can requeue the job and ``resume=auto`` continues exactly where it stopped."""
from __future__ import annotations

import logging
import signal
from typing import Any, Optional

from util.errors import Preempted

__all__ = ["EXIT_PREEMPTED", "Preempted", "PreemptionWatcher"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; scripts/slurm requeue on it


class PreemptionWatcher:
    """Records SIGTERM/SIGUSR1; ``requested()`` is the flag agreed by all ranks (any rank signalled)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, device: Any) -> None:
        self.device = device
        self.signum: Optional[int] = None
        self._previous = {}
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
                pass

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("received %s: stopping at the next optimizer step to write a checkpoint",
                        signal.Signals(signum).name)
        self.signum = signum

    def requested(self) -> bool:
        import torch
        import torch.distributed as dist

        flag = torch.tensor(1.0 if self.signum is not None else 0.0, device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
