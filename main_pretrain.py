"""Self-supervised pretraining: the signal masked autoencoder on 12-lead ECG.

    python main_pretrain.py                                   # the demo: a small MAE on synthetic ECGs
    python main_pretrain.py experiment=pre_training/ecg_arrhythmia trainer.max_epochs=50
    torchrun --nproc_per_node=4 main_pretrain.py experiment=...

See `python main_pretrain.py --help` and the README for the command line and outputs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Optional

import numpy as np
import torch

import engine
from util import distributed
from util.checkpoint import (LAST, CheckpointError, CheckpointManager, EarlyStopping, load_checkpoint,
                             rng_state, set_rng_state)
from util.cli import run_cli
from util.config import Config, ConfigError, instantiate, to_yaml
from util.lr_decay import param_groups_weight_decay
from util.lr_sched import absolute_lr
from util.run_logger import RunLogger

log = logging.getLogger("main_pretrain")


def _seed_for(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (seed, epoch, rank, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def build_data(cfg: Config, world_size: int, rank: int):
    from datasets.augment import build_ecg_transforms
    from datasets.demo import ensure_demo
    from datasets.ecg import build_ecg_loaders

    data_cfg = dict(cfg.data)
    if cfg.modality.get("build_demo"):
        ensure_demo(data_cfg["data_root"])
    cpu_transform, batch_transform = build_ecg_transforms(data_cfg)
    loaders = build_ecg_loaders(data_cfg, splits=("train", "val"), seed=cfg.seed,
                                train_transform=cpu_transform, world_size=world_size, rank=rank)
    return loaders, batch_transform


def build_optimizer(model: torch.nn.Module, optim_cfg: dict, effective_batch: int) -> tuple:
    lr = optim_cfg.get("lr")
    if lr is None:
        lr = absolute_lr(float(optim_cfg["blr"]), effective_batch, float(optim_cfg.get("lr_batch_divisor", 256)))
    groups = param_groups_weight_decay(model, float(optim_cfg.get("weight_decay", 0.0)))
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.get("betas", (0.9, 0.95))))
    return optimizer, float(lr)


def reconstruction_figure(model: torch.nn.Module, x: torch.Tensor, lead_names: list, generator):
    """Input vs reconstruction of a few leads of one validation ECG, masked patches shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with torch.no_grad():
        recon, mask = engine.unwrap(model).reconstruct(x[:1], generator=generator)
    x, recon, mask = (t[0, 0].float().cpu().numpy() for t in (x, recon, mask))
    leads = list(range(min(4, x.shape[0])))
    fig, axes = plt.subplots(len(leads), 1, figsize=(10, 1.8 * len(leads)), sharex=True, squeeze=False)
    for ax, lead in zip(axes[:, 0], leads):
        ax.fill_between(np.arange(x.shape[1]), x[lead].min(), x[lead].max(), where=mask[lead] > 0.5,
                        color="0.9", step="mid", label="masked")
        ax.plot(x[lead], color="k", lw=0.8, label="input")
        ax.plot(np.where(mask[lead] > 0.5, recon[lead], np.nan), color="tab:blue", lw=0.8,
                label="reconstruction (masked part)")
        ax.set_ylabel(lead_names[lead] if lead < len(lead_names) else f"lead {lead}")
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("sample")
    fig.tight_layout()
    return fig


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


def main(cfg: Config) -> dict:
    """Pretrain the model described by ``cfg``; returns the final metrics (the sweep objective)."""
    if cfg.get("model") is None or cfg.get("data") is None:
        raise ConfigError("no model/data selected: choose an experiment, e.g. "
                          "experiment=pre_training/ecg_demo (the default)")
    output_dir = cfg.paths.output_dir
    world_size, rank = distributed.world_size(), distributed.rank()
    is_main = rank == 0
    distributed.init_distributed()
    trainer = cfg.trainer
    device = engine.resolve_device(trainer.accelerator, distributed.local_rank())
    if int(trainer.get("devices") or 1) * int(trainer.get("num_nodes") or 1) > world_size:
        log.warning("trainer.devices=%s x num_nodes=%s but this run has %d process(es): the world size "
                    "comes from the launcher, e.g. torchrun --nproc_per_node=%s main_pretrain.py ...",
                    trainer.get("devices"), trainer.get("num_nodes"), world_size, trainer.get("devices"))
    precision = engine.resolve_precision(trainer.precision, device)
    if trainer.get("deterministic"):
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.autograd.set_detect_anomaly(bool(trainer.get("detect_anomaly")))
    fast_dev_run = bool(trainer.get("fast_dev_run"))

    loaders, batch_transform = build_data(cfg, world_size, rank)
    leads = list(cfg.data.get("input_electrodes") or cfg.modality.lead_names)
    input_size = (len(leads), int(cfg.data.time_steps))
    model_cfg = {k: v for k, v in cfg.model.items() if k != "optim"}
    model = instantiate(model_cfg, input_size=input_size).to(device)
    accum = max(int(trainer.accumulate_grad_batches or 1), 1)
    effective_batch = int(cfg.data.batch_size) * accum * world_size
    optimizer, lr = build_optimizer(model, dict(cfg.model.optim), effective_batch)
    scaler = engine.make_scaler(precision)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %.2fM trainable parameters; device %s, precision %s", cfg.model.get("size", ""),
             n_params / 1e6, device, precision.name)
    log.info("effective batch %d (batch %d x accumulate %d x world %d), lr %.3g (blr %s / divisor %s)",
             effective_batch, cfg.data.batch_size, accum, world_size, lr, cfg.model.optim.get("blr"),
             cfg.model.optim.get("lr_batch_divisor"))
    if world_size > 1:
        ddp_kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kw)

    ckpt_cfg = (cfg.get("callbacks") or {}).get("model_checkpoint") or {}
    ckpt_dir = ckpt_cfg.get("dirpath") or os.path.join(output_dir, "checkpoints")
    checkpoints = CheckpointManager(ckpt_dir, monitor=ckpt_cfg.get("monitor"), mode=ckpt_cfg.get("mode", "min"),
                                    save_top_k=int(ckpt_cfg.get("save_top_k", 1)),
                                    save_last=ckpt_cfg.get("save_last", True),
                                    filename=ckpt_cfg.get("filename"),
                                    every_n_epochs=ckpt_cfg.get("every_n_epochs", 1))
    es_cfg = (cfg.get("callbacks") or {}).get("early_stopping")
    early_stopping = EarlyStopping(**es_cfg) if es_cfg else None

    start_epoch, global_step, history = 0, 0, {}
    resume_from = cfg.get("ckpt_path")
    if resume_from is None and cfg.get("resume") == "auto":
        candidate = os.path.join(ckpt_dir, LAST)
        resume_from = candidate if os.path.isfile(candidate) else None
        if resume_from is None:
            log.info("resume=auto: no checkpoint in %s yet; starting from scratch", ckpt_dir)
    elif cfg.get("resume") not in (None, "auto"):
        raise ConfigError(f"resume must be null or 'auto', got '{cfg.get('resume')}'")
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        try:
            engine.unwrap(model).load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"checkpoint '{resume_from}' does not fit this model/optimizer: {e}") from None
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        checkpoints.load_state_dict(ckpt.get("best") or {})
        if early_stopping is not None and ckpt.get("early_stop"):
            early_stopping.load_state_dict(ckpt["early_stop"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"])
        start_epoch, global_step = int(ckpt["epoch"]) + 1, int(ckpt["step"])
        history = dict(ckpt.get("metrics") or {})
        log.info("resumed from %s at epoch %d (step %d)", resume_from, start_epoch, global_step)

    run_logger = RunLogger(cfg.get("logger"), output_dir, enabled=is_main)
    settings = engine.LoopSettings(
        lr=lr, min_lr=float(cfg.model.optim.get("min_lr", 0.0)),
        warmup_epochs=float(cfg.model.optim.get("warmup_epochs", 0)),
        schedule_epochs=float(cfg.model.optim.get("epochs") or trainer.max_epochs),
        accumulate_grad_batches=accum, gradient_clip_val=trainer.get("gradient_clip_val"),
        log_every_n_steps=int(trainer.get("log_every_n_steps") or 50),
        limit_train_batches=1 if fast_dev_run else trainer.get("limit_train_batches"),
        limit_val_batches=1 if fast_dev_run else trainer.get("limit_val_batches"),
        max_nonfinite_steps=int(trainer.get("max_nonfinite_steps") or 5),
        progress_bar=bool(trainer.get("enable_progress_bar", True)))
    max_epochs = 1 if fast_dev_run else int(trainer.max_epochs)
    val_every = max(int(trainer.get("check_val_every_n_epoch") or 1), 1)
    val_loader = loaders["val"]
    overfit = int(trainer.get("overfit_batches") or 0)
    if overfit:  # train and validate on the same first batches, in the same order every epoch
        settings.limit_train_batches = settings.limit_val_batches = overfit
        val_loader = loaders["train"]
    profiler = Profiler(trainer.get("profiler"), output_dir, device)
    nonfinite = 0
    val_gen_seed = _seed_for(cfg.seed, 2**31 - 1)

    for epoch in range(start_epoch, max_epochs):
        data_epoch = 0 if overfit else epoch
        loaders["train"].epoch_sampler.set_epoch(data_epoch)
        torch.manual_seed(_seed_for(cfg.seed, epoch, rank))
        generator = torch.Generator(device=device).manual_seed(_seed_for(cfg.seed, data_epoch, rank, 1))
        with profiler.phase("train", epoch):
            train_stats, global_step, nonfinite = engine.train_one_epoch(
                model, loaders["train"], optimizer, scaler, epoch=epoch, global_step=global_step,
                settings=settings, device=device, precision=precision, batch_transform=batch_transform,
                generator=generator, run_logger=run_logger, is_main=is_main, nonfinite_streak=nonfinite)
        epoch_metrics = {f"train/{k}": v for k, v in train_stats.items()}
        if (epoch + 1) % val_every == 0 or epoch + 1 == max_epochs:
            val_loader.epoch_sampler.set_epoch(0)
            val_gen = torch.Generator(device=device).manual_seed(val_gen_seed)  # same masks every epoch
            with profiler.phase("validate", epoch):
                val_stats = engine.evaluate(model, val_loader, device=device, precision=precision,
                                            generator=val_gen, limit_batches=settings.limit_val_batches,
                                            is_main=is_main, progress_bar=settings.progress_bar)
            epoch_metrics.update({f"val/{k}": v for k, v in val_stats.items()})
            if is_main and hasattr(engine.unwrap(model), "reconstruct"):
                x_val = next(iter(val_loader))[0].to(device)
                fig = reconstruction_figure(model, x_val, leads,
                                            torch.Generator(device=device).manual_seed(val_gen_seed))
                run_logger.log_figure("val/reconstruction", fig, global_step,
                                      png_path=os.path.join(output_dir, "figures", f"recon_epoch{epoch:03d}.png"))
                import matplotlib.pyplot as plt

                plt.close(fig)
        if is_main:
            run_logger.log({k: v for k, v in epoch_metrics.items() if k != "train/lr"}, global_step,
                           epoch=epoch)
            log.info("epoch %d: %s", epoch, "  ".join(f"{k} {v:.4g}" for k, v in epoch_metrics.items()))
        history = {**history, **epoch_metrics, "epoch": epoch}

        stop = False
        if early_stopping is not None and any(k.startswith("val/") for k in epoch_metrics) \
                and epoch + 1 >= int(trainer.get("min_epochs") or 1):
            stop = early_stopping.step(epoch_metrics)
        if is_main and not fast_dev_run:
            state = {"model": engine.unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "epoch": epoch, "step": global_step, "rng": rng_state(),
                     "early_stop": early_stopping.state_dict() if early_stopping else None,
                     "metrics": history, "config": to_yaml({k: v for k, v in cfg.items() if k != "hydra"}),
                     "format_version": 1}
            checkpoints.save(state, epoch, epoch_metrics)
        distributed.barrier()
        if stop:
            log.info("early stopping after epoch %d: %s", epoch, early_stopping.reason)
            break

    run_logger.close()
    profiler.report()
    final = {k: v for k, v in history.items() if engine.is_finite_number(v)}
    if checkpoints.best_path:
        final["best_checkpoint"] = checkpoints.best_path
    if is_main:
        with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(final, f, indent=2)
    return final


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="pretrain"))
