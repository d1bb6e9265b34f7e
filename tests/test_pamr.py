"""Tests of PAMR (``wsseg.layers.pamr``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.reference.official_refiners import (
    official_pamr,
    official_pamr_kernel,
    to_official_order,
)
from wsseg.layers import PAMR, pamr
from wsseg.layers._neighbors import neighbor_offsets
from wsseg.layers.pamr import _pamr_kernel

D = (1, 2, 4, 8, 12, 24)


def _to_official_order(kernel: torch.Tensor, dilations=D) -> torch.Tensor:
    return to_official_order(kernel, dilations)


# ------------------------------------------------------------------------------ official formulation
@pytest.mark.parametrize(
    "batch,channels,image_size,probs_size",
    [(2, 3, (33, 47), (17, 20)), (2, 21, (64, 64), (32, 32)), (1, 7, (40, 24), (40, 24)), (2, 10, (30, 52), (8, 13))],
)
def test_matches_official_formulation(batch, channels, image_size, probs_size):
    image = torch.rand(batch, 3, *image_size)
    probs = torch.rand(batch, channels, *probs_size).softmax(dim=1)
    out = pamr(image, probs)
    ref = official_pamr(image, probs, D, 10)
    assert out.shape == (batch, channels, *image_size)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_matches_official_float64_other_settings():
    image = torch.randn(2, 3, 19, 23, dtype=torch.float64)
    probs = torch.rand(2, 4, 10, 12, dtype=torch.float64)
    out = pamr(image, probs, dilations=(1, 2), num_iter=5)
    torch.testing.assert_close(out, official_pamr(image, probs, (1, 2), 5), rtol=1e-12, atol=1e-12)


def test_kernel_is_a_softmax_matching_official():
    image = torch.rand(2, 3, 20, 28)
    kernel = _pamr_kernel(image, D, 0.1, 1e-8, True)
    assert kernel.shape == (2, 1, 48, 20, 28)
    assert (kernel >= 0).all()
    torch.testing.assert_close(kernel.sum(dim=2), torch.ones(2, 1, 20, 28), rtol=0, atol=1e-6)
    torch.testing.assert_close(_to_official_order(kernel), official_pamr_kernel(image, D), rtol=0, atol=1e-5)
    image64 = image.double()
    ours64 = _to_official_order(_pamr_kernel(image64, D, 0.1, 1e-8, True))
    torch.testing.assert_close(ours64, official_pamr_kernel(image64, D), rtol=0, atol=1e-12)


@pytest.mark.parametrize("unbiased", [True, False])
def test_kernel_by_hand_single_dilation(unbiased):
    # one dilation: σ over the 9-pixel window (centre included), written out with numpy
    rng = np.random.default_rng(1)
    img = rng.random((3, 5, 6))
    kernel = _pamr_kernel(torch.from_numpy(img)[None], (1,), 0.1, 1e-8, unbiased)
    for (i, j) in [(2, 3), (0, 0), (4, 5)]:
        rows = np.clip(np.arange(i - 1, i + 2), 0, 4)
        cols = np.clip(np.arange(j - 1, j + 2), 0, 5)
        window = img[:, rows][:, :, cols].reshape(3, 9)
        sigma = window.std(axis=1, ddof=1 if unbiased else 0)
        logits = []
        for dy, dx in neighbor_offsets((1,)):
            n = img[:, min(max(i + dy, 0), 4), min(max(j + dx, 0), 5)]
            logits.append(np.mean(-np.abs(n - img[:, i, j]) / (1e-8 + 0.1 * sigma)))
        logits = np.array(logits)
        expected = np.exp(logits - logits.max())
        expected /= expected.sum()
        np.testing.assert_allclose(kernel[0, 0, :, i, j].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_std_uses_54_samples():
    # biased σ over n samples = unbiased σ · sqrt((n-1)/n): with n = 54 (48 neighbours + 6 centres)
    # the biased variant equals the unbiased one with sigma_scale multiplied by sqrt(53/54)
    image = torch.rand(2, 3, 17, 21, dtype=torch.float64)
    probs = torch.rand(2, 3, 17, 21, dtype=torch.float64)
    biased = pamr(image, probs, unbiased_std=False)
    rescaled = pamr(image, probs, sigma_scale=0.1 * math.sqrt(53 / 54))
    torch.testing.assert_close(biased, rescaled, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(biased, pamr(image, probs), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ properties
def test_mass_is_preserved():
    image = torch.rand(2, 3, 24, 18)
    probs = torch.rand(2, 6, 12, 9).softmax(dim=1)
    out = pamr(image, probs, num_iter=10)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 24, 18), rtol=1e-5, atol=0)
    const = pamr(image, torch.full((2, 2, 5, 5), 0.3))
    torch.testing.assert_close(const, torch.full_like(const, 0.3), rtol=1e-5, atol=0)


def test_zero_channel_stays_zero():
    image = torch.rand(2, 3, 20, 20)
    probs = torch.rand(2, 4, 10, 10)
    probs[:, 1] = 0
    out = pamr(image, probs)
    assert torch.count_nonzero(out[:, 1]) == 0
    torch.testing.assert_close(pamr(image, probs[:, [0, 2]]), out[:, [0, 2]], rtol=0, atol=1e-6)


def test_intensity_scale_invariance():
    image = torch.rand(2, 3, 22, 26, dtype=torch.float64)
    probs = torch.rand(2, 5, 11, 13, dtype=torch.float64)
    base = pamr(image, probs, eps=0.0)
    torch.testing.assert_close(pamr(image * 255 - 3, probs, eps=0.0), base, rtol=1e-9, atol=1e-9)


def test_flip_equivariance():
    image = torch.rand(2, 3, 18, 27, dtype=torch.float64)
    probs = torch.rand(2, 4, 9, 14, dtype=torch.float64)
    out = pamr(image, probs)
    for dim in (-1, -2):
        torch.testing.assert_close(pamr(image.flip(dim), probs.flip(dim)), out.flip(dim), rtol=0, atol=1e-12)


def test_no_gradient_and_autocast():
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    probs = torch.rand(1, 3, 8, 8, requires_grad=True)
    ref = pamr(image, probs)
    assert not ref.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pamr(image, probs)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    low = pamr(image.detach().bfloat16(), probs.detach().bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.02, atol=0.02)


def test_module_equals_function_and_repr():
    image = torch.rand(2, 3, 14, 15)
    probs = torch.rand(2, 3, 7, 8)
    module = PAMR(dilations=(1, 2), num_iter=3, sigma_scale=0.2, unbiased_std=False)
    expected = pamr(image, probs, dilations=(1, 2), num_iter=3, sigma_scale=0.2, unbiased_std=False)
    torch.testing.assert_close(module(image, probs), expected, rtol=0, atol=0)
    assert "sigma_scale=0.2" in repr(module) and "unbiased_std=False" in repr(module)
    assert len(list(module.parameters())) == 0


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "image,probs,exc,match",
    [
        (np.zeros((1, 3, 4, 4)), torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), None, TypeError, "probs"),
        (torch.rand(1, 1, 3, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.rand(1, 3, 4, 4), torch.rand(1, 1, 2, 4, 4), ValueError, "probs"),
        (torch.rand(2, 3, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "probs"),
        (torch.rand(1, 1, 4, 4), torch.rand(1, 2, 4, 4), ValueError, "image"),
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.rand(1, 2, 4, 4), TypeError, "image"),
        (torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.bool), TypeError, "probs"),
    ],
)
def test_input_validation(image, probs, exc, match):
    with pytest.raises(exc, match=match):
        pamr(image, probs)
    with pytest.raises(exc, match=match):
        PAMR()(image, probs)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"dilations": [0]}, ValueError, "dilations"),
        ({"num_iter": -2}, ValueError, "num_iter"),
        ({"sigma_scale": 0}, ValueError, "sigma_scale"),
        ({"sigma_scale": "0.1"}, TypeError, "sigma_scale"),
        ({"eps": -1.0}, ValueError, "eps"),
        ({"unbiased_std": 1}, TypeError, "unbiased_std"),
    ],
)
def test_hyperparameter_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PAMR(**kwargs)
    with pytest.raises(exc, match=match):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 4, 4), **kwargs)
