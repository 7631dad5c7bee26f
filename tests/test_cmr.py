"""The CMR pieces: NT-Xent (one process, and two gloo ranks against one process), the global batch
norm, the ResNet encoders and the weight layouts they load (released MMCL image encoder, torchvision),
live loading of real MR files with the manual crop and both augmentation modes, and the embedding
monitors of SimCLR's validation."""
import math
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torchvision

from datasets.augment_image import ImageAugmentation
from datasets.cmr import CMRDataset, CMRSource
from datasets.store import Store, StoreError, write_store
from models.losses import nt_xent
from models.resnet import ResNetClassifier, ResNetEncoder, ResNetSimCLR
from models.weights import load_pretrained
from util.collectives import GlobalBatchNorm, convert_sync_batchnorm
from util.metrics import embedding_monitors

AUG = dict(augmentation_rate=0.95, hflip_p=0.5, rotation_degrees=45, brightness=0.5, contrast=0.5,
           saturation=0.25, random_crop_scale=[0.6, 1.0])


# ---- NT-Xent ------------------------------------------------------------------------------------------
def nt_xent_by_the_formula(z1, z2, t):
    """Chen et al. (2020), eq. 1, one anchor at a time, in float64."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("n, t", [(1, 0.1), (3, 0.1), (5, 0.5)])
def test_nt_xent_equals_the_formula(n, t):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 7, generator=g), torch.randn(n, 7, generator=g)
    assert abs(float(nt_xent(z1, z2, t)) - nt_xent_by_the_formula(z1, z2, t)) < 1e-6


def test_nt_xent_is_low_when_the_views_agree_and_high_when_they_do_not():
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    same = float(nt_xent(z, z + 0.01 * torch.randn_like(z), 0.1))
    unrelated = float(nt_xent(z, torch.randn_like(z), 0.1))
    assert same < 0.1 < math.log(31) - 1 < unrelated


class TinyEncoder(torch.nn.Module):
    """Conv -> BN -> pooled -> linear: enough to check gradients through the BN and the loss."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def _one_process(x1, x2):
    torch.manual_seed(0)
    model = TinyEncoder().double()
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = nt_xent(z1, z2, 0.1)
    loss.backward()
    return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}, model.bn.running_var.clone()


def _rank(rank, world, init_file, x1, x2, out_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = convert_sync_batchnorm(TinyEncoder().double(), torch.device("cpu"))
    assert isinstance(model.bn, GlobalBatchNorm)
    part = slice(rank * len(x1) // world, (rank + 1) * len(x1) // world)
    z1, z2 = model(torch.cat([x1[part], x2[part]])).chunk(2)
    loss = nt_xent(z1, z2, 0.1)
    loss.backward()
    grads = {}
    for k, p in model.named_parameters():  # what DDP does: the mean over the ranks
        torch.distributed.all_reduce(p.grad)
        grads[k] = p.grad / world
    losses = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
    torch.distributed.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"loss": float(torch.stack(losses).mean()), "grads": grads,
                    "running_var": model.bn.running_var.clone()}, os.path.join(out_dir, "ranks.pt"))
    torch.distributed.destroy_process_group()


def test_two_gloo_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(tmp_path):
    """Negatives gathered from every rank with their gradients, and batch norm over the global batch:
    2 ranks x 4 samples == 1 process x 8 samples (loss, every gradient, the BN running variance), in
    float64 so that only the method can differ."""
    g = torch.Generator().manual_seed(1)
    x1, x2 = (torch.randn(8, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    loss, grads, running_var = _one_process(x1, x2)
    mp.spawn(_rank, args=(2, str(tmp_path / "init"), x1, x2, str(tmp_path)), nprocs=2, join=True)
    ranks = torch.load(tmp_path / "ranks.pt", weights_only=True)
    assert abs(ranks["loss"] - loss) < 1e-6
    for k, grad in grads.items():
        assert (ranks["grads"][k] - grad).abs().max() < 1e-6, k
    assert (ranks["running_var"] - running_var).abs().max() < 1e-6


def test_global_batch_norm_is_a_plain_batch_norm_in_one_process():
    bn = torch.nn.BatchNorm2d(3)
    converted = convert_sync_batchnorm(torch.nn.Sequential(bn), torch.device("cpu"))[0]
    assert isinstance(converted, GlobalBatchNorm) and converted.weight is bn.weight
    x = torch.randn(4, 3, 5, 5)
    reference = torch.nn.BatchNorm2d(3)
    assert torch.allclose(converted(x), reference(x), atol=1e-6)
    assert torch.allclose(converted.running_var, reference.running_var)


# ---- ResNets and their weights ----------------------------------------------------------------------------
def test_encoders_give_pooled_features_and_the_classifier_freezes_its_encoder():
    x = torch.rand(2, 1, 64, 64)
    assert ResNetEncoder(depth=18, in_chans=1)(x).shape == (2, 512)
    assert ResNetSimCLR(depth=18, in_chans=1, projection_hidden_dim=64, projection_dim=16)(x).shape == (2, 16)
    frozen = ResNetClassifier(depth=18, in_chans=1, num_classes=5, head="mlp", finetune_strategy="frozen")
    assert frozen(x).shape == (2, 5)
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"head"}
    frozen.train()
    assert not frozen.bn1.training and not frozen.layer1.training and frozen.head.training
    before = frozen.bn1.running_mean.clone()
    frozen(x)
    assert torch.equal(frozen.bn1.running_mean, before)  # a frozen encoder's statistics stay
    trainable = ResNetClassifier(depth=18, in_chans=1, num_classes=5, finetune_strategy="trainable").train()
    assert trainable.bn1.training and all(p.requires_grad for p in trainable.parameters())
    with pytest.raises(ValueError, match="too small"):
        ResNetEncoder(depth=18, in_chans=1, input_size=(16, 16))


def test_the_released_mmcl_image_encoder_layout_loads_strictly_into_resnet50(tmp_path):
    """{'state_dict': {'encoder_imaging.{0..8}.*'}}: the children of a torchvision ResNet-50 without fc."""
    torch.manual_seed(0)
    source = torchvision.models.resnet50(weights=None)
    backbone = torch.nn.Sequential(*list(source.children())[:-1])
    state = {f"encoder_imaging.{k}": v for k, v in backbone.state_dict().items()}
    state["projection_head_imaging.layer.0.weight"] = torch.zeros(2048, 2048)
    path = tmp_path / "mmcl_image.pth"
    torch.save({"state_dict": state}, path)

    rgb = ResNetEncoder(depth=50, in_chans=3)
    report = load_pretrained(rgb, path, ignore_prefixes=("projection_head_imaging.",))
    assert report.format == "mmcl_image" and report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(rgb.state_dict())
    reference = source.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in rgb.state_dict().items())

    gray = ResNetEncoder(depth=50, in_chans=1)  # the stem's RGB weights summed over their channels
    report = load_pretrained(gray, path, ignore_prefixes=("projection_head_imaging.",))
    assert report.missing == [] and any("summed" in n for n in report.notes)
    assert torch.allclose(gray.conv1.weight, reference["conv1.weight"].sum(1, keepdim=True))
    x = torch.rand(1, 1, 64, 64)
    gray.eval(), rgb.eval()
    assert torch.allclose(gray(x), rgb(x.expand(1, 3, 64, 64)), atol=1e-4)


def test_a_torchvision_state_dict_loads_into_the_classifier(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model = ResNetClassifier(depth=50, in_chans=3, num_classes=5)
    report = load_pretrained(model, path)
    assert report.new_layers == ["head.weight", "head.bias"] and report.missing_required == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]  # reported, not loaded


def test_an_ecg_encoder_file_is_refused_by_the_resnet(tmp_path):
    from models.vit import SignalViT
    from models.weights import WeightsError

    vit = SignalViT(input_size=(12, 500), patch_size=(1, 50), embed_dim=32, depth=1, num_heads=2)
    torch.save({"model": vit.state_dict()}, tmp_path / "e.pth")
    with pytest.raises(WeightsError, match="another model|do not fit"):
        load_pretrained(ResNetEncoder(depth=18, in_chans=1), tmp_path / "e.pth")


# ---- images: live loading, crop, augmentations ----------------------------------------------------------
@pytest.fixture(scope="module")
def real_mr_store(tmp_path_factory):
    """A live-loading store of real MR files from installed packages: pydicom's MR_small.dcm (64 x 64)
    and nibabel's example4d.nii.gz (a 4-D MR volume), plus a PNG and an .npy written from the DICOM."""
    from pydicom.data import get_testdata_file
    import nibabel

    root = tmp_path_factory.mktemp("mr")
    dicom = get_testdata_file("MR_small.dcm")
    nifti = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "example4d.nii.gz")
    import pydicom

    pixels = pydicom.dcmread(dicom).pixel_array.astype(np.float32)
    np.save(root / "slice.npy", pixels)
    as_uint8 = np.rint(255 * (pixels - pixels.min()) / (pixels.max() - pixels.min())).astype(np.uint8)
    from PIL import Image

    Image.fromarray(as_uint8).save(root / "slice.png")
    paths = [dicom, nifti, "slice.npy", "slice.png"]
    store = write_store(root / "store", image_paths=[p if os.path.isabs(p) else f"../{p}" for p in paths],
                        labels=np.array([0, 1, 0, 1]), record_ids=["dcm", "nii", "npy", "png"],
                        splits={"train": [0, 1, 2, 3], "val": [], "test": []},
                        info=dict(task_type="multiclass", label_names=["a", "b"], units="intensity",
                                  provenance="real MR test files", synthetic=False))
    return Store(store), pixels


def test_real_mr_files_load_live_to_the_ingest_contract(real_mr_store):
    store, pixels = real_mr_store
    assert store.live and len(store) == 4
    for i in range(4):
        raw = store.read(i)
        assert raw.ndim == 2 and np.isfinite(raw).all()
    assert np.array_equal(store.read(0), pixels) and np.array_equal(store.read(2), pixels)
    dataset = CMRDataset(store, "train", img_size=48, train=False)
    images = [dataset[i]["cmr"] for i in range(4)]
    for x in images:
        assert x.shape == (1, 48, 48) and x.dtype == torch.float32
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # the 0.5-99.5 percentiles span 0..1
    assert (images[0] - images[2]).abs().max() < 1e-6  # the same slice from DICOM and .npy
    assert (images[0] - images[3]).abs().max() < 0.02  # and from an 8-bit PNG of it


def test_the_manual_crop_is_the_same_in_every_mode(real_mr_store):
    store, _ = real_mr_store
    crop = {"top": 0.21, "left": 0.325, "height": 0.375, "width": 0.375}
    whole = CMRDataset(store, "train", img_size=48, train=False)[0]["cmr"]
    top, left, side = round(0.21 * 48), round(0.325 * 48), round(0.375 * 48)
    expected = torch.nn.functional.interpolate(whole[None, :, top:top + side, left:left + side], size=(48, 48),
                                               mode="bilinear", align_corners=False, antialias=True)[0]
    for views, train in ((1, False), (1, True), (2, False), (2, True)):  # no augmentation: the crop alone
        sample = CMRDataset(store, "train", img_size=48, manual_crop=crop, views=views, train=train)[0]
        for name in ("cmr", "view1", "view2"):
            if name in sample:
                assert (sample[name] - expected).abs().max() < 0.02, (views, train, name)
    with pytest.raises(StoreError, match="outside"):
        CMRDataset(store, "train", img_size=48, manual_crop={"top": 0.8, "left": 0, "height": 0.5, "width": 0.5},
                   train=False)[0]


def test_augmentations_on_a_real_slice_in_both_modes(real_mr_store):
    store, _ = real_mr_store
    aug = ImageAugmentation(img_size=40, **AUG)
    one = CMRDataset(store, "train", img_size=40, views=1, train=True, augmentation=aug, seed=3)
    two = CMRDataset(store, "train", img_size=40, views=2, train=True, augmentation=aug, seed=3)
    plain = CMRDataset(store, "train", img_size=40, train=False)[0]["cmr"]
    a, b = one[(0, 0)], one[(0, 0)]
    assert torch.equal(a["cmr"], b["cmr"])  # a function of (seed, epoch, index)
    assert not torch.equal(one[(0, 1)]["cmr"], a["cmr"])
    pair = two[(0, 0)]
    for x in (a["cmr"], pair["view1"], pair["view2"]):
        assert x.shape == (1, 40, 40) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert not torch.equal(pair["view1"], pair["view2"]) and not torch.equal(pair["view1"], plain)
    assert "cmr" not in pair and "cmr" in CMRDataset(store, "train", img_size=40, views=2, train=False,
                                                     eval_augmentation=aug)[0]
    # batched on the device (here the CPU): the same per-view function over a batch
    batch = torch.stack([plain, plain, plain])
    g = torch.Generator().manual_seed(0)
    out = aug.batch(batch, g, always=True)
    assert out.shape == (3, 1, 40, 40) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out[0], out[1])
    assert torch.equal(aug.batch(batch, torch.Generator().manual_seed(0), always=True), out)
    never = ImageAugmentation(img_size=40, **{**AUG, "augmentation_rate": 0.0})
    assert torch.equal(never.batch(batch, g), batch)  # views 2's second view: augmented with the rate only


def test_a_missing_or_unreadable_live_file_is_one_message_naming_it(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"not a dicom")
    write_store(tmp_path / "s", image_paths=["../missing.npy", "../bad.dcm", "../x.gif"], labels=None,
                record_ids=["a", "b", "c"], splits={"train": [0, 1, 2], "val": [], "test": []},
                info=dict(task_type=None, label_names=[], units="intensity", provenance="test", synthetic=False))
    store = Store(tmp_path / "s")
    for i, what in ((0, "missing.npy"), (1, "bad.dcm"), (2, "unknown file type")):
        with pytest.raises(StoreError, match=what):
            store.read(i)


def test_the_cmr_source_refuses_an_ecg_store(tmp_path):
    from datasets.demo import build_demo

    build_demo(str(tmp_path), n_records=40, seed=0, include_real=False)
    cfg = dict(build_demo=False, data_root=str(tmp_path), dataset_key="demo_ecg", img_size=32, views=1,
               manual_crop=None, augment=True, augment_device="cpu", **AUG)
    with pytest.raises(StoreError, match="needs an image store"):
        CMRSource(cfg, 0)
    source = CMRSource({**cfg, "dataset_key": "demo_cmr", "views": 2, "augment_device": "device"}, 0)
    assert set(source.device_transforms) == {"view1", "view2"}
    info = source.info(source.split("train"))
    assert set(info.inputs) == {"view1", "view2"} and info.inputs["view1"].shape == (1, 32, 32)
    assert info.contract["modality"] == "cmr" and info.contract["img_size"] == 32


# ---- monitors ----------------------------------------------------------------------------------------------
def test_embedding_monitors_read_labels_off_informative_embeddings_only():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    informative = rng.normal(size=(150, 8)) + 3 * np.eye(3, 8)[y]
    noise = rng.normal(size=(150, 8))
    good, bad = embedding_monitors("multiclass", informative, y), embedding_monitors("multiclass", noise, y)
    assert set(good) == {"knn_accuracy", "knn_auroc_macro", "probe_accuracy", "probe_auroc_macro"}
    assert good["knn_accuracy"] > 0.9 and good["probe_auroc_macro"] > 0.95
    assert bad["knn_accuracy"] < 0.5 and bad["probe_auroc_macro"] < 0.65
    labels = (rng.random((150, 4)) < 0.3).astype(np.float32)
    multi = embedding_monitors("multilabel", rng.normal(size=(150, 6)) + 3 * np.pad(labels, ((0, 0), (0, 2))), labels)
    assert set(multi) == {"knn_auroc_macro", "probe_auroc_macro"} and multi["probe_auroc_macro"] > 0.9
    assert embedding_monitors("regression", noise, y) == {}
    assert set(embedding_monitors("multiclass", informative[:6], y[:6])) == {"knn_accuracy", "knn_auroc_macro"}
