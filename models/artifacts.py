"""What ``main_artifacts.py`` writes: embedding files, embedding maps, and saliency maps and figures
of chosen records, every file listed in ``artifacts.json`` (``Index``).

    write_embeddings(by_name, output_dir, dataset_key, index)   {key}_embeddings.pt + embeddings/*.npy
    embedding_maps(cfg, by_name, task_type, run_logger, index)  figures/embedding_map_{field}_{split}.png
    check_saliency_config(cfg, objective) -> methods            refuses methods / classes the model lacks
    chosen_records(cfg, data) -> [(split, position, record id)]
    write_saliency(cfg, objective, data, records, methods, ...) saliency/{record}__{field}__{method}[__{class}]

``cfg`` is the artifacts config (``configs/artifacts.yaml``); ``data`` a ``datasets.Data``; the
objective answers ``models.objectives``' artifact interface (``saliency_methods``, ``class_scores``,
``explain``).
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import default_collate

from util.checkpoint import atomic_torch_save
from util.config import Config
from util.device import to_device
from util.errors import ConfigError
from util.files import atomic_write_bytes, atomic_write_text
from util.schema import AnyOf, Bool, Choice, Int, List, Section, Str

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "ARTIFACTS_SCHEMA", "Index", "save_npy", "safe_name", "write_embeddings", "embedding_maps",
           "chosen_records", "pick_targets", "describe_record", "check_saliency_config", "write_saliency"]

TARGETS = ("predicted", "true", "all")
# the keys of configs/artifacts.yaml these functions read, checked at start by main_artifacts.py
ARTIFACTS_SCHEMA = {
    "splits": List(Str()), "embeddings": Bool(),
    "record_id": AnyOf(Str(), Int(), List(AnyOf(Str(), Int())), nullable=True),
    "saliency": Section({"split": Str(), "first_n": Int(min=0), "methods": AnyOf(Choice("auto"), List(Str())),
                         "targets": AnyOf(Choice(*TARGETS), List(Str(), min_length=1)), "steps": Int(min=1)}),
    "figures": Section({"ecg_layout": Choice("12x1", "3x4"), "embedding_map": Bool(), "max_points": Int(min=2),
                        "dpi": Int(min=30)}),
}


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
def write_embeddings(by_name: dict, output_dir: str, dataset_key: str, index: Index) -> None:
    """``{output_dir}/{dataset_key}_embeddings.pt`` (``{split: {record_ids, embeddings, labels,
    label_names}}``, one file per embedding field when an objective gives several) and ``.npy`` /
    ``.txt`` copies of every split under ``embeddings/``."""
    key = safe_name(dataset_key)
    for name, splits in by_name.items():
        stem = key if len(by_name) == 1 else f"{key}_{name}"
        target = os.path.join(output_dir, f"{stem}_embeddings.pt")
        atomic_torch_save(splits, target)
        index.add(target, "embeddings", field=name, splits=list(splits))
        for split, payload in splits.items():
            base = os.path.join(output_dir, "embeddings", f"{stem}_{split}")
            os.makedirs(os.path.dirname(base), exist_ok=True)
            save_npy(base + "_embeddings.npy", payload["embeddings"].numpy())
            save_npy(base + "_labels.npy", payload["labels"].numpy())
            atomic_write_text(base + "_record_ids.txt", "\n".join(payload["record_ids"]) + "\n")
            for suffix, kind in (("_embeddings.npy", "embeddings_npy"), ("_labels.npy", "labels_npy"),
                                 ("_record_ids.txt", "record_ids")):
                index.add(base + suffix, kind, field=name, split=split)
        log.info("wrote %s", target)


def embedding_maps(cfg: Config, by_name: dict, task_type: Optional[str], run_logger: Any, index: Index) -> None:
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


def write_saliency(cfg: Config, objective, data, records: list, methods: list[str], run_logger: Any,
                   index: Index) -> int:
    """Maps and figures of ``records`` (``chosen_records``); returns how many maps were written."""
    import matplotlib.pyplot as plt

    from models.figures import ecg_figure, image_overlay_figure

    out = os.path.join(cfg.paths.output_dir, "saliency")
    os.makedirs(out, exist_ok=True)
    written = 0
    for split, position, rid in records:
        sample = data.loaders[split].dataset[(position, 0)]
        batch = to_device(default_collate([sample]), next(objective.parameters()).device)
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
                                         title=title, layout=cfg.figures.ecg_layout, saliency_label=what,
                                         units=spec.units)
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
