"""Tests of the CoSA reference model (``wsseg.models.CoSANet``, ``cosa`` / ``cosa_vit_b16``) and its
LargeFOV head (``wsseg.layers.LargeFOVHead``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import wsseg
from wsseg.backbones import TimmViTBackbone
from wsseg.layers import LargeFOVHead, large_fov_head
from wsseg.models import CoSANet, CoSAOutput

K = 3


def _net(**kw):
    kw.setdefault("hidden_channels", 8)
    return wsseg.create_model("cosa", backbone="test_vit", num_classes=K, **kw)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return _net().eval()


def _tokens_by_hand(vit, x, upto):
    """Patch tokens after block ``upto`` (raw residual stream) and the final-norm tokens, by a plain loop."""
    t = vit.patch_embed(x)
    t = vit._pos_embed(t)
    t = vit.norm_pre(t)
    aux = None
    for i, blk in enumerate(vit.blocks):
        t = blk(t)
        if i == upto:
            aux = t
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    n = vit.num_prefix_tokens

    def grid(tok):
        return rearrange(tok[:, n:], "b (h w) d -> b d h w", h=h, w=w)

    return grid(aux), grid(vit.norm(t))


# ---------------------------------------------------------------------- model
def test_output_shapes(net):
    out = net(torch.randn(2, 3, 64, 96))
    assert isinstance(out, CoSAOutput)
    assert out.cls.shape == out.cls_aux.shape == (2, K)
    assert out.cam.shape == out.cam_aux.shape == (2, K, 4, 6)
    assert out.seg.shape == (2, K + 1, 4, 6)
    assert net.stride == 16 and net.num_classes == K
    assert net.encoder.out_indices == (3, 5)  # aux block -3 of 6, last block


def test_cams_and_logits_against_independent_features(net):
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        out = net(x)
        f_aux, f = _tokens_by_hand(net.encoder.model, x, upto=3)
    w, wa = net.classifier.weight[:, :, 0, 0], net.aux_classifier.weight[:, :, 0, 0]
    cam = torch.einsum("kd,bdhw->bkhw", w, f)
    cam_aux = torch.einsum("kd,bdhw->bkhw", wa, f_aux)
    torch.testing.assert_close(out.cam, cam, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.cam_aux, cam_aux, rtol=1e-4, atol=1e-4)
    # GMP of the features, then the bias-free linear classifier (not the max of the CAM)
    torch.testing.assert_close(out.cls, f.amax(dim=(2, 3)) @ w.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.cls_aux, f_aux.amax(dim=(2, 3)) @ wa.T, rtol=1e-4, atol=1e-4)
    # CAMs are raw logits (can be negative: no ReLU inside the model)
    assert float(out.cam.min()) < 0


def test_aux_features_match_timm_forward_intermediates(net):
    x = torch.randn(1, 3, 32, 48)
    vit = net.encoder.model
    with torch.no_grad():
        inter = vit.forward_intermediates(x, indices=[3], norm=False, intermediates_only=True,
                                          output_fmt="NCHW")[0]
        normed = vit.forward_features(x)[:, vit.num_prefix_tokens:]
        feats = net.encoder(x).features
        normed_aux = vit.norm(feats[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(feats[0], inter, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats[1], rearrange(normed, "b (h w) d -> b d h w", h=2, w=3), rtol=1e-5,
                               atol=1e-5)
    # the aux map is NOT passed through the final LayerNorm
    assert float((normed_aux - feats[0]).abs().max()) > 0.1


def test_seg_is_large_fov_of_final_features(net):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, f = _tokens_by_hand(net.encoder.model, x, upto=3)
        ref = net.decoder(f)
        out = net(x)
    torch.testing.assert_close(out.seg, ref, rtol=1e-4, atol=1e-4)


def test_gap_option():
    torch.manual_seed(1)
    m = _net(pooling="gap").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        f_aux, f = _tokens_by_hand(m.encoder.model, x, upto=3)
    torch.testing.assert_close(out.cls, f.mean(dim=(2, 3)) @ m.classifier.weight[:, :, 0, 0].T,
                               rtol=1e-4, atol=1e-4)


def test_no_biases_in_heads(net):
    assert net.classifier.bias is None and net.aux_classifier.bias is None
    assert all(c.bias is None for c in (net.decoder.conv6, net.decoder.conv7, net.decoder.conv8))


def test_pos_embed_frozen_and_excluded_from_groups(net):
    pe = net.encoder.model.pos_embed
    assert not pe.requires_grad
    grouped = {id(p) for g in net.param_groups(1e-4) for p in g["params"]}
    assert id(pe) not in grouped
    m = _net(freeze_pos_embed=False)
    pe2 = m.encoder.model.pos_embed
    assert pe2.requires_grad
    enc = next(g for g in m.param_groups(1e-4) if g["name"] == "encoder")
    assert any(p is pe2 for p in enc["params"])


def test_param_groups_membership_and_lrs(net):
    groups = net.param_groups(6e-5, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["encoder", "encoder_norm", "heads", "decoder"]
    by = {g["name"]: g for g in groups}
    ids = {n: {id(p) for p in g["params"]} for n, g in by.items()}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert set().union(*ids.values()) == trainable
    assert sum(len(v) for v in ids.values()) == len(trainable)  # disjoint
    names = dict(net.encoder.named_parameters())
    norm_names = {n for n, p in names.items() if "norm" in n and p.requires_grad}
    assert {id(names[n]) for n in norm_names} == ids["encoder_norm"]
    assert ids["heads"] == {id(net.classifier.weight), id(net.aux_classifier.weight)}
    assert ids["decoder"] == {id(p) for p in net.decoder.parameters()}
    assert by["encoder"]["lr"] == 6e-5 and by["encoder_norm"]["lr"] == 6e-5
    assert math.isclose(by["heads"]["lr"], 6e-4) and math.isclose(by["decoder"]["lr"], 6e-4)
    assert all(g["weight_decay"] == 0.01 for g in groups)
    frozen = {g["name"]: g for g in net.param_groups(1.0, encoder_norm_lr_mult=0.0)}
    assert frozen["encoder_norm"]["lr"] == 0.0 and frozen["encoder_norm"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="head_lr_mult"):
        net.param_groups(1.0, head_lr_mult=-1)
    opt = torch.optim.AdamW(groups)
    assert len(opt.param_groups) == 4


@pytest.mark.parametrize("mode", ["none", "all", "feat", "cls"])
def test_cam_detach_semantics(mode):
    torch.manual_seed(0)
    m = _net(cam_detach=mode)
    out = m(torch.randn(1, 3, 32, 32))
    enc_w = m.encoder.model.blocks[0].attn.qkv.weight
    if mode == "all":
        assert not out.cam.requires_grad and not out.cam_aux.requires_grad
    else:
        g_cls, g_enc = torch.autograd.grad((out.cam ** 2).sum() + (out.cam_aux ** 2).sum(),
                                           [m.classifier.weight, enc_w], allow_unused=True)
        assert (g_cls is not None) == (mode in ("none", "feat"))
        assert (g_enc is not None) == (mode in ("none", "cls"))
    # classification logits are never detached
    g = torch.autograd.grad(out.cls.sum(), m.classifier.weight)[0]
    assert g.abs().sum() > 0


def test_fit_input():
    m = _net()
    x = torch.randn(1, 3, 50, 70)
    y = m.fit_input(x)
    assert y.shape == (1, 3, 48, 64)
    x2 = torch.randn(1, 3, 48, 64)
    assert m.fit_input(x2) is x2
    assert m(y).cam.shape == (1, K, 3, 4)


def test_extra_repr(net):
    r = repr(net)
    assert "aux_layer=-3" in r and "pooling='gmp'" in r and "cam_detach='none'" in r
    assert "dilation=5" in r


# ---------------------------------------------------------------------- registry / builders
def test_registry():
    assert wsseg.is_model("cosa") and wsseg.is_model("cosa_vit_b16")
    m = wsseg.create_model("cosa", backbone="test_vit", num_classes=5, hidden_channels=4, aux_layer=-4)
    assert isinstance(m, CoSANet) and m.encoder.out_indices == (2, 5)
    assert m.decoder.conv8.out_channels == 6 and m.decoder.hidden_channels == 4
    m2 = wsseg.create_model("cosa", backbone="test_vit", num_classes=2, hidden_channels=4, img_size=64)
    assert m2.encoder.model.pos_embed.shape == (1, 1 + 16, 64)  # 4x4 stored grid + class token


def test_aux_layer_last_is_normed_like_official():
    """aux_layer=-1: the official code then takes the final-norm tokens (its list entry is replaced)."""
    m = _net(aux_layer=-1).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = m(x)
        _, f = _tokens_by_hand(m.encoder.model, x, upto=5)
    assert m.encoder.out_indices == (5, 5)
    torch.testing.assert_close(out.cam_aux, F.conv2d(f, m.aux_classifier.weight), rtol=1e-4, atol=1e-4)


def test_cosa_vit_b16_faithful_settings():
    with torch.device("meta"):
        m = wsseg.create_model("cosa_vit_b16", num_classes=20)
    vit = m.encoder.model
    assert len(vit.blocks) == 12 and vit.embed_dim == 768 and vit.blocks[0].attn.num_heads == 12
    assert vit.blocks[0].attn.qkv.bias is not None
    assert vit.norm.eps == 1e-6 and vit.blocks[0].norm1.eps == 1e-6
    assert vit.blocks[0].mlp.fc1.out_features == 3072
    assert m.encoder.out_indices == (9, 11) and m.encoder.patch_size == 16
    assert m.decoder.conv6.out_channels == 512 and m.decoder.conv8.out_channels == 21
    assert m.decoder.conv6.dilation == (5, 5) and not vit.pos_embed.requires_grad
    assert m.classifier.out_channels == 20 and m.pooling == "gmp" and m.cam_detach == "none"
    assert m.encoder.drop_path_rate == 0.0


def test_builder_errors(tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        wsseg.create_model("cosa", backbone="mit_b1")
    with pytest.raises(ValueError, match="backbone"):
        wsseg.create_model("cosa", backbone="not_a_model")
    with pytest.raises(TypeError, match="backbone"):
        wsseg.create_model("cosa", backbone=3)
    with pytest.raises(ValueError, match="aux_layer"):
        _net(aux_layer=6)
    with pytest.raises(ValueError, match="aux_layer"):
        _net(aux_layer=1.5)
    with pytest.raises(ValueError, match="pretrained"):
        _net(pretrained=True)
    with pytest.raises(ValueError, match="weights"):
        _net(weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="pooling"):
        _net(pooling="avg")
    with pytest.raises(ValueError, match="cam_detach"):
        _net(cam_detach="both")
    with pytest.raises(ValueError, match="num_classes"):
        wsseg.create_model("cosa", backbone="test_vit", num_classes=0)
    with pytest.raises(ValueError, match="backbone"):
        wsseg.create_model("cosa_vit_b16", backbone="test_vit")


def test_constructor_errors(net):
    with pytest.raises(ValueError, match="out_indices"):
        CoSANet(TimmViTBackbone("test_vit", out_indices=(-1,)), K)
    with pytest.raises(ValueError, match="backbone"):
        CoSANet(torch.nn.Conv2d(3, 3, 1), K)
    ok = CoSANet(TimmViTBackbone("test_vit", out_indices=(-4, -1)), K, aux_layer=-4, hidden_channels=4)
    assert ok.encoder.out_indices == (2, 5)
    with pytest.raises(ValueError, match="x: expected 3 channels"):
        net(torch.randn(1, 4, 32, 32))
    with pytest.raises(TypeError, match="x"):
        net(torch.zeros(1, 3, 32, 32, dtype=torch.long))


def test_dinov2_weights_load(dinov2_weights):
    m = wsseg.create_model("cosa", backbone="vit_small_patch14_dinov2", num_classes=K, weights=dinov2_weights,
                           hidden_channels=8).eval()
    sd = torch.load(dinov2_weights, map_location="cpu", weights_only=True)
    torch.testing.assert_close(m.encoder.model.blocks[3].attn.qkv.weight, sd["blocks.3.attn.qkv.weight"].float())
    assert m.stride == 14 and m.encoder.out_indices == (9, 11)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 56, 84))
    assert out.cam.shape == (1, K, 4, 6) and out.seg.shape == (1, K + 1, 4, 6)
    assert torch.isfinite(out.cam).all()


# ---------------------------------------------------------------------- LargeFOV head
def test_large_fov_architecture():
    head = LargeFOVHead(in_channels=16, hidden_channels=8, num_classes=5)
    c6, c7, c8 = head.conv6, head.conv7, head.conv8
    assert (c6.in_channels, c6.out_channels, c6.kernel_size, c6.dilation, c6.padding) == (16, 8, (3, 3), (5, 5),
                                                                                          (5, 5))
    assert (c7.in_channels, c7.out_channels, c7.kernel_size, c7.dilation, c7.padding) == (8, 8, (3, 3), (5, 5),
                                                                                          (5, 5))
    assert (c8.in_channels, c8.out_channels, c8.kernel_size, c8.padding) == (8, 5, (1, 1), (0, 0))
    assert all(c.bias is None for c in (c6, c7, c8))
    assert head(torch.randn(2, 16, 7, 11)).shape == (2, 5, 7, 11)
    r = repr(head)
    assert "hidden_channels=8" in r and "dilation=5" in r and "bias=False" in r


def test_large_fov_default_init_bounds():
    torch.manual_seed(0)
    head = LargeFOVHead()  # official sizes: 768 -> 512 -> 512 -> 21
    for conv in (head.conv6, head.conv7, head.conv8):
        fan_in = conv.weight[0].numel()
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        w = conv.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
        assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.05 * bound


def test_large_fov_matches_hand_written_sequential():
    head = LargeFOVHead(in_channels=6, hidden_channels=4, num_classes=3, dilation=2)
    seq = torch.nn.Sequential(
        torch.nn.Conv2d(6, 4, 3, padding=2, dilation=2, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 3, 1, bias=False))
    with torch.no_grad():
        seq[0].weight.copy_(head.conv6.weight)
        seq[2].weight.copy_(head.conv7.weight)
        seq[4].weight.copy_(head.conv8.weight)
    x = torch.randn(2, 6, 9, 10)
    torch.testing.assert_close(head(x), seq(x))


def test_large_fov_receptive_field():
    """An impulse changes outputs only within Chebyshev radius 2d = 10 (41x41 field for d = 5)."""
    torch.manual_seed(0)
    head = LargeFOVHead(in_channels=2, hidden_channels=4, num_classes=2).double()
    x = torch.randn(1, 2, 25, 25, dtype=torch.float64)
    x2 = x.clone()
    x2[0, :, 12, 12] += 5.0
    with torch.no_grad():
        diff = (head(x2) - head(x)).abs().amax(1)[0]
    yy, xx = torch.meshgrid(torch.arange(25), torch.arange(25), indexing="ij")
    far = torch.maximum((yy - 12).abs(), (xx - 12).abs()) > 10
    assert float(diff[far].max()) == 0.0
    assert float(diff[12, 12]) > 0


def test_large_fov_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w1 = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w2 = torch.randn(3, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w3 = torch.randn(2, 3, 1, 1, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: large_fov_head(*a, dilation=1), (x, w1, w2, w3))


def test_large_fov_errors():
    head = LargeFOVHead(in_channels=4, hidden_channels=4, num_classes=2)
    with pytest.raises(ValueError, match="feat: expected 4 channels"):
        head(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="feat"):
        head(torch.randn(4, 5, 5))
    with pytest.raises(TypeError, match="feat"):
        head(torch.zeros(1, 4, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="dilation"):
        LargeFOVHead(dilation=0)
    with pytest.raises(ValueError, match="hidden_channels"):
        LargeFOVHead(hidden_channels=0)
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="weight3"):
        large_fov_head(torch.randn(1, 4, 5, 5), w, w, w)
    with pytest.raises(ValueError, match="weight2: expected 4 input channels"):
        large_fov_head(torch.randn(1, 4, 5, 5), w, torch.randn(4, 3, 3, 3), torch.randn(2, 4, 1, 1))
