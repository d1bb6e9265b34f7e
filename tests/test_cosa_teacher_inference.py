"""Tests of CoSA's teacher fusion (``wsseg.layers.CoSATeacherInference`` / ``cosa_teacher_inference``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wsseg
from tests.reference.official_cosa_teacher import official_cam_validation, official_multi_scale_camseg
from wsseg.layers import CoSATeacherInference, CoSATeacherOutput, cosa_teacher_cam, cosa_teacher_inference

B, K, H, W = 2, 3, 32, 48
SCALES = (1.0, 0.5, 1.5)


def _labels():
    return torch.tensor([[1, 0, 1], [0, 1, 0]])


def _random_outputs(images, scales=SCALES, grid=4):
    """Random raw teacher outputs per scale, keyed by the input height (distinct for every scale)."""
    table = {}
    for x in CoSATeacherInference(scales).make_inputs(images):
        h, w = x.shape[-2] // grid, x.shape[-1] // grid
        table[x.shape[-2]] = (torch.randn(2 * B, K + 1, h, w), torch.randn(2 * B, K, h, w),
                              torch.randn(2 * B, K, h, w))
    return table


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return wsseg.create_model("cosa", backbone="test_vit", num_classes=K, hidden_channels=8).eval()


def test_make_inputs_official_order_and_flip():
    images = torch.randn(B, 3, H, W)
    xs = CoSATeacherInference().make_inputs(images)
    assert [tuple(x.shape) for x in xs] == [(4, 3, 32, 48), (4, 3, 16, 24), (4, 3, 48, 72)]
    assert torch.equal(xs[0][:B], images) and torch.equal(xs[0][B:], images.flip(-1))
    ref = F.interpolate(images, size=(16, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(xs[1][:B], ref, rtol=0, atol=0)
    torch.testing.assert_close(xs[1][B:], ref.flip(-1), rtol=0, atol=0)
    # as given: no reordering, 1.0 not forced first
    xs2 = CoSATeacherInference(scales=(0.5, 1.0)).make_inputs(images)
    assert [x.shape[-1] for x in xs2] == [24, 48]


def test_matches_official_on_random_outputs():
    images = torch.randn(B, 3, H, W)
    labels = _labels()
    table = _random_outputs(images)
    cam_ref, aux_ref, seg_ref = official_multi_scale_camseg(lambda x: table[x.shape[-2]], images, list(SCALES))
    fuse = CoSATeacherInference()
    inputs = fuse.make_inputs(images)
    segs = [table[x.shape[-2]][0] for x in inputs]
    cams = [table[x.shape[-2]][1] for x in inputs]
    cams_aux = [table[x.shape[-2]][2] for x in inputs]
    out = fuse(cams, cams_aux, segs, images, labels)
    assert isinstance(out, CoSATeacherOutput)
    torch.testing.assert_close(out.cam, official_cam_validation(cam_ref, labels), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.cam_aux, official_cam_validation(aux_ref, labels), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.seg_logits, seg_ref, rtol=0, atol=1e-5)
    assert out.cam.shape == (B, K, H, W) and out.seg_logits.shape == (B, K + 1, H, W)
    assert out.cam.dtype == torch.float32 and not out.cam.requires_grad
    # label validation: absent classes are exactly 0; present ones are in [0, 1) with max close to 1
    assert float(out.cam[labels == 0].abs().max()) == 0.0
    present = out.cam[labels == 1]
    assert float(present.min()) >= 0 and float(present.max()) < 1
    assert torch.allclose(present.flatten(1).amax(1), torch.ones(present.shape[0]), atol=1e-3)


def test_faithful_aux_uses_last_scale_only():
    images = torch.randn(B, 3, H, W)
    labels = torch.ones(B, K)
    table = _random_outputs(images)
    fuse = CoSATeacherInference()
    inputs = fuse.make_inputs(images)
    cams_aux = [table[x.shape[-2]][2] for x in inputs]
    cams = [table[x.shape[-2]][1] for x in inputs]
    segs = [table[x.shape[-2]][0] for x in inputs]
    out = fuse(cams, cams_aux, segs, images, labels)
    # changing the aux CAMs of the first two scales changes nothing (the official overwrite)
    cams_aux2 = [torch.randn_like(c) for c in cams_aux[:2]] + [cams_aux[2]]
    out2 = fuse(cams, cams_aux2, segs, images, labels)
    torch.testing.assert_close(out2.cam_aux, out.cam_aux, rtol=0, atol=0)
    # by hand: upsample the last scale, flip-max, ReLU, per-map min-max
    a = F.interpolate(cams_aux[2], size=(H, W), mode="bilinear", align_corners=False)
    a = torch.relu(torch.maximum(a[:B], a[B:].flip(-1)))
    lo = a.flatten(2).min(-1).values[..., None, None]
    hi = (a - lo).flatten(2).max(-1).values[..., None, None]
    torch.testing.assert_close(out.cam_aux, (a - lo) / (hi + 1e-5), rtol=0, atol=1e-6)


def test_aux_fix_sums_all_scales():
    images = torch.randn(B, 3, H, W)
    labels = _labels()
    table = _random_outputs(images)
    inputs = CoSATeacherInference().make_inputs(images)
    cams = [table[x.shape[-2]][1] for x in inputs]
    cams_aux = [table[x.shape[-2]][2] for x in inputs]
    segs = [table[x.shape[-2]][0] for x in inputs]
    fixed = CoSATeacherInference(aux_cam_all_scales=True)(cams, cams_aux, segs, images, labels)
    faithful = CoSATeacherInference()(cams, cams_aux, segs, images, labels)
    # with the fix the aux CAM follows the official main-CAM formula (all scales appended)
    aux_table = {x.shape[-2]: (table[x.shape[-2]][0], table[x.shape[-2]][2], table[x.shape[-2]][2]) for x in inputs}
    ref, _, _ = official_multi_scale_camseg(lambda x: aux_table[x.shape[-2]], images, list(SCALES))
    torch.testing.assert_close(fixed.cam_aux, official_cam_validation(ref, labels), rtol=0, atol=1e-5)
    assert (fixed.cam_aux - faithful.cam_aux).abs().max() > 1e-2
    torch.testing.assert_close(fixed.cam, faithful.cam, rtol=0, atol=0)


def test_seg_is_sum_of_upsampled_logits_by_hand():
    """Spec equation on constant maps: up() of a constant is the constant, so S~ = sum of both halves."""
    images = torch.zeros(1, 3, 8, 8)
    consts = [(1.0, 2.0), (3.0, -1.0), (0.5, 0.25)]
    segs = []
    for (a, b), h in zip(consts, (2, 1, 3), strict=True):
        seg = torch.empty(2, 2, h, h)
        seg[0].fill_(a)
        seg[1].fill_(b)
        segs.append(seg)
    cams = [torch.randn(2, 1, s.shape[-2], s.shape[-1]) for s in segs]
    out = CoSATeacherInference()(cams, cams, segs, images, torch.ones(1, 1))
    assert torch.allclose(out.seg_logits, torch.full((1, 2, 8, 8), 5.75))


def test_cam_flip_max_then_relu_by_hand():
    """One scale, 1x2 grid: max(up(a), flip(up(b))) then ReLU, then min-max."""
    images = torch.zeros(1, 3, 1, 2)
    cam = torch.tensor([[[[-1.0, 2.0]]], [[[3.0, -5.0]]]])  # image, flipped image
    seg = torch.zeros(2, 2, 1, 2)
    out = CoSATeacherInference(scales=(1.0,), eps=0.0)([cam], [cam], [seg], images, torch.ones(1, 1))
    # flip back [3, -5] -> [-5, 3]; max with [-1, 2] -> [-1, 3]; relu -> [0, 3]; minmax -> [0, 1]
    assert out.cam.flatten().tolist() == [0.0, 1.0]


def test_matches_official_with_tiny_real_model(tiny_net):
    images = torch.randn(B, 3, 64, 64)
    labels = _labels()

    def model_fn(x):
        o = tiny_net(x)
        return o.seg, o.cam, o.cam_aux

    cam_ref, aux_ref, seg_ref = official_multi_scale_camseg(model_fn, images, [1.0, 0.5, 1.5])
    out = cosa_teacher_inference(tiny_net, images, labels)
    torch.testing.assert_close(out.cam, official_cam_validation(cam_ref, labels), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.cam_aux, official_cam_validation(aux_ref, labels), rtol=0, atol=1e-5)
    torch.testing.assert_close(out.seg_logits, seg_ref, rtol=1e-5, atol=1e-5)
    fixed = cosa_teacher_inference(tiny_net, images, labels, aux_cam_all_scales=True)
    assert (fixed.cam_aux - out.cam_aux).abs().max() > 1e-3


def test_convenience_fits_inputs_to_patch_size(tiny_net):
    images = torch.randn(1, 3, 40, 56)  # 0.5 -> 20x28, 1.5 -> 60x84: not multiples of 16
    out = cosa_teacher_inference(tiny_net, images, torch.ones(1, K))
    assert out.cam.shape == (1, K, 40, 56) and out.seg_logits.shape == (1, K + 1, 40, 56)
    assert torch.isfinite(out.seg_logits).all()


def test_no_grad_and_mode_untouched(tiny_net):
    tiny_net.train()
    try:
        out = cosa_teacher_inference(tiny_net, torch.randn(1, 3, 32, 32), torch.ones(1, K))
        assert tiny_net.training and not out.seg_logits.requires_grad and not out.cam.requires_grad
    finally:
        tiny_net.eval()


def test_label_validation_errors():
    images = torch.randn(B, 3, H, W)
    table = _random_outputs(images)
    inputs = CoSATeacherInference().make_inputs(images)
    cams = [table[x.shape[-2]][1] for x in inputs]
    segs = [table[x.shape[-2]][0] for x in inputs]
    fuse = CoSATeacherInference()
    with pytest.raises(ValueError, match="labels"):
        fuse(cams, cams, segs, images, torch.ones(B, K + 1))
    with pytest.raises(ValueError, match="labels"):
        fuse(cams, cams, segs, images, torch.ones(B + 1, K))
    with pytest.raises(TypeError, match="labels"):
        fuse(cams, cams, segs, images, [[1, 0, 1]])


def test_input_errors():
    images = torch.randn(B, 3, H, W)
    table = _random_outputs(images)
    inputs = CoSATeacherInference().make_inputs(images)
    cams = [table[x.shape[-2]][1] for x in inputs]
    segs = [table[x.shape[-2]][0] for x in inputs]
    fuse = CoSATeacherInference()
    labels = torch.ones(B, K)
    with pytest.raises(ValueError, match="cams: expected a list of 3"):
        fuse(cams[:2], cams, segs, images, labels)
    with pytest.raises(ValueError, match=r"segs\[0\]"):
        fuse(cams, cams, [s[:, :K] for s in segs], images, labels)  # K channels instead of K+1
    with pytest.raises(ValueError, match=r"cams_aux\[1\]"):
        fuse(cams, [cams[0], cams[1][:B], cams[2]], segs, images, labels)
    with pytest.raises(TypeError, match=r"cams\[0\]"):
        fuse([cams[0].long()] + cams[1:], cams, segs, images, labels)
    with pytest.raises(ValueError, match="scales"):
        CoSATeacherInference(scales=())
    with pytest.raises(ValueError, match="eps"):
        CoSATeacherInference(eps=-1.0)
    with pytest.raises(TypeError, match="aux_cam_all_scales"):
        CoSATeacherInference(aux_cam_all_scales="yes")
    with pytest.raises(TypeError, match="model"):
        cosa_teacher_inference(torch.nn.Conv2d(3, 3, 1), images, labels)
    assert "aux_cam_all_scales=False" in repr(fuse)


def test_bf16_inputs_give_float32():
    images = torch.randn(B, 3, H, W)
    table = _random_outputs(images)
    inputs = CoSATeacherInference().make_inputs(images)
    cams = [table[x.shape[-2]][1].bfloat16() for x in inputs]
    segs = [table[x.shape[-2]][0].bfloat16() for x in inputs]
    out = CoSATeacherInference()(cams, cams, segs, images, _labels())
    assert out.cam.dtype == out.cam_aux.dtype == out.seg_logits.dtype == torch.float32


@pytest.mark.parametrize("shape", [(B, 3, H, W), (1, 3, 48, 32)])
def test_cam_only_passes_equal_the_full_teacher_cam(tiny_net, shape):
    """``cosa_teacher_cam`` (CAM-only passes: no decoder, no aux CAM) gives the full teacher pass's CAM exactly."""
    torch.manual_seed(1)
    images = torch.randn(*shape)
    labels = torch.ones(shape[0], K, dtype=torch.long)
    labels[0, 1] = 0
    calls = []
    handle = tiny_net.decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        cam = cosa_teacher_cam(tiny_net, images, labels)
    finally:
        handle.remove()
    assert calls == []
    assert torch.equal(cam, cosa_teacher_inference(tiny_net, images, labels).cam)
    assert torch.equal(tiny_net.cam(images), tiny_net(images).cam)


def test_cam_only_errors(tiny_net):
    images = torch.randn(B, 3, H, W)
    with pytest.raises(TypeError, match="cam"):
        cosa_teacher_cam(torch.nn.Identity(), images, _labels())
    with pytest.raises(ValueError, match="labels"):
        cosa_teacher_cam(tiny_net, images, torch.ones(B, K + 1))
    with pytest.raises(ValueError, match="scales"):
        cosa_teacher_cam(tiny_net, images, _labels(), scales=())
