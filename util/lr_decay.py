"""Optimizer parameter groups: weight decay, and layer-wise learning-rate decay for ViTs.

Layer-wise LR decay (BEiT / ELECTRA, as in facebookresearch/mae and oetu/mae fine-tuning): with
``num_layers = depth + 1``, a parameter's layer id is

    0               cls_token, pos_embed, patch_embed.*
    k + 1           blocks.k.*
    num_layers      everything else (norm, fc_norm, attention_pool, head)

and its learning rate is multiplied by ``lr_scale = layer_decay ** (num_layers - layer_id)`` (the head
trains at the full rate, the patch embedding at ``layer_decay ** (depth + 1)``). A model may define
its own ids with ``num_layers()`` / ``layer_id(name)``; ``layer_id_for_vit`` is the rule above, for
any module named like a ViT. No weight decay for 1-D parameters (norms, and so all biases), names
ending in ``.bias``, and ``no_weight_decay_list`` (default ``model.no_weight_decay()``). Frozen
parameters (``requires_grad=False``) are left out of the optimizer. Each group carries ``lr_scale``
and ``weight_decay``; ``util.lr_sched.set_lr`` sets ``lr = base_lr * lr_scale`` every step.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

__all__ = ["param_groups_lrd", "layer_id_for_vit", "layer_scales"]


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer id of parameter ``name`` in a ViT with ``num_layers = depth + 1`` (see the module docstring)."""
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers


def _num_layers(model: torch.nn.Module) -> int:
    if hasattr(model, "num_layers"):
        return int(model.num_layers())
    if not hasattr(model, "blocks"):
        raise TypeError(f"layer-wise LR decay needs a ViT with `blocks`, got {type(model).__name__}")
    return len(model.blocks) + 1


def _layer_id(model: torch.nn.Module, name: str, num_layers: int) -> int:
    if hasattr(model, "layer_id"):
        return int(model.layer_id(name))
    return layer_id_for_vit(name, num_layers)


def _check_layer_decay(layer_decay: float) -> float:
    layer_decay = float(layer_decay)
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    return layer_decay


def layer_scales(model: torch.nn.Module, layer_decay: float) -> dict[str, float]:
    """``{parameter name: lr_scale}`` for every parameter of ``model`` (frozen ones included)."""
    layer_decay = _check_layer_decay(layer_decay)
    num_layers = _num_layers(model)
    return {name: layer_decay ** (num_layers - _layer_id(model, name, num_layers))
            for name, _ in model.named_parameters()}


def param_groups_lrd(model: torch.nn.Module, *, weight_decay: float, layer_decay: float,
                     no_weight_decay_list: Optional[Iterable[str]] = None) -> list[dict]:
    """Parameter groups for AdamW, one per (layer id, decay / no_decay); with ``layer_decay == 1``
    every layer shares one scale, giving two groups (and the model needs no layer ids).

    Groups appear in the order their first parameter appears in ``model.named_parameters()`` and
    are ``{"params": [...], "lr_scale": layer_decay ** (num_layers - layer_id), "weight_decay": wd or 0}``.
    ``no_weight_decay_list`` defaults to ``model.no_weight_decay()`` (empty when the model has none).
    Pass the unwrapped model (not the DDP wrapper), whose parameter names are the reference's.
    """
    layer_decay = _check_layer_decay(layer_decay)
    if no_weight_decay_list is None:
        no_weight_decay_list = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    skip = set(no_weight_decay_list)
    num_layers = _num_layers(model) if layer_decay < 1.0 else 0
    groups: dict[tuple[int, str], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        layer_id = _layer_id(model, name, num_layers) if layer_decay < 1.0 else 0
        key = (layer_id, "no_decay" if no_decay else "decay")
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr_scale": layer_decay ** (num_layers - layer_id),
                "weight_decay": 0.0 if no_decay else float(weight_decay),
            }
        groups[key]["params"].append(param)
    return list(groups.values())

