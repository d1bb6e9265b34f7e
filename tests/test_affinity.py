"""Tests for the AFA affinity components (common.md §5): head, label, loss, propagation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.layers import (
    AffinityFromAttention,
    AffinityPropagation,
    affinity_from_attention,
    affinity_propagation,
)
from wsseg.layers.affinity_propagation import token_grid_size
from wsseg.losses import AffinityLoss, affinity_loss
from wsseg.pseudo import AffinityLabel, affinity_label, radius_window


# ================================================================= references (loops, official style)
def loop_radius_mask(h: int, w: int, radius: int) -> torch.Tensor:
    """Re-formulation of the official O(N^2) loop that fills the square window mask."""
    mask = torch.zeros(h * w, h * w, dtype=torch.bool)
    for i in range(h * w):
        r, c = divmod(i, w)
        for r2 in range(max(0, r - radius), min(h, r + radius + 1)):
            for c2 in range(max(0, c - radius), min(w, c + radius + 1)):
                mask[i, r2 * w + c2] = True
                mask[r2 * w + c2, i] = True
    return mask


def loop_propagation(cam, aff, labels, h, w, radius, bkg_score=0.35):
    """Per-image loop with channel selection, as in the official propagation."""
    B, K, H, W = cam.shape
    small = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)
    z = torch.cat([torch.full((B, 1, h, w), bkg_score), small], dim=1)
    a = aff.clone()
    a[:, ~loop_radius_mask(h, w, radius)] = 0
    a = a ** 2
    a = a / (a.sum(dim=1, keepdim=True) + 0.1)
    out = torch.zeros(B, K + 1, h * w)
    for b in range(B):
        keys = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(labels[b])[:, 0] + 1])
        p = z[b].reshape(K + 1, -1)[keys].softmax(dim=0)
        out[b, keys] = p @ a[b]
    return F.interpolate(out.reshape(B, K + 1, h, w), size=(H, W), mode="bilinear", align_corners=False)


# ================================================================= AffinityFromAttention
def test_head_hand_values_and_symmetrize():
    attn = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[1.0, 1.0], [0.0, -1.0]]]])
    weight = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    bias = torch.tensor([0.5])
    out = affinity_from_attention(attn, weight, bias)
    expected = torch.sigmoid(torch.tensor([[-0.5, 0.5], [2.5, 4.5]]))  # a0 - a1 + 0.5
    assert torch.allclose(out[0], expected)
    sym = affinity_from_attention(attn, weight, bias, symmetrize=True)
    # (a0 + a0^T) - (a1 + a1^T) + 0.5 = [[0-2, 3-1], [3-1, 6+2]] + 0.5
    assert torch.allclose(sym[0], torch.sigmoid(torch.tensor([[-1.5, 2.5], [2.5, 8.5]])))


def test_head_module_equals_function_shape_range():
    torch.manual_seed(0)
    head = AffinityFromAttention(in_channels=16)
    x = torch.randn(2, 16, 12, 12)
    out = head(x)
    assert out.shape == (2, 12, 12) and out.min() > 0 and out.max() < 1
    assert torch.equal(out, affinity_from_attention(x, head.proj.weight, head.proj.bias))
    assert not torch.allclose(out, out.transpose(1, 2))  # TSCD: asymmetric
    sym = AffinityFromAttention(16, symmetrize=True)
    assert torch.allclose(sym(x), sym(x).transpose(1, 2))  # AFA: symmetric
    assert head.proj.bias is not None
    assert "symmetrize=False" in repr(head)


def test_head_init_kaiming_fan_out():
    torch.manual_seed(0)
    head = AffinityFromAttention(in_channels=20000)
    # kaiming normal, a = sqrt(5), fan_out = 1: std = sqrt(2 / (1 + 5)) / sqrt(1)
    assert abs(head.proj.weight.std().item() - math.sqrt(1 / 3)) < 0.015
    assert abs(head.proj.weight.mean().item()) < 0.015


def test_head_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(1, dtype=torch.float64, requires_grad=True)
    for sym in (False, True):
        assert torch.autograd.gradcheck(lambda x, w, b, sym=sym: affinity_from_attention(x, w, b, symmetrize=sym), (x, w, b))


def test_head_validation():
    head = AffinityFromAttention(4)
    with pytest.raises(ValueError, match="attn_logits"):
        head(torch.randn(4, 5, 5))
    with pytest.raises(ValueError, match="attn_logits"):
        head(torch.randn(1, 4, 5, 6))
    with pytest.raises(TypeError, match="attn_logits"):
        head(torch.ones(1, 4, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        head(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="in_channels"):
        AffinityFromAttention(0)


# ================================================================= affinity label
def test_radius_window_matches_loop():
    for h, w, r in [(4, 5, 1), (6, 3, 2), (5, 5, 8), (1, 7, 0)]:
        assert torch.equal(radius_window(h, w, r), loop_radius_mask(h, w, r))


def test_affinity_label_hand_example():
    # 4x4 label, stride 2 -> 2x2 tokens (nearest picks pixels (0,0), (0,2), (2,0), (2,2))
    y = torch.tensor([[[3, 9, 5, 9], [9, 9, 9, 9], [3, 9, 255, 9], [9, 9, 9, 9]]])
    a = affinity_label(y, stride=2, radius=1)
    # tokens [3, 5, 3, 255]
    assert a.dtype == torch.uint8
    assert a[0].tolist() == [[1, 0, 1, 255], [0, 1, 0, 255], [1, 0, 1, 255], [255, 255, 255, 255]]
    # radius 0: only the diagonal survives
    a0 = affinity_label(y, stride=2, radius=0)
    assert a0[0].tolist() == [[1, 255, 255, 255], [255, 1, 255, 255], [255, 255, 1, 255], [255] * 4]


def test_affinity_label_vit_stride_and_grid_size():
    y = torch.zeros(2, 28, 45, dtype=torch.long)
    y[:, 14:, :] = 4  # second token row is class 4
    a = affinity_label(y, stride=14, radius=8)  # grid (2, 3), N = 6
    assert a.shape == (2, 6, 6)
    rows = torch.tensor([0, 0, 0, 1, 1, 1])
    assert torch.equal(a[0], (rows[:, None] == rows[None, :]).to(torch.uint8))
    b = affinity_label(y, stride=14, radius=8, grid_size=(4, 3))
    assert b.shape == (2, 12, 12)


def test_affinity_label_matches_loop_reference_and_module():
    torch.manual_seed(0)
    y = torch.randint(0, 4, (2, 64, 80))
    y[y == 3] = 255
    a = affinity_label(y, stride=8, radius=3)
    small = y[:, ::8, ::8].flatten(1)  # nearest with an integer factor picks the top-left pixel
    window = loop_radius_mask(8, 10, 3)
    for b in range(2):
        for i in range(0, 80, 7):
            for j in range(80):
                if small[b, i] == 255 or small[b, j] == 255 or not window[i, j]:
                    assert a[b, i, j] == 255
                else:
                    assert a[b, i, j] == int(small[b, i] == small[b, j])
    assert torch.equal(AffinityLabel(stride=8, radius=3)(y), a)
    assert "radius=3" in repr(AffinityLabel(radius=3))


def test_affinity_label_validation():
    y = torch.zeros(1, 32, 32, dtype=torch.long)
    with pytest.raises(TypeError, match="label"):
        affinity_label(y.float())
    with pytest.raises(ValueError, match="label"):
        affinity_label(y[0])
    with pytest.raises(ValueError, match="label"):
        affinity_label(y, stride=64)
    with pytest.raises(ValueError, match="stride"):
        AffinityLabel(stride=0)
    with pytest.raises(ValueError, match="radius"):
        AffinityLabel(radius=-1)
    with pytest.raises(ValueError, match="ignore_index"):
        AffinityLabel(ignore_index=1)
    with pytest.raises(ValueError, match="ignore_index"):
        affinity_label(y, ignore_index=300)
    with pytest.raises(ValueError, match="radius"):
        radius_window(2, 2, -1)


# ================================================================= affinity loss
def _loss_example():
    pred = torch.tensor([[[0.9, 0.2, 0.6], [0.3, 0.8, 0.1], [0.5, 0.4, 0.7]]])
    target = torch.tensor([[[1, 0, 255], [0, 1, 1], [255, 0, 1]]], dtype=torch.uint8)
    return pred, target


def test_affinity_loss_hand_3x3():
    pred, target = _loss_example()
    # positives: .9 .8 .1 .7 -> sum(1 - p) = .1 + .2 + .9 + .3 = 1.5, n+ = 4
    # negatives: .2 .3 .4      -> sum(p) = .9, n- = 3
    expected = 0.5 * 1.5 / 5 + 0.5 * 0.9 / 4
    assert math.isclose(affinity_loss(pred, target).item(), expected, rel_tol=1e-6)
    assert math.isclose(affinity_loss(pred, target, reduction="sum").item(), 2.4, rel_tol=1e-6)
    none = affinity_loss(pred, target, reduction="none")
    assert torch.allclose(none, torch.tensor([[[0.1, 0.2, 0.0], [0.3, 0.2, 0.9], [0.0, 0.4, 0.3]]]))
    assert torch.equal(AffinityLoss()(pred, target), affinity_loss(pred, target))
    assert torch.equal(AffinityLoss(reduction="none")(pred, target), none)


def test_affinity_loss_counts_over_batch():
    pred, target = _loss_example()
    pred2 = torch.cat([pred, torch.full_like(pred, 0.5)])
    target2 = torch.cat([target, torch.zeros_like(target)])  # 9 extra negatives
    expected = 0.5 * 1.5 / 5 + 0.5 * (0.9 + 4.5) / 13
    assert math.isclose(affinity_loss(pred2, target2.long()).item(), expected, rel_tol=1e-6)


def test_affinity_loss_gradcheck_and_bf16():
    torch.manual_seed(0)
    pred = torch.rand(2, 4, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[target == 2] = 255
    for red in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda p, red=red: affinity_loss(p, target, reduction=red), (pred,))
    out = affinity_loss(pred.detach().bfloat16(), target)
    assert out.dtype == torch.float32


def test_affinity_loss_validation():
    pred, target = _loss_example()
    with pytest.raises(ValueError, match="target"):
        affinity_loss(pred, target[:, :2])
    with pytest.raises(TypeError, match="target"):
        affinity_loss(pred, target.float())
    with pytest.raises(TypeError, match="pred"):
        affinity_loss(pred.long(), target)
    with pytest.raises(ValueError, match="pred"):
        affinity_loss(pred[0], target[0])
    with pytest.raises(ValueError, match="reduction"):
        affinity_loss(pred, target, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        AffinityLoss(reduction="avg")
    with pytest.raises(ValueError, match="ignore_index"):
        AffinityLoss(ignore_index=0)


# ================================================================= propagation
def test_token_grid_size():
    assert token_grid_size(512, 512, 16, 1024) == (32, 32)
    assert token_grid_size(500, 375, 16, 32 * 24) == (32, 24)  # ceil (MiT)
    assert token_grid_size(230, 230, 14, 16 * 16) == (16, 16)  # floor (ViT)
    with pytest.raises(ValueError, match="aff"):
        token_grid_size(64, 64, 16, 15)


def test_propagation_hand_identity_affinity():
    # 1x2 image, stride 1 -> 2 tokens; identity affinity: A = I^2 / (1 + 0.1)
    cam = torch.tensor([[[[0.35, 0.35 + math.log(3.0)]]]])
    out = affinity_propagation(cam, torch.eye(2)[None], torch.ones(1, 1), stride=1, radius=8)
    # softmax([.35, .35]) = [.5, .5]; softmax([.35, .35 + ln 3]) = [.25, .75]
    expected = torch.tensor([[[[0.5, 0.25]], [[0.5, 0.75]]]]) / 1.1
    assert torch.allclose(out, expected, atol=1e-6)


def test_propagation_hand_window_and_column_normalisation():
    # 1x3 tokens, affinity all ones, radius 1: tokens 0 and 2 are not neighbours
    cam = torch.zeros(1, 1, 1, 3)
    out = affinity_propagation(cam, torch.ones(1, 3, 3), torch.ones(1, 1), stride=1, radius=1, bkg_score=0.0)
    # P = [.5, .5] everywhere; column sums of the windowed matrix: 2, 3, 2
    expected_row = torch.tensor([0.5 * 2 / 2.1, 0.5 * 3 / 3.1, 0.5 * 2 / 2.1])
    assert torch.allclose(out[0, 0, 0], expected_row) and torch.allclose(out[0, 1, 0], expected_row)


def test_propagation_matches_loop_reference_and_absent_channels():
    torch.manual_seed(0)
    cam = torch.rand(2, 6, 64, 48)
    aff = torch.rand(2, 12, 12)  # asymmetric: checks the column direction
    labels = torch.tensor([[1.0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0]])
    out = affinity_propagation(cam, aff, labels, stride=16, radius=1)
    ref = loop_propagation(cam, aff, labels, 4, 3, radius=1)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.all(out[:, 1:][labels == 0] == 0)
    assert torch.all(out[1].argmax(0) == 0)
    m = AffinityPropagation(stride=16, radius=1)
    assert torch.equal(m(cam, aff, labels), out)
    assert "bkg_score=0.35" in repr(m)


def test_propagation_radius_none_and_autocast():
    cam, aff, labels = torch.rand(1, 3, 32, 32), torch.rand(1, 4, 4), torch.ones(1, 3)
    assert torch.allclose(affinity_propagation(cam, aff, labels, radius=None),
                          affinity_propagation(cam, aff, labels, radius=8))  # 2x2 grid: window covers all
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = affinity_propagation(cam, aff.bfloat16(), labels)
    assert out.dtype == torch.float32


def test_propagation_validation():
    cam, aff, labels = torch.rand(1, 3, 32, 32), torch.rand(1, 4, 4), torch.ones(1, 3)
    with pytest.raises(ValueError, match="aff"):
        affinity_propagation(cam, torch.rand(1, 5, 5), labels)
    with pytest.raises(ValueError, match="aff"):
        affinity_propagation(cam, torch.rand(2, 4, 4), labels)
    with pytest.raises(ValueError, match="aff"):
        affinity_propagation(cam, torch.rand(1, 4, 5), labels)
    with pytest.raises(TypeError, match="aff"):
        affinity_propagation(cam, aff.long(), labels)
    with pytest.raises(ValueError, match="cam"):
        affinity_propagation(cam[0], aff, labels)
    with pytest.raises(ValueError, match="labels"):
        affinity_propagation(cam, aff, torch.ones(1, 4))
    with pytest.raises(ValueError, match="stride"):
        AffinityPropagation(stride=0)
    with pytest.raises(ValueError, match="radius"):
        AffinityPropagation(radius=-2)
    with pytest.raises(ValueError, match="power"):
        AffinityPropagation(power=0.0)
    with pytest.raises(ValueError, match="col_eps"):
        AffinityPropagation(col_eps=-0.1)
