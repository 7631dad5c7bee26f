"""Fine-tuning, linear probing and evaluation of ECG classifiers.

    python main_finetune.py                                  # the demo: classifier from the demo MAE encoder
    python main_finetune.py experiment=fine_tuning/ecg_ptbxl data.train_fraction=0.1
    python main_finetune.py eval_only=true ckpt_path=logs/finetune/runs/<time>/checkpoints/epoch_012.pt
    python main_finetune.py -m +fold=1,2,3,4,5               # cross-validation; summary.json has mean/std

Training selects the best epoch on the validation split (best-k checkpoints, early stopping) and
then evaluates that checkpoint on val AND test; both land in ``metrics.json`` (test numbers never
come from the selection split).
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
from util.checkpoint import load_checkpoint
from util.cli import run_cli
from util.config import Config, ConfigError, instantiate
from util.lr_decay import param_groups_lrd
from util.lr_sched import absolute_lr
from util.metrics import MAIN_METRICS, bootstrap_ci, compute_metrics, numeric
from util.preemption import PreemptionWatcher
from util.run_logger import RunLogger

log = logging.getLogger("main_finetune")

# keys of a classifier model config that configure the run, not the network
RUN_KEYS = ("task_type", "pretrained_weights", "pretrained_optional", "allow_pickle_weights",
            "tolerated_missing_fraction", "loss", "optim")


def build_model(cfg: Config, input_size: tuple) -> torch.nn.Module:
    if cfg.model.get("num_classes") in (None, "???"):
        raise ConfigError("model.num_classes is not set: the modality config gives it (modality.num_classes), "
                          "or set model.num_classes=<N>")
    return instantiate({k: v for k, v in cfg.model.items() if k not in RUN_KEYS}, input_size=input_size)


def load_encoder(cfg: Config, model: torch.nn.Module) -> Optional[str]:
    """Initialise the encoder from ``model.pretrained_weights``; returns the file used (None = scratch)."""
    from models.weights import load_pretrained

    path = cfg.model.get("pretrained_weights")
    if not path:
        log.info("model.pretrained_weights is null: training from scratch")
        return None
    if not os.path.isfile(path):
        if cfg.model.get("pretrained_optional"):
            log.warning("no pretrained encoder at %s: training from scratch (python main_pretrain.py writes "
                        "the demo encoder there)", path)
            return None
        raise ConfigError(f"model.pretrained_weights '{path}' does not exist. Point it at an encoder checkpoint "
                          "(e.g. <pretraining run>/encoder.pth or the released MMCL weights), or set "
                          "model.pretrained_weights=null to train from scratch.")
    report = load_pretrained(model, path, allow_pickle=bool(cfg.model.get("allow_pickle_weights")),
                             tolerated_missing_fraction=float(cfg.model.get("tolerated_missing_fraction") or 0.0))
    log.info("initialised the encoder from %s (%d tensors loaded)", path, len(report.loaded))
    return path


def build_loss(cfg: Config, train_labels: Optional[np.ndarray]):
    from models.classifier import ClassificationLoss, class_weights_from_labels, pos_weight_from_labels

    task_type = cfg.model.task_type
    loss_cfg = cfg.model.get("loss") or {}
    class_weights = pos_weight = None
    if loss_cfg.get("class_weights") == "balanced":
        class_weights = class_weights_from_labels(train_labels, int(cfg.model.num_classes))
    elif loss_cfg.get("class_weights") is not None:
        class_weights = torch.tensor(loss_cfg["class_weights"], dtype=torch.float32)
    if loss_cfg.get("pos_weight"):
        pos_weight = pos_weight_from_labels(train_labels)
    return ClassificationLoss(task_type, label_smoothing=float(loss_cfg.get("label_smoothing") or 0.0),
                              class_weights=class_weights, pos_weight=pos_weight,
                              num_classes=None if task_type == "regression" else int(cfg.model.num_classes))


def make_forward(loss_fn, cfg: Config):
    """The engine's ``forward_fn``: logits, the task loss, optional mixup (training only)."""
    from models.classifier import mixup

    alpha = float((cfg.model.get("loss") or {}).get("mixup_alpha") or 0.0)
    task_type, num_classes = cfg.model.task_type, cfg.model.get("num_classes")

    def forward(model, batch, generator):
        x, y = batch[0], batch[1]
        if alpha > 0 and model.training:
            x, y = mixup(x, y, alpha, generator, task_type, num_classes)
        logits = model(x, generator=generator)
        return {"loss": loss_fn(logits, y)}
    return forward


def evaluate_split(model, loader, loss_fn, cfg: Config, rt: runtime.Runtime, label_names,
                   limit_batches=None, progress_bar=True, return_predictions=False):
    """Loss and metrics of one split from a single prediction pass (exact under DDP; every rank
    gets the same numbers). With ``return_predictions`` also ``(outputs, targets)``."""
    outputs, targets = engine.predict(model, loader, device=rt.device, precision=rt.precision,
                                      limit_batches=limit_batches, is_main=rt.is_main, progress_bar=progress_bar)
    task_type = cfg.model.task_type
    with torch.no_grad():
        loss = float(loss_fn(torch.from_numpy(outputs), torch.from_numpy(targets)))
    metrics = compute_metrics(task_type, targets, outputs, label_names=label_names)
    metrics["loss"] = loss
    return (metrics, (outputs, targets)) if return_predictions else metrics


def _log_skipped(split: str, metrics: dict) -> None:
    if metrics.get("skipped_classes"):
        log.warning("%s: classes without positives or negatives were left out of the macro AUROC/AUPRC: %s",
                    split, ", ".join(map(str, metrics["skipped_classes"])))


def final_evaluation(model, loaders, loss_fn, cfg: Config, rt: runtime.Runtime, label_names,
                     checkpoint: Optional[str]) -> dict:
    """Val and test metrics of ``checkpoint`` (the selected epoch), plus bootstrap CIs on test."""
    if checkpoint is not None:
        engine.unwrap(model).load_state_dict(load_checkpoint(checkpoint)["model"])
    result: dict = {"checkpoint": checkpoint}
    for split in ("val", "test"):
        metrics, (outputs, targets) = evaluate_split(model, loaders[split], loss_fn, cfg, rt, label_names,
                                                     return_predictions=True)
        _log_skipped(split, metrics)
        result[split] = metrics
    n_boot = int(cfg.get("bootstrap") or 0)
    if n_boot > 0:  # on the gathered test predictions, identical on every rank
        result["test_ci95"] = bootstrap_ci(cfg.model.task_type, targets, outputs, n_boot=n_boot, seed=cfg.seed,
                                           label_names=label_names)
    return result


def _flat(result: dict) -> dict:
    """``{"val": {...}, "test": {...}}`` -> ``{"val/auroc_macro": ..., "test/...": ...}`` (numbers only)."""
    return {f"{split}/{k}": v for split in ("val", "test") for k, v in numeric(result.get(split, {})).items()}


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)


def eval_only(cfg, model, loaders, loss_fn, rt, label_names) -> dict:
    """``eval_only=true ckpt_path=...``: evaluate a fine-tuned checkpoint; writes metrics_dict.json."""
    path = cfg.get("ckpt_path")
    if not path:
        raise ConfigError("eval_only=true needs ckpt_path=<fine-tuned checkpoint>")
    state = load_checkpoint(path)["model"]
    try:
        engine.unwrap(model).load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(f"ckpt_path '{path}' does not fit this classifier (model.size, num_classes, "
                          f"global_pool, linear_probe must match the run that wrote it): "
                          f"{str(e).splitlines()[0]}") from None
    result = final_evaluation(model, loaders, loss_fn, cfg, rt, label_names, checkpoint=None)
    result["checkpoint"] = path
    if rt.is_main:
        _write_json(os.path.join(cfg.paths.output_dir, "metrics_dict.json"), result)
        log.info("eval-only %s: %s", path, "  ".join(f"{k} {v:.4g}" for k, v in _flat(result).items()
                                                     if k.split("/")[1] in MAIN_METRICS[cfg.model.task_type]))
    return _flat(result)


def main(cfg: Config) -> dict:
    """Fine-tune (or evaluate) the classifier described by ``cfg``; returns val/test metrics."""
    if cfg.get("model") is None or cfg.get("data") is None:
        raise ConfigError("no model/data selected: choose an experiment, e.g. experiment=fine_tuning/ecg_demo")
    output_dir, trainer = cfg.paths.output_dir, cfg.trainer
    rt = runtime.setup(cfg, "main_finetune.py")
    fast_dev_run = bool(trainer.get("fast_dev_run"))

    loaders, batch_transform = runtime.ecg_data(cfg, rt, ("train", "val", "test"))
    store = loaders["train"].dataset.store
    task_type = cfg.model.task_type
    if store.task_type is not None and store.task_type != task_type:
        raise ConfigError(f"model.task_type is '{task_type}' but the dataset {store.root} is '{store.task_type}'; "
                          "fix modality.task_type")
    label_names = store.label_names
    leads = list(cfg.data.get("input_electrodes") or cfg.modality.lead_names)
    model = build_model(cfg, (len(leads), int(cfg.data.time_steps))).to(rt.device)
    train_records = loaders["train"].dataset.indices
    loss_fn = build_loss(cfg, None if store.labels is None else np.asarray(store.labels[np.sort(train_records)]))
    if cfg.get("eval_only"):
        return eval_only(cfg, runtime.wrap_ddp(model, rt), loaders, loss_fn, rt, label_names)

    pretrained = load_encoder(cfg, model)
    optim = cfg.model.optim
    accum = max(int(trainer.accumulate_grad_batches or 1), 1)
    effective_batch = int(cfg.data.batch_size) * accum * rt.world_size
    lr = float(optim.lr) if optim.get("lr") is not None else \
        absolute_lr(float(optim.blr), effective_batch, float(optim.get("lr_batch_divisor", 256)))
    groups = param_groups_lrd(model, weight_decay=float(optim.get("weight_decay", 0.0)),
                              layer_decay=float(optim.get("layer_decay", 1.0)))
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.get("betas", (0.9, 0.999))))
    scaler = engine.make_scaler(rt.precision)
    log.info("%s classifier (%s pooling%s), %d train records%s, %s; effective batch %d, lr %.3g",
             cfg.model.get("size"), cfg.model.get("global_pool"), ", linear probe" if cfg.model.get("linear_probe") else "",
             len(train_records), f" ({cfg.data.get('train_fraction')} of train)"
             if float(cfg.data.get("train_fraction") or 1.0) < 1 else "",
             f"encoder from {pretrained}" if pretrained else "encoder from scratch", effective_batch, lr)
    model = runtime.wrap_ddp(model, rt)
    checkpoints, early_stopping, ckpt_dir = runtime.checkpointing(cfg)
    point = runtime.resume(cfg, ckpt_dir, model, optimizer, scaler, checkpoints, early_stopping)
    start_epoch, global_step, history = point.epoch, point.step, point.history
    watcher = PreemptionWatcher(rt.device)
    run_logger = RunLogger(cfg.get("logger"), output_dir, enabled=rt.is_main)
    settings = runtime.loop_settings(cfg, lr)
    profiler = runtime.Profiler(trainer.get("profiler"), output_dir, rt.device)
    forward = make_forward(loss_fn, cfg)
    max_epochs = 1 if fast_dev_run else int(trainer.max_epochs)
    val_every = max(int(trainer.get("check_val_every_n_epoch") or 1), 1)
    nonfinite = 0

    for epoch in range(start_epoch, max_epochs):
        with profiler.phase("train", epoch):
            train_stats, global_step, nonfinite = runtime.train_epoch(
                cfg, rt, model, loaders["train"], optimizer, scaler, checkpoints, early_stopping, history,
                epoch=epoch, global_step=global_step, resume_point=point, watcher=watcher,
                settings=settings, forward_fn=forward, batch_transform=batch_transform, run_logger=run_logger,
                nonfinite_streak=nonfinite)
        epoch_metrics = {f"train/{k}": v for k, v in train_stats.items()}
        if (epoch + 1) % val_every == 0 or epoch + 1 == max_epochs:
            with profiler.phase("validate", epoch):
                val = evaluate_split(model, loaders["val"], loss_fn, cfg, rt, label_names,
                                     limit_batches=settings.limit_val_batches, progress_bar=settings.progress_bar)
            epoch_metrics.update({f"val/{k}": v for k, v in numeric(val).items()})
        if rt.is_main:
            run_logger.log({k: v for k, v in epoch_metrics.items() if "/" in k and k != "train/lr"}, global_step,
                           epoch=epoch)
            shown = [k for k in epoch_metrics if k in ("train/loss", "val/loss")
                     or k.split("/", 1)[-1] in MAIN_METRICS[task_type]]
            log.info("epoch %d: %s", epoch, "  ".join(f"{k} {epoch_metrics[k]:.4g}" for k in shown))
        history = {**history, **epoch_metrics, "epoch": epoch}
        stop = False
        if early_stopping is not None and any(k.startswith("val/") for k in epoch_metrics) \
                and epoch + 1 >= int(trainer.get("min_epochs") or 1):
            stop = early_stopping.step(epoch_metrics)
        if rt.is_main and not fast_dev_run:
            checkpoints.save(runtime.checkpoint_state(cfg, model, optimizer, scaler, epoch, global_step,
                                                      early_stopping, history), epoch, epoch_metrics)
        distributed.barrier()
        if stop:
            log.info("early stopping after epoch %d: %s", epoch, early_stopping.reason)
            break

    run_logger.close()
    watcher.close()
    profiler.report()
    # rank 0 alone writes checkpoints and knows the selected one: every rank must evaluate that file
    best = distributed.broadcast_object(checkpoints.best_path if not fast_dev_run else None)
    best_epoch = distributed.broadcast_object(next((b["epoch"] for b in checkpoints.best if b["path"] == best), None))
    result = final_evaluation(model, loaders, loss_fn, cfg, rt, label_names, best)
    result.update({"best_epoch": best_epoch, "pretrained_weights": pretrained, "train_records": len(train_records),
                   "selection": {"monitor": checkpoints.monitor, "mode": checkpoints.mode}})
    if rt.is_main:
        _write_json(os.path.join(output_dir, "metrics.json"), result)
        log.info("best epoch %s (%s): %s", best_epoch, best,
                 "  ".join(f"{k} {v:.4g}" for k, v in _flat(result).items() if k.split("/")[1] in MAIN_METRICS[task_type]))
    return _flat(result)


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="finetune"))
