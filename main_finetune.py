"""Fine-tuning, linear probing and evaluation of classifiers (``models.objectives.Classification``).

    python main_finetune.py                                  # the demo: classifier from the demo MAE encoder
    python main_finetune.py experiment=fine_tuning/ecg_ptbxl data.train_fraction=0.1
    python main_finetune.py eval_only=true ckpt_path=logs/finetune/runs/<time>/checkpoints/epoch_012.pt
    python main_finetune.py -m +fold=1,2,3,4,5               # cross-validation; summary.json has mean/std

Training (``engine.fit``) selects the best epoch on the validation split (best-k checkpoints, early
stopping); that checkpoint is then evaluated on val AND test, and both land in ``metrics.json``
(test numbers never come from the selection split).
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import engine
from datasets import build_data
from util.checkpoint import load_checkpoint
from util.cli import run_cli
from util.config import Config
from util.errors import ConfigError
from util.metrics import numeric
from util.run_logger import write_json
from util.schema import Bool, Int
from util.train_state import check_checkpoint_kind, model_state, run_identity

log = logging.getLogger("main_finetune")


def load_weights(objective, data, path: str) -> None:
    """The model weights of checkpoint ``path`` into ``objective`` (refused when they do not fit)."""
    ckpt = load_checkpoint(path)
    check_checkpoint_kind(ckpt, run_identity(objective, data.info), path, use="evaluate",
                          contract_policy=data.info.contract_policy)
    try:
        objective.load_state_dict(model_state(ckpt))
    except RuntimeError as e:
        raise ConfigError(f"checkpoint '{path}' does not fit this classifier (model.size, num_classes, "
                          f"global_pool, linear_probe must match the run that wrote it): "
                          f"{str(e).splitlines()[0]}") from None


def evaluate_splits(cfg: Config, rt: engine.Runtime, objective, data, checkpoint: Optional[str]) -> dict:
    """Val and test metrics of ``checkpoint`` (None: the weights as they are), plus bootstrap 95%
    intervals of the test metrics; identical on every rank (predictions are gathered)."""
    if checkpoint is not None:
        load_weights(objective, data, checkpoint)
    settings = engine.LoopSettings.from_config(cfg.trainer)
    limits = {"val": settings.limit_val_batches, "test": settings.limit_test_batches}
    result: dict = {"checkpoint": checkpoint}
    for split, limit in limits.items():
        evaluation = engine.evaluate(objective, data.loaders[split], rt, limit_batches=limit, desc=split,
                                     progress_bar=settings.progress_bar)
        result[split] = evaluation.metrics
    if int(cfg.bootstrap) > 0:
        result["test_ci95"] = objective.confidence_intervals(evaluation.gathered, n_boot=int(cfg.bootstrap),
                                                             seed=cfg.seed)
    return result


def flat(result: dict) -> dict:
    """``{"val": {...}, "test": {...}}`` -> ``{"val/auroc_macro": ..., "test/...": ...}`` (numbers only)."""
    return {f"{split}/{k}": v for split in ("val", "test") for k, v in numeric(result.get(split, {})).items()}


def report(objective, what: str, result: dict) -> None:
    shown = "  ".join(f"{k} {v:.4g}" for k, v in flat(result).items() if k.split("/")[1] in objective.headline_metrics)
    log.info("%s: %s", what, shown)


def main(cfg: Config) -> dict:
    """Fine-tune (or, with ``eval_only``, evaluate) the classifier described by ``cfg``; returns val/test metrics."""
    if cfg.model is None or cfg.data is None:
        raise ConfigError("no model/data selected: choose an experiment, e.g. experiment=fine_tuning/ecg_demo")
    engine.check_config(cfg, {"eval_only": Bool(), "bootstrap": Int(min=0)})
    rt = engine.setup(cfg, "main_finetune.py")
    data = build_data(cfg.data, ("train", "val", "test"), seed=cfg.seed, world_size=rt.world_size, rank=rt.rank)
    objective = engine.build_objective(cfg, data.info, rt)
    output_dir = cfg.paths.output_dir
    if cfg.eval_only:
        if not cfg.ckpt_path:
            raise ConfigError("eval_only=true needs ckpt_path=<fine-tuned checkpoint>")
        load_weights(objective, data, cfg.ckpt_path)
        result = {**evaluate_splits(cfg, rt, objective, data, None), "checkpoint": cfg.ckpt_path}
        if rt.is_main:
            write_json(os.path.join(output_dir, "metrics_dict.json"), result)
            report(objective, f"eval-only {cfg.ckpt_path}", result)
        return flat(result)

    train_records = len(data.loaders["train"].dataset)
    log.info("%d training records (data.train_fraction %s) from %s", train_records, cfg.data.train_fraction,
             data.info.source)
    fit = engine.fit(cfg, rt, objective, data)
    result = evaluate_splits(cfg, rt, objective, data, fit.best_checkpoint)
    checkpoints = fit.state.checkpoints
    result.update({"best_epoch": fit.best_epoch, "pretrained_weights": fit.pretrained, "train_records": train_records,
                   "pretraining_overlap": fit.pretraining_overlap,
                   "selection": {"monitor": checkpoints.monitor, "mode": checkpoints.mode}})
    if rt.is_main:
        write_json(os.path.join(output_dir, "metrics.json"), result)
        report(objective, f"best epoch {fit.best_epoch} ({fit.best_checkpoint})", result)
    return flat(result)


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="finetune"))
