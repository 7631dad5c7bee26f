"""Saliency maps of our networks, and a deletion test of their faithfulness.

Every map has the shape of the input it explains, so a caller can draw or test it without knowing
the method:

    integrated_gradients(forward, x, target)     (B, *x.shape[1:])  captum; signed, per input value
    attention_rollout(vit, x)                    (B, 1, leads, T)   Abnar & Zuidema 2020, to the pooled output
    last_block_attention(vit, x)                 (B, 1, leads, T)   the last block's attention of the pooled output
    grad_cam(forward, layer, x, target)          (B, 1, H, W)       captum LayerGradCam, upsampled bilinearly
    signal_token_similarity / image_region_similarity   where one modality's tokens / regions are most
                                                 similar to the other modality's embedding (MMCL)
    deletion_test(score, x, maps, fraction)      the score after zeroing the top vs a random fraction

Attention maps are per token (one lead x ``patch`` samples); ``tokens_to_signal`` maps them back to
time within each lead by linear interpolation along time only, so a lead's map never borrows from
another lead. ``forward`` arguments are callables ``x -> (B, C)`` (logits) or ``x -> (B,)`` (a
similarity); the networks stay in eval mode and keep their ``requires_grad`` flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SaliencyMap", "integrated_gradients", "attention_rollout", "last_block_attention", "tokens_to_signal",
           "grad_cam",
           "signal_token_similarity", "image_region_similarity", "deletion_test"]


@dataclass
class SaliencyMap:
    """One method's maps of a batch for one input field: ``maps`` (B, *that field's sample shape);
    ``about`` what they explain (a class name, "the paired CMR's embedding"); ``score`` (B,) that
    target's score (a probability, a similarity), when there is one."""
    field: str
    method: str
    about: str
    maps: torch.Tensor
    score: Optional[torch.Tensor] = None


def integrated_gradients(forward: Callable, x: torch.Tensor, target: Optional[int], *, steps: int = 32,
                         baseline: Optional[torch.Tensor] = None, internal_batch_size: int = 64) -> torch.Tensor:
    """Integrated gradients (Sundararajan et al. 2017) of ``forward(x)[:, target]`` (``target`` None:
    ``forward`` returns one score per sample) from ``baseline`` (zeros: a flat line at 0 mV / a black
    image) to ``x``; ``(B, ...)`` like ``x``, float32."""
    from captum.attr import IntegratedGradients

    x = x.detach().float()
    baseline = torch.zeros_like(x) if baseline is None else baseline.to(x)
    ig = IntegratedGradients(forward)
    return ig.attribute(x, baselines=baseline, target=target, n_steps=int(steps),
                        internal_batch_size=max(int(internal_batch_size), len(x))).detach()


def _attention_maps(vit: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each block's head-averaged attention ``(B, 1 + N, 1 + N)`` and the tokens the pooling sees."""
    tokens = vit.embed(x)
    maps = []
    for blk in vit.blocks:
        maps.append(blk.attn.attention_probs(blk.norm1(tokens)).mean(dim=1))
        tokens = blk(tokens)
    if vit.global_pool in (None, "cls"):
        tokens = vit.norm(tokens)
    return maps, tokens


def _pooling_weights(vit: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, 1 + N)``: how much each output token enters the pooled vector: the cls token for ``cls``,
    the mean of the patch tokens for ``avg``, the attention pool's own weights for ``attention_pool``."""
    B, n1, _ = tokens.shape
    weights = tokens.new_zeros(B, n1)
    if vit.global_pool in (None, "cls"):
        weights[:, 0] = 1.0
    elif vit.global_pool == "avg":
        weights[:, 1:] = 1.0 / (n1 - 1)
    else:
        patches = tokens[:, 1:]
        _, pool = vit.attention_pool(patches.mean(dim=1, keepdim=True), patches, patches, need_weights=True,
                                     average_attn_weights=True)
        weights[:, 1:] = pool[:, 0]
    return weights


def tokens_to_signal(token_map: torch.Tensor, grid_size: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """``(B, rows * cols)`` per-token values (lead-major) -> ``(B, 1, rows * p0, cols * p1)`` per sample:
    linear interpolation along time within each row; the ``p0`` leads of a row share its values."""
    rows, cols = (int(v) for v in grid_size)
    p0, p1 = (int(v) for v in patch_size)
    B = token_map.shape[0]
    per_row = token_map.reshape(B * rows, 1, cols).float()
    in_time = F.interpolate(per_row, size=cols * p1, mode="linear", align_corners=False)  # (B * rows, 1, T)
    return in_time.reshape(B, rows, 1, cols * p1).repeat_interleave(p0, dim=1).reshape(B, 1, rows * p0, cols * p1)


@torch.no_grad()
def attention_rollout(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention rollout of a ``SignalViT``: the residual-corrected attention ``0.5 A + 0.5 I`` of every
    block multiplied through, read out with the pooling's weights; ``(B, 1, leads, T)``, sums to 1 over
    the patch tokens' samples of each record (up to the cls token's share)."""
    maps, tokens = _attention_maps(vit, x)
    eye = torch.eye(maps[0].shape[-1], device=x.device, dtype=maps[0].dtype)
    rollout = eye.expand_as(maps[0])
    for attn in maps:
        attn = 0.5 * attn + 0.5 * eye
        rollout = (attn / attn.sum(dim=-1, keepdim=True)) @ rollout
    relevance = (_pooling_weights(vit, tokens)[:, None, :] @ rollout)[:, 0, 1:]  # (B, N) over the input tokens
    return tokens_to_signal(relevance, vit.patch_embed.grid_size, vit.patch_embed.patch_size)


@torch.no_grad()
def last_block_attention(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last block's head-averaged attention from the tokens the pooling reads to the patch tokens
    (the seed's ECG saliency); ``(B, 1, leads, T)``."""
    maps, tokens = _attention_maps(vit, x)
    relevance = (_pooling_weights(vit, tokens)[:, None, :] @ maps[-1])[:, 0, 1:]
    return tokens_to_signal(relevance, vit.patch_embed.grid_size, vit.patch_embed.patch_size)


def grad_cam(forward: Callable, layer: nn.Module, x: torch.Tensor, target: Optional[int]) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of ``forward(x)[:, target]`` at ``layer`` (the last ResNet stage),
    ReLU'd and upsampled bilinearly to the input size: ``(B, 1, H, W)``."""
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(forward, layer).attribute(x.detach().float(), target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")


@torch.no_grad()
def signal_token_similarity(vit: nn.Module, projector: nn.Module, x: torch.Tensor,
                            other: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each ECG token, through the model's own pooling norm and projection head,
    to ``other`` (B, P), the paired image's embedding: ``(B, 1, leads, T)`` in [-1, 1]."""
    tokens = vit.forward_tokens(x)[:, 1:]  # (B, N, D); already normed for cls pooling
    if vit.global_pool in ("avg", "attention_pool"):
        tokens = vit.fc_norm(tokens)
    local = F.normalize(projector(tokens).float(), dim=-1)
    similarity = (local @ F.normalize(other.float(), dim=-1)[:, :, None])[..., 0]  # (B, N)
    return tokens_to_signal(similarity, vit.patch_embed.grid_size, vit.patch_embed.patch_size)


@torch.no_grad()
def image_region_similarity(resnet: nn.Module, projector: nn.Module, x: torch.Tensor,
                            other: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each region of the last ResNet stage, through the projection head, to
    ``other`` (B, P), the paired ECG's embedding; upsampled bilinearly: ``(B, 1, H, W)`` in [-1, 1]."""
    regions = resnet.feature_map(x)  # (B, C, h, w)
    B, C, h, w = regions.shape
    local = F.normalize(projector(regions.flatten(2).transpose(1, 2)).float(), dim=-1)  # (B, h * w, P)
    similarity = (local @ F.normalize(other.float(), dim=-1)[:, :, None])[..., 0].reshape(B, 1, h, w)
    return F.interpolate(similarity, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)


@torch.no_grad()
def deletion_test(score: Callable, x: torch.Tensor, maps: torch.Tensor, *, fraction: float = 0.1,
                  generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
    """Zero the ``fraction`` of each input's values with the highest map values, and, separately, a
    random ``fraction``; ``score(x) -> (B,)`` before and after. A faithful map lowers the score more
    than the random deletion does. Returns ``{original, top, random}``, each ``(B,)``."""
    B = x.shape[0]
    flat_maps = maps.reshape(B, -1).float()
    n = flat_maps.shape[1]
    k = max(1, int(round(fraction * n)))
    top = torch.zeros(B, n, dtype=torch.bool, device=x.device)
    top.scatter_(1, flat_maps.topk(k, dim=1).indices, True)
    noise = torch.rand(B, n, generator=generator, device=generator.device if generator is not None else x.device)
    rand = torch.zeros(B, n, dtype=torch.bool, device=x.device)
    rand.scatter_(1, noise.to(x.device).topk(k, dim=1).indices, True)
    flat = x.reshape(B, -1)
    return {"original": score(x), "top": score(flat.masked_fill(top, 0.0).reshape(x.shape)),
            "random": score(flat.masked_fill(rand, 0.0).reshape(x.shape))}
