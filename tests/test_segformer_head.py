"""Tests of the SegFormer all-MLP decoder head (``wsseg.layers.SegFormerHead``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsseg.layers import SegFormerHead, segformer_head

MIT_CHANNELS = [32, 64, 160, 256]


def _mit_features(b=2, size=32, strides=(4, 8, 16, 16), channels=MIT_CHANNELS, dtype=torch.float32):
    return [torch.randn(b, c, size // s, size // s, dtype=dtype) for c, s in zip(channels, strides, strict=False)]


def test_shapes_mit_like():
    head = SegFormerHead(MIT_CHANNELS, num_classes=21, embed_dim=16)
    out = head(_mit_features())
    assert out.shape == (2, 21, 8, 8)


def test_shapes_vit_like_same_stride():
    head = SegFormerHead([64] * 4, num_classes=5, embed_dim=8)
    feats = [torch.randn(3, 64, 4, 6) for _ in range(4)]
    assert head(feats).shape == (3, 5, 4, 6)


def test_single_map():
    head = SegFormerHead([12], num_classes=3, embed_dim=4)
    assert head([torch.randn(1, 12, 5, 5)]).shape == (1, 3, 5, 5)


def test_structure_matches_official():
    head = SegFormerHead(MIT_CHANNELS, num_classes=21)
    assert head.embed_dim == 256
    fuse_conv, bn, relu, drop = head.fuse
    assert fuse_conv.in_channels == 4 * 256 and fuse_conv.out_channels == 256 and fuse_conv.bias is None
    assert isinstance(bn, torch.nn.BatchNorm2d) and isinstance(relu, torch.nn.ReLU)
    assert isinstance(drop, torch.nn.Dropout2d) and drop.p == pytest.approx(0.1)
    assert head.pred.out_channels == 21 and head.pred.bias is not None
    assert [m.in_features for m in head.proj] == MIT_CHANNELS


def test_fuse_conv_init_matches_mmcv_conv_module():
    """mmcv ConvModule: kaiming_normal_(mode="fan_out", nonlinearity="relu") -> std sqrt(2 / fan_out) with
    fan_out = D * 1 * 1 = 256, i.e. 0.0884 (PyTorch's default would give std 1/sqrt(3 * 1024) = 0.018)."""
    torch.manual_seed(0)
    head = SegFormerHead(MIT_CHANNELS, num_classes=21)            # D = 256, fuse conv 1024 -> 256
    w = head.fuse[0].weight.detach().double()
    expected_std = (2.0 / 256) ** 0.5
    assert abs(float(w.std()) - expected_std) < 0.01 * expected_std        # 262,144 samples
    assert abs(float(w.mean())) < 0.002
    within = float((w.abs() < expected_std).double().mean())                # normal, not uniform
    assert abs(within - 0.6827) < 0.005
    bn = head.fuse[1]
    assert torch.equal(bn.weight, torch.ones(256)) and torch.equal(bn.bias, torch.zeros(256))
    no_norm = SegFormerHead([8], num_classes=2, embed_dim=64, norm="none")
    assert torch.equal(no_norm.fuse[0].bias, torch.zeros(64))


def test_reset_parameters_keeps_official_init():
    head = SegFormerHead(MIT_CHANNELS, num_classes=21)
    with torch.no_grad():
        head.fuse[0].weight.fill_(1.0)
        head.fuse[1].running_mean.fill_(3.0)
    head.reset_parameters()
    assert abs(float(head.fuse[0].weight.detach().std()) - (2.0 / 256) ** 0.5) < 0.002
    assert torch.equal(head.fuse[1].running_mean, torch.zeros(256))


def test_matches_manual_reference():
    """Hand-written reference: per-token linear, bilinear upsample (align_corners=False), reverse concat,
    1x1 conv, BN (eval statistics), ReLU, 1x1 conv."""
    torch.manual_seed(1)
    head = SegFormerHead([6, 10, 14], num_classes=4, embed_dim=5).eval()
    bn = head.fuse[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    feats = [torch.randn(2, 6, 8, 8), torch.randn(2, 10, 4, 4), torch.randn(2, 14, 2, 2)]
    projected = []
    for f, lin in zip(feats, head.proj, strict=False):
        tokens = f.flatten(2).transpose(1, 2)                       # (B, N, C)
        e = (tokens @ lin.weight.T + lin.bias).transpose(1, 2).reshape(2, 5, *f.shape[-2:])
        projected.append(F.interpolate(e, size=(8, 8), mode="bilinear", align_corners=False))
    cat = torch.cat(projected[::-1], dim=1)
    z = torch.einsum("oc,bchw->bohw", head.fuse[0].weight[:, :, 0, 0], cat)
    z = (z - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    z = torch.relu(z * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])
    ref = torch.einsum("oc,bchw->bohw", head.pred.weight[:, :, 0, 0], z) + head.pred.bias[None, :, None, None]
    torch.testing.assert_close(head(feats), ref, rtol=1e-5, atol=1e-5)


def test_concat_order_deepest_first():
    """Fusion input channels [0, D) belong to the LAST map: zeroing the fuse weights of the other blocks
    makes the output independent of the other maps."""
    head = SegFormerHead([4, 4], num_classes=2, embed_dim=3, norm="none").eval()
    with torch.no_grad():
        head.fuse[0].weight[:, 3:] = 0.0
    a = [torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)]
    b = [torch.randn(1, 4, 4, 4), a[1]]
    torch.testing.assert_close(head(a), head(b))


def test_function_equals_module():
    head = SegFormerHead(MIT_CHANNELS, num_classes=3, embed_dim=8).eval()
    feats = _mit_features(b=1)
    out = segformer_head(feats, [m.weight for m in head.proj], [m.bias for m in head.proj], head.fuse, head.pred)
    torch.testing.assert_close(out, head(feats))


def test_dropout_active_in_train_only():
    head = SegFormerHead([8], num_classes=3, embed_dim=64, dropout=0.5)
    x = [torch.randn(2, 8, 4, 4)]
    head.eval()
    torch.testing.assert_close(head(x), head(x))
    head.train()
    torch.manual_seed(0)
    a = head(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, head(x))


def test_gradcheck_float64():
    head = SegFormerHead([3, 5], num_classes=2, embed_dim=2).double().eval()
    f1 = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    f2 = torch.randn(1, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: head([a, b]), (f1, f2))


def test_batchnorm_statistics_update_in_train_mode():
    head = SegFormerHead([4], num_classes=2, embed_dim=3).train()
    before = head.fuse[1].running_mean.clone()
    head([torch.randn(2, 4, 3, 3) + 3.0])
    assert not torch.equal(before, head.fuse[1].running_mean)


def test_extra_repr():
    text = repr(SegFormerHead([4, 8], num_classes=3, embed_dim=16))
    assert "embed_dim=16" in text and "num_classes=3" in text and "dropout=0.1" in text


@pytest.mark.parametrize("kwargs, match", [
    (dict(in_channels=[], num_classes=3), "in_channels"),
    (dict(in_channels=[4, 0], num_classes=3), "in_channels"),
    (dict(in_channels=[4], num_classes=0), "num_classes"),
    (dict(in_channels=[4], num_classes=3, embed_dim=0), "embed_dim"),
    (dict(in_channels=[4], num_classes=3, dropout=1.0), "dropout"),
    (dict(in_channels=[4], num_classes=3, norm="gn"), "norm"),
])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SegFormerHead(**kwargs)


def test_forward_validation():
    head = SegFormerHead([4, 8], num_classes=3, embed_dim=2)
    with pytest.raises(TypeError, match="features"):
        head(torch.randn(1, 4, 4, 4))
    with pytest.raises(ValueError, match="features"):
        head([torch.randn(1, 4, 4, 4)])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        head([torch.randn(1, 4, 4, 4), torch.randn(1, 7, 2, 2)])
    with pytest.raises(ValueError, match=r"features\[1\]"):
        head([torch.randn(1, 4, 4, 4), torch.randn(2, 8, 2, 2)])
    with pytest.raises(ValueError, match=r"features\[0\]"):
        head([torch.randn(4, 4, 4), torch.randn(1, 8, 2, 2)])
    with pytest.raises(TypeError, match=r"features\[0\]"):
        head([torch.zeros(1, 4, 4, 4, dtype=torch.long), torch.randn(1, 8, 2, 2)])


def _concat_then_fuse(head, feats):
    """The official order, written out: project, upsample every map, concatenate deepest-first, fuse."""
    size = feats[0].shape[-2:]
    maps = []
    for f, lin in zip(feats, head.proj, strict=True):
        e = torch.einsum("bchw,dc->bdhw", f, lin.weight) + lin.bias[None, :, None, None]
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=False)
        maps.append(e)
    x = torch.cat(maps[::-1], dim=1)
    x = torch.einsum("bchw,dc->bdhw", x, head.fuse[0].weight.flatten(1))
    if head.fuse[0].bias is not None:
        x = x + head.fuse[0].bias[None, :, None, None]
    for m in list(head.fuse)[1:]:
        x = m(x)
    return head.pred(x)


@pytest.mark.parametrize("norm", ["bn", "none"])
@pytest.mark.parametrize("strides", [(4, 8, 16, 16), (4, 8, 16, 32), (16, 16, 16, 16)])
def test_low_resolution_fusion_equals_concat_then_fuse(norm, strides):
    """The head fuses each map at its own resolution (the 1x1 fusion conv commutes with the per-channel
    bilinear upsampling): same output, BatchNorm batch statistics, running statistics and gradients as
    concatenating at full resolution first (float64, train mode, dropout off)."""
    torch.manual_seed(0)
    head = SegFormerHead(MIT_CHANNELS, num_classes=5, embed_dim=12, dropout=0.0, norm=norm).double().train()
    ref = SegFormerHead(MIT_CHANNELS, num_classes=5, embed_dim=12, dropout=0.0, norm=norm).double().train()
    ref.load_state_dict(head.state_dict())
    feats = _mit_features(size=64, strides=strides, dtype=torch.float64)
    f1 = [f.clone().requires_grad_() for f in feats]
    f2 = [f.clone().requires_grad_() for f in feats]
    out, expected = head(f1), _concat_then_fuse(ref, f2)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    for a, b in zip(f1, f2, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
    for (name, p), q in zip(head.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=name)
    for a, b in zip(head.buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_low_resolution_fusion_float32_and_autocast():
    torch.manual_seed(0)
    head = SegFormerHead(MIT_CHANNELS, num_classes=5, embed_dim=16, dropout=0.0).eval()
    feats = _mit_features(size=64)
    torch.testing.assert_close(head(feats), _concat_then_fuse(head, feats), rtol=1e-4, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
