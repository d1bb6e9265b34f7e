"""Tests of SLRNet's decoder (ASPP → F), GCI segmentation head, stochastic gate and auxiliary head."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.reference.official_slrnet_heads import (
    OfficialAuxHead,
    OfficialDecoder,
    OfficialSegHead,
    official_stochastic_gate,
)
from wsseg.layers import (
    ASPP,
    ASPPDecoder,
    GCIHead,
    GlobalCueInjection,
    SLRNetAuxHead,
    StochasticGate,
    prepend_background,
    stochastic_gate,
)

SMALL = dict(in_channels=24, skip_channels=12, out_channels=8, skip_out_channels=4, aspp_dilations=(1, 2, 3, 4))


def _small_decoder():
    torch.manual_seed(0)
    ours = ASPPDecoder(**SMALL)
    ref = OfficialDecoder(24, 12, 8, 4, (1, 2, 3, 4))
    _randomise_bn(ours)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _randomise_bn(module: nn.Module) -> None:
    """Non-trivial BN parameters and statistics, so that mode / statistics mistakes show."""
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.affine:
                m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=g))


def _run(module, inputs, seed, weight, fn=None):
    """Forward with a fixed global seed (dropout / gate masks), backward of a weighted sum."""
    inputs = [x.detach().clone().requires_grad_(True) for x in inputs]
    torch.manual_seed(seed)
    out = (fn or module)(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return out.detach(), [x.grad for x in inputs], grads


def _assert_match(a, b, rename=lambda n: n):
    out_a, in_a, par_a = a
    out_b, in_b, par_b = b
    torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(in_a, in_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
    assert {rename(n) for n in par_a} == set(par_b)
    for n, g in par_a.items():
        torch.testing.assert_close(g, par_b[rename(n)], rtol=1e-5, atol=1e-5, msg=n)


# ------------------------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_decoder_matches_official(mode):
    ours, ref = _small_decoder()
    getattr(ours, mode)(), getattr(ref, mode)()
    skip, deep = torch.randn(2, 12, 11, 13), torch.randn(2, 24, 6, 7)
    weight = torch.randn(2, 8, 11, 13)
    a = _run(ours, [skip, deep], 5, weight, fn=lambda s, d: ours([s, d]))
    b = _run(ref, [skip, deep], 5, weight, fn=lambda s, d: ref(d, s))
    _assert_match(a, b)
    # the buffers evolved identically (fusion BNs in train mode, ASPP BNs frozen)
    for (n, x), (_, y) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=n)


def test_decoder_uses_first_and_last_maps():
    ours, _ = _small_decoder()
    ours.eval()
    skip, deep = torch.randn(1, 12, 9, 9), torch.randn(1, 24, 5, 5)
    middle = torch.randn(1, 3, 2, 2)
    torch.testing.assert_close(ours([skip, middle, deep]), ours((skip, deep)))


def test_aspp_bn_statistics_frozen_affine_trained():
    ours, _ = _small_decoder()
    ours.train()
    aspp_bns = [m for m in ours.aspp.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(aspp_bns) == 6 and all(not m.training for m in aspp_bns)
    assert ours.fc8_x[1].training and ours.fc8_skip[1].training
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    out = ours([torch.randn(2, 12, 9, 9), torch.randn(2, 24, 5, 5)])
    out.sum().backward()
    after = ours.state_dict()
    for k in before:
        if k.startswith("aspp.") and ("running" in k or "num_batches" in k):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["fc8_x.1.running_mean"], after["fc8_x.1.running_mean"])
    assert all(m.weight.grad is not None and m.bias.grad is not None for m in aspp_bns)


def test_aspp_frozen_right_after_construction_and_option_off():
    aspp = ASPP(8, 4, dilations=(1, 2))
    assert all(not m.training for m in aspp.modules() if isinstance(m, nn.BatchNorm2d))
    aspp = ASPP(8, 4, dilations=(1, 2), freeze_bn_stats=False)
    assert all(m.training for m in aspp.modules() if isinstance(m, nn.BatchNorm2d))
    aspp(torch.randn(2, 8, 5, 5))
    assert aspp.bn1.num_batches_tracked.item() == 1


def test_decoder_official_structure_and_parameter_count():
    dec = ASPPDecoder()
    # official: 4 ASPP branches (1x1 + three 3x3, 4096 -> 256), pooled 1x1 branch, 1280 -> 256 projection,
    # 1x1 skip 256 -> 48, 3x3 fusion 304 -> 256; no conv bias; BN affine everywhere (2 x channels)
    expected = (4096 * 256 + 3 * 4096 * 256 * 9 + 4096 * 256 + 1280 * 256 + 6 * 2 * 256
                + 256 * 48 + 2 * 48 + 304 * 256 * 9 + 2 * 256)
    assert sum(p.numel() for p in dec.parameters()) == expected
    convs = [m for m in dec.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is None for c in convs)
    branches = [dec.aspp.aspp1, dec.aspp.aspp2, dec.aspp.aspp3, dec.aspp.aspp4]
    assert [b.atrous_conv.kernel_size for b in branches] == [(1, 1), (3, 3), (3, 3), (3, 3)]
    assert [b.atrous_conv.dilation[0] for b in branches[1:]] == [12, 24, 36]
    assert [b.atrous_conv.padding[0] for b in branches[1:]] == [12, 24, 36]
    bns = [m for m in dec.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.momentum == 0.05 and m.eps == 1e-5 for m in bns)
    assert isinstance(dec.aspp.dropout, nn.Dropout) and dec.aspp.dropout.p == 0.5
    assert dec.fc8_x[0].in_channels == 304 and dec.fc8_x[0].kernel_size == (3, 3)
    # Kaiming-normal (fan-in, gain sqrt 2) init and BN 1 / 0
    w = dec.aspp.aspp2.atrous_conv.weight
    assert w.mean().abs() < 1e-3
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (4096 * 9)), rel=0.01)
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


def test_decoder_output_shape_official_sizes():
    dec = ASPPDecoder(in_channels=64, skip_channels=32).eval()
    out = dec([torch.randn(1, 32, 81, 81), torch.randn(1, 64, 41, 41)])
    assert out.shape == (1, 256, 81, 81)
    assert (out >= 0).all()


def test_decoder_errors():
    dec = ASPPDecoder(**SMALL)
    skip, deep = torch.randn(1, 12, 9, 9), torch.randn(1, 24, 5, 5)
    with pytest.raises(TypeError, match="features"):
        dec(deep)
    with pytest.raises(ValueError, match="at least two"):
        dec([deep])
    with pytest.raises(ValueError, match="skip_channels"):
        dec([torch.randn(1, 5, 9, 9), deep])
    with pytest.raises(ValueError, match="in_channels"):
        dec([skip, torch.randn(1, 7, 5, 5)])
    with pytest.raises(ValueError, match="batch size"):
        dec([torch.randn(2, 12, 9, 9), deep])
    with pytest.raises(TypeError, match="floating"):
        dec([skip.long(), deep])
    with pytest.raises(ValueError, match="dilations"):
        ASPPDecoder(aspp_dilations=())
    with pytest.raises(ValueError, match="dropout"):
        ASPP(8, 4, dropout=1.0)
    with pytest.raises(TypeError, match="in_channels"):
        ASPP(8.0, 4)


def test_decoder_repr():
    text = repr(ASPPDecoder(**SMALL))
    assert "dilations=(1, 2, 3, 4)" in text and "skip_out_channels=4" in text and "freeze_bn_stats=True" in text


# -------------------------------------------------------------------------------------------- GCI head
def _small_heads(k=5, c=8):
    torch.manual_seed(0)
    ours = GCIHead(num_classes=k, channels=c, shallow_channels=c)
    ref = OfficialSegHead(num_classes=k + 1, c=c)
    _randomise_bn(ours)
    state = {k_.replace("gci.", "shallow_mask.", 1): v for k_, v in ours.state_dict().items()}
    ref.load_state_dict(state)
    return ours, ref


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gci_head_matches_official(mode):
    ours, ref = _small_heads()
    getattr(ours, mode)(), getattr(ref, mode)()
    deep, shallow = torch.randn(2, 8, 7, 9), torch.randn(2, 8, 7, 9)
    weight = torch.randn(2, 6, 7, 9)
    a = _run(ours, [deep, shallow], 11, weight)
    b = _run(ref, [deep, shallow], 11, weight)
    _assert_match(a, b, rename=lambda n: n.replace("gci.", "shallow_mask.", 1))
    for (n, x), (_, y) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=n)


def test_gci_head_background_and_probabilities():
    ours, _ = _small_heads()
    logits = ours.eval()(torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))
    assert logits.shape == (2, 6, 4, 4)
    assert torch.all(logits[:, 0] == 1.0)
    head = GCIHead(num_classes=3, channels=8, shallow_channels=4, bg_logit=0.5).eval()
    assert torch.all(head(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 3, 3))[:, 0] == 0.5)


def test_gci_head_train_stochastic_eval_deterministic():
    ours, _ = _small_heads()
    deep, shallow = torch.randn(1, 8, 6, 6), torch.randn(1, 8, 6, 6)
    ours.eval()
    torch.testing.assert_close(ours(deep, shallow), ours(deep, shallow), rtol=0, atol=0)
    ours.train()
    for m in ours.modules():   # keep only the gate stochastic
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    torch.manual_seed(0)
    a = ours(deep, shallow)
    b = ours(deep, shallow)
    assert not torch.allclose(a, b)
    torch.manual_seed(0)
    torch.testing.assert_close(ours(deep, shallow), a, rtol=0, atol=0)


def test_gci_matches_hand_formula():
    """AdaIN with γ, β from the global max of the projected deep map (γ first half, β second half)."""
    torch.manual_seed(0)
    gci = GlobalCueInjection(channels=3, deep_channels=2, shallow_channels=4).eval()
    deep, shallow = torch.randn(2, 2, 5, 4), torch.randn(2, 4, 6, 6)
    bn = gci.fc_deep[1]
    y = torch.relu((torch.einsum("oc,bchw->bohw", gci.fc_deep[0].weight[:, :, 0, 0], deep)
                    - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps))
    attrs = y.amax(dim=(2, 3))
    gamma, beta = attrs[:, :3], attrs[:, 3:]
    x = torch.einsum("oc,bchw->bohw", gci.fc_skip[0].weight[:, :, 0, 0], shallow) / math.sqrt(1 + 1e-5)
    x = torch.relu(x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None])
    x = torch.relu(torch.einsum("oc,bchw->bohw", gci.fc_cls[0].weight[:, :, 0, 0], x) / math.sqrt(1 + 1e-5))
    torch.testing.assert_close(gci(deep, shallow), x, rtol=1e-5, atol=1e-5)
    assert gci.fc_skip[1].affine is False


def test_gci_head_structure_and_init():
    head = GCIHead()
    convs = [m for m in head.last_conv if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3), (1, 1)]
    assert [c.bias is None for c in convs] == [True, True, False]
    assert [m.p for m in head.last_conv if isinstance(m, nn.Dropout)] == [0.5, 0.1]
    assert all(type(m) is nn.Dropout for m in head.modules() if isinstance(m, nn.modules.dropout._DropoutNd))
    assert convs[-1].out_channels == 20 and head.alpha == 0.3
    assert head.gci.fc_deep[0].out_channels == 512
    assert convs[0].weight.std().item() == pytest.approx(math.sqrt(2.0 / (256 * 9)), rel=0.02)
    assert all(m.momentum == 0.05 for m in head.modules() if isinstance(m, nn.BatchNorm2d))


def test_gci_head_errors():
    head = GCIHead(num_classes=3, channels=8, shallow_channels=4)
    with pytest.raises(ValueError, match="deep"):
        head(torch.randn(1, 6, 3, 3), torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="shallow_channels"):
        head(torch.randn(1, 8, 3, 3), torch.randn(1, 5, 3, 3))
    with pytest.raises(ValueError, match="shallow"):
        head(torch.randn(1, 8, 3, 3), torch.randn(1, 4, 4, 3))
    with pytest.raises(ValueError, match="4-D"):
        head(torch.randn(8, 3, 3), torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="alpha"):
        GCIHead(alpha=1.0)
    with pytest.raises(ValueError, match="dropouts"):
        GCIHead(dropouts=(0.5,))
    assert "alpha=0.3" in repr(head) and "dropouts=(0.5, 0.1)" in repr(head)


def test_gci_head_autocast_bf16():
    head = GCIHead(num_classes=3, channels=8, shallow_channels=4).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(1, 8, 5, 5), torch.randn(1, 4, 5, 5))
    assert out.shape == (1, 4, 5, 5) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------ stochastic gate
def test_gate_eval_hand_values():
    d, s = torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), -1.0)
    out = stochastic_gate(d, s, alpha=0.3)
    torch.testing.assert_close(out, torch.full_like(d, 0.7 * 2.0 - 0.3))
    torch.testing.assert_close(stochastic_gate(d, s, alpha=0.0, training=True), d)


def test_gate_train_values_and_expectation():
    d, s = torch.full((1, 1, 200, 200), 2.0), torch.full((1, 1, 200, 200), -1.0)
    g = torch.Generator().manual_seed(0)
    out = stochastic_gate(d, s, alpha=0.3, training=True, generator=g)
    deep_sel = (2.0 + 0.3) / 0.7
    is_deep = (out - deep_sel).abs() < 1e-5
    is_shallow = out == -1.0
    assert torch.all(is_deep | is_shallow)
    assert is_shallow.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert out.mean().item() == pytest.approx(2.0, abs=0.05)   # train-time expectation: the deep map


def test_gate_matches_official_and_generator_path():
    d, s = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    torch.manual_seed(7)
    ref = official_stochastic_gate(d, s, 0.3, True)
    torch.manual_seed(7)
    torch.testing.assert_close(stochastic_gate(d, s, alpha=0.3, training=True), ref, rtol=0, atol=0)
    # an explicit generator with the same seed draws the same CPU mask
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(stochastic_gate(d, s, alpha=0.3, training=True, generator=g), ref, rtol=0, atol=0)
    torch.testing.assert_close(stochastic_gate(d, s, alpha=0.3), official_stochastic_gate(d, s, 0.3, False))


def test_gate_module_equals_function_and_modes():
    sg = StochasticGate(0.4)
    d, s = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    torch.manual_seed(1)
    a = sg.train()(d, s)
    torch.manual_seed(1)
    torch.testing.assert_close(a, stochastic_gate(d, s, alpha=0.4, training=True), rtol=0, atol=0)
    torch.testing.assert_close(sg.eval()(d, s), 0.6 * d + 0.4 * s)
    assert repr(sg) == "StochasticGate(alpha=0.4)"


def test_gate_gradcheck():
    d = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: stochastic_gate(a, b, alpha=0.3), (d, s))
    assert torch.autograd.gradcheck(
        lambda a, b: stochastic_gate(a, b, alpha=0.3, training=True, generator=torch.Generator().manual_seed(0)),
        (d, s))


def test_gate_errors():
    d = torch.randn(1, 2, 3, 3)
    with pytest.raises(ValueError, match="shallow"):
        stochastic_gate(d, torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="alpha"):
        stochastic_gate(d, d, alpha=-0.1)
    with pytest.raises(TypeError, match="generator"):
        stochastic_gate(d, d, training=True, generator=0)
    with pytest.raises(TypeError, match="training"):
        stochastic_gate(d, d, training=1)


# --------------------------------------------------------------------------------- aux head / background
def _small_aux(k=5, c=8):
    torch.manual_seed(0)
    ours = SLRNetAuxHead(in_channels=c, num_classes=k, hidden_channels=c)
    _randomise_bn(ours)
    ref = OfficialAuxHead(num_classes=k + 1, c=c)
    names = {"conv.weight": "aux_head.0.weight", "bn": "aux_head.1", "classifier": "aux_head.4"}

    def rename(n):
        for a, b in names.items():
            if n.startswith(a):
                return b + n[len(a):]
        return n

    ref.load_state_dict({rename(n): v for n, v in ours.state_dict().items()})
    return ours, ref, rename


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_aux_head_matches_official(mode):
    ours, ref, rename = _small_aux()
    getattr(ours, mode)(), getattr(ref, mode)()
    x = torch.randn(2, 8, 6, 7)
    weight = torch.randn(2, 6, 6, 7)
    _assert_match(_run(ours, [x], 4, weight), _run(ref, [x], 4, weight), rename=rename)


def test_aux_head_background_is_one_minus_max():
    ours, _, _ = _small_aux()
    logits = ours.eval()(torch.randn(2, 8, 5, 5))
    torch.testing.assert_close(logits[:, 0], 1 - logits[:, 1:].max(dim=1).values)
    assert isinstance(ours.dropout, nn.Dropout) and ours.dropout.p == 0.5
    assert ours.conv.bias is None and ours.classifier.bias is not None
    assert "num_classes=5" in repr(ours) and "one_minus_max" in repr(ours)
    with pytest.raises(ValueError, match="in_channels"):
        ours(torch.randn(1, 3, 4, 4))


def test_prepend_background_hand_values_and_gradient():
    z = torch.tensor([[3.0, 3.0, -1.0]])[..., None, None].requires_grad_(True)
    out = prepend_background(z, "one_minus_max")
    assert out.flatten().tolist() == [-2.0, 3.0, 3.0, -1.0]
    out[:, 0].sum().backward()
    # like torch.max(dim): the gradient goes to a single maximal channel, not split between the tie
    g = z.grad.flatten().tolist()
    assert sorted(g) == [-1.0, 0.0, 0.0] and g[2] == 0.0
    c = prepend_background(torch.zeros(2, 4, 3, 3), "constant", 1.0)
    assert c.shape == (2, 5, 3, 3) and torch.all(c[:, 0] == 1) and torch.all(c[:, 1:] == 0)
    with pytest.raises(ValueError, match="mode"):
        prepend_background(z, "max")
    with pytest.raises(TypeError, match="floating"):
        prepend_background(torch.zeros(1, 2, dtype=torch.long))
