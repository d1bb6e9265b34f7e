"""Tests of VARM (``wsseg.layers.variation_aware_refine``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.official_refiners import (
    official_varm,
    official_varm_kernel,
    to_official_order,
)
from wsseg.layers import VariationAwareRefine, variation_aware_refine
from wsseg.layers._neighbors import neighbor_offsets
from wsseg.layers.variation_aware_refine import _varm_kernel

D = (1, 2, 4, 8, 12, 24)


def _kernel(image, dilations=D, clip_negative=False, renormalize=False, variation_weight=0.01):
    return _varm_kernel(image, dilations, 4.0, variation_weight, 1e-8, clip_negative, renormalize)


def _to_official_order(kernel: torch.Tensor, dilations=D) -> torch.Tensor:
    return to_official_order(kernel, dilations)


# ------------------------------------------------------------------------------ official formulation
@pytest.mark.parametrize(
    "batch,channels,image_size,probs_size",
    [(2, 3, (33, 47), (17, 20)), (2, 21, (64, 64), (32, 32)), (1, 7, (40, 24), (40, 24)), (2, 5, (50, 26), (9, 7))],
)
def test_matches_official_formulation(batch, channels, image_size, probs_size):
    image = torch.rand(batch, 3, *image_size)
    probs = torch.rand(batch, channels, *probs_size).softmax(dim=1)
    out = variation_aware_refine(image, probs)
    ref = official_varm(image, probs, D, 10)
    assert out.shape == (batch, channels, *image_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_matches_official_float64_other_settings():
    image = torch.rand(2, 3, 19, 23, dtype=torch.float64)
    probs = torch.rand(2, 4, 10, 12, dtype=torch.float64)
    out = variation_aware_refine(image, probs, dilations=(1, 3, 30), num_iter=5)
    torch.testing.assert_close(out, official_varm(image, probs, (1, 3, 30), 5), rtol=1e-12, atol=1e-12)


def test_kernel_matches_official_sums_to_0_99_and_has_negative_weights():
    image = torch.rand(2, 3, 32, 28)
    kernel = _kernel(image)
    assert kernel.shape == (2, 1, 48, 32, 28)
    torch.testing.assert_close(kernel.sum(dim=2), torch.full((2, 1, 32, 28), 0.99), rtol=0, atol=1e-6)
    torch.testing.assert_close(_to_official_order(kernel), official_varm_kernel(image, D), rtol=0, atol=1e-5)
    image64 = image.double()
    ours64 = _to_official_order(_kernel(image64))
    torch.testing.assert_close(ours64, official_varm_kernel(image64, D), rtol=0, atol=1e-12)
    # official quirk: many weights slightly negative, never below -variation_weight
    assert (kernel < 0).float().mean() > 0.3
    assert kernel.min() >= -0.01


def test_kernel_by_hand_including_border_rule():
    # one dilation, numpy loops; pixels on the last row / column exercise the "difference 0" rule
    rng = np.random.default_rng(3)
    img = rng.random((3, 5, 6))
    h, w = 5, 6
    kernel = _kernel(torch.from_numpy(img)[None], dilations=(1,))

    def at(r, c):
        return img[:, min(max(r, 0), h - 1), min(max(c, 0), w - 1)]

    for (i, j) in [(2, 3), (4, 2), (1, 5), (4, 5), (0, 0)]:
        offsets = neighbor_offsets((1,))
        shifted = np.stack([at(i + dy, j + dx) for dy, dx in offsets])  # (8, 3)
        sigma = shifted.std(axis=0, ddof=1)
        app = -np.mean((4 * np.abs(shifted - img[:, i, j]) / (sigma + 1e-8)) ** 2, axis=1)
        var = []
        for dy, dx in offsets:
            d_row = 0.0 if i == h - 1 else (at(i + dy, j + dx) - at(i + 1 + dy, j + dx)) ** 2
            d_col = 0.0 if j == w - 1 else (at(i + dy, j + dx) - at(i + dy, j + 1 + dx)) ** 2
            var.append(np.mean(d_row + d_col))
        var = np.array(var)
        soft_app = np.exp(app - app.max()) / np.exp(app - app.max()).sum()
        soft_var = np.exp(var - var.max()) / np.exp(var - var.max()).sum()
        np.testing.assert_allclose(kernel[0, 0, :, i, j].numpy(), soft_app - 0.01 * soft_var,
                                   rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------ properties
def test_constant_image_constant_map_shrinks_by_0_99_per_step():
    image = torch.full((2, 3, 20, 16), 0.6)
    kernel = _kernel(image)
    torch.testing.assert_close(kernel, torch.full_like(kernel, 0.99 / 48), rtol=1e-6, atol=0)
    probs = torch.full((2, 3, 10, 8), 0.5)
    out = variation_aware_refine(image, probs, num_iter=10)
    torch.testing.assert_close(out, torch.full_like(out, 0.5 * 0.99 ** 10), rtol=1e-5, atol=0)


def test_channel_sum_shrinks_by_0_99_per_step():
    image = torch.rand(2, 3, 24, 18)
    probs = torch.rand(2, 5, 12, 9).softmax(dim=1)
    out = variation_aware_refine(image, probs, num_iter=10)
    torch.testing.assert_close(out.sum(dim=1), torch.full((2, 24, 18), 0.99 ** 10), rtol=1e-5, atol=0)


def test_clip_negative_and_renormalize_options():
    image = torch.rand(2, 3, 20, 22, dtype=torch.float64)
    probs = torch.rand(2, 3, 10, 11, dtype=torch.float64)
    default = variation_aware_refine(image, probs)
    # renormalize alone divides every weight by 0.99 -> output scaled by 0.99**-T
    renorm = variation_aware_refine(image, probs, renormalize=True)
    torch.testing.assert_close(renorm, default / 0.99 ** 10, rtol=1e-10, atol=1e-12)
    clipped = _kernel(image, clip_negative=True)
    assert (clipped >= 0).all() and (clipped.sum(dim=2) > 0.99).all()
    both = _kernel(image, clip_negative=True, renormalize=True)
    assert (both >= 0).all()
    torch.testing.assert_close(both.sum(dim=2), torch.ones_like(both.sum(dim=2)))
    out = variation_aware_refine(image, probs.softmax(dim=1), clip_negative=True, renormalize=True)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 20, 22, dtype=torch.float64))


def test_zero_channel_stays_zero():
    image = torch.rand(2, 3, 20, 20)
    probs = torch.rand(2, 4, 10, 10)
    probs[:, 3] = 0
    out = variation_aware_refine(image, probs)
    assert torch.count_nonzero(out[:, 3]) == 0
    torch.testing.assert_close(variation_aware_refine(image, probs[:, :2]), out[:, :2], rtol=0, atol=1e-6)


def test_flip_equivariance():
    # The forward-difference variation of the official code is not mirror-symmetric, so exact
    # equivariance holds without the variation term, or for flips along which the image is constant.
    probs = torch.rand(2, 4, 9, 14, dtype=torch.float64)
    image = torch.rand(2, 3, 18, 27, dtype=torch.float64)
    for dim in (-1, -2):
        out = variation_aware_refine(image, probs, variation_weight=0.0)
        flipped = variation_aware_refine(image.flip(dim), probs.flip(dim), variation_weight=0.0)
        torch.testing.assert_close(flipped, out.flip(dim), rtol=0, atol=1e-12)
    rows_only = torch.rand(2, 3, 18, 1, dtype=torch.float64).expand(-1, -1, -1, 27).contiguous()
    out = variation_aware_refine(rows_only, probs)
    torch.testing.assert_close(variation_aware_refine(rows_only.flip(-1), probs.flip(-1)), out.flip(-1),
                               rtol=0, atol=1e-12)
    cols_only = torch.rand(2, 3, 1, 27, dtype=torch.float64).expand(-1, -1, 18, -1).contiguous()
    out = variation_aware_refine(cols_only, probs)
    torch.testing.assert_close(variation_aware_refine(cols_only.flip(-2), probs.flip(-2)), out.flip(-2),
                               rtol=0, atol=1e-12)


def test_variation_depends_on_intensity_scale_but_appearance_does_not():
    image = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    probs = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    no_var = variation_aware_refine(image, probs, variation_weight=0.0, eps=0.0)
    torch.testing.assert_close(variation_aware_refine(image * 255, probs, variation_weight=0.0, eps=0.0), no_var,
                               rtol=1e-9, atol=1e-9)
    assert not torch.allclose(variation_aware_refine(image * 255, probs), variation_aware_refine(image, probs),
                              rtol=1e-7, atol=1e-7)


def test_no_gradient_and_autocast():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    probs = torch.rand(1, 3, 8, 8, requires_grad=True)
    ref = variation_aware_refine(image, probs)
    assert not ref.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = variation_aware_refine(image, probs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    low = variation_aware_refine(image.detach().bfloat16(), probs.detach().bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.02, atol=0.02)


def test_module_equals_function_and_repr():
    image = torch.rand(2, 3, 14, 15)
    probs = torch.rand(2, 3, 7, 8)
    kwargs = dict(dilations=(1, 2, 5), num_iter=3, appearance_scale=3.0, variation_weight=0.05, clip_negative=True)
    module = VariationAwareRefine(**kwargs)
    torch.testing.assert_close(module(image, probs), variation_aware_refine(image, probs, **kwargs), rtol=0, atol=0)
    text = repr(VariationAwareRefine())
    for part in ("num_iter=10", "appearance_scale=4.0", "variation_weight=0.01", "clip_negative=False",
                 "renormalize=False"):
        assert part in text
    assert len(list(module.parameters())) == 0


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "image,probs,exc,match",
    [
        (1.0, torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), "probs", TypeError, "probs"),
        (torch.rand(4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.rand(1, 3, 4, 4), torch.rand(4, 4), ValueError, "probs"),
        (torch.rand(3, 3, 4, 4), torch.rand(2, 2, 4, 4), ValueError, "probs"),
        (torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.int32), torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.int64), TypeError, "probs"),
    ],
)
def test_input_validation(image, probs, exc, match):
    with pytest.raises(exc, match=match):
        variation_aware_refine(image, probs)
    with pytest.raises(exc, match=match):
        VariationAwareRefine()(image, probs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dilations": (-1,)}, ValueError, "dilations"),
        ({"num_iter": 1.5}, TypeError, "num_iter"),
        ({"appearance_scale": 0.0}, ValueError, "appearance_scale"),
        ({"variation_weight": -0.01}, ValueError, "variation_weight"),
        ({"eps": float("inf")}, ValueError, "eps"),
        ({"clip_negative": "yes"}, TypeError, "clip_negative"),
        ({"renormalize": None}, TypeError, "renormalize"),
    ],
)
def test_hyperparameter_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        VariationAwareRefine(**kwargs)
    with pytest.raises(exc, match=match):
        variation_aware_refine(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), **kwargs)
