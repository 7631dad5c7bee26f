"""The training state: everything a run needs to continue exactly where it stopped, as one object.

``TrainState`` holds the model (the objective), optimizer, GradScaler, best-k checkpoint list, early
stopping, any extra stateful component an objective registers (``objective.stateful()``), and the
progress (epochs done, optimizer steps, batches done in the current epoch, the non-finite streak,
the metric history). ``state_dict()`` is the checkpoint file's content and ``load_state_dict()``
restores all of it; nothing else is threaded through the loop or the mains.

A checkpoint is a plain dict of tensors and Python values, readable with
``torch.load(weights_only=True)``:

    model            the objective's state dict (its networks under their attribute names, e.g. net.*)
    optimizer        optimizer.state_dict()
    scaler           GradScaler.state_dict()
    epoch            the last finished epoch (-1: none yet)
    step             optimizer steps so far
    rng              this process's Python / NumPy / torch RNG states
    best             best-k checkpoint list (written by CheckpointManager)
    early_stop       early-stopping state or None
    metrics          the metric history (finite numbers)
    extra            {name: state_dict()} of the registered components
    objective        the objective's class (``models.objectives.MAEPretraining``): what the file is
    data             what it was trained for: input fields and sample shapes, task type, label
                     names, and the preprocessing contract of the data (``util.contract``); checked
                     when the file is resumed or evaluated
    config           the run's config as YAML text
    format_version   2 (version 1 stored the network at the root of ``model``; it is read too)

A checkpoint written mid-epoch (preemption) also has ``batch_in_epoch`` (batches of epoch
``epoch + 1`` done), ``rng_per_rank`` and ``generator`` (every rank's RNG and epoch-generator state).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional

import torch

from util.checkpoint import load_checkpoint
from util.errors import CheckpointError, ConfigError
from util.seeding import rng_state, set_rng_state

FORMAT_VERSION = 2
log = logging.getLogger(__name__)


def upgrade_checkpoint(ckpt: dict) -> dict:
    """A checkpoint in the current format. Version 1 (single-network objectives) kept the network's
    state dict at the root of ``model``; the objectives now hold it as ``net``."""
    if int(ckpt.get("format_version", 1)) >= 2:
        return ckpt
    return {**ckpt, "model": {f"net.{k}": v for k, v in ckpt["model"].items()}, "format_version": FORMAT_VERSION}


def model_state(ckpt: dict) -> dict:
    """The objective's state dict of a checkpoint of any format version."""
    return upgrade_checkpoint(ckpt)["model"]


def run_identity(objective: Any, data_info: Any) -> dict:
    """What a checkpoint of this run is: its objective and the data contract it was trained for."""
    kind = type(objective)
    return {"objective": f"{kind.__module__}.{kind.__qualname__}",
            "data": {"inputs": {name: [int(d) for d in spec.shape] for name, spec in data_info.inputs.items()},
                     "task_type": data_info.task_type, "label_names": [str(n) for n in data_info.label_names],
                     "contract": dict(getattr(data_info, "contract", None) or {})}}


def checkpoint_objective(ckpt: dict) -> Optional[str]:
    """The objective that wrote ``ckpt`` (recorded since format 2; guessed from the keys before)."""
    if ckpt.get("objective"):
        return str(ckpt["objective"])
    keys = model_state(ckpt).keys()
    if any(k.startswith("net.decoder_") for k in keys):
        return "models.objectives.MAEPretraining"
    if any(k.startswith("net.head.") for k in keys):
        return "models.objectives.Classification"
    return None


def read_run_checkpoint(path: str, encoder_file_ok: bool) -> Optional[dict]:
    """A training checkpoint of ours (with its objective and config), or None for an encoder file
    (``encoder_file_ok``: a file ``load_checkpoint`` cannot read is then left to the weights loader,
    which says what to do with, e.g., a pickled reference checkpoint)."""
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path '{path}' does not exist: give a checkpoint of a run "
                          "(<run dir>/checkpoints/*.pt) or an encoder file (encoder.pth)")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        if encoder_file_ok:
            return None
        raise
    return ckpt if checkpoint_objective(ckpt) and ckpt.get("config") else None


def check_checkpoint_kind(ckpt: dict, identity: dict, path: str, use: str, contract_policy: str = "error") -> None:
    """Refuse, with what the file is, a checkpoint of another objective, other input shapes or labels,
    or data prepared differently (``util.contract``; a warning instead with ``contract_policy`` warn).
    ``use``: what the run wanted to do with it: resume, evaluate."""
    found, expected = checkpoint_objective(ckpt), identity["objective"]
    if found is not None and found != expected:
        raise CheckpointError(
            f"cannot {use} '{path}': it is a {found.rsplit('.', 1)[-1]} checkpoint ({found}), and this run's "
            f"model is {expected.rsplit('.', 1)[-1]}. To start this model from its weights give it as "
            "model.pretrained_weights=<file>; to resume or evaluate it choose the model config of the run "
            "that wrote it (its .hydra/config.yaml names it).")
    data = ckpt.get("data")
    if not data:
        return
    for key, what in (("inputs", "input shapes"), ("task_type", "task type"), ("label_names", "labels")):
        if key in data and data[key] != identity["data"][key]:
            raise CheckpointError(
                f"cannot {use} '{path}': it was trained for {what} {data[key]}, but this run's data gives "
                f"{identity['data'][key]}. Use the data config of the run that wrote it, or start from its "
                "weights with model.pretrained_weights=<file>.")
    from util import contract

    contract.check(data.get("contract"), identity["data"].get("contract"), what=f"checkpoint '{path}'",
                   policy=contract_policy, log=log)


def _finite(value: Any) -> bool:
    try:
        return float(value) == float(value) and abs(float(value)) != float("inf")
    except (TypeError, ValueError):
        return False


class TrainState:
    """See the module docstring. ``model`` is the unwrapped objective (not the DDP wrapper)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, *,
                 checkpoints: Any = None, early_stopping: Any = None, extra: Optional[dict] = None,
                 identity: Optional[dict] = None) -> None:
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.checkpoints, self.early_stopping = checkpoints, early_stopping
        self.extra: dict[str, Any] = dict(extra or {})
        self.identity = dict(identity or {})  # run_identity(): saved so a file says what it is
        self.epochs_done = 0        # the next epoch to run
        self.step = 0               # optimizer steps so far
        self.batch_in_epoch = 0     # batches of epoch `epochs_done` already done (after a mid-epoch resume)
        self.nonfinite_streak = 0   # optimizer steps skipped in a row for a NaN/inf loss
        self.history: dict = {}     # the latest value of every epoch metric
        self.generator_state: Optional[torch.Tensor] = None  # this rank's epoch generator at batch_in_epoch

    def register(self, name: str, component: Any) -> None:
        """Add a component with ``state_dict()`` / ``load_state_dict()`` to every checkpoint."""
        if name in self.extra:
            raise ValueError(f"a stateful component named {name!r} is already registered")
        self.extra[name] = component

    def state_dict(self, *, config: str = "", rng_per_rank: Optional[list] = None,
                   generators: Optional[list] = None) -> dict:
        """The checkpoint content. Mid-epoch (``batch_in_epoch > 0``) pass every rank's RNG state and
        epoch-generator state (gathered), so each rank continues its own streams."""
        state = {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(), "epoch": self.epochs_done - 1, "step": self.step,
            "rng": rng_state(), "nonfinite_streak": self.nonfinite_streak,
            "best": self.checkpoints.state_dict() if self.checkpoints is not None else {},
            "early_stop": self.early_stopping.state_dict() if self.early_stopping is not None else None,
            "metrics": {k: v for k, v in self.history.items() if _finite(v)},
            "extra": {name: obj.state_dict() for name, obj in self.extra.items()},
            "config": config, "format_version": FORMAT_VERSION, **self.identity,
        }
        if self.batch_in_epoch:
            state["batch_in_epoch"] = self.batch_in_epoch
            if rng_per_rank is not None:
                state.update(rng=rng_per_rank[0], rng_per_rank=rng_per_rank)
            if generators is not None:
                state["generator"] = generators
        return state

    def load_state_dict(self, ckpt: dict, *, rank: int = 0, world_size: int = 1, source: str = "checkpoint") -> None:
        """Restore everything ``state_dict`` wrote (``source`` names the file in error messages)."""
        ckpt = upgrade_checkpoint(ckpt)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint '{source}' does not fit this model/optimizer: "
                                  f"{str(e).splitlines()[0]}") from None
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.checkpoints is not None:
            self.checkpoints.load_state_dict(ckpt.get("best") or {})
        if self.early_stopping is not None and ckpt.get("early_stop"):
            self.early_stopping.load_state_dict(ckpt["early_stop"])
        extra = ckpt.get("extra") or {}
        for name, obj in self.extra.items():
            if name not in extra:
                raise CheckpointError(f"checkpoint '{source}' has no state for '{name}' (it holds "
                                      f"{', '.join(extra) or 'no extra state'}); it was written by another objective")
            obj.load_state_dict(extra[name])
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and len(per_rank) != world_size:
            raise CheckpointError(f"checkpoint '{source}' was preempted mid-epoch with {len(per_rank)} processes; "
                                  f"resume it with the same number of processes (this run has {world_size})")
        if per_rank:
            set_rng_state(per_rank[rank])
        elif ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        generators = ckpt.get("generator")
        self.generator_state = generators[rank] if generators else None
        self.epochs_done = int(ckpt["epoch"]) + 1
        self.step = int(ckpt["step"])
        self.batch_in_epoch = int(ckpt.get("batch_in_epoch") or 0)
        self.nonfinite_streak = int(ckpt.get("nonfinite_streak") or 0)
        self.history = dict(ckpt.get("metrics") or {})
