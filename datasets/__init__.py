"""Datasets: the on-disk store, the data kinds (ECG, CMR, paired ECG-CMR), augmentations,
demo data, and the one data entry point, ``build_data``.

    data = build_data(cfg.data, ("train", "val", "test"), seed=cfg.seed, world_size=W, rank=r)
    data.loaders["train"]        # DataLoader of dict batches (ecg, label, key, index)
    data.info                    # DataInfo: input fields and sample shapes, task type, label names
    data.device_transforms       # {field: batched augmentation to run on the training device}

``data.kind`` picks the source in ``KINDS``; adding a data kind is a new module with a source class
(``datasets.loading`` describes the protocol), one line here, and its configs.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Mapping, Sequence

from util.errors import ConfigError

__all__ = ["KINDS", "build_data", "config_schema"]

# data.kind -> its source class (a dotted path, imported on use so `import datasets.store` stays light)
KINDS = {"ecg": "datasets.ecg.ECGSource", "cmr": "datasets.cmr.CMRSource", "paired": "datasets.paired.PairedSource"}

log = logging.getLogger(__name__)


def _source_class(kind: str):
    source_cls = KINDS[kind]
    if isinstance(source_cls, str):
        module, _, name = source_cls.rpartition(".")
        source_cls = getattr(importlib.import_module(module), name)
    return source_cls


def config_schema(data_cfg: Mapping) -> tuple[dict, bool]:
    """``(rules, closed)`` of a data config: the loader keys and those of its kind's ``SCHEMA``
    (``kind`` itself is checked against ``KINDS``); ``closed`` is False for a kind without one."""
    from datasets.loading import LOADER_SCHEMA
    from util.schema import Choice

    kind = data_cfg.get("kind")
    extra = getattr(_source_class(kind), "SCHEMA", None) if kind in KINDS else None
    return {**LOADER_SCHEMA, "kind": Choice(*KINDS), **(extra or {})}, extra is not None


def build_data(data_cfg: Mapping, splits: Sequence[str], *, seed: int, world_size: int = 1, rank: int = 0,
               training: bool = True):
    """A ``datasets.loading.Data`` with loaders of ``splits`` for the data config ``data_cfg``.
    ``training=False``: every loader reads its whole split in order, unaugmented (``build_loaders``);
    the training labels (class weights) still come from the train split when there is one."""
    kind = data_cfg["kind"]
    if kind not in KINDS:
        raise ConfigError(f"data.kind '{kind}' is not a data kind; known: {', '.join(KINDS)}")
    from datasets.loading import Data, build_loaders

    source = _source_class(kind)(data_cfg, seed)
    loaders, records = build_loaders(source, data_cfg, splits, seed=seed, world_size=world_size, rank=rank,
                                     training=training)
    for name, loader in loaders.items():
        log.debug("%s loader: %d records of split '%s', %d batches of %d per rank", name, len(records[name]),
                  loader.dataset.split, len(loader), loader.batch_size)
    train_records = records.get("train")
    if train_records is None and not training:
        train_records = _train_records(source, data_cfg)
    info = source.info(train_records)
    info.contract_policy = data_cfg["contract_mismatch"]
    for name, loader in loaders.items():
        info.splits[name] = {"store": os.path.abspath(info.source) if info.source else None,
                             "split": loader.dataset.split,
                             "records": len(records[name])}
        if name == "train":
            info.splits[name].update(train_fraction=data_cfg["train_fraction"], subset_seed=data_cfg["subset_seed"])
    return Data(loaders=loaders, info=info, device_transforms=source.device_transforms if training else {},
                records=records, record_ids=getattr(source, "record_ids", None))


def _train_records(source, data_cfg: Mapping):
    """The records of the train split, or None where the store has none (labels for class weights)."""
    from datasets.loading import split_records
    from util.errors import StoreError

    try:
        return split_records(source, "train", {**data_cfg, "train_fraction": 1.0})[1]
    except (StoreError, KeyError):
        return None
