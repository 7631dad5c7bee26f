"""Embeddings and saliency maps from a trained checkpoint or an encoder file.

    python main_artifacts.py                                    # the demo: embeddings of the demo MAE encoder
    python main_artifacts.py ckpt_path=logs/finetune/runs/<time>/checkpoints/epoch_008.pt   # + saliency
    python main_artifacts.py experiment=embeddings/ecg_ptbxl splits=[train,test]
    python main_artifacts.py ckpt_path=<checkpoint> record_id=[17,203]   # saliency of chosen records
    torchrun --nproc_per_node=4 main_artifacts.py experiment=...

A checkpoint of any of our runs brings its model: the config stored in it says what it is, so no
model keys need repeating (``~experiment`` also takes the data config from it). An encoder file
(``encoder.pth``, the released MMCL encoders) is read into ``model`` (``model=ecg_embedding`` /
``cmr_embedding``, its size). Every split in ``splits`` is embedded in eval mode, unaugmented and
whole, gathered from every rank in record order, and written to
``{output_dir}/{dataset_key}_embeddings.pt`` as ``{split: {record_ids, embeddings (N, D), labels}}``
plus ``.npy`` copies. A classifier or MMCL model also explains chosen records (``record_id`` or the
first ``saliency.first_n`` of ``saliency.split``) with every method it supports, as maps (``.npy``)
and figures (PNG and TensorBoard). ``artifacts.json`` lists every file written.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional

import torch

import engine
from datasets import build_data
from models.artifacts import (ARTIFACTS_SCHEMA, Index, check_saliency_config, chosen_records, embedding_maps,
                              write_embeddings, write_saliency)
from util import contract, distributed
from util.cli import run_cli
from util.config import Config, load_yaml
from util.errors import CheckpointError, ConfigError
from util.run_logger import RunLogger
from util.train_state import model_state, read_run_checkpoint

log = logging.getLogger("main_artifacts")


def load_model(cfg: Config, path: str, ckpt: Optional[dict], data, rt: engine.Runtime) -> torch.nn.Module:
    """The objective of checkpoint ``ckpt`` with its weights, or ``cfg.model`` with encoder file ``path``."""
    if ckpt is not None:
        stored = load_yaml(ckpt["config"], source=path)
        if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
            raise CheckpointError(f"checkpoint '{path}' holds no model config; give the encoder's model config "
                                  "(model=ecg_embedding) with an encoder file instead")
        if cfg.get("model") is not None:
            log.info("the model comes from the checkpoint (%s); model=%s is not used", ckpt["objective"],
                     cfg.model.get("_target_"))
        info = data.info.as_trained(ckpt.get("data") or {}, path)
        objective = engine.build_objective(cfg, info, rt, model_cfg=Config(stored["model"], _node_path="model"))
        try:
            objective.load_state_dict(model_state(ckpt))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit the model its config describes: "
                                  f"{str(e).splitlines()[0]}") from None
        contract.check((ckpt.get("data") or {}).get("contract"), data.info.contract, what=f"checkpoint '{path}'",
                       policy=data.info.contract_policy, log=log)
        log.info("loaded the %s of %s (epoch %s)", type(objective).__name__, path, ckpt.get("epoch"))
        return objective

    from models.weights import load_pretrained

    if cfg.get("model") is None:
        raise ConfigError(f"'{path}' is an encoder file without a config: choose the encoder's model, e.g. "
                          "model=ecg_embedding model.size=tiny (or model=cmr_embedding model.size=resnet50)")
    objective = engine.build_objective(cfg, data.info, rt)
    if getattr(objective, "trainable", True):
        raise ConfigError(f"'{path}' is an encoder file (no classifier or training state in it), so it loads into "
                          "an encoder model: model=ecg_embedding or model=cmr_embedding; for saliency maps give "
                          "a fine-tuning or MMCL checkpoint (<run dir>/checkpoints/*.pt)")
    report = load_pretrained(objective.net, path, allow_pickle=objective.allow_pickle, log=log)
    contract.check(report.metadata.get("contract"), data.info.contract, what=f"the encoder '{path}'",
                   policy=data.info.contract_policy, log=log)
    return objective.to(rt.device)


def embed_splits(cfg: Config, objective, data, rt: engine.Runtime) -> dict:
    """``{field: {split: {record_ids, embeddings, labels, label_names}}}`` of every split in ``cfg.splits``,
    gathered from every rank in record order."""
    by_name: dict[str, dict] = {}
    for split in cfg.splits:
        gathered = engine.embed(objective, data.loaders[split], rt, progress_bar=cfg.trainer.enable_progress_bar,
                                desc=f"embed {split}")
        ids = data.record_ids(data.records[split][gathered["index"]])
        names = [k for k in gathered if k not in ("index", "label")]
        if not names:
            raise ConfigError(f"{type(objective).__name__} gives no embeddings")
        for name in names:
            by_name.setdefault(name, {})[split] = {
                "record_ids": ids, "embeddings": torch.from_numpy(gathered[name]),
                "labels": torch.from_numpy(gathered["label"]), "label_names": list(data.info.label_names)}
        log.info("embedded %d %s records (%s)", len(ids), split,
                 ", ".join(f"{n} {gathered[n].shape[1]}-d" for n in names))
    return by_name


def main(cfg: Config) -> dict:
    """Embeddings and saliency maps of ``cfg.ckpt_path``; returns the record counts (the sweep objective)."""
    engine.check_config(cfg, ARTIFACTS_SCHEMA)
    if not cfg.ckpt_path:
        raise ConfigError("main_artifacts.py needs ckpt_path=<checkpoint of a run or encoder file>, e.g. "
                          "ckpt_path=logs/finetune/runs/<time>/checkpoints/epoch_008.pt")
    path = str(cfg.ckpt_path)
    ckpt = read_run_checkpoint(path, encoder_file_ok=cfg.get("model") is not None)
    data_cfg = cfg.get("data")
    if data_cfg is None:
        if ckpt is None:
            raise ConfigError("no data selected: choose an experiment, e.g. experiment=embeddings/ecg_demo")
        data_cfg = Config(load_yaml(ckpt["config"], source=path).get("data") or {}, _node_path="data")
        log.info("data: the config stored in %s (%s)", path, data_cfg.get("dataset_key"))
    rt = engine.setup(cfg, "main_artifacts.py")
    splits = list(dict.fromkeys([*cfg.splits, *([cfg.saliency.split] if cfg.record_id is None else [])]))
    if not splits:
        raise ConfigError("splits is empty: name the splits to embed, e.g. splits=[train,val,test]")
    data = build_data(data_cfg, splits, seed=cfg.seed, world_size=rt.world_size, rank=rt.rank, training=False)
    objective = load_model(cfg, path, ckpt, data, rt)
    objective.eval()
    methods = check_saliency_config(cfg, objective)
    records = chosen_records(cfg, data) if methods else []  # an unknown id is refused before any work

    output_dir = cfg.paths.output_dir
    index = Index(output_dir)
    run_logger = RunLogger(cfg.logger, output_dir, enabled=rt.is_main)
    summary: dict = {"checkpoint": path, "model": type(objective).__name__}
    try:
        by_name = embed_splits(cfg, objective, data, rt) if cfg.embeddings and cfg.splits else {}
        if rt.is_main:
            if by_name:
                write_embeddings(by_name, output_dir, data_cfg.dataset_key, index)
            if by_name and cfg.figures.embedding_map:
                embedding_maps(cfg, by_name, data.info.task_type, run_logger, index)
            summary["saliency_maps"] = (write_saliency(cfg, objective, data, records, methods, run_logger, index)
                                        if methods else 0)
            summary.update({f"{split}/records": len(data.records[split]) for split in cfg.splits})
            log.info("wrote %d files; their index is %s", len(index.entries), index.write(summary))
    finally:
        run_logger.close()
    distributed.barrier()
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


if __name__ == "__main__":
    sys.exit(run_cli(main, primary="artifacts"))
