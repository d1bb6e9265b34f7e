"""Tests for wsseg.losses.balanced_segmentation (common.md §6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.losses import BalancedSegmentationLoss, balanced_segmentation_loss


def _tiny():
    # C = 3, a 2x2 label with background, two foreground pixels and one ignored pixel.
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = 2.0   # pixel (0,0): z = (2, 0, 0), y = 0
    logits[0, 1, 1, 0] = 1.0   # pixel (1,0): z = (0, 1, 0), y = 2
    logits[0, 2, 1, 1] = 5.0   # pixel (1,1): ignored
    target = torch.tensor([[[0, 1], [2, 255]]])
    ce00 = math.log(math.e**2 + 2) - 2.0
    ce01 = math.log(3.0)
    ce10 = math.log(2 + math.e)
    return logits, target, (ce00, ce01, ce10)


def test_hand_computed_example():
    logits, target, (ce00, ce01, ce10) = _tiny()
    expected = 0.5 * ce00 / (1 + 1e-6) + 0.5 * (ce01 + ce10) / (2 + 1e-6)
    assert balanced_segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # fg_alpha weights the two terms
    a = 0.8
    expected_a = (1 - a) * ce00 + a * (ce01 + ce10) / 2
    assert balanced_segmentation_loss(logits, target, fg_alpha=a, eps=0.0).item() == pytest.approx(expected_a, rel=1e-6)


def test_reduction_none_and_sum():
    logits, target, (ce00, ce01, ce10) = _tiny()
    per_pixel = balanced_segmentation_loss(logits, target, reduction="none")
    expected = torch.tensor([[[ce00, ce01], [ce10, 0.0]]])
    assert per_pixel.shape == (1, 2, 2)
    assert torch.allclose(per_pixel, expected, atol=1e-6)
    total = balanced_segmentation_loss(logits, target, reduction="sum")
    assert total.item() == pytest.approx(ce00 + ce01 + ce10, rel=1e-6)


def test_empty_subset_contributes_zero():
    logits = torch.randn(2, 4, 3, 3)
    only_bg = torch.zeros(2, 3, 3, dtype=torch.long)
    ce = F.cross_entropy(logits, only_bg, reduction="none")
    loss = balanced_segmentation_loss(logits, only_bg)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.5 * ce.mean().item(), rel=1e-5)
    only_fg = torch.full((2, 3, 3), 3, dtype=torch.long)
    ce = F.cross_entropy(logits, only_fg, reduction="none")
    assert balanced_segmentation_loss(logits, only_fg).item() == pytest.approx(0.5 * ce.mean().item(), rel=1e-5)
    all_ignored = torch.full((2, 3, 3), 255, dtype=torch.long)
    assert balanced_segmentation_loss(logits, all_ignored).item() == 0.0


def test_counts_over_whole_batch():
    # bg pixels only in image 0 and fg only in image 1: each normalised by its batch-wide count
    logits = torch.randn(2, 3, 2, 2)
    target = torch.tensor([[[0, 0], [0, 255]], [[1, 2], [255, 255]]])
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    expected = 0.5 * ce[0].sum() / 3 + 0.5 * ce[1].sum() / 2
    assert torch.allclose(balanced_segmentation_loss(logits, target, eps=0.0), expected, atol=1e-6)


def test_weights_scale_ce_but_not_counts():
    logits, target, (ce00, ce01, ce10) = _tiny()
    weight = torch.tensor([[[2.0, 0.5], [0.0, 7.0]]])
    expected = 0.5 * 2.0 * ce00 + 0.5 * (0.5 * ce01 + 0.0 * ce10) / 2
    got = balanced_segmentation_loss(logits, target, weight, eps=0.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    none = balanced_segmentation_loss(logits, target, weight, reduction="none")
    assert torch.allclose(none, torch.tensor([[[2 * ce00, 0.5 * ce01], [0.0, 0.0]]]), atol=1e-6)
    # uniform weight c multiplies the loss by c (normalisation by counts, not by sum of weights)
    ones = balanced_segmentation_loss(logits, target)
    threes = balanced_segmentation_loss(logits, target, torch.full((1, 2, 2), 3.0))
    assert torch.allclose(threes, 3 * ones)


def test_logits_upsampled_to_label_size():
    logits = torch.randn(2, 5, 4, 4)
    target = torch.randint(0, 5, (2, 8, 8))
    target[0, :2] = 255
    for ac in (False, True):
        up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=ac)
        ref = balanced_segmentation_loss(up, target)
        got = balanced_segmentation_loss(logits, target, align_corners=ac)
        assert torch.allclose(got, ref, atol=1e-6)
    a = balanced_segmentation_loss(logits, target, align_corners=False)
    b = balanced_segmentation_loss(logits, target, align_corners=True)
    assert not torch.allclose(a, b)


def test_gradcheck():
    logits = torch.randn(2, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[[0, 1, 2], [255, 0, 2]], [[1, 1, 0], [2, 255, 0]]])
    target_up = torch.randint(0, 3, (2, 4, 6))
    weight = torch.rand(2, 2, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: balanced_segmentation_loss(x, target, weight), (logits,))
    assert torch.autograd.gradcheck(lambda x: balanced_segmentation_loss(x, target_up, align_corners=True),
                                    (logits,))


def test_class_equals_function_and_repr():
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 6, 6))
    weight = torch.rand(2, 6, 6)
    for red in ("mean", "sum", "none"):
        mod = BalancedSegmentationLoss(fg_alpha=0.3, align_corners=True, reduction=red)
        fun = balanced_segmentation_loss(logits, target, weight, fg_alpha=0.3, align_corners=True, reduction=red)
        assert torch.equal(mod(logits, target, weight), fun)
    assert "fg_alpha=0.3" in repr(BalancedSegmentationLoss(fg_alpha=0.3))


def test_ignore_index_option():
    logits = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [2, 7]]])
    a = balanced_segmentation_loss(logits, target, ignore_index=7)
    b = balanced_segmentation_loss(logits, torch.tensor([[[0, 1], [2, 255]]]))
    assert torch.allclose(a, b)


def test_validation_errors():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match="logits"):
        balanced_segmentation_loss(logits[0], target)
    with pytest.raises(TypeError, match="logits"):
        balanced_segmentation_loss(logits.long(), target)
    with pytest.raises(TypeError, match="target"):
        balanced_segmentation_loss(logits, target.float())
    with pytest.raises(ValueError, match="target"):
        balanced_segmentation_loss(logits, target[:1])
    with pytest.raises(ValueError, match="weight"):
        balanced_segmentation_loss(logits, target, torch.rand(2, 4, 5))
    with pytest.raises(TypeError, match="weight"):
        balanced_segmentation_loss(logits, target, torch.ones(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="fg_alpha"):
        balanced_segmentation_loss(logits, target, fg_alpha=1.5)
    with pytest.raises(ValueError, match="eps"):
        balanced_segmentation_loss(logits, target, eps=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        balanced_segmentation_loss(logits, target, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        BalancedSegmentationLoss(reduction="avg")
    with pytest.raises(ValueError, match="fg_alpha"):
        BalancedSegmentationLoss(fg_alpha=-0.1)
