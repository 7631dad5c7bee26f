"""The debug configs (debug=default|fdr|overfit|limit|profiler) do what they say in BOTH training
mains, through the one engine loop: each test runs a main on tiny data and checks the effect."""
import json

import pytest
import torch

import main_finetune
import main_pretrain
from builders import PRETRAIN_TINY, finetune_overrides, tiny_store  # tests/ is on sys.path
from datasets.demo import build_demo
from models.objectives import Classification, MAEPretraining
from util import cli

MAINS = ["pretrain", "finetune"]
BATCH = 8


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    build_demo(str(root), n_records=96, seed=0, include_real=False)
    tiny_store(root, "multiclass")
    return root


@pytest.fixture(autouse=True)
def restore_anomaly_mode():
    yield
    torch.autograd.set_detect_anomaly(False)  # debug=default switches it on for the process


def run(main, data_dir, run_dir, *overrides):
    common = [f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}"]
    if main == "pretrain":
        argv = [f"paths.data_dir={data_dir}", *common, *PRETRAIN_TINY, *overrides]
        return cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py")
    argv = [*finetune_overrides(data_dir), *common, *overrides]
    return cli.run_cli(main_finetune.main, "finetune", argv=argv, prog="main_finetune.py")


def epoch_rows(run_dir):
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return [r for r in rows if "train/loss" in r and "epoch" in r and "train/grad_norm" not in r]  # not step rows


@pytest.mark.parametrize("main", MAINS)
def test_debug_default_runs_one_epoch_without_callbacks_or_loggers_at_debug_level(main, data_dir, tmp_path):
    assert run(main, data_dir, tmp_path, "debug=default") == 0
    assert [r["epoch"] for r in epoch_rows(tmp_path)] == [0]
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "tensorboard").exists()
    log_text = (tmp_path / "debug.log").read_text()  # task_name: debug
    assert "[DEBUG] - epoch 0: training batches 0.." in log_text
    assert torch.is_anomaly_enabled()


@pytest.mark.parametrize("main", MAINS)
def test_debug_fdr_runs_exactly_one_batch_per_split_and_writes_no_checkpoint(main, data_dir, tmp_path):
    assert run(main, data_dir, tmp_path, "debug=fdr") == 0
    rows = epoch_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["step"] == 1 and rows[0]["val/samples"] == BATCH
    assert not (tmp_path / "checkpoints").exists()
    if main == "finetune":
        result = json.load(open(tmp_path / "metrics.json"))
        assert result["val"]["samples"] == result["test"]["samples"] == BATCH and result["checkpoint"] is None
    else:
        assert not (tmp_path / "encoder.pth").exists()


@pytest.mark.parametrize("main", MAINS)
def test_debug_overfit_trains_on_the_same_batches_every_epoch_and_the_loss_falls(main, data_dir, tmp_path,
                                                                                  monkeypatch):
    objective = MAEPretraining if main == "pretrain" else Classification
    seen = []  # (epoch-free) fingerprints of every training batch: sample positions and seeds
    forward = objective.forward

    def recording_forward(self, batch, generator=None):
        if self.training:
            seen.append((tuple(batch["index"].tolist()), tuple(batch["key"].tolist())))
        return forward(self, batch, generator)

    monkeypatch.setattr(objective, "forward", recording_forward)
    # fewer epochs than the config's 20, and no anomaly detection (tested above): seconds, not a minute
    assert run(main, data_dir, tmp_path, "debug=overfit", "trainer.max_epochs=10", "trainer.detect_anomaly=false") == 0
    epochs = [seen[i:i + 3] for i in range(0, len(seen), 3)]
    assert len(epochs) == 10 and all(e == epochs[0] for e in epochs) and len(set(epochs[0])) == 3
    rows = epoch_rows(tmp_path)
    losses = [r["train/loss"] for r in rows]
    assert len(rows) == 10 and losses[-1] < 0.7 * losses[0], losses
    assert all(r["val/samples"] == 3 * BATCH for r in rows)  # validated on the same 3 batches
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("main", MAINS)
def test_debug_limit_uses_a_fraction_of_every_split(main, data_dir, tmp_path):
    assert run(main, data_dir, tmp_path, "debug=limit") == 0
    rows = epoch_rows(tmp_path)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["step"] for r in rows] == [1, 2, 3]  # 1% of ~9 batches: one batch per epoch
    assert all(r["val/samples"] == BATCH for r in rows)  # 5% of the validation batches: one
    if main == "finetune":
        assert json.load(open(tmp_path / "metrics.json"))["test"]["samples"] == BATCH  # limit_test_batches


@pytest.mark.parametrize("main", MAINS)
def test_debug_profiler_reports_the_time_of_each_phase(main, data_dir, tmp_path):
    assert run(main, data_dir, tmp_path, "debug=profiler") == 0
    log_text = (tmp_path / "debug.log").read_text()
    assert "profiler (simple)" in log_text
    table = log_text.split("profiler (simple):", 1)[1]
    assert any(line.split()[:2] == ["train", "1"] for line in table.splitlines())
    assert any(line.split()[:2] == ["validate", "1"] for line in table.splitlines())
