"""The on-disk dataset store: one folder per dataset, memory-mapped arrays, validated on open.

A store folder holds::

    signals.npy     (N, leads, T) float16/float32, ECG in millivolts      } exactly one of
    images.npy      (N, H, W) or (N, C, H, W) uint8/float16/float32 (CMR) } the three
    image_paths.txt (CMR, live loading) one image file per line, relative to }
                    the store folder or absolute: .npy, .png/.jpg, .nii(.gz), .dcm (``read_image_file``)
    labels.npy      (N, C) multi-hot | (N,) class index | (N,) or (N, C) regression float
                    (absent when task_type is null)
    record_ids.txt  one unique id per line, row i of every array belongs to id i
    patient_ids.txt (optional) the person of each record, one per line (grouped splits, overlap checks)
    content_hashes.txt  (written by the writers) a hash of each record's stored values, one per line:
                    exact duplicates across stores are found by it (datasets.check_overlap)
    splits.json     {name: [indices]}: train, val, test, optional train_subsample, fold_k_train/val
    info.json       format_version 1, modality, task_type, label_names, sampling_rate and
                    lead_names (ECG), units, provenance, synthetic, optional extras;
                    nonfinite_records: the rows whose array or label holds NaN/inf (the writers
                    fill it; for other stores ``Store.nonfinite_records`` scans once and caches)

Writers (``write_store``, ``StoreWriter``) build the folder in a hidden temp sibling and rename it
into place at the end, so an interrupted write never leaves a half store at ``root``.
``Store(root)`` validates everything cheap to check and refuses with ``StoreError``.

Memory stays flat whatever N is: arrays are read per sample (``Store.read`` uses ``os.preadv``
on the ``.npy`` file, so not even page-cache pages of a memory map accumulate in the reader's
RSS); ``.signals`` / ``.images`` / ``.labels`` are ``np.load(mmap_mode='r')`` views for
notebooks and tools.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from util.errors import StoreError
from util.files import atomic_write_text, remove_stale_temp_files, temp_path

FORMAT_VERSION = 1
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
MODALITIES = ("ecg", "cmr")
TASK_TYPES = ("multilabel", "multiclass", "regression", None)
REQUIRED_INFO = ("format_version", "modality", "task_type", "label_names", "units", "provenance", "synthetic")
REQUIRED_ECG_INFO = ("sampling_rate", "lead_names")
ARRAY_FILE = {"ecg": "signals.npy", "cmr": "images.npy"}
LIVE_FILE = "image_paths.txt"
ARRAY_DTYPES = {"signals.npy": ("float16", "float32"), "images.npy": ("uint8", "float16", "float32")}
_CHUNK_ROWS = 65536  # rows per chunk when scanning labels


# ----------------------------------------------------------------------------------------------
# Reading


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, data offset in bytes) of a C-ordered ``.npy`` file, without reading data."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError) as e:
        raise StoreError(f"{path} is not a readable .npy file ({e}); rebuild the store") from None
    if fortran:
        raise StoreError(f"{path} is Fortran-ordered; re-save it C-ordered: np.save(path, np.ascontiguousarray(a))")
    if dtype.hasobject:
        raise StoreError(f"{path} holds Python objects; store numeric arrays only")
    size = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(path) < size:
        raise StoreError(f"{path} is truncated ({os.path.getsize(path)} bytes, header says {size}); "
                         "rebuild the store")
    return tuple(shape), dtype, offset


class Store:
    """One dataset folder, validated on open.

    Attributes: ``root``, ``info`` (dict), ``modality``, ``record_ids`` (list of str),
    ``splits`` ({name: int64 array}), ``shape`` (of signals.npy / images.npy), ``dtype``,
    ``signals`` / ``images`` (read-only memmaps, opened on first access), ``labels``
    (read-only memmap or None), ``task_type``, ``label_names``, ``lead_names``, ``sampling_rate``,
    ``patient_ids`` (list of str, or None when the store has no patient_ids.txt), ``contract``.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise StoreError(f"no dataset store at {self.root}: the folder does not exist. Build it first "
                             "(the demo: python -m datasets.demo --data-dir <data_root>; your own data: "
                             "datasets.store.write_store or StoreWriter)")
        self.info = self._read_info()
        self.modality = self.info["modality"]
        self.task_type = self.info["task_type"]
        self.label_names = list(self.info["label_names"])
        self.lead_names = list(self.info.get("lead_names") or [])
        self.sampling_rate = self.info.get("sampling_rate")

        self.array_file = ARRAY_FILE[self.modality]
        other = ARRAY_FILE["cmr" if self.modality == "ecg" else "ecg"]
        if (self.root / other).exists():
            raise StoreError(f"{self.root} holds {other} but info.json says modality '{self.modality}'; "
                             f"a store holds one modality: remove {other} or fix info.json")
        # a CMR store may list image files instead of holding an array: they are read on use
        self.live = self.modality == "cmr" and not (self.root / self.array_file).exists() \
            and (self.root / LIVE_FILE).is_file()
        self.image_paths: Optional[list[str]] = None
        if self.live:
            self.array_file = LIVE_FILE
            self.image_paths = self._read_image_paths()
            self.n, self.shape, self.dtype, self._offset = len(self.image_paths), (len(self.image_paths),), None, 0
        else:
            self.shape, self.dtype, self._offset = _npy_header(self._need(self.array_file))
            self.n = self.shape[0]
            self._check_array()
        self.record_ids = self._read_record_ids()
        self.patient_ids = self._read_optional_lines("patient_ids.txt")
        self._labels_shape = None
        self._check_labels()
        self.splits = self._read_splits()
        self._fd = None
        self._fd_pid = None
        self._mmaps = {}

    # -- validation ------------------------------------------------------------------------------

    def _need(self, name: str) -> Path:
        path = self.root / name
        if not path.is_file():
            raise StoreError(f"store {self.root} is missing {name}; rebuild the store (write_store / StoreWriter, "
                             "or python -m datasets.demo --overwrite for the demo)")
        return path

    def _fail(self, what: str) -> None:
        raise StoreError(f"store {self.root}: {what}")

    def _read_info(self) -> dict:
        path = self._need("info.json")
        try:
            info = json.loads(path.read_text())
        except ValueError as e:
            raise StoreError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(info, dict):
            raise StoreError(f"{path} must hold a JSON object")
        missing = [k for k in REQUIRED_INFO if k not in info]
        if info.get("modality") == "ecg":
            missing += [k for k in REQUIRED_ECG_INFO if k not in info]
        if missing:
            raise StoreError(f"{path} lacks required key(s) {missing}; "
                             "see datasets/store.py for the info.json format")
        if info["format_version"] != FORMAT_VERSION:
            raise StoreError(f"{path}: format_version {info['format_version']!r} is not supported "
                             f"(this code reads {FORMAT_VERSION}); rebuild the store")
        if info["modality"] not in MODALITIES:
            raise StoreError(f"{path}: modality {info['modality']!r} must be one of {list(MODALITIES)}")
        if info["task_type"] not in TASK_TYPES:
            raise StoreError(f"{path}: task_type {info['task_type']!r} must be one of {list(TASK_TYPES)}")
        names = info["label_names"]
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            raise StoreError(f"{path}: label_names must be a list of strings")
        if not isinstance(info["synthetic"], bool):
            raise StoreError(f"{path}: synthetic must be true or false")
        bad = info.get("nonfinite_records", [])
        if not isinstance(bad, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in bad):
            raise StoreError(f"{path}: nonfinite_records must be a list of record indices")
        if info["modality"] == "ecg":
            leads = info["lead_names"]
            if not isinstance(leads, list) or not leads or not all(isinstance(s, str) for s in leads):
                raise StoreError(f"{path}: lead_names must be a non-empty list of strings, "
                                 f"e.g. {list(STANDARD_LEADS)}")
            if len(set(leads)) != len(leads):
                raise StoreError(f"{path}: lead_names has duplicates: {leads}")
            rate = info["sampling_rate"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
                raise StoreError(f"{path}: sampling_rate must be a positive number of Hz, got {rate!r}")
            if info["units"] != "mV":
                raise StoreError(f"{path}: ECG units are {info['units']!r}; this project stores millivolts: "
                                 "convert the signals (uV / 1000) and set units to 'mV'")
        return info

    def _check_array(self) -> None:
        name = self.array_file
        if self.dtype.name not in ARRAY_DTYPES[name]:
            self._fail(f"{name} has dtype {self.dtype.name}; allowed: {list(ARRAY_DTYPES[name])}")
        if self.modality == "ecg":
            if len(self.shape) != 3:
                self._fail(f"signals.npy has shape {self.shape}; expected (N, leads, T)")
            if self.shape[1] != len(self.lead_names):
                self._fail(f"signals.npy has {self.shape[1]} leads but info.json lead_names lists "
                           f"{len(self.lead_names)}: {self.lead_names}; make them agree")
        elif len(self.shape) not in (3, 4):
            self._fail(f"images.npy has shape {self.shape}; expected (N, H, W) or (N, C, H, W)")

    def _read_image_paths(self) -> list[str]:
        paths = (self.root / LIVE_FILE).read_text().splitlines()
        if any(not p or p != p.strip() for p in paths):
            self._fail(f"{LIVE_FILE} has an empty line or a path with surrounding whitespace")
        return paths

    def image_path(self, i: int) -> Path:
        """The file of record ``i`` of a live-loading store (paths are relative to the store folder)."""
        path = Path(self.image_paths[int(i)])
        return path if path.is_absolute() else self.root / path

    def _read_record_ids(self) -> list[str]:
        ids = self._need("record_ids.txt").read_text().splitlines()
        if len(ids) != self.n:
            self._fail(f"record_ids.txt has {len(ids)} ids but {self.array_file} has N={self.n} rows; "
                       "every file must describe the same N records")
        if any(not s or s != s.strip() for s in ids):
            self._fail("record_ids.txt has an empty id or one with surrounding whitespace")
        if len(set(ids)) != len(ids):
            seen, dups = set(), []
            for s in ids:
                if s in seen:
                    dups.append(s)
                seen.add(s)
            self._fail(f"record_ids.txt has {len(dups)} duplicate id(s), e.g. {dups[:5]}; ids must be unique")
        return ids

    def _read_optional_lines(self, name: str) -> Optional[list[str]]:
        path = self.root / name
        if not path.is_file():
            return None
        lines = path.read_text().splitlines()
        if len(lines) != self.n:
            self._fail(f"{name} has {len(lines)} lines but {self.array_file} has N={self.n} rows")
        return lines

    def content_hashes(self) -> list[str]:
        """``content_hash`` of each record's stored values (from ``content_hashes.txt``, else computed
        in chunks)."""
        lines = self._read_optional_lines("content_hashes.txt")
        if lines is not None:
            return lines
        if self.live:  # the files' bytes
            return [content_hash(np.fromfile(self.image_path(i), dtype=np.uint8)) for i in range(self.n)]
        path = self.root / self.array_file
        shape, dtype, offset = _npy_header(path)
        per_row = int(np.prod(shape[1:]))
        hashes = []
        with open(path, "rb") as f:
            f.seek(offset)
            for _ in range(shape[0]):
                hashes.append(content_hash(np.fromfile(f, dtype=dtype, count=per_row)))
        return hashes

    def _check_labels(self) -> None:
        path = self.root / "labels.npy"
        if self.task_type is None:
            if path.exists():
                self._fail("labels.npy is present but info.json task_type is null; set task_type "
                           "(multilabel | multiclass | regression) or remove labels.npy")
            return
        shape, dtype, _ = _npy_header(self._need("labels.npy"))
        self._labels_shape = shape
        if shape[0] != self.n:
            self._fail(f"labels.npy has N={shape[0]} rows but {self.array_file} has N={self.n}")
        c = len(self.label_names)
        labels = np.load(path, mmap_mode="r")
        if self.task_type == "multilabel":
            if len(shape) != 2 or shape[1] != c:
                self._fail(f"task_type multilabel needs labels.npy of shape (N, {c}) (one column per label_names "
                           f"entry), got {shape}")
            for i in range(0, self.n, _CHUNK_ROWS):
                chunk = np.asarray(labels[i:i + _CHUNK_ROWS])
                if not np.isin(chunk, (0, 1)).all():
                    self._fail("task_type multilabel needs 0/1 (multi-hot) labels; labels.npy holds other values")
        elif self.task_type == "multiclass":
            if len(shape) != 1 or dtype.kind not in "iu":
                self._fail(f"task_type multiclass needs labels.npy of shape (N,) holding integer class indices, "
                           f"got shape {shape} dtype {dtype}")
            for i in range(0, self.n, _CHUNK_ROWS):
                chunk = np.asarray(labels[i:i + _CHUNK_ROWS])
                if chunk.size and (chunk.min() < 0 or chunk.max() >= c):
                    self._fail(f"task_type multiclass: class indices must lie in [0, {c}) "
                               f"(len(label_names) = {c}), found {int(chunk.min())}..{int(chunk.max())}")
        else:  # regression
            if dtype.kind != "f" or len(shape) not in (1, 2):
                self._fail(f"task_type regression needs float labels.npy of shape (N,) or (N, C), "
                           f"got shape {shape} dtype {dtype}")
            if len(shape) == 2 and c and shape[1] != c:
                self._fail(f"labels.npy has {shape[1]} regression targets but label_names lists {c}")

    def _read_splits(self) -> dict[str, np.ndarray]:
        path = self._need("splits.json")
        try:
            raw = json.loads(path.read_text())
        except ValueError as e:
            raise StoreError(f"{path} is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            self._fail("splits.json must hold an object {split name: [indices]}")
        missing = [k for k in ("train", "val", "test") if k not in raw]
        if missing:
            self._fail(f"splits.json lacks split(s) {missing} (has {sorted(raw)}); make_splits() builds them")
        splits = {}
        for name, idx in raw.items():
            if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
                self._fail(f"split '{name}' in splits.json must be a list of integer indices")
            arr = np.asarray(idx, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() >= self.n):
                bad = arr[(arr < 0) | (arr >= self.n)]
                self._fail(f"split '{name}' has index {int(bad[0])} outside [0, {self.n}) (N={self.n}); "
                           "splits index rows of the arrays")
            if np.unique(arr).size != arr.size:
                self._fail(f"split '{name}' lists some index more than once")
            splits[name] = arr
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            both = np.intersect1d(splits[a], splits[b])
            if both.size:
                self._fail(f"splits '{a}' and '{b}' share {both.size} record(s) (e.g. index {int(both[0])}); "
                           "they must be disjoint")
        for name in splits:
            if name.startswith("fold_") and name.endswith("_train"):
                partner = name[:-len("_train")] + "_val"
                if partner not in splits:
                    self._fail(f"splits.json has '{name}' but not '{partner}'")
        return splits

    # -- access ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, modality={self.modality}, shape={self.shape}, task_type={self.task_type})"

    def _mmap(self, name: str) -> np.ndarray:
        if name not in self._mmaps:
            self._mmaps[name] = np.load(self.root / name, mmap_mode="r")
        return self._mmaps[name]

    @property
    def signals(self) -> np.ndarray:
        """(N, leads, T) read-only memmap (ECG stores)."""
        if self.modality != "ecg":
            raise StoreError(f"store {self.root} is a {self.modality} store: it has images, not signals")
        return self._mmap("signals.npy")

    @property
    def images(self) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) read-only memmap (CMR stores)."""
        if self.modality != "cmr":
            raise StoreError(f"store {self.root} is a {self.modality} store: it has signals, not images")
        return self._mmap("images.npy")

    @property
    def labels(self) -> Optional[np.ndarray]:
        """Read-only memmap of labels.npy, or None for a store without labels."""
        return None if self.task_type is None else self._mmap("labels.npy")

    def nonfinite_records(self) -> np.ndarray:
        """Sorted int64 indices of the records whose signal / image or label holds NaN or inf.

        Stores written by ``write_store`` / ``StoreWriter`` list them in info.json; for other stores
        they are found by one scan of the files (flat memory) and cached in ``.nonfinite.json``."""
        if "nonfinite_records" in self.info:
            return np.asarray(self.info["nonfinite_records"], dtype=np.int64)
        if self.live:  # not scanned (that would read every file): a bad image is refused when read
            return np.zeros(0, dtype=np.int64)
        cache = self.root / ".nonfinite.json"
        files = [self.root / self.array_file] + ([self.root / "labels.npy"] if self.task_type is not None else [])
        stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        try:
            cached = json.loads(cache.read_text())
            if cached.get("stamp") == stamp:
                return np.asarray(cached["records"], dtype=np.int64)
        except (OSError, ValueError, AttributeError):
            pass
        bad = _nonfinite_rows(self.root / self.array_file)
        if self.task_type is not None:
            bad = np.union1d(bad, _nonfinite_rows(self.root / "labels.npy"))
        try:
            atomic_write_text(cache, json.dumps({"stamp": stamp, "records": [int(i) for i in bad]}))
        except OSError:
            pass  # a read-only store: scan again next time
        return bad.astype(np.int64)

    @property
    def contract(self) -> dict:
        """The preprocessing contract of the store (``util.contract``): ``info.json``'s ``contract``
        (written by ``datasets.ingest``) over what every store states (modality, rate, leads, units)."""
        known = {"modality": self.modality, "units": self.info.get("units")}
        if self.modality == "ecg":
            known.update(sampling_rate=float(self.sampling_rate), channel_names=list(self.lead_names))
        return {**known, **dict(self.info.get("contract") or {})}

    def split(self, name: str) -> np.ndarray:
        """int64 indices of split ``name``."""
        if name not in self.splits:
            raise StoreError(f"store {self.root} has no split '{name}'; available: {sorted(self.splits)}")
        return self.splits[name]

    def check_compatible(self, lead_names: Optional[Sequence[str]] = None,
                         sampling_rate: Optional[float] = None) -> None:
        """Refuse a store whose declared leads (names and order) or sampling rate differ from the expected."""
        if lead_names is None and sampling_rate is None:
            return
        if self.modality != "ecg":
            raise StoreError(f"store {self.root} is a {self.modality} store; leads and sampling rate apply to ECG")
        if lead_names is not None and list(lead_names) != self.lead_names:
            raise StoreError(f"store {self.root} has leads {self.lead_names} but the config expects "
                             f"{list(lead_names)}; re-ingest the data in the expected lead order, "
                             "or change the expected leads")
        if sampling_rate is not None and abs(float(sampling_rate) - float(self.sampling_rate)) > 1e-6:
            raise StoreError(f"store {self.root} is sampled at {self.sampling_rate} Hz but the config expects "
                             f"{sampling_rate} Hz; resample the data at ingestion, or change the expected rate")

    def read(self, i: int, start: int = 0, stop: Optional[int] = None,
             rows: Optional[Sequence[int]] = None) -> np.ndarray:
        """Sample ``i`` in its stored dtype, reading only the bytes asked for.

        ECG: ``(len(rows), stop - start)`` = leads ``rows`` (default all) of samples ``[start, stop)``.
        CMR: the whole image, ``(H, W)`` or ``(C, H, W)`` (``start/stop/rows`` not used); a live-loading
        store reads its file (``read_image_file``: float32, intensities as in the file).
        """
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"record index {i} out of range [0, {self.n})")
        if self.live:
            return read_image_file(self.image_path(i))
        fd = self._file()
        item = self.dtype.itemsize
        if self.modality != "ecg":
            out = np.empty(self.shape[1:], dtype=self.dtype)
            self._pread(fd, out, self._offset + i * out.nbytes)
            return out
        n_leads, length = self.shape[1], self.shape[2]
        stop = length if stop is None else int(stop)
        if not 0 <= start <= stop <= length:
            raise IndexError(f"window [{start}, {stop}) outside [0, {length})")
        rows = range(n_leads) if rows is None else rows
        out = np.empty((len(rows), stop - start), dtype=self.dtype)
        if start == 0 and stop == length and list(rows) == list(range(n_leads)):
            self._pread(fd, out, self._offset + i * out.nbytes)  # the whole record in one read
            return out
        base = self._offset + (i * n_leads * length + start) * item
        for k, r in enumerate(rows):
            self._pread(fd, out[k], base + int(r) * length * item)
        return out

    def _file(self) -> int:
        # One descriptor per process: a forked DataLoader worker opens its own.
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.root / self.array_file, os.O_RDONLY)
            self._fd_pid = os.getpid()
            weakref.finalize(self, os.close, self._fd)
        return self._fd

    def _pread(self, fd: int, out: np.ndarray, offset: int) -> None:
        """Fill the contiguous array ``out`` with the file's bytes at ``offset``."""
        if hasattr(os, "preadv"):
            got = os.preadv(fd, [out], offset)
        else:  # platforms without preadv
            data = os.pread(fd, out.nbytes, offset)
            got = len(data)
            out.reshape(-1).view(np.uint8)[:got] = np.frombuffer(data, dtype=np.uint8)
        if got != out.nbytes:
            raise StoreError(f"short read from {self.root / self.array_file} at byte {offset}; the file changed or "
                             "is truncated: rebuild the store")

    def __getstate__(self) -> dict:
        # Never pickle a memmap (it would copy the whole array) or a file descriptor.
        state = dict(self.__dict__)
        state.update(_fd=None, _fd_pid=None, _mmaps={})
        return state


def content_hash(values: np.ndarray) -> str:
    """A 16-hex-digit hash of an array's bytes (equal records have equal hashes)."""
    import hashlib

    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=8).hexdigest()


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """One 2-D image from a file as float32 ``(H, W)`` (or ``(C, H, W)`` for colour files), values as
    stored: ``.npy`` (2-D or C x H x W), ``.png`` / ``.jpg`` / ``.jpeg`` / ``.bmp`` / ``.tif(f)``
    (Pillow), ``.nii`` / ``.nii.gz`` (nibabel: a 2-D image, the middle slice of a 3-D volume, the
    middle slice of the first frame of a 4-D cine), ``.dcm`` (pydicom: the first frame). Raises
    ``StoreError`` naming the file when it cannot be read."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            data = np.load(path, allow_pickle=False)
        elif name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            volume = nib.load(str(path)).dataobj
            index = tuple([slice(None), slice(None)] + ([volume.shape[2] // 2] if len(volume.shape) > 2 else [])
                          + [0] * max(len(volume.shape) - 3, 0))
            data = np.asarray(volume[index])
        elif name.endswith(".dcm"):
            import pydicom

            data = pydicom.dcmread(str(path)).pixel_array
            if data.ndim == 3 and data.shape[-1] not in (3, 4):
                data = data[0]  # multi-frame: the first
        elif name.endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")):
            from PIL import Image as PILImage  # Pillow: installed with matplotlib and torchvision

            with PILImage.open(path) as image:
                data = np.asarray(image)
        else:
            raise StoreError(f"cannot read image {path}: unknown file type (use .npy, .png, .jpg, .nii, .nii.gz "
                             "or .dcm)")
    except StoreError:
        raise
    except Exception as e:  # noqa: BLE001 - any reader failure is this file's problem
        raise StoreError(f"cannot read image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                         ) from None
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] not in (1, 3, 4):
        data = np.moveaxis(data[..., :3], -1, 0)  # H x W x RGB(A) -> 3 x H x W
    if data.ndim not in (2, 3):
        raise StoreError(f"image {path} has shape {data.shape}; expected a 2-D image")
    return data


def _nonfinite_rows(path: Path, rows_per_chunk: int = 256) -> np.ndarray:
    """Indices of the rows of a ``.npy`` file that hold NaN or inf (read in chunks, not memory-mapped)."""
    shape, dtype, offset = _npy_header(path)
    if dtype.kind != "f" or not shape:
        return np.zeros(0, dtype=np.int64)
    per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    bad = []
    with open(path, "rb") as f:
        for start in range(0, shape[0], rows_per_chunk):
            n = min(rows_per_chunk, shape[0] - start)
            chunk = np.fromfile(f, dtype=dtype, count=n * per_row, offset=offset if start == 0 else 0)
            finite = np.isfinite(chunk.reshape(n, per_row)).all(axis=1)
            bad += (np.flatnonzero(~finite) + start).tolist()
    return np.asarray(bad, dtype=np.int64)


def open_store(data_root: str | os.PathLike, dataset_key: str) -> Store:
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


# ----------------------------------------------------------------------------------------------
# Writing


def _temp_sibling(root: Path) -> Path:
    """A fresh temp folder name beside ``root``; the leftovers of killed writers are removed first."""
    remove_stale_temp_files(root.parent)
    return Path(temp_path(root, tag=uuid.uuid4().hex[:8]))


def _check_target(root: Path, overwrite: bool) -> None:
    if root.exists() and not overwrite:
        raise StoreError(f"{root} already exists; pass overwrite=True (--overwrite) to replace it, "
                         "or pick another folder")


def _write_meta(tmp: Path, *, n: int, labels, record_ids, splits, info, patient_ids=None, hashes=None) -> None:
    """labels.npy, record_ids.txt, [patient_ids.txt, content_hashes.txt,] splits.json and info.json into ``tmp``."""
    record_ids = [str(r) for r in record_ids]
    if len(record_ids) != n:
        raise StoreError(f"{len(record_ids)} record ids for N={n} records; give one id per record")
    if any("\n" in r for r in record_ids):
        raise StoreError("record ids must not contain newlines")
    info = dict(info)
    info.setdefault("format_version", FORMAT_VERSION)
    if info.get("modality") == "ecg":
        info.setdefault("units", "mV")
    if labels is not None:
        labels = np.asarray(labels)
        np.save(tmp / "labels.npy", labels)
    (tmp / "record_ids.txt").write_text("".join(r + "\n" for r in record_ids))
    if patient_ids is not None:
        patients = [str(p) for p in patient_ids]
        if len(patients) != n or any("\n" in p for p in patients):
            raise StoreError(f"{len(patients)} patient ids for N={n} records; give one per record, without newlines")
        (tmp / "patient_ids.txt").write_text("".join(p + "\n" for p in patients))
    if hashes is not None:
        (tmp / "content_hashes.txt").write_text("".join(h + "\n" for h in hashes))
    plain = {str(k): [int(i) for i in np.asarray(v).reshape(-1)] for k, v in splits.items()}
    (tmp / "splits.json").write_text(json.dumps(plain, separators=(",", ":")))
    (tmp / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def _publish(tmp: Path, root: Path, overwrite: bool) -> Path:
    """Validate the finished temp folder, then rename it to ``root`` (replacing it when overwrite)."""
    try:
        Store(tmp)  # refuse to publish an inconsistent store
    except StoreError as e:
        raise StoreError(str(e).replace(str(tmp), str(root))) from None
    _check_target(root, overwrite)
    if root.exists():
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
        os.rename(tmp, root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, root)
    return root


def write_store(root: str | os.PathLike, *, signals=None, images=None, image_paths=None, labels, record_ids,
                splits: dict, info: dict, dtype=None, overwrite: bool = False, patient_ids=None) -> Path:
    """Write in-memory arrays as a store at ``root`` (atomically); returns ``root``.

    signals: (N, leads, T) in mV (ECG) or images: (N, H, W) / (N, C, H, W) (CMR) or image_paths: N
    image files (a CMR store loaded live, see ``read_image_file``; relative paths are relative to
    ``root``); exactly one. labels: (N, C) / (N,) or None; splits: {name: indices}; info: see the
    module docstring (``format_version`` and ECG ``units`` default to 1 and 'mV'). dtype: stored
    dtype (default: the array's own, float32 for float64).
    """
    if sum(x is not None for x in (signals, images, image_paths)) != 1:
        raise StoreError("write_store needs exactly one of signals= (ECG), images= or image_paths= (CMR)")
    if image_paths is not None:
        return _write_live_store(Path(root), [str(p) for p in image_paths], labels=labels, record_ids=record_ids,
                                 splits=splits, info=info, overwrite=overwrite, patient_ids=patient_ids)
    kind = "signals" if signals is not None else "images"
    array = np.asarray(signals if signals is not None else images)
    dtype = dtype or (np.float32 if array.dtype == np.float64 else array.dtype)
    writer = StoreWriter(root, len(array), array.shape[1:], dtype, kind=kind, overwrite=overwrite)
    with writer:
        writer.write_batch(0, array)
        return writer.finish(labels=labels, record_ids=record_ids, splits=splits, info=info,
                             patient_ids=patient_ids)


def _write_live_store(root: Path, image_paths: list, *, labels, record_ids, splits, info, overwrite,
                      patient_ids) -> Path:
    _check_target(root, overwrite)
    if any(not p or p != p.strip() or "\n" in p for p in image_paths):
        raise StoreError("image_paths must be file paths without surrounding whitespace or newlines")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(root)
    tmp.mkdir()
    try:
        (tmp / LIVE_FILE).write_text("".join(p + "\n" for p in image_paths))
        _write_meta(tmp, n=len(image_paths), labels=labels, record_ids=record_ids, splits=splits,
                    info={"modality": "cmr", **info}, patient_ids=patient_ids)
        return _publish(tmp, root, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class StoreWriter:
    """Stream N samples into a new store without holding them in memory.

        with StoreWriter(root, n, (12, 5000), np.float16) as w:
            for start in range(0, n, 256):
                w.write_batch(start, make_batch(start))      # or w[i] = x
            w.finish(labels=..., record_ids=..., splits=..., info=...)

    Everything goes to a hidden temp sibling of ``root``, renamed into place by ``finish``. An
    exception inside the ``with`` block (or a writer dropped without ``finish``) deletes the
    temp folder, so no store appears at ``root``.
    """

    REMAP_BYTES = 256 << 20  # drop and re-open the memmap after this many bytes, so RSS stays flat

    def __init__(self, root: str | os.PathLike, n: int, sample_shape: Sequence[int], dtype, kind: str = "signals",
                 overwrite: bool = False):
        if kind not in ("signals", "images"):
            raise StoreError(f"StoreWriter kind must be 'signals' (ECG) or 'images' (CMR), got {kind!r}")
        self.root = Path(root)
        self.overwrite = overwrite
        allowed = ARRAY_DTYPES[f"{kind}.npy"]
        if np.dtype(dtype).name not in allowed:
            raise StoreError(f"{kind} cannot be stored as {np.dtype(dtype).name}; use one of {list(allowed)}")
        _check_target(self.root, overwrite)
        self.root.parent.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        self.dtype = np.dtype(dtype)
        self.kind = kind
        self.tmp = _temp_sibling(self.root)
        self.tmp.mkdir()
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.tmp), True)
        self.path = self.tmp / f"{kind}.npy"
        self._array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                shape=(self.n, *map(int, sample_shape)))
        self.shape = self._array.shape
        self._dirty = 0
        self._nonfinite: set[int] = set()  # rows with NaN / inf, listed in info.json
        self._hashes: list = [content_hash(np.zeros(0, self.dtype))] * self.n  # rows never written: empty
        self.done = False

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self.done:
            self.abort()

    def _written(self, nbytes: int) -> None:
        self._dirty += nbytes
        if self._dirty >= self.REMAP_BYTES:
            self._array.flush()
            self._array = np.load(self.path, mmap_mode="r+")
            self._dirty = 0

    def _note_rows(self, start: int, stop: int) -> None:
        """Per written row: its content hash, and whether it holds NaN / inf (as stored: a float16
        overflow is an inf too)."""
        rows = np.ascontiguousarray(self._array[start:stop]).reshape(stop - start, -1)
        for i, row in enumerate(rows, start):
            self._hashes[i] = content_hash(row)
        if self.dtype.kind == "f":
            self._nonfinite.update((np.flatnonzero(~np.isfinite(rows).all(axis=1)) + start).tolist())

    def __setitem__(self, i: int, x) -> None:
        self._array[i] = x
        self._nonfinite.discard(int(i))
        self._note_rows(int(i), int(i) + 1)
        self._written(self._array[0].nbytes)

    def write_batch(self, start: int, xs) -> None:
        """Rows ``[start, start + len(xs))`` = ``xs``."""
        xs = np.asarray(xs)
        if start < 0 or start + len(xs) > self.n:
            raise StoreError(f"write_batch({start}, {len(xs)} rows) is outside the store's N={self.n} rows")
        self._array[start:start + len(xs)] = xs
        self._nonfinite.difference_update(range(start, start + len(xs)))
        self._note_rows(start, start + len(xs))
        self._written(xs.size * self.dtype.itemsize)

    def finish(self, *, labels=None, record_ids, splits: dict, info: dict, patient_ids=None) -> Path:
        """Write the metadata, validate, rename into place; returns ``root``."""
        modality = "ecg" if self.kind == "signals" else "cmr"
        try:
            self._array.flush()
            self._array = None
            if info.get("modality", modality) != modality:
                raise StoreError(f"info modality {info.get('modality')!r} does not fit a store of {self.kind}")
            bad = set(self._nonfinite)
            if labels is not None and np.asarray(labels).dtype.kind == "f":
                rows = np.asarray(labels).reshape(self.n, -1)
                bad.update(np.flatnonzero(~np.isfinite(rows).all(axis=1)).tolist())
            _write_meta(self.tmp, n=self.n, labels=labels, record_ids=record_ids, splits=splits,
                        info={"modality": modality, **info, "nonfinite_records": sorted(int(i) for i in bad)},
                        patient_ids=patient_ids, hashes=self._hashes)
            _publish(self.tmp, self.root, self.overwrite)
        except BaseException:
            self.abort()
            raise
        self._cleanup.detach()
        self.done = True
        return self.root

    def abort(self) -> None:
        """Delete the temp folder (nothing appears at ``root``)."""
        self._array = None
        self._cleanup()


# ----------------------------------------------------------------------------------------------
# Splits


def _spread(n_items: int, n_pick: int) -> np.ndarray:
    """Boolean mask choosing ``n_pick`` of ``n_items`` positions spread evenly."""
    pos = np.arange(n_items)
    return (pos + 1) * n_pick // max(n_items, 1) > pos * n_pick // max(n_items, 1)


def _strata(labels, n: int) -> np.ndarray:
    """One integer stratum per record: the class, or the label combination (multi-hot)."""
    if labels is None:
        return np.zeros(n, dtype=np.int64)
    labels = np.asarray(labels)
    if labels.ndim == 1 and labels.dtype.kind in "iub":
        return labels.astype(np.int64)
    if labels.ndim == 2 and np.isin(labels, (0, 1)).all():
        return np.unique(labels.astype(np.int8), axis=0, return_inverse=True)[1].reshape(-1)
    return np.zeros(n, dtype=np.int64)  # regression: no stratification


def make_splits(n: int, labels=None, *, groups=None, official=None, val: float = 0.1, test: float = 0.1,
                folds: int = 5, train_subsample: float = 0.1, seed: int = 0) -> dict[str, list[int]]:
    """Deterministic disjoint train/val/test, ``folds`` folds over train, and a train subsample.

    ``groups`` (one id per record, e.g. the patient) keeps every group in one split, fold and
    subsample: the units split are the groups. Stratified by class (multiclass) or label combination
    (multi-hot) when ``labels`` is given: groups are ordered by the stratum of their first record
    (random order inside), then each split takes evenly spread positions, so every stratum is split
    in the same proportions. ``official`` (per record: train / val / test as the source defines it, e.g.
    PTB-XL's strat_fold, or None) fixes those records' split; the others are drawn as above, into the
    splits the source does not define (ACDC defines test only: val is drawn from the rest, and train
    is what remains). Folds and the subsample are drawn over train.
    Returns sorted index lists: train, val, test, train_subsample, fold_{k}_train / fold_{k}_val.
    """
    rng = np.random.default_rng(seed)
    strata = _strata(labels, n)
    group_of = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n_groups = int(group_of.max()) + 1 if n else 0
    first = np.unique(group_of, return_index=True)[1]
    order = np.lexsort((rng.permutation(n_groups), strata[first]))  # groups by stratum, random inside

    def pick(idx: np.ndarray, frac: float) -> tuple[np.ndarray, np.ndarray]:
        mask = _spread(len(idx), int(round(frac * len(idx))))
        return idx[mask], idx[~mask]

    split_of = np.full(n, None, dtype=object) if official is None else np.asarray(official, dtype=object)
    fixed = {str(v) for v in split_of if v is not None}  # the splits the source defines itself
    group_split: dict = {}  # group -> split: a group's official split is that of its first record with one
    for i in np.flatnonzero(split_of != None):  # noqa: E711 - elementwise on an object array
        group_split.setdefault(int(group_of[i]), split_of[i])
    free = np.array([g for g in order if int(g) not in group_split], dtype=np.int64)
    val_frac = 0.0 if "val" in fixed else val
    test_frac = 0.0 if "test" in fixed else test
    drawn_val, rest = pick(free, val_frac)
    drawn_test, drawn_train = pick(rest, test_frac / (1 - val_frac) if val_frac < 1 else 0.0)
    for name, gs in (("val", drawn_val), ("test", drawn_test), ("train", drawn_train)):
        group_split.update((int(g), name) for g in gs)
    # a record with its own official split keeps it (also inside a group of mixed splits); one whose
    # official split is none of train / val / test is in no split
    record_split = np.array([split_of[i] if split_of[i] is not None else group_split[int(group_of[i])]
                             for i in range(n)], dtype=object)
    train_g = np.array([g for g in order if group_split[int(g)] == "train"], dtype=np.int64)
    members = [[] for _ in range(n_groups)]
    for i, g in enumerate(group_of):
        if record_split[i] == "train":
            members[g].append(i)

    def records(gs) -> np.ndarray:  # the train records of groups gs
        return np.array([i for g in gs for i in members[g]], dtype=np.int64)

    splits = {name: np.flatnonzero(record_split == name) for name in ("train", "val", "test")}
    if train_subsample:
        splits["train_subsample"] = records(pick(train_g, train_subsample)[0])
    fold_of = np.arange(len(train_g)) % folds if folds else None
    for k in range(1, folds + 1):
        splits[f"fold_{k}_train"] = records(train_g[fold_of != k - 1])
        splits[f"fold_{k}_val"] = records(train_g[fold_of == k - 1])
    return {name: sorted(int(i) for i in idx) for name, idx in splits.items()}
