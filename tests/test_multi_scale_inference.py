"""Tests for multi-scale + flip inference fusion (wsseg.layers.multi_scale_inference)."""

import pytest
import torch
import torch.nn.functional as F

from wsseg.layers import MultiScaleInference, multi_scale_inference
from wsseg.layers.multi_scale_inference import MULTI_SCALE_INFERENCE_PRESETS


def _equivariant_fn(x):
    # pointwise in space -> exactly flip-equivariant: f(flip(x)) = flip(f(x))
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0], [2.0, 0.0, 1.0], [-0.5, 1.5, 0.1]])
    return torch.einsum("kc,bchw->bkhw", w.to(x.dtype), x)


def test_flip_sum_equals_twice_single_pass():
    x = torch.randn(2, 3, 8, 10)
    single = _equivariant_fn(x)
    out = multi_scale_inference(_equivariant_fn, x, scales=(1.0,), flip=True, flip_fuse="sum")
    assert torch.allclose(out, 2 * single, atol=1e-6)
    out = multi_scale_inference(_equivariant_fn, x, scales=(1.0,), flip=True, flip_fuse="mean")
    assert torch.allclose(out, single, atol=1e-6)
    out = multi_scale_inference(_equivariant_fn, x, scales=(1.0,), flip=False)
    assert torch.allclose(out, single, atol=1e-6)


def test_repeated_scale_fusions():
    # the same scale three times: sum = 3x, mean = max = 1x
    x = torch.randn(1, 3, 8, 8)
    single = _equivariant_fn(x)
    kw = dict(scales=(1.0, 1.0, 1.0), flip=True, flip_fuse="mean")
    assert torch.allclose(multi_scale_inference(_equivariant_fn, x, scale_fuse="sum", **kw), 3 * single, atol=1e-5)
    assert torch.allclose(multi_scale_inference(_equivariant_fn, x, scale_fuse="mean", **kw), single, atol=1e-6)
    assert torch.allclose(multi_scale_inference(_equivariant_fn, x, scale_fuse="max", **kw), single, atol=1e-6)


def test_hand_computed_fusion_with_fake_outputs():
    # forward() on hand-made outputs: B=1, C=2, flip; scale 1 output 1x2, scale 0.5 output 1x1
    images = torch.zeros(1, 3, 1, 2)
    o1 = torch.tensor([[[[1.0, 2.0]], [[0.0, 4.0]]],      # pass on the image
                       [[[3.0, 5.0]], [[6.0, 0.0]]]])     # pass on the mirror (flipped back: [5,3], [0,6])
    o2 = torch.tensor([[[[10.0]], [[-1.0]]], [[[0.0]], [[1.0]]]])  # 1x1 -> constant after resize
    # flip sum at scale 1: ch0 [1+5, 2+3] = [6, 5]; ch1 [0+0, 4+6] = [0, 10]
    # flip sum at scale 0.5: ch0 [10, 10]; ch1 [0, 0]
    sum_ = MultiScaleInference(scales=(1.0, 0.5), flip=True, scale_fuse="sum", flip_fuse="sum")
    assert sum_([o1, o2], images).tolist() == [[[[16.0, 15.0]], [[0.0, 10.0]]]]
    mx = MultiScaleInference(scales=(1.0, 0.5), flip=True, scale_fuse="max", flip_fuse="sum")
    assert mx([o1, o2], images).tolist() == [[[[10.0, 10.0]], [[0.0, 10.0]]]]
    mean = MultiScaleInference(scales=(1.0, 0.5), flip=True, scale_fuse="mean", flip_fuse="mean")
    # flip means: [3, 2.5]/[0, 5] and [5, 5]/[0, 0] -> scale mean [4, 3.75] / [0, 2.5]
    assert mean([o1, o2], images).tolist() == [[[[4.0, 3.75]], [[0.0, 2.5]]]]


def test_probs_output_sums_to_one_with_means():
    x = torch.randn(2, 3, 12, 12)
    out = multi_scale_inference(_equivariant_fn, x, scales=(1.0, 0.5, 1.5), scale_fuse="mean",
                                flip_fuse="mean", output="probs")
    assert torch.allclose(out.sum(1), torch.ones(2, 12, 12), atol=1e-5)
    assert out.min() >= 0


def test_flip_equivariance_of_fused_output():
    # for a flip-equivariant model, the fused output of the flipped image is the flipped output
    x = torch.randn(1, 3, 16, 12)
    kw = dict(scales=(1.0, 0.5, 0.75), scale_fuse="max", flip_fuse="mean")
    a = multi_scale_inference(_equivariant_fn, x.flip(-1), **kw)
    b = multi_scale_inference(_equivariant_fn, x, **kw).flip(-1)
    assert torch.allclose(a, b, atol=1e-5)


def test_function_equals_module_and_shapes():
    x = torch.randn(2, 3, 20, 30)
    calls = []

    def fn(t):
        calls.append(tuple(t.shape))
        return _equivariant_fn(F.avg_pool2d(t, 2))  # stride-2 "model"

    for name in MULTI_SCALE_INFERENCE_PRESETS:
        calls.clear()
        msi = MultiScaleInference.from_preset(name)
        out_m = msi([fn(t) for t in msi.make_inputs(x)], x)
        out_f = multi_scale_inference(fn, x, **MULTI_SCALE_INFERENCE_PRESETS[name])
        assert out_m.shape == (2, 4, 20, 30)
        assert torch.allclose(out_m, out_f)
        flip = MULTI_SCALE_INFERENCE_PRESETS[name]["flip"]
        assert all(c[0] == (4 if flip else 2) for c in calls)  # image + mirror in one batch
    afa = MultiScaleInference.from_preset("afa").make_inputs(x)
    # long side 512: 30 -> 512, 20 -> int(20 * 512 / 30) = 341; then scales 0.5 / 0.75 (floor)
    assert [tuple(t.shape[-2:]) for t in afa] == [(341, 512), (170, 256), (255, 384)]
    cosa = MultiScaleInference.from_preset("cosa").make_inputs(x)
    assert [tuple(t.shape[-2:]) for t in cosa] == [(448, 448), (224, 224), (672, 672), (336, 336), (560, 560)]
    vitpcm = MultiScaleInference.from_preset("vitpcm").make_inputs(x)          # ViT-PCM: one 960 x 960 pass
    assert [tuple(t.shape) for t in vitpcm] == [(2, 3, 960, 960)]
    assert torch.equal(cosa[0][2:], cosa[0][:2].flip(-1))


def test_presets_values():
    afa = MultiScaleInference.from_preset("afa")
    assert afa.scales == (1.0, 0.5, 0.75) and afa.scale_fuse == "max" and afa.flip_fuse == "mean"
    cosa = MultiScaleInference.from_preset("cosa")
    assert cosa.scales == (1.0, 0.5, 1.5, 0.75, 1.25) and cosa.scale_fuse == "sum" and cosa.flip_fuse == "sum"
    assert cosa.resize_to == (448, 448)
    slr = MultiScaleInference.from_preset("slrnet")
    assert slr.scales == (1.0, 1.5, 2.0, 0.5, 0.75) and slr.output == "probs"
    assert "scale_fuse='max'" in repr(afa)
    with pytest.raises(ValueError, match="name"):
        MultiScaleInference.from_preset("nope")


def test_bf16_inputs_give_float32():
    x = torch.randn(1, 3, 8, 8, dtype=torch.bfloat16)
    out = multi_scale_inference(_equivariant_fn, x, scales=(1.0, 0.5))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_errors():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="scales"):
        multi_scale_inference(_equivariant_fn, x, scales=())
    with pytest.raises(ValueError, match="scales"):
        multi_scale_inference(_equivariant_fn, x, scales=(1.0, -0.5))
    with pytest.raises(ValueError, match="scale_fuse"):
        multi_scale_inference(_equivariant_fn, x, scale_fuse="median")
    with pytest.raises(ValueError, match="flip_fuse"):
        multi_scale_inference(_equivariant_fn, x, flip_fuse="max")
    with pytest.raises(ValueError, match="output"):
        multi_scale_inference(_equivariant_fn, x, output="labels")
    with pytest.raises(ValueError, match="resize_to"):
        multi_scale_inference(_equivariant_fn, x, resize_to=(4,))
    with pytest.raises(TypeError, match="flip"):
        multi_scale_inference(_equivariant_fn, x, flip=1)
    with pytest.raises(TypeError, match="logit_fn"):
        multi_scale_inference(None, x)
    with pytest.raises(ValueError, match="images"):
        multi_scale_inference(_equivariant_fn, x[0])
    with pytest.raises(TypeError, match="images"):
        multi_scale_inference(_equivariant_fn, x.long())
    with pytest.raises(ValueError, match=r"outputs\[0\]"):
        multi_scale_inference(lambda t: _equivariant_fn(t)[:1], x)  # forgot the mirrored half
    msi = MultiScaleInference(scales=(1.0, 0.5))
    with pytest.raises(ValueError, match="outputs"):
        msi([torch.zeros(2, 4, 8, 8)], x)
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        msi([torch.zeros(2, 4, 8, 8), torch.zeros(2, 5, 4, 4)], x)
    with pytest.raises(TypeError, match=r"outputs\[0\]"):
        msi([torch.zeros(2, 4, 8, 8, dtype=torch.long), torch.zeros(2, 4, 4, 4)], x)
