"""Checkpoint files: atomic writes, safe reads, last + best-k by a monitored metric, early stopping.

What a checkpoint holds is ``util.train_state.TrainState.state_dict()`` (a plain dict of tensors and
Python values, readable with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import io
import logging
import math
import os
import re
import zipfile
from typing import Any, Optional

import torch

from util.errors import CheckpointError, CheckpointWriteError, ConfigError
from util.files import atomic_write_bytes, describe_os_error, remove_stale_temp_files

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LAST = "last.pt"


def atomic_torch_save(obj: Any, path: str) -> None:
    """Serialise ``obj``, write it to a temp file beside ``path``, fsync, rename over ``path``. A
    failed write (disk full, quota, permission) leaves ``path`` as it was and raises
    ``CheckpointWriteError`` naming the file and the free space."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # in memory first: a failing disk then gives the OS error, not torch's
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as e:
        folder = os.path.dirname(os.path.abspath(path))
        kept = f" The checkpoints already in {folder} are intact." if any(
            f.endswith(".pt") for f in os.listdir(folder)) else ""
        raise CheckpointWriteError(f"could not write the checkpoint: {describe_os_error(e)}{kept}") from None


def unreadable_reason(path: str, error: Exception) -> str:
    """What ``path`` holds, in a few words, when ``torch.load(weights_only=True)`` failed on it."""
    message = str(error)
    if os.path.getsize(path) == 0:
        return "the file is empty (0 bytes): its write was interrupted"
    with open(path, "rb") as f:
        head = f.read(16)
    pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if pickled:
        return f"it holds pickled Python objects ({pickled.group(1)}), which safe loading refuses"
    if zipfile.is_zipfile(path):
        if "Weights only load failed" in message:
            return "it holds pickled Python objects besides tensors, which safe loading refuses"
        return "it is a PyTorch archive that cannot be read (truncated or corrupted)"
    if head.startswith(b"PK"):
        return "it is a truncated or corrupted PyTorch archive"
    if head.startswith(b"\x93NUMPY"):
        return "it is a NumPy .npy array, not a checkpoint"
    if head.lstrip()[:1] in (b"{", b"["):
        return "it is JSON text, not a checkpoint"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "it is a text file, not a checkpoint"
    return "it is not a PyTorch file"


def load_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Read a checkpoint safely (``weights_only=True``); a bad file is a ``CheckpointError``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist. Check ckpt_path (or use resume=auto "
                              "with the run directory that holds checkpoints/last.pt).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, pickled objects, not a torch file
        raise CheckpointError(f"cannot read checkpoint '{path}': {unreadable_reason(path, e)}. Checkpoints of "
                              "this project are plain dicts of tensors; give another file (pretrained encoders "
                              "go to model.pretrained_weights).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"'{path}' is not a training checkpoint: it has no 'model' entry "
                              f"(keys: {list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__}).")
    return ckpt


def _is_better(value: float, best: Optional[float], mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class CheckpointManager:
    """Keeps ``last.pt`` (the resume point) and the ``save_top_k`` best epochs by ``monitor``."""

    def __init__(self, dirpath: str, *, monitor: Optional[str] = None, mode: str = "min",
                 save_top_k: int = 1, save_last: bool = True, filename: str = "epoch_{epoch:03d}",
                 every_n_epochs: int = 1, verbose: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.model_checkpoint.mode must be 'min' or 'max', got '{mode}'")
        if not isinstance(filename, str) or not filename:
            raise ConfigError(f"callbacks.model_checkpoint.filename must be a file name pattern such as "
                              f"'epoch_{{epoch:03d}}', got {filename!r}")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ConfigError(f"callbacks.model_checkpoint.every_n_epochs must be a whole number >= 1, "
                              f"got {every_n_epochs!r}")
        self.dirpath = dirpath
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = int(save_top_k)
        self.save_last = bool(save_last)
        self.filename = filename
        self.every_n_epochs = every_n_epochs
        self.verbose = verbose
        self.best: list[dict] = []  # [{"path", "score", "epoch"}], best first
        for stale in remove_stale_temp_files(dirpath):
            log.info("removed %s, left by a checkpoint write that was killed", stale)

    def state_dict(self) -> dict:
        return {"best": [dict(b) for b in self.best]}

    def load_state_dict(self, state: dict) -> None:
        self.best = [dict(b) for b in state.get("best", [])]

    @property
    def best_path(self) -> Optional[str]:
        return self.best[0]["path"] if self.best else None

    def save(self, state: dict, epoch: int, metrics: dict) -> None:
        """Save after ``epoch`` (0-based): best-k when ``monitor`` improved, and ``last.pt``."""
        if self.save_top_k != 0 and (epoch + 1) % self.every_n_epochs == 0:
            self._save_best(state, epoch, metrics)
        if self.save_last:
            self.save_last_file(state)

    def save_last_file(self, state: dict) -> None:
        """Write only ``last.pt`` (a mid-epoch preemption checkpoint is never a best-k candidate)."""
        atomic_torch_save(dict(state, best=self.state_dict()), os.path.join(self.dirpath, LAST))

    def _save_best(self, state: dict, epoch: int, metrics: dict) -> None:
        score = None
        if self.monitor is not None:
            if self.monitor not in metrics:
                log.warning("checkpoint monitor '%s' is not among the logged metrics (%s); keeping the "
                            "latest checkpoint instead", self.monitor, ", ".join(sorted(metrics)))
            else:
                score = float(metrics[self.monitor])
                if not math.isfinite(score):
                    return
        path = os.path.join(self.dirpath, self.filename.format(epoch=epoch) + ".pt")
        entry = {"path": path, "score": score, "epoch": epoch}
        if score is None:  # no monitor: newest first
            ranked = [entry] + [b for b in self.best if b["path"] != path]
        else:
            ranked = sorted([b for b in self.best if b["path"] != path] + [entry],
                            key=lambda b: b["score"], reverse=self.mode == "max")
        keep = ranked if self.save_top_k < 0 else ranked[:self.save_top_k]
        if entry not in keep:
            return
        atomic_torch_save(dict(state, best={"best": keep}), path)
        if self.verbose:
            log.info("epoch %d: saved %s (%s %s, rank %d of the kept %d)", epoch, path, self.monitor or "latest",
                     "" if score is None else f"{score:.6g}", keep.index(entry) + 1, len(keep))
        for b in ranked:
            if b not in keep and b["path"] != path and os.path.exists(b["path"]):
                os.remove(b["path"])
        self.best = keep


class EarlyStopping:
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` validations."""

    def __init__(self, monitor: str, *, mode: str = "min", patience: int = 3, min_delta: float = 0.0,
                 check_finite: bool = True, strict: bool = True, stopping_threshold: Optional[float] = None,
                 divergence_threshold: Optional[float] = None, verbose: bool = False) -> None:
        if monitor in (None, "???"):
            raise ConfigError("callbacks.early_stopping.monitor is not set: name a validation metric, "
                              "e.g. callbacks.early_stopping.monitor=val/loss")
        if mode not in ("min", "max"):
            raise ConfigError(f"callbacks.early_stopping.mode must be 'min' or 'max', got '{mode}'")
        self.monitor, self.mode, self.patience = monitor, mode, int(patience)
        self.min_delta, self.check_finite, self.strict = abs(float(min_delta)), check_finite, strict
        self.stopping_threshold, self.divergence_threshold = stopping_threshold, divergence_threshold
        self.verbose = verbose
        self.best: Optional[float] = None
        self.wait = 0
        self.reason = ""

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))

    def step(self, metrics: dict) -> bool:
        """Record one validation; True when training should stop."""
        if self.monitor not in metrics:
            if self.strict:
                raise ConfigError(f"early stopping monitors '{self.monitor}', which is not a validation metric "
                                  f"(available: {', '.join(sorted(metrics))}); set callbacks.early_stopping.monitor")
            return False
        value = float(metrics[self.monitor])
        better = (lambda a, b: a < b) if self.mode == "min" else (lambda a, b: a > b)
        if self.check_finite and not math.isfinite(value):
            self.reason = f"{self.monitor} is {value}"
            return True
        if self.stopping_threshold is not None and (value <= self.stopping_threshold if self.mode == "min"
                                                    else value >= self.stopping_threshold):
            self.reason = f"{self.monitor} reached the stopping threshold {self.stopping_threshold}"
            return True
        if self.divergence_threshold is not None and better(self.divergence_threshold, value):
            self.reason = f"{self.monitor} diverged past {self.divergence_threshold}"
            return True
        if _is_better(value, self.best, self.mode, self.min_delta):
            if self.verbose:
                log.info("early stopping: %s improved to %.6g", self.monitor, value)
            self.best, self.wait = value, 0
            return False
        self.wait += 1
        if self.verbose:
            log.info("early stopping: %s did not improve (%d of %d)", self.monitor, self.wait, self.patience)
        if self.wait >= self.patience:
            self.reason = f"{self.monitor} did not improve for {self.wait} validations (best {self.best:.6g})"
            return True
        return False
