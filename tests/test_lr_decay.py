"""util.lr_decay: layer-wise LR decay table, weight-decay exemptions, group coverage, frozen params."""
import pytest
import torch
import torch.nn as nn

from models.classifier import ECGClassifier
from util.lr_decay import layer_id_for_vit, layer_scales, param_groups_lrd
from util.lr_sched import set_lr

# depth 2 -> num_layers 3; 4 leads x 40 samples, patches 1 x 10 -> 16 tokens
TINY = dict(input_size=(4, 40), patch_size=(1, 10), embed_dim=16, depth=2, num_heads=2, num_classes=3)
BLOCK_PARAMS = [
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
]

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on 2 busy cores: intra-op thread hand-offs would dominate (seconds, not ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**kw):
    torch.manual_seed(0)
    return ECGClassifier(**{**TINY, **kw})


def expected_table(global_pool):
    """Parameter name -> (lr_scale, decayed?) for depth 2 and layer_decay 0.5, written out by hand."""
    table = {
        "cls_token": (0.125, False), "pos_embed": (0.125, False),
        "patch_embed.proj.weight": (0.125, True), "patch_embed.proj.bias": (0.125, False),
    }
    for k, scale in ((0, 0.25), (1, 0.5)):
        for p in BLOCK_PARAMS:
            table[f"blocks.{k}.{p}"] = (scale, p.endswith("weight") and "norm" not in p)
    if global_pool == "cls":
        table.update({"norm.weight": (1.0, False), "norm.bias": (1.0, False)})
    else:
        table.update({"fc_norm.weight": (1.0, False), "fc_norm.bias": (1.0, False)})
    if global_pool == "attention_pool":
        table.update({
            "attention_pool.in_proj_weight": (1.0, True), "attention_pool.in_proj_bias": (1.0, False),
            "attention_pool.out_proj.weight": (1.0, True), "attention_pool.out_proj.bias": (1.0, False),
        })
    table.update({"head.weight": (1.0, True), "head.bias": (1.0, False)})
    return table


def group_of(groups):
    """id(param) -> list of the groups holding it."""
    out = {}
    for g in groups:
        for p in g["params"]:
            out.setdefault(id(p), []).append(g)
    return out


@pytest.mark.parametrize("global_pool", ["cls", "avg", "attention_pool"])
def test_layer_scale_and_weight_decay_table(global_pool):
    model = tiny(global_pool=global_pool)
    table = expected_table(global_pool)
    assert layer_scales(model, 0.5) == {name: scale for name, (scale, _) in table.items()}

    groups = param_groups_lrd(model, weight_decay=0.2, layer_decay=0.5)
    where = group_of(groups)
    for name, param in model.named_parameters():
        scale, decayed = table[name]
        assert len(where[id(param)]) == 1, f"{name} in {len(where[id(param)])} groups"
        g = where[id(param)][0]
        assert g["lr_scale"] == scale, name
        assert g["weight_decay"] == (0.2 if decayed else 0.0), name
    # one group per (layer id, decay / no_decay): 4 layer ids x 2
    assert len(groups) == 8
    assert len({(g["lr_scale"], g["weight_decay"]) for g in groups}) == 8
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_params_are_left_out():
    model = tiny(learnable_pos_embed=False)
    groups = param_groups_lrd(model, weight_decay=0.1, layer_decay=0.75)
    ids = set(group_of(groups))
    assert id(model.pos_embed) not in ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert ids == {id(p) for p in trainable} and len(ids) == len(trainable)


def test_linear_probe_only_head_params():
    model = tiny(global_pool="avg", linear_probe=True)
    groups = param_groups_lrd(model, weight_decay=0.1, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    got = sorted(names[id(p)] for g in groups for p in g["params"])
    assert got == ["head.1.bias", "head.1.weight"]
    for g in groups:
        assert g["lr_scale"] == 1.0
        assert g["weight_decay"] == (0.1 if [names[id(p)] for p in g["params"]] == ["head.1.weight"] else 0.0)


def test_custom_no_weight_decay_list_replaces_default():
    model = tiny()
    groups = param_groups_lrd(model, weight_decay=0.3, layer_decay=0.5, no_weight_decay_list=["head.weight"])
    where = group_of(groups)
    assert where[id(model.head.weight)][0]["weight_decay"] == 0.0
    assert where[id(model.cls_token)][0]["weight_decay"] == 0.3  # 3-D and not listed any more
    assert where[id(model.pos_embed)][0]["weight_decay"] == 0.3
    assert where[id(model.patch_embed.proj.bias)][0]["weight_decay"] == 0.0  # biases never decay


def test_layer_decay_one_and_bad_values():
    model = tiny()
    assert set(layer_scales(model, 1.0).values()) == {1.0}
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="layer_decay"):
            param_groups_lrd(model, weight_decay=0.1, layer_decay=bad)


def test_groups_drive_adamw_and_set_lr():
    model = tiny()
    groups = param_groups_lrd(model, weight_decay=0.05, layer_decay=0.5)
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 1e-3)
    assert sorted({g["lr"] for g in opt.param_groups}) == [1e-3 * 0.125, 1e-3 * 0.25, 1e-3 * 0.5, 1e-3]
    model(torch.randn(2, 1, 4, 40)).sum().backward()
    opt.step()


def test_layer_id_fallback_for_models_without_layer_id():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Linear(2, 2)
            self.blocks = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
            self.head = nn.Linear(2, 1)

    assert [layer_id_for_vit(n, 4) for n in ("pos_embed", "patch_embed.w", "blocks.2.x", "head.bias")] == [0, 0, 3, 4]
    scales = layer_scales(Plain(), 0.5)
    assert scales["patch_embed.weight"] == 0.5**4 and scales["blocks.0.bias"] == 0.5**3
    assert scales["blocks.2.weight"] == 0.5 and scales["head.weight"] == 1.0


def test_without_layer_decay_there_are_two_groups_and_no_layer_ids_are_needed():
    model = tiny()
    groups = param_groups_lrd(model, weight_decay=0.15, layer_decay=1.0)
    assert len(groups) == 2
    no_decay, decay = sorted(groups, key=lambda g: g["weight_decay"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.15
    assert no_decay["lr_scale"] == decay["lr_scale"] == 1.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {"cls_token", "pos_embed", "head.bias"} <= {names[id(p)] for p in no_decay["params"]}
    assert "head.weight" in {names[id(p)] for p in decay["params"]}
    plain = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))  # no blocks, no layer_id: fine without decay
    assert [len(g["params"]) for g in param_groups_lrd(plain, weight_decay=0.1, layer_decay=1.0)] == [1, 3]
