"""Tests for wsseg.layers.multi_scale_cam (common.md §1)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsseg.layers import (
    MultiScaleCAM,
    fuse_multi_scale_cams,
    minmax_normalize,
    multi_scale_cam,
    multi_scale_inputs,
    ordered_scales,
)


def _first_channel_minus(offset: float):
    """cam_fn: channel 0 of the image minus ``offset`` -> (B', 1, h, w) (flip-equivariant)."""
    return lambda x: x[:, :1] - offset


# ---------------------------------------------------------------- minmax_normalize
def test_minmax_hand_values():
    cam = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]], [[2.0, 2.0], [2.0, 2.0]]]])
    out = minmax_normalize(cam, eps=1.0)
    # channel 0: (x - 1) / (8 + 1); constant channel 1 -> 0
    assert torch.allclose(out[0, 0], torch.tensor([[0.0, 2 / 9], [4 / 9, 8 / 9]]))
    assert torch.equal(out[0, 1], torch.zeros(2, 2))


def test_minmax_range_and_per_channel():
    cam = torch.randn(3, 5, 7, 9) * 10
    out = minmax_normalize(cam)
    assert out.min() >= 0 and out.max() < 1
    flat = out.flatten(2)
    assert torch.allclose(flat.amin(-1), torch.zeros(3, 5))
    assert torch.all(flat.amax(-1) > 0.999)  # each (b, k) reaches ~1


def test_minmax_bf16_returns_float32():
    out = minmax_normalize(torch.rand(1, 2, 4, 4).bfloat16())
    assert out.dtype == torch.float32


def test_minmax_validation():
    with pytest.raises(ValueError, match="cam"):
        minmax_normalize(torch.rand(2, 4, 4))
    with pytest.raises(TypeError, match="cam"):
        minmax_normalize(torch.ones(1, 1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="eps"):
        minmax_normalize(torch.rand(1, 1, 2, 2), eps=-1.0)


# ---------------------------------------------------------------- inputs
def test_make_inputs_sizes_floor_and_flip():
    x = torch.rand(2, 3, 33, 20)
    xs = multi_scale_inputs(x, (1.0, 0.5, 1.5))
    assert [tuple(t.shape) for t in xs] == [(4, 3, 33, 20), (4, 3, 16, 10), (4, 3, 49, 30)]
    assert torch.equal(xs[0][:2], x) and torch.equal(xs[0][2:], x.flip(-1))
    assert torch.equal(xs[1][2:], xs[1][:2].flip(-1))
    ref = F.interpolate(x, size=(16, 10), mode="bilinear", align_corners=False)
    assert torch.equal(xs[1][:2], ref)
    assert [t.shape[0] for t in multi_scale_inputs(x, (1.0, 0.5), flip=False)] == [2, 2]
    assert [t.shape for t in MultiScaleCAM().make_inputs(x)] == [t.shape for t in xs]


# ---------------------------------------------------------------- hand-computed fusion
def test_single_scale_hand_values_relu_and_minmax():
    img = torch.zeros(1, 3, 2, 2)
    img[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    cam = multi_scale_cam(_first_channel_minus(2.5), img, scales=(1.0,), eps=0.0)
    # raw [[-1.5, -0.5], [0.5, 1.5]] -> ReLU [[0, 0], [0.5, 1.5]] -> minmax / 1.5
    assert torch.allclose(cam[0, 0], torch.tensor([[0.0, 0.0], [1 / 3, 1.0]]))


def test_flip_fuse_max_sum_mean_hand_values():
    # a non-equivariant cam_fn: the map is the column index (0, 1) whatever the input
    def cam_fn(x):
        col = torch.arange(x.shape[-1], dtype=x.dtype).expand(x.shape[0], 1, x.shape[-2], -1)
        return col.clone()

    img = torch.rand(1, 3, 2, 2)
    # original [[0, 1]], flipped-back [[1, 0]]: max [[1, 1]], sum [[1, 1]], mean [[.5, .5]]
    cams = [cam_fn(x) for x in multi_scale_inputs(img, (1.0,))]
    for fuse, value in (("max", 1.0), ("sum", 1.0), ("mean", 0.5)):
        out = fuse_multi_scale_cams(cams, (2, 2), flip_fuse=fuse, normalize=None)
        assert torch.allclose(out, torch.full((1, 1, 2, 2), value)), fuse


def test_multi_scale_sum_matches_spec_formula():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    img = torch.rand(2, 3, 16, 12)
    scales = (1.0, 0.5, 1.5)
    total = 0
    for s in scales:
        xs = img if s == 1.0 else F.interpolate(img, size=(int(16 * s), int(12 * s)), mode="bilinear",
                                                align_corners=False)
        with torch.no_grad():
            a = F.interpolate(conv(xs), size=(16, 12), mode="bilinear", align_corners=False)
            b = F.interpolate(conv(xs.flip(-1)), size=(16, 12), mode="bilinear", align_corners=False).flip(-1)
        total = total + torch.maximum(a, b).clamp(min=0)
    total = total - total.amin((2, 3), keepdim=True)
    expected = total / (total.amax((2, 3), keepdim=True) + 1e-5)
    out = multi_scale_cam(conv, img, scales=scales)
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.dtype == torch.float32 and not out.requires_grad
    assert out.min() >= 0 and out.max() < 1


# ---------------------------------------------------------------- scale order (official: 1.0 first, always)
@pytest.mark.parametrize("scales", [(1.0, 0.5, 1.5), (0.5, 1.5), (0.5, 1.0, 1.5), (1.5, 1.0, 1.0, 0.5), (0.75,)])
def test_scale_order_matches_official_loop(scales):
    from tests.reference.official_multi_scale_cam import official_multi_scale_cam

    torch.manual_seed(4)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    img = torch.rand(2, 3, 16, 20)
    torch.testing.assert_close(multi_scale_cam(conv, img, scales=scales),
                               official_multi_scale_cam(conv, img, scales), atol=1e-6, rtol=0)


def test_scale_order_pass_sequence_and_as_given_option():
    seen = []

    def cam_fn(x):
        seen.append(tuple(x.shape[-2:]))
        return x[:, :2] * torch.linspace(-1, 2, x.shape[-1])

    img = torch.rand(1, 3, 16, 20)
    official = multi_scale_cam(cam_fn, img, scales=(0.5, 1.5))
    assert seen == [(16, 20), (8, 10), (24, 30)]                 # scale 1 first although not listed
    seen.clear()
    multi_scale_cam(cam_fn, img, scales=(1.5, 1.0, 1.0))
    assert seen == [(16, 20), (24, 30)]                          # listed 1.0 entries skipped
    seen.clear()
    literal = multi_scale_cam(cam_fn, img, scales=(0.5, 1.5), scale_order="as_given")
    assert seen == [(8, 10), (24, 30)]
    assert (official - literal).abs().max() > 0.05
    assert ordered_scales((0.5, 1.5)) == (1.0, 0.5, 1.5)
    assert ordered_scales((0.5, 1.0, 1.5, 1.0)) == (1.0, 0.5, 1.5)
    assert ordered_scales((0.5, 1.5), "as_given") == (0.5, 1.5)
    with pytest.raises(ValueError, match="scale_order"):
        ordered_scales((1.0,), "sorted")


def test_module_runs_official_scale_order():
    msc = MultiScaleCAM(scales=(0.5, 1.5))
    assert msc.run_scales == (1.0, 0.5, 1.5) and "scale_order='unit_first'" in repr(msc)
    img = torch.rand(1, 3, 8, 8)
    assert [tuple(x.shape[-2:]) for x in msc.make_inputs(img)] == [(8, 8), (4, 4), (12, 12)]
    with pytest.raises(ValueError, match="run_scales"):
        msc([torch.rand(2, 2, 4, 4), torch.rand(2, 2, 6, 6)], img)
    assert MultiScaleCAM(scales=(0.5, 1.5), scale_order="as_given").run_scales == (0.5, 1.5)


# ---------------------------------------------------------------- invariances
def test_flip_invariance_any_cam_fn():
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)  # not flip-equivariant itself
    img = torch.rand(2, 3, 20, 14)
    a = multi_scale_cam(conv, img)
    b = multi_scale_cam(conv, img.flip(-1)).flip(-1)
    assert torch.allclose(a, b, atol=1e-6)


def test_equivariant_cam_fn_flip_pass_is_redundant_with_max():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():  # horizontally symmetric kernel -> flip-equivariant cam_fn
        conv.weight.copy_(conv.weight + conv.weight.flip(-1))
    img = torch.rand(1, 3, 16, 16)
    assert torch.allclose(multi_scale_cam(conv, img, flip=True), multi_scale_cam(conv, img, flip=False), atol=1e-6)


# ---------------------------------------------------------------- labels, module, dtype
def test_labels_zero_absent_channels_and_module_equals_function():
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(3, 4, 1)
    img = torch.rand(2, 3, 12, 12)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    f = multi_scale_cam(conv, img, labels, scales=(1.0, 0.5))
    msc = MultiScaleCAM(scales=(1.0, 0.5), mask_by_labels=True)
    with torch.no_grad():
        m = msc([conv(x) for x in msc.make_inputs(img)], img, labels)
    assert torch.allclose(f, m)
    assert torch.all(f[labels == 0] == 0)
    unmasked = multi_scale_cam(conv, img, scales=(1.0, 0.5))
    assert torch.allclose(f[labels == 1], unmasked[labels == 1])
    # mask_by_labels=False: labels are ignored
    with torch.no_grad():
        m2 = MultiScaleCAM(scales=(1.0, 0.5))([conv(x) for x in msc.make_inputs(img)], img, labels)
    assert torch.allclose(m2, unmasked)


def test_bf16_cams_return_float32():
    conv = torch.nn.Conv2d(3, 4, 1)
    img = torch.rand(1, 3, 16, 16)
    msc = MultiScaleCAM()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        cams = [conv(x) for x in msc.make_inputs(img)]
        out = msc(cams, img)
    assert cams[0].dtype == torch.bfloat16
    assert out.dtype == torch.float32
    with torch.no_grad():
        ref = msc([conv(x) for x in msc.make_inputs(img)], img)
    assert (out - ref).abs().max() < 0.05


def test_normalize_none_returns_sum():
    cams = [torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 1, 1), -1.0)]
    out = MultiScaleCAM(scales=(1.0, 0.5), normalize=None)(cams, torch.rand(1, 3, 2, 2))
    assert torch.allclose(out, torch.full((1, 1, 2, 2), 2.0))  # ReLU removes the negative scale


def test_extra_repr():
    r = repr(MultiScaleCAM(scales=(1.0,), flip_fuse="sum"))
    assert "flip_fuse='sum'" in r and "scales=(1.0,)" in r


# ---------------------------------------------------------------- validation
def test_validation_errors():
    img = torch.rand(1, 3, 8, 8)
    msc = MultiScaleCAM(scales=(1.0, 0.5))
    good = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 4, 4)]
    with pytest.raises(ValueError, match="flip_fuse"):
        MultiScaleCAM(flip_fuse="min")
    with pytest.raises(ValueError, match="normalize"):
        MultiScaleCAM(normalize="softmax")
    with pytest.raises(ValueError, match="scales"):
        MultiScaleCAM(scales=())
    with pytest.raises(ValueError, match="scales"):
        MultiScaleCAM(scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="eps"):
        MultiScaleCAM(eps=-1.0)
    with pytest.raises(ValueError, match="cams"):
        msc(good[:1], img)
    with pytest.raises(ValueError, match="cams"):
        msc([torch.rand(3, 3, 8, 8), torch.rand(3, 3, 4, 4)], img)  # odd batch with flip
    with pytest.raises(ValueError, match=r"cams\[1\]"):
        msc([good[0], torch.rand(2, 4, 4, 4)], img)  # K mismatch
    with pytest.raises(TypeError, match=r"cams\[0\]"):
        msc([good[0].long(), good[1]], img)
    with pytest.raises(ValueError, match="images"):
        msc(good, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="images"):
        msc(good, torch.rand(2, 3, 8, 8))  # batch mismatch
    with pytest.raises(ValueError, match="labels"):
        MultiScaleCAM(scales=(1.0, 0.5), mask_by_labels=True)(good, img)
    with pytest.raises(ValueError, match="labels"):
        MultiScaleCAM(scales=(1.0, 0.5), mask_by_labels=True)(good, img, torch.ones(1, 4))
    with pytest.raises(TypeError, match="cam_fn"):
        multi_scale_cam("not callable", img)
    with pytest.raises(TypeError, match="images"):
        multi_scale_cam(lambda x: x, img.long())
    with pytest.raises(ValueError, match="scales"):
        multi_scale_inputs(torch.rand(1, 3, 2, 2), (0.1,))
