"""Tests of AdaptiveKPooling (``wsseg.layers.adaptive_k_pooling``): ViT-PCM max pooling and APC's (assumed)
Adaptive-K rules, against hand-computed values and the per-(image, class) loop of
``tests/reference/official_vitpcm_pooling.py``."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from tests.reference.official_vitpcm_pooling import (
    official_global_max_pooling,
    reference_adaptive_k,
    reference_topk_mean,
)
from wsseg.layers import AdaptiveKOutput, AdaptiveKPooling, adaptive_k_pooling

ADAPTIVE = ("ratio_to_max", "ratio_consecutive")


def _probs(B=3, N=20, C=5, scale=3.0, dtype=torch.float32, seed=0):
    """Per-patch softmax over classes (tie-free almost surely), tokens layout (B, N, C)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, C, generator=g, dtype=torch.float64) * scale).softmax(-1).to(dtype)


def _col(*values):
    """One image, one class: (1, N, 1)."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1)


# ------------------------------------------------------------------------------ "max" = ViT-PCM
@pytest.mark.parametrize("grid", [False, True])
def test_max_equals_amax_values_and_onehot_gradient(grid):
    probs = _probs(B=3, N=24, C=5).requires_grad_()
    x = rearrange(probs, "b (h w) c -> b c h w", h=4) if grid else probs
    out = adaptive_k_pooling(x)
    assert torch.equal(out, probs.amax(dim=1))
    assert torch.equal(out, official_global_max_pooling(rearrange(probs, "b (h w) c -> b h w c", h=4)))
    w = torch.randn(3, 5)
    (out * w).sum().backward()
    expected = torch.zeros(3, 24, 5)
    arg = probs.detach().argmax(dim=1)                                    # (B, C)
    for b in range(3):
        for c in range(5):
            expected[b, arg[b, c], c] = w[b, c]
    assert torch.equal(probs.grad, expected)


def test_max_ties_share_the_gradient_like_reduce_max():
    probs = _col(0.5, 0.25, 0.5, 0.125).requires_grad_()
    out = adaptive_k_pooling(probs, return_k=True)
    out.scores.sum().backward()
    assert out.scores.item() == 0.5 and out.k.item() == 1
    assert torch.equal(probs.grad.flatten(), torch.tensor([0.5, 0.0, 0.5, 0.0]))
    assert out.mask.flatten().tolist() == [True, False, True, False]      # the patches receiving gradient


# ------------------------------------------------------------------------------ "fixed" = top-K mean
@pytest.mark.parametrize("k", [1, 3, 20])
def test_fixed_matches_sort_reference(k):
    probs = _probs(N=20).requires_grad_()
    ref_in = probs.detach().clone().requires_grad_()
    out = adaptive_k_pooling(probs, k_mode="fixed", k=k)
    ref = reference_topk_mean(ref_in, k)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(probs.grad, ref_in.grad, rtol=0, atol=1e-7)
    if k == 1:
        assert torch.equal(out, probs.amax(dim=1))
    if k == 20:
        torch.testing.assert_close(out, probs.mean(dim=1), rtol=0, atol=1e-6)


def test_fixed_hand_values_and_monotone_in_k():
    probs = _col(0.5, 0.25, 1.0, 0.125)
    got = [adaptive_k_pooling(probs, k_mode="fixed", k=k).item() for k in (1, 2, 3, 4)]
    assert got == pytest.approx([1.0, 0.75, 1.75 / 3, 1.875 / 4], rel=1e-7, abs=0)
    p = _probs()
    means = torch.stack([adaptive_k_pooling(p, k_mode="fixed", k=k) for k in range(1, 21)])
    assert (means[1:] <= means[:-1] + 1e-7).all()


# ------------------------------------------------------------------------------ adaptive modes vs the loop
CASES = [
    dict(rho=0.5), dict(rho=0.2), dict(rho=0.9), dict(rho=1.0),
    dict(rho=0.3, k_min=3), dict(rho=0.3, k_max=4), dict(rho=0.05, k_min=2, k_max=7),
    dict(rho=0.6, k_min=5, k_max=5),
]


@pytest.mark.parametrize("mode", ADAPTIVE)
@pytest.mark.parametrize("kw", CASES)
def test_adaptive_matches_reference_values_k_mask_and_gradient(mode, kw):
    probs = _probs(B=3, N=20, C=6, scale=2.0).requires_grad_()
    ref_in = probs.detach().clone().requires_grad_()
    out = adaptive_k_pooling(probs, k_mode=mode, return_k=True, **kw)
    ref_scores, ref_k, ref_mask = reference_adaptive_k(ref_in, mode, **kw)
    assert isinstance(out, AdaptiveKOutput)
    assert out.k.dtype == torch.long and out.mask.dtype == torch.bool and out.mask.shape == probs.shape
    assert torch.equal(out.k, ref_k)
    assert torch.equal(out.mask, ref_mask)
    torch.testing.assert_close(out.scores, ref_scores, rtol=0, atol=1e-6)
    w = torch.randn_like(out.scores)
    (out.scores * w).sum().backward()
    (ref_scores * w).sum().backward()
    torch.testing.assert_close(probs.grad, ref_in.grad, rtol=0, atol=1e-7)
    # the gradient is w / K exactly on the selected patches and zero elsewhere
    torch.testing.assert_close(probs.grad, out.mask * (w / out.k).unsqueeze(1), rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ADAPTIVE)
def test_adaptive_matches_reference_float64_many_classes(mode):
    probs = _probs(B=2, N=36, C=21, scale=4.0, dtype=torch.float64)
    for rho in (0.1, 0.45, 0.8):
        out = adaptive_k_pooling(probs, k_mode=mode, rho=rho, k_max=12, return_k=True)
        ref = reference_adaptive_k(probs, mode, rho=rho, k_max=12)
        assert torch.equal(out.k, ref[1]) and torch.equal(out.mask, ref[2])
        torch.testing.assert_close(out.scores, ref[0], rtol=0, atol=1e-12)


def _zeros_and_ties():
    cols = [
        [0.0] * 8,                                       # all zeros
        [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],        # one non-zero
        [0.5, 0.25, 0.0, 0.25, 0.0, 0.125, 0.0, 0.0],    # ties and zeros
        [0.25, 0.25, 0.25, 0.25, 0.0, 0.0, 0.0, 0.0],    # a tied plateau
        [0.125] * 8,                                     # constant
        [0.5, 0.25, 0.125, 0.0625, 0.5, 0.25, 0.125, 0.0625],
    ]
    return torch.tensor(cols, dtype=torch.float32).t().reshape(1, 8, -1).repeat(2, 1, 1)


@pytest.mark.parametrize("mode", ADAPTIVE)
@pytest.mark.parametrize("kw", [dict(rho=0.5), dict(rho=1.0), dict(rho=0.5, k_min=2),
                                dict(rho=0.3, k_max=3), dict(rho=1.0, k_min=3, k_max=6)])
def test_adaptive_zeros_and_ties_match_reference(mode, kw):
    probs = _zeros_and_ties()
    out = adaptive_k_pooling(probs, k_mode=mode, return_k=True, **kw)
    ref_scores, ref_k, _ = reference_adaptive_k(probs, mode, **kw)
    assert torch.equal(out.k, ref_k)
    torch.testing.assert_close(out.scores, ref_scores, rtol=0, atol=1e-7)
    # with ties the selected patches may differ, but they are K patches holding the K largest values
    assert torch.equal(out.mask.sum(dim=1), out.k)
    torch.testing.assert_close((probs * out.mask).sum(dim=1) / out.k, out.scores, rtol=0, atol=1e-7)
    sel_min = probs.masked_fill(~out.mask, float("inf")).amin(dim=1)
    rest_max = probs.masked_fill(out.mask, float("-inf")).amax(dim=1)
    assert (sel_min >= rest_max).all()


def test_hand_computed_k():
    col = _col(0.125, 0.5, 0.0, 0.25)                    # sorted: .5 .25 .125 0
    k = lambda mode, **kw: adaptive_k_pooling(col, k_mode=mode, return_k=True, **kw).k.item()  # noqa: E731
    assert k("ratio_to_max", rho=0.5) == 2               # >= 0.25
    assert k("ratio_to_max", rho=0.25) == 3              # >= 0.125
    assert k("ratio_consecutive", rho=0.5) == 3          # ratios .5 .5 0
    assert k("ratio_consecutive", rho=0.51) == 1
    assert k("ratio_consecutive", rho=0.5, k_max=2) == 2
    assert k("ratio_to_max", rho=0.5, k_min=4) == 4
    s = adaptive_k_pooling(col, k_mode="ratio_consecutive", rho=0.5)
    assert s.item() == pytest.approx(0.875 / 3, rel=1e-7, abs=0)
    zero = _col(0.0, 0.0, 0.0, 0.0)                       # ratio with P_(k) = 0 counts as below rho
    assert adaptive_k_pooling(zero, k_mode="ratio_consecutive", rho=0.5, return_k=True).k.item() == 1
    assert adaptive_k_pooling(zero, k_mode="ratio_consecutive", rho=0.5, k_min=2, return_k=True).k.item() == 2
    assert adaptive_k_pooling(zero, k_mode="ratio_to_max", rho=0.5, return_k=True).k.item() == 4  # 0 >= 0
    assert adaptive_k_pooling(zero, k_mode="ratio_to_max", rho=0.5, k_max=3, return_k=True).k.item() == 3


def test_ratio_to_max_unclipped_selects_every_patch_at_or_above_threshold():
    probs = _zeros_and_ties()
    for rho in (0.5, 1.0):
        out = adaptive_k_pooling(probs, k_mode="ratio_to_max", rho=rho, return_k=True)
        above = probs >= rho * probs.amax(dim=1, keepdim=True)     # deterministic, ties included
        assert torch.equal(out.mask, above)
    plateau = _col(0.25, 0.0, 0.25, 0.125, 0.25).requires_grad_()
    out = adaptive_k_pooling(plateau, k_mode="ratio_to_max", rho=1.0, return_k=True)
    out.scores.sum().backward()
    assert out.k.item() == 3 and out.scores.item() == 0.25
    assert torch.equal(plateau.grad.flatten(), torch.tensor([1, 0, 1, 0, 1]) / 3)


@pytest.mark.parametrize("mode", ADAPTIVE)
def test_rho_one_on_distinct_values_is_max_and_kmin_kmax_equal_is_fixed(mode):
    probs = _probs()
    assert torch.equal(adaptive_k_pooling(probs, k_mode=mode, rho=1.0), probs.amax(dim=1))
    torch.testing.assert_close(adaptive_k_pooling(probs, k_mode=mode, rho=0.4, k_min=4, k_max=4),
                               adaptive_k_pooling(probs, k_mode="fixed", k=4), rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------ gradcheck, layouts
@pytest.mark.parametrize("mode,kw", [("max", {}), ("fixed", dict(k=3)), ("ratio_to_max", dict(rho=0.7071)),
                                     ("ratio_consecutive", dict(rho=0.7071, k_min=2, k_max=5))])
def test_gradcheck_float64(mode, kw):
    B, N, C = 2, 6, 3
    g = torch.Generator().manual_seed(1)
    distinct = (torch.randperm(B * N * C, generator=g).double() + 1) / (B * N * C + 1)  # spaced by ~1/37
    probs = distinct.view(B, N, C).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: adaptive_k_pooling(p, k_mode=mode, **kw), (probs,))


@pytest.mark.parametrize("mode,kw", [("max", {}), ("fixed", dict(k=5)), ("ratio_to_max", dict(rho=0.3)),
                                     ("ratio_consecutive", dict(rho=0.6, k_max=9))])
def test_grid_layout_equals_token_layout(mode, kw):
    grid = torch.rand(2, 7, 3, 5).softmax(dim=1)          # (B, C, h, w), non-square
    tokens = rearrange(grid, "b c h w -> b (h w) c")
    a = adaptive_k_pooling(grid, k_mode=mode, return_k=True, **kw)
    b = adaptive_k_pooling(tokens, k_mode=mode, return_k=True, **kw)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.k, b.k)
    assert a.mask.shape == grid.shape and b.mask.shape == tokens.shape
    assert torch.equal(rearrange(a.mask, "b c h w -> b (h w) c"), b.mask)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw,match", [
    (dict(k_mode="fixed"), "k: required"),
    (dict(k_mode="ratio_to_max"), "rho: required"),
    (dict(k_mode="ratio_consecutive", k_max=4), "rho: required"),
    (dict(k_mode="mean"), "k_mode"),
    (dict(k_mode="fixed", k=0), "k: expected"),
    (dict(k_mode="fixed", k=2.0), "k: expected"),
    (dict(k_mode="fixed", k=True), "k: expected"),
    (dict(k_mode="ratio_to_max", rho=0.0), "rho: expected"),
    (dict(k_mode="ratio_to_max", rho=1.5), "rho: expected"),
    (dict(k_mode="ratio_to_max", rho=float("nan")), "rho: expected"),
    (dict(k_mode="ratio_to_max", rho=0.5, k_min=0), "k_min: expected"),
    (dict(k_mode="ratio_to_max", rho=0.5, k_min=4, k_max=3), "k_max: expected"),
    (dict(k_mode="max", k=3), "k: only used"),
    (dict(k_mode="max", rho=0.5), "rho: only used"),
    (dict(k_mode="fixed", k=2, k_max=4), "k_min, k_max: only used"),
])
def test_invalid_hyperparameters_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        adaptive_k_pooling(_probs(), **kw)
    with pytest.raises(ValueError, match=match):
        AdaptiveKPooling(**kw)


def test_invalid_inputs_raise():
    with pytest.raises(TypeError, match="probs"):
        adaptive_k_pooling(torch.ones(1, 4, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="probs"):
        adaptive_k_pooling([[0.5]])
    with pytest.raises(ValueError, match="probs: expected a 3 or 4-D"):
        adaptive_k_pooling(torch.rand(4, 2))
    with pytest.raises(ValueError, match="at least one patch"):
        adaptive_k_pooling(torch.rand(1, 0, 3))
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, N = 20\], got 21"):
        adaptive_k_pooling(_probs(), k_mode="fixed", k=21)
    with pytest.raises(ValueError, match="N = 20"):
        adaptive_k_pooling(_probs(), k_mode="ratio_consecutive", rho=0.5, k_max=21)
    with pytest.raises(ValueError, match="N = 20"):
        AdaptiveKPooling("ratio_to_max", rho=0.5, k_min=21)(_probs())


# ------------------------------------------------------------------------------ module, dtypes
@pytest.mark.parametrize("mode,kw", [("max", {}), ("fixed", dict(k=4)), ("ratio_to_max", dict(rho=0.5, k_max=8)),
                                     ("ratio_consecutive", dict(rho=0.5, k_min=2))])
def test_module_equals_function(mode, kw):
    probs = _probs()
    pool = AdaptiveKPooling(mode, **kw)
    assert torch.equal(pool(probs), adaptive_k_pooling(probs, k_mode=mode, **kw))
    full = AdaptiveKPooling(mode, return_k=True, **kw)(probs)
    ref = adaptive_k_pooling(probs, k_mode=mode, return_k=True, **kw)
    assert all(torch.equal(a, b) for a, b in zip(full, ref, strict=True))
    assert f"k_mode={mode!r}" in repr(pool) and "k_max=" in repr(pool) and "return_k=False" in repr(pool)
    assert list(pool.parameters()) == []


@pytest.mark.parametrize("mode,kw", [("max", {}), ("fixed", dict(k=4)), ("ratio_to_max", dict(rho=0.5)),
                                     ("ratio_consecutive", dict(rho=0.5, k_max=8))])
def test_bf16_autocast_and_half_inputs(mode, kw):
    feat = torch.randn(2, 16, 8, requires_grad=True)
    head = torch.nn.Linear(8, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs = head(feat).softmax(dim=-1)
        out = adaptive_k_pooling(probs, k_mode=mode, **kw)
    assert out.dtype == torch.float32 and out.shape == (2, 5)
    out.sum().backward()
    assert torch.isfinite(feat.grad).all() and feat.grad.abs().sum() > 0
    half = _probs(N=16).to(torch.bfloat16)
    res = adaptive_k_pooling(half, k_mode=mode, return_k=True, **kw)
    ref = adaptive_k_pooling(half.float(), k_mode=mode, return_k=True, **kw)
    assert res.scores.dtype == torch.float32
    assert torch.equal(res.scores, ref.scores) and torch.equal(res.k, ref.k)


def test_scores_lie_between_column_min_and_max():
    probs = _probs(N=30, C=7)
    for mode, kw in [("fixed", dict(k=7)), ("ratio_to_max", dict(rho=0.1)), ("ratio_consecutive", dict(rho=0.3))]:
        s = adaptive_k_pooling(probs, k_mode=mode, **kw)
        assert (s <= probs.amax(dim=1)).all() and (s >= probs.amin(dim=1)).all()


@pytest.mark.parametrize("k_mode", ["ratio_to_max", "ratio_consecutive"])
def test_ratio_modes_reject_negative_scores(k_mode):
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])            # (B=1, N=2, C=2) raw logits
    with pytest.raises(ValueError, match=rf"probs: k_mode='{k_mode}' .*non-negative.*minimum of -3"):
        adaptive_k_pooling(logits, k_mode=k_mode, rho=0.5)


def test_output_is_in_the_range_of_the_inputs():
    # max / fixed accept logits: the output is a mean of inputs (hand values), not clipped to [0, 1]
    logits = torch.tensor([[[4.0, -1.0], [2.0, -3.0], [0.0, -2.0]]])
    assert adaptive_k_pooling(logits).tolist() == [[4.0, -1.0]]
    assert adaptive_k_pooling(logits, k_mode="fixed", k=2).tolist() == [[3.0, -1.5]]
    # non-negative unbounded scores (a ReLU'd CAM) are accepted by the ratio rule, output in their range
    relu = logits.clamp_min(0)                                       # class 0: 4, 2, 0 -> >= 0.5*4: {4, 2}
    assert adaptive_k_pooling(relu, k_mode="ratio_to_max", rho=0.5).tolist() == [[3.0, 0.0]]


def test_sigmoid_multilabel_cam():
    # K = 2 classes, no background channel: pool the sigmoid, scores in [0, 1], BCE on (B, K) labels
    cam_logits = torch.tensor([[[[0.0, 2.0], [-2.0, 0.0]], [[-4.0, -4.0], [-4.0, -4.0]]]], requires_grad=True)
    probs = torch.sigmoid(cam_logits)
    scores = AdaptiveKPooling("fixed", k=2)(probs)
    s = torch.sigmoid(torch.tensor([2.0, 0.0, -4.0]))
    assert torch.allclose(scores, torch.stack([(s[0] + s[1]) / 2, s[2]])[None])
    loss = torch.nn.functional.binary_cross_entropy(scores, torch.tensor([[1.0, 0.0]]))
    loss.backward()
    assert cam_logits.grad is not None
    # in max mode, pooling the logits + BCE-with-logits equals pooling the sigmoid + BCE
    y = torch.tensor([[1.0, 0.0]])
    a = torch.nn.functional.binary_cross_entropy(AdaptiveKPooling()(probs), y)
    b = torch.nn.functional.binary_cross_entropy_with_logits(AdaptiveKPooling()(cam_logits), y)
    assert torch.allclose(a, b)
