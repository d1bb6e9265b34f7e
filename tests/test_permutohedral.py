"""Tests for wsseg.layers.permutohedral (the official permutohedral-lattice filter, common.md §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import wsseg.layers.permutohedral as perm_mod
from tests.reference.official_permutohedral import LoopLattice, bilateral_features, official_bilateral_filter
from wsseg.layers import PermutohedralLattice, permutohedral_filter


def _loop_filter(features: torch.Tensor, values: torch.Tensor, sse_padding: bool = True) -> torch.Tensor:
    """Reference, one lattice per batch item: features (B,N,d), values (B,C,N) -> (B,C,N) float32."""
    out = []
    for f, v in zip(features, values, strict=True):
        lattice = LoopLattice(f.float().numpy(), sse_padding=sse_padding)
        out.append(torch.from_numpy(lattice.compute(v.float().numpy().T).T))
    return torch.stack(out)


@pytest.mark.parametrize("n, d, c, sse_padding", [
    (37, 5, 3, True), (37, 5, 3, False), (40, 5, 1, True), (53, 2, 2, True), (29, 3, 4, True), (41, 1, 2, True),
    (33, 7, 2, True),
])
def test_matches_loop_reference_random_features(n, d, c, sse_padding):
    g = torch.Generator().manual_seed(n * 10 + d)
    feats = torch.rand(2, n, d, generator=g) * 4 - 1
    values = torch.rand(2, c, n, generator=g)
    got = permutohedral_filter(values, feats, sse_padding=sse_padding)
    ref = _loop_filter(feats, values, sse_padding)
    assert got.shape == values.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    lattice = PermutohedralLattice(feats, sse_padding=sse_padding)
    assert lattice.num_vertices == sum(len(LoopLattice(f.numpy(), sse_padding).table) for f in feats)


@pytest.mark.parametrize("h, w", [(6, 7), (8, 8), (5, 9)])
def test_matches_loop_reference_on_images(h, w):
    # smooth regions + an edge, bilateral features of bilateralfilter.cpp
    g = torch.Generator().manual_seed(h * w)
    image = torch.rand(2, 3, 1, 1, generator=g) * 200 + torch.randn(2, 3, h, w, generator=g) * 8
    image[..., w // 2:] = 255 - image[..., w // 2:]
    values = torch.rand(2, 4, h, w, generator=g).softmax(1)
    sigma_rgb, sigma_xy = 15.0, 3.0
    feats = torch.stack([torch.from_numpy(bilateral_features(i.numpy(), sigma_rgb, sigma_xy)) for i in image])
    got = permutohedral_filter(values.flatten(2), feats).view_as(values)
    ref = official_bilateral_filter(image, values, sigma_rgb, sigma_xy)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def _hat_closed_form(y: np.ndarray, v: np.ndarray) -> np.ndarray:
    """d = 1: linear (hat) splat onto the integers of y, two [1/2, 1, 1/2] passes over the existing
    integers only, hat slice, times alpha = 1 / (1 + 1/2)."""
    lo = np.floor(y).astype(int)
    frac = y - lo
    grid: dict[int, float] = {}
    for k0, t, val in zip(lo, frac, v, strict=True):
        grid[k0] = grid.get(k0, 0.0) + (1 - t) * val
        grid[k0 + 1] = grid.get(k0 + 1, 0.0) + t * val
    for _ in range(2):
        grid = {k: u + 0.5 * (grid.get(k - 1, 0.0) + grid.get(k + 1, 0.0)) for k, u in grid.items()}
    alpha = 1.0 / 1.5
    return np.array([alpha * ((1 - t) * grid[k0] + t * grid[k0 + 1]) for k0, t in zip(lo, frac, strict=True)])


def test_one_dimensional_closed_form():
    # d = 1: the lattice is the integer grid of y = (2/sqrt(3)) f (scale sqrt(2/3)(d+1)/sqrt(2))
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.uniform(0.1, 3.0, 20), rng.uniform(6.0, 7.5, 16)])  # a gap with missing vertices
    v = rng.uniform(0.0, 1.0, f.size)
    got = permutohedral_filter(torch.tensor(v, dtype=torch.float64)[None, None],
                               torch.tensor(f, dtype=torch.float32)[None, :, None], sse_padding=False)
    y = f.astype(np.float32).astype(np.float64) * (2 / math.sqrt(3))
    np.testing.assert_allclose(got[0, 0].numpy(), _hat_closed_form(y, v), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("d", [2, 3, 5])
def test_impulse_on_a_vertex_has_unit_peak(d):
    # an impulse exactly on a lattice vertex (feature 0) in a dense cloud: the blur leaves 1 + 2^-d at that
    # vertex (identity + the two all-same-sign paths) and alpha = 1 / (1 + 2^-d) brings the peak to 1
    g = torch.Generator().manual_seed(d)
    cloud = torch.rand(1, 3000, d, generator=g) * 4 - 2
    feats = torch.cat([torch.zeros(1, 1, d), cloud], dim=1)
    values = torch.zeros(1, 1, feats.shape[1])
    values[0, 0, 0] = 1.0
    out = permutohedral_filter(values, feats)
    assert out[0, 0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert out.max().item() == pytest.approx(1.0, abs=1e-6)


def test_isolated_impulse_closed_form():
    # a lone point on a vertex (feature 0; the 3 SSE padding points coincide with it). Its simplex's vertices
    # are 0, d_0, d_0 + d_1, ... (partial sums of the blur directions d_j), so of the three closed blur paths
    # 0 -> 0 (stay; all +d_j; all -d_j) only "stay" and "all +d_j" exist: value (1 + 2^-(d+1)), times alpha
    for d in (1, 2, 5):
        feats = torch.zeros(1, 4, d)
        values = torch.tensor([[[2.0, 0.0, 0.0, 0.0]]])
        got = permutohedral_filter(values, feats)
        expected = 2.0 * (1.0 + 2.0 ** -(d + 1)) / (1.0 + 2.0 ** -d)
        torch.testing.assert_close(got, torch.full_like(values, expected), rtol=1e-6, atol=0)


def test_far_clusters_do_not_interact():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 24, 5, generator=g)
    b = torch.rand(1, 24, 5, generator=g) + 40.0
    va, vb = torch.rand(1, 2, 24, generator=g), torch.rand(1, 2, 24, generator=g)
    both = permutohedral_filter(torch.cat([va, vb], 2), torch.cat([a, b], 1))
    torch.testing.assert_close(both[..., :24], permutohedral_filter(va, a), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(both[..., 24:], permutohedral_filter(vb, b), rtol=1e-6, atol=1e-7)


def test_batch_items_have_their_own_lattice():
    g = torch.Generator().manual_seed(4)
    feats, values = torch.rand(3, 21, 5, generator=g) * 3, torch.rand(3, 2, 21, generator=g)
    feats[1] = feats[0]  # identical features in different images must not share vertices
    got = permutohedral_filter(values, feats)
    for i in range(3):
        torch.testing.assert_close(got[i:i + 1], permutohedral_filter(values[i:i + 1], feats[i:i + 1]))


def test_gradient_is_the_adjoint_of_the_loop_reference():
    g = torch.Generator().manual_seed(5)
    n = 22
    feats = torch.rand(1, n, 5, generator=g) * 2
    lattice = LoopLattice(feats[0].numpy())
    kernel = torch.from_numpy(lattice.compute(np.eye(n, dtype=np.float32))).double()  # K[p, q]
    x = torch.rand(1, 3, n, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.rand(1, 3, n, dtype=torch.float64, generator=g)
    out = permutohedral_filter(x, feats)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out[0], x[0].detach() @ kernel.T, rtol=1e-5, atol=1e-7)
    (grad,) = torch.autograd.grad((out * y).sum(), x)
    torch.testing.assert_close(grad[0], y[0] @ kernel, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(kernel, kernel.T, rtol=1e-3)  # the lattice filter is not exactly symmetric


def test_gradcheck_float64_values():
    g = torch.Generator().manual_seed(6)
    lattice = PermutohedralLattice(torch.rand(2, 9, 3, generator=g) * 2)
    x = torch.rand(2, 2, 9, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lattice.filter, (x,))


def test_wide_key_range_fallback(monkeypatch):
    g = torch.Generator().manual_seed(7)
    feats, values = torch.rand(2, 30, 5, generator=g) * 5, torch.rand(2, 3, 30, generator=g)
    ref = permutohedral_filter(values, feats)
    monkeypatch.setattr(perm_mod, "_INT64_BUDGET", 0)  # force the lexicographic torch.unique path
    torch.testing.assert_close(permutohedral_filter(values, feats), ref, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(8)
    feats, values = torch.rand(2, 301, 5, generator=g) * 6, torch.rand(2, 7, 301, generator=g)
    torch.testing.assert_close(permutohedral_filter(values.cuda(), feats.cuda()).cpu(),
                               permutohedral_filter(values, feats), rtol=1e-5, atol=1e-6)


def test_validation_errors():
    feats, values = torch.rand(1, 10, 5), torch.rand(1, 2, 10)
    with pytest.raises(ValueError, match="features"):
        permutohedral_filter(values, feats[0])
    with pytest.raises(TypeError, match="features"):
        permutohedral_filter(values, feats.long())
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.rand(1, 0, 5))
    with pytest.raises(ValueError, match="features"):
        PermutohedralLattice(torch.full((1, 4, 5), float("nan")))
    with pytest.raises(ValueError, match="values"):
        permutohedral_filter(values[:, :, :9], feats)
    with pytest.raises(ValueError, match="values"):
        permutohedral_filter(values[0], feats)
    with pytest.raises(TypeError, match="values"):
        permutohedral_filter(values.long(), feats)
    with pytest.raises(ValueError, match="values"):
        PermutohedralLattice(feats).filter(torch.rand(2, 2, 10))
