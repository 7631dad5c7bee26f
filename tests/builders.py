"""Tiny data and overrides shared by the end-to-end tests (built in temp dirs, nothing downloaded)."""
import numpy as np

from datasets.store import STANDARD_LEADS, make_splits, write_store

T, LEADS = 400, STANDARD_LEADS

# a fine-tuning run that takes seconds: tiny classifier, 200-sample crops of tiny_store records
FINETUNE_TINY = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=200", "data.batch_size=8",
                 "data.num_workers=0", "data.augment=false", "trainer.enable_progress_bar=false",
                 "extras.print_config=false", "model.optim.warmup_epochs=1", "model.optim.lr=1e-3",
                 "model.pretrained_weights=null", "data.train_fraction=1.0"]

# a pretraining run on a 96-record demo store that takes seconds
PRETRAIN_TINY = ["model.size=pluto", "model.patch_size=[1,50]", "data.time_steps=500", "data.batch_size=8",
                 "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=2",
                 "model.optim.warmup_epochs=1", "extras.print_config=false"]


def finetune_overrides(data_dir, task_type="multiclass"):
    """Point the demo fine-tuning experiment at ``tiny_store(data_dir, task_type)``."""
    num = 2 if task_type == "regression" else 3
    return [f"paths.data_dir={data_dir}", f"modality.dataset_key=tiny_{task_type}", f"modality.task_type={task_type}",
            f"modality.num_classes={num}", "modality.sampling_rate=100", "~modality.build_demo", *FINETUNE_TINY]


def tiny_store(root, task_type, n=96, seed=0):
    """ECGs whose frequency encodes the class (multiclass / multilabel) or the target (regression)."""
    rng = np.random.default_rng(seed)
    t = np.arange(T) / 100.0
    if task_type == "regression":
        targets = rng.uniform(0.5, 3.0, size=(n, 2)).astype(np.float32)
        freq, labels, names = targets[:, 0], targets, ["freq", "amp"]
        amp = targets[:, 1]
    else:
        cls = rng.integers(0, 3, size=n)
        freq, amp, names = 1.0 + cls, np.ones(n), ["slow", "mid", "fast"]
        labels = cls if task_type == "multiclass" else np.eye(3, dtype=np.float32)[cls]
    signals = (amp[:, None, None] * np.sin(2 * np.pi * freq[:, None, None] * t[None, None, :])
               + 0.05 * rng.standard_normal((n, 12, T))).astype(np.float32)
    splits = make_splits(n, labels if task_type != "regression" else None, val=0.2, test=0.2, folds=2, seed=0)
    write_store(root / f"tiny_{task_type}", signals=signals, labels=labels,
                record_ids=[f"r{i}" for i in range(n)], splits=splits,
                info={"modality": "ecg", "task_type": task_type, "label_names": names, "sampling_rate": 100,
                      "lead_names": LEADS, "units": "mV", "provenance": "test", "synthetic": True})


def run_main(main, primary, argv):
    """A training main in this process, as its command line runs it; returns the exit code."""
    from util import cli

    return cli.run_cli(main, primary, argv=argv, prog=f"main_{primary}.py")


def assert_a_kill_and_resume_equals_a_straight_run(command, tmp_path, repo, log_name="pretrain.log"):
    """``command(run_dir, *extra)`` run straight, and run again but stopped by SIGTERM to its process
    group once epoch 0 is logged (exit 75), then resumed with ``resume=auto``: both end at the same
    step with the same weights (1e-6)."""
    import os
    import signal
    import subprocess
    import time

    from util.checkpoint import load_checkpoint

    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight = subprocess.run(command(tmp_path / "straight"), cwd=repo, env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(command(stopped), cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    log, deadline = stopped / log_name, time.time() + 120
    while time.time() < deadline and proc.poll() is None and "epoch 0:" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 1
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-3000:]
    killed_at = load_checkpoint(str(stopped / "checkpoints" / "last.pt"))["step"]
    resumed = subprocess.run(command(stopped, "resume=auto"), cwd=repo, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(str(tmp_path / "straight" / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(stopped / "checkpoints" / "last.pt"))
    assert 0 < killed_at < a["step"] == b["step"]
    assert max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"]) <= 1e-6


def demo_data_fixture():
    """A module-scoped ``data_dir`` fixture: a 96-record demo store (72 train records), built once per module."""
    import pytest

    @pytest.fixture(scope="module", name="data_dir")
    def _data_dir(tmp_path_factory):
        from datasets.demo import build_demo

        root = tmp_path_factory.mktemp("data")
        build_demo(str(root), n_records=96, seed=0, include_real=False)
        return root
    return _data_dir


def pretrain_argv(data_dir, run_dir, *overrides):
    """The command line of a tiny pretraining on ``demo_data_fixture``'s store, run in ``run_dir``."""
    return [f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}",
            *PRETRAIN_TINY, *overrides]
