"""models.weights: reading checkpoints safely, the formats we load, key renaming, new-layer rule,
pos_embed interpolation and the refusals. Tiny models only."""
import argparse
import logging
import random

import pytest
import torch
import torch.nn as nn

from models.mae import SignalMAE
from models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from models.vit import SignalViT
from models.weights import LoadReport, WeightsError, load_pretrained, read_state_dict
from util.config import ConfigError

TINY = dict(input_size=(12, 200), patch_size=(1, 50), embed_dim=32, depth=2, num_heads=2)
TINY_DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def tiny_mae(seed=0, **kw):
    torch.manual_seed(seed)
    return SignalMAE(**{**TINY, **TINY_DEC, **kw})


def tiny_vit(seed=1, **kw):
    torch.manual_seed(seed)
    return SignalViT(**{**TINY, **kw})


def ecg(leads=12, T=200, batch=2):
    return torch.randn(batch, 1, leads, T, generator=torch.Generator().manual_seed(0))


def mae_tokens(mae, x):
    """The MAE encoder on all patches in order (no masking), before ``norm``."""
    x = mae.patch_embed(x) + mae.pos_embed[:, 1:]
    cls = (mae.cls_token + mae.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in mae.blocks:
        x = blk(x)
    return x


def assert_encoder_equal(model, sd, skip=("pos_embed",)):
    own = model.state_dict()
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias"):
        if key not in skip:
            assert torch.equal(own[key], sd[key]), key


# ---- reference training checkpoint (pickled args) ---------------------------------------------------
@pytest.fixture
def reference_ckpt(tmp_path):
    mae = tiny_mae()
    path = tmp_path / "checkpoint-399.pth"
    torch.save({"model": mae.state_dict(), "optimizer": {}, "epoch": 3, "scaler": {},
                "args": argparse.Namespace(lr=1e-3)}, path)
    return mae, path


def test_reference_checkpoint_refused_without_opt_in(reference_ckpt):
    _, path = reference_ckpt
    with pytest.raises(WeightsError) as err:
        load_pretrained(tiny_vit(global_pool="avg"), path)
    msg = str(err.value)
    assert "pickled Python objects" in msg and "argparse.Namespace" in msg
    assert "execute" in msg and "allow_pickle_weights=true" in msg and "allow_pickle=True" in msg
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("pool", ["avg", "attention_pool", "cls"])
def test_reference_checkpoint_with_opt_in_loads_encoder_exactly(reference_ckpt, pool, caplog):
    mae, path = reference_ckpt
    vit = tiny_vit(global_pool=pool, num_classes=3)
    with caplog.at_level(logging.INFO, logger="models.weights"):
        report = load_pretrained(vit, path, allow_pickle=True)
    assert report.format == "reference"
    assert report.missing_required == []
    assert set(report.ignored) == {k for k in mae.state_dict() if k.startswith(("decoder_", "mask_token"))}
    assert "head.weight" in report.new_layers and "head.bias" in report.new_layers
    if pool == "cls":
        assert report.unexpected == [] and "norm.weight" in report.loaded
    else:
        assert report.unexpected == ["norm.weight", "norm.bias"]
        assert "fc_norm.weight" in report.new_layers
    if pool == "attention_pool":
        assert "attention_pool.in_proj_weight" in report.new_layers
    assert set(report.missing) == set(report.new_layers)
    assert_encoder_equal(vit, mae.state_dict(), skip=())
    x = ecg()
    vit.eval(), mae.eval()
    with torch.no_grad():
        expected = mae_tokens(mae, x)
        if pool == "cls":
            expected = mae.norm(expected)
        assert torch.equal(vit.forward_tokens(x), expected)
    assert any("pickled objects" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert any("loaded" in r.message and r.levelno == logging.INFO for r in caplog.records)


# ---- our format, MMCL ECG, DDP ------------------------------------------------------------------------
def test_our_checkpoint_loads_weights_only(tmp_path):
    mae = tiny_mae()
    path = tmp_path / "last.pt"
    torch.save({"model": mae.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "scaler": {},
                "epoch": 4, "step": 10, "config": "model:\n  size: tiny\n", "format_version": 1}, path)
    sd, fmt = read_state_dict(path)
    assert fmt == "ours" and set(sd) == set(mae.state_dict())
    vit = tiny_vit()  # global_pool None: has norm
    report = load_pretrained(vit, path)
    assert report.missing == [] and report.unexpected == [] and len(report.ignored) == len(sd) - len(report.loaded)
    assert_encoder_equal(vit, mae.state_dict(), skip=())


def test_mmcl_ecg_and_ddp_state_dicts(tmp_path):
    mae = tiny_mae()
    enc = mae.encoder_state_dict()
    torch.save({"model": enc}, tmp_path / "ecg.pth")
    torch.save({"module." + k: v for k, v in mae.state_dict().items()}, tmp_path / "ddp.pth")
    torch.save({"state_dict": {"encoder_ecg." + k: v for k, v in enc.items()}, "epoch": 1}, tmp_path / "mm.ckpt")

    vit = tiny_vit(global_pool="attention_pool", num_classes=2)
    report = load_pretrained(vit, tmp_path / "ecg.pth")
    assert report.format == "mmcl_ecg" and report.missing_required == [] and report.ignored == []
    assert_encoder_equal(vit, enc, skip=())

    vit = tiny_vit(global_pool="avg")
    report = load_pretrained(vit, tmp_path / "ddp.pth")
    assert report.format == "state_dict" and "module." in report.renamed
    assert report.missing_required == [] and "decoder_embed.weight" in report.ignored
    assert_encoder_equal(vit, enc, skip=())

    vit = tiny_vit(global_pool="cls", num_classes=2)
    report = load_pretrained(vit, tmp_path / "mm.ckpt")
    assert report.format == "mmcl_ecg" and "encoder_ecg." in report.renamed and report.missing_required == []
    assert_encoder_equal(vit, enc, skip=())


def test_mae_extras_ignored_and_mae_into_mae(tmp_path):
    mae = tiny_mae()
    sd = dict(mae.state_dict(), **{"projector.0.weight": torch.zeros(4, 32), "predictor.0.weight": torch.zeros(4, 4)})
    torch.save({"model": sd, "epoch": 1}, tmp_path / "mae.pth")
    report = load_pretrained(tiny_vit(global_pool="avg"), tmp_path / "mae.pth")
    assert {"projector.0.weight", "predictor.0.weight", "mask_token"} <= set(report.ignored)
    other = tiny_mae(seed=5)  # an MAE target keeps its decoder keys
    report = load_pretrained(other, tmp_path / "mae.pth")
    assert report.missing == [] and report.ignored == ["projector.0.weight", "predictor.0.weight"]
    assert torch.equal(other.decoder_pred.weight, mae.decoder_pred.weight)


def test_linear_probe_buffers_are_new_layers(tmp_path):
    mae = tiny_mae()
    torch.save({"model": mae.encoder_state_dict()}, tmp_path / "ecg.pth")
    vit = tiny_vit(global_pool="avg")
    vit.head = nn.Sequential(nn.BatchNorm1d(32, affine=False), nn.Linear(32, 4))
    report = load_pretrained(vit, tmp_path / "ecg.pth")
    assert {"head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight"} <= set(
        report.new_layers)
    assert report.missing_required == []


def test_head_with_other_num_classes_keeps_fresh_init(tmp_path):
    src = tiny_vit(global_pool="avg", num_classes=5, seed=3)
    torch.save({"model": src.state_dict()}, tmp_path / "ft.pth")
    vit = tiny_vit(global_pool="avg", num_classes=3)
    head_before = vit.head.weight.clone()
    report = load_pretrained(vit, tmp_path / "ft.pth")
    assert report.mismatched == [] and {"head.weight", "head.bias"} <= set(report.new_layers)
    assert "fc_norm.weight" in report.loaded and torch.equal(vit.head.weight, head_before)


# ---- MMCL image encoder -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_mmcl_image_encoder_into_torchvision_resnet(tmp_path, arch):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    src = getattr(torchvision.models, arch)(weights=None)
    encoder = nn.Sequential(*list(src.children())[:-1])
    sd = {f"encoder_imaging.{k}": v for k, v in encoder.state_dict().items()}
    sd["projection_head_imaging.0.weight"] = torch.zeros(8, 8)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "img.ckpt")

    torch.manual_seed(1)
    dst = getattr(torchvision.models, arch)(weights=None)
    dst.fc = nn.Identity()
    report = load_pretrained(dst, tmp_path / "img.ckpt")
    assert report.format == "mmcl_image" and "ResNet" in report.renamed
    assert report.missing == [] and report.unexpected == ["projection_head_imaging.0.weight"]
    for key, value in src.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(dst.state_dict()[key], value), key
    # a Sequential(*children[:-1]) target loads by stripping the prefix only
    seq = nn.Sequential(*list(getattr(torchvision.models, arch)(weights=None).children())[:-1])
    report = load_pretrained(seq, tmp_path / "img.ckpt")
    assert report.missing == [] and report.renamed == "stripped 'encoder_imaging.'"


# ---- pos_embed interpolation --------------------------------------------------------------------------
def test_a_sincos_pos_embed_is_rebuilt_for_longer_signals_and_a_learned_one_interpolated(tmp_path):
    mae = tiny_mae()  # 12 x 200, patch 1 x 50 -> grid 12 x 4; its pos_embed is the fixed sin-cos table
    torch.save({"model": mae.state_dict()}, tmp_path / "mae.pth")
    vit = tiny_vit(input_size=(12, 400), global_pool="avg")  # grid 12 x 8
    torch.nn.init.normal_(vit.pos_embed)  # so the load, not the init, has to put the table there
    report = load_pretrained(vit, tmp_path / "mae.pth")
    assert report.interpolated == ["pos_embed"] and "pos_embed" in report.loaded
    assert report.missing_required == [] and report.mismatched == []
    assert any("sin-cos table of the 12x4 token grid, rebuilt for the model's 12x8" in n for n in report.notes)
    # the same time positions keep the same embedding; interpolating would have stretched them
    assert torch.allclose(vit.pos_embed.data, sincos_pos_embed_2d(vit.embed_dim, (12, 8))[None])
    assert torch.allclose(vit.pos_embed.data[:, 1:].reshape(12, 8, -1)[:, :4], mae.pos_embed.data[:, 1:].reshape(12, 4, -1))
    assert_encoder_equal(vit, mae.state_dict())
    assert vit(ecg(T=400)).shape == (2, 32)

    learned = dict(mae.state_dict())
    learned["pos_embed"] = learned["pos_embed"] + 0.01 * torch.randn_like(learned["pos_embed"])
    torch.save({"model": learned}, tmp_path / "learned.pth")
    report = load_pretrained(vit, tmp_path / "learned.pth")
    assert report.interpolated == ["pos_embed"] and any("12x4 to a 12x8" in n for n in report.notes)
    assert "interpolated 1: pos_embed" in report.summary()
    assert torch.equal(vit.pos_embed.data, resize_pos_embed(learned["pos_embed"], (12, 4), (12, 8)))


def test_pos_embed_interpolated_for_other_lead_count(tmp_path):
    mae = tiny_mae(input_size=(12, 200))  # 12 x 4 = 48 tokens
    state = dict(mae.state_dict())
    state["pos_embed"] = state["pos_embed"] + 0.01 * torch.randn_like(state["pos_embed"])  # a learned table
    torch.save({"model": state}, tmp_path / "mae.pth")
    vit = tiny_vit(input_size=(8, 200), global_pool="avg")  # 8 x 4: 48 % 8 == 0 would guess 8 x 6, so say it
    report = load_pretrained(vit, tmp_path / "mae.pth", checkpoint_grid=(12, 4))
    assert report.interpolated == ["pos_embed"]
    assert torch.equal(vit.pos_embed.data, resize_pos_embed(state["pos_embed"], (12, 4), (8, 4)))
    vit = tiny_vit(input_size=(5, 200), global_pool="avg")  # 48 % 5 != 0: same columns inferred
    report = load_pretrained(vit, tmp_path / "mae.pth")
    assert torch.equal(vit.pos_embed.data, resize_pos_embed(state["pos_embed"], (12, 4), (5, 4)))


# ---- refusals -----------------------------------------------------------------------------------------
def test_unreadable_files(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": tiny_mae().state_dict()}, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.pth").write_bytes(random.Random(0).randbytes(2000))  # seeded: no flaky opcodes
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("trunc.pth", "random.pth", "text.pth", "empty.pth"):
        with pytest.raises(WeightsError, match="not a PyTorch checkpoint or it is corrupted"):
            load_pretrained(tiny_vit(), tmp_path / name)
    with pytest.raises(WeightsError, match="do not exist"):
        load_pretrained(tiny_vit(), tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="is not a file"):
        load_pretrained(tiny_vit(), tmp_path)
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "nosd.pth")
    with pytest.raises(WeightsError, match="no state dict found"):
        read_state_dict(tmp_path / "nosd.pth")


def test_wrong_size_and_unrelated_weights_refused(tmp_path):
    big = SignalMAE(**{**TINY, **TINY_DEC, "embed_dim": 64})
    torch.save({"model": big.state_dict()}, tmp_path / "big.pth")
    with pytest.raises(WeightsError, match="different shapes") as err:
        load_pretrained(tiny_vit(global_pool="avg"), tmp_path / "big.pth")
    assert "patch_embed.proj.weight: checkpoint (64, 1, 1, 50) vs model (32, 1, 1, 50)" in str(err.value)
    assert "28 tensor(s) have different shapes" in str(err.value) and "(+22 more)" in str(err.value)
    torch.save(nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(WeightsError, match="none of the 2 tensors"):
        load_pretrained(tiny_vit(), tmp_path / "linear.pth", tolerated_missing_fraction=1.0)


def test_missing_fraction_tolerance(tmp_path):
    enc = tiny_mae().encoder_state_dict()
    partial = {k: v for k, v in enc.items() if not k.startswith("blocks.1.")}  # the second block is missing
    torch.save({"model": partial}, tmp_path / "partial.pth")
    vit = tiny_vit()
    n_missing = sum(k.startswith("blocks.1.") for k in vit.state_dict())
    fraction = n_missing / len(vit.state_dict())
    with pytest.raises(WeightsError, match="uninitialised") as err:
        load_pretrained(vit, tmp_path / "partial.pth")
    assert "blocks.1.norm1.weight" in str(err.value)
    report = load_pretrained(vit, tmp_path / "partial.pth", tolerated_missing_fraction=fraction + 0.01)
    assert len(report.missing_required) == n_missing and report.new_layers == []
    report = load_pretrained(tiny_vit(), tmp_path / "partial.pth", expected_missing=["blocks.1"])
    assert report.missing_required == [] and len(report.new_layers) == n_missing
    with pytest.raises(WeightsError, match="must be in"):
        load_pretrained(tiny_vit(), tmp_path / "partial.pth", tolerated_missing_fraction=2)


def test_summary_is_compact():
    report = LoadReport(source="w.pth", format="ours", loaded=["a"], missing=[f"k{i}" for i in range(20)],
                        num_model_keys=21)
    text = report.summary()
    assert "loaded 1/21" in text and "missing 20: k0, k1" in text and "(+12 more)" in text
    assert len(text.splitlines()) == 6 and "interpolated" not in text and "unexpected 0\n" in text
    report.mismatched = [("w", (2,), (3,))]
    assert "mismatched 1: w (2,) vs (3,)" in report.summary()
