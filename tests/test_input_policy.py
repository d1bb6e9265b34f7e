"""The shared input policy of the public losses and pseudo-label components (docs/conventions.rst).

* image-level labels: every entry exactly 0 or 1 -> otherwise ValueError naming the argument and the values;
* integer targets: any integer dtype; values in [0, C) or ignore_index -> otherwise ValueError;
* empty batch: 0 with a graph for 'mean'/'sum', an empty tensor for 'none';
* NaN: propagates through differentiable inputs; rejected where it would become a decision or be stored.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.losses import (
    BalancedSegmentationLoss,
    PatchContrastLoss,
    SelfCorrespondenceDistillation,
    SwappedAssignmentLoss,
    balanced_segmentation_loss,
    cam_to_seg_loss,
    seg_to_cam_loss,
    swapped_assignment_loss,
)
from wsseg.utils.validation import (
    check_class_target,
    check_finite,
    check_labels,
    check_unit_range,
    empty_loss,
)


def _swap_inputs(B=2, K=3, H=8, h=4):
    g = torch.Generator().manual_seed(0)
    seg = torch.randn(B, K + 1, h, h, generator=g, requires_grad=True)
    cam = torch.randn(B, K, h, h, generator=g, requires_grad=True)
    cpl = torch.randint(0, K + 1, (B, H, H), generator=g)
    teacher = torch.randn(B, K + 1, H, H, generator=g)
    labels = torch.ones(B, K)
    return seg, cam, cpl, teacher, labels


# ------------------------------------------------------------------ validation helpers
@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (-1.0, "-1.0"), (2.0, "2.0"), (0.5, "0.5")])
def test_check_labels_rejects_non_binary_values(bad, shown):
    labels = torch.ones(2, 3)
    labels[1, 2] = bad
    with pytest.raises(ValueError, match=rf"my_labels: expected image-level labels in \{{0, 1\}}.*{shown}"):
        check_labels(labels, "my_labels", 2, 3)
    assert check_labels(labels, "my_labels", 2, 3, values=False) is labels    # shape-only check still passes


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int32, torch.int64, torch.float16, torch.float32])
def test_check_labels_accepts_binary_of_any_dtype(dtype):
    labels = torch.tensor([[1, 0, 1], [0, 0, 0]]).to(dtype)
    assert check_labels(labels, "labels", 2, 3) is labels


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_check_class_target_any_integer_dtype(dtype):
    t = torch.tensor([[0, 2, 255]]).to(dtype) if dtype != torch.int16 else torch.tensor([[0, 2, 255]], dtype=dtype)
    out = check_class_target(t, "target", 3, 255)
    assert out.dtype == torch.int64 and out.tolist() == [[0, 2, 255]]


def test_check_class_target_out_of_range():
    t = torch.tensor([[0, 99, -3, 255, 3]])
    with pytest.raises(ValueError, match=r"tgt: expected class indices in \[0, 3\).*ignore_index=255, got values "
                                         r"\[-3, 3, 99\]"):
        check_class_target(t, "tgt", 3, 255)


def test_check_finite_and_unit_range():
    with pytest.raises(ValueError, match="x: expected finite values, got 1 NaN and 1 infinite"):
        check_finite(torch.tensor([0.0, float("nan"), float("inf")]), "x")
    check_unit_range(torch.tensor([0.0, 1.005]), "cam", "a CAM")        # tolerance 0.01
    with pytest.raises(ValueError, match=r"cam: expected values in \[0, 1\] \(a CAM\), got values in \[0, 3\]"):
        check_unit_range(torch.tensor([0.0, 3.0]), "cam", "a CAM")
    with pytest.raises(ValueError, match="cam: expected finite values.*1 NaN"):
        check_unit_range(torch.tensor([0.5, float("nan")]), "cam", "a CAM")


def test_empty_loss_keeps_graph():
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    loss = empty_loss(x, "mean", ())
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert empty_loss(x, "none", (0, 4, 4)).shape == (0, 4, 4)


# ------------------------------------------------------------------ SwappedAssignmentLoss
@pytest.mark.parametrize("bad", [float("nan"), -1.0, 2.0])
def test_swapped_assignment_rejects_bad_labels(bad):
    seg, cam, cpl, teacher, labels = _swap_inputs()
    labels[0, 1] = bad
    with pytest.raises(ValueError, match=r"labels: expected image-level labels in \{0, 1\}"):
        SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels, cpl)


def test_swapped_assignment_target_out_of_range_names_cpl():
    seg, cam, cpl, teacher, labels = _swap_inputs(K=3)
    cpl[0, 0, 0] = 99
    with pytest.raises(ValueError, match=r"cpl: expected class indices in \[0, 4\).*got values \[99\]"):
        SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels)
    aux = cpl.clone()
    cpl[0, 0, 0] = 255                                                       # ignore_index is fine
    with pytest.raises(ValueError, match=r"cpl_aux: expected class indices in \[0, 4\).*\[99\]"):
        SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels, aux)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_swapped_assignment_any_integer_cpl(dtype):
    seg, cam, cpl, teacher, labels = _swap_inputs()
    ref = SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels, cpl)
    out = SwappedAssignmentLoss()(seg, cam, cpl.to(dtype), teacher, labels, cpl.to(dtype))
    assert torch.equal(ref, out)


def test_swapped_assignment_empty_batch():
    seg, cam, cpl, teacher, labels = _swap_inputs(B=0)
    loss = SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels, cpl)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert seg.grad.shape == seg.shape and cam.grad.shape == cam.shape
    terms = swapped_assignment_loss(seg, cam, cpl, teacher, labels, reduction="none", return_terms=True)
    assert terms.c2s.shape == (0, 8, 8) and terms.s2c.shape == (0, 4, 4) and terms.total is None
    assert cam_to_seg_loss(seg, cpl).item() == 0.0
    assert seg_to_cam_loss(cam, torch.zeros(0, 4, 8, 8)).item() == 0.0


def test_swapped_assignment_weights_inside_and_in_repr():
    seg, cam, cpl, teacher, labels = _swap_inputs()
    fn = SwappedAssignmentLoss(return_terms=True)
    assert "weight_c2s=0.1" in repr(fn) and "weight_s2c=0.05" in repr(fn)
    t = fn(seg, cam, cpl, teacher, labels, cpl)
    assert torch.allclose(t.total, 0.1 * t.c2s + 0.05 * t.s2c)
    plain = SwappedAssignmentLoss(weight_c2s=1.0, weight_s2c=1.0)(seg, cam, cpl, teacher, labels, cpl)
    assert torch.allclose(plain, t.c2s + t.s2c)
    # the c2s term with aux = main equals the unweighted BalancedSegmentationLoss on the upsampled logits
    up = F.interpolate(seg, size=cpl.shape[-2:], mode="bilinear", align_corners=False)
    assert torch.allclose(t.c2s, BalancedSegmentationLoss()(up, cpl))


# ------------------------------------------------------------------ BalancedSegmentationLoss
def test_balanced_target_out_of_range():
    logits = torch.randn(1, 3, 4, 4)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 99
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 3\).*got values \[99\]"):
        BalancedSegmentationLoss()(logits, target)
    target[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"got values \[-1\]"):
        balanced_segmentation_loss(logits, target)
    target[0, 0, 0] = 7
    assert torch.isfinite(balanced_segmentation_loss(logits, target, ignore_index=7))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_balanced_any_integer_target(dtype):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[0, 0] = 255
    assert torch.equal(balanced_segmentation_loss(logits, target.to(dtype)), balanced_segmentation_loss(logits, target))


def test_balanced_hand_value_and_empty_batch():
    # uniform logits over 3 classes: CE = log 3 for every pixel -> (1 - a) log 3 + a log 3 = log 3
    loss = balanced_segmentation_loss(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [2, 255]]]), eps=0.0)
    assert math.isclose(loss.item(), math.log(3), rel_tol=1e-6)
    logits = torch.randn(0, 3, 4, 4, requires_grad=True)
    for reduction in ("mean", "sum"):
        out = balanced_segmentation_loss(logits, torch.zeros(0, 8, 8, dtype=torch.long), eps=0.0, reduction=reduction)
        assert out.shape == () and out.item() == 0.0                     # eps = 0: not 0/0 = NaN
    out.backward()
    assert logits.grad.shape == logits.shape
    none = balanced_segmentation_loss(logits, torch.zeros(0, 8, 8, dtype=torch.long), reduction="none")
    assert none.shape == (0, 8, 8)


def test_balanced_nan_logits_propagate():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = float("nan")
    assert torch.isnan(balanced_segmentation_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long)))


def test_balanced_first_docstring_line_says_unweighted():
    assert "unweighted" in BalancedSegmentationLoss.__doc__.splitlines()[0]
    assert "weighted inside" in SwappedAssignmentLoss.__doc__.splitlines()[0]


# ------------------------------------------------------------------ PatchContrastLoss
def test_patch_contrast_nan_confidence_is_rejected():
    emb = torch.randn(1, 4, 2)
    labels = torch.tensor([[0, 0, 1, 1]])
    conf = torch.tensor([[0.9, float("nan"), 0.9, 0.9]])
    with pytest.raises(ValueError, match="confidence: expected finite values.*min_confidence.*1 NaN"):
        PatchContrastLoss(min_confidence=0.5)(emb, labels, conf)


def test_patch_contrast_empty_batch():
    emb = torch.randn(0, 4, 2, requires_grad=True)
    labels = torch.zeros(0, 4, dtype=torch.long)
    loss = PatchContrastLoss()(emb, labels)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert emb.grad.shape == emb.shape
    assert PatchContrastLoss(reduction="none")(emb, labels).shape == (0,)
    assert PatchContrastLoss(scope="batch")(emb, labels).item() == 0.0


# ------------------------------------------------------------------ SelfCorrespondenceDistillation
def test_scd_empty_batch():
    s1 = torch.randn(0, 4, 8, 8, requires_grad=True)
    s2 = torch.randn(0, 4, 3, 3, requires_grad=True)
    loss = SelfCorrespondenceDistillation(num_samples=4)(torch.rand(0, 3, 8, 8), torch.rand(0, 3, 3, 3), s1, s2)
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert s1.grad.shape == s1.shape and s2.grad.shape == s2.shape
    none = SelfCorrespondenceDistillation(num_samples=4, reduction="none")(
        torch.rand(0, 3, 8, 8), torch.rand(0, 3, 3, 3), s1, s2)
    assert none.shape == (0, 16, 16)


def test_scd_bad_labels_with_mask_absent_classes():
    t = torch.rand(1, 3, 8, 8)
    labels = torch.tensor([[1.0, 2.0, 0.0]])
    with pytest.raises(ValueError, match=r"labels: expected image-level labels in \{0, 1\}.*2.0"):
        SelfCorrespondenceDistillation(num_samples=4, mask_absent_classes=True)(
            t, t, torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8), labels=labels)


# ------------------------------------------------------------------ the other losses: empty batch -> 0, no NaN
def _empty_cases():
    from wsseg.losses import (
        code_consistency_loss,
        dense_energy_loss,
        equivariance_loss,
        gated_class_balanced_ce,
        mask_consistency_loss,
        pooled_bce,
    )

    K = 3
    return {
        "code_consistency_loss": lambda x: code_consistency_loss(x[:, :4], torch.rand(0, 4, 4, 4)),
        "equivariance_loss": lambda x: equivariance_loss(x.softmax(1), torch.rand(0, K + 1, 4, 4).softmax(1)),
        "gated_class_balanced_ce": lambda x: gated_class_balanced_ce(x, torch.zeros(0, 4, 4, dtype=torch.long),
                                                                     torch.ones(0, K)),
        "mask_consistency_loss": lambda x: mask_consistency_loss(x.softmax(1), torch.rand(0, K + 1, 4, 4),
                                                                 torch.ones(0, K)),
        "pooled_bce": lambda x: pooled_bce(x.amax(dim=(2, 3)).sigmoid(), torch.ones(0, K + 1)),
        "dense_energy_loss": lambda x: dense_energy_loss(x.softmax(1), torch.rand(0, 3, 4, 4) * 255,
                                                         torch.ones(0, 4, 4, dtype=torch.bool),
                                                         torch.zeros(0, 4, 4, dtype=torch.long)),
    }


@pytest.mark.parametrize("name", list(_empty_cases()))
def test_other_losses_empty_batch_give_zero_not_nan(name):
    x = torch.randn(0, 4, 4, 4, requires_grad=True)
    loss = _empty_cases()[name](x)
    assert loss.shape == () and loss.item() == 0.0, name
    loss.backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_cam_contrastive_separation_target_out_of_range():
    from wsseg.losses import cam_contrastive_separation

    cpl = torch.tensor([[[0, 1], [9, 255]]], dtype=torch.int32)
    with pytest.raises(ValueError, match=r"cpl: expected class indices in \[0, 3\).*got values \[9\]"):
        cam_contrastive_separation(torch.randn(1, 2, 2, 2), cpl, torch.ones(1, 2), margin=0.5)


def test_pooled_bce_soft_labels_policy():
    from wsseg.losses import pooled_bce

    pooled = torch.full((1, 3), 0.5)
    assert torch.isfinite(pooled_bce(pooled, torch.tensor([[1.0, 0.3, 0.0]])))   # soft targets (Keras)
    for bad in (float("nan"), 1.5, -0.2):
        with pytest.raises(ValueError, match=r"labels: expected soft labels in \[0, 1\]"):
            pooled_bce(pooled, torch.tensor([[1.0, bad, 0.0]]))
