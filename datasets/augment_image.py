"""CMR image augmentations (Turgut et al. 2025; REFERENCE.md section 4), built from torchvision
transforms v2:

    RandomHorizontalFlip(hflip_p) -> RandomRotation(rotation_degrees)
    -> ColorJitter(brightness, contrast, saturation) -> RandomResizedCrop(img_size, random_crop_scale)

on float images in [0, 1], ``(C, H, W)``. A view is augmented with probability ``augmentation_rate``
and otherwise left as it is (the reference's "default transform", the resized image); in the two-view
contrastive mode the first view is always augmented, as in the reference. (Saturation changes
nothing on a one-channel image; it is kept for colour inputs.)

Randomness: torchvision's transforms draw from torch's global generator, so each view runs under a
forked global generator seeded from the sample's own ``torch.Generator`` (``datasets.loading``): a
view is a pure function of (seed, epoch, index), with any number of workers or ranks. The same
function runs per sample in the DataLoader workers (``augment_device: cpu``) or over a batch on the
training device (``device``: one seed per sample drawn from the engine's device generator).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from datasets.augment import AUGMENT_DEVICES
from util.errors import ConfigError
from util.schema import Bool, Choice, Float, List, validate_args

__all__ = ["IMAGE_AUGMENT_SCHEMA", "ImageAugmentation", "build_image_augmentation"]

IMAGE_AUGMENT_PARAMS = {
    "augmentation_rate": Float(0, 1), "hflip_p": Float(0, 1), "rotation_degrees": Float(0, 180),
    "brightness": Float(min=0), "contrast": Float(min=0), "saturation": Float(min=0),
    "random_crop_scale": List(Float(0, 1, min_open=True), length=2),
}
IMAGE_AUGMENT_SCHEMA = {"augment": Bool(), "augment_device": Choice(*AUGMENT_DEVICES), **IMAGE_AUGMENT_PARAMS}


class ImageAugmentation:
    """The train augmentation of one view (see the module docstring).

    ``aug(x, generator, always=False)``: ``x`` (C, H, W) float in [0, 1] -> (C, img_size, img_size);
    ``aug.batch(x, generator, always=False)``: the same for each image of ``x`` (B, C, H, W), on its
    device. ``always`` augments regardless of ``augmentation_rate`` (the first contrastive view)."""

    def __init__(self, *, img_size: int, augmentation_rate: float, hflip_p: float, rotation_degrees: float,
                 brightness: float, contrast: float, saturation: float, random_crop_scale) -> None:
        validate_args(IMAGE_AUGMENT_PARAMS, augmentation_rate=augmentation_rate, hflip_p=hflip_p,
                      rotation_degrees=rotation_degrees, brightness=brightness, contrast=contrast,
                      saturation=saturation, random_crop_scale=list(random_crop_scale))
        low, high = (float(s) for s in random_crop_scale)
        if low > high:
            raise ValueError(f"random_crop_scale must be [low, high] with low <= high, got {list(random_crop_scale)}")
        from torchvision.transforms import v2

        self.rate = float(augmentation_rate)
        self.compose = v2.Compose([
            v2.RandomHorizontalFlip(float(hflip_p)),
            v2.RandomRotation(float(rotation_degrees)),
            v2.ColorJitter(brightness=float(brightness), contrast=float(contrast), saturation=float(saturation)),
            v2.RandomResizedCrop(int(img_size), scale=(low, high), antialias=True),
        ])

    def _draws(self, n: int, generator: Optional[torch.Generator], always: bool) -> tuple[list, list]:
        """(augment this view?, its seed) for ``n`` views, from ``generator`` (one transfer)."""
        device = generator.device if generator is not None else torch.device("cpu")
        coins = torch.rand(n, generator=generator, device=device)
        seeds = torch.randint(0, 2 ** 62, (n,), generator=generator, device=device)
        do = [True] * n if always else (coins < self.rate).tolist()
        return do, seeds.tolist()

    def _view(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.compose(x).clamp_(0, 1)

    def __call__(self, x: torch.Tensor, generator: Optional[torch.Generator], always: bool = False) -> torch.Tensor:
        (do,), (seed,) = self._draws(1, generator, always)
        return self._view(x, seed) if do else x

    def batch(self, x: torch.Tensor, generator: Optional[torch.Generator], always: bool = False) -> torch.Tensor:
        do, seeds = self._draws(x.shape[0], generator, always)
        return torch.stack([self._view(xi, seed) if d else xi for xi, d, seed in zip(x, do, seeds)])

    def __repr__(self) -> str:
        return f"ImageAugmentation(rate={self.rate}, {self.compose})"


def build_image_augmentation(data_cfg: Mapping[str, Any]) -> Optional[ImageAugmentation]:
    """The train augmentation a CMR data config asks for (None with ``augment: false``); a bad value
    is a ``ConfigError``."""
    params = {key: data_cfg[key] for key in IMAGE_AUGMENT_PARAMS}
    try:
        augmentation = ImageAugmentation(img_size=int(data_cfg["img_size"]), **params)
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    return augmentation if data_cfg["augment"] else None
