"""Every loss of the project: the MAE's MSE + NCC reconstruction loss and the supervised losses by
task type (NT-Xent and CLIP join here with the contrastive objectives).

Each loss is computed in float32 with autocast off, whatever precision the model runs in.

``ReconstructionLoss`` (the signal MAE, oetu/mae): ``loss = (1 - ncc_weight) * MSE + ncc_weight * (1 - NCC)``.

* MSE between the predicted patches and the patchified input ``(B, L, p0*p1*C)`` (each target patch
  normalised to zero mean / unit variance when ``norm_pix_loss``): mean over the removed patches
  (``loss_on="masked"``, facebookresearch/mae) or over all patches (``loss_on="all"``, oetu/mae).
* NCC as in oetu/mae: the Pearson correlation along time between the input signal and the
  unpatchified FULL prediction (visible patches are not pasted in), per (sample, channel, row),
  averaged. Both signals are standardised with the unbiased variance plus 1e-12 and the product is
  summed over time and divided by T - 1. With ``norm_pix_loss`` the prediction is in normalised-patch
  units while the input is not, exactly as in the reference.
* ``ncc_masked`` (logged, not in the loss): the same correlation over the removed samples only, per
  (sample, channel, row). The visible patches, which the MAE sees, inflate the full-signal NCC (the
  lower the mask ratio, the more); this one measures only what was inferred.

``ClassificationLoss``: cross-entropy (multiclass), BCE with logits (multilabel, binary), MSE
(regression); ``pos_weight_from_labels`` / ``class_weights_from_labels`` derive weights from the
training labels.

``nt_xent`` (SimCLR): the 2N views of a batch, each view's positive is the other view of its sample and
its negatives the other 2N - 2 views; under DDP the candidates come from every rank with gradients.

``clip_loss`` (MMCL): ``0.5 * CE(logits, I) + 0.5 * CE(logits^T, I)`` with
``logits = norm(z_a) @ norm(z_b)^T / temperature``; under DDP both sides are gathered from every rank.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from util.collectives import all_gather_with_grad
from util.schema import Choice, Float, validate_args

log = logging.getLogger(__name__)

__all__ = [
    "LOSS_ON",
    "TASK_TYPES",
    "normalized_cross_correlation",
    "masked_normalized_cross_correlation",
    "ReconstructionLoss",
    "ClassificationLoss",
    "pos_weight_from_labels",
    "class_weights_from_labels",
    "nt_xent",
    "clip_loss",
]

LOSS_ON = ("masked", "all")
TASK_TYPES = ("multiclass", "multilabel", "binary", "regression")
RECONSTRUCTION_PARAMS = {"ncc_weight": Float(0, 1), "loss_on": Choice(*LOSS_ON)}


# ---- reconstruction (MAE) ---------------------------------------------------------------------------
def normalized_cross_correlation(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean Pearson correlation along the last axis over all leading axes (oetu/mae's NCC).

    ``a``, ``b``: (..., T). Each signal is divided by ``sqrt(unbiased var + eps)``; a constant signal
    therefore correlates 0 with anything (no NaN).
    """
    T = a.shape[-1]
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    var_a = a.pow(2).sum(dim=-1) / (T - 1)
    var_b = b.pow(2).sum(dim=-1) / (T - 1)
    r = (a * b).sum(dim=-1) / (T - 1) / ((var_a + eps).sqrt() * (var_b + eps).sqrt())
    return r.mean()


def masked_normalized_cross_correlation(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                                        eps: float = 1e-12) -> torch.Tensor:
    """Mean Pearson correlation along the last axis over the samples where ``weight`` is 1.

    ``a``, ``b``, ``weight``: (..., T), weight 0/1. Rows with fewer than two weighted samples are left
    out of the mean; a constant row correlates 0 (no NaN); no such row at all gives 0.
    """
    n = weight.sum(dim=-1)
    n_safe = n.clamp_min(1.0)
    a = (a - (a * weight).sum(dim=-1, keepdim=True) / n_safe.unsqueeze(-1)) * weight
    b = (b - (b * weight).sum(dim=-1, keepdim=True) / n_safe.unsqueeze(-1)) * weight
    r = (a * b).sum(dim=-1) / ((a.pow(2).sum(dim=-1) + eps).sqrt() * (b.pow(2).sum(dim=-1) + eps).sqrt())
    rows = (n >= 2).to(r.dtype)
    return (r * rows).sum() / rows.sum().clamp_min(1.0)


class ReconstructionLoss(nn.Module):
    """The MAE loss (see the module docstring); ``forward`` returns ``loss`` plus the detached
    ``loss_mse``, ``loss_ncc`` (= 1 - ncc), ``ncc`` and ``ncc_masked``."""

    def __init__(self, *, ncc_weight: float, norm_pix_loss: bool, loss_on: str) -> None:
        super().__init__()
        validate_args(RECONSTRUCTION_PARAMS, ncc_weight=ncc_weight, loss_on=loss_on)
        self.ncc_weight = float(ncc_weight)
        self.norm_pix_loss = bool(norm_pix_loss)
        self.loss_on = loss_on

    def extra_repr(self) -> str:
        return f"ncc_weight={self.ncc_weight}, norm_pix_loss={self.norm_pix_loss}, loss_on={self.loss_on!r}"

    def forward(self, x: torch.Tensor, target: torch.Tensor, pred: torch.Tensor, pred_signal: torch.Tensor,
                mask: torch.Tensor, mask_signal: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, C, H, T) input signal; target (B, L, P) its patches; pred (B, L, P) predicted patches;
        pred_signal (B, C, H, T) the prediction unpatchified; mask (B, L), 1 = removed, and
        mask_signal (B, C, H, T) the same per sample. float32 in."""
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, L)
        if self.loss_on == "masked":
            mse = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        else:
            mse = per_patch.mean()
        ncc = normalized_cross_correlation(x, pred_signal)
        loss = (1.0 - self.ncc_weight) * mse + self.ncc_weight * (1.0 - ncc)
        with torch.no_grad():
            ncc_masked = masked_normalized_cross_correlation(x, pred_signal, mask_signal)
        return {"loss": loss, "loss_mse": mse.detach(), "loss_ncc": (1.0 - ncc).detach(), "ncc": ncc.detach(),
                "ncc_masked": ncc_masked}


# ---- supervised ---------------------------------------------------------------------------------------
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


# ---- contrastive -----------------------------------------------------------------------------------
def _normalised_and_gathered(z1: torch.Tensor, z2: torch.Tensor):
    """``(z1, z2, all z1, all z2, rows)``: both L2-normalised in float32 (float64 kept), gathered from
    every rank with their gradients, and the rows of this rank's samples among the gathered ones."""
    z1, z2 = (F.normalize(z if z.dtype == torch.float64 else z.float(), dim=1) for z in (z1, z2))
    g1, g2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
    b = z1.shape[0]
    rank = int(torch.distributed.get_rank()) if g1.shape[0] != b else 0
    return z1, z2, g1, g2, torch.arange(b, device=z1.device) + rank * b


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020) of two views ``z1``, ``z2`` (B, D) of the same B samples.

    With the embeddings L2-normalised and gathered from every rank into 2M rows (M = the global batch:
    the first views of all ranks, then the second views), each local view ``i`` is an anchor with
    ``loss_i = -log(exp(s(i, pos) / t) / sum_{k != i} exp(s(i, k) / t))`` over the 2M - 1 other
    views; the result is the mean over this rank's 2B anchors. One process gives the textbook loss;
    N ranks with DDP give the loss and gradients of one process on the concatenated batch."""
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z1, z2, g1, g2, local = _normalised_and_gathered(z1, z2)
        m = g1.shape[0]
        candidates = torch.cat([g1, g2])  # (2M, D)
        anchors = torch.cat([z1, z2])  # (2B, D): this rank's views
        logits = anchors @ candidates.T / float(temperature)  # (2B, 2M)
        self_index = torch.cat([local, local + m])  # where each anchor sits among the candidates
        positive = torch.cat([local + m, local])
        logits = logits.masked_fill(F.one_hot(self_index, 2 * m).bool(), float("-inf"))
        return F.cross_entropy(logits, positive)


def clip_loss(z_a: torch.Tensor, z_b: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """CLIP loss of two modalities ``z_a``, ``z_b`` (B, D) of the same B subjects (Radford et al. 2021;
    the MMCL reference: a = image, b = ECG).

    With both L2-normalised and gathered from every rank (M rows), this rank's rows of
    ``logits = z_a @ z_b_all^T / t`` score each local a against every b (its partner is the target)
    and the rows of ``z_b @ z_a_all^T / t`` each local b against every a; the loss is the mean of the
    two cross-entropies over the local rows. One process gives ``0.5 * CE(L, I) + 0.5 * CE(L^T, I)``
    of the full ``L = z_a @ z_b^T / t``; N ranks with DDP give its loss and gradients on the
    concatenated batch. ``temperature`` may be a tensor (a learnable one gets its gradient)."""
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        z_a, z_b, all_a, all_b, target = _normalised_and_gathered(z_a, z_b)
        a_to_b = z_a @ all_b.T / temperature
        b_to_a = z_b @ all_a.T / temperature
        return 0.5 * F.cross_entropy(a_to_b, target) + 0.5 * F.cross_entropy(b_to_a, target)
