"""torchrun for the batch scripts in this folder: the same arguments, with preemption handled.

    python scripts/slurm/_torchrun.py [torchrun options] main_pretrain.py [override ...]

Two things plain ``torchrun`` gets wrong for a SLURM job:

- torchrun forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to its workers, but not SIGUSR1, SLURM's
  warning before the time limit: an unhandled SIGUSR1 kills torchrun and leaves its workers
  running without the signal. This adds SIGUSR1 to ``--signals-to-handle`` (unless the command
  line sets it), so torchrun sends SIGUSR1 on to the workers.
- torchrun exits with 1 whatever its workers' exit codes. This exits with 75
  (``util.preemption.EXIT_PREEMPTED``) when the run was preempted, so the batch script knows to
  requeue: the first worker to end exited with 75 (the others with 75 or stopped by torchrun), or
  torchrun stopped its workers because it got SIGUSR1 or SIGTERM. Other failures keep torchrun's exit code and report.

Workers get ``--shutdown-timeout`` seconds (default ``$SHUTDOWN_TIMEOUT``, else 240: inside the
5-minute warning of ``#SBATCH --signal=B:USR1@300``) to write ``checkpoints/last.pt`` and exit
after a signal before torchrun kills them with SIGKILL.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: E402
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: E402
from torch.distributed.run import main as torchrun_main  # noqa: E402

from util.preemption import EXIT_PREEMPTED  # noqa: E402

SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def torchrun_args(argv: list[str]) -> list[str]:
    """``argv`` after our defaults (torchrun's argparse keeps the last value, so ``argv`` still wins)."""
    extra = [f"--signals-to-handle={SIGNALS}"]
    if "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:
        extra.append(f"--shutdown-timeout={int(os.environ.get('SHUTDOWN_TIMEOUT', '240'))}")
    return extra + argv


def preempted(error: ChildFailedError) -> bool:
    """The first worker to end exited with 75 and no worker failed otherwise. A rank exits with 75
    only after the checkpoint is written and every rank has passed the barrier behind it; torchrun
    then stops the ranks still unwinding with SIGTERM (negative exit codes): they do not count."""
    _, first = error.get_first_failure()
    codes = {f.exitcode for f in error.failures.values()}
    return first.exitcode == EXIT_PREEMPTED and all(c == EXIT_PREEMPTED or c < 0 for c in codes)


def _stop_before_start(signum, frame):
    """SIGUSR1/SIGTERM before torchrun installs its own handlers (rendezvous): stop like torchrun would."""
    raise SignalException(f"got {signal.Signals(signum).name} before the workers started",
                          sigval=signal.Signals(signum))


def main(argv: list[str]) -> int:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_before_start)
    try:
        torchrun_main(torchrun_args(argv))
    except ChildFailedError as e:
        if preempted(e):
            print(f"[_torchrun] the workers stopped with exit code {EXIT_PREEMPTED} (preempted: checkpoint "
                  f"written); exiting with {EXIT_PREEMPTED}", file=sys.stderr, flush=True)
            return EXIT_PREEMPTED
        raise
    except SignalException as e:
        sig = signal.Signals(e.sigval)
        if sig in STOP_SIGNALS:
            print(f"[_torchrun] stopped on {sig.name} (running workers were sent {sig.name} to write "
                  f"checkpoints/last.pt); exiting with {EXIT_PREEMPTED}", file=sys.stderr, flush=True)
            return EXIT_PREEMPTED
        print(f"[_torchrun] stopped by {sig.name}", file=sys.stderr, flush=True)
        return 128 + int(sig)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
