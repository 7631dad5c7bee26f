"""models.classifier: pooling, fc_norm once, training-time masking, linear probe, loading MAE encoder
weights, the classification losses, class-weight helpers and mixup. Tiny shapes throughout."""
import logging

import pytest
import torch
import torch.nn.functional as F

from models.classifier import ECGClassifier, blockwise_masking, mixup, random_token_masking
from models.factory import build_network
from models.losses import ClassificationLoss, class_weights_from_labels, pos_weight_from_labels
from models.mae import SignalMAE
from models.vit import VIT_SIZES, random_masking

# 4 leads x 50 samples, patches 1 x 10 -> grid 4 x 5 = 20 tokens
GRID = (4, 5)
SMALL = dict(input_size=(4, 50), patch_size=(1, 10), embed_dim=32, depth=2, num_heads=4, num_classes=3)
POOLS = ["cls", "avg", "attention_pool"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on 2 busy cores: intra-op thread hand-offs would dominate (seconds, not ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(seed=0, **kw):
    torch.manual_seed(seed)
    return ECGClassifier(**{**SMALL, "drop_path_rate": 0.0, **kw})


def ecg(batch=4, seed=0):
    return torch.randn(batch, 1, 4, 50, generator=torch.Generator().manual_seed(seed))


def randomise_norms(model):
    """Non-trivial LayerNorm affine parameters, so that applying a norm twice would change the result."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name.endswith("weight") else 0.0))


# ---- shapes and pooling --------------------------------------------------------------------------------
@pytest.mark.parametrize("global_pool", POOLS)
def test_output_shapes(global_pool):
    model = small(global_pool=global_pool, mask_ratio=0.5, mask_c_ratio=0.25, mask_t_ratio=0.2)
    x = ecg()
    for train in (True, False):
        model.train(train)
        assert model(x).shape == (4, 3)
        assert model.forward_features(x).shape == (4, 32)
    assert model(x[:, 0]).shape == (4, 3)  # (B, leads, T) accepted
    assert model.last_attention(x).shape == (4, 4, 21, 21)
    keys = set(model.state_dict())
    assert ("norm.weight" in keys) == (global_pool == "cls")
    assert ("fc_norm.weight" in keys) == (global_pool != "cls")
    assert ("attention_pool.in_proj_weight" in keys) == (global_pool == "attention_pool")


@pytest.mark.parametrize("global_pool", POOLS)
def test_fc_norm_applied_once(global_pool):
    model = small(global_pool=global_pool).eval()
    randomise_norms(model)
    x = ecg()
    with torch.no_grad():
        t = model.patch_embed(x) + model.pos_embed[:, 1:]
        t = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(4, -1, -1), t], dim=1)
        for blk in model.blocks:
            t = blk(t)
        if global_pool == "cls":
            feats = F.layer_norm(t, (32,), model.norm.weight, model.norm.bias, 1e-6)[:, 0]
            twice = None
        else:
            patches = t[:, 1:]
            if global_pool == "avg":
                pooled = patches.mean(dim=1)
            else:
                pooled, _ = F.multi_head_attention_forward(
                    patches.mean(dim=1, keepdim=True).transpose(0, 1), patches.transpose(0, 1),
                    patches.transpose(0, 1), 32, 4, model.attention_pool.in_proj_weight,
                    model.attention_pool.in_proj_bias, None, None, False, 0.0,
                    model.attention_pool.out_proj.weight, model.attention_pool.out_proj.bias, training=False,
                    need_weights=False)
                pooled = pooled[0]
            norm = lambda v: F.layer_norm(v, (32,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)  # noqa: E731
            feats, twice = norm(pooled), norm(norm(pooled))
        logits = F.linear(feats, model.head.weight, model.head.bias)
        torch.testing.assert_close(model.forward_features(x), feats, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-5)
        if twice is not None:  # the reference's double fc_norm gives something else
            assert not torch.allclose(model.forward_features(x), twice, atol=1e-3)


def test_drop_path_linear_and_head_init():
    torch.manual_seed(0)
    model = ECGClassifier(**{**SMALL, "depth": 3, "embed_dim": 256, "num_heads": 4}, drop_path_rate=0.2)
    assert [float(getattr(b.drop_path, "p", 0.0)) for b in model.blocks] == pytest.approx([0.0, 0.1, 0.2])
    w = model.head.weight
    assert w.abs().max() <= 0.06 and 0.007 < w.std() < 0.013 and model.head.bias.abs().max() == 0
    assert model.head.weight.shape == (3, 256)


def test_gradients_reach_every_trainable_parameter():
    model = small(global_pool="attention_pool").train()
    model(ecg()).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- masking -------------------------------------------------------------------------------------------
def test_masking_only_in_training():
    plain = small(global_pool="avg")
    masked = small(global_pool="avg", mask_ratio=0.5, mask_c_ratio=0.25, mask_t_ratio=0.4)
    masked.load_state_dict(plain.state_dict())
    x = ecg()
    plain.eval(), masked.eval()
    with torch.no_grad():
        ref = plain(x)
        assert torch.equal(masked(x), ref) and torch.equal(masked(x), masked(x))
        masked.train()
        assert masked.masking_active
        a = masked(x, generator=torch.Generator().manual_seed(3))
        b = masked(x, generator=torch.Generator().manual_seed(3))
        c = masked(x, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and not torch.allclose(a, c) and not torch.allclose(a, ref)
        # ratio 0: no masking and no shuffling, training output = eval output (drop path 0)
        plain.train()
        assert not plain.masking_active
        torch.testing.assert_close(plain(x), ref, rtol=0, atol=0)
        masked.eval()
        assert torch.equal(masked(x), ref)


def token_count_seen_by_blocks(model, x):
    seen = []
    handle = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("c,t,r,tokens", [(0.5, 0.0, 0.0, 10), (0.0, 0.4, 0.0, 12), (0.25, 0.4, 0.0, 9),
                                          (0.25, 0.4, 0.5, 4), (0.0, 0.0, 0.5, 10)])
def test_number_of_tokens_reaching_the_blocks(c, t, r, tokens):
    model = small(mask_c_ratio=c, mask_t_ratio=t, mask_ratio=r).train()
    assert token_count_seen_by_blocks(model, ecg()) == (4, 1 + tokens, 32)
    model.eval()
    assert token_count_seen_by_blocks(model, ecg()) == (4, 21, 32)


def test_blockwise_masking_drops_whole_rows_and_columns():
    B, (R, C) = 64, GRID
    ids = torch.arange(R * C, dtype=torch.float32)
    x = torch.stack([ids, -ids], dim=-1).expand(B, -1, -1).contiguous()  # (B, 20, 2): token id in channel 0
    kept, rows, cols = blockwise_masking(x, GRID, 0.5, 0.4, torch.Generator().manual_seed(0))
    assert kept.shape == (B, 2 * 3, 2) and rows.shape == (B, 2) and cols.shape == (B, 3)
    expected = (rows[:, :, None] * C + cols[:, None, :]).reshape(B, -1).float()  # lead-major over kept cells
    assert torch.equal(kept[..., 0], expected) and torch.equal(kept[..., 1], -expected)
    assert (rows.diff(dim=1) > 0).all() and (cols.diff(dim=1) > 0).all()
    # independent per sample: different samples keep different leads / columns
    assert len({tuple(r) for r in rows.tolist()}) > 1 and len({tuple(c) for c in cols.tolist()}) > 1
    # deterministic given the generator; ratio 0 keeps everything
    again = blockwise_masking(x, GRID, 0.5, 0.4, torch.Generator().manual_seed(0))[0]
    assert torch.equal(kept, again)
    assert torch.equal(blockwise_masking(x, GRID, 0.0, 0.0)[0], x)


def test_random_token_masking_keeps_the_mae_tokens_in_order():
    x = torch.randn(5, 20, 3)
    kept, mask = random_token_masking(x, 0.6, torch.Generator().manual_seed(7))
    ref_kept, ref_mask, _ = random_masking(x, 0.6, torch.Generator().manual_seed(7))
    assert torch.equal(mask, ref_mask) and kept.shape == ref_kept.shape == (5, 8, 3)
    for b in range(5):
        idx = torch.nonzero(mask[b] == 0).flatten()  # ascending
        assert torch.equal(kept[b], x[b, idx])
    same, m0 = random_token_masking(x, 0.0)
    assert same is x and m0.sum() == 0


def test_bad_mask_ratios():
    for kw in (dict(mask_ratio=1.0), dict(mask_c_ratio=-0.1), dict(mask_t_ratio=1.5), dict(mask_c_ratio=0.9)):
        with pytest.raises(ValueError):
            small(**kw)


# ---- linear probe ----------------------------------------------------------------------------------------
def test_linear_probe_freezes_encoder():
    model = small(global_pool="avg", linear_probe=True, drop_path_rate=0.5, mask_ratio=0.5)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.1.weight", "head.1.bias"]
    assert [k for k in model.state_dict() if k.startswith("head")] == [
        "head.0.running_mean", "head.0.running_var", "head.0.num_batches_tracked", "head.1.weight", "head.1.bias"]
    assert isinstance(model.head[0], torch.nn.BatchNorm1d) and not model.head[0].affine
    assert model.head[0].eps == 1e-6
    model.train()
    assert model.training and model.head.training and model.head[0].training
    for name, module in model.named_modules():
        if name and not name.startswith("head"):
            assert not module.training, name
    assert not model.masking_active
    x = ecg()
    f1, f2 = model.forward_features(x), model.forward_features(x)  # no drop path, no masking
    assert torch.equal(f1, f2) and not f1.requires_grad
    model(x).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("head."))
    assert model.head[1].weight.grad is not None
    assert model.head[0].num_batches_tracked == 1  # BN statistics update in training
    model.eval()
    assert not model.head.training
    assert torch.equal(model.forward_features(x), f1)


def test_linear_probe_attention_pool_warns():
    with pytest.warns(UserWarning, match="attention_pool"):
        small(global_pool="attention_pool", linear_probe=True)


# ---- head_norm -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("global_pool", ["avg", "attention_pool"])
def test_batch_head_norm_shows_the_head_what_varies_between_samples_under_a_shared_offset(global_pool):
    """An MAE's block outputs carry a component every sample shares, tens of times larger than what
    differs between them. The reference's per-sample LayerNorm passes it on and leaves the head a
    nearly constant input; head_norm='batch' standardises each feature over the batch."""
    x = ecg(batch=16)
    spread = {}
    for head_norm in ("layer", "batch"):
        model = small(global_pool=global_pool, head_norm=head_norm).train()
        with torch.no_grad():
            model.blocks[-1].mlp.fc2.bias.add_(torch.linspace(-30.0, 30.0, 32))  # the shared component
            spread[head_norm] = model.forward_features(x).std(dim=0).mean().item()
    assert isinstance(small(global_pool=global_pool, head_norm="batch").fc_norm, torch.nn.BatchNorm1d)
    assert spread["batch"] > 0.9
    assert spread["layer"] < 0.2


def test_batch_head_norm_loads_an_mae_encoder_and_is_refused_with_cls_pooling():
    torch.manual_seed(0)
    mae = SignalMAE(input_size=(4, 50), patch_size=(1, 10), embed_dim=32, depth=2, num_heads=4,
                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    model = small(seed=1, global_pool="avg", head_norm="batch")
    msg = model.load_state_dict(mae.encoder_state_dict(), strict=False)
    assert set(msg.missing_keys) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias",
                                     "fc_norm.running_mean", "fc_norm.running_var"}
    with pytest.raises(ValueError, match="only global_pool 'avg' and 'attention_pool'"):
        small(global_pool="cls", head_norm="batch")
    # a linear probe's head starts with the BatchNorm: the pooled features go straight to it
    probe = small(global_pool="avg", head_norm="batch", linear_probe=True)
    assert isinstance(probe.fc_norm, torch.nn.Identity) and isinstance(probe.head[0], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="head_norm"):
        small(global_pool="avg", head_norm="group")


# ---- loading MAE encoder weights -------------------------------------------------------------------------
@pytest.mark.parametrize("global_pool", POOLS)
@pytest.mark.parametrize("linear_probe", [False, True])
def test_mae_encoder_loads(global_pool, linear_probe):
    torch.manual_seed(0)
    mae = SignalMAE(input_size=(4, 50), patch_size=(1, 10), embed_dim=32, depth=2, num_heads=4,
                    decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
    enc = mae.encoder_state_dict()
    if linear_probe and global_pool == "attention_pool":
        with pytest.warns(UserWarning):
            model = small(seed=1, global_pool=global_pool, linear_probe=True)
    else:
        model = small(seed=1, global_pool=global_pool, linear_probe=linear_probe)
    msg = model.load_state_dict(enc, strict=False)
    # (BatchNorm fills a missing num_batches_tracked itself and does not report it)
    head = ({"head.0.running_mean", "head.0.running_var", "head.1.weight", "head.1.bias"}
            if linear_probe else {"head.weight", "head.bias"})
    missing = set(head)
    if global_pool != "cls":
        missing |= {"fc_norm.weight", "fc_norm.bias"}
    if global_pool == "attention_pool":
        missing |= {"attention_pool.in_proj_weight", "attention_pool.in_proj_bias",
                    "attention_pool.out_proj.weight", "attention_pool.out_proj.bias"}
    assert set(msg.missing_keys) == missing
    assert set(msg.unexpected_keys) == (set() if global_pool == "cls" else {"norm.weight", "norm.bias"})
    state = model.state_dict()
    for k, v in enc.items():
        if k in state:
            assert torch.equal(state[k], v), k
    # the encoder trains after loading (pos embed learnable when fine-tuning, frozen in the MAE)
    assert model.pos_embed.requires_grad == (not linear_probe)


# ---- building ------------------------------------------------------------------------------------------
def build_classifier(size, **kw):
    return build_network("signal_vit", "classifier", size, **kw)


def test_build_classifier():
    model = build_classifier("pluto", input_size=[4, 50], patch_size=[1, 10], num_classes=2, global_pool="avg")
    assert model.patch_embed.input_size == (4, 50) and model.patch_embed.patch_size == (1, 10)
    assert model.embed_dim == VIT_SIZES["pluto"]["embed_dim"] and len(model.blocks) == VIT_SIZES["pluto"]["depth"]
    assert build_classifier("tiny", input_size=[4, 50], patch_size=[1, 10], depth=1).blocks.__len__() == 1
    assert build_classifier("tiny", input_size=(4, 50), patch_size=(1, 10)).embed_dim == 384
    with pytest.raises(ValueError, match="pluto, tiny, small"):
        build_classifier("huge")
    with pytest.raises(ValueError, match="task_type"):
        build_classifier("pluto", input_size=[4, 50], patch_size=[1, 10], task_type="multiclass")
    with pytest.raises(ValueError, match="global_pool"):
        small(global_pool=None)


# ---- losses --------------------------------------------------------------------------------------------
def test_multiclass_loss_matches_torch():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 1, 1])
    w = torch.tensor([1.0, 0.5, 2.0, 1.5])
    loss = ClassificationLoss("multiclass", label_smoothing=0.1, class_weights=w, num_classes=4)
    torch.testing.assert_close(loss(logits, y), F.cross_entropy(logits, y, weight=w, label_smoothing=0.1))
    torch.testing.assert_close(loss(logits, y[:, None]), F.cross_entropy(logits, y, weight=w, label_smoothing=0.1))
    torch.testing.assert_close(loss(logits, F.one_hot(y, 4)), F.cross_entropy(logits, y, weight=w, label_smoothing=0.1))
    torch.testing.assert_close(loss(logits, F.one_hot(y, 4).bool()), loss(logits, y))
    soft = torch.softmax(torch.randn(6, 4, generator=g), dim=1)
    torch.testing.assert_close(loss(logits, soft), F.cross_entropy(logits, soft, weight=w, label_smoothing=0.1))
    # one-hot probabilities with smoothing = timm's smoothed one-hot targets without smoothing
    onehot = F.one_hot(y, 4).float()
    timm_targets = onehot * (1 - 0.1) + 0.1 / 4
    plain = ClassificationLoss("multiclass")
    torch.testing.assert_close(ClassificationLoss("multiclass", label_smoothing=0.1)(logits, onehot),
                               plain(logits, timm_targets))
    # float32 result from low-precision logits
    out = plain(logits.bfloat16(), y)
    assert out.dtype == torch.float32 and out.dim() == 0
    with pytest.raises(ValueError, match="num_classes"):
        loss(torch.randn(6, 3), y)


def test_multilabel_binary_regression_losses_match_torch():
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(5, 3, generator=g), (torch.rand(5, 3, generator=g) > 0.5).float()
    pw = torch.tensor([2.0, 0.5, 3.0])
    torch.testing.assert_close(ClassificationLoss("multilabel", pos_weight=pw, num_classes=3)(logits, y),
                               F.binary_cross_entropy_with_logits(logits, y, pos_weight=pw))
    torch.testing.assert_close(ClassificationLoss("multilabel")(logits, y.long()),
                               F.binary_cross_entropy_with_logits(logits, y))
    one, yb = logits[:, :1], y[:, 0]
    expected = F.binary_cross_entropy_with_logits(one[:, 0], yb, pos_weight=torch.tensor([4.0]))
    binary = ClassificationLoss("binary", pos_weight=[4.0])
    for lg, tg in ((one, yb), (one, yb[:, None]), (one[:, 0], yb.long())):
        torch.testing.assert_close(binary(lg, tg), expected)
    with pytest.raises(ValueError, match="one logit"):
        binary(logits, yb)
    reg_t = torch.randn(5, 3, generator=g)
    torch.testing.assert_close(ClassificationLoss("regression")(logits, reg_t), F.mse_loss(logits, reg_t))
    torch.testing.assert_close(ClassificationLoss("regression")(one, reg_t[:, 0]), F.mse_loss(one[:, 0], reg_t[:, 0]))


def test_loss_argument_checks(caplog):
    with pytest.raises(ValueError, match="task_type"):
        ClassificationLoss("ordinal")
    with pytest.raises(ValueError, match="multiclass only"):
        ClassificationLoss("multilabel", class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="pos_weight"):
        ClassificationLoss("multiclass", pos_weight=[1.0])
    with pytest.raises(ValueError, match="expected 3"):
        ClassificationLoss("multilabel", pos_weight=[1.0, 2.0], num_classes=3)
    with caplog.at_level(logging.WARNING):
        loss = ClassificationLoss("multilabel", label_smoothing=0.1)
    assert loss.label_smoothing == 0.0 and "ignored" in caplog.text


def test_pos_weight_from_labels(caplog):
    labels = torch.zeros(10, 4)
    labels[:2, 0] = 1  # 2 pos / 8 neg -> 4
    labels[:, 1] = 1  # no negatives -> 1.0
    labels[:5, 2] = 1  # 5 / 5 -> 1
    # column 3: no positives -> 1.0
    with caplog.at_level(logging.WARNING):
        pw = pos_weight_from_labels(labels)
    assert pw.dtype == torch.float32
    assert pw.tolist() == [4.0, 1.0, 1.0, 1.0] and "[1, 3]" in caplog.text
    many = torch.zeros(1000, 2)
    many[:1, 0] = 1  # 999 -> clipped to 100
    many[:, 1] = 1
    many[:999, 1] = 1
    many[999, 1] = 0  # 1 neg / 999 pos -> clipped to 1/100
    assert pos_weight_from_labels(many).tolist() == pytest.approx([100.0, 0.01])
    assert pos_weight_from_labels(torch.tensor([1, 0, 0, 0])).tolist() == [3.0]


def test_class_weights_from_labels(caplog):
    y = torch.tensor([0, 1, 1, 2, 2, 2, 2])  # counts 1, 2, 4, 0
    with caplog.at_level(logging.WARNING):
        w = class_weights_from_labels(y, 4)
    inv = torch.tensor([1.0, 0.5, 0.25])
    torch.testing.assert_close(w[:3], inv / inv.mean())
    assert w[:3].mean().item() == pytest.approx(1.0) and w[3] == 1.0 and "[3]" in caplog.text
    torch.testing.assert_close(class_weights_from_labels(F.one_hot(y, 4), 4), w)
    assert class_weights_from_labels(torch.tensor([0, 1, 0, 1]), 2).tolist() == [1.0, 1.0]


# ---- mixup ---------------------------------------------------------------------------------------------
def test_mixup_multiclass_mass_and_determinism():
    x, y = ecg(batch=8), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    xm, ym = mixup(x, y, 0.4, torch.Generator().manual_seed(0), "multiclass", 3)
    xm2, ym2 = mixup(x, y, 0.4, torch.Generator().manual_seed(0), "multiclass", 3)
    xm3, _ = mixup(x, y, 0.4, torch.Generator().manual_seed(1), "multiclass", 3)
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2) and not torch.equal(xm, xm3)
    assert ym.shape == (8, 3) and ym.dtype == torch.float32
    torch.testing.assert_close(ym.sum(dim=1), torch.ones(8))  # each row a distribution
    torch.testing.assert_close(ym.sum(dim=0), F.one_hot(y, 3).float().sum(dim=0))  # batch mass kept
    _, ym_onehot = mixup(x, F.one_hot(y, 3), 0.4, torch.Generator().manual_seed(0), "multiclass")
    assert torch.equal(ym_onehot, ym)
    torch.testing.assert_close(xm.sum(dim=0), x.sum(dim=0), rtol=1e-5, atol=1e-5)
    loss = ClassificationLoss("multiclass", label_smoothing=0.1)(torch.randn(8, 3), ym)
    assert torch.isfinite(loss)


def test_mixup_x_and_y_use_the_same_pairing():
    B = 6
    x = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 1, 2, 3).contiguous()
    y = torch.eye(B)  # sample i has its own label
    xm, ym = mixup(x, y, 1.0, torch.Generator().manual_seed(5), "multilabel")
    for i in range(B):  # ym[i] = the weight of each source sample in mixed sample i: x must match
        torch.testing.assert_close(xm[i].flatten(), (ym[i] * torch.arange(B)).sum().expand(6))
    lams = ym.max(dim=1).values  # lam or 1 - lam (or 1 where a sample is its own partner)
    assert ((lams >= 0.5) & (lams <= 1.0)).all()
    torch.testing.assert_close(ym.sum(dim=1), torch.ones(B))
    torch.testing.assert_close(ym.sum(dim=0), y.sum(dim=0))


def test_mixup_regression_and_errors():
    x, y = ecg(batch=5), torch.randn(5, 2)
    xm, ym = mixup(x, y, 0.2, torch.Generator().manual_seed(0), "regression")
    torch.testing.assert_close(ym.sum(dim=0), y.sum(dim=0))
    with pytest.raises(ValueError, match="num_classes"):
        mixup(x, torch.tensor([0, 1, 0, 1, 0]), 0.2, None, "multiclass")
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, y, 0.0, None, "regression")
