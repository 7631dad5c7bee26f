"""Per-step learning-rate schedule: linear warmup, then a half-cycle cosine to ``min_lr``.

Applied before every optimizer step with the fractional epoch ``e = epoch + step / steps_per_epoch``
(facebookresearch/mae's schedule). Each param group may carry an ``lr_scale`` (layer-wise decay).
"""
from __future__ import annotations

import math


def lr_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional ``epoch``: ``lr * e / W`` during warmup, then cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Set every param group to ``lr * group['lr_scale']`` (scale 1 when absent)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def absolute_lr(blr: float, effective_batch: int, divisor: float) -> float:
    """``lr = blr * effective_batch / divisor`` (oetu/mae: divisor 4; facebookresearch/mae: 256)."""
    return blr * effective_batch / divisor
