"""Stopping a run on a signal without losing it.

SIGTERM / SIGUSR1 (SLURM's and most schedulers' signals; torchrun forwards SIGTERM, and SIGUSR1 when
run through scripts/slurm/_torchrun.py) and SIGINT (Ctrl-C) ask the run to stop at the next optimizer
step: every rank agrees, rank 0 writes a resumable checkpoint, and the run exits with
``EXIT_PREEMPTED`` (75: "requeue me") or, for Ctrl-C, ``EXIT_INTERRUPTED`` (130). A second Ctrl-C
stops at once. ``resume=auto`` continues exactly where the run stopped. DataLoader workers ignore
these signals (``ignore_stop_signals``), so a signal to the whole process group (``timeout``,
torchrun, Slurm) reaches the main process's handler instead of killing the workers under it.
"""
from __future__ import annotations

import logging
import signal
from typing import Any, Optional

from util.errors import Preempted

__all__ = ["EXIT_PREEMPTED", "EXIT_INTERRUPTED", "Preempted", "PreemptionWatcher", "ignore_stop_signals"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later"; scripts/slurm requeue on it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_stop_signals() -> None:
    """For worker processes: leave the stop signals to the main process."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class PreemptionWatcher:
    """Records the stop signals; ``requested()`` is the flag agreed by all ranks (any rank signalled),
    ``exit_code`` what the run exits with (130 when any rank got Ctrl-C, else 75)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.signum: Optional[int] = None
        self.agreed = 0  # 0 none, 1 preempted, 2 interrupted
        self._previous = {}
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
                pass

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        if self.signum is None or signum == signal.SIGINT:
            how = "press Ctrl-C again to stop at once" if signum == signal.SIGINT else "then exiting with 75"
            log.warning("received %s: stopping at the next optimizer step to write a checkpoint (%s)",
                        signal.Signals(signum).name, how)
        self.signum = signum

    def requested(self) -> bool:
        import torch
        import torch.distributed as dist

        local = 0 if self.signum is None else (2 if self.signum == signal.SIGINT else 1)
        flag = torch.tensor(float(local), device=self.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.agreed = int(flag.item())
        return self.agreed > 0

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.agreed == 2 else EXIT_PREEMPTED

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
