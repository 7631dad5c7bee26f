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

Also here: ``ClassificationLoss`` (multiclass / multilabel / binary / regression), the class-weight
helpers ``pos_weight_from_labels`` / ``class_weights_from_labels``, and batch ``mixup``.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.vit import VIT_SIZES, SignalViT, random_masking

log = logging.getLogger(__name__)

__all__ = [
    "ECGClassifier",
    "POOLINGS",
    "TASK_TYPES",
    "blockwise_masking",
    "random_token_masking",
    "build_classifier",
    "ecg_classifier_pluto",
    "ecg_classifier_tiny",
    "ecg_classifier_small",
    "ecg_classifier_medium",
    "ecg_classifier_large",
    "ecg_classifier_base",
    "ClassificationLoss",
    "pos_weight_from_labels",
    "class_weights_from_labels",
    "mixup",
]

POOLINGS = ("cls", "avg", "attention_pool")
TASK_TYPES = ("multiclass", "multilabel", "binary", "regression")
BN_EPS = 1e-6


# ---- masking ---------------------------------------------------------------------------------------
def _check_ratio(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


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
    ``linear_probe`` freeze the encoder and use a BatchNorm + Linear head. ``drop_path_rate`` rises
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
        learnable_pos_embed: bool = True,
        qkv_bias: bool = True,
    ) -> None:
        if global_pool not in POOLINGS:
            raise ValueError(f"global_pool must be one of {POOLINGS}, got {global_pool!r}")
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= float(drop_path_rate) < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
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
        self.mask_ratio = _check_ratio("mask_ratio", mask_ratio)
        self.mask_c_ratio = _check_ratio("mask_c_ratio", mask_c_ratio)
        self.mask_t_ratio = _check_ratio("mask_t_ratio", mask_t_ratio)
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


def build_classifier(size: str = "tiny", **kwargs: Any) -> ECGClassifier:
    """An ``ECGClassifier`` of a named ViT size (config ``_target_: models.classifier.build_classifier``).

    ``kwargs`` go to the constructor and may override the size's ``embed_dim`` / ``depth`` /
    ``num_heads``; YAML lists for ``input_size`` / ``patch_size`` become tuples. An unknown size or an
    unknown keyword raises ValueError naming the valid ones.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; valid sizes: {', '.join(VIT_SIZES)}")
    accepted = [p for p in inspect.signature(ECGClassifier.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown ECGClassifier argument(s) {', '.join(unknown)}; accepted: size, {', '.join(accepted)}"
        )
    for key in ("input_size", "patch_size"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    return ECGClassifier(**{**VIT_SIZES[size], **kwargs})


def ecg_classifier_pluto(**kwargs: Any) -> ECGClassifier:
    return build_classifier("pluto", **kwargs)


def ecg_classifier_tiny(**kwargs: Any) -> ECGClassifier:
    return build_classifier("tiny", **kwargs)


def ecg_classifier_small(**kwargs: Any) -> ECGClassifier:
    return build_classifier("small", **kwargs)


def ecg_classifier_medium(**kwargs: Any) -> ECGClassifier:
    return build_classifier("medium", **kwargs)


def ecg_classifier_large(**kwargs: Any) -> ECGClassifier:
    return build_classifier("large", **kwargs)


def ecg_classifier_base(**kwargs: Any) -> ECGClassifier:
    return build_classifier("base", **kwargs)


# ---- losses --------------------------------------------------------------------------------------------
def _as_tensor(values: Any, name: str) -> Optional[torch.Tensor]:
    if values is None:
        return None
    t = torch.as_tensor(np.asarray(values, dtype=np.float32) if not torch.is_tensor(values) else values)
    t = t.detach().to(torch.float32).flatten()
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {t.tolist()}")
    return t


class ClassificationLoss(nn.Module):
    """The fine-tuning objective by task type; ``forward(logits, targets) -> 0-dim float32 loss``.

    * ``multiclass``: ``F.cross_entropy`` with ``label_smoothing`` and optional ``class_weights`` (C,).
      logits (B, C); targets either class indices (B,) / (B, 1) or one-hot integer / bool rows (B, C)
      (taken as indices: their argmax), or class probabilities (B, C) float (soft targets from
      ``mixup``; torch smooths them as ``y * (1 - eps) + eps / C``,
      which equals timm's smoothed-then-mixed targets, so mixup needs no smoothing of its own).
      Note torch's reductions: with class weights, hard targets divide by the sum of the picked
      weights, soft targets by B.
    * ``multilabel``: ``F.binary_cross_entropy_with_logits`` with optional ``pos_weight`` (C,); logits
      and targets (B, C), targets multi-hot (or mixed) floats.
    * ``binary``: the same on one logit: logits (B,) or (B, 1), targets (B,) or (B, 1); ``pos_weight`` (1,).
    * ``regression``: ``F.mse_loss``; logits (B, K), targets (B, K) (or (B,) when K = 1).

    ``label_smoothing`` only applies to ``multiclass`` (as in the reference and the seed project); for
    the other task types a non-zero value is ignored with a warning. The loss is computed in float32
    with autocast off. ``num_classes`` (optional) is checked against the logits and the weights.
    """

    def __init__(
        self,
        task_type: str,
        *,
        label_smoothing: float = 0.0,
        class_weights: Any = None,
        pos_weight: Any = None,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
        self.task_type = task_type
        self.num_classes = None if num_classes is None else int(num_classes)
        smoothing = float(label_smoothing)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {smoothing}")
        if smoothing > 0 and task_type != "multiclass":
            log.warning("label_smoothing %s is ignored for task_type %r (multiclass only)", smoothing, task_type)
            smoothing = 0.0
        self.label_smoothing = smoothing
        cw, pw = _as_tensor(class_weights, "class_weights"), _as_tensor(pos_weight, "pos_weight")
        if cw is not None and task_type != "multiclass":
            raise ValueError(f"class_weights apply to multiclass only, not {task_type!r} (use pos_weight)")
        if pw is not None and task_type not in ("multilabel", "binary"):
            raise ValueError(f"pos_weight applies to multilabel / binary only, not {task_type!r}")
        expected = 1 if task_type == "binary" else self.num_classes
        for name, w in (("class_weights", cw), ("pos_weight", pw)):
            if w is not None and expected is not None and w.numel() != expected:
                raise ValueError(f"{name} has {w.numel()} entries, expected {expected}")
        self.register_buffer("class_weights", cw, persistent=False)
        self.register_buffer("pos_weight", pw, persistent=False)

    def extra_repr(self) -> str:
        return f"task_type={self.task_type!r}, label_smoothing={self.label_smoothing}, num_classes={self.num_classes}"

    def _check_width(self, logits: torch.Tensor) -> None:
        if self.num_classes is not None and logits.shape[-1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[-1]} outputs, expected num_classes={self.num_classes}")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            if self.task_type == "multiclass":
                self._check_width(logits)
                weight = None if self.class_weights is None else self.class_weights.to(logits.device)
                if targets.dim() == 2 and targets.shape[1] > 1:
                    # (B, C): float class probabilities, or integer / bool one-hot rows (-> indices)
                    target = targets.float() if targets.is_floating_point() else targets.long().argmax(dim=1)
                else:
                    if targets.is_floating_point():
                        raise ValueError(
                            f"multiclass targets must be class indices (B,) or probabilities (B, C), "
                            f"got float {tuple(targets.shape)}"
                        )
                    target = targets.reshape(-1).long()
                return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)
            if self.task_type == "regression":
                return F.mse_loss(logits, targets.float().reshape(logits.shape))
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
            if self.task_type == "binary":
                if logits.dim() == 2 and logits.shape[1] != 1:
                    raise ValueError(f"binary task needs one logit per sample, got {tuple(logits.shape)}")
                logits = logits.reshape(-1)
                return F.binary_cross_entropy_with_logits(logits, targets.float().reshape(-1), pos_weight=pos_weight)
            self._check_width(logits)  # multilabel
            return F.binary_cross_entropy_with_logits(logits, targets.float(), pos_weight=pos_weight)


def _labels_array(labels: Any) -> np.ndarray:
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels)


def pos_weight_from_labels(labels: Any, *, max_weight: float = 100.0) -> torch.Tensor:
    """BCE ``pos_weight`` per class from training labels: ``negatives / positives``, clipped to
    ``[1 / max_weight, max_weight]``.

    labels: (N, C) multi-hot (or (N,) for a binary task); NaN entries (unknown labels) are ignored.
    Returns float32 (C,). A class without positives or without negatives gets 1.0 and is reported
    with a warning.
    """
    y = _labels_array(labels).astype(np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"labels must be (N, C) or (N,), got shape {y.shape}")
    known = ~np.isnan(y)
    pos = ((y > 0.5) & known).sum(axis=0).astype(np.float64)
    neg = ((y <= 0.5) & known).sum(axis=0).astype(np.float64)
    degenerate = (pos == 0) | (neg == 0)
    weight = np.where(degenerate, 1.0, neg / np.maximum(pos, 1.0))
    weight = np.clip(weight, 1.0 / max_weight, max_weight)
    if degenerate.any():
        log.warning(
            "pos_weight: class(es) %s have no positive or no negative training labels; weight 1.0",
            np.flatnonzero(degenerate).tolist(),
        )
    return torch.as_tensor(weight, dtype=torch.float32)


def class_weights_from_labels(labels: Any, num_classes: int) -> torch.Tensor:
    """"Balanced" CE class weights: inverse class frequency normalised to mean 1 over the classes present.

    labels: (N,) / (N, 1) class indices, or (N, C) one-hot (argmax is taken). ``w_c = (1 / n_c) /
    mean_k(1 / n_k)``: proportional to sklearn's ``N / (C * n_c)``. Classes absent from the labels get
    1.0 and are reported with a warning. Returns float32 (num_classes,).
    """
    y = _labels_array(labels)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weight = np.ones(num_classes, dtype=np.float64)
    if present.any():
        inv = 1.0 / counts[present]
        weight[present] = inv / inv.mean()
    if not present.all():
        log.warning("class_weights: class(es) %s absent from the labels; weight 1.0", np.flatnonzero(~present).tolist())
    return torch.as_tensor(weight, dtype=torch.float32)


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
