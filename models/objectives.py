"""Objectives: modules that own their networks and their loss. The engine trains any of them.

The contract the engine and the mains rely on (``Objective`` gives a default for each hook):

    objective(batch, generator=None) -> dict
        ``batch`` is a dict of named fields on the device (``ecg``, ``label``, ``key``, ``index``,
        ...; see ``datasets/``). Training mode: ``loss`` (0-dim, minimised) and any other 0-dim
        tensors (logged and averaged over the epoch). Evaluation mode: 0-dim tensors (averaged over
        the split) and/or ``per_sample``: ``{name: (B, ...) tensor}``, which the engine gathers over
        the whole split (every rank, in dataset order) and hands to ``evaluation_metrics``.
    evaluation_metrics(gathered) -> dict     a split's metrics from its gathered per-sample outputs
    param_groups() -> list[dict]             optimizer groups (weight decay, layer-wise LR decay)
    optim                                    the model config's ``optim`` block (LR rule, schedule, betas)
    load_pretrained() -> str | None          initial weights, before training (a resumed run then loads
                                             its checkpoint over them); returns the file used
    stateful() -> {name: obj}                state beyond parameters and buffers that a checkpoint must
                                             hold (each obj has ``state_dict`` / ``load_state_dict``)
    validation_figures(batch, generator)     ``{name: matplotlib figure}``, drawn on rank 0 after validation
                                             (TensorBoard ``val/<name>``, ``figures/<name>_epochNNN.png``)
    exports() -> {file name: payload}        what a pretraining run writes next to its checkpoints
    headline_metrics                         metric names of the epoch log line (None: all of them)
    config_schema(model_cfg) -> {key: Spec}  the rules of its model-config keys, checked before a run
                                             does any work (``util.schema``; None: unchecked)
    command_line_keys                        the model keys the user set on the command line (the engine
                                             sets it), e.g. so an explicitly given file must exist
    sync_batchnorm                           True: under DDP its batch norms use the global batch's
                                             statistics (the engine converts them; default False)

What ``main_artifacts.py`` asks of a trained objective (in eval mode):

    embed(batch) -> {name: (B, D)}           its representations, one entry per encoder (e.g. ``ecg``,
                                             ``cmr``); the embeddings files hold these
    class_names / class_scores(batch)        a classifier's classes and their (B, C) probabilities
    saliency_methods                         the ``explain`` methods it supports (empty: none)
    explain(batch, method, target, **opts)   ``[SaliencyMap]``: for each input field it explains, maps
                                             shaped like that input (``models.saliency``)

A model config names its objective with ``_target_`` and is instantiated with one extra keyword,
``data``: the data side's description of the batches (``datasets.loading.DataInfo``: input fields
and sample shapes, task type, label names, training labels). An objective's constructor lists the
run keys it reads; every other key of the model config goes to the network builder
(``models.factory.build_network``), which refuses a key it does not know.

    Encoder          a pretrained encoder on its own: embeddings of an encoder file (not trained)
    MAEPretraining   signal masked autoencoder (ECG MAE pretraining)
    SimCLR           two-view contrastive pretraining of an image encoder (CMR SimCLR)
    MMCL             ECG<->CMR contrastive pretraining of a signal and an image encoder (the paper's)
    Classification   classifier / regressor on an encoder (fine-tuning, linear probing; ECG or CMR)
"""
from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import saliency
from models.classifier import mixup
from models.factory import NETWORKS, build_network, network_schema
from models.losses import (TASK_TYPES, ClassificationLoss, class_weights_from_labels, clip_loss, nt_xent,
                           pos_weight_from_labels)
from models.resnet import ResNetEncoder
from models.saliency import SaliencyMap
from util import contract
from util.errors import ConfigError
from util.lr_decay import param_groups_lrd
from util.metrics import MAIN_METRICS, MONITOR_METRICS, bootstrap_ci, compute_metrics, embedding_monitors
from util.schema import AnyOf, Anything, Bool, Choice, Float, Int, List, Section, Spec, Str

log = logging.getLogger(__name__)

__all__ = ["Objective", "Encoder", "MAEPretraining", "SimCLR", "MMCL", "Classification", "single_input"]


def single_input(data: Any) -> tuple[str, Any]:
    """``(field, spec)`` of the one input field of ``data`` (a ``DataInfo``); refused when there are
    several (a paired dataset needs an objective that reads each of its fields)."""
    if len(data.inputs) != 1:
        raise ConfigError(f"this objective reads one input field, but the data gives {', '.join(data.inputs)}; "
                          "choose a model whose objective reads all of them, or data with one input")
    return next(iter(data.inputs.items()))


# the optim block of every model config (read by engine.fit and param_groups)
OPTIM_SCHEMA = {
    "blr": Float(min=0, min_open=True), "lr": Float(min=0, min_open=True, nullable=True),
    "lr_batch_divisor": Float(min=0, min_open=True), "min_lr": Float(min=0), "weight_decay": Float(min=0),
    "layer_decay": Float(0, 1, min_open=True), "betas": List(Float(0, 1, max_open=True), length=2),
    "warmup_epochs": Float(min=0), "epochs": Float(min=0, min_open=True, nullable=True),
}


class Objective(nn.Module):
    """Base class: the hooks of the contract above, with defaults; subclasses own ``net`` (or
    several networks, overriding ``param_groups``) and implement ``forward``."""

    headline_metrics: Optional[tuple[str, ...]] = None
    command_line_keys: frozenset = frozenset()
    sync_batchnorm: bool = False

    def __init__(self, optim: Mapping[str, Any]) -> None:
        super().__init__()
        self.optim = optim

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> Optional[dict[str, Spec]]:
        """The rules of the model-config keys: ``_target_``, ``optim``, and by default the constructor's
        other arguments (any value; required when they have no default). Objectives whose arguments
        have rules override this; None leaves the model config unchecked."""
        schema: dict[str, Spec] = {"_target_": Str(), "optim": Section(OPTIM_SCHEMA)}
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                return None  # keys passed on unread: nothing to check them against
            if name not in ("self", "data", "optim"):
                schema[name] = Anything(required=param.default is param.empty)
        return schema

    def param_groups(self) -> list[dict]:
        """AdamW groups over ``self.net``: weight decay, and layer-wise LR decay by its layer ids."""
        outside = [n for n, p in self.named_parameters() if p.requires_grad and not n.startswith("net.")]
        if outside:
            raise TypeError(f"{type(self).__name__} has trainable parameters outside `net` ({', '.join(outside[:4])}); "
                            "override param_groups() to put them in the optimizer")
        return param_groups_lrd(self.net, weight_decay=float(self.optim["weight_decay"]),
                                layer_decay=float(self.optim["layer_decay"]))

    def evaluation_metrics(self, gathered: dict[str, np.ndarray]) -> dict:
        return {}

    def load_pretrained(self) -> Optional[str]:
        return None

    def stateful(self) -> dict[str, Any]:
        return {}

    def validation_figures(self, batch: dict, generator: Optional[torch.Generator]) -> dict:
        return {}

    def exports(self) -> dict[str, dict]:
        return {}

    # -- artifacts: representations and saliency of a trained objective (main_artifacts.py) ---------------
    saliency_methods: tuple[str, ...] = ()
    class_names: tuple = ()

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        return {}

    def class_scores(self, batch: dict) -> Optional[torch.Tensor]:
        return None

    def explain(self, batch: dict, method: str, target: Optional[int] = None, **options: Any) -> list[SaliencyMap]:
        raise ConfigError(f"{type(self).__name__} has no saliency maps")

    def inputs(self, batch: dict, *fields: str) -> list[torch.Tensor]:
        """The batch's ``fields``, or one error naming what this objective reads and what the data gives."""
        missing = [f for f in fields if f not in batch]
        if missing:
            given = ", ".join(k for k in batch if k not in ("label", "key", "index"))
            raise ConfigError(f"{type(self).__name__} reads the input field(s) {', '.join(fields)}, but the data "
                              f"gives {given}: choose data of the kind the model was trained on")
        return [batch[f] for f in fields]

    # -- what a pretraining objective's encoder file records about its data --------------------------
    def remember_training_data(self, data: Any) -> None:
        """Keep the data's contract (fine-tuning checks it) and the training records (fine-tuning warns
        when they overlap its test split) for ``encoder_export``."""
        self.data_contract = dict(getattr(data, "contract", None) or {})
        self.training_data = dict((getattr(data, "splits", None) or {}).get("train") or {})

    def encoder_export(self, state_dict: dict) -> dict:
        """An encoder file's payload: ``{'model': state_dict}`` (the released MMCL layout), plus its data's
        ``contract`` and ``training_data`` (store, split, records)."""
        return {"model": state_dict, "contract": self.data_contract, "training_data": self.training_data}


# ---- a pretrained encoder on its own --------------------------------------------------------------------
class Encoder(Objective):
    """A pretrained encoder for embeddings (``main_artifacts.py`` with an encoder file: our
    ``encoder.pth``, the released MMCL encoders, an oetu/mae or torchvision file): ``net`` is the
    ``arch`` family's ``encoder`` network (the signal ViT with ``global_pool``, or the ResNet) built from
    the remaining keys. It has no loss and is never trained."""

    trainable = False

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> dict[str, Spec]:
        network = network_schema(model_cfg.get("arch"), "encoder")
        network.pop("num_classes", None)
        return {"_target_": Str(), "arch": Choice(*NETWORKS), "allow_pickle_weights": Bool(), **network}

    def __init__(self, *, data: Any, arch: str, allow_pickle_weights: bool = False, **network: Any) -> None:
        super().__init__({})
        self.field, spec = single_input(data)
        if arch == "signal_vit":
            network = {"global_pool": "avg", **network, "num_classes": 0}
        self.net = build_network(arch, "encoder", input_size=spec.shape[1:], in_chans=spec.shape[0], **network)
        self.allow_pickle = bool(allow_pickle_weights)

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        raise ConfigError("models.objectives.Encoder only embeds records (main_artifacts.py); to train, choose "
                          "a training objective (model=mae, sim_clr, mmcl, ecg_classifier, cmr_classifier)")

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        (x,) = self.inputs(batch, self.field)
        return {self.field: self.net.forward_features(x)}


# ---- MAE ---------------------------------------------------------------------------------------------
class MAEPretraining(Objective):
    """Signal MAE pretraining: ``net`` is a ``SignalMAE`` built from the remaining model-config keys
    (``size``, ``patch_size``, ``mask_ratio``, ``ncc_weight``, ``norm_pix_loss``, ``loss_on``, ...).

    Each sample's mask is a function of its ``key`` (its dataset seed, epoch and index), so a sample is
    masked alike on any rank and in any batch; the loss terms ``loss_mse``, ``loss_ncc``, ``ncc`` and
    ``ncc_masked`` (the correlation over the removed samples only) are logged. ``exports()`` gives the
    encoder as ``{'model': state_dict}``, the released MMCL layout, plus
    its data's ``contract`` and ``training_data`` (store, split, records)."""

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> dict[str, Spec]:
        return {**Objective.config_schema(model_cfg), "arch": Choice(*NETWORKS),
                **network_schema(model_cfg.get("arch"), "mae")}

    def __init__(self, *, data: Any, optim: Mapping[str, Any], arch: str, **network: Any) -> None:
        super().__init__(optim)
        self.field, spec = single_input(data)
        self.row_names = list(spec.channel_names or [])
        self.sampling_rate, self.units = spec.sampling_rate, spec.units
        self.net = build_network(arch, "mae", input_size=spec.shape[1:], in_chans=spec.shape[0], **network)
        self.remember_training_data(data)

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        out = self.net(batch[self.field], generator=generator, sample_keys=batch["key"])
        return {k: out[k] for k in ("loss", "loss_mse", "loss_ncc", "ncc", "ncc_masked")}

    def validation_figures(self, batch: dict, generator: Optional[torch.Generator]) -> dict:
        return {"recon": reconstruction_figure(self.net, batch[self.field][:1], self.row_names,
                                                 generator, self.sampling_rate, self.units)}

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """The mean of the encoder's patch tokens (after its final norm), nothing masked."""
        (x,) = self.inputs(batch, self.field)
        latent, _, _ = self.net.forward_encoder(self.net.patch_embed.check_input(x), 0.0)
        return {self.field: latent[:, 1:].mean(dim=1)}

    def exports(self) -> dict[str, dict]:
        return {"encoder.pth": self.encoder_export(self.net.encoder_state_dict())}


def reconstruction_figure(mae: nn.Module, x: torch.Tensor, row_names: list, generator,
                          sampling_rate: Optional[float] = None, units: str = "mV"):
    """Input vs reconstruction of every lead of one signal, masked patches shaded, on ECG paper
    (seconds, ``units``; ``models.figures``). Without a sampling rate the time axis counts samples / 1 Hz."""
    from models.figures import ecg_reconstruction_figure

    with torch.no_grad():
        recon, mask = mae.reconstruct(x, generator=generator)
    x, recon, mask = (t[0, 0].float().cpu().numpy() for t in (x, recon, mask))
    names = [str(row_names[i]) if i < len(row_names) else f"row {i}" for i in range(x.shape[0])]
    return ecg_reconstruction_figure(x, recon, mask, float(sampling_rate or 1.0), names,
                                     title="validation record: MAE reconstruction", units=units)


# ---- SimCLR ------------------------------------------------------------------------------------------
class SimCLR(Objective):
    """SimCLR (Chen et al. 2020) on two views of each image: ``net`` is the ``arch`` family's ``simclr``
    network (encoder + projection head) built from the remaining keys (``size``, ``projection_dim``,
    ...); the loss is NT-Xent at ``temperature`` over the 2N views, with negatives from every rank.

    Training reads ``view1`` / ``view2``. Validation also embeds the plain image (``cmr``: the encoder's
    pooled features, not the projections) and, when the split has labels, reports how well they can be
    read off those embeddings: leave-one-out kNN (``knn_k`` neighbours) and a logistic-regression probe
    (``probe_folds``-fold cross-validation) on the validation split (``util.metrics.embedding_monitors``).
    ``sync_batchnorm`` normalises over the global batch under DDP. ``exports()`` gives the encoder
    (torchvision names, no projector) as ``encoder.pth``."""

    VIEWS = ("view1", "view2")

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> dict[str, Spec]:
        return {**Objective.config_schema(model_cfg), "arch": Choice(*NETWORKS),
                "temperature": Float(min=0, min_open=True), "sync_batchnorm": Bool(), "knn_k": Int(min=1),
                "probe_folds": Int(min=2), **network_schema(model_cfg.get("arch"), "simclr")}

    def __init__(self, *, data: Any, optim: Mapping[str, Any], arch: str, temperature: float, sync_batchnorm: bool,
                 knn_k: int, probe_folds: int, **network: Any) -> None:
        super().__init__(optim)
        missing = [v for v in self.VIEWS if v not in data.inputs]
        if missing:
            raise ConfigError(f"SimCLR trains on two views of each sample, but the data gives "
                              f"{', '.join(data.inputs)}: set data.views=2")
        spec = data.inputs["view1"]
        self.net = build_network(arch, "simclr", input_size=spec.shape[1:], in_chans=spec.shape[0], **network)
        self.temperature, self.sync_batchnorm = float(temperature), bool(sync_batchnorm)
        self.knn_k, self.probe_folds = int(knn_k), int(probe_folds)
        self.task_type = data.task_type
        self.headline_metrics = ("loss", *(f"{m}_{k}" for m in ("knn", "probe")
                                           for k in MONITOR_METRICS.get(self.task_type, ())))
        self.remember_training_data(data)

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        z1, z2 = self.net(torch.cat([batch["view1"], batch["view2"]])).chunk(2)  # one pass: shared BN statistics
        out = {"loss": nt_xent(z1, z2, self.temperature)}
        if not self.training and "cmr" in batch and batch["label"].numel() > 0:
            out["per_sample"] = {"embedding": self.net.forward_features(batch["cmr"]), "label": batch["label"]}
        return out

    def evaluation_metrics(self, gathered: dict[str, np.ndarray]) -> dict:
        if "embedding" not in gathered or self.task_type is None:
            return {}
        return embedding_monitors(self.task_type, gathered["embedding"], gathered["label"], k=self.knn_k,
                                  folds=self.probe_folds)

    def validation_figures(self, batch: dict, generator: Optional[torch.Generator]) -> dict:
        return {"views": views_figure(batch["view1"][:6], batch["view2"][:6])}

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """The encoder's pooled features of the plain image (not the projections)."""
        (x,) = self.inputs(batch, "cmr")
        return {"cmr": self.net.forward_features(x)}

    def exports(self) -> dict[str, dict]:
        return {"encoder.pth": self.encoder_export(self.net.encoder_state_dict())}


def views_figure(view1: torch.Tensor, view2: torch.Tensor):
    """The two augmented views of the first images of a batch, one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = view1.shape[0]
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for row, views in enumerate((view1, view2)):
        for col in range(n):
            image = views[col].float().cpu()
            image = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
            axes[row, col].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        axes[row, 0].set_ylabel(f"view {row + 1}")
    fig.tight_layout()
    return fig


# ---- MMCL: ECG <-> CMR ------------------------------------------------------------------------------------
def projection_head(width: int, out: int) -> nn.Sequential:
    """Linear(width, width) -> ReLU -> Linear(width, out)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, out))


def retrieval_metrics(queries: np.ndarray, keys: np.ndarray, ks=(1, 5)) -> dict:
    """``top{k}``: the fraction of queries whose own key (same row) is among the k most similar keys
    (dot products of normalised embeddings; ties count against). Exact on the whole split."""
    similarity = queries @ keys.T
    own = np.diag(similarity)
    rank = (similarity > own[:, None]).sum(axis=1) + (similarity == own[:, None]).sum(axis=1) - 1
    return {f"top{k}": float((rank < k).mean()) for k in ks}


class MMCL(Objective):
    """Multimodal contrastive pretraining (Turgut et al. 2025): a signal ViT (``ecg_encoder`` keys, avg
    pooling) and a ResNet (``cmr_encoder`` keys), one projection head each (``projection_dim``), and
    the CLIP loss over the global batch at ``temperature`` (``learnable_temperature``: its log is
    trained, from the given value).

    Initialisation: ``ecg_weights`` (an MAE checkpoint or encoder file: ours or the released MMCL
    signal encoder) and ``cmr_weights`` (a SimCLR ``encoder.pth``, the released MMCL image encoder or
    a torchvision ResNet), each optional (``weights_optional``: a configured file that does not exist
    means scratch, with a warning; one given on the command line must exist). ``freeze_cmr`` keeps the
    image encoder fixed (BN in eval mode).
    Optimisation: ``ecg_lr_scale`` / ``cmr_lr_scale`` multiply each encoder's learning rate (the heads
    train at the base rate) and ``optim.layer_decay`` applies layer-wise decay inside the ViT.

    Validation, on the whole split gathered from every rank: the loss, ECG->CMR and CMR->ECG top-1 /
    top-5 retrieval (``ecg_to_cmr_top5`` ...) with the chance levels (``chance_top1``, ``chance_top5``),
    and with ``probe`` the kNN / linear-probe monitors of the ECG encoder's features (``ecg_knn_*``,
    ``ecg_probe_*``). ``exports()``: ``encoder.pth``, the ECG encoder as ``{'model': state_dict}`` (the
    released MMCL signal-encoder layout, what fine-tuning starts from) and ``image_encoder.pth`` as
    ``{'state_dict': {'encoder_imaging.N.*'}}`` (the released image-encoder layout)."""

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> dict[str, Spec]:
        ecg = {k: v for k, v in network_schema("signal_vit", "encoder").items() if k not in ("num_classes",
                                                                                             "global_pool")}
        return {**Objective.config_schema(model_cfg), "ecg_encoder": Section(ecg),
                "cmr_encoder": Section(network_schema("resnet", "encoder")), "projection_dim": Int(min=1),
                "temperature": Float(min=0, min_open=True), "learnable_temperature": Bool(),
                "ecg_weights": Str(nullable=True), "cmr_weights": Str(nullable=True), "weights_optional": Bool(),
                "allow_pickle_weights": Bool(),
                "freeze_cmr": Bool(), "ecg_lr_scale": Float(min=0, min_open=True),
                "cmr_lr_scale": Float(min=0, min_open=True), "sync_batchnorm": Bool(), "probe": Bool(), "knn_k": Int(min=1), "probe_folds": Int(min=2)}

    def __init__(self, *, data: Any, optim: Mapping[str, Any], ecg_encoder: Mapping[str, Any],
                 cmr_encoder: Mapping[str, Any], projection_dim: int, temperature: float, learnable_temperature: bool,
                 ecg_weights: Optional[str], cmr_weights: Optional[str], weights_optional: bool,
                 allow_pickle_weights: bool, freeze_cmr: bool,
                 ecg_lr_scale: float, cmr_lr_scale: float, sync_batchnorm: bool, probe: bool,
                 knn_k: int, probe_folds: int) -> None:
        super().__init__(optim)
        missing = [f for f in ("ecg", "cmr") if f not in data.inputs]
        if missing:
            raise ConfigError(f"MMCL trains on paired ECG and CMR, but the data gives {', '.join(data.inputs)}: "
                              "use data=paired (e.g. experiment=pre_training/mmcl_demo)")
        ecg_spec, cmr_spec = data.inputs["ecg"], data.inputs["cmr"]
        self.ecg_net = build_network("signal_vit", "encoder", input_size=ecg_spec.shape[1:],
                                     in_chans=ecg_spec.shape[0], num_classes=0, global_pool="avg", **ecg_encoder)
        self.cmr_net = build_network("resnet", "encoder", input_size=cmr_spec.shape[1:], in_chans=cmr_spec.shape[0],
                                     **cmr_encoder)
        self.ecg_projector = projection_head(self.ecg_net.embed_dim, int(projection_dim))
        self.cmr_projector = projection_head(self.cmr_net.feature_dim, int(projection_dim))
        self.log_temperature = nn.Parameter(torch.tensor(float(np.log(temperature))),
                                            requires_grad=bool(learnable_temperature))
        self.freeze_cmr, self.sync_batchnorm = bool(freeze_cmr), bool(sync_batchnorm)
        if self.freeze_cmr:
            self.cmr_net.requires_grad_(False)
        self.lr_scales = {"ecg": float(ecg_lr_scale), "cmr": float(cmr_lr_scale)}
        self.pretrained_metadata: dict = {}
        self.weights = {"ecg": ecg_weights, "cmr": cmr_weights}
        self.allow_pickle, self.weights_optional = bool(allow_pickle_weights), bool(weights_optional)
        self.probe, self.knn_k, self.probe_folds = bool(probe), int(knn_k), int(probe_folds)
        self.task_type = data.task_type
        self.contracts = dict(getattr(data, "contract", None) or {})
        self.contract_policy = getattr(data, "contract_policy", "error")
        self.headline_metrics = ("loss", "temperature", "ecg_to_cmr_top5", "cmr_to_ecg_top5", "chance_top5",
                                 *(f"ecg_{m}_{k}" for m in ("knn", "probe")
                                   for k in MONITOR_METRICS.get(self.task_type, ()) if self.probe))
        self.remember_training_data(data)
        self.data_contract = self.contracts.get("ecg", {})  # the ECG encoder file records the ECG side's

    def train(self, mode: bool = True) -> "MMCL":
        super().train(mode)
        if self.freeze_cmr:
            self.cmr_net.train(False)
        return self

    def param_groups(self) -> list[dict]:
        wd = float(self.optim["weight_decay"])
        groups = []
        for name, net, decay in (("ecg", self.ecg_net, float(self.optim["layer_decay"])), ("cmr", self.cmr_net, 1.0)):
            for group in param_groups_lrd(net, weight_decay=wd, layer_decay=decay):
                groups.append({**group, "lr_scale": group["lr_scale"] * self.lr_scales[name]})
        heads = nn.ModuleList([self.ecg_projector, self.cmr_projector])
        groups += param_groups_lrd(heads, weight_decay=wd, layer_decay=1.0)
        if self.log_temperature.requires_grad:
            groups.append({"params": [self.log_temperature], "lr_scale": 1.0, "weight_decay": 0.0})
        return groups

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        ecg_features = self.ecg_net.forward_features(batch["ecg"])
        z_ecg = self.ecg_projector(ecg_features)
        z_cmr = self.cmr_projector(self.cmr_net.forward_features(batch["cmr"]))
        t = self.temperature()
        out = {"loss": clip_loss(z_cmr, z_ecg, t), "temperature": t.detach()}
        if not self.training:
            out["per_sample"] = {"z_ecg": F.normalize(z_ecg.float(), dim=1), "z_cmr": F.normalize(z_cmr.float(), dim=1)}
            if self.probe and batch["label"].numel() > 0:
                out["per_sample"].update(ecg_features=ecg_features, label=batch["label"])
        return out

    def evaluation_metrics(self, gathered: dict[str, np.ndarray]) -> dict:
        if "z_ecg" not in gathered:
            return {}
        n = len(gathered["z_ecg"])
        metrics = {"chance_top1": 1.0 / n, "chance_top5": min(5, n) / n}
        for name, (queries, keys) in {"ecg_to_cmr": (gathered["z_ecg"], gathered["z_cmr"]),
                                      "cmr_to_ecg": (gathered["z_cmr"], gathered["z_ecg"])}.items():
            metrics.update({f"{name}_{k}": v for k, v in retrieval_metrics(queries, keys).items()})
        if "ecg_features" in gathered and self.task_type is not None:
            monitors = embedding_monitors(self.task_type, gathered["ecg_features"], gathered["label"], k=self.knn_k,
                                          folds=self.probe_folds)
            metrics.update({f"ecg_{k}": v for k, v in monitors.items()})
        return metrics

    saliency_methods = ("similarity",)

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each encoder's pooled features (what fine-tuning starts from), not the projections."""
        ecg, cmr = self.inputs(batch, "ecg", "cmr")
        return {"ecg": self.ecg_net.forward_features(ecg), "cmr": self.cmr_net.forward_features(cmr)}

    def explain(self, batch: dict, method: str, target: Optional[int] = None, **options: Any) -> list[SaliencyMap]:
        """Where in each modality the other modality's embedding is most similar: each ECG token's and
        each CMR region's projection against the partner's embedding (cosine)."""
        ecg, cmr = self.inputs(batch, "ecg", "cmr")
        with torch.no_grad():
            z_ecg = self.ecg_projector(self.ecg_net.forward_features(ecg))
            z_cmr = self.cmr_projector(self.cmr_net.forward_features(cmr))
            pair = F.cosine_similarity(z_ecg.float(), z_cmr.float(), dim=1)
            return [SaliencyMap("ecg", method, "the paired CMR's embedding",
                                saliency.signal_token_similarity(self.ecg_net, self.ecg_projector, ecg, z_cmr), pair),
                    SaliencyMap("cmr", method, "the paired ECG's embedding",
                                saliency.image_region_similarity(self.cmr_net, self.cmr_projector, cmr, z_ecg), pair)]

    def load_pretrained(self) -> Optional[str]:
        """The encoders' initial weights (``ecg_weights``, ``cmr_weights``); returns the files used."""
        from models.weights import load_pretrained

        used = []
        for name, net in (("ecg", self.ecg_net), ("cmr", self.cmr_net)):
            path = self.weights[name]
            if not path:
                log.info("model.%s_weights is null: the %s encoder starts from scratch", name, name.upper())
                continue
            if not os.path.isfile(path) and self.weights_optional and f"{name}_weights" not in self.command_line_keys:
                log.warning("no pretrained %s encoder at %s: it starts from scratch (model.weights_optional)",
                            name.upper(), path)
                continue
            if not os.path.isfile(path):
                raise ConfigError(f"model.{name}_weights '{path}' does not exist: point it at a pretrained "
                                  f"{'MAE / signal' if name == 'ecg' else 'SimCLR / image'} encoder file, or set "
                                  f"model.{name}_weights=null")
            report = load_pretrained(net, path, allow_pickle=self.allow_pickle)
            contract.check(report.metadata.get("contract"), self.contracts.get(name), log=log,
                           what=f"the pretrained {name.upper()} encoder '{path}'", policy=self.contract_policy)
            log.info("initialised the %s encoder from %s (%d tensors loaded)", name.upper(), path, len(report.loaded))
            if name == "ecg":  # the engine checks its training records against this run's val split
                self.pretrained_metadata = report.metadata
            used.append(path)
        return ", ".join(used) or None

    def exports(self) -> dict[str, dict]:
        from models.weights import mmcl_image_layout

        image = {"state_dict": mmcl_image_layout(self.cmr_net.encoder_state_dict()),
                 "contract": self.contracts.get("cmr", {}), "training_data": self.training_data}
        return {"encoder.pth": self.encoder_export(self.ecg_net.state_dict()), "image_encoder.pth": image}


# ---- classification ------------------------------------------------------------------------------------
class Classification(Objective):
    """A classifier (or regressor) on an encoder: ``net`` is the ``arch`` family's ``classifier``
    network built from the remaining keys (``size``, ``global_pool``, ``num_classes``, masking,
    ``linear_probe``, ...), trained with the task's loss.

    ``task_type`` must match the dataset's; ``num_classes`` null means the dataset's label count.
    ``loss``: ``label_smoothing``, ``class_weights`` (null | balanced | list), ``pos_weight`` (from the
    training labels), ``mixup_alpha``. ``pretrained_weights`` initialises the encoder (with
    ``pretrained_optional`` the config's own default file may be missing, meaning from scratch; a file
    given on the command line must exist). ``sync_batchnorm`` normalises over the global batch under
    DDP (networks with batch norms in training). Evaluation gathers the logits and labels of the whole
    split; the loss and metrics are computed once from them."""

    LOSS_SCHEMA = {
        "label_smoothing": Float(0, 1, max_open=True),
        "class_weights": AnyOf(Choice("balanced"), List(Float(min=0), min_length=1), nullable=True),
        "pos_weight": Bool(), "mixup_alpha": Float(min=0),
    }

    @classmethod
    def config_schema(cls, model_cfg: Mapping[str, Any]) -> dict[str, Spec]:
        network = network_schema(model_cfg.get("arch"), "classifier")
        if "num_classes" in network:
            network["num_classes"].nullable = True  # null: the dataset's label count
        return {**Objective.config_schema(model_cfg), "arch": Choice(*NETWORKS), "task_type": Choice(*TASK_TYPES),
                "loss": Section(cls.LOSS_SCHEMA), "pretrained_weights": Str(nullable=True),
                "pretrained_optional": Bool(), "allow_pickle_weights": Bool(),
                "tolerated_missing_fraction": Float(0, 1), "sync_batchnorm": Bool(), **network}

    def __init__(self, *, data: Any, optim: Mapping[str, Any], arch: str, task_type: str, loss: Mapping[str, Any],
                 pretrained_weights: Optional[str], pretrained_optional: bool, allow_pickle_weights: bool,
                 tolerated_missing_fraction: float, sync_batchnorm: bool, **network: Any) -> None:
        super().__init__(optim)
        self.sync_batchnorm = bool(sync_batchnorm)
        if data.task_type is not None and data.task_type != task_type:
            raise ConfigError(f"model.task_type is '{task_type}' but the dataset is '{data.task_type}'; "
                              "fix modality.task_type")
        self.field, spec = single_input(data)
        self.task_type, self.label_names = task_type, list(data.label_names or [])
        num_classes = network.pop("num_classes")
        if num_classes in (None, "???"):
            if not self.label_names:
                raise ConfigError("model.num_classes is not set and the dataset names no labels: set "
                                  "modality.num_classes (or model.num_classes=<N>)")
            num_classes = len(self.label_names)
        if self.label_names and int(num_classes) != len(self.label_names):
            raise ConfigError(f"model.num_classes is {num_classes} but the dataset has {len(self.label_names)} "
                              f"labels ({', '.join(map(str, self.label_names[:8]))}); fix modality.num_classes")
        self.num_classes = int(num_classes)
        self.net = build_network(arch, "classifier", input_size=spec.shape[1:], in_chans=spec.shape[0],
                                 num_classes=self.num_classes, **network)
        self.loss_fn = _classification_loss(task_type, loss, data.train_labels, self.num_classes)
        self.mixup_alpha = float(loss["mixup_alpha"])
        self.pretrained = dict(path=pretrained_weights, optional=bool(pretrained_optional),
                               allow_pickle=bool(allow_pickle_weights),
                               tolerated_missing_fraction=float(tolerated_missing_fraction))
        self.headline_metrics = ("loss", *MAIN_METRICS[task_type])
        self._warned_skipped: set = set()
        self.data = data  # its contract is checked against the pretrained encoder's
        self.pretrained_metadata: dict = {}

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        x, y = batch[self.field], batch["label"]
        if not self.training:
            return {"per_sample": {"logits": self.net(x), "label": y}}
        if self.mixup_alpha > 0:
            x, y = mixup(x, y, self.mixup_alpha, generator, self.task_type, self.num_classes)
        return {"loss": self.loss_fn(self.net(x, generator=generator), y)}

    def evaluation_metrics(self, gathered: dict[str, np.ndarray]) -> dict:
        logits, labels = gathered["logits"], gathered["label"]
        with torch.no_grad():
            loss = float(self.loss_fn(torch.from_numpy(logits), torch.from_numpy(labels)))
        metrics = compute_metrics(self.task_type, labels, logits, label_names=self.label_names or None)
        metrics["loss"] = loss
        skipped = tuple(metrics.get("skipped_classes") or ())
        if skipped and skipped not in self._warned_skipped:
            self._warned_skipped.add(skipped)
            log.warning("classes without positives or negatives were left out of the macro AUROC/AUPRC: %s",
                        ", ".join(map(str, skipped)))
        return metrics

    @property
    def saliency_methods(self) -> tuple[str, ...]:
        if isinstance(self.net, ResNetEncoder):
            return ("grad_cam", "integrated_gradients")
        return ("integrated_gradients", "attention_rollout", "last_block_attention")

    @property
    def class_names(self) -> list:
        return self.label_names or [f"output {i}" for i in range(self.num_classes)]

    def embed(self, batch: dict) -> dict[str, torch.Tensor]:
        """The encoder's pooled features, the input of the head."""
        (x,) = self.inputs(batch, self.field)
        return {self.field: self.net.forward_features(x)}

    def class_scores(self, batch: dict) -> torch.Tensor:
        """(B, C): probabilities (softmax for multiclass, sigmoid otherwise); regression: the outputs."""
        (x,) = self.inputs(batch, self.field)
        with torch.no_grad():
            logits = self.net(x).float()
        if self.task_type == "multiclass":
            return logits.softmax(dim=1)
        return logits if self.task_type == "regression" else logits.sigmoid()

    def explain(self, batch: dict, method: str, target: Optional[int] = None, **options: Any) -> list[SaliencyMap]:
        """Maps of output ``target`` for the input field: ``integrated_gradients`` (of the logit, from a
        zero input; ``steps``), ``attention_rollout`` / ``last_block_attention`` (signal ViT: of the
        pooled vector, so the same for every class) or ``grad_cam`` (ResNet: its last stage)."""
        (x,) = self.inputs(batch, self.field)
        if method == "integrated_gradients":
            maps = saliency.integrated_gradients(self.net, x, target, steps=int(options.get("steps", 32)))
        elif method == "grad_cam" and isinstance(self.net, ResNetEncoder):
            maps = saliency.grad_cam(self.net, self.net.layer4, x, target)
        elif method == "attention_rollout" and not isinstance(self.net, ResNetEncoder):
            maps = saliency.attention_rollout(self.net, x)
        elif method == "last_block_attention" and not isinstance(self.net, ResNetEncoder):
            maps = saliency.last_block_attention(self.net, x)
        else:
            raise ConfigError(f"saliency method '{method}' does not apply to this classifier; it has "
                              f"{', '.join(self.saliency_methods)}")
        if method in ("attention_rollout", "last_block_attention") or target is None:
            return [SaliencyMap(self.field, method, "the pooled features", maps)]  # the same for every class
        return [SaliencyMap(self.field, method, str(self.class_names[target]), maps,
                            self.class_scores(batch)[:, target])]

    def confidence_intervals(self, gathered: dict[str, np.ndarray], *, n_boot: int, seed: int) -> dict:
        """Percentile bootstrap 95% intervals of the metrics of one gathered split."""
        return bootstrap_ci(self.task_type, gathered["label"], gathered["logits"], n_boot=n_boot, seed=seed,
                            label_names=self.label_names or None)

    def load_pretrained(self) -> Optional[str]:
        """Initialise the encoder from ``pretrained_weights``; returns the file used (None = scratch)."""
        from models.weights import load_pretrained

        path = self.pretrained["path"]
        if not path:
            log.info("model.pretrained_weights is null: training from scratch")
            return None
        if not os.path.isfile(path):
            if self.pretrained["optional"] and "pretrained_weights" not in self.command_line_keys:
                log.warning("no pretrained encoder at %s: training from scratch (python main_pretrain.py writes "
                            "the demo encoder there)", path)
                return None
            raise ConfigError(f"model.pretrained_weights '{path}' does not exist. Point it at an encoder checkpoint "
                              "(e.g. <pretraining run>/encoder.pth or the released MMCL weights), or set "
                              "model.pretrained_weights=null to train from scratch.")
        report = load_pretrained(self.net, path, allow_pickle=self.pretrained["allow_pickle"],
                                 tolerated_missing_fraction=self.pretrained["tolerated_missing_fraction"])
        contract.check(report.metadata.get("contract"), getattr(self.data, "contract", None),
                       what=f"the pretrained encoder '{path}'", policy=getattr(self.data, "contract_policy", "error"),
                       log=log)
        self.pretrained_metadata = report.metadata  # the engine checks its training_data against our splits
        log.info("initialised the encoder from %s (%d tensors loaded)", path, len(report.loaded))
        return path


def _classification_loss(task_type: str, loss: Mapping[str, Any], train_labels: Optional[np.ndarray],
                         num_classes: int) -> ClassificationLoss:
    class_weights = pos_weight = None
    if train_labels is None and (loss["class_weights"] == "balanced" or loss["pos_weight"]):
        # a classifier rebuilt for inference (main_artifacts.py) on data without a train split
        log.info("no training labels: the loss is not weighted (class_weights=balanced / pos_weight need them)")
        return ClassificationLoss(task_type, label_smoothing=float(loss["label_smoothing"] or 0.0),
                                  num_classes=None if task_type == "regression" else num_classes)
    if loss["class_weights"] == "balanced":
        class_weights = class_weights_from_labels(train_labels, num_classes)
    elif loss["class_weights"] is not None:
        class_weights = torch.tensor(loss["class_weights"], dtype=torch.float32)
    if loss["pos_weight"]:
        pos_weight = pos_weight_from_labels(train_labels)
    return ClassificationLoss(task_type, label_smoothing=float(loss["label_smoothing"] or 0.0),
                              class_weights=class_weights, pos_weight=pos_weight,
                              num_classes=None if task_type == "regression" else num_classes)
