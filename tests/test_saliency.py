"""The saliency methods (models/saliency.py): integrated gradients find a localised feature and pass
the deletion test; attention maps stay within their lead and follow the attention; Grad-CAM and the
MMCL similarity maps have the input's shape."""
import torch
import torch.nn as nn

from models import saliency
from models.classifier import ECGClassifier
from models.resnet import ResNetClassifier, ResNetEncoder
from models.vit import SignalViT

LEADS, T = 12, 200


class WindowDetector(nn.Module):
    """A 'classifier' whose class-1 logit is the energy of lead 3 in samples 50..70 (a localised feature)."""

    def forward(self, x):
        window = x[:, 0, 3, 50:70]
        score = (window ** 2).sum(dim=1)
        return torch.stack([-score, score], dim=1)


def test_integrated_gradients_put_the_attribution_on_the_localised_feature_and_pass_the_deletion_test():
    g = torch.Generator().manual_seed(0)
    x = 0.3 * torch.randn(6, 1, LEADS, T, generator=g)
    model = WindowDetector()
    maps = saliency.integrated_gradients(model, x, 1, steps=16)
    assert maps.shape == x.shape
    top = maps.reshape(6, -1).topk(20, dim=1).indices  # the 20 most attributed samples of each ECG
    lead, time = top // T, top % T
    assert (lead == 3).all() and ((time >= 50) & (time < 70)).all()
    result = saliency.deletion_test(lambda v: model(v)[:, 1], x, maps, fraction=0.1, generator=g)
    assert (result["original"] - result["top"] > result["original"] - result["random"]).all()
    assert torch.allclose(result["top"], torch.zeros(6))  # the whole window (20 of 2400 samples) was deleted


def test_the_deletion_test_deletes_exactly_the_top_fraction():
    x = torch.ones(2, 1, 2, 10)
    maps = torch.arange(40.0).reshape(2, 1, 2, 10)
    result = saliency.deletion_test(lambda v: v.reshape(2, -1).sum(dim=1), x, maps, fraction=0.25)
    assert result["original"].tolist() == [20.0, 20.0] and result["top"].tolist() == [15.0, 15.0]
    assert result["random"].tolist() == [15.0, 15.0]


def test_token_maps_go_back_to_time_within_their_own_lead_only():
    grid, patch = (LEADS, 4), (1, 50)
    token_map = torch.zeros(1, LEADS * 4)
    token_map[0, 2 * 4 + 1] = 1.0  # lead 2, second time patch
    signal = saliency.tokens_to_signal(token_map, grid, patch)
    assert signal.shape == (1, 1, LEADS, T)
    per_lead = signal[0, 0].abs().sum(dim=1)
    assert per_lead[2] > 0 and per_lead.sum() == per_lead[2]  # no other lead borrows from lead 2
    assert signal[0, 0, 2].argmax() // 50 == 1  # and the peak stays in its time patch


def _vit(pool):
    torch.manual_seed(0)
    return ECGClassifier(input_size=(LEADS, T), patch_size=(1, 50), embed_dim=32, depth=2, num_heads=4,
                         num_classes=3, global_pool=pool, drop_path_rate=0.0).eval()


def _uniform_attention(vit):
    """Zero the query and key projections: every token attends equally to every token."""
    with torch.no_grad():
        for blk in vit.blocks:
            d = blk.attn.qkv.in_features
            blk.attn.qkv.weight[: 2 * d] = 0
            blk.attn.qkv.bias[: 2 * d] = 0


def test_attention_maps_of_uniform_attention_are_flat_and_follow_a_peaked_attention():
    x = torch.randn(2, 1, LEADS, T)
    for pool in ("cls", "avg", "attention_pool"):
        vit = _vit(pool)
        _uniform_attention(vit)
        for method in (saliency.attention_rollout, saliency.last_block_attention):
            maps = method(vit, x)
            assert maps.shape == x.shape and (maps >= 0).all()
            if pool != "attention_pool":  # the pool's own attention is not uniform
                assert torch.allclose(maps, maps.mean(), rtol=1e-4), (pool, method.__name__)
    # every token of the last block attending to one token (lead 5, time patch 2): the maps peak there
    vit = _vit("cls")
    target = 1 + 5 * 4 + 2  # after the cls token, lead-major

    def one_token(tokens):
        probs = torch.zeros(tokens.shape[0], 4, tokens.shape[1], tokens.shape[1])
        probs[..., target] = 1.0
        return probs

    vit.blocks[-1].attn.attention_probs = one_token
    for method in (saliency.last_block_attention, saliency.attention_rollout):
        peak = int(method(vit, x)[0, 0].reshape(-1).argmax())
        assert peak // T == 5 and (peak % T) // 50 == 2, method.__name__


def test_grad_cam_and_integrated_gradients_of_a_resnet_classifier_have_the_image_shape():
    torch.manual_seed(0)
    net = ResNetClassifier(depth=18, in_chans=1, num_classes=3).eval()
    x = torch.rand(2, 1, 64, 64)
    cam = saliency.grad_cam(net, net.layer4, x, 1)
    assert cam.shape == (2, 1, 64, 64) and (cam >= 0).all()
    assert not torch.allclose(cam, saliency.grad_cam(net, net.layer4, x, 2))  # per class
    assert saliency.integrated_gradients(net, x, 0, steps=4).shape == x.shape


def test_mmcl_similarity_maps_are_cosines_in_the_input_shapes():
    torch.manual_seed(0)
    vit = SignalViT(input_size=(LEADS, T), patch_size=(1, 50), embed_dim=32, depth=1, num_heads=4,
                    global_pool="avg").eval()
    resnet = ResNetEncoder(depth=18, in_chans=1).eval()
    ecg_head, cmr_head = nn.Linear(32, 8), nn.Linear(512, 8)
    ecg, cmr = torch.randn(2, 1, LEADS, T), torch.rand(2, 1, 64, 64)
    z_ecg, z_cmr = ecg_head(vit.forward_features(ecg)), cmr_head(resnet.forward_features(cmr))
    ecg_map = saliency.signal_token_similarity(vit, ecg_head, ecg, z_cmr)
    cmr_map = saliency.image_region_similarity(resnet, cmr_head, cmr, z_ecg)
    assert ecg_map.shape == ecg.shape and cmr_map.shape == cmr.shape
    assert ecg_map.abs().max() <= 1 + 1e-5 and cmr_map.abs().max() <= 1 + 1e-5
    # a token's similarity to its own projection direction is 1 at that token
    own = ecg_head(vit.fc_norm(vit.forward_tokens(ecg)[:, 1 + 7]))
    similarity = saliency.signal_token_similarity(vit, ecg_head, ecg, own)
    assert abs(float(similarity[0, 0, 7 // 4, (7 % 4) * 50 + 25]) - 1) < 1e-4
