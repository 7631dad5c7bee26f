"""Self-supervised pretraining: the signal masked autoencoder on 12-lead ECG (more objectives plug in
through ``cfg.model._target_``).

    python main_pretrain.py                                   # the demo: a small MAE on synthetic ECGs
    python main_pretrain.py experiment=pre_training/ecg_arrhythmia trainer.max_epochs=50
    torchrun --nproc_per_node=4 main_pretrain.py experiment=...

Trains with ``engine.fit`` (checkpoints, resume, preemption), then writes what the objective exports
(the encoder of the best epoch as ``encoder.pth``) and ``metrics.json``. See the README.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

import torch

import engine
from datasets import build_data
from util.checkpoint import atomic_torch_save, load_checkpoint
from util.cli import run_cli
from util.config import Config
from util.errors import ConfigError
from util.run_logger import write_json
from util.schema import Str
from util.train_state import model_state

log = logging.getLogger("main_pretrain")


def export(objective: torch.nn.Module, best: Optional[str], output_dir: str, copy_to: Optional[str]) -> dict:
    """Write the objective's exports of the best checkpoint (else the final weights) to ``output_dir``;
    the first one (the encoder) also to ``copy_to`` when set, for the fine-tuning configs."""
    if best is not None:
        objective.load_state_dict(model_state(load_checkpoint(best)))
    written = {}
    for i, (name, payload) in enumerate(objective.exports().items()):
        payload = {**payload, "source": best or "final model"}
        written[os.path.splitext(name)[0]] = target = os.path.join(output_dir, name)
        atomic_torch_save(payload, target)
        if i == 0 and copy_to:
            atomic_torch_save(payload, copy_to)
            log.info("exported the %s to %s", os.path.splitext(name)[0], copy_to)
    return written


def main(cfg: Config) -> dict:
    """Pretrain the objective described by ``cfg``; returns the final metrics (the sweep objective)."""
    if cfg.model is None or cfg.data is None:
        raise ConfigError("no model/data selected: choose an experiment, e.g. "
                          "experiment=pre_training/ecg_demo (the default)")
    engine.check_config(cfg, {"export_encoder": Str(nullable=True)})
    rt = engine.setup(cfg, "main_pretrain.py")
    data = build_data(cfg.data, ("train", "val"), seed=cfg.seed, world_size=rt.world_size, rank=rt.rank)
    objective = engine.build_objective(cfg, data.info, rt)
    result = engine.fit(cfg, rt, objective, data)

    final = {k: v for k, v in result.history.items() if engine.is_finite_number(v)}
    if result.best_checkpoint:
        final["best_checkpoint"] = result.best_checkpoint
    if rt.is_main and not result.settings.fast_dev_run:
        final.update(export(objective, result.best_checkpoint, cfg.paths.output_dir, cfg.export_encoder))
    if rt.is_main:
        write_json(os.path.join(cfg.paths.output_dir, "metrics.json"), final)
    return final


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="pretrain"))
