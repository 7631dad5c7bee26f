"""Optimizer parameter groups: which parameters get weight decay (and, later, layer-wise LR decay)."""
from __future__ import annotations

from typing import Iterable

import torch


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float,
                              no_decay_names: Iterable[str] = ()) -> list[dict]:
    """Two groups: decayed weights, and biases / 1-D parameters (norms) / ``no_decay_names`` without decay.

    Frozen parameters (``requires_grad=False``, e.g. the MAE's fixed sin-cos position embeddings)
    are left out of the optimizer."""
    skip = set(no_decay_names)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0}]
