"""ECG tensors already prepared for the reference code, saved with ``torch.save``.

Two raw layouts:

(a) one tensor file, named with ``--signals``: (N, leads, T) or (N, 1, leads, T), plus optionally
    ``--labels`` with (N,) class indices or (N, C) multi-hot / regression targets::

        python -m datasets.ingest reference_pt --raw DIR --signals ecgs.pt --labels y.pt \\
            --native-rate 500 --label-names NORM,MI,STTC,CD,HYP --out data/ref

(b) the Hydra/Lightning project's split files in the raw folder (used when ``--signals`` is not
    given): ``train_split.pt``, ``val_split.pt``, ``test_split.pt`` (those present), each a dict
    ``{"data": (N, leads, T) tensor, "targets": (N,) or (N, C), "record_ids": [str, ...]}``; the
    file names give the official splits.

Options:
    --signals FILE.pt      layout (a); a relative path is taken inside the raw folder
    --labels FILE.pt       layout (a): the targets (default: no labels)
    --label-names a,b,c    names of the classes / columns (default class_0 ... or target_0 ...)
    --task multilabel|multiclass|regression
                           default: (N,) integers -> multiclass, (N, C) of 0/1 -> multilabel,
                           otherwise regression
    --native-rate HZ       sampling rate of the tensors (required; named so because ``--rate`` is
                           ingest's own option, the rate of the store)
    --leads I,II,...       lead names of the tensors' lead axis, in order (default the 12 standard leads)
    --units mV|uV|V        amplitude unit of the tensors (default mV)

Every file is loaded with ``torch.load(weights_only=True)``: a file that needs pickle (numpy
arrays, custom classes) is refused at index time with a ValueError saying which global it wanted.
Files are memory-mapped (``mmap=True``; files in torch's legacy format are loaded whole) and kept
per worker process, so ``read`` costs one slice.

What comes out: record_id the file's ``record_ids`` (layout b; a duplicate goes to
``index_problems``) or ``<file stem>_<row, 6 digits>``; no patient ids (neither layout has them).
``read`` returns (leads, T) float32 in ``--units`` at ``--native-rate``.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from datasets.sources import BadRecord, RecordRef, Signal
from datasets.store import STANDARD_LEADS

TASKS = ("multilabel", "multiclass", "regression")
SPLITS = ("train", "val", "test")


def load_tensor_file(path: Path, mmap: bool = True):
    """``torch.load(path, weights_only=True)``, memory-mapped where the file's format allows."""
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as e:
            if mmap and "mmap" in str(e):  # legacy (non-zip) torch.save format: no mapping possible
                return torch.load(path, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as e:
        wanted = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it stores a {wanted.group(1)} object" if wanted else str(e).splitlines()[0]
        raise ValueError(f"reference_pt: {path} needs pickle to load ({what}), and only "
                         "torch.load(weights_only=True) is used, which cannot run code from the file; "
                         "re-save it holding only tensors, lists, dicts, strings and numbers "
                         "(e.g. torch.from_numpy(array) instead of a numpy array)") from None


def _names(text) -> list:
    return [v.strip() for v in str(text).split(",") if v.strip()] if text else []


def _signal_shape(x, what: str) -> tuple:
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"reference_pt: {what} holds a {type(x).__name__}, not a tensor")
    if x.ndim == 4 and x.shape[1] == 1:
        return int(x.shape[0]), int(x.shape[2]), int(x.shape[3])
    if x.ndim != 3:
        raise ValueError(f"reference_pt: {what} has shape {tuple(x.shape)}; expected (N, leads, T) or (N, 1, leads, T)")
    return tuple(int(v) for v in x.shape)


class ReferencePTSource:
    name = "reference_pt"
    modality = "ecg"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--signals", default=None,
                            help="a .pt tensor (N, leads, T) or (N, 1, leads, T); default: the raw folder's "
                                 "{train,val,test}_split.pt files")
        parser.add_argument("--labels", default=None, help="with --signals: a .pt tensor (N,) or (N, C) of targets")
        parser.add_argument("--label-names", default=None, help="comma-separated names of the classes / columns")
        parser.add_argument("--task", choices=TASKS, default=None, help="the label task (default: inferred)")
        parser.add_argument("--native-rate", type=float, required=True, help="sampling rate of the tensors in Hz")
        parser.add_argument("--leads", default=",".join(STANDARD_LEADS),
                            help="comma-separated lead names of the tensors' lead axis (default the 12 standard)")
        parser.add_argument("--units", default="mV", help="amplitude unit of the tensors: mV (default), uV or V")

    def __init__(self, raw: Path, options: argparse.Namespace):
        self.raw = Path(raw)
        self.signals = getattr(options, "signals", None)
        self.labels_file = getattr(options, "labels", None)
        self.names = _names(getattr(options, "label_names", None))
        self.task = getattr(options, "task", None)
        if self.task not in (None, *TASKS):
            raise ValueError(f"reference_pt: --task must be one of {', '.join(TASKS)}, not {self.task!r}")
        rate = getattr(options, "native_rate", None)
        if rate is None or not float(rate) > 0:
            raise ValueError("reference_pt: --native-rate (the tensors' sampling rate in Hz) is required")
        self.rate = float(rate)
        self.leads = _names(getattr(options, "leads", None)) or list(STANDARD_LEADS)
        self.units = getattr(options, "units", None) or "mV"
        if self.labels_file and not self.signals:
            raise ValueError("reference_pt: --labels goes with --signals (split files carry their own targets)")
        self.index_problems: list = []
        self.excluded: dict = {}
        self.task_type = None
        self.label_names: list = []
        self.provenance = "ECG tensors prepared for the reference code"
        self._cache: dict = {}  # (path, key) -> loaded (memory-mapped) tensor, in this process only
        self._pid = None

    def __getstate__(self):  # the loaded tensors stay in the process that loaded them
        state = dict(self.__dict__)
        state["_cache"], state["_pid"] = {}, None
        return state

    def _path(self, name) -> Path:
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.raw / path

    # ---- labels ---------------------------------------------------------------------------------
    def _set_task(self, y) -> None:
        """task_type and label_names from the targets ``y`` (a tensor, all records) and the options."""
        import torch

        if y.ndim not in (1, 2):
            raise ValueError(f"reference_pt: targets of shape {tuple(y.shape)}; expected (N,) or (N, C)")
        yf = y.double()
        integral = bool(torch.all(yf == torch.round(yf))) and bool(torch.all(yf >= 0))
        task = self.task or ("multiclass" if y.ndim == 1 and integral else
                             "multilabel" if y.ndim == 2 and bool(torch.all((yf == 0) | (yf == 1))) else
                             "regression")
        if task == "multiclass" and (y.ndim != 1 or not integral):
            raise ValueError("reference_pt: multiclass targets must be (N,) non-negative class indices")
        if task == "multilabel" and y.ndim != 2:
            raise ValueError("reference_pt: multilabel targets must be (N, C) multi-hot")
        width = int(yf.max().item()) + 1 if task == "multiclass" and len(y) else (y.shape[1] if y.ndim == 2 else 1)
        prefix = "target" if task == "regression" else "class"
        names = self.names or [f"{prefix}_{j}" for j in range(width)]
        if (task == "multiclass" and len(names) < width) or (task != "multiclass" and len(names) != width):
            raise ValueError(f"reference_pt: --label-names gives {len(names)} name(s) for {width} "
                             f"{'classes' if task == 'multiclass' else 'target columns'}")
        self.task_type, self.label_names = task, names

    def _record_labels(self, y):
        if self.task_type == "multiclass":
            return self.label_names[int(y)]
        if self.task_type == "multilabel":
            return [n for n, v in zip(self.label_names, y.tolist()) if v > 0.5]
        return float(y) if y.ndim == 0 else [float(v) for v in y.tolist()]

    # ---- index ----------------------------------------------------------------------------------
    def index(self) -> list:
        import torch

        self.index_problems, self.excluded = [], {}
        self.task_type, self.label_names = None, []
        entries = []  # (path, key, n, record ids or None, split, targets or None, leads)
        if self.signals:
            path = self._path(self.signals)
            n, leads, _ = _signal_shape(load_tensor_file(path), str(path))
            y = None
            if self.labels_file:
                y = torch.as_tensor(load_tensor_file(self._path(self.labels_file), mmap=False))
                if len(y) != n:
                    raise ValueError(f"reference_pt: {self.labels_file} has {len(y)} targets for {n} signals")
            entries.append((path, None, n, None, None, y, leads))
            self.provenance = f"ECG tensors prepared for the reference code: {path.name} (torch.save)"
        else:
            for split in SPLITS:
                path = self.raw / f"{split}_split.pt"
                if not path.is_file():
                    continue
                obj = load_tensor_file(path)
                if not isinstance(obj, dict) or "data" not in obj:
                    raise ValueError(f"reference_pt: {path} should hold a dict with 'data', 'targets' and "
                                     f"'record_ids'; it holds a {type(obj).__name__}")
                n, leads, _ = _signal_shape(obj["data"], f"{path}['data']")
                y = obj.get("targets")
                y = None if y is None else torch.as_tensor(y)
                if y is not None and len(y) != n:
                    raise ValueError(f"reference_pt: {path} has {len(y)} targets for {n} records")
                ids = obj.get("record_ids")
                if ids is not None and len(ids) != n:
                    raise ValueError(f"reference_pt: {path} has {len(ids)} record_ids for {n} records")
                entries.append((path, "data", n, ids, split, y, leads))
            if not entries:
                raise FileNotFoundError(f"reference_pt: no --signals given and no {{train,val,test}}_split.pt in "
                                        f"{self.raw}")
            self.provenance = ("ECG tensors prepared for the reference code (Hydra/Lightning split files "
                               f"{', '.join(e[0].name for e in entries)}; official splits from the file names)")
        for path, _, _, _, _, _, leads in entries:
            if leads != len(self.leads):
                raise ValueError(f"reference_pt: {path.name} has {leads} leads but --leads names {len(self.leads)}")
        targets = [e[5] for e in entries]
        if any(t is not None for t in targets):
            if any(t is None for t in targets):
                raise ValueError("reference_pt: some split files have targets and others not")
            if len({tuple(t.shape[1:]) for t in targets}) != 1:
                raise ValueError("reference_pt: the split files' targets have different shapes: "
                                 + ", ".join(f"{e[0].name} {tuple(e[5].shape)}" for e in entries))
            self._set_task(torch.cat(targets))

        refs, seen = [], set()
        for path, key, n, ids, split, y, _ in entries:
            for i in range(n):
                rid = str(ids[i]).strip() if ids is not None else f"{path.stem}_{i:06d}"
                if not rid or rid in seen:
                    self.index_problems.append((rid or f"{path.name}:{i}", f"{path.name} row {i}: "
                                                + ("an empty record id" if not rid else "a record id seen before")))
                    continue
                seen.add(rid)
                labels = None if y is None else self._record_labels(y[i])
                refs.append(RecordRef(record_id=rid, labels=labels, split=split, location=(str(path), key, i),
                                      extra={"file": path.name, "row": i}))
        return sorted(refs, key=lambda r: r.record_id)

    # ---- read -----------------------------------------------------------------------------------
    def _tensor(self, path: str, key):
        if self._pid != os.getpid():  # a forked worker loads (maps) its own copy
            self._cache, self._pid = {}, os.getpid()
        if (path, key) not in self._cache:
            obj = load_tensor_file(Path(path))
            self._cache[(path, key)] = obj if key is None else obj[key]
        return self._cache[(path, key)]

    def read(self, ref: RecordRef) -> Signal:
        import torch

        path, key, i = ref.location
        try:
            x = self._tensor(path, key)[int(i)]
        except (OSError, IndexError, KeyError, ValueError) as e:
            raise BadRecord(f"{Path(path).name} row {i} unreadable ({type(e).__name__}: {e})") from None
        if x.ndim == 3:  # (1, leads, T)
            x = x[0]
        data = x.to(torch.float32, copy=True).numpy()  # a private copy, not a view of the mapped file
        return Signal(data=data, sampling_rate=self.rate, lead_names=list(self.leads), units=self.units)
