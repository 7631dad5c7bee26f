"""The one training loop, generic over objectives (``models/objectives.py`` states their contract).

    rt = engine.setup(cfg, "main_x.py")                      # processes, device, precision
    data = datasets.build_data(cfg.data, splits, seed=cfg.seed, world_size=rt.world_size, rank=rt.rank)
    objective = engine.build_objective(cfg, data.info, rt)
    result = engine.fit(cfg, rt, objective, data)            # every epoch, checkpoints, resume
    test = engine.evaluate(objective, data.loaders["test"], rt)

``fit`` runs the epochs. Each one: the epoch's seeds (pure functions of seed, epoch and rank) ->
``train_one_epoch`` (per-step warmup + cosine LR, autocast + GradScaler, accumulation with DDP
``no_sync``, clipping, a guard that skips a step with a NaN/inf loss, a preemption check after every
optimizer step) -> every ``check_val_every_n_epoch`` epochs ``evaluate`` on val through the
objective's hooks, and its figures -> logging -> early stopping -> best-k and last checkpoints of the
one ``TrainState`` -> a barrier. It honours ``trainer.fast_dev_run``, ``overfit_batches``,
``limit_*_batches``, ``min_epochs`` and ``profiler``. Batches are dicts; the engine moves them,
applies the on-device transforms and gathers per-sample outputs by field name only.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import torch
import yaml
import torch.distributed as dist

from util import distributed, sweeps
from util.batch_size import largest_fitting
from util.checkpoint import LAST, CheckpointManager, EarlyStopping, load_checkpoint
from util.collectives import convert_sync_batchnorm
from util.cli import EXTRAS_SCHEMA
from util.config import Config, instantiate, locate, parse_override, to_yaml
from util.device import PRECISIONS, Precision, make_scaler, resolve_device, resolve_precision, to_device
from util.errors import CheckpointError, ConfigError, NonFiniteLossError, Preempted
from util.flops import flop_counter, matmul_peak_gflops
from util.lr_sched import absolute_lr, lr_at, set_lr
from util.preemption import PreemptionWatcher
from util.profiler import Profiler
from util.run_logger import LOGGER_SCHEMA, RunLogger, check_installed
from util.schema import AnyOf, Bool, Choice, Float, Int, List, Problem, SchemaError, Section, Str, check
from util.seeding import derive_seed, rng_state, set_rng_state
from util.train_state import TrainState, check_checkpoint_kind, run_identity
from datasets.check_overlap import warn_pretraining_overlap
from datasets.loading import shutdown_workers

log = logging.getLogger(__name__)

__all__ = ["Runtime", "setup", "build_objective", "LoopSettings", "Loop", "fit", "FitResult", "train_one_epoch",
           "evaluate", "Evaluation", "embed", "num_batches", "unwrap", "resolve_precision", "make_scaler", "Precision"]

# trainer.find_batch_size probes for out-of-memory errors, which only a GPU raises before the machine swaps
BATCH_SEARCH_DEVICES = ("cuda",)
VAL_SEED_OFFSET = 2**31 - 1  # the validation generator's seed: derive_seed(seed, VAL_SEED_OFFSET)


class Interrupted(Exception):
    """``should_stop`` asked to stop after an optimizer step; ``batch`` batches of the epoch are done."""

    def __init__(self, batch: int) -> None:
        super().__init__(f"stopped after batch {batch}")
        self.batch = batch


# ----------------------------------------------------------------------------------------
# The config a run reads, checked before it does any work
# ----------------------------------------------------------------------------------------

_LIMIT = AnyOf(Int(min=0), Float(0, 1), nullable=True)
TRAINER_SCHEMA = {
    "min_epochs": Int(min=0), "max_epochs": Int(min=1), "accelerator": Choice("auto", "cpu", "gpu", "cuda"),
    "devices": Int(min=1), "num_nodes": Int(min=1), "precision": Choice(*PRECISIONS),
    "check_val_every_n_epoch": Int(min=1), "log_every_n_steps": Int(min=1), "deterministic": Bool(),
    "gradient_clip_val": Float(min=0, min_open=True, nullable=True), "accumulate_grad_batches": Int(min=1),
    "fast_dev_run": AnyOf(Bool(), Int(min=1)), "limit_train_batches": _LIMIT, "limit_val_batches": _LIMIT,
    "limit_test_batches": _LIMIT, "overfit_batches": Int(min=0), "detect_anomaly": Bool(),
    "profiler": Choice("simple", "pytorch", nullable=True), "max_nonfinite_steps": Int(min=1),
    "enable_progress_bar": Bool(), "compile": Bool(), "find_batch_size": Bool(),
    "compile_mode": Choice("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}
_MODE = Choice("min", "max")
CALLBACKS_SCHEMA = {
    "model_checkpoint": Section({
        "dirpath": Str(), "filename": Str(), "monitor": Str(nullable=True), "mode": _MODE, "save_last": Bool(),
        "save_top_k": Int(min=-1), "every_n_epochs": Int(min=1), "verbose": Bool()}, required=False, nullable=True),
    "early_stopping": Section({
        "monitor": Str(), "min_delta": Float(min=0), "patience": Int(min=1), "mode": _MODE, "strict": Bool(),
        "check_finite": Bool(), "stopping_threshold": Float(nullable=True),
        "divergence_threshold": Float(nullable=True), "verbose": Bool()}, required=False, nullable=True),
    "lr_monitor": Section({"logging_interval": Choice("step", "epoch")}, required=False, nullable=True),
}
PATHS_SCHEMA = {k: Str() for k in ("root_dir", "data_dir", "log_dir", "output_dir", "work_dir", "weights_dir")}
# the top-level keys every training main reads; a main adds its own (e.g. eval_only)
RUN_SCHEMA = {
    "task_name": Str(), "tags": List(Str()), "seed": Int(min=0, nullable=True), "ckpt_path": Str(nullable=True),
    "resume": Choice("auto", nullable=True, required=False), "optimized_metric": Str(nullable=True),
    "trainer": Section(TRAINER_SCHEMA), "callbacks": Section(CALLBACKS_SCHEMA, nullable=True),
    "logger": Section(LOGGER_SCHEMA, nullable=True), "extras": Section(EXTRAS_SCHEMA, nullable=True),
    "paths": Section(PATHS_SCHEMA, closed=False),
}


def check_config(cfg: Config, main_schema: Optional[dict] = None) -> None:
    """Check every value the run will read (types, ranges, choices, missing and unknown keys) before
    any work; all problems in one ``SchemaError``. Data and model rules come from the data kind
    (``datasets.config_schema``) and the objective (``config_schema``) the config names."""
    import datasets

    problems = check(cfg, {**RUN_SCHEMA, **(main_schema or {})}, "", closed=False)
    data, model = cfg.get("data"), cfg.get("model")
    if isinstance(data, dict):
        schema, closed = datasets.config_schema(data)
        problems += check(data, schema, "data", closed=closed)
    if isinstance(model, dict):
        schema = _objective_schema(model, problems)
        if schema is not None:
            problems += check(model, schema, "model", closed=True)
    if problems:
        raise SchemaError(problems)
    check_installed(cfg.get("logger"))  # a chosen wandb / mlflow that is not installed: refused now


def _objective_schema(model_cfg: Config, problems: list) -> Optional[dict]:
    target = model_cfg.get("_target_")
    if not isinstance(target, str):
        problems.append(Problem("model._target_", target, "must name the objective, e.g. "
                                "models.objectives.MAEPretraining"))
        return None
    try:
        cls = locate(target)
    except ConfigError as e:
        problems.append(Problem("model._target_", target, str(e)))
        return None
    schema = getattr(cls, "config_schema", None)
    return schema(model_cfg) if schema is not None else None


# ----------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------

@dataclass
class Runtime:
    """This process's place in the run: device, precision, rank and world size."""
    device: torch.device
    precision: Precision
    world_size: int = 1
    rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: Config, script: str) -> Runtime:
    """Join torch.distributed when launched by torchrun, pick device and precision, and apply the
    ``deterministic`` / ``detect_anomaly`` switches of ``cfg.trainer``."""
    trainer = cfg.trainer
    world_size, rank = distributed.world_size(), distributed.rank()
    distributed.init_distributed()
    device = resolve_device(trainer.accelerator, distributed.local_rank())
    if int(trainer.devices or 1) * int(trainer.num_nodes or 1) > world_size:
        log.warning("trainer.devices=%s x num_nodes=%s but this run has %d process(es): the world size comes "
                    "from the launcher, e.g. torchrun --nproc_per_node=%s %s ...", trainer.devices,
                    trainer.num_nodes, world_size, trainer.devices, script)
    precision = resolve_precision(trainer.precision, device)
    if trainer.find_batch_size and device.type not in BATCH_SEARCH_DEVICES:
        raise ConfigError(f"trainer.find_batch_size=true searches the largest batch that fits in GPU memory, and this "
                          f"run is on {device.type} (nothing runs out of memory there before the machine swaps); set "
                          "data.batch_size instead, or run on a CUDA device")
    if trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(bool(trainer.detect_anomaly))
    return Runtime(device, precision, world_size, rank)


def _command_line_keys(cfg: Config, group: str) -> set[str]:
    """The keys under ``group`` that the command line set (``model.pretrained_weights=...`` -> ``pretrained_weights``)."""
    keys = set()
    for line in cfg.select("hydra.overrides.task", None) or []:
        key = parse_override(line).key
        if key.startswith(group + "."):
            keys.add(key[len(group) + 1:])
    return keys


def build_objective(cfg: Config, data_info: Any, rt: Runtime, model_cfg: Optional[Config] = None) -> torch.nn.Module:
    """The objective ``cfg.model`` (or ``model_cfg``, e.g. a checkpoint's) names with its ``_target_``,
    built for ``data_info``, on the device."""
    model_cfg = cfg.model if model_cfg is None else model_cfg
    if "_target_" not in model_cfg:
        raise ConfigError("the model config has no _target_: name the objective, e.g. "
                          "_target_: models.objectives.MAEPretraining")
    try:
        objective = instantiate(model_cfg, data=data_info)
    except ValueError as e:  # a network refused a value (a size, a pooling, a ratio)
        raise ConfigError(f"the model config does not build: {e}") from None
    if not isinstance(objective, torch.nn.Module) or not hasattr(objective, "param_groups"):
        raise ConfigError(f"model._target_ {model_cfg['_target_']} is not an objective (models/objectives.py)")
    objective.command_line_keys = frozenset(_command_line_keys(cfg, "model"))
    if rt.world_size > 1 and getattr(objective, "sync_batchnorm", False):  # batch statistics over all ranks
        objective = convert_sync_batchnorm(objective, rt.device)
        log.info("batch norms synchronised over the %d ranks", rt.world_size)
    n_params = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    name = f"{type(objective).__name__} {model_cfg.get('size') or ''}".strip()
    log.info("%s: %.2fM trainable parameters; device %s, precision %s", name, n_params / 1e6, rt.device,
             rt.precision.name)
    return objective.to(rt.device)


def wrap_ddp(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    if rt.world_size <= 1:
        return model
    kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and hasattr(model, "no_sync") else model


# ----------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------

def _whole(trainer: Config, key: str, minimum: int) -> int:
    value = trainer[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"trainer.{key} must be a whole number >= {minimum}, got {value!r}")
    return value


def _limit(trainer: Config, key: str) -> Any:
    value = trainer[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
        raise ConfigError(f"trainer.{key} must be null, a batch count or a fraction in (0, 1], got {value!r}")
    return value


@dataclass
class LoopSettings:
    """The ``trainer`` keys the loop reads, checked once (``from_config``), and the LR schedule."""
    max_epochs: int
    min_epochs: int
    check_val_every_n_epoch: int
    accumulate_grad_batches: int
    gradient_clip_val: Optional[float]
    log_every_n_steps: int
    limit_train_batches: Any
    limit_val_batches: Any
    limit_test_batches: Any
    overfit_batches: int
    fast_dev_run: int                    # 0 = off, else batches per split (no checkpoints)
    max_nonfinite_steps: int
    progress_bar: bool
    profiler: Optional[str]
    lr_logging: Optional[str] = None     # callbacks.lr_monitor.logging_interval: step | epoch | None (no train/lr)
    compile: bool = False                # torch.compile the objective's forward + loss (trainer.compile)
    compile_mode: str = "default"
    find_batch_size: bool = False        # replace data.batch_size by the largest that fits (CUDA)
    lr: float = 0.0                      # the LR schedule, from the objective's optim block (fit)
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    schedule_epochs: float = 1.0

    @classmethod
    def from_config(cls, trainer: Config) -> "LoopSettings":
        fast = trainer.fast_dev_run
        fast = int(fast) if not isinstance(fast, bool) else (1 if fast else 0)
        overfit = _whole(trainer, "overfit_batches", 0)
        limits = {k: _limit(trainer, k) for k in ("limit_train_batches", "limit_val_batches", "limit_test_batches")}
        if overfit:  # the same first batches every epoch, validated on themselves
            limits.update(limit_train_batches=overfit, limit_val_batches=overfit)
        if fast:
            limits = {k: fast for k in limits}
        clip = trainer.gradient_clip_val
        return cls(max_epochs=1 if fast else _whole(trainer, "max_epochs", 1), min_epochs=_whole(trainer, "min_epochs", 0),
                   check_val_every_n_epoch=_whole(trainer, "check_val_every_n_epoch", 1),
                   accumulate_grad_batches=_whole(trainer, "accumulate_grad_batches", 1),
                   gradient_clip_val=float(clip) if clip else None,
                   log_every_n_steps=_whole(trainer, "log_every_n_steps", 1), overfit_batches=overfit,
                   fast_dev_run=fast, max_nonfinite_steps=_whole(trainer, "max_nonfinite_steps", 1),
                   progress_bar=bool(trainer.enable_progress_bar), profiler=trainer.profiler,
                   compile=bool(trainer.compile), compile_mode=str(trainer.compile_mode),
                   find_batch_size=bool(trainer.find_batch_size), **limits)


def num_batches(loader: Iterable, limit: Any) -> int:
    """Batches per epoch after ``limit_*_batches`` (int = count, float in (0, 1] = fraction)."""
    total = len(loader)
    if limit is None:
        return total
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise ConfigError(f"limit_*_batches must be an int count or a fraction in (0, 1], got {limit!r}")
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(total * limit)) if limit > 0 else 0
    return min(total, int(limit))


def check_batch_norm_batches(objective: torch.nn.Module, loader: Any) -> None:
    """Refuse, before the first step, a training loader that would hand a BatchNorm in training mode
    a batch of one record (it cannot compute batch statistics and would fail mid-epoch)."""
    objective.train()  # as the epoch loop will: frozen parts put their own norms in eval mode
    norms = [name for name, module in objective.named_modules()
             if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.training]
    if not norms:
        return
    per_rank, size = len(getattr(loader, "epoch_sampler", loader.dataset)), int(loader.batch_size)
    if size == 1:
        raise ConfigError(f"data.batch_size=1, and the model's BatchNorm ({norms[0]}) cannot train on a batch "
                          "of one record; raise data.batch_size")
    if per_rank % size == 1 and not loader.drop_last:
        raise ConfigError(f"the last training batch has one record ({per_rank} records per rank, batch_size "
                          f"{size}), and the model's BatchNorm ({norms[0]}) cannot train on it; set "
                          "data.drop_last=true or change data.batch_size")


def build_optimizer(objective: torch.nn.Module, effective_batch: int,
                    device: Optional[torch.device] = None) -> tuple[torch.optim.Optimizer, float]:
    """AdamW over ``objective.param_groups()``; lr = ``optim.lr``, or ``blr * effective_batch / lr_batch_divisor``.
    On CUDA the fused kernel (one launch for every parameter instead of several per tensor)."""
    optim = objective.optim
    lr = optim["lr"]
    if lr is None:
        lr = absolute_lr(float(optim["blr"]), effective_batch, float(optim["lr_batch_divisor"]))
    fused = {"fused": True} if device is not None and device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(objective.param_groups(), lr=float(lr), betas=tuple(optim["betas"]), **fused)
    return optimizer, float(lr)


# ----------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------

def batch_size(batch: dict) -> int:
    """Samples in a dict batch: the length of ``index`` when it has one, else of its first tensor."""
    if "index" in batch:
        return int(batch["index"].shape[0])
    return next(int(v.shape[0]) for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0)


def apply_transforms(batch: dict, transforms: dict, generator: Optional[torch.Generator]) -> dict:
    """Run each on-device transform on its field (batched augmentation), without gradients."""
    if not transforms:
        return batch
    batch = dict(batch)
    with torch.no_grad():
        for name, transform in transforms.items():
            batch[name] = transform(batch[name], generator=generator)
    return batch


def tile_batch(batch: dict, size: int) -> dict:
    """``batch`` repeated along its first axis to ``size`` samples (tensors and lists alike)."""
    pick = torch.arange(size) % batch_size(batch)
    tiled = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            value = value[pick]
        elif isinstance(value, (list, tuple)):
            value = [value[i] for i in pick.tolist()]
        tiled[key] = value
    return tiled


# ----------------------------------------------------------------------------------------
# The largest batch that fits (trainer.find_batch_size)
# ----------------------------------------------------------------------------------------

def find_batch_size(objective: torch.nn.Module, loader: Any, rt: "Runtime", transforms: dict, *, start: int) -> int:
    """The largest per-rank training batch, at most the records a rank trains on and a multiple of 8
    (``util.batch_size.largest_fitting``, from ``start``), for which two training steps of
    ``objective`` -- forward and loss under the run's autocast, backward, an AdamW step, so the
    optimizer state counts -- run without running out of device memory. A probe batch is the first
    records of ``loader``'s dataset, repeated. Every rank probes the same sizes and a size fits when it
    fits on all of them; batch norms run in eval mode meanwhile when there are several ranks (a
    synchronised one would wait on a rank that ran out of memory). Weights, buffers and the RNG are
    restored afterwards. The probe runs eager: a compiled step needs no more memory."""
    per_rank = len(loader.epoch_sampler)
    first = [loader.dataset[i] for i in range(min(per_rank, 64))]
    sample = loader.collate_fn(first)
    saved = {k: v.detach().to("cpu", copy=True) for k, v in objective.state_dict().items()}
    rng = rng_state()
    norms = [m for m in objective.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
             and m.training] if rt.world_size > 1 else []
    for norm in norms:
        norm.eval()
    scaler = make_scaler(rt.precision)
    generator = torch.Generator(device=rt.device).manual_seed(0)

    def fits(size: int) -> bool:
        optimizer, _ = build_optimizer(objective, size, rt.device)
        ok = True
        try:
            batch = apply_transforms(to_device(tile_batch(sample, size), rt.device), transforms, generator)
            for _ in range(2):
                with rt.precision.autocast():
                    loss = objective(batch, generator=generator)["loss"]
                scaler.scale(loss.float()).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                del loss
            del batch
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
        except torch.OutOfMemoryError:
            ok = False
        objective.zero_grad(set_to_none=True)
        del optimizer
        gc.collect()
        if rt.device.type == "cuda":
            torch.cuda.empty_cache()
        flag = torch.tensor(float(ok), device=rt.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = bool(flag.item())
        log.info("find_batch_size: a batch of %d %s", size, "fits" if ok else "does not fit")
        return ok

    try:
        found = largest_fitting(fits, start=start, limit=per_rank)
    finally:
        objective.load_state_dict(saved)
        set_rng_state(rng)
        for norm in norms:
            norm.train()
    if found < 1:
        raise ConfigError("trainer.find_batch_size: not even a batch of 1 record fits in device memory; choose a "
                          "smaller model (model.size) or a lower precision (trainer.precision=bf16-mixed)")
    log.info("find_batch_size: data.batch_size=%d per rank (the largest that fits, at most the %d records a rank "
             "trains on)", found, per_rank)
    return found


def _scalars(outputs: dict) -> dict:
    return {k: v.detach().float() for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.dim() == 0}


class _Meter:
    """Sample-weighted means of scalar tensors, kept on device (one sync per epoch)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count: Any = 0
        self.total = 0.0  # samples counted over every rank, set by means()

    def update(self, values: dict, n: int, keep: Optional[torch.Tensor] = None) -> None:
        """Add a batch of ``n`` samples; ``keep`` (a 0-d bool tensor) counts it only when true, decided
        on the device (no host sync in the training step)."""
        for k, v in values.items():
            term = v * n if keep is None else torch.where(keep, v * n, torch.zeros_like(v))
            self.sums[k] = self.sums.get(k, 0.0) + term
        self.count = self.count + (n if keep is None else keep.float() * n)

    def means(self, device: torch.device) -> dict:
        keys = sorted(self.sums)
        count = torch.as_tensor(self.count, dtype=torch.float32).to(device).reshape(1)
        totals = torch.cat([torch.stack([self.sums[k].float().to(device) for k in keys]), count]) if keys else count
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        self.total = totals[-1].item()
        count = max(self.total, 1.0)
        return {k: (totals[i] / count).item() for i, k in enumerate(keys)}


def _all_finite(finite: torch.Tensor, device: torch.device) -> bool:
    """True when every rank's accumulation window had finite losses: the training step's one host sync."""
    flag = finite.float().reshape(())
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------
# One epoch of training, one pass of evaluation
# ----------------------------------------------------------------------------------------

@dataclass
class Loop:
    """What every epoch shares: the (DDP-wrapped) objective, settings, runtime, on-device
    transforms by field, the run logger, and the preemption watcher."""
    model: torch.nn.Module
    settings: LoopSettings
    rt: Runtime
    transforms: dict = field(default_factory=dict)
    run_logger: Any = None
    watcher: Optional[PreemptionWatcher] = None  # asked after every optimizer step
    count_flops: bool = False  # count the model FLOPs of the next training batch (fit: the run's first)
    flops_per_sample: Optional[float] = None  # forward + loss + backward, from FlopCounterMode


def train_one_epoch(loop: Loop, state: TrainState, loader: Iterable, *, epoch: int, total: int,
                    start_batch: int = 0, generator: Optional[torch.Generator] = None) -> dict:
    """Train batches ``start_batch .. total - 1`` of epoch ``epoch`` (the loader yields only those);
    ``state.step`` and ``state.nonfinite_streak`` advance. Returns the epoch means of the logged
    scalars and the last LR. Raises ``Interrupted`` when ``loop.watcher`` says so after an
    optimizer step, so the caller can checkpoint mid-epoch."""
    model, s, device = loop.model, loop.settings, loop.rt.device
    optimizer, scaler = state.optimizer, state.scaler
    model.train()
    accum = s.accumulate_grad_batches
    params = [p for g in optimizer.param_groups for p in g["params"]]
    # running statistics that a skipped (non-finite) step must not change
    norm_buffers = [b for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                    and m.track_running_stats for b in m.buffers(recurse=False)]
    saved_norms: list = []
    meter = _Meter()
    window_finite = True
    lr = optimizer.param_groups[0]["lr"]
    t_last, samples_since = time.perf_counter(), 0
    optimizer.zero_grad(set_to_none=True)

    batches = _progress(loader, total - start_batch, f"epoch {epoch}", s.progress_bar and loop.rt.is_main)
    for i, batch in enumerate(batches, start=start_batch):
        if i >= total:
            break
        first_micro, last_micro = i % accum == 0, (i + 1) % accum == 0 or i + 1 == total
        if first_micro:
            lr = lr_at(epoch + i / total, lr=s.lr, min_lr=s.min_lr, warmup_epochs=s.warmup_epochs,
                       epochs=s.schedule_epochs)
            set_lr(optimizer, lr)
            saved_norms = [b.detach().clone() for b in norm_buffers]
        batch = apply_transforms(to_device(batch, device), loop.transforms, generator)
        n = batch_size(batch)
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        counter = flop_counter(quiet=True) if loop.count_flops else contextlib.nullcontext()
        with sync, counter:
            with loop.rt.precision.autocast():
                outputs = model(batch, generator=generator)
            loss = outputs["loss"]
            scaler.scale(loss.float() / accum).backward()
        if loop.count_flops:  # once per run: what MFU is measured against
            loop.count_flops, loop.flops_per_sample = False, counter.get_total_flops() / max(n, 1)
        finite = torch.isfinite(loss.detach())
        window_finite = finite if first_micro else window_finite & finite
        scalars = _scalars(outputs)
        meter.update(scalars, n, keep=window_finite)
        samples_since += n
        if not last_micro:
            continue

        # one optimizer step for the accumulation window
        if not _all_finite(window_finite, device):
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # the skipped step leaves no trace, normalisation statistics included
                for buffer, saved in zip(norm_buffers, saved_norms):
                    buffer.copy_(saved)
            state.nonfinite_streak += 1
            log.warning("non-finite loss at epoch %d step %d: skipped the optimizer step (%d in a row)",
                        epoch, state.step, state.nonfinite_streak)
            if state.nonfinite_streak >= s.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"the loss was NaN/inf for {state.nonfinite_streak} optimizer steps in a row (epoch {epoch}, "
                    f"step {state.step}). Lower the learning rate (model.optim.blr), enable gradient "
                    "clipping (trainer.gradient_clip_val=1.0) or use trainer.precision=32.")
            continue
        state.nonfinite_streak = 0
        scaler.unscale_(optimizer)
        clip = s.gradient_clip_val
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1

        if loop.run_logger is not None and loop.rt.is_main and state.step % s.log_every_n_steps == 0:
            now = time.perf_counter()
            step_logs = {f"train/{k}": v for k, v in scalars.items()}
            if s.lr_logging == "step":
                step_logs["train/lr"] = lr
            step_logs.update({"train/grad_norm": grad_norm,
                              "train/samples_per_s": samples_since * loop.rt.world_size / max(now - t_last, 1e-9)})
            loop.run_logger.log(step_logs, state.step, epoch=epoch)
            t_last, samples_since = now, 0
        if loop.watcher is not None and i + 1 < total and loop.watcher.requested():
            raise Interrupted(i + 1)

    means = meter.means(device)
    means["lr"] = lr
    means["samples"] = meter.total
    return means


@dataclass
class Evaluation:
    """One evaluation pass: the metrics (scalar means merged with the objective's
    ``evaluation_metrics``), the gathered per-sample outputs in dataset order, the first batch."""
    metrics: dict
    gathered: dict
    first_batch: Optional[dict]


def _gather(pieces: dict[str, list], device: torch.device) -> dict[str, np.ndarray]:
    """Concatenate per-sample outputs, gather them from every rank, put them in dataset order by
    ``index`` and drop the repeats a ``DistributedSampler`` pads with: exactly one single-process pass."""
    local = {k: torch.cat(v) if v else torch.zeros(0) for k, v in pieces.items()}
    shards = distributed.all_gather_object(local)
    merged = {k: torch.cat([shard[k] for shard in shards]) for k in local}
    index = merged.pop("index").numpy()
    order = np.argsort(index, kind="stable")
    first = np.ones(len(order), dtype=bool)
    first[1:] = index[order][1:] != index[order][:-1]
    keep = order[first]
    return {"index": index[keep], **{k: v.numpy()[keep] for k, v in merged.items()}}


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, rt: Runtime, *, limit_batches: Any = None,
             generator: Optional[torch.Generator] = None, progress_bar: bool = False,
             desc: str = "validate") -> Evaluation:
    """One pass over ``loader`` in eval mode (all ranks: every rank gets the same result).

    0-dim outputs are averaged per sample; ``per_sample`` outputs are gathered over the whole split
    and passed to the objective's ``evaluation_metrics``, whose values take precedence. ``samples``
    counts the distinct samples evaluated."""
    objective = unwrap(model)
    model.eval()
    total = num_batches(loader, limit_batches)
    meter = _Meter()
    pieces: dict[str, list] = {"index": []}
    first = None
    for i, batch in enumerate(_progress(loader, total, desc, progress_bar and rt.is_main)):
        if i >= total:
            break
        batch = to_device(batch, rt.device)
        first = batch if first is None else first
        with rt.precision.autocast():
            outputs = model(batch, generator=generator)
        meter.update(_scalars(outputs), batch_size(batch))
        pieces["index"].append(batch["index"].cpu())
        for name, value in (outputs.get("per_sample") or {}).items():
            value = value.detach()
            pieces.setdefault(name, []).append((value.float() if value.is_floating_point() else value).cpu())
    metrics = meter.means(rt.device)
    gathered = _gather(pieces, rt.device)
    log.debug("%s: %d of %d batches, %d distinct samples", desc, min(total, len(loader)), len(loader),
              len(gathered["index"]))
    if len(gathered) > 1:
        metrics.update(objective.evaluation_metrics(gathered))
    metrics["samples"] = len(gathered["index"])
    return Evaluation(metrics, gathered, first)


class _Representations(torch.nn.Module):
    """An objective seen through its ``embed`` hook: per-sample representations and labels."""

    def __init__(self, objective: torch.nn.Module) -> None:
        super().__init__()
        self.objective = objective

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        return {"per_sample": {**self.objective.embed(batch), "label": batch["label"]}}

    def evaluation_metrics(self, gathered: dict) -> dict:
        return {}


def embed(objective: torch.nn.Module, loader: Iterable, rt: Runtime, *, progress_bar: bool = False,
          desc: str = "embed") -> dict[str, np.ndarray]:
    """``objective.embed`` of every sample of ``loader`` in eval mode, gathered from every rank in
    dataset order (as ``evaluate``): ``{index, label, <name>: (N, D)}``, identical on every rank."""
    return evaluate(_Representations(unwrap(objective)), loader, rt, progress_bar=progress_bar, desc=desc).gathered


# ----------------------------------------------------------------------------------------
# The epochs
# ----------------------------------------------------------------------------------------

@dataclass
class FitResult:
    history: dict                 # the latest value of every epoch metric, and "epoch"
    best_checkpoint: Optional[str]
    best_epoch: Optional[int]
    pretrained: Optional[str]     # the file objective.load_pretrained() initialised from (None: scratch)
    settings: LoopSettings
    state: TrainState
    # what the pretrained encoder's training records share with the test split (datasets.check_overlap;
    # None: not checked): {"records": n, "patients": n (None: unknown)}
    pretraining_overlap: Optional[dict] = None


def callbacks(cfg: Config) -> tuple[CheckpointManager, Optional[EarlyStopping]]:
    """Best-k checkpoints and early stopping from ``callbacks.model_checkpoint`` / ``early_stopping``.
    Without ``model_checkpoint`` (``callbacks: null``, ``callbacks=none``) no checkpoint is kept, but a
    preempted run still writes ``<output_dir>/checkpoints/last.pt`` so it can resume."""
    node = cfg.callbacks or {}
    ckpt_cfg = node.get("model_checkpoint")
    if ckpt_cfg is None:
        manager = CheckpointManager(os.path.join(cfg.paths.output_dir, "checkpoints"), save_top_k=0, save_last=False)
    else:
        manager = CheckpointManager(ckpt_cfg.dirpath, monitor=ckpt_cfg.monitor, mode=ckpt_cfg.mode,
                                    save_top_k=int(ckpt_cfg.save_top_k), save_last=bool(ckpt_cfg.save_last),
                                    filename=ckpt_cfg.filename, every_n_epochs=ckpt_cfg.every_n_epochs,
                                    verbose=bool(ckpt_cfg.verbose))
    es = node.get("early_stopping")
    if es is None:
        return manager, None
    return manager, EarlyStopping(es.monitor, mode=es.mode, patience=es.patience, min_delta=es.min_delta,
                                  check_finite=es.check_finite, strict=es.strict, verbose=bool(es.verbose),
                                  stopping_threshold=es.stopping_threshold,
                                  divergence_threshold=es.divergence_threshold)


def _resume_checkpoint(cfg: Config, folder: str) -> tuple[Optional[str], Optional[dict]]:
    """``(path, checkpoint)`` to continue from: ``ckpt_path``, or with ``resume=auto`` the run's
    ``last.pt``; when that is missing or unreadable, the newest intact checkpoint beside it (with a
    warning that names it). ``(None, None)``: start afresh."""
    if cfg.ckpt_path is not None:
        return cfg.ckpt_path, load_checkpoint(cfg.ckpt_path)
    if cfg.resume != "auto":
        return None, None
    last = os.path.join(folder, LAST)
    others = sorted((os.path.join(folder, f) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                     if f.endswith(".pt") and f != LAST and not f.startswith(".")),
                    key=os.path.getmtime, reverse=True)
    for path in ([last] if os.path.isfile(last) else []) + others:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as e:
            log.warning("resume=auto: %s; trying the next newest checkpoint", e)
            continue
        if path != last:
            log.warning("resume=auto: %s is %s; continuing from %s (epoch %d) instead",
                        last, "unreadable" if os.path.isfile(last) else "missing", path, int(ckpt["epoch"]))
        return path, ckpt
    log.info("resume=auto: no checkpoint in %s yet; starting from scratch", folder)
    return None, None


def _set_found_batch_size(cfg: Config, objective: torch.nn.Module, data: Any, rt: Runtime,
                          resume_ckpt: Optional[dict]) -> None:
    """``trainer.find_batch_size``: rebuild ``data``'s loaders with the largest batch that fits, and
    record it as ``cfg.data.batch_size`` (checkpoints keep it). A resumed run takes its checkpoint's
    batch size instead: a mid-epoch resume skips the records of the batches done, and the LR follows
    the effective batch."""
    found = None
    if resume_ckpt is not None:
        found = (yaml.safe_load(resume_ckpt.get("config") or "") or {}).get("data", {}).get("batch_size")
        if isinstance(found, int):
            log.info("find_batch_size: data.batch_size=%d from the checkpoint resumed (no new search)", found)
    if not isinstance(found, int):
        found = find_batch_size(objective, data.loaders["train"], rt, data.device_transforms,
                                start=int(cfg.data.batch_size))
    data.set_batch_size(found)
    cfg.data.batch_size = found


def _utilisation(loop: Loop, samples: float, seconds: float, peak_gflops: float) -> dict:
    """The epoch's achieved model TFLOP/s (data loading included: the end-to-end rate) and MFU
    against the measured matmul peak of all ranks."""
    if loop.flops_per_sample is None or seconds <= 0:
        return {}
    achieved = loop.flops_per_sample * samples / seconds / 1e9  # GFLOP/s
    return {"train/samples_per_s_epoch": samples / seconds, "train/tflops": achieved / 1e3,
            "train/mfu": achieved / peak_gflops if peak_gflops > 0 else float("nan")}


def _train_epoch(loop: Loop, state: TrainState, loader: Any, *, epoch: int, data_epoch: int, seed: int,
                 config_yaml: str) -> dict:
    """``train_one_epoch`` with the epoch's seeds (a pure function of seed, epoch and rank), resuming
    mid-epoch; when preempted every rank's streams are gathered, rank 0 writes ``last.pt`` and
    ``Preempted`` is raised."""
    rt = loop.rt
    start = state.batch_in_epoch if epoch == state.epochs_done else 0
    if not start:  # a mid-epoch resume continues the RNG restored from the checkpoint
        torch.manual_seed(derive_seed(seed, epoch, rt.rank))
    generator = torch.Generator(device=rt.device).manual_seed(derive_seed(seed, data_epoch, rt.rank, 1))
    sampler = getattr(loader, "epoch_sampler", None)
    if sampler is not None:
        sampler.set_epoch(data_epoch)  # full length first: the epoch's batch count drives the LR schedule
    total = num_batches(loader, loop.settings.limit_train_batches)
    if sampler is not None and start:
        sampler.set_epoch(data_epoch, skip=start * int(loader.batch_size))
    if start and state.generator_state is not None:
        generator.set_state(state.generator_state)
    log.debug("epoch %d: training batches %d..%d of %d (data epoch %d)", epoch, start, total - 1, len(loader),
              data_epoch)
    try:
        return train_one_epoch(loop, state, loader, epoch=epoch, total=total, start_batch=start, generator=generator)
    except Interrupted as stop:
        state.batch_in_epoch = stop.batch
        generators = distributed.all_gather_object(generator.get_state().cpu())
        rngs = distributed.all_gather_object(rng_state())
        if rt.is_main:
            state.checkpoints.save_last_file(state.state_dict(config=config_yaml, rng_per_rank=rngs,
                                                              generators=generators))
        distributed.barrier()
        raise Preempted(f"stopped in epoch {epoch} after batch {stop.batch}: wrote "
                        f"{os.path.join(state.checkpoints.dirpath, LAST)}; rerun in the same run directory "
                        "with resume=auto to continue", exit_code=loop.watcher.exit_code) from None


def _refuse_nonfinite_validation(metrics: dict, raw: dict, epoch: int, checkpoints: CheckpointManager) -> None:
    """A NaN / inf validation loss or monitored metric ends the run with a clear error (not a quiet
    early stop that looks like success)."""
    watched = ["val/loss"] + [m for m in (checkpoints.monitor,) if m and m.startswith("val/")]
    bad = [k for k in dict.fromkeys(watched) if k in metrics and not is_finite_number(metrics[k])]
    if not bad:
        return
    kept = f"; the last checkpoint with finite metrics is {checkpoints.best_path}" if checkpoints.best_path else ""
    key = bad[0]
    reason = (raw.get("undefined") or {}).get(key.split("/", 1)[1]) if isinstance(raw.get("undefined"), dict) else None
    if reason:
        raise NonFiniteLossError(f"{key} is {metrics[key]} after epoch {epoch}: {reason}. Monitor another metric "
                                 f"(callbacks.model_checkpoint.monitor, callbacks.early_stopping.monitor){kept}")
    raise NonFiniteLossError(f"{key} is {metrics[key]} after epoch {epoch}: the model's outputs are not finite "
                             "(training diverged). Lower the learning rate (model.optim.blr), clip gradients "
                             f"(trainer.gradient_clip_val=1.0) or train in fp32 (trainer.precision=32){kept}")


def _log_figures(run_logger: RunLogger, figures: dict, step: int, epoch: int, output_dir: str) -> None:
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        run_logger.log_figure(f"val/{name}", fig, step,
                              png_path=os.path.join(output_dir, "figures", f"{name}_epoch{epoch:03d}.png"))
        plt.close(fig)


def fit(cfg: Config, rt: Runtime, objective: torch.nn.Module, data: Any) -> FitResult:
    """Train ``objective`` on ``data.loaders["train"]``, validating on ``data.loaders["val"]`` (see the
    module docstring). Returns the history, the selected checkpoint (the same on every rank) and the
    state."""
    if not getattr(objective, "trainable", True):
        raise ConfigError(f"{type(objective).__name__} is not a training objective (it embeds records for "
                          "main_artifacts.py); choose a model that trains, e.g. model=mae or model=ecg_classifier")
    s = LoopSettings.from_config(cfg.trainer)
    optim, output_dir = objective.optim, cfg.paths.output_dir
    checkpoints, early_stopping = callbacks(cfg)
    resume_path, resume_ckpt = _resume_checkpoint(cfg, checkpoints.dirpath)
    if s.find_batch_size:
        _set_found_batch_size(cfg, objective, data, rt, resume_ckpt)
    train_loader = data.loaders["train"]
    check_batch_norm_batches(objective, train_loader)
    effective_batch = int(train_loader.batch_size) * s.accumulate_grad_batches * rt.world_size
    optimizer, lr = build_optimizer(objective, effective_batch, rt.device)
    s.lr, s.min_lr, s.warmup_epochs = lr, float(optim["min_lr"]), float(optim["warmup_epochs"])
    s.schedule_epochs = float(optim["epochs"] or s.max_epochs)
    lr_monitor = (cfg.callbacks or {}).get("lr_monitor")
    s.lr_logging = lr_monitor.logging_interval if lr_monitor is not None else None
    log.info("effective batch %d (batch %d x accumulate %d x world %d), lr %.3g (blr %s / divisor %s)",
             effective_batch, train_loader.batch_size, s.accumulate_grad_batches, rt.world_size, lr, optim["blr"],
             optim["lr_batch_divisor"])
    identity = run_identity(objective, data.info)
    state = TrainState(objective, optimizer, make_scaler(rt.precision), checkpoints=checkpoints,
                       early_stopping=early_stopping, extra=objective.stateful(), identity=identity)
    pretrained = objective.load_pretrained()  # a resumed run overwrites these with its checkpoint
    overlap = None
    if pretrained and rt.is_main:
        found = warn_pretraining_overlap(getattr(objective, "pretrained_metadata", {}).get("training_data"),
                                         data.info.splits, pretrained)
        if found is not None:
            overlap = {"records": len(found.records), "patients": len(found.patients) if found.patients_known
                       else None}
    model = wrap_ddp(objective, rt)
    if s.compile:  # the checkpoints keep the plain objective's keys: only the forward is compiled
        model = torch.compile(model, mode=s.compile_mode)
        log.info("torch.compile (mode %s): the first steps compile", s.compile_mode)
    if resume_path:
        check_checkpoint_kind(resume_ckpt, identity, resume_path, use="resume",
                              contract_policy=data.info.contract_policy)
        state.load_state_dict(resume_ckpt, rank=rt.rank, world_size=rt.world_size, source=resume_path)
        log.info("resumed from %s at epoch %d%s (step %d)", resume_path, state.epochs_done,
                 f", batch {state.batch_in_epoch}" if state.batch_in_epoch else "", state.step)
    config_yaml = to_yaml({k: v for k, v in cfg.items() if k != "hydra"})
    run_logger = RunLogger(cfg.logger, output_dir, enabled=rt.is_main,
                           run_config={k: v for k, v in cfg.items() if k != "hydra"})
    watcher = PreemptionWatcher(rt.device)
    profiler = Profiler(s.profiler, output_dir, rt.device, enabled=rt.is_main)
    loop = Loop(model, s, rt, data.device_transforms, run_logger, watcher, count_flops=True)
    peak = matmul_peak_gflops(rt.device, rt.precision.dtype) * rt.world_size  # GFLOP/s of every rank together
    val_loader = train_loader if s.overfit_batches else data.loaders.get("val")
    val_seed = derive_seed(cfg.seed, VAL_SEED_OFFSET)
    headline = getattr(objective, "headline_metrics", None)
    state_start_epoch = state.epochs_done
    try:
        for epoch in range(state.epochs_done, s.max_epochs):
            started = time.perf_counter()
            with profiler.phase("train", epoch):
                train_stats = _train_epoch(loop, state, train_loader, epoch=epoch,
                                           data_epoch=0 if s.overfit_batches else epoch, seed=cfg.seed,
                                           config_yaml=config_yaml)
            metrics = {f"train/{k}": v for k, v in train_stats.items()}
            metrics.update(_utilisation(loop, train_stats["samples"], time.perf_counter() - started, peak))
            if epoch == state_start_epoch and loop.flops_per_sample is not None:
                log.info("model FLOPs %.3g GFLOP per sample (forward + loss + backward); MFU is against the "
                         "measured matmul peak %.4g TFLOP/s (%s, %s%s)", loop.flops_per_sample / 1e9, peak / 1e3,
                         rt.device, rt.precision.name, f", x {rt.world_size} ranks" if rt.world_size > 1 else "")
            if val_loader is not None and ((epoch + 1) % s.check_val_every_n_epoch == 0 or epoch + 1 == s.max_epochs):
                if getattr(val_loader, "epoch_sampler", None) is not None:
                    val_loader.epoch_sampler.set_epoch(0)
                with profiler.phase("validate", epoch):  # the same masks / views every validation
                    val = evaluate(model, val_loader, rt, limit_batches=s.limit_val_batches, progress_bar=s.progress_bar,
                                   generator=torch.Generator(device=rt.device).manual_seed(val_seed))
                metrics.update({f"val/{k}": v for k, v in val.metrics.items() if _is_number(v)})
                _refuse_nonfinite_validation(metrics, val.metrics, epoch, checkpoints)
                if rt.is_main and val.first_batch is not None:
                    figures = objective.validation_figures(val.first_batch,
                                                           torch.Generator(device=rt.device).manual_seed(val_seed))
                    _log_figures(run_logger, figures, state.step, epoch, output_dir)
            if rt.is_main:
                run_logger.log({k: v for k, v in metrics.items() if k != "train/lr" or s.lr_logging == "epoch"},
                               state.step, epoch=epoch)
                shown = [k for k in metrics if headline is None or k.split("/", 1)[-1] in headline or k == "train/mfu"]
                log.info("epoch %d: %s", epoch, "  ".join(f"{k} {metrics[k]:.4g}" for k in shown))
            state.history = {**state.history, **metrics, "epoch": epoch}
            state.epochs_done, state.batch_in_epoch = epoch + 1, 0
            stop = False
            if early_stopping is not None and any(k.startswith("val/") for k in metrics) and epoch + 1 >= s.min_epochs:
                stop = early_stopping.step(metrics)
            if rt.is_main and not s.fast_dev_run:
                checkpoints.save(state.state_dict(config=config_yaml), epoch, metrics)
            distributed.barrier()
            if any(k.startswith("val/") for k in metrics):
                sweeps.after_validation(epoch, metrics)  # a search's pruner may stop the trial here
            if stop:
                log.info("early stopping after epoch %d: %s", epoch, early_stopping.reason)
                break
    except BaseException:
        for loader in data.loaders.values():  # stop the workers now, before the exit joins them
            shutdown_workers(loader)
        raise
    finally:
        run_logger.close()
        watcher.close()
    profiler.report()
    # rank 0 alone writes checkpoints and knows the selected one: every rank must use that file
    best = distributed.broadcast_object(checkpoints.best_path if not s.fast_dev_run else None)
    best_epoch = distributed.broadcast_object(next((b["epoch"] for b in checkpoints.best if b["path"] == best), None))
    return FitResult(state.history, best, best_epoch, pretrained, s, state, overlap)
