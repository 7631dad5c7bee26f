"""One builder for every network: ``build_network(arch, role, size=..., **kwargs)``.

``arch`` names a family with one size table; ``role`` the network of that family an objective needs:

    arch         role          network                               size table
    signal_vit   encoder       models.vit.SignalViT                  models.vit.VIT_SIZES
                 mae           models.mae.SignalMAE                  (encoder + decoder columns)
                 classifier    models.classifier.ECGClassifier
    resnet       encoder       models.resnet.ResNetEncoder           models.resnet.RESNET_SIZES
                 simclr        models.resnet.ResNetSimCLR            (resnet18, resnet50)
                 classifier    models.resnet.ResNetClassifier

The size's columns that the network takes are applied first, then ``kwargs`` (which may override
them); YAML lists become tuples for ``input_size`` / ``patch_size``. An unknown arch, role, size or
keyword raises ``ValueError`` naming the valid ones (so a misspelt model-config key is caught here).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from models.classifier import CLASSIFIER_PARAMS, ECGClassifier
from models.mae import MAE_PARAMS, SignalMAE
from models.resnet import RESNET_PARAMS, RESNET_SIZES, ResNetClassifier, ResNetEncoder, ResNetSimCLR
from models.vit import VIT_PARAMS, VIT_SIZES, SignalViT
from util.schema import Choice, Spec, optional

__all__ = ["NETWORKS", "SIZE_TABLES", "build_network", "network_schema"]

NETWORKS: dict[str, dict[str, type]] = {
    "signal_vit": {"encoder": SignalViT, "mae": SignalMAE, "classifier": ECGClassifier},
    "resnet": {"encoder": ResNetEncoder, "simclr": ResNetSimCLR, "classifier": ResNetClassifier},
}
SIZE_TABLES: dict[str, dict[str, dict[str, int]]] = {"signal_vit": VIT_SIZES, "resnet": RESNET_SIZES}
PARAMS: dict[type, dict[str, Spec]] = {SignalViT: VIT_PARAMS, SignalMAE: MAE_PARAMS, ECGClassifier: CLASSIFIER_PARAMS,
                                       ResNetEncoder: RESNET_PARAMS, ResNetSimCLR: RESNET_PARAMS,
                                       ResNetClassifier: RESNET_PARAMS}
_TUPLES = ("input_size", "patch_size")
_FROM_DATA = ("input_size", "in_chans")  # set by the objective from the data's sample shape


def network_schema(arch: str, role: str) -> dict[str, Spec]:
    """The rules of the model-config keys that reach ``build_network(arch, role, ...)``: ``size`` and
    the network's arguments (all optional: the size preset and the constructor fill what is absent)."""
    if arch not in NETWORKS or role not in NETWORKS[arch]:
        return {}
    cls = NETWORKS[arch][role]
    accepted = inspect.signature(cls.__init__).parameters  # a family's rules may cover several networks
    params = {k: v for k, v in PARAMS[cls].items() if k in accepted and k not in _FROM_DATA}
    return optional({"size": Choice(*SIZE_TABLES[arch]), **params})


def build_network(arch: str, role: str, size: str = "tiny", **kwargs: Any) -> nn.Module:
    """The ``role`` network of family ``arch`` at ``size`` (see the module docstring)."""
    if arch not in NETWORKS:
        raise ValueError(f"unknown network family arch={arch!r}; valid: {', '.join(NETWORKS)}")
    if role not in NETWORKS[arch]:
        raise ValueError(f"{arch} has no {role!r} network; valid roles: {', '.join(NETWORKS[arch])}")
    table = SIZE_TABLES[arch]
    if size not in table:
        raise ValueError(f"unknown {arch} size {size!r}; valid sizes: {', '.join(table)}")
    cls = NETWORKS[arch][role]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} argument(s) {', '.join(unknown)}; accepted: size, "
                         f"{', '.join(accepted)}")
    for key in _TUPLES:
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(kwargs[key])
    preset = {k: v for k, v in table[size].items() if k in accepted}
    return cls(**{**preset, **kwargs})
