"""ECG MAE pretraining end to end on a tiny demo store: run directory contents, the validation
loss, resume (straight == interrupted + resume=auto, also after a kill mid-epoch), bad checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import main_pretrain
from builders import PRETRAIN_TINY, demo_data_fixture, pretrain_argv  # tests/ is on sys.path
from util import cli
from util.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = PRETRAIN_TINY
data_dir = demo_data_fixture()


def pretrain(data_dir, run_dir, *overrides):
    argv = pretrain_argv(data_dir, run_dir, *overrides)
    return cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py")


def final_weights(run_dir):
    return load_checkpoint(os.path.join(run_dir, "checkpoints", "last.pt"))["model"]


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_pretraining_writes_a_complete_run_directory_and_learns(data_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert pretrain(data_dir, run_dir, "trainer.max_epochs=3", "model.optim.blr=3e-4") == 0
    files = set(os.listdir(run_dir))
    assert {".hydra", "checkpoints", "tensorboard", "figures", "metrics.json", "metrics.jsonl",
            "pretrain.log"} <= files
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir / "tensorboard"))
    assert sorted(os.listdir(run_dir / "figures")) == [f"recon_epoch00{i}.png" for i in range(3)]
    ckpt = load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))  # weights_only=True inside
    assert {"model", "optimizer", "scaler", "epoch", "step", "rng", "best", "early_stop", "config"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 3 * 9  # 76 train records // batch 8
    assert "net.mask_token" in ckpt["model"] and "net.decoder_pred.weight" in ckpt["model"]  # the objective's MAE
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    epochs = [r for r in rows if "val/loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert epochs[-1]["val/loss"] < epochs[0]["val/loss"]
    step_rows = [r for r in rows if "train/lr" in r]
    assert step_rows and {"train/grad_norm", "train/samples_per_s", "train/ncc"} <= set(step_rows[0])
    metrics = json.load(open(run_dir / "metrics.json"))
    assert metrics["epoch"] == 2 and metrics["best_checkpoint"].endswith(".pt")
    encoder = torch.load(run_dir / "encoder.pth", weights_only=True)["model"]  # the best epoch's encoder
    best = load_checkpoint(metrics["best_checkpoint"])["model"]
    assert not any(k.startswith(("decoder_", "mask_token")) for k in encoder)
    assert all(torch.equal(encoder[k], best[f"net.{k}"]) for k in encoder) and "blocks.0.attn.qkv.weight" in encoder


def test_two_epochs_plus_resume_equals_four_straight(data_dir, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert pretrain(data_dir, straight, "trainer.max_epochs=4") == 0
    # the first part stops after 2 epochs but uses the 4-epoch LR schedule
    assert pretrain(data_dir, split, "trainer.max_epochs=2", "model.optim.epochs=4") == 0
    assert load_checkpoint(str(split / "checkpoints" / "last.pt"))["epoch"] == 1
    assert pretrain(data_dir, split, "trainer.max_epochs=4", "resume=auto") == 0
    assert load_checkpoint(str(split / "checkpoints" / "last.pt"))["epoch"] == 3
    assert max_abs_diff(final_weights(straight), final_weights(split)) <= 1e-6


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(data_dir, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    slow = ["data.batch_size=2", "trainer.max_epochs=3"]  # 38 steps per epoch: time to kill mid-epoch
    assert pretrain(data_dir, straight, *slow) == 0
    cmd = [sys.executable, os.path.join(REPO, "main_pretrain.py"), f"paths.data_dir={data_dir}",
           f"paths.log_dir={killed}/logs", f"hydra.run.dir={killed}", *TINY, *slow]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ))
    last = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and load_checkpoint(str(last))["epoch"] == 0:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # now inside epoch 1
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert load_checkpoint(str(last))["epoch"] < 2
    assert pretrain(data_dir, killed, *slow, "resume=auto") == 0
    assert max_abs_diff(final_weights(straight), final_weights(killed)) <= 1e-6


def test_bad_resume_checkpoints_are_refused_with_exit_code_2(data_dir, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    assert pretrain(data_dir, tmp_path / "a", "trainer.max_epochs=1", f"ckpt_path={junk}") == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    torch.save({"model": {"not_a_key": torch.zeros(1)}, "optimizer": {}}, tmp_path / "other.pt")
    assert pretrain(data_dir, tmp_path / "b", "trainer.max_epochs=1", f"ckpt_path={tmp_path}/other.pt") == 2
    assert "does not fit this model" in capsys.readouterr().err


def test_a_config_without_a_key_the_code_reads_is_refused_naming_the_key(data_dir, tmp_path, capsys):
    # no code default stands in for it (the LR divisor once defaulted to 256 in code and 4 in YAML)
    assert pretrain(data_dir, tmp_path / "a", "~model.optim.lr_batch_divisor") == 2
    assert "model.optim.lr_batch_divisor: is missing" in capsys.readouterr().err  # checked before any work
    assert not (tmp_path / "a" / "checkpoints").exists()


def test_fast_dev_run_runs_one_batch_and_writes_no_checkpoint(data_dir, tmp_path):
    run_dir = tmp_path / "fdr"
    assert pretrain(data_dir, run_dir, "debug=fdr") == 0
    assert not (run_dir / "checkpoints").exists()
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert rows[-1]["epoch"] == 0 and "val/loss" in rows[-1]


def test_device_augmentation_overfit_batches_and_profiler_options_run(data_dir, tmp_path):
    run_dir = tmp_path / "opts"
    assert pretrain(data_dir, run_dir, "trainer.max_epochs=2", "data.augment_device=device",
                    "trainer.overfit_batches=2", "trainer.profiler=simple") == 0
    assert load_checkpoint(str(run_dir / "checkpoints" / "last.pt"))["step"] == 4  # 2 batches x 2 epochs
    assert "profiler (simple)" in (run_dir / "pretrain.log").read_text()
    assert pretrain(data_dir, tmp_path / "bad", "trainer.profiler=fancy") == 2
