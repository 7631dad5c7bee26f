"""models.vit / models.mae: reference checkpoint keys, pos-embed math, masking, patches, the loss,
attention, pooling, gradients and determinism. Tiny shapes except for the checkpoint-key test."""
import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from models.factory import build_network
from models.losses import masked_normalized_cross_correlation, normalized_cross_correlation
from models.mae import SignalMAE, patchify, unpatchify
from models.pos_embed import resize_pos_embed, sincos_pos_embed_2d
from models.vit import VIT_SIZES, Attention, SignalViT, random_masking

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a small model: 4 leads x 40 samples, patches 1 x 10 -> grid 4 x 4 = 16 tokens
SMALL = dict(input_size=(4, 40), patch_size=(1, 10), embed_dim=32, depth=2, num_heads=4)
SMALL_DEC = dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)


def build_mae(size, **kw):
    return build_network("signal_vit", "mae", size, **kw)


def build_vit(size, **kw):
    return build_network("signal_vit", "encoder", size, **kw)


def small_mae(**kw):
    torch.manual_seed(0)
    return SignalMAE(**{**SMALL, **SMALL_DEC, **kw})


def ecg(batch=3, leads=4, T=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, leads, T, generator=g)


# ---- checkpoint compatibility -----------------------------------------------------------------------
def reference_mae_tiny_shapes():
    """oetu/mae mae_vit_tiny_patchX (img_size (1, 12, 2500), patch (1, 100)) state-dict key -> shape,
    written from the reference's facts, independently of our modules."""
    D, Dd, L, P = 384, 256, 12 * 25, 1 * 100 * 1

    def block(prefix, d):
        return {
            f"{prefix}.norm1.weight": (d,), f"{prefix}.norm1.bias": (d,),
            f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
            f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
            f"{prefix}.norm2.weight": (d,), f"{prefix}.norm2.bias": (d,),
            f"{prefix}.mlp.fc1.weight": (4 * d, d), f"{prefix}.mlp.fc1.bias": (4 * d,),
            f"{prefix}.mlp.fc2.weight": (d, 4 * d), f"{prefix}.mlp.fc2.bias": (d,),
        }

    shapes = {
        "cls_token": (1, 1, D), "pos_embed": (1, L + 1, D),
        "patch_embed.proj.weight": (D, 1, 1, 100), "patch_embed.proj.bias": (D,),
        "norm.weight": (D,), "norm.bias": (D,),
        "mask_token": (1, 1, Dd), "decoder_pos_embed": (1, L + 1, Dd),
        "decoder_embed.weight": (Dd, D), "decoder_embed.bias": (Dd,),
        "decoder_norm.weight": (Dd,), "decoder_norm.bias": (Dd,),
        "decoder_pred.weight": (P, Dd), "decoder_pred.bias": (P,),
    }
    for i in range(3):
        shapes.update(block(f"blocks.{i}", D))
    for i in range(2):
        shapes.update(block(f"decoder_blocks.{i}", Dd))
    return shapes


def test_reference_mae_checkpoint_loads_strictly():
    shapes = reference_mae_tiny_shapes()
    g = torch.Generator().manual_seed(0)
    fake = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    model = build_mae("tiny", input_size=(12, 2500), patch_size=(1, 100))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    model.load_state_dict(fake, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fake[k]), k
    # the frozen pos embeds are state (loaded from checkpoints) but not trained
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    # the encoder part loads strictly into the ViT (no pooling, or cls pooling without head)
    enc = model.encoder_state_dict()
    assert set(enc) == {k for k in shapes if not k.startswith(("decoder_", "mask_token"))}
    for pool in (None, "cls"):
        build_vit("tiny", global_pool=pool).load_state_dict(enc, strict=True)


def test_vit_classifier_keys_per_pooling():
    expected_extra = {
        "cls": {"norm.weight", "norm.bias", "head.weight", "head.bias"},
        "avg": {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"},
        "attention_pool": {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias",
                           "attention_pool.in_proj_weight", "attention_pool.in_proj_bias",
                           "attention_pool.out_proj.weight", "attention_pool.out_proj.bias"},
    }
    for pool, extra in expected_extra.items():
        m = SignalViT(**SMALL, global_pool=pool, num_classes=5)
        keys = {k for k in m.state_dict() if not k.startswith(("blocks.", "patch_embed.", "cls_token", "pos_embed"))}
        assert keys == extra, pool
        assert m.state_dict()["head.weight"].shape == (5, 32)
    m = SignalViT(**SMALL, global_pool="attention_pool", num_classes=5)
    assert m.state_dict()["attention_pool.in_proj_weight"].shape == (96, 32)


def test_sizes_match_reference():
    assert {k: (v["embed_dim"], v["depth"], v["num_heads"]) for k, v in VIT_SIZES.items()} == {
        "pluto": (256, 2, 8), "tiny": (384, 3, 6), "small": (512, 4, 8), "medium": (640, 5, 10),
        "large": (864, 6, 12), "base": (768, 12, 12)}
    dec = {k: (v["decoder_embed_dim"], v["decoder_depth"], v["decoder_num_heads"]) for k, v in VIT_SIZES.items()}
    assert dec == {"pluto": (160, 1, 8), "tiny": (256, 2, 8), "small": (256, 2, 8), "medium": (256, 2, 8),
                   "large": (256, 2, 8), "base": (512, 8, 16)}
    with pytest.raises(ValueError, match="pluto, tiny, small, medium, large, base"):
        build_mae("huge")
    with pytest.raises(ValueError, match="valid sizes"):
        build_vit("tinyDeep")
    # config-style construction: lists from YAML
    m = build_mae("tiny", input_size=[4, 40], patch_size=[1, 10], embed_dim=32, num_heads=4, decoder_embed_dim=16)
    assert m.patch_embed.grid_size == (4, 4) and m.patch_embed.patch_size == (1, 10)


# ---- positional embedding ---------------------------------------------------------------------------
def formula_pos_embed(D, rows, cols):
    """REFERENCE.md: dims [0:D/2] encode the column (time) index, [D/2:D] the row (lead) index; each half
    [sin(pos*w), cos(pos*w)], w_i = 10000^(-i/(D/4)); zero row for cls; tokens lead-major."""
    out = np.zeros((1 + rows * cols, D))
    q = D // 4
    for r in range(rows):
        for c in range(cols):
            row = out[1 + r * cols + c]
            for i in range(q):
                w = 10000.0 ** (-i / q)
                row[i], row[q + i] = math.sin(c * w), math.cos(c * w)
                row[2 * q + i], row[3 * q + i] = math.sin(r * w), math.cos(r * w)
    return torch.tensor(out, dtype=torch.float32)


def test_pos_embed_formula_and_orientation():
    expected = formula_pos_embed(32, 3, 5)
    got = sincos_pos_embed_2d(32, (3, 5), cls_token=True)
    assert got.shape == (16, 32) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.all(got[0] == 0)
    # moving one step in time (token 1 -> 2) changes only the first half; one lead down only the second
    assert torch.equal(got[1, 16:], got[2, 16:]) and not torch.equal(got[1, :16], got[2, :16])
    assert torch.equal(got[1, :16], got[1 + 5, :16]) and not torch.equal(got[1, 16:], got[1 + 5, 16:])
    assert sincos_pos_embed_2d(32, (3, 5), cls_token=False).shape == (15, 32)

    mae = small_mae()
    torch.testing.assert_close(mae.pos_embed[0], formula_pos_embed(32, 4, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(mae.decoder_pos_embed[0], formula_pos_embed(16, 4, 4), atol=1e-6, rtol=0)
    vit = SignalViT(**SMALL)
    torch.testing.assert_close(vit.pos_embed[0], formula_pos_embed(32, 4, 4), atol=1e-6, rtol=0)
    assert vit.pos_embed.requires_grad and not SignalViT(**SMALL, learnable_pos_embed=False).pos_embed.requires_grad
    # the paper's grid: 12 leads x 25 time patches
    torch.testing.assert_close(sincos_pos_embed_2d(384, (12, 25)), formula_pos_embed(384, 12, 25), atol=1e-5, rtol=0)


def test_resize_pos_embed():
    pe = sincos_pos_embed_2d(32, (4, 5))[None]
    assert resize_pos_embed(pe, (4, 5), (4, 5)) is pe
    out = resize_pos_embed(pe, (4, 5), (4, 10))
    assert out.shape == (1, 41, 32) and torch.equal(out[:, 0], pe[:, 0])
    with pytest.raises(ValueError):
        resize_pos_embed(pe, (4, 4), (4, 10))


# ---- masking, patches -------------------------------------------------------------------------------
def test_random_masking_count_per_sample_and_restore():
    B, L, D = 6, 300, 8
    x = torch.arange(B * L * D, dtype=torch.float32).reshape(B, L, D)
    kept, mask, ids_restore = random_masking(x, 0.8, torch.Generator().manual_seed(0))
    n_keep = int(L * (1 - 0.8))
    assert n_keep == 59  # the reference's int(L * (1 - r)) with floating point: 59, not 60
    assert kept.shape == (B, n_keep, D) and mask.shape == (B, L) and mask.dtype == torch.float32
    assert torch.all(mask.sum(1) == L - n_keep)
    assert len({tuple(m.tolist()) for m in mask}) == B  # per-sample masks differ
    for b in range(B):
        visible = x[b][mask[b] == 0]  # kept tokens are exactly the unmasked ones
        assert torch.equal(kept[b].sort(0).values, visible.sort(0).values)
        assert sorted(ids_restore[b].tolist()) == list(range(L))
    assert random_masking(x, 0.0)[0].shape == (B, L, D)


def test_patchify_order_and_round_trip():
    x = torch.randn(2, 3, 4, 40)  # C = 3 channels to check the (p, q, C) order
    p = patchify(x, (2, 10))
    assert p.shape == (2, 2 * 4, 2 * 10 * 3)
    # token (row 1, col 2) = leads 2..3, samples 20..29, flattened (p, q, C)
    torch.testing.assert_close(p[:, 1 * 4 + 2], x[:, :, 2:4, 20:30].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(unpatchify(p, (2, 10), (2, 4)), x)
    mae = small_mae()
    y = ecg()
    assert mae.patchify(y).shape == (3, 16, 10)
    assert torch.equal(mae.unpatchify(mae.patchify(y)), y)
    assert torch.equal(mae.patchify(y[:, 0]), mae.patchify(y))  # (B, leads, T) accepted


def test_input_validation():
    with pytest.raises(ValueError, match="not divisible"):
        SignalViT(input_size=(12, 2550), patch_size=(1, 100))
    mae = small_mae()
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 4, 40\)"):
        mae(torch.randn(2, 1, 4, 45))
    with pytest.raises(ValueError, match="expected input"):
        mae(torch.randn(2, 4, 4, 40))
    with pytest.raises(ValueError, match="global_pool"):
        SignalViT(**SMALL, global_pool="max")
    with pytest.raises(ValueError, match="needs global_pool"):
        SignalViT(**SMALL, num_classes=3)
    with pytest.raises(ValueError, match="loss_on"):
        small_mae(loss_on="visible")


# ---- loss ---------------------------------------------------------------------------------------------
def test_ncc_is_pearson_per_lead():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 1, 4, 50, generator=g), torch.randn(3, 1, 4, 50, generator=g)
    b = b + 0.5 * a
    expected = np.mean([np.corrcoef(a[i, 0, j], b[i, 0, j])[0, 1] for i in range(3) for j in range(4)])
    assert normalized_cross_correlation(a, b).item() == pytest.approx(expected, abs=1e-5)
    assert normalized_cross_correlation(a, 3 * a + 1).item() == pytest.approx(1.0, abs=1e-5)
    assert normalized_cross_correlation(a, torch.ones_like(a)).item() == 0.0  # constant: 0, not NaN


def test_masked_ncc_scores_only_the_removed_samples():
    """ncc_masked is Pearson's r over the masked samples of each row: what the visible patches show
    does not count, and a flat guess inside the masked patches scores 0 however good the rest is."""
    mae = small_mae()
    x = ecg()
    target = mae.patchify(x)
    mask = (torch.rand(3, 16, generator=torch.Generator().manual_seed(3)) < 0.6).float()
    mask[0, :] = 0  # sample 0 has nothing masked: its rows do not count
    mask[1, :4] = 1  # sample 1, row 0 fully masked
    keep = mask.unsqueeze(-1)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(4))

    inferred_only = mae.forward_loss(x, target * keep + noise * (1 - keep), mask)
    assert inferred_only["ncc_masked"].item() == pytest.approx(1.0, abs=1e-5)
    assert inferred_only["ncc"].item() < 0.9

    copied_only = mae.forward_loss(x, target * (1 - keep), mask)  # visible exact, masked flat 0
    assert copied_only["ncc_masked"].item() == 0.0
    assert copied_only["ncc"].item() > 0.3

    pred = target + 2 * noise
    mask_signal = mae.unpatchify(mask.unsqueeze(-1).expand_as(target)).bool()
    pred_signal = mae.unpatchify(pred)
    expected = [np.corrcoef(x[b, 0, r][mask_signal[b, 0, r]], pred_signal[b, 0, r][mask_signal[b, 0, r]])[0, 1]
                for b in range(3) for r in range(4) if mask_signal[b, 0, r].sum() >= 2]
    assert mae.forward_loss(x, pred, mask)["ncc_masked"].item() == pytest.approx(np.mean(expected), abs=1e-5)
    assert masked_normalized_cross_correlation(x, pred_signal, torch.zeros_like(x)).item() == 0.0  # not NaN


def test_perfect_reconstruction_and_loss_on():
    mae = small_mae(ncc_weight=0.1)
    x = ecg()
    target = mae.patchify(x)
    mask = torch.zeros(3, 16)
    mask[:, :12] = 1
    out = mae.forward_loss(x, target, mask)
    assert out["loss_mse"].item() == 0.0
    assert out["ncc"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["loss_ncc"].item() == pytest.approx(0.0, abs=1e-5)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-6)

    # error 1.0 on every value of the masked patches, 0 elsewhere
    pred = target + mask.unsqueeze(-1)
    masked = small_mae(loss_on="masked").forward_loss(x, pred, mask)
    every = small_mae(loss_on="all").forward_loss(x, pred, mask)
    assert masked["loss_mse"].item() == pytest.approx(1.0)
    assert every["loss_mse"].item() == pytest.approx(12 / 16)
    ncc = masked["ncc"]
    assert masked["loss"].item() == pytest.approx(0.9 * 1.0 + 0.1 * (1 - ncc.item()), rel=1e-6)
    # no masked patch: masked MSE is 0 (not NaN)
    assert small_mae().forward_loss(x, pred, torch.zeros(3, 16))["loss_mse"].item() == 0.0


def test_norm_pix_loss():
    mae = small_mae(norm_pix_loss=True, loss_on="all")
    x = ecg()
    t = mae.patchify(x)
    normalised = (t - t.mean(-1, keepdim=True)) / (t.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    assert mae.forward_loss(x, normalised, torch.ones(3, 16))["loss_mse"].item() == pytest.approx(0.0, abs=1e-10)
    assert mae.forward_loss(x, t, torch.ones(3, 16))["loss_mse"].item() > 0.1
    # reconstruct maps the normalised prediction back to signal units
    recon, mask_signal = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and mask_signal.shape == x.shape


def test_forward_outputs_and_reconstruct():
    mae = small_mae(mask_ratio=0.75)
    x = ecg()
    out = mae(x, generator=torch.Generator().manual_seed(0))
    for k in ("loss", "loss_mse", "loss_ncc", "ncc", "ncc_masked"):
        assert out[k].dim() == 0 and out[k].dtype == torch.float32 and torch.isfinite(out[k])
    assert out["loss"].requires_grad and not any(out[k].requires_grad for k in ("loss_mse", "loss_ncc", "ncc", "ncc_masked"))
    assert out["pred"].shape == (3, 16, 10) and out["mask"].shape == (3, 16)
    assert torch.all(out["mask"].sum(1) == 12)
    assert out["loss_ncc"].item() == pytest.approx(1 - out["ncc"].item())
    assert out["loss"].item() == pytest.approx(0.9 * out["loss_mse"].item() + 0.1 * out["loss_ncc"].item(), rel=1e-5)
    assert mae(x, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))["mask"].sum(1).tolist() == [8] * 3

    recon, mask_signal = mae.reconstruct(x, generator=torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and mask_signal.shape == x.shape
    torch.testing.assert_close(recon, mae.unpatchify(out["pred"].detach()))
    torch.testing.assert_close(mask_signal, mae.unpatchify(out["mask"].unsqueeze(-1).expand(-1, -1, 10)))
    assert set(mask_signal.unique().tolist()) == {0.0, 1.0}


def test_deterministic_with_generator():
    mae = small_mae()
    x = ecg()
    a = mae(x, generator=torch.Generator().manual_seed(7))
    b = mae(x, generator=torch.Generator().manual_seed(7))
    c = mae(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["pred"], b["pred"])
    assert torch.equal(a["loss"], b["loss"])
    assert not torch.equal(a["mask"], c["mask"])


def test_gradients_reach_encoder_and_decoder_not_frozen_pos_embeds():
    mae = small_mae()
    mae(ecg(), generator=torch.Generator().manual_seed(0))["loss"].backward()
    for name, p in mae.named_parameters():
        if name in ("pos_embed", "decoder_pos_embed"):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight", "cls_token", "mask_token",
                 "decoder_embed.weight", "decoder_blocks.0.mlp.fc2.weight", "decoder_pred.weight"):
        assert dict(mae.named_parameters())[name].grad.abs().sum() > 0, name
    assert mae.no_weight_decay() == {"pos_embed", "decoder_pos_embed"}


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_loss_float32_under_autocast(dtype):
    mae = small_mae()
    with torch.autocast("cpu", dtype=dtype):
        out = mae(ecg() * 1e3, generator=torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_matches_timm_reference_structure():
    """Same weights and masking noise as the reference structure built on timm's Block (bench/mae_step.py)
    give the same loss (the reference computes the MSE over all patches)."""
    spec = importlib.util.spec_from_file_location("bench_mae_step", os.path.join(REPO, "bench", "mae_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ours = small_mae(loss_on="all", ncc_weight=0.1)
    ref = bench.ReferenceMAE(input_size=(4, 40), patch_size=(1, 10), embed_dim=32, depth=2, num_heads=4,
                             **SMALL_DEC, ncc_weight=0.1)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = ecg()
    torch.manual_seed(3)
    a = ours(x, mask_ratio=0.75)["loss"]
    torch.manual_seed(3)
    b = ref(x, mask_ratio=0.75)["loss"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---- attention, ViT ---------------------------------------------------------------------------------
def test_sdpa_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4).eval()
    x = torch.randn(2, 7, 32)
    qkv = (x @ attn.qkv.weight.T + attn.qkv.bias).reshape(2, 7, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), dim=-1)
    expected = (probs @ v).transpose(1, 2).reshape(2, 7, 32) @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.attention_probs(x), probs, atol=1e-6, rtol=1e-5)

    vit = SignalViT(**SMALL, global_pool="cls", num_classes=2)
    maps = vit.last_attention(ecg())
    assert maps.shape == (3, 4, 17, 17)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 4, 17))


def test_pooling_modes_and_fc_norm_applied_once():
    x = ecg()
    for pool in ("cls", "avg", "attention_pool"):
        torch.manual_seed(0)
        vit = SignalViT(**SMALL, global_pool=pool, num_classes=5).eval()
        with torch.no_grad():
            vit.head.bias.normal_()  # make head/fc_norm affine parameters non-trivial
            (vit.norm if pool == "cls" else vit.fc_norm).weight.normal_()
            (vit.norm if pool == "cls" else vit.fc_norm).bias.normal_()
        assert vit(x).shape == (3, 5) and vit.forward_features(x).shape == (3, 32)
        tokens = vit.forward_tokens(x)
        assert tokens.shape == (3, 17, 32)
        # recompute by hand from the blocks' output
        h = vit.embed(x)
        for blk in vit.blocks:
            h = blk(h)
        if pool == "cls":
            expected = vit.norm(h)[:, 0]
        elif pool == "avg":
            expected = vit.fc_norm(h[:, 1:].mean(1))
        else:
            q = h[:, 1:].mean(1, keepdim=True)
            expected = vit.fc_norm(vit.attention_pool(q, h[:, 1:], h[:, 1:])[0][:, 0])
        torch.testing.assert_close(vit.forward_features(x), expected)
        torch.testing.assert_close(vit(x), vit.head(expected))
        if pool != "cls":  # fc_norm twice (the reference's bug) gives something else
            assert not torch.allclose(vit.fc_norm(expected), expected, atol=1e-3)
            calls = []
            handle = vit.fc_norm.register_forward_hook(lambda *a: calls.append(1))
            vit(x)
            handle.remove()
            assert len(calls) == 1
    features = SignalViT(**SMALL)(x)
    assert features.shape == (3, 17, 32)  # no pooling: all tokens


def test_vit_init_drop_path_and_layer_ids():
    torch.manual_seed(0)
    vit = SignalViT(**{**SMALL, "depth": 5}, drop_path_rate=0.2, global_pool="avg", num_classes=3)
    rates = [b.drop_path.p if hasattr(b.drop_path, "p") else 0.0 for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert vit.num_layers() == 6 and vit.no_weight_decay() == {"pos_embed", "cls_token"}
    assert vit.layer_id("cls_token") == 0 and vit.layer_id("patch_embed.proj.weight") == 0
    assert vit.layer_id("blocks.3.mlp.fc1.weight") == 4 and vit.layer_id("head.weight") == 6
    assert vit.layer_id("fc_norm.bias") == 6
    # xavier uniform bound for Linear(32 -> 96): sqrt(6 / (32 + 96)); biases 0; LayerNorm 1 / 0
    w = vit.blocks[0].attn.qkv.weight
    assert w.abs().max() <= math.sqrt(6 / 128) and w.std() > 0.5 * math.sqrt(2 / 128)
    assert torch.all(vit.blocks[0].attn.qkv.bias == 0) and torch.all(vit.blocks[0].norm1.weight == 1)
    pw = vit.patch_embed.proj.weight  # xavier on (D, C*p0*p1) = (32, 10)
    assert pw.abs().max() <= math.sqrt(6 / 42) and torch.all(vit.patch_embed.proj.bias == 0)
    assert abs(vit.cls_token.std().item() - 0.02) < 0.01
    assert abs(vit.head.weight.std().item() - 0.01) < 0.004 and torch.all(vit.head.bias == 0)
    vit.train()
    out = vit(ecg())  # drop path active in training
    assert out.shape == (3, 3)


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu_and_autocast_is_safe(amp):
    mae = small_mae()
    x = ecg() * 50  # large amplitudes: squares overflow fp16 if the loss ran in half precision
    ref = mae(x, generator=torch.Generator().manual_seed(0))
    gpu = small_mae().cuda()
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        out = gpu(x.cuda(), generator=torch.Generator().manual_seed(0))  # a CPU generator seeds CUDA runs
    assert torch.equal(out["mask"].cpu(), ref["mask"])
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    tol = 1e-4 if amp is None else 5e-2
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=tol)
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters() if p.requires_grad)
    recon, mask_signal = gpu.reconstruct(x.cuda(), generator=torch.Generator().manual_seed(0))
    assert recon.is_cuda and mask_signal.shape == x.shape
