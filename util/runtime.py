"""What every training entry point sets up the same way: device and precision, checkpointing and
early stopping from the callbacks configs, resume, loop settings, checkpoint contents, profiling."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import engine
from util import distributed
from util.checkpoint import LAST, CheckpointError, CheckpointManager, EarlyStopping, load_checkpoint
from util.seeding import derive_seed, rng_state, set_rng_state
from util.config import Config, ConfigError, to_yaml

log = logging.getLogger(__name__)


seed_for = derive_seed


@dataclass
class Runtime:
    device: torch.device
    precision: engine.Precision
    world_size: int
    rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(cfg: Config, script: str) -> Runtime:
    """Join torch.distributed when launched by torchrun, pick device and precision, apply the
    ``deterministic`` / ``detect_anomaly`` trainer switches."""
    trainer = cfg.trainer
    world_size, rank = distributed.world_size(), distributed.rank()
    distributed.init_distributed()
    device = engine.resolve_device(trainer.accelerator, distributed.local_rank())
    if int(trainer.get("devices") or 1) * int(trainer.get("num_nodes") or 1) > world_size:
        log.warning("trainer.devices=%s x num_nodes=%s but this run has %d process(es): the world size comes "
                    "from the launcher, e.g. torchrun --nproc_per_node=%s %s ...", trainer.get("devices"),
                    trainer.get("num_nodes"), world_size, trainer.get("devices"), script)
    precision = engine.resolve_precision(trainer.precision, device)
    if trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(bool(trainer.get("detect_anomaly")))
    return Runtime(device, precision, world_size, rank)


def ecg_data(cfg: Config, rt: Runtime, splits: tuple) -> tuple:
    """Loaders of ``splits`` for ``cfg.data`` (building the demo store first when the modality asks for
    it) and the batched on-device augmentation, or None when augmentations run in the workers."""
    from datasets.augment import build_ecg_transforms
    from datasets.demo import ensure_demo
    from datasets.ecg import build_ecg_loaders

    data_cfg = dict(cfg.data)
    if cfg.modality.get("build_demo"):
        ensure_demo(data_cfg["data_root"])
    cpu_transform, batch_transform = build_ecg_transforms(data_cfg)
    loaders = build_ecg_loaders(data_cfg, splits=splits, seed=cfg.seed, train_transform=cpu_transform,
                                world_size=rt.world_size, rank=rt.rank)
    return loaders, batch_transform


def wrap_ddp(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    if rt.world_size <= 1:
        return model
    kwargs = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def checkpointing(cfg: Config) -> tuple[CheckpointManager, Optional[EarlyStopping], str]:
    """Best-k checkpoints and early stopping from ``callbacks.model_checkpoint`` / ``early_stopping``."""
    callbacks = cfg.get("callbacks") or {}
    ckpt_cfg = callbacks.get("model_checkpoint") or {}
    ckpt_dir = ckpt_cfg.get("dirpath") or os.path.join(cfg.paths.output_dir, "checkpoints")
    manager = CheckpointManager(ckpt_dir, monitor=ckpt_cfg.get("monitor"), mode=ckpt_cfg.get("mode", "min"),
                                save_top_k=int(ckpt_cfg.get("save_top_k", 1)),
                                save_last=ckpt_cfg.get("save_last", True), filename=ckpt_cfg.get("filename"),
                                every_n_epochs=ckpt_cfg.get("every_n_epochs", 1))
    es_cfg = callbacks.get("early_stopping")
    return manager, (EarlyStopping(**es_cfg) if es_cfg else None), ckpt_dir


def loop_settings(cfg: Config, lr: float) -> engine.LoopSettings:
    trainer, optim = cfg.trainer, cfg.model.optim
    fast = bool(trainer.get("fast_dev_run"))
    return engine.LoopSettings(
        lr=lr, min_lr=float(optim.get("min_lr", 0.0)), warmup_epochs=float(optim.get("warmup_epochs", 0)),
        schedule_epochs=float(optim.get("epochs") or trainer.max_epochs),
        accumulate_grad_batches=max(int(trainer.accumulate_grad_batches or 1), 1),
        gradient_clip_val=trainer.get("gradient_clip_val"),
        log_every_n_steps=int(trainer.get("log_every_n_steps") or 50),
        limit_train_batches=1 if fast else trainer.get("limit_train_batches"),
        limit_val_batches=1 if fast else trainer.get("limit_val_batches"),
        max_nonfinite_steps=int(trainer.get("max_nonfinite_steps") or 5),
        progress_bar=bool(trainer.get("enable_progress_bar", True)))


@dataclass
class ResumePoint:
    """Where training continues: ``epoch`` from batch ``batch`` (> 0 after a mid-epoch preemption),
    with the epoch's masking ``generator_state`` at that batch."""
    epoch: int = 0
    step: int = 0
    history: dict = None
    batch: int = 0
    generator_state: Optional[torch.Tensor] = None


def resume(cfg: Config, ckpt_dir: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           scaler: torch.amp.GradScaler, manager: CheckpointManager,
           early_stopping: Optional[EarlyStopping]) -> ResumePoint:
    """Continue from ``ckpt_path`` or, with ``resume=auto``, from ``<ckpt_dir>/last.pt`` when it exists."""
    path = cfg.get("ckpt_path")
    mode = cfg.get("resume")
    if mode not in (None, "auto"):
        raise ConfigError(f"resume must be null or 'auto', got '{mode}'")
    if path is None and mode == "auto":
        candidate = os.path.join(ckpt_dir, LAST)
        path = candidate if os.path.isfile(candidate) else None
        if path is None:
            log.info("resume=auto: no checkpoint in %s yet; starting from scratch", ckpt_dir)
    if path is None:
        return ResumePoint(history={})
    ckpt = load_checkpoint(path)
    try:
        engine.unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit this model/optimizer: {e}") from None
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    manager.load_state_dict(ckpt.get("best") or {})
    if early_stopping is not None and ckpt.get("early_stop"):
        early_stopping.load_state_dict(ckpt["early_stop"])
    per_rank = ckpt.get("rng_per_rank")
    if per_rank and len(per_rank) != distributed.world_size():
        raise CheckpointError(f"checkpoint '{path}' was preempted mid-epoch with {len(per_rank)} processes; resume it "
                              f"with the same number of processes (this run has {distributed.world_size()})")
    if per_rank:
        set_rng_state(per_rank[distributed.rank()])
    elif ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    generators = ckpt.get("generator")
    point = ResumePoint(epoch=int(ckpt["epoch"]) + 1, step=int(ckpt["step"]), history=dict(ckpt.get("metrics") or {}),
                        batch=int(ckpt.get("batch_in_epoch") or 0),
                        generator_state=generators[distributed.rank()] if generators else None)
    log.info("resumed from %s at epoch %d%s (step %d)", path, point.epoch,
             f", batch {point.batch}" if point.batch else "", point.step)
    return point


def checkpoint_state(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, epoch: int, step: int,
                     early_stopping: Optional[EarlyStopping], history: dict, batch_in_epoch: int = 0) -> dict:
    """The resume state after ``epoch`` (see util/checkpoint.py for the format). A preemption
    checkpoint has ``epoch`` = the last finished epoch and ``batch_in_epoch`` batches of the next
    one done; ``train_epoch`` adds every rank's generator and RNG state."""
    state = {"model": engine.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "rng": rng_state(),
             "early_stop": early_stopping.state_dict() if early_stopping else None,
             "metrics": {k: v for k, v in history.items() if engine.is_finite_number(v)},
             "config": to_yaml({k: v for k, v in cfg.items() if k != "hydra"}), "format_version": 1}
    if batch_in_epoch:
        state["batch_in_epoch"] = batch_in_epoch
    return state


def train_epoch(cfg: Config, rt: Runtime, model, loader, optimizer, scaler, manager: CheckpointManager,
                early_stopping, history: dict, *, epoch: int, global_step: int, resume_point: ResumePoint,
                watcher, **engine_kwargs) -> tuple:
    """``engine.train_one_epoch`` with the epoch's seeds (a pure function of seed, epoch and rank),
    resuming mid-epoch; when preempted it writes ``last.pt`` (rank 0) and raises ``Preempted``."""
    from util.errors import Preempted

    settings = engine_kwargs["settings"]
    start = resume_point.batch if epoch == resume_point.epoch else 0
    data_epoch = engine_kwargs.pop("data_epoch", epoch)
    if not start:  # a mid-epoch resume continues the RNG restored from the checkpoint
        torch.manual_seed(seed_for(cfg.seed, epoch, rt.rank))
    generator = torch.Generator(device=rt.device).manual_seed(seed_for(cfg.seed, data_epoch, rt.rank, 1))
    loader.epoch_sampler.set_epoch(data_epoch)  # full length first: the epoch's batch count drives the LR schedule
    epoch_batches = engine.num_batches(loader, settings.limit_train_batches)
    loader.epoch_sampler.set_epoch(data_epoch, skip=start * int(loader.batch_size))
    if start and resume_point.generator_state is not None:
        generator.set_state(resume_point.generator_state)
    try:
        return engine.train_one_epoch(model, loader, optimizer, scaler, epoch=epoch, global_step=global_step,
                                      device=rt.device, precision=rt.precision, generator=generator,
                                      is_main=rt.is_main, start_batch=start, epoch_batches=epoch_batches,
                                      should_stop=watcher.requested if watcher is not None else None,
                                      **engine_kwargs)
    except engine.Interrupted as stop:
        # every rank's masking generator and RNG state, so each rank continues its own streams
        generators = distributed.all_gather_object(generator.get_state().cpu())
        rngs = distributed.all_gather_object(rng_state())
        if rt.is_main:
            state = checkpoint_state(cfg, model, optimizer, scaler, epoch - 1, stop.global_step, early_stopping,
                                     history, batch_in_epoch=stop.batch)
            state.update(generator=generators, rng=rngs[0], rng_per_rank=rngs)
            manager.save_last_file(state)
        distributed.barrier()
        raise Preempted(f"preempted in epoch {epoch} after batch {stop.batch}: wrote "
                        f"{os.path.join(manager.dirpath, LAST)}; rerun with resume=auto to continue") from None


class Profiler:
    """``trainer.profiler``: null, ``simple`` (wall time per phase, summarised at the end) or
    ``pytorch`` (torch.profiler over the first training epoch: a Chrome trace and a table)."""

    def __init__(self, kind: Optional[str], output_dir: str, device: torch.device) -> None:
        if kind not in (None, "simple", "pytorch"):
            raise ConfigError(f"trainer.profiler must be null, simple or pytorch, got '{kind}'")
        self.kind, self.output_dir, self.device = kind, output_dir, device
        self.times: dict[str, list[float]] = {}
        self.table = None

    @contextlib.contextmanager
    def phase(self, name: str, epoch: int):
        if self.kind == "pytorch" and name == "train" and self.table is None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                yield
            os.makedirs(os.path.join(self.output_dir, "profiler"), exist_ok=True)
            prof.export_chrome_trace(os.path.join(self.output_dir, "profiler", f"trace_epoch{epoch:03d}.json"))
            self.table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
            return
        start = time.perf_counter()
        yield
        self.times.setdefault(name, []).append(time.perf_counter() - start)

    def report(self) -> None:
        if self.kind == "simple" and self.times:
            rows = [f"{name:<10} {len(t):>6} {sum(t):>10.2f} {sum(t) / len(t):>10.3f}" for name, t in self.times.items()]
            log.info("profiler (simple):\n%-10s %6s %10s %10s\n%s", "phase", "calls", "total s", "mean s",
                     "\n".join(rows))
        if self.table is not None:
            log.info("profiler (pytorch, first training epoch):\n%s", self.table)
