"""Tests for SLRNet's cross-view pair, consistency losses, nGWP pooling and gated class-balanced CE (slrnet.md
§3, §4, §6), against the official formulation in ``tests/reference/official_slrnet_losses.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_slrnet_losses import (
    label_map_to_onehot,
    official_affine_transform,
    official_balanced_mask_loss_ce,
    official_classifier_forward,
    official_code_reg_loss,
    official_mask_reg_loss,
    official_max_onehot,
)
from wsseg.layers import NGWPPooling, NGWPTerms, inverse_view, make_view, ngwp_pooling, ngwp_score
from wsseg.losses import (
    CodeConsistencyLoss,
    GatedClassBalancedCE,
    MaskConsistencyLoss,
    code_consistency_loss,
    gated_class_balanced_ce,
    mask_consistency_loss,
    max_mask,
)

ATOL = 1e-5


def _labels(B, K, g, min_present=1, max_present=3):
    labels = torch.zeros(B, K)
    for b in range(B):
        n = min_present + b % (max_present - min_present + 1)
        labels[b, torch.randperm(K, generator=g)[:n]] = 1
    return labels


def _assert_close(a, b, name=""):
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")


# ================================================================ cross view (§3)
@pytest.mark.parametrize("scale,size", [(0.5, 321), (0.3, 321), (0.5, 81)])
@pytest.mark.parametrize("flip", ["none", "all", "mixed"])
def test_views_equal_official(scale, size, flip):
    g = torch.Generator().manual_seed(size)
    x = torch.randn(3, 3, size, size - 2, generator=g)
    mask = {"none": None, "all": torch.ones(3, dtype=torch.bool),
            "mixed": torch.tensor([True, False, True])}[flip]
    ref, inv = official_affine_transform(x, scale_factor=scale, flip=mask)
    out = make_view(x, scale=scale, flip=False if mask is None else mask)
    assert out.shape == (3, 3, int(size * scale), int((size - 2) * scale))
    assert torch.equal(out, ref)
    if flip == "all":
        assert torch.equal(make_view(x, scale=scale, flip=True), ref)
    # inverse: a view-2 output (e.g. 21 codes on a coarser grid) back to the view-1 feature grid
    y = torch.randn(3, 21, 7, 9, generator=g)
    target = torch.zeros(3, 1, 11, 13)
    back = inverse_view(y, target, flip=False if mask is None else mask)
    assert torch.equal(back, inv(y, (11, 13)))
    assert torch.equal(inverse_view(y, (11, 13), flip=False if mask is None else mask), back)


def test_views_flip_round_trip_and_official_sizes():
    x = torch.rand(2, 3, 321, 321)
    assert make_view(x).shape[-2:] == (160, 160)                   # int(321 * 0.5), configs
    assert make_view(x, scale=0.3).shape[-2:] == (96, 96)          # code default
    codes2 = torch.rand(2, 21, 40, 40)
    assert inverse_view(codes2, (81, 81)).shape == (2, 21, 81, 81)
    f = torch.tensor([True, False])
    v = make_view(x, flip=f)
    assert torch.equal(v[0], make_view(x)[0].flip(-1)) and torch.equal(v[1], make_view(x)[1])
    # identity-size resize with align_corners=True is exact, so un-flipping restores the input
    assert torch.equal(inverse_view(make_view(x, scale=1.0, flip=f), x, flip=f), x)


def test_views_errors():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="scale"):
        make_view(x, scale=0.0)
    with pytest.raises(ValueError, match="scale"):
        make_view(x, scale=0.1)                                    # int(0.8) = 0
    with pytest.raises(ValueError, match="x"):
        make_view(x[0])
    with pytest.raises(TypeError, match="x"):
        make_view(x.long())
    with pytest.raises(ValueError, match="flip"):
        make_view(x, flip=torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="flip"):
        make_view(x, flip=torch.ones(2))
    with pytest.raises(TypeError, match="size_like"):
        inverse_view(x, 8)
    with pytest.raises(ValueError, match="size_like"):
        inverse_view(x, (0, 4))


# ================================================================ mask consistency (§3)
def _probs(B, C, h, w, g, dtype=torch.float32):
    return torch.softmax(2 * torch.randn(B, C, h, w, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize("B,K,h", [(2, 20, 17), (3, 4, 9)])
def test_mask_consistency_equals_official_with_grads(B, K, h):
    g = torch.Generator().manual_seed(B * K + h)
    p1 = _probs(B, K + 1, h, h + 1, g)
    p2 = _probs(B, K + 1, (h + 1) // 2, (h + 2) // 2, g)                    # the coarse view 2
    labels = _labels(B, K, g)
    grads = []
    for fn in (official_mask_reg_loss, mask_consistency_loss):
        a, b = p1.clone().requires_grad_(True), p2.clone().requires_grad_(True)
        b_inv = inverse_view(b, a)
        loss = fn(a, b_inv, labels)
        loss.backward()
        grads.append((loss.detach(), a.grad, b.grad))
    for r, o, name in zip(grads[0], grads[1], ("loss", "d probs1", "d probs2"), strict=True):
        _assert_close(o, r, name)
    assert grads[1][1][:, 0].abs().max() == 0                                # background ignored
    absent = labels == 0
    assert grads[1][1][:, 1:][absent].abs().max() == 0                       # absent classes: no gradient


def test_mask_consistency_hand_values_and_reductions():
    p1 = torch.tensor([0.2, 0.5, 0.3, 0.0]).view(1, 4, 1, 1).repeat(2, 1, 2, 1)
    p2 = torch.tensor([0.6, 0.1, 0.1, 0.2]).view(1, 4, 1, 1).repeat(2, 1, 2, 1)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    # image 0: (0.4 + 0.2) on 2 pixels; image 1: 0.2 on 2 pixels; denominator B*K*h*w = 2*3*2*1 = 12
    total = 2 * 0.6 + 2 * 0.2
    _assert_close(mask_consistency_loss(p1, p2, labels), torch.tensor(total / 12))
    _assert_close(mask_consistency_loss(p1, p2, labels, reduction="sum"), torch.tensor(total))
    none = mask_consistency_loss(p1, p2, labels, reduction="none")
    assert none.shape == (2, 3, 2, 1)
    _assert_close(none[0, :, 0, 0], torch.tensor([0.4, 0.0, 0.2]))
    _assert_close(none[1, :, 0, 0], torch.tensor([0.0, 0.2, 0.0]))
    # labels of any numeric dtype
    _assert_close(mask_consistency_loss(p1, p2, labels.bool()), torch.tensor(total / 12))


def test_mask_consistency_gradcheck_and_module():
    g = torch.Generator().manual_seed(3)
    p1 = _probs(2, 4, 3, 3, g, torch.float64).requires_grad_(True)
    p2 = _probs(2, 4, 3, 3, g, torch.float64).requires_grad_(True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: mask_consistency_loss(a, b, labels), (p1, p2))
    for red in ("mean", "sum", "none"):
        mod = MaskConsistencyLoss(reduction=red)
        assert torch.equal(mod(p1, p2, labels), mask_consistency_loss(p1, p2, labels, reduction=red))
    assert "reduction='mean'" in repr(MaskConsistencyLoss())


def test_mask_consistency_errors():
    p = torch.rand(2, 4, 3, 3)
    with pytest.raises(ValueError, match="probs2_inv"):
        mask_consistency_loss(p, p[:, :, :2], torch.ones(2, 3))
    with pytest.raises(ValueError, match="labels"):
        mask_consistency_loss(p, p, torch.ones(2, 4))
    with pytest.raises(TypeError, match="probs1"):
        mask_consistency_loss(p.long(), p, torch.ones(2, 3))
    with pytest.raises(ValueError, match="reduction"):
        mask_consistency_loss(p, p, torch.ones(2, 3), reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        MaskConsistencyLoss(reduction="avg")


# ================================================================ code consistency (§3)
def _codes_with_ties(B, K, h, w, g):
    levels = torch.tensor([0.1, 0.3, 0.3, 0.5])
    c = levels[torch.randint(0, 4, (B, K, h, w), generator=g)]
    c[:, 1] = c[:, 0]                                                       # many exact ties at the max
    return c


def test_max_mask_equals_official_values_and_ties():
    g = torch.Generator().manual_seed(0)
    for c in (torch.softmax(torch.randn(2, 21, 7, 6, generator=g), 1), _codes_with_ties(2, 5, 7, 6, g)):
        assert torch.equal(max_mask(c), official_max_onehot(c))
    c = torch.tensor([0.4, 0.4, 0.2]).view(1, 3, 1, 1)
    assert max_mask(c).flatten().tolist() == pytest.approx([0.4, 0.4, 0.0])          # values, ties kept
    assert max_mask(c, keep_ties=False).flatten().tolist() == pytest.approx([0.4, 0.0, 0.0])
    c = _codes_with_ties(3, 6, 5, 4, g)
    single = max_mask(c, keep_ties=False)
    assert torch.equal((single != 0).sum(1), torch.ones(3, 5, 4, dtype=torch.long))  # one entry per token
    assert torch.equal(single.amax(1), c.amax(1))
    # gradient: identity on the kept entries, 0 elsewhere
    c = torch.softmax(torch.randn(2, 5, 3, 3, generator=g), 1).requires_grad_(True)
    up = torch.randn(2, 5, 3, 3, generator=g)
    (max_mask(c) * up).sum().backward()
    keep = c.detach() == c.detach().amax(1, keepdim=True)
    assert torch.equal(c.grad, up * keep)


def test_code_consistency_worked_cases():
    c1 = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1)
    agree = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
    disagree = torch.tensor([0.3, 0.6, 0.1]).view(1, 3, 1, 1)
    tie = torch.tensor([0.45, 0.45, 0.1]).view(1, 3, 1, 1)
    _assert_close(code_consistency_loss(c1, agree, reduction="sum"), torch.tensor(0.7 - 0.6))
    _assert_close(code_consistency_loss(c1, disagree, reduction="sum"), torch.tensor(0.7 + 0.6))
    _assert_close(code_consistency_loss(c1, disagree), torch.tensor((0.7 + 0.6) / 3))          # mean over K
    # ties kept: both maxima of the tied token count; keep_ties=False keeps only the first one
    _assert_close(code_consistency_loss(c1, tie, reduction="sum"), torch.tensor(0.25 + 0.45))
    _assert_close(code_consistency_loss(c1, tie, keep_ties=False, reduction="sum"), torch.tensor(0.25))
    # gradients: agreeing argmax -> +1 / -1 on the two maxima; disagreeing -> +1 on both (pushed down)
    a, b = c1.clone().requires_grad_(True), disagree.clone().requires_grad_(True)
    code_consistency_loss(a, b, reduction="sum").backward()
    assert a.grad.flatten().tolist() == [1.0, 0.0, 0.0] and b.grad.flatten().tolist() == [0.0, 1.0, 0.0]
    a, b = c1.clone().requires_grad_(True), agree.clone().requires_grad_(True)
    code_consistency_loss(a, b, reduction="sum").backward()
    assert a.grad.flatten().tolist() == [1.0, 0.0, 0.0] and b.grad.flatten().tolist() == [-1.0, 0.0, 0.0]


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_code_consistency_equals_official_with_grads(kind):
    g = torch.Generator().manual_seed(1)
    if kind == "random":
        c1 = torch.softmax(3 * torch.randn(2, 21, 17, 17, generator=g), 1)
        c2 = torch.softmax(3 * torch.randn(2, 21, 9, 9, generator=g), 1)
    else:
        c1, c2 = _codes_with_ties(2, 6, 9, 9, g), _codes_with_ties(2, 6, 9, 9, g)
    res = []
    for fn in (official_code_reg_loss, code_consistency_loss):
        a, b = c1.clone().requires_grad_(True), c2.clone().requires_grad_(True)
        loss = fn(a, inverse_view(b, a))
        loss.backward()
        res.append((loss.detach(), a.grad, b.grad))
    for r, o, name in zip(res[0], res[1], ("loss", "d codes1", "d codes2"), strict=True):
        _assert_close(o, r, name)


def test_code_consistency_gradcheck_reductions_module_errors():
    g = torch.Generator().manual_seed(5)
    c1 = torch.softmax(torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64), 1).requires_grad_(True)
    c2 = torch.softmax(torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64), 1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: code_consistency_loss(a, b), (c1, c2))
    none = code_consistency_loss(c1, c2, reduction="none")
    assert none.shape == c1.shape
    _assert_close(none.mean(), code_consistency_loss(c1, c2))
    _assert_close(none.sum(), code_consistency_loss(c1, c2, reduction="sum"))
    for kt in (True, False):
        for red in ("mean", "sum", "none"):
            mod = CodeConsistencyLoss(keep_ties=kt, reduction=red)
            assert torch.equal(mod(c1, c2), code_consistency_loss(c1, c2, keep_ties=kt, reduction=red))
    assert repr(CodeConsistencyLoss()).endswith("(keep_ties=True, reduction='mean')")
    with pytest.raises(ValueError, match="codes2_inv"):
        code_consistency_loss(c1, c2[:, :3])
    with pytest.raises(ValueError, match="codes1"):
        code_consistency_loss(c1[0], c2[0])
    with pytest.raises(TypeError, match="codes"):
        max_mask(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        CodeConsistencyLoss(reduction="x")


# ================================================================ nGWP (§4)
def _slrnet_logits(B, K, h, w, g, dtype=torch.float32, aux=False):
    fg = 3 * torch.randn(B, K, h, w, generator=g, dtype=dtype)
    bg = 1 - fg.amax(1, keepdim=True) if aux else torch.ones(B, 1, h, w, dtype=dtype)
    return torch.cat([bg, fg], 1)


@pytest.mark.parametrize("aux", [False, True])
def test_ngwp_equals_official_with_grads(aux):
    res = []
    for fn in (official_classifier_forward, ngwp_pooling):
        fg = (3 * torch.randn(2, 20, 21, 21, generator=torch.Generator().manual_seed(7))).requires_grad_(True)
        bg = 1 - fg.amax(1, keepdim=True) if aux else torch.ones_like(fg[:, :1])
        logits = torch.cat([bg, fg], 1)
        scores = fn(logits, logits.softmax(1))
        w = torch.randn(scores.shape, generator=torch.Generator().manual_seed(8))
        (scores * w).sum().backward()
        res.append((scores.detach(), fg.grad))
    assert res[1][0].shape == (2, 20)
    _assert_close(res[1][0], res[0][0], "scores")
    _assert_close(res[1][1], res[0][1], "d logits")


def test_ngwp_hand_values_terms_and_options():
    # one image, 2 pixels, 3 channels: explicit logits and probabilities (probs need not be a softmax here)
    logits = torch.tensor([[1.0, 1.0], [2.0, -1.0], [0.5, 3.0]]).view(1, 3, 1, 2)
    probs = torch.tensor([[0.5, 0.2], [0.3, 0.1], [0.2, 0.7]]).view(1, 3, 1, 2)
    out = ngwp_pooling(logits, probs, return_terms=True)
    assert isinstance(out, NGWPTerms)
    pooled = torch.tensor([(2.0 * 0.3 - 1.0 * 0.1) / 1.4, (0.5 * 0.2 + 3.0 * 0.7) / 1.9])
    m = torch.tensor([0.2, 0.45])
    penalty = (1 - m) ** 3 * torch.log(0.01 + m)
    _assert_close(out.pooled[0], pooled)
    _assert_close(out.penalty[0], penalty)
    _assert_close(out.scores[0], pooled + penalty)
    assert (out.penalty <= 0).all()
    full = ngwp_pooling(logits, probs, drop_background=False)
    assert full.shape == (1, 3)
    _assert_close(full[:, 1:], out.scores)
    _assert_close(full[0, 0], torch.tensor(1.0 * 0.7 / 1.7 + 0.65 ** 3 * math.log(0.36)))
    p2 = ngwp_pooling(logits, probs, focal_power=1.0, focal_eps=0.1)
    _assert_close(p2[0], pooled + (1 - m) * torch.log(0.1 + m))
    assert torch.equal(ngwp_score(logits, probs), out.scores)


def test_ngwp_gradcheck_module_half_errors():
    g = torch.Generator().manual_seed(2)
    logits = _slrnet_logits(2, 3, 3, 3, g, torch.float64).requires_grad_(True)
    probs = torch.rand(2, 4, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ngwp_pooling(a, b), (logits, probs))
    mod = NGWPPooling()
    assert torch.equal(mod(logits, probs), ngwp_pooling(logits, probs))
    mod = NGWPPooling(focal_power=2.0, focal_eps=0.05, drop_background=False, return_terms=True)
    ref = ngwp_pooling(logits, probs, focal_power=2.0, focal_eps=0.05, drop_background=False, return_terms=True)
    for a, b in zip(mod(logits, probs), ref, strict=True):
        assert torch.equal(a, b)
    assert "focal_power=2.0, focal_eps=0.05, drop_background=False" in repr(mod)
    x = _slrnet_logits(2, 5, 8, 8, g)
    half = ngwp_pooling(x.half(), x.softmax(1).half())
    assert half.dtype == torch.float32
    _assert_close(half, ngwp_pooling(x.half().float(), x.softmax(1).half().float()))
    with pytest.raises(ValueError, match="probs"):
        ngwp_pooling(x, x[:, :3].softmax(1))
    with pytest.raises(ValueError, match="focal_eps"):
        NGWPPooling(focal_eps=0.0)
    with pytest.raises(ValueError, match="focal_power"):
        ngwp_pooling(x, x, focal_power=-1.0)
    with pytest.raises(TypeError, match="logits"):
        ngwp_pooling(x.long(), x)


# ================================================================ gated class-balanced CE (§6)
def _pseudo_label(labels, H, W, g, drop=(), ignore_frac=0.2):
    """A label map containing background + every GT class (except those in ``drop``: (b, k) pairs, k = 0 for
    background), with ~``ignore_frac`` ignored pixels."""
    B, K = labels.shape
    target = torch.zeros(B, H, W, dtype=torch.long)
    for b in range(B):
        classes = [0] + (torch.nonzero(labels[b])[:, 0] + 1).tolist()
        classes = [k for k in classes if (b, k) not in drop]
        pick = torch.randint(0, len(classes), (H, W), generator=g) if classes else None
        target[b] = torch.tensor(classes)[pick] if classes else 255
    target[torch.rand(B, H, W, generator=g) < ignore_frac] = 255
    return target


def _official_ce(logits, target, labels):
    return official_balanced_mask_loss_ce(logits, label_map_to_onehot(target, logits.shape[1]), labels)


@pytest.mark.parametrize("h,H", [(11, 41), (21, 21)])
def test_gated_ce_equals_official_with_grads(h, H):
    g = torch.Generator().manual_seed(h + H)
    B, K = 5, 20
    labels = _labels(B, K, g, 1, 3)
    drop = {(1, int(torch.nonzero(labels[1])[0, 0]) + 1), (3, 0)}           # image 1 misses a class, 3 the bg
    target = _pseudo_label(labels, H, H, g, drop=drop)
    logits = 2 * torch.randn(B, K + 1, h, h, generator=g)
    res = []
    for fn in (_official_ce, lambda a, t, y: gated_class_balanced_ce(a, t, y, reduction="none")):
        x = logits.clone().requires_grad_(True)
        loss = fn(x, target, labels)
        loss.sum().backward()
        res.append((loss.detach(), x.grad))
    _assert_close(res[1][0], res[0][0], "per-image loss")
    _assert_close(res[1][1], res[0][1], "d logits")
    kept = res[1][0] != 0
    assert kept.tolist() == [True, False, True, False, True]
    assert (res[1][1][~kept] == 0).all()


def test_gated_ce_gate_drops_exactly_images_missing_a_class():
    g = torch.Generator().manual_seed(11)
    B, K = 8, 6
    labels = _labels(B, K, g, 1, 4)
    # per image: drop nothing / the background / one GT class / everything (all ignored)
    drops, expect_kept = set(), []
    for b in range(B):
        case = b % 4
        gt = (torch.nonzero(labels[b])[:, 0] + 1).tolist()
        if case == 1:
            drops.add((b, 0))
        elif case == 2:
            drops.add((b, gt[-1]))
        elif case == 3:
            drops.update({(b, 0), *((b, k) for k in gt)})
        expect_kept.append(case == 0)
    target = _pseudo_label(labels, 16, 16, g, drop=drops, ignore_frac=0.1)
    logits = torch.randn(B, K + 1, 16, 16, generator=g)
    gated = gated_class_balanced_ce(logits, target, labels, reduction="none")
    ungated = gated_class_balanced_ce(logits, target, labels, gate=False, reduction="none")
    assert ((gated != 0).tolist()) == expect_kept
    assert torch.equal(gated[torch.tensor(expect_kept)], ungated[torch.tensor(expect_kept)])
    assert (ungated[torch.tensor([b % 4 != 3 for b in range(B)])] > 0).all()
    assert (ungated[3::4] == 0).all()                                          # nothing labelled
    # official quirk: a class count comparison -- swapping a missing GT class for an absent one passes
    lab = torch.tensor([[1.0, 0.0, 0.0]])
    t = torch.tensor([[[0, 0], [2, 2]]])                                        # class 2 instead of class 1
    assert gated_class_balanced_ce(torch.randn(1, 4, 2, 2), t, lab, reduction="none") > 0


def test_gated_ce_hand_value_weights_and_ignored_pixels():
    # 1 image, 4x2 pixels: 4 background, 2 of class 1, 2 ignored -> N = 6, w0 = 2/7, w1 = 4/7; HW = 8
    logits = torch.randn(1, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[[0, 0], [0, 0], [1, 1], [255, 255]]])
    labels = torch.tensor([[1, 0]])
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")[0]
    expected = (2 / 7 * ce[:2].sum() + 4 / 7 * ce[2].sum()) / 8
    _assert_close(gated_class_balanced_ce(logits, target, labels), expected)
    # ignore_index other than 255
    _assert_close(gated_class_balanced_ce(logits, target.masked_fill(target == 255, -1), labels,
                                          ignore_index=-1), expected)


def test_gated_ce_gradcheck_reductions_module_errors():
    g = torch.Generator().manual_seed(4)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    target = _pseudo_label(labels, 7, 7, g)
    logits = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: gated_class_balanced_ce(x, target, labels), (logits,))
    none = gated_class_balanced_ce(logits, target, labels, reduction="none")
    assert none.shape == (2,)
    _assert_close(gated_class_balanced_ce(logits, target, labels), none.mean())
    _assert_close(gated_class_balanced_ce(logits, target, labels, reduction="sum"), none.sum())
    for gate in (True, False):
        for red in ("mean", "sum", "none"):
            mod = GatedClassBalancedCE(gate=gate, reduction=red)
            assert torch.equal(mod(logits, target, labels),
                               gated_class_balanced_ce(logits, target, labels, gate=gate, reduction=red))
    assert repr(GatedClassBalancedCE()).endswith("(gate=True, ignore_index=255, reduction='mean')")
    half = gated_class_balanced_ce(logits.detach().half(), target, labels)
    assert half.dtype == torch.float32
    bad = target.clone()
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match="target"):
        gated_class_balanced_ce(logits, bad, labels)
    with pytest.raises(TypeError, match="target"):
        gated_class_balanced_ce(logits, target.float(), labels)
    with pytest.raises(ValueError, match="labels"):
        gated_class_balanced_ce(logits, target, labels[:, :2])
    with pytest.raises(ValueError, match="target"):
        gated_class_balanced_ce(logits, target[:1], labels)
    with pytest.raises(ValueError, match="reduction"):
        GatedClassBalancedCE(reduction="batch")


# ================================================================ fused paths (selected channels, per-token maxima,
# separable resize backward) against the official formulation and PyTorch's own kernels
def test_inverse_view_backward_equals_the_interpolation_kernel():
    g = torch.Generator().manual_seed(11)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        for src, dst in (((40, 40), (81, 81)), ((5, 7), (9, 4)), ((1, 3), (4, 1)), ((6, 6), (6, 6))):
            x = torch.randn(3, 2, *src, generator=g, dtype=dtype)
            flip = torch.tensor([True, False, True])
            a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            ya = inverse_view(a, dst, flip=flip)
            yb = F.interpolate(torch.where(flip[:, None, None, None], b.flip(-1), b), size=dst, mode="bilinear",
                               align_corners=True)
            assert torch.equal(ya, yb)                                        # the kernel's forward
            up = torch.randn(ya.shape, generator=g, dtype=dtype)
            (ya * up).sum().backward()
            (yb * up).sum().backward()
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=tol)
    x = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: inverse_view(t, (5, 6), flip=True), (x,))
    assert torch.autograd.gradgradcheck(lambda t: inverse_view(t, (5, 6)), (x,))


def test_mask_consistency_selected_channels_and_empty_selection():
    g = torch.Generator().manual_seed(12)
    p1, p2 = _probs(3, 5, 6, 7, g), _probs(3, 5, 6, 7, g)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])  # one empty image
    for red in ("mean", "sum"):
        res = []
        for fn in (official_mask_reg_loss, mask_consistency_loss):
            a, b = p1.clone().requires_grad_(True), p2.clone().requires_grad_(True)
            loss = fn(a, b, labels) if fn is official_mask_reg_loss else fn(a, b, labels, reduction=red)
            if fn is official_mask_reg_loss and red == "sum":
                loss = loss * labels.numel() * 6 * 7                        # official mean -> sum
            loss.backward()
            res.append((loss.detach(), a.grad, b.grad))
        for r, o, name in zip(res[0], res[1], ("loss", "d probs1", "d probs2"), strict=True):
            torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-6, msg=lambda m, n=name, red=red: f"{red} {n}: {m}")
    a = p1.clone().requires_grad_(True)
    loss = mask_consistency_loss(a, p2, torch.zeros(3, 4))                  # no class present: 0, zero gradient
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(a.grad, torch.zeros_like(a))


def _transcribed_code_loss(c1, c2, keep_ties, reduction):
    """slrnet.md §3 transcribed: L1 between the value-kept max masks (all ties, or the first maximum)."""
    def mu(c):
        if keep_ties:
            return c * (c == c.amax(1, keepdim=True))
        return c * F.one_hot(c.argmax(1), c.shape[1]).movedim(-1, 1)
    diff = (mu(c1) - mu(c2)).abs()
    return diff.mean() if reduction == "mean" else diff.sum()


@pytest.mark.parametrize("keep_ties", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_code_consistency_ties_negative_codes_against_transcription(keep_ties, reduction):
    """Partially shared tied maxima, negative and zero maxima (sign of m), first-maximum option."""
    g = torch.Generator().manual_seed(13)
    levels = torch.tensor([-0.5, -0.2, 0.0, 0.3])
    c1 = levels[torch.randint(0, 4, (2, 5, 6, 6), generator=g)]
    c2 = levels[torch.randint(0, 4, (2, 5, 6, 6), generator=g)]
    c2[:, :, :3] = torch.softmax(torch.randn(2, 5, 3, 6, generator=g), 1)   # no ties in half of view 2
    res = []
    for fn in (_transcribed_code_loss, code_consistency_loss):
        a, b = c1.clone().requires_grad_(True), c2.clone().requires_grad_(True)
        loss = fn(a, b, keep_ties, reduction) if fn is _transcribed_code_loss else \
            fn(a, b, keep_ties=keep_ties, reduction=reduction)
        loss.backward()
        res.append((loss.detach(), a.grad, b.grad))
    for r, o, name in zip(res[0], res[1], ("loss", "d codes1", "d codes2"), strict=True):
        torch.testing.assert_close(o, r, rtol=1e-6, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    if keep_ties:
        a, b = c1.clone().requires_grad_(True), c2.clone().requires_grad_(True)
        (official_code_reg_loss(a, b) * (1 if reduction == "mean" else c1.numel())).backward()
        torch.testing.assert_close(res[1][1], a.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(res[1][2], b.grad, rtol=0, atol=1e-6)


def test_consistency_losses_retained_graph_second_backward_is_equal():
    """The fused code loss turns its forward buffers into the gradients once; a retained graph recomputes."""
    g = torch.Generator().manual_seed(14)
    c1, c2 = torch.softmax(torch.randn(2, 5, 6, 6, generator=g), 1), _codes_with_ties(2, 5, 6, 6, g)
    p1, p2 = _probs(2, 5, 6, 6, g), _probs(2, 5, 3, 3, g)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    leaves = [t.clone().requires_grad_(True) for t in (c1, c2, p1, p2)]
    loss = code_consistency_loss(leaves[0], leaves[1]) + mask_consistency_loss(
        leaves[2], inverse_view(leaves[3], leaves[2]), labels)
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    second = torch.autograd.grad(loss, leaves)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
