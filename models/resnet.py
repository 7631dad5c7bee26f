"""ResNet image encoders (torchvision ResNet-18 / ResNet-50 without ``fc``) and the networks built on
them: the SimCLR network (encoder + projection head) and the image classifier.

    encoder = ResNetEncoder(depth=50, in_chans=1)     # (B, 1, H, W) -> (B, 2048) pooled features
    simclr = ResNetSimCLR(depth=50, in_chans=1)      # (B, 1, H, W) -> (B, 128) projections
    clf = ResNetClassifier(depth=50, in_chans=1, num_classes=5, head="mlp", finetune_strategy="frozen")

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` .. ``layer4``) at the root of every
network here, so a torchvision state dict, our SimCLR ``encoder.pth`` and the released MMCL image
encoder (``encoder_imaging.{0..8}.*``, mapped by ``models.weights``) load into any of them. A
classifier adds ``head`` and the SimCLR network ``projector`` (both fresh layers for the loader).
With ``in_chans`` 1 (grayscale CMR) the stem convolution takes one channel; 3-channel weights are
summed over their input channels when loaded (``models.weights``), which equals feeding the
grayscale image as RGB.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torchvision

from util.schema import Bool, Choice, Int, List, validate_args

__all__ = ["RESNET_SIZES", "RESNET_PARAMS", "ResNetEncoder", "ResNetSimCLR", "ResNetClassifier"]

# size presets of the `resnet` family (models/factory.py): depth and the pooled feature width
RESNET_SIZES: dict[str, dict[str, int]] = {"resnet18": dict(depth=18), "resnet50": dict(depth=50)}
FEATURES = {18: 512, 50: 2048}
HEADS = ("linear", "mlp")
STRATEGIES = ("trainable", "frozen")
STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

RESNET_PARAMS = {
    "depth": Choice(18, 50), "in_chans": Int(min=1), "input_size": List(Int(min=1), length=2),
    "zero_init_residual": Bool(), "projection_hidden_dim": Int(min=1), "projection_dim": Int(min=1),
    "num_classes": Int(min=1), "head": Choice(*HEADS), "finetune_strategy": Choice(*STRATEGIES),
}


class ResNetEncoder(nn.Module):
    """torchvision ResNet-``depth`` without ``fc``: ``(B, in_chans, H, W) -> (B, feature_dim)`` after
    global average pooling (``feature_dim`` 512 for ResNet-18, 2048 for ResNet-50).

    ``input_size`` (H, W) is only checked (at least 32 x 32, the network downsamples by 32).
    ``num_layers`` / ``layer_id`` give layer-wise LR decay its ids: the stem 0, ``layer1..4`` 1..4,
    anything added on top (heads) 5."""

    def __init__(self, depth: int = 50, in_chans: int = 1, input_size: Optional[Sequence[int]] = None,
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        validate_args(RESNET_PARAMS, depth=depth, in_chans=in_chans, zero_init_residual=zero_init_residual)
        if input_size is not None and min(int(s) for s in input_size) < 32:
            raise ValueError(f"input_size {tuple(input_size)} is too small for a ResNet (at least 32 x 32)")
        build = torchvision.models.resnet18 if int(depth) == 18 else torchvision.models.resnet50
        net = build(weights=None, zero_init_residual=bool(zero_init_residual))
        if in_chans != 3:
            net.conv1 = nn.Conv2d(int(in_chans), 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            self.add_module(name, getattr(net, name))
        self.depth, self.in_chans, self.feature_dim = int(depth), int(in_chans), FEATURES[int(depth)]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, feature_dim, H / 32, W / 32): the last stage's output."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, feature_dim)."""
        return torch.flatten(self.avgpool(self.feature_map(x)), 1)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.forward_features(x)

    def encoder_state_dict(self) -> dict:
        """The encoder's tensors only (no head / projector), torchvision names."""
        return {k: v for k, v in self.state_dict().items() if k.split(".")[0] in STAGES}

    def num_layers(self) -> int:
        return 5

    def layer_id(self, name: str) -> int:
        stage = name.split(".")[0]
        if stage in ("conv1", "bn1"):
            return 0
        if stage.startswith("layer") and stage[5:].isdigit():
            return int(stage[5:])
        return 5


class ResNetSimCLR(ResNetEncoder):
    """SimCLR network: the encoder plus ``projector`` = Linear(feature_dim, projection_hidden_dim) ->
    ReLU -> Linear(projection_hidden_dim, projection_dim) (the paper: 2048 -> 2048 -> 128).
    ``forward`` gives the projections ``(B, projection_dim)``; ``forward_features`` the encoder's."""

    def __init__(self, depth: int = 50, in_chans: int = 1, input_size: Optional[Sequence[int]] = None,
                 zero_init_residual: bool = False, projection_hidden_dim: int = 2048, projection_dim: int = 128) -> None:
        super().__init__(depth, in_chans, input_size, zero_init_residual)
        validate_args(RESNET_PARAMS, projection_hidden_dim=projection_hidden_dim, projection_dim=projection_dim)
        self.projector = nn.Sequential(nn.Linear(self.feature_dim, int(projection_hidden_dim)), nn.ReLU(inplace=True),
                                       nn.Linear(int(projection_hidden_dim), int(projection_dim)))

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.projector(self.forward_features(x))


class ResNetClassifier(ResNetEncoder):
    """Image classifier ``(B, in_chans, H, W) -> (B, num_classes)``: the encoder plus ``head``, a
    Linear layer (``head="linear"``) or the reference's MLP (feature_dim -> /4 -> /16 -> classes, ReLU).

    ``finetune_strategy="frozen"`` trains the head only: the encoder's parameters are frozen and its
    batch norms stay in eval mode (running statistics unchanged); ``"trainable"`` trains everything."""

    def __init__(self, depth: int = 50, in_chans: int = 1, input_size: Optional[Sequence[int]] = None,
                 zero_init_residual: bool = False, num_classes: int = 5, head: str = "linear",
                 finetune_strategy: str = "trainable") -> None:
        super().__init__(depth, in_chans, input_size, zero_init_residual)
        validate_args(RESNET_PARAMS, num_classes=num_classes, head=head, finetune_strategy=finetune_strategy)
        d, n = self.feature_dim, int(num_classes)
        if head == "mlp":
            self.head = nn.Sequential(nn.Linear(d, d // 4), nn.ReLU(inplace=True), nn.Linear(d // 4, d // 16),
                                      nn.ReLU(inplace=True), nn.Linear(d // 16, n))
        else:
            self.head = nn.Linear(d, n)
        self.num_classes, self.frozen = n, finetune_strategy == "frozen"
        if self.frozen:
            for name, param in self.named_parameters():
                param.requires_grad = name.startswith("head.")
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNetClassifier":
        """As ``nn.Module.train``; a frozen encoder stays in eval mode."""
        super().train(mode)
        if getattr(self, "frozen", False):
            for name, child in self.named_children():
                if name != "head":
                    child.train(False)
        return self

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.head(self.forward_features(x))
