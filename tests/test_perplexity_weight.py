"""Tests for the EXPERIMENTAL wsseg.pseudo.PerplexityReliabilityWeight (assumed formula, cosa.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from wsseg.pseudo import PerplexityReliabilityWeight, perplexity_reliability_weight


def _spec_weight(m: float, low: float, high: float, t: float, beta: float) -> float:
    """The spec's equations, scalar by scalar: u = sigmoid((m - mid)/t), H = binary entropy, w = PP^-beta."""
    u = 1.0 / (1.0 + math.exp(-(m - (low + high) / 2) / t))
    h = -sum(p * math.log(p) for p in (u, 1.0 - u) if p > 0)
    return (1.0 / math.exp(h)) ** beta


def test_hand_computed_values():
    # pixel 0: max over classes is 0.55 -> z = (0.55 - 0.45) / 0.1 = 1; pixel 1: 0.25 -> z = -2;
    # pixel 2: exactly the midpoint -> u = 1/2, H = log 2, w = 1/2.
    cam = torch.tensor([[0.10, 0.25, 0.45], [0.55, 0.00, 0.30]]).view(1, 2, 1, 3)
    w = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.1)
    torch.testing.assert_close(w.flatten(), torch.tensor([0.5586662073, 0.6939649285, 0.5]), rtol=0, atol=1e-6)
    w2 = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.1, beta=2.0)
    torch.testing.assert_close(w2.flatten(), torch.tensor([0.3121079312, 0.6939649285 ** 2, 0.25]),
                               rtol=0, atol=1e-6)


def test_against_scalar_transcription_random():
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    for t, beta, low, high in [(0.1, 1.0, 0.25, 0.7), (0.03, 0.5, 0.3, 0.65), (1.0, 3.0, 0.0, 1.0)]:
        w = perplexity_reliability_weight(cam, low, high, temperature=t, beta=beta)
        m = cam.amax(dim=1)
        ref = torch.tensor([_spec_weight(float(v), low, high, t, beta) for v in m.flatten()],
                           dtype=torch.float64).view_as(m)
        torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)


def test_range_monotonic_in_distance_and_extremes_finite():
    cam = torch.linspace(0, 1, 101).view(1, 1, 1, 101)
    w = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=1e-3).flatten()
    assert torch.isfinite(w).all() and (w >= 0.5).all() and (w <= 1.0).all()
    assert w[0] == 1.0 and w[-1] == 1.0  # saturated sigmoid: entropy 0, no 0*log(0) NaN
    w = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.2).flatten()
    dist = (cam.flatten() - 0.45).abs()
    order = torch.argsort(dist)
    assert (w[order].diff() >= -1e-6).all()  # more reliable the farther from the midpoint
    assert w.argmin() == 45
    wb = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.2, beta=3.0)
    assert (wb >= 2.0 ** -3 - 1e-7).all() and (wb <= 1).all()
    assert torch.equal(perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.2, beta=0.0),
                       torch.ones(1, 1, 101))


def test_thresholds_tensor_or_float_and_symmetric():
    cam = torch.rand(2, 4, 6, 6)
    a = perplexity_reliability_weight(cam, 0.25, 0.7, temperature=0.1)
    b = perplexity_reliability_weight(cam, torch.tensor(0.25), torch.tensor(0.7, dtype=torch.float64),
                                      temperature=0.1)
    c = perplexity_reliability_weight(cam, 0.7, 0.25, temperature=0.1)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert a.dtype == torch.float32


def test_detached_and_half_precision():
    cam = torch.rand(1, 3, 4, 4, requires_grad=True)
    w = perplexity_reliability_weight(cam, torch.tensor(0.2, requires_grad=True), 0.7, temperature=0.1)
    assert not w.requires_grad and w.grad_fn is None
    wh = perplexity_reliability_weight(cam.detach().half(), 0.2, 0.7, temperature=0.1)
    assert wh.dtype == torch.float32
    torch.testing.assert_close(wh, w, atol=2e-3, rtol=0)


def test_valid_and_normalize():
    g = torch.Generator().manual_seed(1)
    cam = torch.rand(2, 3, 4, 5, generator=g)
    valid = torch.rand(2, 4, 5, generator=g) > 0.4
    raw = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.1)
    w = perplexity_reliability_weight(cam, 0.2, 0.7, valid, temperature=0.1)
    assert (w[~valid] == 0).all()
    torch.testing.assert_close(w[valid], raw[valid])
    wn = perplexity_reliability_weight(cam, 0.2, 0.7, valid, temperature=0.1, normalize=True)
    torch.testing.assert_close(wn[valid].mean(), torch.tensor(1.0))
    torch.testing.assert_close(wn[valid], raw[valid] / raw[valid].mean())  # a batch-wide constant factor
    assert (wn[~valid] == 0).all()
    wn_all = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.1, normalize=True)
    torch.testing.assert_close(wn_all.mean(), torch.tensor(1.0))
    none_valid = torch.zeros(2, 4, 5, dtype=torch.bool)
    wz = perplexity_reliability_weight(cam, 0.2, 0.7, none_valid, temperature=0.1, normalize=True)
    assert torch.equal(wz, torch.zeros(2, 4, 5))


def test_class_equals_function_and_repr():
    cam = torch.rand(2, 3, 4, 4)
    valid = torch.rand(2, 4, 4) > 0.3
    mod = PerplexityReliabilityWeight(temperature=0.07, beta=1.5, normalize=True)
    torch.testing.assert_close(mod(cam, torch.tensor(0.3), torch.tensor(0.6), valid),
                               perplexity_reliability_weight(cam, 0.3, 0.6, valid, temperature=0.07, beta=1.5,
                                                             normalize=True), rtol=0, atol=0)
    assert repr(mod) == "PerplexityReliabilityWeight(temperature=0.07, beta=1.5, normalize=True)"
    assert mod.__doc__.startswith("Experimental")
    assert perplexity_reliability_weight.__doc__.startswith("Experimental")


def test_errors():
    cam = torch.rand(1, 2, 3, 3)
    with pytest.raises(TypeError):
        PerplexityReliabilityWeight()  # temperature is required
    with pytest.raises(TypeError):
        perplexity_reliability_weight(cam, 0.2, 0.7)  # temperature is required
    for bad in (0.0, -1.0, float("inf"), float("nan"), None):
        with pytest.raises(ValueError, match="temperature"):
            PerplexityReliabilityWeight(temperature=bad)
    with pytest.raises(ValueError, match="beta"):
        PerplexityReliabilityWeight(temperature=0.1, beta=-1.0)
    with pytest.raises(TypeError, match="normalize"):
        PerplexityReliabilityWeight(temperature=0.1, normalize="yes")
    with pytest.raises(TypeError, match="cam"):
        perplexity_reliability_weight(cam.long(), 0.2, 0.7, temperature=0.1)
    with pytest.raises(ValueError, match="cam"):
        perplexity_reliability_weight(cam[0], 0.2, 0.7, temperature=0.1)
    with pytest.raises(ValueError, match="valid"):
        perplexity_reliability_weight(cam, 0.2, 0.7, torch.ones(1, 3, 4, dtype=torch.bool), temperature=0.1)
    with pytest.raises(TypeError, match="valid"):
        perplexity_reliability_weight(cam, 0.2, 0.7, torch.ones(1, 3, 3), temperature=0.1)
    with pytest.raises(ValueError, match="low"):
        perplexity_reliability_weight(cam, torch.tensor([0.2]), 0.7, temperature=0.1)
    with pytest.raises(TypeError, match="high"):
        perplexity_reliability_weight(cam, 0.2, "0.7", temperature=0.1)
    with pytest.raises(TypeError, match="high"):
        perplexity_reliability_weight(cam, 0.2, torch.tensor(1), temperature=0.1)
    with pytest.raises(ValueError, match="low"):
        perplexity_reliability_weight(cam, float("nan"), 0.7, temperature=0.1)
