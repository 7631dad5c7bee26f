"""ECG classifier on the signal ViT (fine-tuning and linear probing; Turgut et al. 2025, oetu/mae).

``ECGClassifier`` is a ``SignalViT`` with a pooling, ``fc_norm`` where the pooling needs it, a linear
``head``, stochastic depth and training-time token masking. All encoder parameters keep the
reference's root-level names (``cls_token``, ``pos_embed``, ``patch_embed.*``, ``blocks.{i}.*``), so
the encoder of a ``SignalMAE`` (``encoder_state_dict()``), an oetu/mae checkpoint's ``model`` dict or
the released MMCL ECG encoder load without remapping. With ``load_state_dict(strict=False)`` the
report is (``head`` keys are ``head.0.*`` / ``head.1.*`` in linear-probe mode):

    global_pool      missing (new layers)                                          unexpected
    cls              head.weight, head.bias                                        -
    avg              head.*, fc_norm.*                                             norm.*
    attention_pool   head.*, fc_norm.*, attention_pool.{in_proj_*, out_proj.*}     norm.*

(the pooled modes pool the block outputs without the final ``norm``, as the reference, which deletes
it; the pretrained ``norm`` is therefore unused and reported as unexpected.)

Pooling (``SignalViT.pool``): ``cls`` -> ``norm`` on the tokens, then the cls token; ``avg`` -> mean of
the patch tokens, then ``fc_norm``; ``attention_pool`` -> ``nn.MultiheadAttention`` with query = mean
of the patch tokens ``(B, 1, D)`` and keys/values = the patch tokens, then ``fc_norm``. ``fc_norm`` is
applied exactly once (the reference applies it a second time in ``forward_head``; we do not).
``fc_norm`` is the reference's LayerNorm (``head_norm="layer"``) or a ``BatchNorm1d``
(``head_norm="batch"``, pooled modes only; a linear probe then has no ``fc_norm``, its head's
BatchNorm takes the pooled features directly). The BatchNorm suits MAE encoders: their raw block outputs
carry a component shared by every sample that is tens of times larger than what varies between
samples. A per-sample LayerNorm keeps that component, so the new head starts out all but blind; a
per-feature BatchNorm removes it (the MAE paper's linear probe puts a BatchNorm there for the same
reason).

Training-time masking (only while the encoder trains: ``model.training`` and not a linear probe; never
at evaluation, unlike the reference, which masks at evaluation too). It acts on the patch tokens
after the positional embedding is added and before the blocks; the cls token is always kept. Masked
tokens are DROPPED (the sequence gets shorter), not replaced by a mask token, as in the reference.

* ``mask_c_ratio``: drop whole leads (rows of the token grid). Per sample, independently, like the
  reference: ``int(rows * (1 - mask_c_ratio))`` rows are kept, chosen by argsort of uniform noise.
* ``mask_t_ratio``: drop whole time columns, per sample, keeping ``int(cols * (1 - mask_t_ratio))``.
  The reference drops rows first and then columns (each with its own noise); so do we.
* ``mask_ratio``: random token masking like the MAE's (``models.vit.random_masking``): per sample
  ``int(L * (1 - mask_ratio))`` tokens kept. Skipped entirely when the ratio is 0 (the reference
  shuffles the tokens even then). In the reference, random and blockwise masking exclude each other
  (``--masking_blockwise``); here they compose: rows/columns are dropped first, then random masking
  acts on the ``L' = rows' * cols'`` tokens left.

Kept tokens stay in their original (lead-major) order (the reference leaves them shuffled; as the
positional embedding is added before masking and attention and pooling are permutation-invariant,
the outputs agree up to floating-point summation order). The noise is drawn from ``generator`` when
one is given (on the generator's device), so a run is reproducible.

Linear probe (``linear_probe=True``, as the MAE linear probe): ``head`` becomes
``Sequential(BatchNorm1d(D, affine=False, eps=1e-6), Linear(D, num_classes))`` and every parameter
outside ``head`` is frozen. The encoder stays in eval mode even after ``.train()`` (no drop path, no
masking: the mask ratios have no effect in this mode), only the head's BatchNorm updates its statistics.

Also here: batch ``mixup``. The losses are in ``models.losses``; the fine-tuning objective that trains
this network is ``models.objectives.Classification``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.losses import TASK_TYPES
from models.vit import VIT_PARAMS, SignalViT, random_masking
from util.schema import Bool, Choice, Float, Int, validate_args

log = logging.getLogger(__name__)

__all__ = ["ECGClassifier", "CLASSIFIER_PARAMS", "POOLINGS", "HEAD_NORMS", "blockwise_masking", "random_token_masking",
           "mixup"]

POOLINGS = ("cls", "avg", "attention_pool")
HEAD_NORMS = ("layer", "batch")
BN_EPS = 1e-6
RATIO = Float(0, 1, max_open=True)
CLASSIFIER_PARAMS = {
    **VIT_PARAMS, "num_classes": Int(min=1), "global_pool": Choice(*POOLINGS), "mask_ratio": RATIO,
    "mask_c_ratio": RATIO, "mask_t_ratio": RATIO, "linear_probe": Bool(), "head_norm": Choice(*HEAD_NORMS),
}


# ---- masking ---------------------------------------------------------------------------------------
def _keep_count(n: int, ratio: float) -> int:
    """Entries kept out of ``n`` at ``ratio`` (the reference's ``int(n * (1 - ratio))``)."""
    return int(n * (1 - ratio))


def _noise(B: int, n: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    noise_device = generator.device if generator is not None else device
    return torch.rand(B, n, generator=generator, device=noise_device).to(device)


def _kept_indices(
    B: int, n: int, ratio: float, generator: Optional[torch.Generator], device: torch.device
) -> torch.Tensor:
    """``(B, K)`` sorted indices of the ``K = int(n * (1 - ratio))`` entries kept per sample (small noise =
    keep, as the reference). No noise is drawn when ``ratio == 0``."""
    if ratio == 0.0:
        return torch.arange(n, device=device).expand(B, n)
    keep = _keep_count(n, ratio)
    ids = torch.argsort(_noise(B, n, generator, device), dim=1)[:, :keep]
    return ids.sort(dim=1).values


def blockwise_masking(
    x: torch.Tensor,
    grid_size: Sequence[int],
    mask_c_ratio: float,
    mask_t_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop whole leads (grid rows), then whole time columns, independently per sample.

    x: (B, R*C, D) patch tokens, lead-major (``token = row * C + col``), ``grid_size = (R, C)``.
    Returns ``x_kept`` (B, R'*C', D) lead-major over the kept rows / columns (original order),
    ``rows`` (B, R') and ``cols`` (B, C') the kept row / column indices, sorted, with
    ``R' = int(R * (1 - mask_c_ratio))`` and ``C' = int(C * (1 - mask_t_ratio))``.
    """
    B, L, D = x.shape
    R, C = (int(v) for v in grid_size)
    if L != R * C:
        raise ValueError(f"{L} tokens do not form a {R} x {C} grid")
    rows = _kept_indices(B, R, mask_c_ratio, generator, x.device)  # (B, R')
    cols = _kept_indices(B, C, mask_t_ratio, generator, x.device)  # (B, C')
    r, c = rows.shape[1], cols.shape[1]
    grid = x.reshape(B, R, C, D)
    if r < R:
        grid = torch.gather(grid, 1, rows[:, :, None, None].expand(B, r, C, D))  # (B, R', C, D)
    if c < C:
        grid = torch.gather(grid, 2, cols[:, None, :, None].expand(B, r, c, D))  # (B, R', C', D)
    return grid.reshape(B, r * c, D), rows, cols


def random_token_masking(
    x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random token masking, the MAE's noise and count, kept tokens in original order.

    x: (B, L, D) -> ``x_kept`` (B, int(L * (1 - mask_ratio)), D) and ``mask`` (B, L) with 1 = removed.
    The same tokens as ``models.vit.random_masking`` with the same generator state; with ratio 0 the
    input is returned as is and no noise is drawn.
    """
    B, L, D = x.shape
    if mask_ratio == 0.0:
        return x, x.new_zeros(B, L)
    _, mask, _ = random_masking(x, mask_ratio, generator)
    keep = _keep_count(L, mask_ratio)
    ids_keep = torch.argsort(mask, dim=1, stable=True)[:, :keep]  # the kept (0) tokens, in original order
    return torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D)), mask


# ---- model -------------------------------------------------------------------------------------------
class ECGClassifier(SignalViT):
    """Signal ViT classifier ``(B, 1, leads, T) -> (B, num_classes)`` (see the module docstring).

    Args beyond ``SignalViT``'s: ``global_pool`` one of ``cls`` | ``avg`` | ``attention_pool``;
    ``mask_ratio`` / ``mask_c_ratio`` / ``mask_t_ratio`` training-time token masking, each in [0, 1);
    ``linear_probe`` freeze the encoder and use a BatchNorm + Linear head; ``head_norm`` ``layer`` |
    ``batch``: ``fc_norm`` a LayerNorm or a BatchNorm1d (``avg`` / ``attention_pool``; in a linear
    probe, whose head starts with a BatchNorm, ``batch`` drops ``fc_norm``). ``drop_path_rate`` rises
    linearly from 0 (first block) to ``drop_path_rate`` (last block).
    """

    def __init__(
        self,
        input_size: Sequence[int] = (12, 2500),
        patch_size: Sequence[int] = (1, 100),
        in_chans: int = 1,
        embed_dim: int = 384,
        depth: int = 3,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int = 5,
        global_pool: str = "attention_pool",
        drop_path_rate: float = 0.1,
        mask_ratio: float = 0.0,
        mask_c_ratio: float = 0.0,
        mask_t_ratio: float = 0.0,
        linear_probe: bool = False,
        head_norm: str = "layer",
        learnable_pos_embed: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        validate_args(CLASSIFIER_PARAMS, global_pool=global_pool, num_classes=num_classes,
                      drop_path_rate=drop_path_rate, mask_ratio=mask_ratio, mask_c_ratio=mask_c_ratio,
                      mask_t_ratio=mask_t_ratio, linear_probe=linear_probe, head_norm=head_norm)
        if head_norm == "batch" and global_pool == "cls":
            raise ValueError("head_norm='batch' replaces fc_norm, which only global_pool 'avg' and "
                             "'attention_pool' have; use head_norm='layer' with 'cls'")
        self.linear_probe = bool(linear_probe)  # set first: train() reads it
        super().__init__(
            input_size=input_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            global_pool=global_pool,
            num_classes=num_classes,
            learnable_pos_embed=learnable_pos_embed,
        )
        self.mask_ratio, self.mask_c_ratio, self.mask_t_ratio = float(mask_ratio), float(mask_c_ratio), float(mask_t_ratio)
        if head_norm == "batch":
            # per feature over the batch, not per sample: an MAE's pooled tokens carry a large
            # component shared by all samples, which a LayerNorm keeps and a BatchNorm removes.
            # A linear probe's head starts with that BatchNorm already.
            self.fc_norm = nn.Identity() if self.linear_probe else nn.BatchNorm1d(self.embed_dim, eps=BN_EPS)
        rows, cols = self.patch_embed.grid_size
        kept = _keep_count(rows, self.mask_c_ratio) * _keep_count(cols, self.mask_t_ratio)
        if kept == 0 or _keep_count(kept, self.mask_ratio) == 0:
            raise ValueError(
                f"mask_ratio {self.mask_ratio}, mask_c_ratio {self.mask_c_ratio}, mask_t_ratio {self.mask_t_ratio} "
                f"leave no token of the {rows} x {cols} grid"
            )

        if self.linear_probe:
            linear = self.head
            self.head = nn.Sequential(nn.BatchNorm1d(self.embed_dim, affine=False, eps=BN_EPS), linear)
            for name, param in self.named_parameters():
                param.requires_grad = name.startswith("head.")
            if global_pool == "attention_pool":
                warnings.warn(
                    "linear_probe with global_pool='attention_pool' freezes the attention pool at its "
                    "initialisation unless the loaded weights contain it; probe with 'avg' or 'cls'",
                    stacklevel=2,
                )
            self.train(self.training)

    @torch.no_grad()
    def init_weights(self) -> None:
        """SignalViT's init (xavier / sin-cos / cls N(0, 0.02)); the head's Linear trunc_normal(std=0.01)."""
        super().init_weights()
        linear = self.head[-1] if isinstance(self.head, nn.Sequential) else self.head
        nn.init.trunc_normal_(linear.weight, std=0.01)
        nn.init.zeros_(linear.bias)

    def train(self, mode: bool = True) -> "ECGClassifier":
        """As ``nn.Module.train``; in linear-probe mode everything but ``head`` stays in eval mode."""
        super().train(mode)
        if self.linear_probe:
            for name, child in self.named_children():
                if name != "head":
                    child.train(False)
        return self

    @property
    def masking_active(self) -> bool:
        """Whether ``forward`` masks tokens now: training, not a linear probe, some ratio > 0."""
        return (
            self.training
            and not self.linear_probe
            and (self.mask_ratio > 0 or self.mask_c_ratio > 0 or self.mask_t_ratio > 0)
        )

    def mask_patches(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Training-time masking of the patch tokens ``(B, N, D) -> (B, K, D)`` (c/t blocks, then random)."""
        if self.mask_c_ratio > 0 or self.mask_t_ratio > 0:
            x, _, _ = blockwise_masking(x, self.patch_embed.grid_size, self.mask_c_ratio, self.mask_t_ratio, generator)
        if self.mask_ratio > 0:
            x, _ = random_token_masking(x, self.mask_ratio, generator)
        return x

    def forward_tokens(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, 1 + K, D)``: embed, mask (training only; K = N otherwise), blocks,
        then ``norm`` for ``cls`` pooling (raw block outputs for ``avg`` / ``attention_pool``)."""
        x = self.embed(x)  # (B, 1 + N, D)
        if self.masking_active:
            x = torch.cat([x[:, :1], self.mask_patches(x[:, 1:], generator)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        if self.global_pool == "cls":
            x = self.norm(x)
        return x

    def forward_features(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, D)`` pooled features (``fc_norm`` applied once for avg / attention_pool)."""
        return self.pool(self.forward_tokens(x, generator))

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``(B, 1, leads, T) -> (B, num_classes)`` logits. ``generator`` seeds the training-time masking."""
        return self.head(self.forward_features(x, generator))


# ---- mixup ---------------------------------------------------------------------------------------------
def mixup(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    generator: Optional[torch.Generator] = None,
    task_type: str = "multiclass",
    num_classes: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup: ``x' = lam * x + (1 - lam) * x[perm]``, ``y'`` likewise, one ``lam ~ Beta(alpha, alpha)``
    per batch (as timm's ``Mixup`` in batch mode; its partner is the reversed batch, ours a random
    permutation).

    x: (B, ...) float; y: multiclass class indices (B,) / (B, 1) (made one-hot float with
    ``num_classes``) or one-hot / probability rows (B, C); multilabel / binary multi-hot floats; regression targets,
    mixed linearly too (a convex combination of targets for the combined input, as in mixup for
    regression). Returns ``(x_mixed, y_mixed)`` with ``y_mixed`` float. Label smoothing is left to
    ``ClassificationLoss`` (torch smooths soft targets the same way timm smooths before mixing).
    ``lam`` and ``perm`` come from ``generator`` only, so equal generator states give equal results.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if not alpha > 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    B = x.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(B, generator=generator, device=gen_device).to(x.device)

    if task_type == "multiclass":
        if y.dim() == 2 and y.shape[1] > 1:
            y = y.float()  # probabilities or one-hot rows
        else:
            if num_classes is None:
                raise ValueError("mixup of class indices needs num_classes")
            y = F.one_hot(y.reshape(-1).long(), int(num_classes)).float()
    else:
        y = y.float()
    y = y.to(x.device)
    x_mixed = x * lam + x[perm] * (1.0 - lam)
    y_mixed = y * lam + y[perm] * (1.0 - lam)
    return x_mixed, y_mixed
