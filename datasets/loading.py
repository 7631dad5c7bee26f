"""The modality-agnostic data machinery: one DataLoader per split with dict batches, split
resolution (folds, train subsample, label fractions), DDP sharding, epoch-keyed sampling, worker
setup, and what the model learns about the data (``DataInfo``).

Every random choice for one sample (crop, augmentation, view) comes from a ``torch.Generator``
seeded from ``(seed, epoch, index)`` by ``KeyedDataset``, and the loader's sampler hands out
``(index, epoch)`` pairs (``EpochIndexSampler``). A batch is therefore a pure function of
(seed, epoch, step): the same with 0 or 8 workers, persistent or not, on N ranks, after a resume.

A data kind (``datasets/ecg.py``; CMR and paired data next) provides a *source*:

    source.split(name) -> np.ndarray            store indices of a split (train, val, test, fold_k_*)
    source.dataset(records, train) -> KeyedDataset
    source.info(train_records) -> DataInfo      input fields, sample shapes, labels
    source.device_transforms                    {field: batched transform run on the training device}
    source.nonfinite_records() -> np.ndarray    (optional) records holding NaN / inf, and
    source.record_ids(indices) -> list[str]     their ids, for ``data.nonfinite: error | skip``

and ``datasets.build_data`` turns it into a ``Data`` with ``build_loaders`` below.
"""
from __future__ import annotations

import atexit
import logging
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from util.errors import StoreError
from util.preemption import ignore_stop_signals
from util.schema import AnyOf, Bool, Choice, Float, Int, Str
from util.seeding import derive_seed

log = logging.getLogger(__name__)

__all__ = ["InputSpec", "DataInfo", "Data", "KeyedDataset", "StoreSource", "label_tensor", "EpochIndexSampler",
           "resolve_split", "train_subset", "split_records", "make_loader", "rebatch", "build_loaders",
           "shutdown_workers"]


# the loader keys of configs/data/default.yaml, shared by every data kind
LOADER_SCHEMA = {
    "kind": Str(), "data_root": Str(), "dataset_key": Str(), "build_demo": Bool(), "batch_size": Int(min=1),
    "num_workers": AnyOf(Int(min=0), Choice("auto")), "pin_memory": Bool(), "persistent_workers": Bool(), "drop_last": Bool(),
    "use_train_subsample": Bool(), "fold": Int(min=1, nullable=True),
    "train_fraction": Float(0, 1, min_open=True), "subset_seed": Int(min=0), "nonfinite": Choice("error", "skip"),
    "contract_mismatch": Choice("error", "warn"),
}


@dataclass
class InputSpec:
    """One input field of the batches: the shape of one sample and the names of its rows."""
    shape: tuple                      # e.g. (1, 12, 2500): channels, leads, time steps
    channel_names: Sequence[str] = ()  # e.g. the lead names, in order
    sampling_rate: Optional[float] = None
    units: str = "mV"                  # of the values: mV, or SD for z-scored signals (figures draw it)


@dataclass
class DataInfo:
    """What an objective needs to know about the data it is built for."""
    inputs: dict[str, InputSpec]       # batch field -> spec
    task_type: Optional[str]           # multiclass | multilabel | binary | regression | None (no labels)
    label_names: list = field(default_factory=list)
    train_labels: Optional[np.ndarray] = None  # labels of the training records (class / pos weights)
    source: str = ""                   # where the data comes from, for logs
    contract: dict = field(default_factory=dict)  # how the inputs were prepared (util.contract)
    contract_policy: str = "error"     # data.contract_mismatch: a model trained on other data is refused | warned
    # loader name -> the records it reads: {store (absolute path), split, records (count)}, and for
    # train also train_fraction and subset_seed (an encoder records what it was pretrained on)
    splits: dict = field(default_factory=dict)

    def as_trained(self, trained: dict, where: str) -> "DataInfo":
        """The description a checkpoint's objective was built for (``trained``: its ``data`` entry,
        ``util.train_state.run_identity``), with this data's lead names and rates where the field is
        the same, so that the objective is rebuilt exactly as it was trained. ``where`` names the file."""
        from util.errors import CheckpointError

        inputs = {}
        for name, shape in (trained.get("inputs") or {k: list(v.shape) for k, v in self.inputs.items()}).items():
            given = self.inputs.get(name)
            if given is not None and list(given.shape) != list(shape):
                raise CheckpointError(f"checkpoint '{where}' was trained on '{name}' inputs of shape "
                                      f"{tuple(shape)}, but this data gives {tuple(given.shape)}: use the data "
                                      "settings it was trained with (data.time_steps, data.img_size, data.leads)")
            inputs[name] = (InputSpec(tuple(shape), given.channel_names, given.sampling_rate, given.units) if given
                            else InputSpec(tuple(shape)))
        label_names = [str(n) for n in trained.get("label_names", self.label_names)]
        same_labels = label_names == [str(n) for n in self.label_names]
        return DataInfo(inputs=inputs, task_type=trained.get("task_type", self.task_type), label_names=label_names,
                        train_labels=self.train_labels if same_labels else None, source=self.source,
                        contract=trained.get("contract") or self.contract, contract_policy=self.contract_policy)


@dataclass
class Data:
    """``build_data``'s result: loaders by split name, the description, on-device transforms, and the
    store records each loader reads (``records[name][dataset index]``) with their ids."""
    loaders: dict[str, DataLoader]
    info: DataInfo
    device_transforms: dict[str, Callable] = field(default_factory=dict)
    records: dict[str, np.ndarray] = field(default_factory=dict)
    record_ids: Optional[Callable[[Sequence[int]], list]] = None  # store records -> their ids

    def set_batch_size(self, batch_size: int) -> None:
        """Rebuild every loader with ``batch_size`` (e.g. the largest that fits, ``engine.find_batch_size``);
        the same datasets, samplers' seeds and worker settings."""
        self.loaders = {name: rebatch(loader, batch_size) for name, loader in self.loaders.items()}


class KeyedDataset(Dataset):
    """Base of every dataset: ``dataset[(index, epoch)]`` is ``sample(index, generator)`` plus ``key``
    (the sample's int64 seed, a function of ``(seed, epoch, index)``; e.g. its MAE mask is a function
    of it, whatever rank or batch it lands in) and ``index`` (its position in the dataset, by which
    evaluation puts gathered outputs back in order). A plain ``dataset[index]`` uses ``self.epoch``.

    Subclasses set ``self.seed`` and implement ``__len__`` and ``sample(index, generator) -> dict``.
    """

    seed: int = 0
    epoch: int = 0

    def sample(self, index: int, generator: torch.Generator) -> dict:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer indices (the loaders pass ``(index, epoch)`` instead)."""
        self.epoch = int(epoch)

    def __getitem__(self, item: Union[int, tuple[int, int]]) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        key = derive_seed(self.seed, epoch, index)
        sample = self.sample(int(index), torch.Generator().manual_seed(key))
        sample["key"] = torch.tensor(key, dtype=torch.int64)
        sample["index"] = torch.tensor(int(index), dtype=torch.int64)
        return sample


def label_tensor(store: Any, record: int) -> torch.Tensor:
    """The label of row ``record`` of a ``datasets.store.Store`` as a sample's ``label``: float32 (C,)
    multi-hot / regression row, int64 scalar (multiclass), or zeros(0) (a store without labels)."""
    labels = store.labels
    if labels is None:
        return torch.zeros(0)
    if store.task_type == "multiclass":
        return torch.tensor(int(labels[record]), dtype=torch.long)
    return torch.from_numpy(np.array(labels[record], dtype=np.float32))


class StoreSource:
    """Base of the sources that read one dataset store (``self.store``): the store side of the
    source protocol (splits, non-finite records and their ids, the training labels)."""

    store: Any

    def split(self, name: str) -> np.ndarray:
        return self.store.split(name)

    def nonfinite_records(self) -> np.ndarray:
        return self.store.nonfinite_records()

    def record_ids(self, indices) -> list[str]:
        return [self.store.record_ids[int(i)] for i in indices]

    def train_labels(self, train_records: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The labels of the training records (class / pos weights), or None."""
        if self.store.labels is None or train_records is None:
            return None
        return np.asarray(self.store.labels[np.sort(train_records)])


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


def split_records(source: Any, name: str, data_cfg: Mapping[str, Any]) -> tuple[str, np.ndarray]:
    """``(store split, record indices)`` that loader ``name`` reads: the fold or subsample for
    train / val, and for train the fixed ``train_fraction`` chosen by ``subset_seed``."""
    split = resolve_split(name, fold=data_cfg["fold"], use_train_subsample=bool(data_cfg["use_train_subsample"]))
    records = source.split(split)
    if name == "train":
        records = train_subset(records, data_cfg["train_fraction"], seed=int(data_cfg["subset_seed"] or 0))
    return split, records


def drop_nonfinite(source: Any, split: str, records: np.ndarray, policy: str) -> np.ndarray:
    """``records`` without those holding NaN / inf (``policy`` skip, with a warning naming them), or a
    ``StoreError`` naming the store, split and records (``policy`` error)."""
    if not hasattr(source, "nonfinite_records"):
        return records
    bad = np.intersect1d(np.asarray(records), source.nonfinite_records())
    if len(bad) == 0:
        return records
    ids = source.record_ids(bad[:10])
    shown = ", ".join(ids) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    where = f"{len(bad)} record(s) of the '{split}' split of {getattr(source, 'root', 'the data')}"
    if policy == "error":
        raise StoreError(f"{where} hold NaN or inf values: {shown}. Fix them at ingestion, or leave them "
                         "out with data.nonfinite=skip")
    log.warning("data.nonfinite=skip: leaving out %s that hold NaN or inf values: %s", where, shown)
    return np.setdiff1d(np.asarray(records), bad)


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)
    ignore_stop_signals()  # SIGTERM / SIGUSR1 / Ctrl-C to the process group: the main process checkpoints


_LOADERS: "weakref.WeakSet[DataLoader]" = weakref.WeakSet()


def shutdown_workers(loader: DataLoader) -> None:
    """Stop ``loader``'s worker processes now. Workers ignore the stop signals, so they must be told
    to finish (the exit of the main process would otherwise wait for them)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


@atexit.register
def _shutdown_all() -> None:  # registered after multiprocessing's own exit hook, so it runs before it
    for loader in list(_LOADERS):
        shutdown_workers(loader)


def make_loader(dataset: Dataset, *, train: bool, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = False, drop_last: bool = False, seed: int = 0, world_size: int = 1,
                rank: int = 0, what: str = "this split") -> DataLoader:
    """A ``DataLoader`` over a ``KeyedDataset`` with ``loader.epoch_sampler`` (call
    ``loader.epoch_sampler.set_epoch(epoch)`` before each epoch).

    ``train`` shuffles (one permutation per epoch); other loaders read in order. With
    ``world_size > 1`` each rank reads its ``DistributedSampler`` shard (which pads the last round
    with repeats when the dataset does not divide evenly; evaluation drops them by ``index``)."""
    if world_size > 1:
        base = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                                  drop_last=False)
    elif train:
        base = RandomSampler(dataset, generator=torch.Generator())
    else:
        base = SequentialSampler(dataset)
    sampler = EpochIndexSampler(base, seed=seed)
    if drop_last and len(sampler) < batch_size:
        raise StoreError(f"{what} gives {len(sampler)} records per rank, fewer than "
                         f"batch_size={batch_size}, so drop_last leaves no batch; lower batch_size "
                         "or set drop_last false")
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=pin_memory and torch.cuda.is_available(), drop_last=drop_last,
                        persistent_workers=persistent_workers and num_workers > 0,
                        worker_init_fn=_worker_init if num_workers > 0 else None,
                        generator=torch.Generator().manual_seed(seed))
    loader.epoch_sampler = sampler
    loader.make_args = dict(dataset=dataset, train=train, num_workers=num_workers, pin_memory=pin_memory,
                            persistent_workers=persistent_workers, drop_last=drop_last, seed=seed,
                            world_size=world_size, rank=rank, what=what)
    if num_workers > 0:
        _LOADERS.add(loader)
    return loader


def rebatch(loader: DataLoader, batch_size: int) -> DataLoader:
    """``loader`` made again by ``make_loader`` with another ``batch_size`` (a ``DataLoader`` cannot
    change it); the old one's workers are stopped."""
    shutdown_workers(loader)
    _LOADERS.discard(loader)
    return make_loader(batch_size=batch_size, **loader.make_args)


def resolve_num_workers(value: Any, world_size: int = 1) -> int:
    """``auto``: on a GPU, enough workers to feed it (the cores of this rank but one, at most 8); on a
    CPU none: the step is compute-bound and a worker process takes a core from it (the pipeline
    benchmark, demo model on 2 cores: 63 samples/s end to end without workers, 94% of the model-only
    step, against 55 with one worker)."""
    if value != "auto":
        return int(value)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    if torch.cuda.is_available():
        return max(1, min(8, cores // max(1, world_size) - 1))
    return 0


def build_loaders(source: Any, data_cfg: Mapping[str, Any], splits: Sequence[str], *, seed: int,
                  world_size: int = 1, rank: int = 0,
                  training: bool = True) -> tuple[dict[str, DataLoader], dict[str, np.ndarray]]:
    """One loader per split name (``train`` shuffles, augments and drops its last partial batch when
    ``data.drop_last``) and the record indices each reads. Reads the loader keys of
    ``configs/data/default.yaml``: batch_size, num_workers, pin_memory, persistent_workers, drop_last,
    use_train_subsample, fold, train_fraction, subset_seed. ``training=False`` (embeddings, saliency):
    every loader, ``train`` included, reads its whole split in order without augmentation."""
    loaders, records_of = {}, {}
    for name in splits:
        train = training and name == "train"
        split, records = split_records(source, name, data_cfg if training else {**data_cfg, "train_fraction": 1.0})
        records = drop_nonfinite(source, split, records, data_cfg["nonfinite"])
        if len(records) == 0:
            raise StoreError(f"the '{split}' split of {getattr(source, 'root', 'the data')} is empty, so there is "
                             f"nothing to {'train on' if train else 'evaluate'}; re-split the store "
                             "(datasets.store.make_splits) or choose another fold / split")
        dataset = source.dataset(records, train=train)
        dataset.split = split
        loaders[name] = make_loader(
            dataset, train=train, batch_size=int(data_cfg["batch_size"]),
            num_workers=resolve_num_workers(data_cfg["num_workers"], world_size),
            pin_memory=bool(data_cfg["pin_memory"]), persistent_workers=bool(data_cfg["persistent_workers"]),
            drop_last=train and bool(data_cfg["drop_last"]), seed=seed, world_size=world_size, rank=rank,
            what=f"the '{split}' split of {getattr(source, 'root', 'the data')}")
        records_of[name] = records
    return loaders, records_of
