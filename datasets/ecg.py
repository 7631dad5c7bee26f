"""The ECG data kind: crops of multi-lead signals from a dataset store, with their labels.

``ECGSource`` (``data.kind: ecg``) opens ``<data_root>/<dataset_key>`` (building the demo first
when ``data.build_demo``), refuses a store whose sampling rate or leads differ from the config,
and builds the augmentations (per sample in the DataLoader workers, or batched on the training
device with ``data.augment_device=device``). A sample is the dict

    ecg     float32 (1, n_leads, time_steps)   a random crop in training, the first samples otherwise
    label   float32 (C,) multi-hot / regression row, int64 scalar (multiclass), or zeros(0) (no labels)
    key     int64   the sample's seed (see ``datasets.loading.KeyedDataset``)
    index   int64   its position in the split

    data = datasets.build_data(cfg.data, ("train", "val"), seed=cfg.seed)
    for epoch in range(start_epoch, epochs):
        data.loaders["train"].epoch_sampler.set_epoch(epoch)
        for batch in data.loaders["train"]:      # batch["ecg"] (B, 1, leads, time_steps)
            ...
"""
from __future__ import annotations

import os
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from datasets.augment import CONFIG_SCHEMA as AUGMENT_SCHEMA
from datasets.augment import build_ecg_transforms
from datasets.loading import DataInfo, InputSpec, KeyedDataset, StoreSource, label_tensor
from datasets.preprocess import ZSCORES, zscore_leads
from datasets.store import Store, StoreError, open_store
from util.schema import AnyOf, Choice, Float, Int, List, Str

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
FIELD = "ecg"


class ECGDataset(KeyedDataset):
    """Crops of the ECGs of one split of a store.

    Args:
        store: a ``Store`` or the path of one (modality ecg).
        split: split name (``store.split(split)``) or an array of store indices.
        time_steps: crop length in samples (None = the whole record); refused when > T.
        leads: lead names or indices to keep, in that order (None = all, in store order).
        train: random crop start uniform in ``[0, T - time_steps]``; otherwise start 0.
        normalize: none | lead | group: each crop's leads (or lead groups) to zero mean and unit
            variance before the transform (``datasets.preprocess.zscore_leads``).
        transform: ``transform(x, generator) -> x`` on ``(n_leads, time_steps)`` float32.
        seed: base seed of the per-sample generators.

    ``dataset[i]`` or ``dataset[(i, epoch)]`` is a dict with ``ecg``, ``label``, ``key`` and
    ``index`` (see the module docstring).
    """

    def __init__(self, store: Union[Store, str, os.PathLike], split: Union[str, Sequence[int]], *,
                 time_steps: Optional[int], leads: Optional[Sequence[Union[str, int]]] = None, train: bool,
                 transform: Optional[Transform] = None, seed: int = 0, normalize: str = "none"):
        self.store = store if isinstance(store, Store) else Store(store)
        if self.store.modality != "ecg":
            raise StoreError(f"ECGDataset needs an ECG store; {self.store.root} is a {self.store.modality} store")
        self.split = split if isinstance(split, str) else "custom"
        self.indices = self.store.split(split) if isinstance(split, str) else np.asarray(split, dtype=np.int64)
        self.length = self.store.shape[2]
        self.time_steps = self.length if time_steps is None else int(time_steps)
        if not 0 < self.time_steps <= self.length:
            raise StoreError(f"time_steps={self.time_steps} does not fit the records of {self.store.root}, "
                             f"which have T={self.length} samples ({self.length / self.store.sampling_rate:g} s at "
                             f"{self.store.sampling_rate} Hz); use time_steps <= {self.length}")
        self.lead_index = self._lead_index(leads)
        self.lead_names = [self.store.lead_names[i] for i in self.lead_index]
        self.train = train
        self.normalize = normalize
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def _lead_index(self, leads) -> list[int]:
        names = self.store.lead_names
        if leads is None:
            return list(range(len(names)))
        if len(leads) == 0:
            raise StoreError("leads (input_electrodes) is empty; give lead names, e.g. ['I', 'II'], or null for all")
        index = []
        for lead in leads:
            if isinstance(lead, (int, np.integer)) and not isinstance(lead, bool):
                if not 0 <= lead < len(names):
                    raise StoreError(f"lead index {lead} is out of range: the store has {len(names)} leads {names}")
                index.append(int(lead))
            elif lead in names:
                index.append(names.index(lead))
            else:
                raise StoreError(f"lead {lead!r} is not in store {self.store.root}; its leads are {names}")
        if len(set(index)) != len(index):
            raise StoreError(f"leads {list(leads)} name some lead twice")
        return index

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, index: int, generator: torch.Generator) -> dict:
        record = int(self.indices[index])
        start = 0
        if self.train and self.time_steps < self.length:
            start = int(torch.randint(0, self.length - self.time_steps + 1, (1,), generator=generator))
        window = self.store.read(record, start, start + self.time_steps, self.lead_index).astype(np.float32)
        x = torch.from_numpy(zscore_leads(window, self.normalize, self.lead_names))  # (n_leads, time_steps)
        if self.transform is not None:
            x = self.transform(x, generator)
        return {FIELD: x.unsqueeze(0), "label": label_tensor(self.store, record)}


class ECGSource(StoreSource):
    """The ECG data kind for ``datasets.build_data`` (see ``datasets.loading`` for the protocol).

    Reads ``data.`` build_demo, data_root, dataset_key, expected_leads, expected_sampling_rate,
    time_steps, input_electrodes, normalize and the augmentation keys of ``configs/data/ecg.yaml``."""

    SCHEMA = {  # the ECG keys of a data config, besides datasets.loading.LOADER_SCHEMA
        "time_steps": Int(min=1), "input_electrodes": List(AnyOf(Str(), Int(min=0)), min_length=1, nullable=True),
        "expected_sampling_rate": Float(min=0, min_open=True, nullable=True),
        "expected_leads": List(Str(), min_length=1, nullable=True), "normalize": Choice(*ZSCORES),
        **AUGMENT_SCHEMA,
    }

    def __init__(self, data_cfg: Mapping, seed: int) -> None:
        if data_cfg["build_demo"]:
            from datasets.demo import ensure_demo

            ensure_demo(data_cfg["data_root"])
        if data_cfg["time_steps"] is None:
            raise StoreError("data.time_steps is null (the data config lacks time_steps); set the crop length in "
                             "samples, e.g. data.time_steps=2500 (5 s at 500 Hz)")
        self.store = open_store(data_cfg["data_root"], data_cfg["dataset_key"])
        self.root = self.store.root
        self.store.check_compatible(lead_names=data_cfg["expected_leads"],
                                    sampling_rate=data_cfg["expected_sampling_rate"])
        self.time_steps, self.leads, self.seed = int(data_cfg["time_steps"]), data_cfg["input_electrodes"], seed
        self.normalize = data_cfg["normalize"]
        self.train_transform, batch_transform = build_ecg_transforms(data_cfg)
        self.device_transforms = {FIELD: batch_transform} if batch_transform is not None else {}
        self._probe = self.dataset(np.zeros(0, dtype=np.int64), train=False)  # checks time_steps and leads now

    def dataset(self, records: np.ndarray, train: bool) -> ECGDataset:
        return ECGDataset(self.store, records, time_steps=self.time_steps, leads=self.leads, train=train,
                          transform=self.train_transform if train else None, seed=self.seed, normalize=self.normalize)

    def info(self, train_records: Optional[np.ndarray]) -> DataInfo:
        labels = self.train_labels(train_records)
        # what the model is fed: these leads, in mV or, z-scored at ingest or per crop, in standard deviations
        contract = {**self.store.contract, "channel_names": list(self._probe.lead_names), "normalize": self.normalize}
        scaled = self.normalize != "none" or contract.get("zscore", "none") != "none"
        spec = InputSpec(shape=(1, len(self._probe.lead_index), self.time_steps),
                         channel_names=list(self._probe.lead_names), sampling_rate=self.store.sampling_rate,
                         units="SD" if scaled else str(contract.get("units") or "mV"))
        return DataInfo(inputs={FIELD: spec}, task_type=self.store.task_type, label_names=self.store.label_names,
                        train_labels=labels, source=str(self.store.root), contract=contract)
