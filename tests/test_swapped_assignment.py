"""Tests for CoSA's swapped-assignment loss (wsseg.losses.swapped_assignment) and its CPL builder (cosa.md §3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_cosa_losses import (
    official_cam2mask,
    official_cam_loss,
    official_seg_loss,
    official_swapped_assignment,
)
from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label
from wsseg.losses import (
    SwappedAssignmentLoss,
    SwappedAssignmentTerms,
    balanced_segmentation_loss,
    cam_to_seg_loss,
    seg_to_cam_loss,
    swapped_assignment_loss,
)
from wsseg.pseudo import dual_threshold_pseudo_label, seg_pseudo_label
from wsseg.utils.box import box_to_mask

ATOL = 1e-5


# ================================================================ CPL builder (cosa.md §3.2)
def _cams(B, K, H, W, kind, seed):
    """Label-validated normalised CAMs; ``kind="ties"`` gives quantised CAMs with equal values across classes
    and values exactly at the thresholds (argmax ties after the softmax and the interpolations)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(B, K)
    for b in range(B):
        labels[b, torch.randperm(K, generator=g)[:min(K, b)]] = 1       # 0, 1, 2, 3, ... present classes
    if kind == "random":
        cam = F.interpolate(torch.rand(B, K, H // 8, W // 8, generator=g), size=(H, W), mode="bilinear",
                            align_corners=False)
        cam = (cam - cam.amin((2, 3), keepdim=True)) / (cam.amax((2, 3), keepdim=True)
                                                        - cam.amin((2, 3), keepdim=True) + 1e-5)
    else:
        levels = torch.tensor([0.0, 0.2, 0.25, 0.5, 0.7, 0.7, 0.9])
        idx = torch.randint(0, len(levels), (B, K, H // 4, W // 4), generator=g)
        cam = F.interpolate(levels[idx], size=(H, W), mode="bilinear", align_corners=False)
        cam[:, 1::2] = cam[:, ::2][:, :cam[:, 1::2].shape[1]]              # classes with identical maps
    boxes = torch.tensor([[0, H, 0, W], [2, H - 3, 0, W - 5], [0, H // 2, 3, W], [1, H, 1, W - 1],
                          [0, H, 0, W], [3, H, 0, W - 2]])[:B]
    return cam * labels[:, :, None, None], labels, boxes


def test_cosa_cam2mask_equals_afa_formulation():
    # recorded: CoSA's cam2mask without refiner (float map, crop boxes) == AFA's refine_cams_with_bkg_v2
    # formulation of tests/reference/official_pseudo_label.py (valid mask) — no separate reference needed
    for kind, seed in (("random", 0), ("ties", 1)):
        cam, labels, boxes = _cams(6, 20, 40, 36, kind, seed)
        cosa = official_cam2mask(cam, labels, boxes, 0.7, 0.2)
        afa = reference_dual_threshold_pseudo_label(cam, labels, valid=box_to_mask(boxes, 40, 36), high=0.7,
                                                    low=0.2)
        assert cosa.dtype == torch.float32
        assert torch.equal(cosa.long(), afa)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize("K,H,W", [(20, 40, 36), (20, 160, 144), (2, 160, 144), (80, 32, 24)])
def test_cpl_builder_bit_exact(threads, kind, K, H, W):
    # small outputs and K+1 = 3 with one thread take PyTorch's channels-last CPU resize kernel, larger ones the
    # generic kernel; both must give exactly the official labels, also with ties (the general vectorised path,
    # which resizes all images' channels in one call, differs from the official loop on these tie inputs)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cam, labels, boxes = _cams(6, K, H, W, kind, seed=K + H)      # 0 to 5 present classes
        valid = box_to_mask(boxes, H, W)
        for high, low in ((0.7, 0.2), (0.7, 0.25), (0.5, 0.5)):
            ref = official_cam2mask(cam, labels, boxes, high, low).long()
            for chunk_pixels in (None, 1):
                out = dual_threshold_pseudo_label(cam, labels, valid=valid, high=high, low=low, down_scale=2,
                                                  chunk_pixels=chunk_pixels)
                assert out.dtype == torch.int64
                assert torch.equal(out, ref), (high, low, chunk_pixels, (out != ref).sum().item())
    finally:
        torch.set_num_threads(old)


def test_cpl_builder_no_present_class_and_down_scale():
    cam, labels, boxes = _cams(3, 5, 24, 24, "random", 3)
    labels.zero_()
    out = dual_threshold_pseudo_label(cam, labels, valid=box_to_mask(boxes, 24, 24), high=0.7, low=0.2)
    assert torch.equal(out, official_cam2mask(cam, labels, boxes, 0.7, 0.2).long())
    cam, labels, boxes = _cams(3, 6, 30, 27, "ties", 4)
    for ds in (1, 3):
        out = dual_threshold_pseudo_label(cam, labels, valid=box_to_mask(boxes, 30, 27), high=0.7, low=0.2,
                                          down_scale=ds)
        assert torch.equal(out, official_cam2mask(cam, labels, boxes, 0.7, 0.2, downscale=ds).long())


# ================================================================ losses (cosa.md §3.3–3.5)
def _loss_inputs(B=2, K=5, h=4, H=16, hc=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hc = h if hc is None else hc
    seg = torch.randn(B, K + 1, h, h, generator=g, dtype=dtype)
    cam = 2 * torch.randn(B, K, hc, hc, generator=g, dtype=dtype)
    cpl = torch.randint(0, K + 1, (B, H, H), generator=g)
    cpl[:, : H // 4] = 255
    aux = torch.randint(0, K + 1, (B, H, H), generator=g)
    aux[:, -2:] = 255
    teacher = 3 * torch.randn(B, K + 1, H, H, generator=g, dtype=dtype)
    labels = (torch.rand(B, K, generator=g) < 0.5).float()
    return seg, cam, cpl, aux, teacher, labels


@pytest.mark.parametrize("fg_alpha", [0.5, 0.2])
def test_c2s_matches_official(fg_alpha):
    seg, _, cpl, aux, _, _ = _loss_inputs(K=20, h=7, H=56)
    up = F.interpolate(seg, size=(56, 56), mode="bilinear", align_corners=False)
    ref_main = official_seg_loss(up, cpl, fg_alpha=fg_alpha)
    ref_aux = official_seg_loss(up, aux, fg_alpha=fg_alpha)
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, fg_alpha=fg_alpha), ref_main, rtol=0, atol=ATOL)
    for beta in (0.5, 0.3, 1.0):
        got = cam_to_seg_loss(seg, cpl, aux, fg_alpha=fg_alpha, aux_alpha=beta)
        torch.testing.assert_close(got, (1 - beta) * ref_main + beta * ref_aux, rtol=0, atol=ATOL)


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("hc,H", [(7, 112), (28, 448), (7, 45), (12, 10)])
def test_s2c_matches_official(relu, hc, H):
    _, cam, _, _, teacher, labels = _loss_inputs(B=2, K=20, h=4, H=H, hc=hc, seed=hc + H)
    spl = seg_pseudo_label(teacher, labels)
    torch.testing.assert_close(seg_to_cam_loss(cam, spl, relu_cam=relu), official_cam_loss(cam, spl, is_relu=relu),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["before_softmax", "after_softmax"])
@pytest.mark.parametrize("with_aux", [True, False])
def test_swapped_assignment_matches_official(mode, with_aux):
    seg, cam, cpl, aux, teacher, labels = _loss_inputs(B=3, K=20, h=7, H=112)
    aux = aux if with_aux else None
    seg_ref, cam_ref, total_ref = official_swapped_assignment(seg, cam, cpl, aux, teacher, labels,
                                                              after_softmax=mode == "after_softmax")
    terms = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, spl_mask_mode=mode, return_terms=True)
    assert isinstance(terms, SwappedAssignmentTerms)
    torch.testing.assert_close(terms.c2s, seg_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(terms.s2c, cam_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(terms.total, total_ref, rtol=0, atol=ATOL)
    total = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, spl_mask_mode=mode)
    torch.testing.assert_close(total, total_ref, rtol=0, atol=ATOL)
    # the loss weights, hand-checked
    t2 = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, spl_mask_mode=mode, weight_c2s=1.0,
                                 weight_s2c=2.0)
    torch.testing.assert_close(t2, seg_ref + 2 * cam_ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("hc,H,W", [(28, 448, 448), (7, 50, 45), (9, 9, 9), (12, 10, 8), (5, 33, 64)])
def test_spl_on_cam_grid_equals_full_resolution_path(hc, H, W):
    # the SPL evaluated only at the bilinear taps == full-resolution SPL resized by F.interpolate
    g = torch.Generator().manual_seed(H)
    teacher = 0.02 * torch.randn(2, 21, H, W, generator=g)         # soft SPL: the resize really mixes values
    labels = (torch.rand(2, 20, generator=g) < 0.5).float()
    cam = torch.randn(2, 20, hc, hc + 1, generator=g)
    cpl = torch.zeros(2, H, W, dtype=torch.long)
    seg = torch.zeros(2, 21, 2, 2)
    for mode in ("before_softmax", "after_softmax"):
        fast = swapped_assignment_loss(seg, cam, cpl, teacher, labels, spl_mask_mode=mode, return_terms=True,
                                       reduction="none").s2c
        full = seg_to_cam_loss(cam, seg_pseudo_label(teacher, labels, mask_mode=mode), reduction="none")
        torch.testing.assert_close(fast, full, rtol=0, atol=1e-6)


def test_s2c_zero_gradient_for_non_positive_cam_and_log2_floor():
    _, cam, _, _, teacher, labels = _loss_inputs(B=2, K=6, h=4, H=32, hc=8)
    cam[:, :, :2] = 0.0                                             # exact zeros: ReLU kink, still no gradient
    cam.requires_grad_(True)
    spl = seg_pseudo_label(teacher, labels)
    seg_to_cam_loss(cam, spl).backward()
    nonpos = cam.detach() <= 0
    assert nonpos.any() and (~nonpos).any()
    assert torch.all(cam.grad[nonpos] == 0)
    assert torch.all(cam.grad[~nonpos] != 0)
    # targets 0 everywhere (background SPL): per-pixel loss >= log 2, = log 2 where all logits are <= 0
    bg = torch.zeros(2, 7, 32, 32)
    bg[:, 0] = 1
    per_pixel = seg_to_cam_loss(cam.detach(), bg, reduction="none")
    assert per_pixel.shape == (2, 8, 8)
    assert torch.all(per_pixel >= math.log(2) - 1e-7)
    torch.testing.assert_close(seg_to_cam_loss(-cam.detach().abs(), bg), torch.tensor(math.log(2)))
    # without the ReLU negatives are pushed below 0 and the floor disappears
    assert seg_to_cam_loss(-cam.detach().abs() - 1, bg, relu_cam=False) < math.log(2)


def test_gradcheck_float64():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs(B=2, K=3, h=3, H=6, hc=3, seed=5, dtype=torch.float64)
    seg.requires_grad_(True)
    weight = torch.rand(2, 6, 6, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda s: cam_to_seg_loss(s, cpl, aux, weight), (seg,))
    cam = cam.abs() + 0.1                                           # away from the ReLU kink
    cam[0, 0, 0, 0] = -0.7                                          # one negative logit (zero gradient)
    cam.requires_grad_(True)
    spl = seg_pseudo_label(teacher, labels)
    assert torch.autograd.gradcheck(lambda c: seg_to_cam_loss(c, spl), (cam,))
    assert torch.autograd.gradcheck(lambda s, c: swapped_assignment_loss(s, c, cpl, teacher, labels, aux),
                                    (seg, cam))


def test_reductions():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs(B=2, K=5, h=4, H=16, hc=4)
    up = F.interpolate(seg, size=(16, 16), mode="bilinear", align_corners=False)
    ce = lambda y: F.cross_entropy(up, y, ignore_index=255, reduction="none")  # noqa: E731
    none = cam_to_seg_loss(seg, cpl, aux, aux_alpha=0.3, reduction="none")
    assert none.shape == (2, 16, 16)
    torch.testing.assert_close(none, 0.7 * ce(cpl) + 0.3 * ce(aux), rtol=0, atol=1e-6)
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, aux, aux_alpha=0.3, reduction="sum"), none.sum())
    spl = seg_pseudo_label(teacher, labels)
    s_none = seg_to_cam_loss(cam, spl, reduction="none")
    assert s_none.shape == (2, 4, 4)
    torch.testing.assert_close(seg_to_cam_loss(cam, spl), s_none.mean())
    torch.testing.assert_close(seg_to_cam_loss(cam, spl, reduction="sum"), s_none.sum())
    terms = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, reduction="none", return_terms=True)
    assert terms.total is None and terms.c2s.shape == (2, 16, 16) and terms.s2c.shape == (2, 4, 4)
    s = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, reduction="sum", return_terms=True)
    torch.testing.assert_close(s.total, 0.1 * s.c2s + 0.05 * s.s2c)
    torch.testing.assert_close(s.c2s, terms.c2s.sum())


def test_cpl_aux_none_and_weight():
    seg, _, cpl, aux, _, _ = _loss_inputs(B=2, K=5, h=4, H=16)
    up = F.interpolate(seg, size=(16, 16), mode="bilinear", align_corners=False)
    main = balanced_segmentation_loss(up, cpl)
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl), main)                       # beta treated as 0
    assert torch.equal(cam_to_seg_loss(seg, cpl.to(torch.uint8), aux.to(torch.uint8)), cam_to_seg_loss(seg, cpl, aux))
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, aux, aux_alpha=0.0), main)
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, aux, aux_alpha=1.0), balanced_segmentation_loss(up, aux))
    # a constant weight scales the loss; zero weight on the foreground leaves (1 - alpha) * L_bg
    w2 = torch.full((2, 16, 16), 2.0)
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, aux, w2), 2 * cam_to_seg_loss(seg, cpl, aux))
    w_bg = (cpl == 0).float()
    bg_only = official_seg_loss(up, cpl, fg_alpha=0.0) * 0.5
    torch.testing.assert_close(cam_to_seg_loss(seg, cpl, None, w_bg), bg_only, rtol=0, atol=ATOL)


def test_module_equals_function_and_repr():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs()
    kw = dict(fg_alpha=0.4, aux_alpha=0.25, seg_temperature=0.1, spl_mask_mode="after_softmax", relu_cam=False,
              weight_c2s=0.3, weight_s2c=0.2)
    m = SwappedAssignmentLoss(**kw)
    assert torch.equal(m(seg, cam, cpl, teacher, labels, aux),
                       swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, **kw))
    mt = SwappedAssignmentLoss(return_terms=True)
    terms = mt(seg, cam, cpl, teacher, labels, aux)
    assert torch.equal(terms.total, SwappedAssignmentLoss()(seg, cam, cpl, teacher, labels, aux))
    r = repr(m)
    for s in ("fg_alpha=0.4", "aux_alpha=0.25", "seg_temperature=0.1", "'after_softmax'", "relu_cam=False",
              "weight_c2s=0.3", "weight_s2c=0.2", "reduction='mean'"):
        assert s in r


def test_gradients_flow_and_spl_is_detached():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs()
    seg.requires_grad_(True)
    cam.requires_grad_(True)
    teacher.requires_grad_(True)
    swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux).backward()
    assert seg.grad is not None and cam.grad is not None and teacher.grad is None


def test_autocast_bfloat16():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs(B=2, K=5, h=4, H=16)
    ref = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, return_terms=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = swapped_assignment_loss(seg, cam, cpl, teacher, labels, aux, return_terms=True)
        half = swapped_assignment_loss(seg.bfloat16().requires_grad_(True), cam.bfloat16(), cpl,
                                       teacher.bfloat16(), labels, aux, return_terms=True)
    assert got.total.dtype == torch.float32 and half.total.dtype == torch.float32
    torch.testing.assert_close(got.total, ref.total)
    torch.testing.assert_close(half.total, ref.total, rtol=0.02, atol=0.02)
    half.total.backward()


def test_errors():
    seg, cam, cpl, aux, teacher, labels = _loss_inputs(B=2, K=5, h=4, H=16)
    f = swapped_assignment_loss
    with pytest.raises(ValueError, match="cam_logits"):
        f(seg, cam[:, :-1], cpl, teacher, labels)                       # K mismatch
    with pytest.raises(ValueError, match="cam_logits"):
        f(seg, cam[:1], cpl, teacher, labels)                           # batch mismatch
    with pytest.raises(ValueError, match="teacher_seg_logits"):
        f(seg, cam, cpl, teacher[..., :-1], labels)                     # not at the CPL size
    with pytest.raises(ValueError, match="labels"):
        f(seg, cam, cpl, teacher, labels[:, :-1])
    with pytest.raises(ValueError, match="cpl_aux"):
        f(seg, cam, cpl, teacher, labels, aux[:, :-1])
    with pytest.raises(ValueError, match="cpl"):
        f(seg, cam, cpl[:1], teacher, labels)
    with pytest.raises(TypeError, match="cpl"):
        f(seg, cam, cpl.float(), teacher, labels)
    with pytest.raises(TypeError, match="seg_logits"):
        f(seg.long(), cam, cpl, teacher, labels)
    with pytest.raises(TypeError, match="cam_logits"):
        f(seg, cam.long(), cpl, teacher, labels)
    with pytest.raises(ValueError, match="spl_mask_mode|mask_mode"):
        f(seg, cam, cpl, teacher, labels, spl_mask_mode="sometimes")
    with pytest.raises(ValueError, match="reduction"):
        f(seg, cam, cpl, teacher, labels, reduction="avg")
    with pytest.raises(ValueError, match="return_terms"):
        f(seg, cam, cpl, teacher, labels, reduction="none")
    with pytest.raises(ValueError, match="aux_alpha"):
        cam_to_seg_loss(seg, cpl, aux, aux_alpha=1.5)
    with pytest.raises(ValueError, match="fg_alpha"):
        cam_to_seg_loss(seg, cpl, fg_alpha=-0.1)
    with pytest.raises(TypeError, match="weight"):
        cam_to_seg_loss(seg, cpl, weight=torch.ones(2, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="spl"):
        seg_to_cam_loss(cam, teacher[0])
    with pytest.raises(ValueError, match="cam_logits"):
        seg_to_cam_loss(cam, teacher[:, :-1])
    for kw in (dict(weight_c2s=-1.0), dict(aux_alpha=2.0), dict(seg_temperature=0.0), dict(fg_alpha=1.5),
               dict(spl_mask_mode="x"), dict(reduction="none"), dict(eps=-1.0)):
        with pytest.raises(ValueError):
            SwappedAssignmentLoss(**kw)
