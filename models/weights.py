"""Pretrained weights: read a checkpoint safely and load its encoder into a model, reporting every key.

Formats read (REFERENCE.md section 5):

    ours        {'model': sd, 'optimizer', 'epoch', ..., 'config': yaml text}     (util.checkpoint)
    reference   {'model': sd, 'optimizer', 'epoch', 'scaler', 'args': Namespace}  (oetu/mae; pickled)
    mmcl_ecg    {'model': sd} without head / fc_norm, or keys under 'encoder_ecg.'
    mmcl_image  {'state_dict': {'encoder_imaging.{i}.*'}}, i = ResNet child 0..8
    mmcl        a multimodal checkpoint with both 'encoder_imaging.' and 'encoder_ecg.' keys
    state_dict  a bare dict of tensors (or one inside 'state_dict', 'module', 'net', ...)

Files are read with ``torch.load(weights_only=True)``. A file holding pickled Python objects (the
reference's ``args``) is refused unless ``allow_pickle=True`` (config ``model.allow_pickle_weights``).

Loading rules (``load_pretrained``):

* Key names: ``module.`` (DDP) and wrapper prefixes (``encoder_ecg.``, ``model.``, ``backbone.``, ...)
  are stripped when that makes more checkpoint keys match the model; ``encoder_imaging.{i}.`` is
  mapped to torchvision ResNet names (``conv1``, ``bn1``, ``layer1`` ...).
* ``ignore_prefixes`` (MAE decoder, mask token, contrastive projector / predictor) are dropped and
  listed under ``ignored`` unless the model has those keys itself.
* ``pos_embed`` with a different token grid is resized to the model's grid (``interpolated``): a
  fixed sin-cos table (the MAE's) is rebuilt for the new grid, a learned one interpolated (bicubic).
* A convolution with RGB weights for a model with 1 input channel (a torchvision / MMCL ResNet stem
  for grayscale CMR) gets the weights summed over their input channels.
* Other shape differences are refused (``mismatched``): they mean a different architecture or size.
* New layers (``head``, ``fc_norm``, ``attention_pool``, ``fc``, plus ``expected_missing``) may be
  missing or differ in shape: they keep their fresh init and never count against
  ``tolerated_missing_fraction``. Any other missing key does; above it the load is refused.
* Checkpoint keys the model lacks (e.g. an MAE's ``norm`` in a pooled classifier) are ``unexpected``:
  reported, never fatal.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn as nn

from models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from util.checkpoint import unreadable_reason
from util.errors import WeightsError

__all__ = ["WeightsError", "LoadReport", "read_state_dict", "load_pretrained", "mmcl_image_layout", "NEW_LAYERS"]

logger = logging.getLogger(__name__)

CONTAINER_KEYS = ("model", "state_dict", "model_state_dict", "module", "encoder", "net")
WRAPPER_NAMES = ("module", "model", "encoder", "encoder_ecg", "encoder_signal", "encoder_imaging", "backbone", "net")
NEW_LAYERS = ("head", "fc_norm", "attention_pool", "fc")  # root-level layers a fine-tuned model adds
RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool")
MAX_LISTED = 8

OPT_IN = (
    "If you trust the file, opt in with the config override model.allow_pickle_weights=true "
    "(in code: load_pretrained(..., allow_pickle=True))."
)


def _names(keys: Sequence, limit: int = MAX_LISTED) -> str:
    keys = list(keys)
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did with each key (checkpoint names after prefix stripping)."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)  # includes the interpolated ones
    missing: list[str] = field(default_factory=list)  # model keys not loaded, new layers included
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint, model)
    interpolated: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    new_layers: list[str] = field(default_factory=list)  # the part of ``missing`` that is tolerated
    renamed: str = ""  # how checkpoint keys were renamed, e.g. "stripped 'module.'"
    num_model_keys: int = 0
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # the file's plain top-level entries (contract, training_data)

    @property
    def missing_required(self) -> list[str]:
        """Missing keys that are not new layers (these count against the tolerance)."""
        new = set(self.new_layers)
        return [k for k in self.missing if k not in new]

    def summary(self) -> str:
        """A few lines: counts and (truncated) names; interpolated / mismatched only when present."""
        def line(label: str, keys: Sequence) -> str:
            return f"  {label} {len(keys)}" + (f": {_names(keys)}" if keys else "")

        lines = [
            f"pretrained weights {self.source} (format {self.format}" + (f"; {self.renamed}" if self.renamed else "") + ")",
            f"  loaded {len(self.loaded)}/{self.num_model_keys} model tensors",
        ]
        if self.interpolated:
            lines.append(line("interpolated", self.interpolated))
        lines += [
            line("missing (new layers)", self.new_layers),
            line("missing", self.missing_required),
            line("unexpected", self.unexpected),
            line("ignored", self.ignored),
        ]
        if self.mismatched:
            lines.append(line("mismatched", [f"{k} {tuple(a)} vs {tuple(b)}" for k, a, b in self.mismatched]))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- reading ---------------------------------------------------------------------------------------
def _torch_load(path: str, allow_pickle: bool, log: logging.Logger):
    if not os.path.exists(path):
        raise WeightsError(f"pretrained weights '{path}' do not exist; check model.pretrained_weights")
    if not os.path.isfile(path):
        raise WeightsError(f"pretrained weights '{path}' is not a file; check model.pretrained_weights")
    if allow_pickle:
        log.warning("reading pretrained weights '%s' with weights_only=False: pickled objects in it can "
                    "execute code (model.allow_pickle_weights=true)", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
        message, kind = str(e), type(e).__name__
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found and not allow_pickle:
        raise WeightsError(
            f"pretrained weights '{path}' contain pickled Python objects ({found.group(1)}), which "
            f"torch.load(weights_only=True) refuses: loading them can execute arbitrary code. {OPT_IN}"
        ) from None
    if zipfile.is_zipfile(path) and "Weights only load failed" in message and not allow_pickle:
        raise WeightsError(
            f"pretrained weights '{path}' cannot be read with torch.load(weights_only=True): the file holds "
            f"objects other than tensors and plain values (pickled Python objects; loading them can execute "
            f"code). {OPT_IN}"
        ) from None
    raise WeightsError(
        f"cannot read pretrained weights '{path}': it is not a PyTorch checkpoint or it is corrupted / "
        f"truncated ({unreadable_reason(path, RuntimeError(message))}; {kind})"
    ) from None


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _find_state_dict(obj, depth: int = 0) -> Optional[dict]:
    if isinstance(obj, nn.Module):  # a whole pickled model (allow_pickle only)
        return obj.state_dict()
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping) and depth < 3:
        for key in CONTAINER_KEYS:
            if key in obj:
                found = _find_state_dict(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def _detect_format(obj, state: dict) -> str:
    top = set(obj) if isinstance(obj, Mapping) else set()
    if "model" in top and ({"config", "format_version"} & top):
        return "ours"
    has_image = any("encoder_imaging." in k for k in state)
    has_ecg = any("encoder_ecg." in k or "encoder_signal." in k for k in state)
    if has_image and has_ecg:
        return "mmcl"
    if has_image:
        return "mmcl_image"
    if has_ecg:
        return "mmcl_ecg"
    if "model" in top and ({"args", "optimizer", "scaler", "epoch"} & top):
        return "reference"
    if top == {"model"}:  # the released ECG encoder; an MAE with its decoder is the reference's model dict
        return "reference" if any(k.startswith("decoder_") for k in state) else "mmcl_ecg"
    return "state_dict"


def read_state_dict(path, *, allow_pickle: bool = False, log: logging.Logger = logger) -> tuple[dict[str, torch.Tensor], str]:
    """Read ``path`` and return ``(flat state dict, format)``; key names are as stored."""
    _, state, fmt = _read(os.fspath(path), allow_pickle, log)
    return state, fmt


def _metadata(obj) -> dict:
    """The plain (non-tensor) top-level entries of a weights file, e.g. an exported encoder's
    ``contract`` and ``training_data``."""
    if not isinstance(obj, Mapping):
        return {}
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool, list, dict))
            and not _is_state_dict(v) and k not in CONTAINER_KEYS}


def _read(path: str, allow_pickle: bool, log: logging.Logger) -> tuple[Any, dict[str, torch.Tensor], str]:
    obj = _torch_load(path, allow_pickle, log)
    state = _find_state_dict(obj)
    if state is None:
        what = f"top-level keys {_names(list(obj))}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        raise WeightsError(
            f"no state dict found in pretrained weights '{path}' ({what}); expected a dict of tensors, "
            f"possibly under one of {', '.join(repr(k) for k in CONTAINER_KEYS)}"
        )
    return obj, state, _detect_format(obj, state)


# ---- key renaming -------------------------------------------------------------------------------------
def _wrapper_prefixes(keys: Iterable[str]) -> set[str]:
    """Every leading run of wrapper names in the keys: 'module.', 'module.encoder_ecg.', ..."""
    found = set()
    for key in keys:
        parts = key.split(".")[:-1]
        prefix = ""
        for part in parts[:3]:
            if part not in WRAPPER_NAMES:
                break
            prefix += part + "."
            found.add(prefix)
    return found


def _resnet_name(rest: str) -> Optional[str]:
    """'4.0.conv1.weight' (a child of Sequential(*resnet.children()[:-1])) -> 'layer1.0.conv1.weight'."""
    index, _, tail = rest.partition(".")
    if not index.isdigit() or int(index) >= len(RESNET_CHILDREN) or not tail:
        return None
    return f"{RESNET_CHILDREN[int(index)]}.{tail}"


def mmcl_image_layout(state: dict, prefix: str = "encoder_imaging.") -> dict:
    """A torchvision-named ResNet state dict in the released MMCL image-encoder layout:
    ``conv1.weight`` -> ``encoder_imaging.0.weight``, ``layer1.0.conv1.weight`` -> ``encoder_imaging.4.0.conv1.weight``."""
    out = {}
    for key, value in state.items():
        child, _, rest = key.partition(".")
        if child not in RESNET_CHILDREN:
            raise ValueError(f"{key} is not a parameter of a torchvision ResNet without fc")
        out[f"{prefix}{RESNET_CHILDREN.index(child)}.{rest}"] = value
    return out


def _rename(state: dict, prefix: str, to_resnet: bool) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        if prefix and key.startswith(prefix):
            new = key[len(prefix):]
            if to_resnet:
                new = _resnet_name(new) or new
        out.setdefault(new, value)
    return out


def _best_renaming(state: dict, model_keys: set[str]) -> tuple[dict, str]:
    """Strip the wrapper prefix (and map ResNet children) that makes the most keys match the model."""
    best, best_count, how = state, sum(k in model_keys for k in state), ""
    for prefix in sorted(_wrapper_prefixes(state), key=len):
        options = [False, True] if prefix.endswith("encoder_imaging.") else [False]
        for to_resnet in options:
            renamed = _rename(state, prefix, to_resnet)
            count = sum(k in model_keys for k in renamed)
            if count > best_count:
                best, best_count = renamed, count
                how = f"stripped '{prefix}'" + (" and mapped ResNet children to torchvision names" if to_resnet else "")
    return best, how


# ---- loading ------------------------------------------------------------------------------------------
def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A key matches a pattern when it equals it, lies under it ('head' -> 'head.0.weight') or fnmatches it."""
    patterns = tuple(patterns)

    def match(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in patterns)

    return match


def _pos_embed_grids(model: nn.Module, key: str, old_len: int, new_len: int,
                     checkpoint_grid: Optional[Sequence[int]]) -> Optional[tuple[tuple, tuple, int]]:
    """(old grid, new grid, prefix tokens) to resize ``key`` with, or None when it cannot be resized."""
    owner_name = key.rpartition(".")[0]
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
        rows, cols = (int(g) for g in owner.patch_embed.grid_size)
    except (AttributeError, TypeError, ValueError):
        return None
    prefix = new_len - rows * cols
    old_n = old_len - prefix
    if prefix < 0 or old_n <= 0:
        return None
    if checkpoint_grid is not None:
        old = tuple(int(g) for g in checkpoint_grid)
        return (old, (rows, cols), prefix) if old[0] * old[1] == old_n else None
    if old_n % rows == 0:  # same leads, another time grid (the common case)
        return (rows, old_n // rows), (rows, cols), prefix
    if old_n % cols == 0:  # same time grid, another number of leads
        return (old_n // cols, cols), (rows, cols), prefix
    return None


def _is_sincos_table(value: torch.Tensor, grid: Sequence[int], prefix: int) -> bool:
    """Whether a (1, prefix + rows*cols, D) embedding is ``sincos_pos_embed_2d`` of ``grid``."""
    dim = value.shape[-1]
    if prefix > 1 or dim % 4:
        return False
    table = sincos_pos_embed_2d(dim, grid, cls_token=prefix == 1)[None]
    return table.shape == value.shape and torch.allclose(value.float(), table, atol=1e-5)


def load_pretrained(
    model: nn.Module,
    path,
    *,
    allow_pickle: bool = False,
    tolerated_missing_fraction: float = 0.0,
    ignore_prefixes: Sequence[str] = ("decoder_", "mask_token", "projector.", "predictor."),
    expected_missing: Optional[Iterable[str] | str] = None,
    checkpoint_grid: Optional[Sequence[int]] = None,
    log: logging.Logger = logger,
) -> LoadReport:
    """Load pretrained weights from ``path`` into ``model`` (in place) and return the report.

    ``expected_missing``: more key names / glob patterns that may stay uninitialised (besides
    ``NEW_LAYERS``). ``checkpoint_grid``: the (rows, cols) token grid the checkpoint's ``pos_embed``
    was trained on, when it cannot be inferred (by default the model's number of rows is assumed).
    Raises ``WeightsError`` on an unreadable file, shape mismatches, or too many missing keys.
    """
    path = os.fspath(path)
    tolerated_missing_fraction = float(tolerated_missing_fraction or 0.0)
    if not 0.0 <= tolerated_missing_fraction <= 1.0:
        raise WeightsError(f"model.tolerated_missing_fraction must be in [0, 1], got {tolerated_missing_fraction}")
    if isinstance(expected_missing, str):
        expected_missing = [expected_missing]
    is_new_layer = _matcher(NEW_LAYERS + tuple(expected_missing or ()) + ("*.num_batches_tracked", "num_batches_tracked"))

    obj, state, fmt = _read(path, allow_pickle, log)
    target = model.state_dict()
    state, renamed = _best_renaming(state, set(target))
    report = LoadReport(source=path, format=fmt, renamed=renamed, num_model_keys=len(target), metadata=_metadata(obj))

    to_load: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            (report.ignored if key.startswith(tuple(ignore_prefixes)) else report.unexpected).append(key)
            continue
        want = tuple(target[key].shape)
        have = tuple(value.shape)
        if have == want:
            to_load[key] = value
            continue
        if len(have) == 4 and len(want) == 4 and want[1] == 1 and have[1] > 1 and (have[0], *have[2:]) == (want[0], *want[2:]):
            # RGB weights for a grayscale input: summing over the input channels equals feeding the
            # grayscale image as RGB
            to_load[key] = value.sum(dim=1, keepdim=True)
            report.notes.append(f"{key}: {have[1]}-channel weights summed over their input channels for "
                                "the model's 1-channel input")
            continue
        grids = None
        if key.endswith("pos_embed") and len(have) == 3 and len(want) == 3 and have[::2] == want[::2]:
            grids = _pos_embed_grids(model, key, have[1], want[1], checkpoint_grid)
        if grids is not None:
            old, new, prefix = grids
            how = "given" if checkpoint_grid else ("inferred: same rows" if old[0] == new[0] else "inferred: same columns")
            if _is_sincos_table(value, old, prefix):
                # a fixed sin-cos table (the MAE's): the table of the new grid is its exact extension,
                # where interpolating would stretch the time axis
                to_load[key] = sincos_pos_embed_2d(have[2], new, cls_token=prefix == 1)[None].to(value.dtype)
                report.notes.append(f"{key}: the sin-cos table of the {old[0]}x{old[1]} token grid, rebuilt for the "
                                    f"model's {new[0]}x{new[1]} grid (checkpoint grid {how})")
            else:
                to_load[key] = resize_pos_embed(value, old, new, num_prefix_tokens=prefix)
                report.notes.append(f"{key} resized from a {old[0]}x{old[1]} to a {new[0]}x{new[1]} token grid "
                                    f"(checkpoint grid {how}; pass checkpoint_grid if that is wrong)")
            report.interpolated.append(key)
        elif is_new_layer(key):
            report.notes.append(f"{key} kept its fresh init: checkpoint shape {have}, model {want}")
        else:
            report.mismatched.append((key, have, want))

    report.loaded = [k for k in target if k in to_load]
    report.missing = [k for k in target if k not in to_load]
    report.new_layers = [k for k in report.missing if is_new_layer(k)]

    if report.mismatched:
        listing = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in report.mismatched[:6])
        more = f" (+{len(report.mismatched) - 6} more)" if len(report.mismatched) > 6 else ""
        raise WeightsError(
            f"pretrained weights '{path}' do not fit the model: {len(report.mismatched)} tensor(s) have "
            f"different shapes: {listing}{more}. The weights were trained with another architecture or size "
            f"(embed_dim, depth, patch_size, in_chans); use the matching model config"
        )
    if not to_load:
        raise WeightsError(
            f"none of the {len(state)} tensors in pretrained weights '{path}' match the model's names "
            f"(checkpoint keys: {_names(list(state), 5)}; model keys: {_names(list(target), 5)}); "
            f"these weights belong to another model"
        )
    required = report.missing_required
    fraction = len(required) / max(len(target), 1)
    if fraction > tolerated_missing_fraction:
        raise WeightsError(
            f"pretrained weights '{path}' leave {len(required)} of {len(target)} model tensors "
            f"({fraction:.0%}) uninitialised, more than model.tolerated_missing_fraction="
            f"{tolerated_missing_fraction}. Check that the weights belong to this model, or raise the "
            f"tolerance.\n{report.summary()}"
        )

    model.load_state_dict(to_load, strict=False)
    log.info("%s", report.summary())
    if required:
        log.warning("%d model tensors keep their random init (within model.tolerated_missing_fraction=%s): %s",
                    len(required), tolerated_missing_fraction, _names(required))
    return report
