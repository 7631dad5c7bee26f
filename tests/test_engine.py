"""The training engine on toy objectives: schedule, accumulation, clipping, the non-finite guard,
precision selection, batch limits, gathered evaluation; and checkpoint files (atomic, best-k,
weights_only, RNG)."""
import math
import os

import pytest
import torch

import engine
from util import checkpoint as ckpt_mod
from util import seeding
from util.checkpoint import CheckpointError, CheckpointManager, EarlyStopping, load_checkpoint
from util.config import ConfigError
from util.lr_sched import absolute_lr, lr_at, set_lr
from util.train_state import TrainState

CPU = engine.Runtime(torch.device("cpu"), engine.resolve_precision("auto", torch.device("cpu")))


class Regression(torch.nn.Module):
    """y = w.x on dict batches (x, y, index); returns the engine's dict convention, and in
    evaluation also the per-sample predictions."""

    def __init__(self, dim=3):
        super().__init__()
        self.lin = torch.nn.Linear(dim, 1)

    def forward(self, batch, generator=None):
        pred = self.lin(batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).mean()
        out = {"loss": loss, "mse": loss.detach()}
        if not self.training:
            out["per_sample"] = {"pred": pred, "y": batch["y"]}
        return out

    def evaluation_metrics(self, gathered):
        return {"gathered_mse": float(((gathered["pred"] - gathered["y"]) ** 2).mean())}


def make_batches(n_batches, batch_size, seed=0, nan_at=()):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n_batches):
        x = torch.randn(batch_size, 3, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
        if i in nan_at:
            y = y * float("nan")
        batches.append({"x": x, "y": y, "index": torch.arange(i * batch_size, (i + 1) * batch_size)})
    return batches


def settings(**kw):
    values = dict(max_epochs=1, min_epochs=0, check_val_every_n_epoch=1, accumulate_grad_batches=1,
                  gradient_clip_val=None, log_every_n_steps=50, limit_train_batches=None, limit_val_batches=None,
                  limit_test_batches=None, overfit_batches=0, fast_dev_run=0, max_nonfinite_steps=5,
                  progress_bar=False, profiler=None, warmup_epochs=0, schedule_epochs=1e9)
    return engine.LoopSettings(**{**values, **kw})


def run_epoch(model, batches, lr=0.1, **kw):
    """One epoch; returns (epoch means, optimizer steps, non-finite streak)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    s = settings(lr=lr, **kw)
    state = TrainState(model, opt, engine.make_scaler(CPU.precision))
    means = engine.train_one_epoch(engine.Loop(model, s, CPU), state, batches, epoch=0,
                                   total=engine.num_batches(batches, s.limit_train_batches))
    return means, state.step, state.nonfinite_streak


def test_lr_schedule_warmup_then_half_cosine_and_group_scales():
    kw = dict(lr=1.0, min_lr=0.1, warmup_epochs=2, epochs=10)
    assert lr_at(0.0, **kw) == 0.0 and lr_at(1.0, **kw) == pytest.approx(0.5)
    assert lr_at(2.0, **kw) == pytest.approx(1.0)
    assert lr_at(6.0, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(10.0, **kw) == pytest.approx(0.1)
    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.25},
                           {"params": [torch.nn.Parameter(torch.zeros(1))]}], lr=1.0)
    set_lr(opt, 2.0)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 2.0]
    assert absolute_lr(1e-5, 128, 4) == pytest.approx(3.2e-4)


def test_accumulating_two_half_batches_equals_one_full_batch():
    full = make_batches(1, 8)
    halves = [{k: v[:4] for k, v in full[0].items()}, {k: v[4:] for k, v in full[0].items()}]
    torch.manual_seed(0)
    a = Regression()
    b = Regression()
    b.load_state_dict(a.state_dict())
    _, steps_a, _ = run_epoch(a, full)
    _, steps_b, _ = run_epoch(b, halves, accumulate_grad_batches=2)
    assert steps_a == steps_b == 1
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = Regression()
    before = [p.detach().clone() for p in model.parameters()]
    batches = [{"x": torch.full((4, 3), 100.0), "y": torch.zeros(4)}]
    run_epoch(model, batches, lr=1.0, gradient_clip_val=0.5)
    delta = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(model.parameters(), before)))
    assert delta.item() == pytest.approx(0.5, rel=1e-4)


def test_nonfinite_loss_skips_the_step_then_stops_after_n_in_a_row():
    torch.manual_seed(0)
    model = Regression()
    stats, steps, streak = run_epoch(model, make_batches(4, 4, nan_at={1}))
    assert steps == 3 and streak == 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(stats["loss"])  # the skipped batch is left out of the epoch mean
    with pytest.raises(engine.NonFiniteLossError, match="3 optimizer steps in a row"):
        run_epoch(Regression(), make_batches(5, 4, nan_at={1, 2, 3}), max_nonfinite_steps=3)


def test_limit_train_batches_count_and_fraction():
    assert engine.num_batches(range(10), None) == 10
    assert engine.num_batches(range(10), 3) == 3
    assert engine.num_batches(range(10), 0.25) == 2
    with pytest.raises(ConfigError):
        engine.num_batches(range(10), -1)
    _, steps, _ = run_epoch(Regression(), make_batches(6, 4), limit_train_batches=2)
    assert steps == 2


def test_precision_auto_is_fp32_on_cpu_and_half_requests_fall_back():
    cpu = torch.device("cpu")
    assert engine.resolve_precision("auto", cpu).name == "fp32"
    assert engine.resolve_precision("16-mixed", cpu).name == "fp32"
    assert engine.resolve_precision("32", cpu).dtype is None
    assert engine.resolve_precision("bf16-mixed", cpu).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="trainer.precision"):
        engine.resolve_precision("fp8", cpu)


def test_evaluate_gives_sample_weighted_means_and_gathers_per_sample_outputs_in_dataset_order():
    model = Regression()
    last = make_batches(1, 2, seed=5)[0]
    last["index"] = torch.tensor([8, 9])
    batches = make_batches(2, 4)[::-1] + [last]  # out of dataset order: gathering sorts by index
    result = engine.evaluate(model, batches, CPU)
    stats = result.metrics
    with torch.no_grad():
        x = torch.cat([b["x"] for b in batches])
        y = torch.cat([b["y"] for b in batches])
        expected = ((model.lin(x).squeeze(-1) - y) ** 2)
    per_batch = [expected[:4].mean(), expected[4:8].mean(), expected[8:].mean()]
    assert stats["loss"] == pytest.approx(((per_batch[0] + per_batch[1]) * 4 + per_batch[2] * 2).item() / 10,
                                          rel=1e-5)
    assert list(result.gathered["index"]) == list(range(10)) and stats["samples"] == 10
    assert result.gathered["y"].tolist() == pytest.approx(torch.cat([batches[1]["y"], batches[0]["y"],
                                                                     last["y"]]).tolist())
    assert stats["gathered_mse"] == pytest.approx(expected.mean().item(), rel=1e-5)


# ---- checkpoints -------------------------------------------------------------------------

def test_checkpoint_write_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_mod.atomic_torch_save({"model": {"w": torch.ones(2)}, "epoch": 1}, str(path))

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError):
        ckpt_mod.atomic_torch_save({"model": {"w": torch.zeros(2)}, "epoch": 2}, str(path))
    monkeypatch.undo()
    assert load_checkpoint(str(path))["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind


def test_bad_checkpoints_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(str(tmp_path / "other.pt"))


def test_best_k_keeps_the_k_best_by_monitor_and_last(tmp_path):
    mgr = CheckpointManager(str(tmp_path), monitor="val/loss", mode="min", save_top_k=2)
    for epoch, loss in enumerate([3.0, 1.0, 2.0, 5.0, 0.5]):
        mgr.save({"model": {}, "epoch": epoch}, epoch, {"val/loss": loss})
    assert sorted(os.listdir(tmp_path)) == ["epoch_001.pt", "epoch_004.pt", "last.pt"]
    assert mgr.best_path.endswith("epoch_004.pt")
    assert load_checkpoint(str(tmp_path / "last.pt"))["epoch"] == 4
    restored = CheckpointManager(str(tmp_path), monitor="val/loss", save_top_k=2)
    restored.load_state_dict(load_checkpoint(str(tmp_path / "last.pt"))["best"])
    assert [b["epoch"] for b in restored.best] == [4, 1]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    ckpt_mod.atomic_torch_save({"model": {}, "rng": seeding.rng_state()}, str(tmp_path / "c.pt"))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    seeding.set_rng_state(load_checkpoint(str(tmp_path / "c.pt"))["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(got[0], expected[0])
    assert (got[1] == expected[1]).all() and got[2] == expected[2]


def test_early_stopping_patience_min_delta_and_refusals():
    es = EarlyStopping("val/loss", mode="min", patience=2, min_delta=0.1)
    assert [es.step({"val/loss": v}) for v in (1.0, 0.95, 0.8, 0.79, 0.78)] == [False, False, False, False, True]
    assert "did not improve" in es.reason
    assert EarlyStopping("val/loss", patience=5).step({"val/loss": float("nan")})
    with pytest.raises(ConfigError, match="monitor"):
        EarlyStopping("???")
    with pytest.raises(ConfigError, match="not a validation metric"):
        EarlyStopping("val/auroc").step({"val/loss": 1.0})


def test_run_logger_writes_jsonl_always_and_csv_with_its_prefix(tmp_path):
    from util.run_logger import RunLogger

    logger = RunLogger({"csv": {"save_dir": str(tmp_path), "name": "csv", "prefix": "exp1/"}}, str(tmp_path))
    logger.log({"train/loss": 0.5}, step=1, epoch=0)
    logger.log({"train/loss": 0.25, "val/loss": float("nan")}, step=2, epoch=0)
    logger.close()
    header, *rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert header.split(",") == ["step", "epoch", "exp1/train/loss", "exp1/val/loss"] and len(rows) == 2
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert '"train/loss": 0.25' in lines[1] and '"val/loss": "nan"' in lines[1]
    with pytest.raises(KeyError, match="prefix"):  # a chosen logger config gives every key
        RunLogger({"csv": {"save_dir": str(tmp_path), "name": "csv"}}, str(tmp_path))


def test_a_skipped_nonfinite_step_leaves_batchnorm_statistics_untouched():
    """A NaN sample in a batch skips the optimizer step; the forward pass already updated the running
    statistics of a BatchNorm (e.g. the linear probe's head), and they must be restored."""

    class WithNorm(Regression):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3, affine=False)

        def forward(self, batch, generator=None):
            return super().forward({**batch, "x": self.norm(batch["x"])}, generator)

    torch.manual_seed(0)
    model = WithNorm()
    batches = make_batches(3, 4)
    batches[1]["x"] = batches[1]["x"].clone()
    batches[1]["x"][0, 0] = float("nan")
    run_epoch(model, batches[:1])
    stats = [b.clone() for b in model.norm.buffers()]
    _, steps, streak = run_epoch(model, batches[1:2])  # the NaN batch: skipped
    assert steps == 0 and streak == 1
    assert all(torch.equal(a, b) for a, b in zip(stats, model.norm.buffers()))  # no trace, counter included
    assert torch.isfinite(model.norm.running_mean).all()
