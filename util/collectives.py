"""Differentiable collectives for losses and layers that need the whole global batch.

    z_all = all_gather_with_grad(z)          # (world * B, D); gradients reach every rank's z
    model = convert_sync_batchnorm(model, device)   # batch statistics over every rank

Both are the identity when not distributed. (``util.distributed`` keeps torch unimported for fast
command-line tools; this module is for training code.)
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.modules.batchnorm import _BatchNorm

from util.distributed import world_size

__all__ = ["all_gather_with_grad", "all_reduce_with_grad", "GlobalBatchNorm", "convert_sync_batchnorm"]


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # a reduce-scatter in effect (gloo has none): every rank's loss used our rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``cat([x of rank 0, x of rank 1, ...])`` along dim 0 (every rank passes the same shape).

    The backward sums the gathered tensor's gradient over the ranks and returns this rank's rows: with
    DDP averaging parameter gradients, a loss averaged over each rank's own anchors then trains
    exactly as one process on the concatenated batch would."""
    if world_size() <= 1 or not dist.is_initialized():
        return x
    return _AllGatherWithGrad.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks; the backward sums the gradients alike."""
    if world_size() <= 1 or not dist.is_initialized():
        return x
    return _AllReduceWithGrad.apply(x)


class GlobalBatchNorm(_BatchNorm):
    """Batch norm over the global batch for any backend (``torch.nn.SyncBatchNorm`` runs on GPUs only).

    In training with several ranks, each channel's mean and biased variance come from the sums of
    ``x`` and ``x**2`` over (N, *spatial) of every rank, through ``all_reduce_with_grad``; the running
    variance takes the unbiased global one, as ``torch.nn.BatchNorm2d`` does in one process.
    Otherwise it is a plain batch norm (same parameters, buffers and state-dict names)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1 and dist.is_initialized()):
            return super().forward(x)
        c, dims = x.shape[1], [0] + list(range(2, x.dim()))
        xf = x if x.dtype == torch.float64 else x.float()
        count = torch.full((1,), float(x.numel() // c), device=x.device, dtype=xf.dtype)
        total = all_reduce_with_grad(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        n = total[-1].detach()
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), momentum)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def _to_global(module: torch.nn.Module) -> torch.nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = _to_global(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert_sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` with every batch norm normalising over the global batch: ``torch.nn.SyncBatchNorm``
    on CUDA, ``GlobalBatchNorm`` elsewhere. The parameters and buffers are the same tensors, so
    state-dict names and an optimizer built before stay valid."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _to_global(module)
