"""Tests of PAR (``wsseg.layers.pixel_adaptive_refine``) and of the shared neighbour machinery."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_refiners import (
    official_offsets,
    official_par,
    official_par_kernel,
    to_official_order,
)
from wsseg.layers import PixelAdaptiveRefine, pixel_adaptive_refine
from wsseg.layers._neighbors import gather_neighbors, neighbor_offsets, propagate
from wsseg.layers.pixel_adaptive_refine import _par_kernel

D = (1, 2, 4, 8, 12, 24)


def _to_official_order(kernel: torch.Tensor, dilations=D) -> torch.Tensor:
    return to_official_order(kernel, dilations)


# ------------------------------------------------------------------------------ neighbour machinery
@pytest.mark.parametrize("dilations", [(1,), (1, 3), (2, 5, 9)])
def test_gather_matches_clamped_indexing(dilations):
    x = torch.randn(2, 3, 7, 11)
    out = gather_neighbors(x, dilations)
    h, w = x.shape[-2:]
    rows = torch.arange(h)
    cols = torch.arange(w)
    for k, (dy, dx) in enumerate(neighbor_offsets(dilations)):
        r = (rows + dy).clamp(0, h - 1)
        c = (cols + dx).clamp(0, w - 1)
        torch.testing.assert_close(out[:, :, k], x[:, :, r][:, :, :, c], rtol=0, atol=0)


def test_offsets_are_the_48_stencil_neighbours():
    offsets = neighbor_offsets(D)
    assert len(offsets) == 48 and len(set(offsets)) == 48
    assert set(offsets) == set(official_offsets(D))
    assert (0, 0) not in offsets


def test_propagate_matches_explicit_sum():
    q = torch.rand(2, 4, 9, 13, dtype=torch.float64)
    kernel = torch.rand(2, 1, 16, 9, 13, dtype=torch.float64)
    dil = (1, 3)
    expected = q
    for _ in range(3):
        expected = (gather_neighbors(expected, dil) * kernel).sum(dim=2)
    torch.testing.assert_close(propagate(q, kernel, dil, 3), expected)


# ------------------------------------------------------------------------------ official formulation
@pytest.mark.parametrize(
    "batch,channels,image_size,probs_size",
    [(2, 3, (33, 47), (17, 20)), (2, 21, (64, 64), (32, 32)), (1, 7, (40, 24), (40, 24)), (2, 12, (48, 30), (12, 9))],
)
def test_matches_official_formulation(batch, channels, image_size, probs_size):
    image = torch.rand(batch, 3, *image_size)
    probs = torch.rand(batch, channels, *probs_size).softmax(dim=1)
    out = pixel_adaptive_refine(image, probs)
    ref = official_par(image, probs, D, 10)
    assert out.shape == (batch, channels, *image_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_matches_official_float64_other_settings():
    image = torch.rand(2, 3, 21, 26, dtype=torch.float64) * 255
    probs = torch.rand(2, 5, 11, 13, dtype=torch.float64)
    out = pixel_adaptive_refine(image, probs, dilations=(1, 3, 5), num_iter=4)
    ref = official_par(image, probs, (1, 3, 5), 4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_kernel_matches_official_and_sums_to_1_01():
    image = torch.rand(2, 3, 20, 28)
    kernel = _par_kernel(image, D, 0.3, 0.01, 1e-8)
    assert kernel.shape == (2, 1, 48, 20, 28)
    torch.testing.assert_close(kernel.sum(dim=2), torch.full((2, 1, 20, 28), 1.01), rtol=0, atol=1e-6)
    torch.testing.assert_close(_to_official_order(kernel), official_par_kernel(image, D), rtol=0, atol=1e-5)
    image64 = image.double()
    ours64 = _to_official_order(_par_kernel(image64, D, 0.3, 0.01, 1e-8))
    torch.testing.assert_close(ours64, official_par_kernel(image64, D), rtol=0, atol=1e-12)


def test_kernel_on_constant_image_by_hand():
    # constant image: all differences and σ are 0 -> appearance logits 0 -> uniform 1/48
    # positional term from the spec's equation, computed with the statistics module
    dist = [d * (math.sqrt(2) if (dy and dx) else 1.0) for d in D for dy, dx in
            [(-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 0), (1, 1), (0, -1), (0, 1)]]
    sd = statistics.stdev(dist)
    logits = [-((x / (sd + 1e-8)) / 0.3) ** 2 for x in dist]
    z = sum(math.exp(v) for v in logits)
    expected = torch.tensor([1 / 48 + 0.01 * math.exp(v) / z for v in logits], dtype=torch.float64)
    kernel = _par_kernel(torch.full((1, 3, 6, 5), 0.4, dtype=torch.float64), D, 0.3, 0.01, 1e-8)
    torch.testing.assert_close(kernel[0, 0, :, 3, 2], expected, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------ properties
def test_mass_grows_by_1_01_per_step_on_constant_maps():
    image = torch.rand(2, 3, 24, 18)
    probs = torch.full((2, 3, 12, 9), 0.25)
    out = pixel_adaptive_refine(image, probs, num_iter=7)
    torch.testing.assert_close(out, torch.full_like(out, 0.25 * 1.01 ** 7), rtol=1e-5, atol=0)


def test_channel_sum_grows_by_1_01_per_step():
    image = torch.rand(2, 3, 24, 18)
    probs = torch.rand(2, 6, 24, 18).softmax(dim=1)
    out = pixel_adaptive_refine(image, probs, num_iter=10)
    torch.testing.assert_close(out.sum(dim=1), torch.full((2, 24, 18), 1.01 ** 10), rtol=1e-5, atol=0)


def test_zero_channel_stays_zero_and_channels_are_independent():
    image = torch.rand(2, 3, 20, 20)
    probs = torch.rand(2, 4, 10, 10)
    probs[:, 2] = 0
    out = pixel_adaptive_refine(image, probs)
    assert torch.count_nonzero(out[:, 2]) == 0
    # refining a subset of channels gives the same result for those channels
    sub = pixel_adaptive_refine(image, probs[:, [0, 3]])
    torch.testing.assert_close(sub, out[:, [0, 3]], rtol=0, atol=1e-6)


def test_appearance_term_is_intensity_scale_invariant():
    image = torch.rand(2, 3, 22, 26, dtype=torch.float64)
    probs = torch.rand(2, 5, 11, 13, dtype=torch.float64)
    base = pixel_adaptive_refine(image, probs, eps=0.0)  # eps=0: exactly invariant (σ > 0 here)
    for scale, shift in [(255.0, 0.0), (0.01, 0.0), (3.0, -7.0)]:
        torch.testing.assert_close(pixel_adaptive_refine(image * scale + shift, probs, eps=0.0), base,
                                   rtol=1e-9, atol=1e-9)
    # with the default eps the invariance holds up to eps / σ
    torch.testing.assert_close(pixel_adaptive_refine(image * 255, probs), base, rtol=1e-6, atol=1e-6)


def test_horizontal_and_vertical_flip_equivariance():
    image = torch.rand(2, 3, 18, 27, dtype=torch.float64)
    probs = torch.rand(2, 4, 9, 14, dtype=torch.float64)
    out = pixel_adaptive_refine(image, probs)
    for dim in (-1, -2):
        flipped = pixel_adaptive_refine(image.flip(dim), probs.flip(dim))
        torch.testing.assert_close(flipped, out.flip(dim), rtol=0, atol=1e-12)


def test_num_iter_zero_is_bilinear_align_corners_resize():
    image = torch.rand(1, 3, 30, 20)
    probs = torch.rand(1, 3, 7, 5)
    out = pixel_adaptive_refine(image, probs, num_iter=0)
    expected = F.interpolate(probs, size=(30, 20), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_no_gradient_and_inputs_unchanged():
    image = torch.rand(1, 3, 12, 12, requires_grad=True)
    probs = torch.rand(1, 2, 12, 12, requires_grad=True)
    image_copy, probs_copy = image.detach().clone(), probs.detach().clone()
    out = pixel_adaptive_refine(image, probs)
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(probs.detach(), probs_copy, rtol=0, atol=0)
    torch.testing.assert_close(image.detach(), image_copy, rtol=0, atol=0)


def test_autocast_bfloat16_and_low_precision_inputs():
    image = torch.rand(2, 3, 16, 16)
    probs = torch.rand(2, 3, 8, 8).softmax(dim=1)
    ref = pixel_adaptive_refine(image, probs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pixel_adaptive_refine(image, probs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    low = pixel_adaptive_refine(image.bfloat16(), probs.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.02, atol=0.02)


def test_module_equals_function_and_repr():
    image = torch.rand(2, 3, 14, 15)
    probs = torch.rand(2, 3, 7, 8)
    module = PixelAdaptiveRefine(dilations=(1, 2, 3), num_iter=4, w_app=0.5, w_pos=0.02)
    expected = pixel_adaptive_refine(image, probs, dilations=(1, 2, 3), num_iter=4, w_app=0.5, w_pos=0.02)
    torch.testing.assert_close(module(image, probs), expected, rtol=0, atol=0)
    assert "num_iter=4" in repr(module) and "w_pos=0.02" in repr(module)
    assert len(list(module.parameters())) == 0 and len(list(module.buffers())) == 0


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "image,probs,exc,match",
    [
        ("not a tensor", torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), [[0.5]], TypeError, "probs"),
        (torch.rand(3, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.rand(1, 3, 4, 4), torch.rand(2, 4, 4), ValueError, "probs"),
        (torch.rand(1, 3, 4, 4), torch.rand(2, 2, 4, 4), ValueError, "probs"),
        (torch.rand(1, 4, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.randint(0, 255, (1, 3, 4, 4)), torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), torch.ones(1, 2, 4, 4, dtype=torch.long), TypeError, "probs"),
    ],
)
def test_input_validation(image, probs, exc, match):
    with pytest.raises(exc, match=match):
        pixel_adaptive_refine(image, probs)
    with pytest.raises(exc, match=match):
        PixelAdaptiveRefine()(image, probs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dilations": ()}, ValueError, "dilations"),
        ({"dilations": (1, 0)}, ValueError, "dilations"),
        ({"dilations": (1, 2.5)}, TypeError, "dilations"),
        ({"dilations": 3}, TypeError, "dilations"),
        ({"num_iter": -1}, ValueError, "num_iter"),
        ({"num_iter": 2.0}, TypeError, "num_iter"),
        ({"w_app": 0.0}, ValueError, "w_app"),
        ({"w_pos": -0.1}, ValueError, "w_pos"),
        ({"eps": float("nan")}, ValueError, "eps"),
    ],
)
def test_hyperparameter_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PixelAdaptiveRefine(**kwargs)
    with pytest.raises(exc, match=match):
        pixel_adaptive_refine(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), **kwargs)
