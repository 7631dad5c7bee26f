"""The training device and numeric precision a run uses.

``trainer.accelerator`` (auto | cpu | gpu) picks the device (``auto``: this rank's CUDA device when
there is one); ``trainer.precision`` (auto | 32 | 16-mixed | bf16-mixed and aliases) what autocast
runs in. ``auto`` is bf16 on CUDA devices that support it, fp16 + GradScaler on older CUDA devices,
and fp32 on CPU (bf16 matmuls are about 100x slower than fp32 on CPUs without bf16 units).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from util.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["resolve_device", "to_device", "PRECISIONS", "Precision", "resolve_precision", "make_scaler"]


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors in dicts, lists, tuples) on ``device``; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    return batch


def resolve_device(accelerator: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = this rank's CUDA device when there is one, else the CPU."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={accelerator} but no CUDA device is available; "
                              "use trainer.accelerator=auto or trainer=cpu")
        return torch.device("cuda", local_rank)
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    raise ConfigError(f"trainer.accelerator must be auto, cpu or gpu, got '{accelerator}'")


PRECISIONS = {"auto": "auto", "32": "fp32", "32-true": "fp32", "fp32": "fp32",
               "16": "fp16", "16-mixed": "fp16", "fp16": "fp16",
               "bf16": "bf16", "bf16-mixed": "bf16"}


@dataclass
class Precision:
    """What autocast runs in; ``scaler`` is needed for fp16 only."""
    name: str  # fp32 | fp16 | bf16
    device_type: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(requested: Any, device: torch.device) -> Precision:
    """``auto``: bf16 on CUDA devices that support it, fp16 (+ GradScaler) on older CUDA devices,
    fp32 on CPU (bf16 matmuls are ~100x slower than fp32 on these CPUs)."""
    key = str(requested).lower()
    if key not in PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(PRECISIONS)}; got '{requested}'")
    name = PRECISIONS[key]
    if device.type != "cuda":
        if name == "fp16":
            log.warning("trainer.precision=%s needs a CUDA device; running in fp32 on %s", requested, device)
            name = "fp32"
        elif name == "bf16":
            log.warning("bf16 on %s is much slower than fp32 here; use trainer.precision=auto for fp32", device)
        elif name == "auto":
            name = "fp32"
    elif name == "auto":
        name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Precision(name, device.type)


def make_scaler(precision: Precision) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(precision.device_type, enabled=precision.needs_scaler)
