"""Preemption: SIGTERM mid-epoch writes a resumable checkpoint at the next optimizer step and exits
with EXIT_PREEMPTED; resume=auto then ends with the weights of an uninterrupted run (1 and 2 ranks)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from datasets.demo import build_demo
from util.checkpoint import load_checkpoint
from util.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.slow  # real processes and signals: run with -m slow (.ci/run does)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=500", "data.batch_size=2",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "extras.print_config=false",
        "model.optim.warmup_epochs=1", "trainer.max_epochs=2", "trainer.log_every_n_steps=1000"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_demo(str(root), n_records=96, seed=0, include_real=False)
    return root


def command(data_dir, run_dir, *extra, nproc=1):
    args = [f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}", *SLOW, *extra]
    script = os.path.join(REPO, "main_pretrain.py")
    if nproc == 1:
        return [sys.executable, script, *args]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    return [torchrun, "--standalone", f"--nproc_per_node={nproc}", script, *args]


def run(cmd):
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]


def weights(run_dir):
    return load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))["model"]


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigterm_checkpoints_mid_epoch_and_resume_matches_an_uninterrupted_run(data_dir, tmp_path, nproc):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run(command(data_dir, straight, nproc=nproc))
    proc = subprocess.Popen(command(data_dir, stopped, nproc=nproc), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log_file = stopped / "pretrain.log"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # wait until training has started
        if log_file.exists() and "effective batch" in log_file.read_text():
            break
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 60
    if nproc == 1:
        assert proc.returncode == EXIT_PREEMPTED, err[-2000:]
    else:
        assert proc.returncode != 0  # torchrun reports its workers' non-zero exit
    ckpt = load_checkpoint(str(stopped / "checkpoints" / "last.pt"))
    assert ckpt["batch_in_epoch"] > 0 and len(ckpt["generator"]) == nproc
    run(command(data_dir, stopped, "resume=auto", nproc=nproc))
    a, b = weights(straight), weights(stopped)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
