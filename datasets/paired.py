"""The paired data kind: an ECG store and a CMR store joined on record id (the same subject's ECG and
CMR), for multimodal contrastive pretraining.

``PairedSource`` (``data.kind: paired``) builds the ECG side from ``data.dataset_key`` and
``data.ecg.*`` (the keys of ``configs/data/ecg.yaml``) and the CMR side from ``data.cmr.dataset_key``
and ``data.cmr.*`` (those of ``configs/data/cmr.yaml``; one view). Each side keeps its own
augmentations (per sample in the workers, or on the device). The ECG store is authoritative for the
splits, labels and patients; an ECG record without a CMR partner is left out (the log gives the
count and examples; no pair at all is an error), and partners that the CMR store puts in another
split are counted in the log. A sample is the dict

    ecg     float32 (1, n_leads, time_steps)
    cmr     float32 (C, img_size, img_size)
    label   the ECG store's label (zeros(0) without labels)
    key, index                     (see ``datasets.loading.KeyedDataset``)

Both modalities of a sample draw from the sample's one generator, so a pair is a pure function of
(seed, epoch, index), as everywhere else.
"""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import numpy as np
import torch

from datasets.cmr import CMRSource
from datasets.ecg import ECGSource
from datasets.loading import DataInfo, KeyedDataset, StoreSource
from datasets.store import StoreError
from util.schema import Section, Str

log = logging.getLogger(__name__)

SHARED = ("build_demo", "data_root")  # loader keys each side reads too


class PairedDataset(KeyedDataset):
    """Pairs ``ecg[i]`` and ``cmr[i]`` of two datasets over partner records (see the module docstring)."""

    def __init__(self, ecg: KeyedDataset, cmr: KeyedDataset, seed: int) -> None:
        if len(ecg) != len(cmr):
            raise ValueError(f"paired datasets differ in length: {len(ecg)} ECGs, {len(cmr)} images")
        self.ecg, self.cmr, self.seed, self.epoch = ecg, cmr, seed, 0

    def __len__(self) -> int:
        return len(self.ecg)

    def sample(self, index: int, generator: torch.Generator) -> dict:
        out = self.ecg.sample(index, generator)
        out["cmr"] = self.cmr.sample(index, generator)["cmr"]
        return out


class PairedSource(StoreSource):
    """The paired data kind for ``datasets.build_data`` (``datasets.loading`` describes the protocol)."""

    SCHEMA = {
        "ecg": Section(ECGSource.SCHEMA),
        "cmr": Section({**{k: v for k, v in CMRSource.SCHEMA.items() if k != "views"}, "dataset_key": Str()}),
    }

    def __init__(self, data_cfg: Mapping, seed: int) -> None:
        shared = {k: data_cfg[k] for k in SHARED}
        self.ecg = ECGSource({**shared, "dataset_key": data_cfg["dataset_key"], **data_cfg["ecg"]}, seed)
        self.cmr = CMRSource({**shared, **data_cfg["cmr"], "views": 1}, seed)
        self.store, self.root, self.seed = self.ecg.store, self.ecg.root, seed
        image_index = {rid: j for j, rid in enumerate(self.cmr.store.record_ids)}
        self.partner = np.array([image_index.get(rid, -1) for rid in self.store.record_ids], dtype=np.int64)
        lonely = np.flatnonzero(self.partner < 0)
        if len(lonely) == len(self.partner):
            raise StoreError(f"no record of {self.root} has a partner in {self.cmr.root}: the stores share no record "
                             "id (pair them by subject when ingesting, e.g. the UK Biobank eid)")
        if len(lonely):
            examples = ", ".join(self.store.record_ids[int(i)] for i in lonely[:5])
            log.warning("%d of %d ECG records of %s have no image in %s and are left out (e.g. %s)", len(lonely),
                        len(self.partner), self.root, self.cmr.root, examples)
        self.device_transforms = {**self.ecg.device_transforms, **self.cmr.device_transforms}

    def split(self, name: str) -> np.ndarray:
        records = self.store.split(name)
        records = records[self.partner[records] >= 0]
        if name in self.cmr.store.splits:
            elsewhere = np.setdiff1d(self.partner[records], self.cmr.store.split(name))
            if len(elsewhere):
                log.warning("%d image(s) paired with the '%s' split of %s are in another split of %s; the ECG "
                            "store's splits are used", len(elsewhere), name, self.root, self.cmr.root)
        return records

    def nonfinite_records(self) -> np.ndarray:
        bad_images = self.cmr.nonfinite_records()
        with_bad_image = np.flatnonzero(np.isin(self.partner, bad_images) & (self.partner >= 0))
        return np.union1d(self.ecg.nonfinite_records(), with_bad_image).astype(np.int64)

    def dataset(self, records: np.ndarray, train: bool) -> PairedDataset:
        return PairedDataset(self.ecg.dataset(records, train), self.cmr.dataset(self.partner[records], train), self.seed)

    def info(self, train_records: Optional[np.ndarray]) -> DataInfo:
        ecg = self.ecg.info(train_records)
        cmr = self.cmr.info(None)
        return DataInfo(inputs={**ecg.inputs, **cmr.inputs}, task_type=ecg.task_type, label_names=ecg.label_names,
                        train_labels=ecg.train_labels, source=ecg.source,
                        contract={"modality": "paired", "ecg": ecg.contract, "cmr": cmr.contract})
