"""ECG datasets and loaders over a dataset store.

Every random choice for one sample (the crop, the augmentation) comes from a ``torch.Generator``
seeded from ``(seed, epoch, index)``. The loader's sampler hands out ``(index, epoch)`` pairs
(``EpochIndexSampler``), so a batch is a pure function of (seed, epoch, step): the same with 0 or
8 workers, persistent or not, and after a resume.

    loaders = build_ecg_loaders(cfg.data, seed=cfg.seed, train_transform=augment)
    for epoch in range(start_epoch, epochs):
        loaders["train"].epoch_sampler.set_epoch(epoch)
        for x, y in loaders["train"]:      # x (B, 1, leads, time_steps) float32
            ...
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from datasets.store import Store, StoreError
from util.seeding import derive_seed

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def sample_key(seed: int, epoch: int, index: int) -> int:
    """A 63-bit key that is a pure function of ``(seed, epoch, index)``."""
    return derive_seed(seed, epoch, index)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A ``torch.Generator`` seeded deterministically from ``(seed, epoch, index)``."""
    return torch.Generator().manual_seed(sample_key(seed, epoch, index))


class ECGDataset(Dataset):
    """Crops of the ECGs of one split of a store.

    Args:
        store: a ``Store`` or the path of one (modality ecg).
        split: split name (``store.split(split)``) or an array of store indices.
        time_steps: crop length in samples (None = the whole record); refused when > T.
        leads: lead names or indices to keep, in that order (None = all, in store order).
        train: random crop start uniform in ``[0, T - time_steps]``; otherwise start 0.
        transform: ``transform(x, generator) -> x`` on ``(n_leads, time_steps)`` float32.
        seed: base seed of the per-sample generators.

    ``dataset[i]`` or ``dataset[(i, epoch)]`` returns ``(x, y, key)``: ``x`` float32
    ``(1, n_leads, time_steps)``; ``y`` float32 ``(C,)`` (multilabel / regression rows), int64
    scalar (multiclass) or ``zeros(0)`` (no labels); ``key`` the sample's int64 ``sample_key`` (its
    MAE mask is a function of it, whatever rank or batch the sample lands in). A plain ``i`` uses
    ``self.epoch``.
    """

    def __init__(self, store: Union[Store, str, os.PathLike], split: Union[str, Sequence[int]], *,
                 time_steps: Optional[int], leads: Optional[Sequence[Union[str, int]]] = None, train: bool,
                 transform: Optional[Transform] = None, seed: int = 0):
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

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the loaders pass ``(index, epoch)`` instead)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        key = sample_key(self.seed, epoch, index)
        generator = torch.Generator().manual_seed(key)
        record = int(self.indices[index])
        start = 0
        if self.train and self.time_steps < self.length:
            start = int(torch.randint(0, self.length - self.time_steps + 1, (1,), generator=generator))
        window = self.store.read(record, start, start + self.time_steps, self.lead_index)
        x = torch.from_numpy(window.astype(np.float32, copy=False))  # (n_leads, time_steps)
        if self.transform is not None:
            x = self.transform(x, generator)
        return x.unsqueeze(0), self.target(record), torch.tensor(key, dtype=torch.int64)

    def target(self, record: int) -> torch.Tensor:
        """The label of store row ``record`` as a tensor (see the class docstring)."""
        labels = self.store.labels
        if labels is None:
            return torch.zeros(0)
        if self.store.task_type == "multiclass":
            return torch.tensor(int(labels[record]), dtype=torch.long)
        return torch.from_numpy(np.array(labels[record], dtype=np.float32))


class EpochIndexSampler(Sampler):
    """Wraps a sampler; yields ``(index, epoch)`` so each sample's randomness depends on the epoch.

    ``set_epoch(e)`` forwards to a base sampler that has ``set_epoch`` (``DistributedSampler``);
    a shuffling sampler with a generator (``RandomSampler``) is reseeded with ``seed + e``, so the
    order of epoch ``e`` is a pure function of ``(seed, e)``.
    """

    def __init__(self, base_sampler: Sampler, seed: int = 0):
        self.base = base_sampler
        self.seed = int(seed)
        if isinstance(base_sampler, RandomSampler) and base_sampler.generator is None:
            base_sampler.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch ``epoch``; ``skip`` leading samples are left out (a run resumed mid-epoch)."""
        self.epoch = int(epoch)
        self.skip = int(skip)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)
        elif getattr(self.base, "generator", None) is not None:
            self.base.generator.manual_seed(self.seed + self.epoch)

    def __iter__(self):
        epoch = self.epoch
        for k, index in enumerate(self.base):
            if k >= self.skip:
                yield int(index), epoch

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


REQUIRED_KEYS = ("data_root", "dataset_key", "batch_size", "time_steps")


def open_store(data_root: Union[str, os.PathLike], dataset_key: str) -> Store:
    """The store ``<data_root>/<dataset_key>``; a missing one is refused with how to build it."""
    root = Path(data_root) / dataset_key
    if not root.is_dir():
        if dataset_key.startswith("demo"):
            how = f"build the demo with: python -m datasets.demo --data-dir {data_root}"
        else:
            how = ("ingest the dataset into a store there (datasets.store.write_store / StoreWriter), "
                   "or point data_root / dataset_key at an existing store")
        raise StoreError(f"dataset store {root} does not exist; {how}")
    return Store(root)


def resolve_split(name: str, *, fold: Optional[int] = None, use_train_subsample: bool = False) -> str:
    """The store split that loader ``name`` reads.

    train -> fold_{fold}_train | train_subsample | train; val -> fold_{fold}_val | val; others as named.
    """
    if fold is not None and use_train_subsample:
        raise StoreError("use_train_subsample and fold cannot be combined: the folds split the full train set")
    if name == "train":
        return f"fold_{fold}_train" if fold is not None else ("train_subsample" if use_train_subsample else "train")
    if name == "val" and fold is not None:
        return f"fold_{fold}_val"
    return name


def train_subset(records: np.ndarray, fraction: Optional[float], seed: int = 0) -> np.ndarray:
    """A fixed random ``fraction`` of ``records`` (label-efficiency runs), in store order.

    The subset depends on ``seed`` only (not on the run's seed), so runs that differ in their
    initialisation (e.g. pretrained vs from scratch) train on the same labelled records."""
    if fraction is None or float(fraction) >= 1.0:
        return records
    fraction = float(fraction)
    if not 0.0 < fraction < 1.0:
        raise StoreError(f"data.train_fraction must be in (0, 1], got {fraction}")
    keep = max(1, int(round(fraction * len(records))))
    chosen = np.random.default_rng(seed).choice(len(records), size=keep, replace=False)
    return np.sort(np.asarray(records)[chosen])


def build_ecg_loaders(data_cfg: dict, *, splits: Sequence[str] = ("train", "val"), seed: int = 0,
                      train_transform: Optional[Transform] = None, world_size: int = 1,
                      rank: int = 0) -> dict[str, DataLoader]:
    """One ``DataLoader`` per split name, keyed by that name.

    data_cfg keys: data_root, dataset_key, batch_size, time_steps (required); num_workers (0),
    pin_memory (False), persistent_workers (False), input_electrodes (None = all leads),
    use_train_subsample (False), fold (None), train_fraction (None = all; a fixed random fraction
    of the train split chosen by subset_seed), drop_last (True, train only), expected_leads and
    expected_sampling_rate (None = unchecked).

    "train" shuffles and gets ``train_transform``; other splits are read in order, cropped at
    start 0. With ``world_size > 1`` each rank reads its ``DistributedSampler`` shard (which
    pads the last round with repeats when the split does not divide evenly). Each loader has
    ``loader.epoch_sampler``: call ``loader.epoch_sampler.set_epoch(epoch)`` before each epoch.
    """
    missing = [k for k in REQUIRED_KEYS if data_cfg.get(k) is None]
    if missing:
        raise StoreError(f"data config lacks {missing}; set data.{missing[0]}")
    store = open_store(data_cfg["data_root"], data_cfg["dataset_key"])
    store.check_compatible(lead_names=data_cfg.get("expected_leads"),
                           sampling_rate=data_cfg.get("expected_sampling_rate"))
    num_workers = int(data_cfg.get("num_workers") or 0)
    loaders = {}
    for name in splits:
        train = name == "train"
        split = resolve_split(name, fold=data_cfg.get("fold"),
                              use_train_subsample=bool(data_cfg.get("use_train_subsample", False)))
        records = store.split(split)
        if train:
            records = train_subset(records, data_cfg.get("train_fraction"), seed=int(data_cfg.get("subset_seed") or 0))
        dataset = ECGDataset(store, records, time_steps=data_cfg["time_steps"], leads=data_cfg.get("input_electrodes"),
                             train=train, transform=train_transform if train else None, seed=seed)
        dataset.split = split
        if world_size > 1:
            base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                      drop_last=False)
        elif train:
            base = RandomSampler(dataset, generator=torch.Generator())
        else:
            base = SequentialSampler(dataset)
        sampler = EpochIndexSampler(base, seed=seed)
        drop_last = train and bool(data_cfg.get("drop_last", True))
        if drop_last and len(sampler) < int(data_cfg["batch_size"]):
            raise StoreError(f"the '{split}' split of {store.root} gives {len(sampler)} records per rank, fewer than "
                             f"batch_size={data_cfg['batch_size']}, so drop_last leaves no batch; lower batch_size "
                             "or set drop_last false")
        loader = DataLoader(dataset, batch_size=int(data_cfg["batch_size"]), sampler=sampler,
                            num_workers=num_workers,
                            pin_memory=bool(data_cfg.get("pin_memory", False)) and torch.cuda.is_available(),
                            drop_last=drop_last,
                            persistent_workers=bool(data_cfg.get("persistent_workers", False)) and num_workers > 0,
                            worker_init_fn=_worker_init if num_workers > 0 else None,
                            generator=torch.Generator().manual_seed(seed))
        loader.epoch_sampler = sampler
        loaders[name] = loader
    return loaders
