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

import io
import json
import logging
import os
import re
import sys
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import default_collate

import engine
from datasets import build_data
from datasets.loading import DataInfo, InputSpec
from util import contract, distributed
from util.checkpoint import atomic_torch_save, load_checkpoint
from util.cli import run_cli
from util.config import Config, load_yaml
from util.errors import CheckpointError, ConfigError
from util.files import atomic_write_bytes, atomic_write_text
from util.run_logger import RunLogger
from util.schema import AnyOf, Bool, Choice, Int, List, Section, Str
from util.train_state import checkpoint_objective, model_state

log = logging.getLogger("main_artifacts")

TARGETS = ("predicted", "true", "all")
ARTIFACTS_SCHEMA = {
    "splits": List(Str()), "embeddings": Bool(),
    "record_id": AnyOf(Str(), Int(), List(AnyOf(Str(), Int())), nullable=True),
    "saliency": Section({"split": Str(), "first_n": Int(min=0), "methods": AnyOf(Choice("auto"), List(Str())),
                         "targets": AnyOf(Choice(*TARGETS), List(Str(), min_length=1)), "steps": Int(min=1)}),
    "figures": Section({"ecg_layout": Choice("12x1", "3x4"), "embedding_map": Bool(), "max_points": Int(min=2),
                        "dpi": Int(min=30)}),
}


# ---- the model -----------------------------------------------------------------------------------------
def read_checkpoint(path: str, encoder_file_ok: bool) -> Optional[dict]:
    """A training checkpoint of ours (with its objective and config), or None for an encoder file."""
    if not os.path.isfile(path):
        raise ConfigError(f"ckpt_path '{path}' does not exist: give a checkpoint of a run "
                          "(<run dir>/checkpoints/*.pt) or an encoder file (encoder.pth)")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        if encoder_file_ok:  # e.g. a pickled reference checkpoint: the weights loader says what to do
            return None
        raise
    if checkpoint_objective(ckpt) and ckpt.get("config"):
        return ckpt
    return None


def _trained_info(ckpt: dict, data: DataInfo) -> DataInfo:
    """The data description the checkpoint's objective was built for, with this data's lead names
    and rates where the field is the same (so the objective is rebuilt exactly as it was trained)."""
    trained = ckpt.get("data") or {}
    inputs = {}
    for name, shape in (trained.get("inputs") or {k: list(v.shape) for k, v in data.inputs.items()}).items():
        given = data.inputs.get(name)
        if given is not None and list(given.shape) != list(shape):
            raise CheckpointError(f"checkpoint '{ckpt['_path']}' was trained on '{name}' inputs of shape "
                                  f"{tuple(shape)}, but this data gives {tuple(given.shape)}: use the data "
                                  "settings it was trained with (data.time_steps, data.img_size, data.leads)")
        inputs[name] = InputSpec(tuple(shape), given.channel_names if given else (),
                                 given.sampling_rate if given else None)
    label_names = [str(n) for n in trained.get("label_names", data.label_names)]
    same_labels = label_names == [str(n) for n in data.label_names]
    return DataInfo(inputs=inputs, task_type=trained.get("task_type", data.task_type), label_names=label_names,
                    train_labels=data.train_labels if same_labels else None, source=data.source,
                    contract=trained.get("contract") or data.contract, contract_policy=data.contract_policy)


def check_contract(trained: Optional[dict], given: Optional[dict], what: str, policy: str) -> None:
    """``util.contract.check``, per modality for paired data."""
    if trained and given and trained.get("modality") == "paired" and given.get("modality") == "paired":
        for side in ("ecg", "cmr"):
            contract.check(trained.get(side), given.get(side), what=f"{what} ({side})", policy=policy, log=log)
        return
    contract.check(trained, given, what=what, policy=policy, log=log)


def load_model(cfg: Config, path: str, ckpt: Optional[dict], data: Any, rt: engine.Runtime) -> torch.nn.Module:
    """The objective of checkpoint ``ckpt`` with its weights, or ``cfg.model`` with encoder file ``path``."""
    if ckpt is not None:
        stored = load_yaml(ckpt["config"], source=path)
        if not isinstance(stored, dict) or not isinstance(stored.get("model"), dict):
            raise CheckpointError(f"checkpoint '{path}' holds no model config; give the encoder's model config "
                                  "(model=ecg_embedding) with an encoder file instead")
        if cfg.get("model") is not None:
            log.info("the model comes from the checkpoint (%s); model=%s is not used", ckpt["objective"],
                     cfg.model.get("_target_"))
        ckpt["_path"] = path
        info = _trained_info(ckpt, data.info)
        objective = engine.build_objective(cfg, info, rt, model_cfg=Config(stored["model"], _node_path="model"))
        try:
            objective.load_state_dict(model_state(ckpt))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint '{path}' does not fit the model its config describes: "
                                  f"{str(e).splitlines()[0]}") from None
        check_contract((ckpt.get("data") or {}).get("contract"), data.info.contract, f"checkpoint '{path}'",
                       data.info.contract_policy)
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
    check_contract(report.metadata.get("contract"), data.info.contract, f"the encoder '{path}'",
                   data.info.contract_policy)
    return objective.to(rt.device)


# ---- files ---------------------------------------------------------------------------------------------
class Index:
    """``artifacts.json``: every file written, with its split, record id, method and class."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir, self.entries = output_dir, []

    def add(self, path: str, kind: str, **about: Any) -> None:
        self.entries.append({"file": os.path.relpath(path, self.output_dir), "kind": kind,
                             **{k: v for k, v in about.items() if v is not None}})

    def write(self, summary: dict) -> str:
        path = os.path.join(self.output_dir, "artifacts.json")
        atomic_write_text(path, json.dumps({**summary, "files": self.entries}, indent=2) + "\n")
        return path


def save_npy(path: str, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    atomic_write_bytes(path, buffer.getvalue())


def safe_name(text: Any) -> str:
    """A file-name-safe form of a record id or class name (ids may be paths, e.g. MIMIC-IV-ECG's)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


# ---- embeddings ----------------------------------------------------------------------------------------
def write_embeddings(cfg: Config, dataset_key: str, objective, data, rt: engine.Runtime, index: Index) -> dict:
    """``{name: {split: {record_ids, embeddings, labels, label_names}}}``, written by rank 0."""
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
    if rt.is_main:
        key = safe_name(dataset_key)
        for name, splits in by_name.items():
            stem = key if len(by_name) == 1 else f"{key}_{name}"
            target = os.path.join(cfg.paths.output_dir, f"{stem}_embeddings.pt")
            atomic_torch_save(splits, target)
            index.add(target, "embeddings", field=name, splits=list(splits))
            for split, payload in splits.items():
                base = os.path.join(cfg.paths.output_dir, "embeddings", f"{stem}_{split}")
                os.makedirs(os.path.dirname(base), exist_ok=True)
                save_npy(base + "_embeddings.npy", payload["embeddings"].numpy())
                save_npy(base + "_labels.npy", payload["labels"].numpy())
                atomic_write_text(base + "_record_ids.txt", "\n".join(payload["record_ids"]) + "\n")
                for suffix, kind in (("_embeddings.npy", "embeddings_npy"), ("_labels.npy", "labels_npy"),
                                     ("_record_ids.txt", "record_ids")):
                    index.add(base + suffix, kind, field=name, split=split)
            log.info("wrote %s", target)
    return by_name


def embedding_maps(cfg: Config, by_name: dict, task_type: Optional[str], run_logger: RunLogger, index: Index) -> None:
    """PCA and t-SNE of every split's embeddings, coloured by label."""
    import matplotlib.pyplot as plt

    from models.figures import embedding_map_figure

    for name, splits in by_name.items():
        for split, payload in splits.items():
            fig = embedding_map_figure(payload["embeddings"].numpy(), payload["labels"].numpy(),
                                       payload["label_names"], task_type=task_type,
                                       title=f"{name} embeddings of the {split} split ({len(payload['record_ids'])})",
                                       max_points=cfg.figures.max_points, seed=cfg.seed)
            png = os.path.join(cfg.paths.output_dir, "figures", f"embedding_map_{name}_{split}.png")
            run_logger.log_figure(f"embeddings/{name}_{split}", fig, 0, png_path=png, dpi=cfg.figures.dpi)
            plt.close(fig)
            index.add(png, "embedding_map", field=name, split=split)


# ---- saliency ------------------------------------------------------------------------------------------
def chosen_records(cfg: Config, data) -> list[tuple[str, int, str]]:
    """``(split, dataset position, record id)`` of ``record_id`` (searched in every loaded split) or of
    the first ``saliency.first_n`` records of ``saliency.split``."""
    wanted = cfg.record_id
    if wanted is None:
        split = cfg.saliency.split
        n = min(int(cfg.saliency.first_n), len(data.records[split]))
        return [(split, i, rid) for i, rid in enumerate(data.record_ids(data.records[split][:n]))]
    wanted = [str(w) for w in (wanted if isinstance(wanted, list) else [wanted])]
    where = {}
    for split, records in data.records.items():
        for position, rid in enumerate(data.record_ids(records)):
            where.setdefault(rid, (split, position))
    missing = [w for w in wanted if w not in where]
    if missing:
        store = data.info.source
        examples = ", ".join(list(where)[:3])
        raise ConfigError(f"record_id {', '.join(missing)} is not in the {', '.join(data.records)} split(s) of "
                          f"{store}. Valid ids are the lines of {os.path.join(store, 'record_ids.txt')} (splits.json "
                          f"gives each split's rows) and the record_ids of the embeddings file; e.g. {examples}. "
                          "Add the record's split to splits=[...] if it is in another one.")
    return [(*where[w], w) for w in wanted]


def pick_targets(cfg: Config, objective, scores: torch.Tensor, label: torch.Tensor, label_names: list) -> list[int]:
    """The classes to explain for one record (``saliency.targets``)."""
    names = [str(n) for n in objective.class_names]
    targets = cfg.saliency.targets
    if isinstance(targets, list):
        return [names.index(str(t)) for t in targets]
    if targets == "all" or objective.task_type == "regression":
        return list(range(len(names)))
    if targets == "true" and label.numel() > 0 and [str(n) for n in label_names] == names:
        if objective.task_type == "multiclass":
            return [int(label)]
        return [i for i in range(len(names)) if float(label[i]) > 0.5] or [int(scores.argmax())]
    if objective.task_type == "multiclass":
        return [int(scores.argmax())]
    return [i for i in range(len(names)) if float(scores[i]) > 0.5] or [int(scores.argmax())]


def describe_record(objective, scores: Optional[torch.Tensor], label: torch.Tensor, label_names: list) -> str:
    """``predicted: BBB 0.93 · true: BBB`` for a classifier's figure titles."""
    if scores is None:
        return ""
    names = [str(n) for n in objective.class_names]
    if objective.task_type == "regression":
        return "outputs: " + ", ".join(f"{n} {float(s):.3g}" for n, s in zip(names, scores))
    top = [i for i in scores.argsort(descending=True).tolist()][:3]
    text = "predicted: " + ", ".join(f"{names[i]} {float(scores[i]):.2f}" for i in top)
    if label.numel() > 0 and [str(n) for n in label_names] == names:
        true = [names[int(label)]] if objective.task_type == "multiclass" else \
            [names[i] for i in range(len(names)) if float(label[i]) > 0.5]
        text += " · true: " + (", ".join(true) or "none")
    return text


def check_saliency_config(cfg: Config, objective) -> list[str]:
    """The methods to run (empty: no saliency), refusing methods or classes the model does not have."""
    supported = tuple(objective.saliency_methods)
    asked = cfg.saliency.methods
    explicit = asked != "auto" or cfg.record_id is not None
    if not supported:
        if explicit:
            raise ConfigError(f"{type(objective).__name__} has no saliency maps: they need a classifier (a "
                              "fine-tuning checkpoint) or an MMCL checkpoint; leave record_id unset for embeddings")
        return []
    methods = list(supported) if asked == "auto" else list(asked)
    unknown = [m for m in methods if m not in supported]
    if unknown:
        raise ConfigError(f"saliency.methods {', '.join(unknown)} do not apply to {type(objective).__name__}; it "
                          f"supports {', '.join(supported)} (or auto)")
    targets = cfg.saliency.targets
    if isinstance(targets, list):
        names = [str(n) for n in objective.class_names]
        bad = [str(t) for t in targets if str(t) not in names]
        if bad:
            raise ConfigError(f"saliency.targets {', '.join(bad)} are not classes of this model; its classes are "
                              f"{', '.join(names)} (or predicted | true | all)")
    return methods if (cfg.record_id is not None or int(cfg.saliency.first_n) > 0) else []


def write_saliency(cfg: Config, objective, data, records: list, methods: list[str], run_logger: RunLogger,
                   index: Index) -> int:
    """Maps and figures of ``records`` (``chosen_records``); returns how many maps were written."""
    import matplotlib.pyplot as plt

    from models.figures import ecg_figure, image_overlay_figure

    out = os.path.join(cfg.paths.output_dir, "saliency")
    os.makedirs(out, exist_ok=True)
    written = 0
    for split, position, rid in records:
        sample = data.loaders[split].dataset[(position, 0)]
        batch = engine.to_device(default_collate([sample]), next(objective.parameters()).device)
        scores = objective.class_scores(batch)
        scores = scores[0].cpu() if scores is not None else None
        label = batch["label"][0].cpu()
        targets = pick_targets(cfg, objective, scores, label, data.info.label_names) if scores is not None else [None]
        caption = describe_record(objective, scores, label, data.info.label_names)
        done = set()
        for method in methods:
            for target in targets:
                for smap in objective.explain(batch, method, target, steps=cfg.saliency.steps):
                    if (smap.field, method, smap.about) in done:  # class-independent maps: once per record
                        continue
                    done.add((smap.field, method, smap.about))
                    values = smap.maps[0].float().cpu().numpy()
                    stem = os.path.join(out, f"{safe_name(rid)}__{smap.field}__{method}" +
                                        (f"__{safe_name(smap.about)}" if smap.about else ""))
                    save_npy(stem + ".npy", values)
                    what = method.replace("_", " ") + (f" of {smap.about}" if smap.about else "")
                    score = f" ({float(smap.score[0]):.2f})" if smap.score is not None else ""
                    title = f"record {rid} ({split}) · {what}{score}" + (f"\n{caption}" if caption else "")
                    spec = data.info.inputs[smap.field]
                    x = batch[smap.field][0].float().cpu().numpy()
                    if spec.sampling_rate:
                        fig = ecg_figure(x[0], spec.sampling_rate, list(spec.channel_names), saliency=values[0],
                                         title=title, layout=cfg.figures.ecg_layout, saliency_label=what)
                    else:
                        fig = image_overlay_figure(x, values[0], title=title, heatmap_label=what)
                    run_logger.log_figure(f"saliency/{safe_name(rid)}/{smap.field}/{method}/{safe_name(smap.about)}",
                                          fig, 0, png_path=stem + ".png", dpi=cfg.figures.dpi)
                    plt.close(fig)
                    about = dict(split=split, record_id=rid, field=smap.field, method=method,
                                 target=smap.about or None)
                    index.add(stem + ".npy", "saliency_map", **about)
                    index.add(stem + ".png", "saliency_figure", **about)
                    written += 1
        log.info("saliency of record %s (%s): %s", rid, split, caption or "done")
    return written


# ---- the task ------------------------------------------------------------------------------------------
def main(cfg: Config) -> dict:
    """Embeddings and saliency maps of ``cfg.ckpt_path``; returns the record counts (the sweep objective)."""
    engine.check_config(cfg, ARTIFACTS_SCHEMA)
    if not cfg.ckpt_path:
        raise ConfigError("main_artifacts.py needs ckpt_path=<checkpoint of a run or encoder file>, e.g. "
                          "ckpt_path=logs/finetune/runs/<time>/checkpoints/epoch_008.pt")
    path = str(cfg.ckpt_path)
    ckpt = read_checkpoint(path, encoder_file_ok=cfg.get("model") is not None)
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
        wanted = cfg.embeddings and cfg.splits
        by_name = write_embeddings(cfg, data_cfg.dataset_key, objective, data, rt, index) if wanted else {}
        if rt.is_main:
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
