"""A new objective and a new data kind plug in without touching the engine or the mains: a toy
two-view contrastive-style objective with its own loss, an extra buffer and an extra registered
stateful component, on a toy two-view data kind with per-field on-device transforms, trains,
checkpoints and resumes exactly through main_pretrain.main -> engine.fit."""
import json
import os
import shutil

import pytest
import torch
import torch.nn as nn

import datasets
import main_pretrain
from datasets.loading import DataInfo, InputSpec, KeyedDataset
from models.objectives import Objective
from util import cli
from util.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIM = 6


class TwoViews(KeyedDataset):
    """Points on a line, each seen twice with independent noise drawn from the sample's generator."""

    def __init__(self, records, train, seed):
        self.records, self.train, self.seed = records, train, seed

    def __len__(self):
        return len(self.records)

    def sample(self, index, generator):
        base = torch.linspace(-1, 1, DIM) * float(self.records[index]) / 10
        noise = torch.randn(2, DIM, generator=generator) * (0.1 if self.train else 0.0)
        return {"view1": base + noise[0], "view2": base + noise[1], "label": torch.zeros(0)}


def jitter(x, generator=None):
    """An on-device batched transform (applied per field by the engine)."""
    return x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)


class TwoViewSource:
    """A data kind: 40 records, splits by position; the protocol of datasets.loading."""

    def __init__(self, data_cfg, seed):
        self.seed, self.root = seed, "toy two-view data"
        self.device_transforms = {"view1": jitter, "view2": jitter}

    def split(self, name):
        return {"train": list(range(32)), "val": list(range(32, 40))}[name]

    def dataset(self, records, train):
        return TwoViews(records, train, self.seed)

    def info(self, train_records):
        spec = InputSpec(shape=(DIM,))
        return DataInfo(inputs={"view1": spec, "view2": spec}, task_type=None)


class StepCounter:
    """A stateful component that is not a module: restored through TrainState's registry."""

    def __init__(self):
        self.calls = 0

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = int(state["calls"])


class ToyTwoView(Objective):
    """Both views through one encoder; the loss pulls the two embeddings together and keeps their
    norm near 1. ``loss_ema`` is an extra buffer; ``counter`` an extra registered component."""

    def __init__(self, *, data, optim, width):
        super().__init__(optim)
        self.net = nn.Sequential(nn.Linear(data.inputs["view1"].shape[0], width), nn.Tanh(), nn.Linear(width, 4))
        self.register_buffer("loss_ema", torch.zeros(()))
        self.counter = StepCounter()

    def forward(self, batch, generator=None):
        z1, z2 = self.net(batch["view1"]), self.net(batch["view2"])
        loss = (z1 - z2).pow(2).sum(1).mean() + (z1.norm(dim=1) - 1).pow(2).mean()
        if self.training:
            self.counter.calls += 1
            with torch.no_grad():
                self.loss_ema.mul_(0.9).add_(0.1 * loss.detach())
        return {"loss": loss, "alignment": (z1 - z2).pow(2).sum(1).mean().detach()}

    def stateful(self):
        return {"counter": self.counter}


TOY_MODEL = """\
_target_: test_objective_seam.ToyTwoView
width: 16
optim: {blr: 0.05, lr: null, lr_batch_divisor: 4, min_lr: 0.0, weight_decay: 0.0, layer_decay: 1.0,
        betas: [0.9, 0.95], warmup_epochs: 1, epochs: 4}
"""
TOY_DATA = """\
defaults:
  - default
kind: twoview
num_workers: 0
batch_size: 4
"""
TOY_MODALITY = "dataset_key: twoview\nbuild_demo: false\n"


@pytest.fixture
def toy_configs(tmp_path, monkeypatch):
    """The repository's configs plus model/toy, data/toy and modality/toy, and the data kind registered."""
    root = tmp_path / "configs"
    shutil.copytree(os.path.join(REPO, "configs"), root)
    (root / "model" / "toy.yaml").write_text(TOY_MODEL)
    (root / "data" / "toy.yaml").write_text(TOY_DATA)
    (root / "modality" / "toy.yaml").write_text(TOY_MODALITY)
    monkeypatch.setitem(datasets.KINDS, "twoview", TwoViewSource)
    return root


def pretrain(configs, run_dir, *overrides):
    argv = ["--config", str(configs / "pretrain.yaml"), "~experiment", "model=toy", "data=toy", "modality=toy",
            f"paths.log_dir={run_dir}/logs", f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false",
            "extras.print_config=false", "callbacks.model_checkpoint.monitor=val/loss", *overrides]
    return cli.run_cli(main_pretrain.main, "pretrain", argv=argv, prog="main_pretrain.py")


def test_a_toy_two_view_objective_trains_checkpoints_and_resumes_exactly(toy_configs, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert pretrain(toy_configs, straight, "trainer.max_epochs=4") == 0
    assert pretrain(toy_configs, split, "trainer.max_epochs=2") == 0  # optim.epochs=4: the same LR schedule
    assert pretrain(toy_configs, split, "trainer.max_epochs=4", "resume=auto") == 0

    a = load_checkpoint(str(straight / "checkpoints" / "last.pt"))
    b = load_checkpoint(str(split / "checkpoints" / "last.pt"))
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"] == 4 * 8  # 32 records / batch 4
    assert a["model"].keys() == b["model"].keys() and "loss_ema" in a["model"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["extra"]["counter"] == b["extra"]["counter"] == {"calls": 32}
    assert float(a["model"]["loss_ema"]) > 0

    rows = [json.loads(line) for line in open(straight / "metrics.jsonl")]
    epochs = [r for r in rows if "val/loss" in r]
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3] and epochs[-1]["train/loss"] < 0.5 * epochs[0]["train/loss"]
    assert {"train/alignment", "val/alignment", "val/samples"} <= set(epochs[0])
    assert epochs[0]["val/samples"] == 8
    metrics = json.load(open(straight / "metrics.json"))
    assert metrics["best_checkpoint"].endswith(".pt") and "encoder" not in metrics  # it exports nothing


def test_an_unknown_data_kind_is_refused_with_the_known_ones(toy_configs, tmp_path, capsys):
    assert pretrain(toy_configs, tmp_path / "x", "data.kind=nope") == 2
    known = ", ".join(datasets.KINDS)  # the shipped kinds and the toy one this module registers
    assert "twoview" in known and f"data.kind = 'nope': must be one of {known}" in capsys.readouterr().err
