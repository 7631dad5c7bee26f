"""The CMR data kind: short-axis images from an image store, with their labels.

``CMRSource`` (``data.kind: cmr``) opens ``<data_root>/<dataset_key>``: an image store holding
``images.npy`` (uint8 0..255, or float16/float32 in 0..1, N x [C x] H x W: the demo's frames, the
ACDC / UK Biobank stores of ``datasets.ingest``) or listing image files in ``image_paths.txt``
(live loading: each file is read when used and brought to the ingest's contract, the centred square
resized to ``img_size`` with intensities scaled by their 0.5-99.5 percentiles). Then, in every mode
alike, the optional ``manual_crop`` (fractions ``top``, ``left``, ``height``, ``width`` of the image)
and a resize to ``img_size`` x ``img_size``. A sample is the dict

    cmr       float32 (C, img_size, img_size) in [0, 1]   (views 1: augmented in training)
    view1     float32 (C, img_size, img_size)             (views 2: always augmented)
    view2     float32 (C, img_size, img_size)             (views 2: augmented with augmentation_rate)
    label     float32 (C,) multi-hot, int64 scalar (multiclass), or zeros(0) (no labels)
    key, index                                            (see ``datasets.loading.KeyedDataset``)

``views: 2`` (contrastive pretraining) gives ``view1`` / ``view2`` in training and, for the
validation monitors, also the plain ``cmr``. ``augment_device: device`` leaves the training
augmentation to the engine (batched on the training device); validation views are still made here.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from datasets.augment import resolve_augment_device
from datasets.augment_image import IMAGE_AUGMENT_SCHEMA, ImageAugmentation, build_image_augmentation
from datasets.loading import DataInfo, InputSpec, KeyedDataset, StoreSource, label_tensor
from datasets.preprocess import image_to_contract
from datasets.sources import BadRecord, Image
from datasets.store import Store, StoreError, open_store
from util.schema import Choice, Float, Int, Section

FIELD = "cmr"
VIEWS = ("view1", "view2")
CROP_KEYS = ("top", "left", "height", "width")


def manual_crop_box(crop: Optional[Mapping], height: int, width: int) -> Optional[tuple[int, int, int, int]]:
    """``(top, left, h, w)`` in pixels of the fractions ``crop`` of an ``height`` x ``width`` image."""
    if not crop:
        return None
    top, left = int(round(crop["top"] * height)), int(round(crop["left"] * width))
    h, w = max(1, int(round(crop["height"] * height))), max(1, int(round(crop["width"] * width)))
    if top + h > height or left + w > width:
        raise StoreError(f"manual_crop {dict(crop)} reaches outside the {height} x {width} image; the fractions "
                         "need top + height <= 1 and left + width <= 1")
    return top, left, h, w


class CMRDataset(KeyedDataset):
    """Images of one split of an image store (see the module docstring).

    Args:
        store: a ``Store`` or the path of one (modality cmr).
        split: split name or an array of store indices.
        img_size: side of the square images fed to the model.
        manual_crop: None, or ``{top, left, height, width}`` fractions of the stored image.
        views: 1 (``cmr``) or 2 (``view1`` / ``view2``; in evaluation also ``cmr``).
        train: training mode (augmentations apply; evaluation gives the plain image).
        augmentation: the ``ImageAugmentation`` applied here (None: none here, e.g. on the device).
        eval_augmentation: the one that makes the two views in evaluation (views 2).
        seed: base seed of the per-sample generators.
    """

    def __init__(self, store: Union[Store, str, os.PathLike], split: Union[str, Sequence[int]], *, img_size: int,
                 manual_crop: Optional[Mapping] = None, views: int = 1, train: bool,
                 augmentation: Optional[ImageAugmentation] = None,
                 eval_augmentation: Optional[ImageAugmentation] = None, seed: int = 0) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        if self.store.modality != "cmr":
            raise StoreError(f"CMRDataset needs an image store; {self.store.root} is a {self.store.modality} store")
        self.split = split if isinstance(split, str) else "custom"
        self.indices = self.store.split(split) if isinstance(split, str) else np.asarray(split, dtype=np.int64)
        self.img_size, self.manual_crop, self.views = int(img_size), manual_crop, int(views)
        self.train, self.augmentation, self.eval_augmentation = train, augmentation, eval_augmentation
        self.seed, self.epoch = seed, 0
        self.channels = 1 if self.store.live or len(self.store.shape) == 3 else int(self.store.shape[1])
        # refuse a bad crop now (live files are brought to img_size x img_size first)
        manual_crop_box(manual_crop, *((self.img_size,) * 2 if self.store.live else self.store.shape[-2:]))

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, record: int) -> torch.Tensor:
        """Store row ``record`` as float32 ``(C, img_size, img_size)`` in [0, 1], cropped and resized."""
        data = self.store.read(record)
        if self.store.live:
            try:
                data = image_to_contract(Image(data), size=self.img_size)
            except BadRecord as e:
                raise StoreError(f"image {self.store.image_path(record)} (record {self.store.record_ids[record]}) "
                                 f"cannot be used: {e}") from None
        x = torch.from_numpy(np.asarray(data))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.dim() == 2:
            x = x[None]
        box = manual_crop_box(self.manual_crop, x.shape[-2], x.shape[-1])
        if box is not None:
            top, left, h, w = box
            x = x[:, top:top + h, left:left + w]
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x[None], size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        return x.clamp_(0, 1)

    def sample(self, index: int, generator: torch.Generator) -> dict:
        record = int(self.indices[index])
        x = self.image(record)
        out: dict = {"label": label_tensor(self.store, record)}
        if self.views == 1:
            aug = self.augmentation if self.train else None
            out[FIELD] = aug(x, generator) if aug is not None else x
            return out
        aug = self.augmentation if self.train else self.eval_augmentation
        out["view1"] = aug(x, generator, always=True) if aug is not None else x
        out["view2"] = aug(x, generator) if aug is not None else x
        if not self.train:
            out[FIELD] = x  # the validation monitors embed the plain image
        return out


class CMRSource(StoreSource):
    """The CMR data kind for ``datasets.build_data`` (see ``datasets.loading`` for the protocol).

    Reads ``data.`` build_demo, data_root, dataset_key, img_size, manual_crop, views and the
    augmentation keys of ``configs/data/cmr.yaml``."""

    SCHEMA = {
        "img_size": Int(min=32), "views": Choice(1, 2),
        "manual_crop": Section({k: Float(0, 1, min_open=k in ("height", "width")) for k in CROP_KEYS},
                               nullable=True),
        **IMAGE_AUGMENT_SCHEMA,
    }

    def __init__(self, data_cfg: Mapping, seed: int) -> None:
        if data_cfg["build_demo"]:
            from datasets.demo import ensure_demo

            ensure_demo(data_cfg["data_root"])
        self.store = open_store(data_cfg["data_root"], data_cfg["dataset_key"])
        self.root = self.store.root
        if self.store.modality != "cmr":
            raise StoreError(f"data.kind cmr needs an image store, but {self.root} is a {self.store.modality} store; "
                             "choose a CMR modality (e.g. modality=cmr/demo) or data=ecg")
        self.img_size, self.views, self.seed = int(data_cfg["img_size"]), int(data_cfg["views"]), seed
        self.manual_crop = dict(data_cfg["manual_crop"]) if data_cfg["manual_crop"] else None
        augmentation = build_image_augmentation(data_cfg)
        # validation views (views 2) are made in the loader: the engine runs device transforms in training only
        self.eval_augmentation = augmentation or (build_image_augmentation({**data_cfg, "augment": True})
                                                  if self.views == 2 else None)
        on_device = augmentation is not None and resolve_augment_device(data_cfg["augment_device"]) == "device"
        self.train_augmentation = None if on_device else augmentation
        self.device_transforms = {}
        if on_device and self.views == 1:
            self.device_transforms = {FIELD: augmentation.batch}
        elif on_device:
            self.device_transforms = {"view1": lambda x, generator: augmentation.batch(x, generator, always=True),
                                      "view2": augmentation.batch}
        self._probe = self.dataset(np.zeros(0, dtype=np.int64), train=False)  # checks the crop now

    def dataset(self, records: np.ndarray, train: bool) -> CMRDataset:
        return CMRDataset(self.store, records, img_size=self.img_size, manual_crop=self.manual_crop, views=self.views,
                          train=train, augmentation=self.train_augmentation if train else None,
                          eval_augmentation=self.eval_augmentation, seed=self.seed)

    def info(self, train_records: Optional[np.ndarray]) -> DataInfo:
        labels = self.train_labels(train_records)
        spec = InputSpec(shape=(self._probe.channels, self.img_size, self.img_size))
        fields = (FIELD,) if self.views == 1 else VIEWS
        inputs = {name: spec for name in fields}
        # what the network sees: the stored contract plus this run's crop and size
        contract = {**self.store.contract, "img_size": self.img_size, "manual_crop": self.manual_crop}
        return DataInfo(inputs=inputs, task_type=self.store.task_type, label_names=self.store.label_names,
                        train_labels=labels, source=str(self.store.root), contract=contract)
