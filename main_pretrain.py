"""Self-supervised pretraining: the signal masked autoencoder on 12-lead ECG.

    python main_pretrain.py                                   # the demo: a small MAE on synthetic ECGs
    python main_pretrain.py experiment=pre_training/ecg_arrhythmia trainer.max_epochs=50
    torchrun --nproc_per_node=4 main_pretrain.py experiment=...

See `python main_pretrain.py --help` and the README for the command line and outputs.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import numpy as np
import torch

import engine
from util import distributed, runtime
from util.checkpoint import atomic_torch_save, load_checkpoint
from util.cli import run_cli
from util.config import Config, ConfigError, instantiate
from util.lr_decay import param_groups_weight_decay
from util.lr_sched import absolute_lr
from util.preemption import PreemptionWatcher
from util.run_logger import RunLogger

log = logging.getLogger("main_pretrain")


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


def export_encoder(model: torch.nn.Module, best_path: Optional[str], output_dir: str,
                   extra_path: Optional[str]) -> str:
    """Write the encoder of the best checkpoint (else the final model) as ``{'model': state_dict}``
    to ``<output_dir>/encoder.pth`` and, when given, to ``extra_path`` (for fine-tuning configs)."""
    if best_path is not None:
        model.load_state_dict(load_checkpoint(best_path)["model"])
    payload = {"model": model.encoder_state_dict(), "source": best_path or "final model"}
    target = os.path.join(output_dir, "encoder.pth")
    atomic_torch_save(payload, target)
    if extra_path:
        atomic_torch_save(payload, extra_path)
        log.info("exported the encoder to %s", extra_path)
    return target


def main(cfg: Config) -> dict:
    """Pretrain the model described by ``cfg``; returns the final metrics (the sweep objective)."""
    if cfg.get("model") is None or cfg.get("data") is None:
        raise ConfigError("no model/data selected: choose an experiment, e.g. "
                          "experiment=pre_training/ecg_demo (the default)")
    output_dir = cfg.paths.output_dir
    trainer = cfg.trainer
    rt = runtime.setup(cfg, "main_pretrain.py")
    device, precision, world_size, is_main = rt.device, rt.precision, rt.world_size, rt.is_main
    fast_dev_run = bool(trainer.get("fast_dev_run"))

    loaders, batch_transform = runtime.ecg_data(cfg, rt, ("train", "val"))
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
    model = runtime.wrap_ddp(model, rt)
    checkpoints, early_stopping, ckpt_dir = runtime.checkpointing(cfg)
    point = runtime.resume(cfg, ckpt_dir, model, optimizer, scaler, checkpoints, early_stopping)
    start_epoch, global_step, history = point.epoch, point.step, point.history
    watcher = PreemptionWatcher(rt.device)

    run_logger = RunLogger(cfg.get("logger"), output_dir, enabled=is_main)
    settings = runtime.loop_settings(cfg, lr)
    max_epochs = 1 if fast_dev_run else int(trainer.max_epochs)
    val_every = max(int(trainer.get("check_val_every_n_epoch") or 1), 1)
    val_loader = loaders["val"]
    overfit = int(trainer.get("overfit_batches") or 0)
    if overfit:  # train and validate on the same first batches, in the same order every epoch
        settings.limit_train_batches = settings.limit_val_batches = overfit
        val_loader = loaders["train"]
    profiler = runtime.Profiler(trainer.get("profiler"), output_dir, device)
    nonfinite = 0
    val_gen_seed = runtime.seed_for(cfg.seed, 2**31 - 1)

    for epoch in range(start_epoch, max_epochs):
        data_epoch = 0 if overfit else epoch
        with profiler.phase("train", epoch):
            train_stats, global_step, nonfinite = runtime.train_epoch(
                cfg, rt, model, loaders["train"], optimizer, scaler, checkpoints, early_stopping, history,
                epoch=epoch, global_step=global_step, resume_point=point, watcher=watcher,
                data_epoch=data_epoch, settings=settings, batch_transform=batch_transform, run_logger=run_logger,
                nonfinite_streak=nonfinite)
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
            state = runtime.checkpoint_state(cfg, model, optimizer, scaler, epoch, global_step, early_stopping,
                                             history)
            checkpoints.save(state, epoch, epoch_metrics)
        distributed.barrier()
        if stop:
            log.info("early stopping after epoch %d: %s", epoch, early_stopping.reason)
            break

    run_logger.close()
    watcher.close()
    profiler.report()
    final = {k: v for k, v in history.items() if engine.is_finite_number(v)}
    if checkpoints.best_path:
        final["best_checkpoint"] = checkpoints.best_path
    if is_main and hasattr(engine.unwrap(model), "encoder_state_dict") and not fast_dev_run:
        final["encoder"] = export_encoder(engine.unwrap(model), checkpoints.best_path, output_dir,
                                          cfg.get("export_encoder"))
    if is_main:
        with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(final, f, indent=2)
    return final


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="pretrain"))
