"""Tests of SLRNet's PAMR pseudo label and its test-time post-processing (``wsseg.pseudo``)."""

from __future__ import annotations

import pytest
import torch

from tests.reference.official_slrnet_heads import official_postprocess, official_pseudo_label
from wsseg.pseudo import (
    SLRNetPostprocess,
    SLRNetPseudoLabel,
    slrnet_postprocess,
    slrnet_predicted_classes,
    slrnet_pseudo_label,
)


def _probs(rows):
    """(C, N) per-channel rows → probs (1, C, 1, N)."""
    t = torch.tensor(rows, dtype=torch.float32)
    return t.reshape(1, t.shape[0], 1, t.shape[1])


def _label(probs, labels, **kw):
    image = torch.zeros(probs.shape[0], 3, *probs.shape[-2:])
    return slrnet_pseudo_label(probs, image, torch.tensor(labels), pamr_iters=0, **kw)[0, 0].tolist()


# ------------------------------------------------------------------------------- hand-computed cases
def test_relative_thresholds_and_ambiguity():
    # bg max 1.0 -> t0 = 0.7; class 1 max 0.5 -> t1 = 0.3; class 2 max 0.15 -> 0.09 -> floor 0.2
    probs = _probs([[1.0, 0.75, 0.5, 0.1],
                    [0.0, 0.40, 0.5, 0.3],
                    [0.0, 0.00, 0.1, 0.15]])
    # px0 bg only; px1 bg (0.75 > 0.7) and class 1 (0.4 > 0.3): ambiguous; px2 class 1 only;
    # px3: 0.3 is not > 0.3 (strict) and 0.15 is under the floor -> nothing positive
    assert _label(probs, [[1, 1]]) == [0, 255, 1, 255]


def test_absent_classes_are_zeroed_before_thresholding():
    probs = _probs([[1.0, 0.75, 0.5, 0.1],
                    [0.0, 0.40, 0.5, 0.3],
                    [0.0, 0.00, 0.1, 0.15]])
    # class 1 absent: px1 is no longer ambiguous, px2 has no positive class
    assert _label(probs, [[0, 1]]) == [0, 0, 255, 255]


def test_floor_applies_to_background_and_foreground():
    # bg max 0.25 -> 0.175 -> floor 0.2; class max 0.3 -> 0.18 -> floor 0.2
    probs = _probs([[0.25, 0.21, 0.19, 0.0],
                    [0.0, 0.0, 0.0, 0.3]])
    assert _label(probs, [[1]]) == [0, 0, 255, 1]
    assert _label(probs, [[1]], min_thre=0.1) == [0, 0, 0, 1]


def test_background_and_foreground_factors_are_separate():
    probs = _probs([[1.0, 0.65, 0.0],
                    [0.0, 0.55, 1.0]])
    # defaults: bg 0.65 < 0.7, class 0.55 < 0.6 -> ignore
    assert _label(probs, [[1]]) == [0, 255, 1]
    assert _label(probs, [[1]], bg_factor=0.6) == [0, 0, 1]
    assert _label(probs, [[1]], fg_factor=0.5) == [0, 1, 1]
    assert _label(probs, [[1]], bg_factor=0.6, fg_factor=0.5) == [0, 255, 1]


def test_thresholds_are_per_image():
    a = _probs([[1.0, 0.8], [0.0, 0.0]])
    b = _probs([[0.5, 0.4], [0.0, 0.0]])         # 0.4 > 0.7 * 0.5
    probs = torch.cat([a, b])
    image = torch.zeros(2, 3, 1, 2)
    out = slrnet_pseudo_label(probs, image, torch.ones(2, 1), pamr_iters=0)
    assert out[:, 0].tolist() == [[0, 0], [0, 0]]
    b2 = _probs([[0.5, 0.3], [0.0, 0.0]])        # 0.3 < 0.35
    out = slrnet_pseudo_label(torch.cat([a, b2]), image, torch.ones(2, 1), pamr_iters=0)
    assert out[:, 0].tolist() == [[0, 0], [0, 255]]


def test_custom_ignore_index_and_dtype():
    probs = _probs([[1.0, 0.5], [0.0, 0.0]])
    out = slrnet_pseudo_label(probs, torch.zeros(1, 3, 1, 2), torch.ones(1, 1), pamr_iters=0, ignore_index=-1)
    assert out.dtype == torch.long and out.tolist() == [[[0, -1]]]


# ------------------------------------------------------------------------------ official formulation
@pytest.mark.parametrize("b,k,hw,HW", [(2, 4, (12, 12), (24, 24)), (3, 20, (11, 9), (41, 33))])
def test_matches_official_per_image_loop(b, k, hw, HW):
    torch.manual_seed(0)
    probs = (3 * torch.randn(b, k + 1, *hw)).softmax(dim=1)
    image = torch.rand(b, 3, *HW)
    labels = (torch.rand(b, k) < 0.4).float()
    labels[:, 0] = 1.0
    out = slrnet_pseudo_label(probs, image, labels)
    ref = official_pseudo_label(probs, image, labels)
    assert out.shape == (b, *HW) and out.dtype == torch.long
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    # not degenerate: several classes and ignored pixels
    assert (out == 255).any() and (out == 0).any() and ((out > 0) & (out < 255)).any()


def test_pamr_runs_at_the_feature_grid():
    """Refining at the image size instead (a plausible mistake) gives a different label."""
    torch.manual_seed(1)
    probs = (3 * torch.randn(1, 3, 10, 10)).softmax(dim=1)
    image = torch.rand(1, 3, 40, 40)
    labels = torch.ones(1, 2)
    out = slrnet_pseudo_label(probs, image, labels)
    up = torch.nn.functional.interpolate(probs, size=(40, 40), mode="bilinear", align_corners=True)
    wrong = slrnet_pseudo_label(up, image, labels)
    assert not torch.equal(out, wrong)


def test_no_gradient_and_batch_consistency():
    torch.manual_seed(2)
    probs = (2 * torch.randn(3, 4, 8, 8)).softmax(dim=1).requires_grad_(True)
    image = torch.rand(3, 3, 16, 16)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1]], dtype=torch.bool)
    out = slrnet_pseudo_label(probs, image, labels)
    assert not out.requires_grad
    for i in range(3):
        single = slrnet_pseudo_label(probs[i:i + 1], image[i:i + 1], labels[i:i + 1])
        torch.testing.assert_close(out[i:i + 1], single, rtol=0, atol=0)


def test_module_equals_function():
    torch.manual_seed(3)
    probs = (2 * torch.randn(2, 4, 8, 8)).softmax(dim=1)
    image = torch.rand(2, 3, 16, 16)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    mod = SLRNetPseudoLabel(bg_factor=0.65, fg_factor=0.5, min_thre=0.1, pamr_iters=3, pamr_dilations=(1, 2))
    ref = slrnet_pseudo_label(probs, image, labels, bg_factor=0.65, fg_factor=0.5, min_thre=0.1, pamr_iters=3,
                              pamr_dilations=(1, 2))
    torch.testing.assert_close(mod(probs, image, labels), ref, rtol=0, atol=0)
    text = repr(SLRNetPseudoLabel())
    assert "bg_factor=0.7" in text and "fg_factor=0.6" in text and "pamr_dilations=(1, 2, 4, 8, 12, 24)" in text


def test_pseudo_label_errors():
    probs, image, labels = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 8, 8), torch.ones(2, 2)
    with pytest.raises(ValueError, match="labels"):
        slrnet_pseudo_label(probs, image, torch.ones(2, 3))
    with pytest.raises(ValueError, match="image"):
        slrnet_pseudo_label(probs, torch.rand(2, 1, 8, 8), labels)
    with pytest.raises(ValueError, match="image"):
        slrnet_pseudo_label(probs, torch.rand(1, 3, 8, 8), labels)
    with pytest.raises(ValueError, match="probs"):
        slrnet_pseudo_label(probs[:, :1], image, labels[:, :0])
    with pytest.raises(TypeError, match="probs"):
        slrnet_pseudo_label(probs.long(), image, labels)
    with pytest.raises(ValueError, match="bg_factor"):
        SLRNetPseudoLabel(bg_factor=-0.1)
    with pytest.raises(ValueError, match="pamr_dilations"):
        SLRNetPseudoLabel(pamr_dilations=())
    with pytest.raises(TypeError, match="pamr_iters"):
        SLRNetPseudoLabel(pamr_iters=2.0)


# ---------------------------------------------------------------------------------- post-processing
def test_postprocess_background_power_hand_values():
    p = torch.tensor([0.5, 0.3, 0.2]).reshape(1, 3, 1, 1)
    q = slrnet_postprocess(p)
    torch.testing.assert_close(q.flatten(), torch.tensor([0.125, 0.3, 0.2]))
    assert p.argmax(1).item() == 0 and q.argmax(1).item() == 1       # bg^3 hands the pixel to the class
    torch.testing.assert_close(slrnet_postprocess(p, bg_pow=1.0), p)  # semi-supervised setting
    assert q.sum().item() != pytest.approx(1.0)                       # not renormalised


def test_postprocess_gt_labels():
    p = torch.tensor([0.2, 0.5, 0.3]).reshape(1, 3, 1, 1)
    q = slrnet_postprocess(p, labels=torch.tensor([[False, True]]))
    torch.testing.assert_close(q.flatten(), torch.tensor([0.008, 0.0, 0.3]))
    assert q.argmax(1).item() == 2


def test_predicted_classes_fp_cut_and_top_k():
    s = torch.logit(torch.tensor([[0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.29, 0.1]]))
    keep = slrnet_predicted_classes(s)
    assert keep.tolist() == [[True] * 6 + [False] * 3]                    # top 6 of the 7 confident
    keep = slrnet_predicted_classes(s, top_k=9)
    assert keep.tolist() == [[True] * 7 + [False] * 2]                    # 0.29 < fp_cut
    zero = torch.zeros(1, 3)                                               # sigmoid = 0.5 exactly
    assert slrnet_predicted_classes(zero, fp_cut=0.5).tolist() == [[False] * 3]   # strict >
    assert slrnet_predicted_classes(zero, fp_cut=0.49).tolist() == [[True] * 3]
    ties = torch.logit(torch.tensor([[0.9, 0.8, 0.8, 0.2]]))
    assert slrnet_predicted_classes(ties, top_k=2).tolist() == [[True, True, True, False]]  # ties kept
    assert slrnet_predicted_classes(ties, top_k=10).tolist() == [[True, True, True, False]]  # k clamped


def test_postprocess_matches_official_per_image():
    torch.manual_seed(0)
    probs = torch.randn(3, 21, 6, 7).softmax(dim=1)
    cls = 2 * torch.randn(3, 20)
    labels = (torch.rand(3, 20) < 0.2).float()
    torch.testing.assert_close(slrnet_postprocess(probs, cls_logits=cls), official_postprocess(probs, cls_pred=cls))
    torch.testing.assert_close(slrnet_postprocess(probs, labels=labels), official_postprocess(probs, labels))
    torch.testing.assert_close(slrnet_postprocess(probs, cls_logits=cls, fp_cut=0.1, top_k=3, bg_pow=1.0),
                               official_postprocess(probs, cls_pred=cls, fp_cut=0.1, topk_classes=3, bg_pow=1.0))


def test_postprocess_module_equals_function_and_errors():
    torch.manual_seed(1)
    probs, cls = torch.rand(2, 5, 4, 4), torch.randn(2, 4)
    post = SLRNetPostprocess(fp_cut=0.4, top_k=2, bg_pow=2.0)
    torch.testing.assert_close(post(probs, cls_logits=cls),
                               slrnet_postprocess(probs, cls_logits=cls, fp_cut=0.4, top_k=2, bg_pow=2.0))
    assert repr(post) == "SLRNetPostprocess(fp_cut=0.4, top_k=2, bg_pow=2.0)"
    with pytest.raises(ValueError, match="at most one"):
        slrnet_postprocess(probs, torch.ones(2, 4), cls)
    with pytest.raises(ValueError, match="labels"):
        slrnet_postprocess(probs, labels=torch.ones(2, 5))
    with pytest.raises(ValueError, match="cls_logits"):
        slrnet_postprocess(probs, cls_logits=torch.randn(2, 3))
    with pytest.raises(ValueError, match="top_k"):
        SLRNetPostprocess(top_k=0)
    with pytest.raises(ValueError, match="bg_pow"):
        SLRNetPostprocess(bg_pow=0.0)
    with pytest.raises(TypeError, match="probs"):
        slrnet_postprocess(probs.long())
