"""The one training loop: ``train_one_epoch`` and ``evaluate``, generic over objectives.

A model returns a dict whose ``loss`` is the scalar to minimise; every other 0-dim tensor in it
is logged (MAE: ``loss_mse``, ``loss_ncc``, ``ncc``). ``forward_fn(model, batch, generator)``
adapts a batch to the model call, so one loop serves MAE pretraining, contrastive objectives
and classifiers. Per optimizer step: learning rate from the warmup + cosine schedule, autocast
(+ GradScaler for fp16), gradient accumulation with DDP ``no_sync``, clipping, and a guard that
skips a step whose loss is not finite and stops after ``max_nonfinite_steps`` in a row.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist

from util.errors import ConfigError, NonFiniteLossError
from util.lr_sched import lr_at, set_lr

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """``should_stop`` asked to stop after an optimizer step; where the epoch stopped."""

    def __init__(self, batch: int, global_step: int, nonfinite_streak: int) -> None:
        super().__init__(f"stopped after batch {batch} (step {global_step})")
        self.batch, self.global_step, self.nonfinite_streak = batch, global_step, nonfinite_streak


# ----------------------------------------------------------------------------------------
# Device and precision
# ----------------------------------------------------------------------------------------

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


_PRECISIONS = {"auto": "auto", "32": "fp32", "32-true": "fp32", "fp32": "fp32",
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
    if key not in _PRECISIONS:
        raise ConfigError(f"trainer.precision must be one of {', '.join(_PRECISIONS)}; got '{requested}'")
    name = _PRECISIONS[key]
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


# ----------------------------------------------------------------------------------------
# Loop settings
# ----------------------------------------------------------------------------------------

@dataclass
class LoopSettings:
    """What one epoch needs to know, from ``trainer.*`` and the model's optimisation block."""
    lr: float
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    schedule_epochs: float = 1.0
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    log_every_n_steps: int = 50
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    max_nonfinite_steps: int = 5
    progress_bar: bool = True


def num_batches(loader: Iterable, limit: Any) -> int:
    """Batches per epoch after ``limit_*_batches`` (int = count, float in (0, 1] = fraction)."""
    total = len(loader)
    if limit is None:
        return total
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
        raise ConfigError(f"limit_*_batches must be an int count or a fraction in (0, 1], got {limit!r}")
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(total * limit)) if limit > 0 else 0
    return min(total, int(limit))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and hasattr(model, "no_sync") else model


def default_forward(model: torch.nn.Module, batch: Any, generator: Optional[torch.Generator]) -> dict:
    """``model(x, generator=...)``; a batch ``(x, y, keys)`` also passes the per-sample ``sample_keys``."""
    if not isinstance(batch, (list, tuple)):
        return model(batch, generator=generator)
    if len(batch) > 2:
        return model(batch[0], generator=generator, sample_keys=batch[2])
    return model(batch[0], generator=generator)


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def _scalars(outputs: dict) -> dict:
    return {k: v.detach().float() for k, v in outputs.items()
            if isinstance(v, torch.Tensor) and v.dim() == 0}


class _Meter:
    """Sample-weighted means of scalar tensors, kept on device (one sync per epoch)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, values: dict, n: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.count += n

    def means(self, device: torch.device) -> dict:
        keys = sorted(self.sums)
        totals = torch.stack([self.sums[k].to(device) for k in keys] +
                             [torch.tensor(float(self.count), device=device)]) if keys else \
            torch.tensor([float(self.count)], device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        count = max(totals[-1].item(), 1.0)
        return {k: (totals[i] / count).item() for i, k in enumerate(keys)}


def _batch_size(batch: Any) -> int:
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(x.shape[0]) if isinstance(x, torch.Tensor) else 1


def _all_finite(loss: torch.Tensor) -> bool:
    flag = torch.isfinite(loss.detach()).all().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                mininterval=1.0)


# ----------------------------------------------------------------------------------------
# train / evaluate
# ----------------------------------------------------------------------------------------

def train_one_epoch(model: torch.nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, *, epoch: int, global_step: int, settings: LoopSettings,
                    device: torch.device, precision: Precision,
                    forward_fn: Callable = default_forward, batch_transform: Optional[Callable] = None,
                    generator: Optional[torch.Generator] = None, run_logger: Any = None,
                    is_main: bool = True, nonfinite_streak: int = 0, start_batch: int = 0,
                    epoch_batches: Optional[int] = None,
                    should_stop: Optional[Callable[[], bool]] = None) -> tuple[dict, int, int]:
    """Train for one epoch. Returns (epoch means of the logged scalars, global step, non-finite streak).

    A resumed epoch starts at ``start_batch`` of ``epoch_batches`` (the loader then yields only the
    remaining batches). ``should_stop()`` is asked after every optimizer step; True raises
    ``Interrupted`` with the number of batches done, so the caller can checkpoint mid-epoch."""
    model.train()
    total = epoch_batches if epoch_batches is not None else num_batches(loader, settings.limit_train_batches)
    accum = max(int(settings.accumulate_grad_batches or 1), 1)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    meter = _Meter()
    window_finite = True
    lr = optimizer.param_groups[0]["lr"]
    seen, t_last, samples_since = 0, time.perf_counter(), 0
    optimizer.zero_grad(set_to_none=True)

    batches = _progress(loader, total - start_batch, f"epoch {epoch}", settings.progress_bar and is_main)
    for i, batch in enumerate(batches, start=start_batch):
        if i >= total:
            break
        first_micro, last_micro = i % accum == 0, (i + 1) % accum == 0 or i + 1 == total
        if first_micro:
            lr = lr_at(epoch + i / total, lr=settings.lr, min_lr=settings.min_lr,
                       warmup_epochs=settings.warmup_epochs, epochs=settings.schedule_epochs)
            set_lr(optimizer, lr)
        batch = _to_device(batch, device)
        if batch_transform is not None:
            with torch.no_grad():
                x = batch_transform(batch[0], generator=generator)
            batch = (x, *batch[1:])
        n = _batch_size(batch)
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with precision.autocast():
                outputs = forward_fn(model, batch, generator)
            loss = outputs["loss"]
            scaler.scale(loss.float() / accum).backward()
        window_finite = window_finite and bool(torch.isfinite(loss.detach()).item())
        scalars = _scalars(outputs)
        if window_finite:
            meter.update(scalars, n)
        seen += n
        samples_since += n
        if not last_micro:
            continue

        # one optimizer step for the accumulation window
        if not _all_finite(torch.tensor(1.0 if window_finite else float("nan"), device=device)):
            optimizer.zero_grad(set_to_none=True)
            nonfinite_streak += 1
            log.warning("non-finite loss at epoch %d step %d: skipped the optimizer step (%d in a row)",
                        epoch, global_step, nonfinite_streak)
            if nonfinite_streak >= settings.max_nonfinite_steps:
                raise NonFiniteLossError(
                    f"the loss was NaN/inf for {nonfinite_streak} optimizer steps in a row (epoch {epoch}, "
                    f"step {global_step}). Lower the learning rate (model.optim.blr), enable gradient "
                    "clipping (trainer.gradient_clip_val=1.0) or use trainer.precision=32.")
            window_finite = True
            continue
        nonfinite_streak = 0
        scaler.unscale_(optimizer)
        clip = settings.gradient_clip_val
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1

        if run_logger is not None and is_main and global_step % max(settings.log_every_n_steps, 1) == 0:
            now = time.perf_counter()
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            step_logs = {f"train/{k}": v for k, v in scalars.items()}
            step_logs.update({"train/lr": lr, "train/grad_norm": grad_norm,
                              "train/samples_per_s": samples_since * world / max(now - t_last, 1e-9)})
            run_logger.log(step_logs, global_step, epoch=epoch)
            t_last, samples_since = now, 0
        if should_stop is not None and i + 1 < total and should_stop():
            raise Interrupted(i + 1, global_step, nonfinite_streak)

    means = meter.means(device)
    means["lr"] = lr
    return means, global_step, nonfinite_streak


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable, *, device: torch.device, precision: Precision,
             forward_fn: Callable = default_forward, generator: Optional[torch.Generator] = None,
             limit_batches: Any = None, is_main: bool = True, progress_bar: bool = True) -> dict:
    """Sample-weighted means of the model's scalar outputs over ``loader`` (all ranks reduced)."""
    model.eval()
    total = num_batches(loader, limit_batches)
    meter = _Meter()
    for i, batch in enumerate(_progress(loader, total, "validate", progress_bar and is_main)):
        if i >= total:
            break
        batch = _to_device(batch, device)
        with precision.autocast():
            outputs = forward_fn(model, batch, generator)
        meter.update(_scalars(outputs), _batch_size(batch))
    return meter.means(device)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Any, *, device: torch.device, precision: Precision,
            limit_batches: Any = None, is_main: bool = True, progress_bar: bool = True) -> tuple:
    """Model outputs and targets for every sample of ``loader``'s dataset, in dataset order.

    Returns ``(outputs (N, ...) float32 numpy, targets (N, ...) numpy)``. Under torch.distributed
    each rank predicts its ``DistributedSampler`` shard; the shards are gathered, re-interleaved and
    the sampler's padding repeats are dropped, so the result equals a single-process pass."""
    model.eval()
    total = num_batches(loader, limit_batches)
    outputs, targets = [], []
    for i, batch in enumerate(_progress(loader, total, "predict", progress_bar and is_main)):
        if i >= total:
            break
        x, y = _to_device(batch[0], device), batch[1]
        with precision.autocast():
            out = model(x)
        outputs.append(out.float().cpu())
        targets.append(y.cpu())
    outputs = torch.cat(outputs) if outputs else torch.zeros(0)
    targets = torch.cat(targets) if targets else torch.zeros(0)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (outputs, targets))
        per_rank = max(len(g[0]) for g in gathered)
        order = [(r, i) for i in range(per_rank) for r in range(world) if i < len(gathered[r][0])]
        outputs = torch.stack([gathered[r][0][i] for r, i in order])
        targets = torch.stack([gathered[r][1][i] for r, i in order])
        if limit_batches is None:
            n = len(loader.dataset)
            outputs, targets = outputs[:n], targets[:n]
    return outputs.numpy(), targets.numpy()


def is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
