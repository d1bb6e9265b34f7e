"""Tests for wsseg.pseudo.threshold_search (CoSA dynamic threshold, cosa.md §4)."""

from __future__ import annotations

import importlib.util
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsseg.pseudo import GMM1DResult, ThresholdSearch, gmm_1d
from wsseg.pseudo.threshold_search import _em

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
needs_sklearn = pytest.mark.skipif(
    not HAS_SKLEARN, reason="scikit-learn (dev dependency) is not installed: the comparisons with the "
                            "official GaussianMixture reference are skipped")
if HAS_SKLEARN:
    from tests.reference.official_cosa_threshold import (
        OfficialThresholdSearch,
        official_statistic,
        reference_gmm,
        reference_thresholds,
    )

# 36 values (three clusters) on which EM with the official initialisation ends with components
# 0 and 1 swapped: means ~(0.331, 0.093, 0.724) (scikit-learn agrees, see test_sort_components_*).
INVERTED = [0.061, 0.074, 0.077, 0.077, 0.085, 0.09, 0.111, 0.118, 0.148, 0.301, 0.304, 0.307, 0.31, 0.31,
            0.311, 0.317, 0.318, 0.318, 0.319, 0.321, 0.328, 0.332, 0.343, 0.343, 0.348, 0.349, 0.357,
            0.363, 0.367, 0.375, 0.717, 0.723, 0.725, 0.726, 0.727, 0.728]


def _values(kind: str, n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Synthetic CAM-maximum distributions in [0, 1], float64, values <= 0.05 dropped (official filter)."""
    g = torch.Generator().manual_seed(seed)

    def normal(mean, std, m):
        return mean + std * torch.randn(m, generator=g, dtype=torch.float64)

    if kind == "bimodal":
        x = torch.cat([normal(0.12, 0.05, n), normal(0.85, 0.07, n // 2)])
    elif kind == "bimodal_skewed":
        x = torch.cat([normal(0.2, 0.08, 3 * n), normal(0.7, 0.15, n // 3)])
    elif kind == "trimodal":
        x = torch.cat([normal(0.1, 0.04, n), normal(0.45, 0.1, n // 2), normal(0.9, 0.04, n)])
    elif kind == "uniform":
        x = torch.rand(2 * n, generator=g, dtype=torch.float64)
    elif kind == "inverted":
        x = torch.tensor(INVERTED, dtype=torch.float64)
    else:
        raise AssertionError(kind)
    x = x.clamp(0, 1)
    return x[x > 0.05]


KINDS = ["bimodal", "bimodal_skewed", "trimodal", "uniform", "inverted"]


# --------------------------------------------------------------------------- gmm_1d


@needs_sklearn
@pytest.mark.parametrize("n_components", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_gmm_matches_sklearn(kind, n_components):
    x = _values(kind)
    gm, pred = reference_gmm(x.numpy(), n_components)
    res = gmm_1d(x, n_components=n_components)
    assert isinstance(res, GMM1DResult)
    np.testing.assert_allclose(res.means.numpy(), gm.means_.ravel(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(res.variances.numpy(), gm.covariances_.ravel(), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res.weights.numpy(), gm.weights_, rtol=0, atol=1e-9)
    assert int(res.n_iter) == gm.n_iter_
    assert bool(res.converged) == gm.converged_
    assert res.assignment.dtype == torch.int64
    assert np.array_equal(res.assignment.numpy(), pred)


@needs_sklearn
def test_gmm_not_converged_matches_sklearn():
    x = _values("trimodal", 500)
    gm, pred = reference_gmm(x.numpy(), 3, max_iter=2, tol=0.0)
    res = gmm_1d(x, max_iter=2, tol=0.0)
    assert not bool(res.converged) and not gm.converged_ and int(res.n_iter) == 2
    np.testing.assert_allclose(res.means.numpy(), gm.means_.ravel(), atol=1e-12)
    assert np.array_equal(res.assignment.numpy(), pred)


def test_gmm_initialisation_hand_computed():
    # max_iter=0: the official initial parameters; the median of an even count is the mean of the middle two
    x = torch.tensor([0.875, 0.125, 0.5, 0.25], dtype=torch.float64)  # dyadic: exact arithmetic
    res = gmm_1d(x, max_iter=0)
    assert res.means.tolist() == [0.125, 0.375, 0.875]
    assert res.variances.tolist() == [1.0, 1.0, 1.0]
    assert res.weights.tolist() == pytest.approx([1 / 3] * 3)
    assert int(res.n_iter) == 0 and not bool(res.converged)
    # equal weights and variances: the nearest mean wins; 0.25 is exactly halfway between 0.125 and
    # 0.375 and goes to the lower index (argmax ties, as NumPy's)
    assert res.assignment.tolist() == [2, 0, 1, 0]
    res2 = gmm_1d(torch.tensor([0.5, 0.1, 0.7]), n_components=2, max_iter=0)
    assert res2.means.tolist() == pytest.approx([0.1, 0.7]) and res2.assignment.tolist() == [1, 0, 1]
    odd = gmm_1d(torch.tensor([0.3, 0.9, 0.1, 0.2, 0.5]), max_iter=0)
    assert odd.means.tolist() == pytest.approx([0.1, 0.3, 0.9])


def test_gmm_one_iteration_hand_computed():
    # one EM step from the initial parameters, written out with the equations in NumPy
    x = np.array([0.1, 0.15, 0.2, 0.5, 0.55, 0.8, 0.9, 0.95])
    mu = np.array([x.min(), np.median(x), x.max()])
    var, w = np.ones(3), np.full(3, 1 / 3)
    dens = w * np.exp(-0.5 * (x[:, None] - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)
    r = dens / dens.sum(1, keepdims=True)
    nk = r.sum(0) + 10 * np.finfo(np.float64).eps
    mu1 = (r * x[:, None]).sum(0) / nk
    var1 = (r * (x[:, None] - mu1) ** 2).sum(0) / nk + 1e-6
    w1 = nk / nk.sum()
    res = gmm_1d(torch.from_numpy(x), max_iter=1)
    np.testing.assert_allclose(res.means.numpy(), mu1, rtol=1e-12)
    np.testing.assert_allclose(res.variances.numpy(), var1, rtol=1e-12)
    np.testing.assert_allclose(res.weights.numpy(), w1, rtol=1e-12)
    dens1 = w1 * np.exp(-0.5 * (x[:, None] - mu1) ** 2 / var1) / np.sqrt(var1)
    assert res.assignment.tolist() == dens1.argmax(1).tolist()  # final E-step with the returned parameters


def test_gmm_convergence_rule():
    # converged after n iterations <=> the n-th change of the mean log-likelihood is below tol
    x = _values("trimodal", 400)
    full = gmm_1d(x, tol=0.0, max_iter=30)
    bounds = []
    for n in range(1, 31):  # bound of iteration n = mean log-likelihood of the parameters after n-1 steps
        r = gmm_1d(x, tol=0.0, max_iter=n - 1)
        dens = r.weights * torch.exp(-0.5 * (x[:, None] - r.means) ** 2 / r.variances) / torch.sqrt(
            2 * math.pi * r.variances)
        bounds.append(dens.sum(1).log().mean().item())
    changes = np.abs(np.diff([-np.inf] + bounds))
    for tol in (1e-2, 1e-3, 1e-5):
        expected = int(np.argmax(changes < tol)) + 1
        res = gmm_1d(x, tol=tol, max_iter=30)
        assert int(res.n_iter) == expected and bool(res.converged)
        ref = gmm_1d(x, tol=0.0, max_iter=expected)
        assert torch.equal(res.means, ref.means) and torch.equal(res.assignment, ref.assignment)
    assert not bool(full.converged) and int(full.n_iter) == 30


@pytest.mark.parametrize("check_every", [2, 5, 7])
def test_gmm_late_convergence_check_is_exact(check_every):
    # the device path checks convergence every few iterations; frozen parameters give the same result
    x = _values("trimodal", 2000)
    ref = _em(x, 3, 100, 1e-6, 1e-6, check_every=1)
    res = _em(x, 3, 100, 1e-6, 1e-6, check_every=check_every)
    assert 5 < int(ref.n_iter) < 100 and bool(ref.converged)
    for a, b in zip(ref, res, strict=True):
        assert torch.equal(a, b)


def test_gmm_float32_input_and_grad():
    x = _values("bimodal", 500)
    res64 = gmm_1d(x)
    x32 = x.float().requires_grad_()
    res32 = gmm_1d(x32)
    assert res32.means.dtype == torch.float64 and not res32.means.requires_grad
    torch.testing.assert_close(res32.means, res64.means, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"n_components": 4}, ValueError, "n_components"),
    ({"n_components": 1}, ValueError, "n_components"),
    ({"max_iter": -1}, ValueError, "max_iter"),
    ({"max_iter": 2.5}, ValueError, "max_iter"),
    ({"tol": -1e-3}, ValueError, "tol"),
    ({"reg_covar": -1.0}, ValueError, "reg_covar"),
    ({"init": "kmeans"}, ValueError, "init"),
])
def test_gmm_bad_args(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gmm_1d(torch.rand(10), **kwargs)


def test_gmm_bad_values():
    with pytest.raises(ValueError, match=r"values: expected a 1-D tensor"):
        gmm_1d(torch.rand(3, 4))
    with pytest.raises(TypeError, match="values: expected a floating-point"):
        gmm_1d(torch.arange(10))
    with pytest.raises(TypeError, match="values: expected a torch.Tensor"):
        gmm_1d([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 3 entries"):
        gmm_1d(torch.rand(2))
    with pytest.raises(ValueError, match="at least 2 entries"):
        gmm_1d(torch.rand(1), n_components=2)


# --------------------------------------------------------------------------- ThresholdSearch


def _cams(steps: int, B: int, kind: str, K: int = 4, size: int = 32, seed: int = 1) -> list[torch.Tensor]:
    """Label-validated normalised CAM batches whose per-pixel maxima follow ``kind``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        if kind == "uniform":
            cam = torch.rand(B, K, size, size, generator=g)
        else:
            fg = (F.interpolate(torch.rand(B, 1, 4, 4, generator=g), size=(size, size), mode="bilinear",
                                align_corners=False) > 0.5).float()
            hi = 0.85 + 0.08 * torch.randn(B, 1, size, size, generator=g)
            lo = 0.12 + 0.06 * torch.randn(B, 1, size, size, generator=g)
            m = fg * hi + (1 - fg) * lo
            if kind == "trimodal":
                mid = (F.interpolate(torch.rand(B, 1, 4, 4, generator=g), size=(size, size), mode="bilinear",
                                     align_corners=False) > 0.7).float()
                m = mid * (0.45 + 0.05 * torch.randn(B, 1, size, size, generator=g)) + (1 - mid) * m
            cls = torch.randint(0, K, (B, 1, size, size), generator=g)
            cam = 0.3 * m * torch.rand(B, K, size, size, generator=g)
            cam.scatter_(1, cls, m)
            cam[:, -1] = 0  # an absent class (label-validated CAM)
        out.append(cam.clamp(0, 1))
    return out


@needs_sklearn
@pytest.mark.parametrize("n_components", [2, 3])
@pytest.mark.parametrize("kind", ["bimodal", "trimodal", "uniform"])
def test_matches_official_update_sequence(kind, n_components):
    B, ratio, S = 2, 3, 14
    torch.manual_seed(0)
    search = ThresholdSearch(init_low=0.2, n_components=n_components, queue_ratio=ratio, stat_size=S,
                             batch_size=B)
    official = OfficialThresholdSearch(B, init_low=0.2, queue_ratio=ratio, stat_size=S, modal=n_components,
                                       queue=search.queue.double().numpy())
    for cam in _cams(5, B, kind):  # 5 steps: the ring buffer (3 batches) wraps around
        low, high = search(cam)
        ref_low, ref_high = official(cam)
        assert low.dtype == torch.float64 and low.dim() == 0
        assert abs(low.item() - ref_low) <= 0.01 and abs(high.item() - ref_high) <= 0.01
        assert low.item() == pytest.approx(ref_low, abs=1e-12)  # in practice: the same values
        assert high.item() == pytest.approx(ref_high, abs=1e-12)
    np.testing.assert_array_equal(search.queue.double().numpy(), official.queue)


@needs_sklearn
@pytest.mark.parametrize("n_components", [2, 3])
@pytest.mark.parametrize("kind", KINDS)
def test_raw_thresholds_match_sklearn(kind, n_components):
    # ema_decay=0: the thresholds are the raw fit of the queue (values fed through a 1-row queue)
    x = _values(kind, 400)
    x = torch.cat([x, torch.zeros(1024 - x.numel() % 1024)]) if x.numel() % 1024 else x  # zeros are filtered
    rows = x.float().view(-1, 1024)
    search = ThresholdSearch(ema_decay=0.0, n_components=n_components, queue_ratio=rows.shape[0],
                             stat_size=32, queue_init="empty", batch_size=1)
    for row in rows:  # identity resize: a (1, 1, 32, 32) CAM is its own statistic
        low, high = search(row.view(1, 1, 32, 32))
    ref = reference_thresholds(rows.double().numpy(), n_components)
    assert abs(low.item() - ref[0]) <= 0.01 and abs(high.item() - ref[1]) <= 0.01
    assert (low.item(), high.item()) == pytest.approx(ref, abs=1e-12)


def _feed(values, **kwargs) -> ThresholdSearch:
    """A 1-call search whose queue holds exactly ``values`` (36 of them, queue_init='empty')."""
    search = ThresholdSearch(ema_decay=0.0, queue_ratio=1, stat_size=6, queue_init="empty", batch_size=1,
                             **kwargs)
    search(torch.tensor(values, dtype=torch.float32).view(1, 1, 6, 6))
    return search


@needs_sklearn
def test_sort_components_reference_inverts():
    gm, _ = reference_gmm(np.array(INVERTED))
    assert not np.all(np.diff(gm.means_.ravel()) > 0)  # scikit-learn's fit is inverted as well
    assert reference_thresholds(np.array(INVERTED)) == pytest.approx((0.375, 0.717), abs=1e-6)
    assert reference_thresholds(np.array(INVERTED), sort_components=True) == pytest.approx((0.148, 0.717),
                                                                                             abs=1e-6)


def test_sort_components_fixes_inverted_order():
    res = gmm_1d(torch.tensor(INVERTED, dtype=torch.float64))
    assert res.means[0] > res.means[1]  # EM swapped components 0 and 1
    raw = _feed(INVERTED)
    fixed = _feed(INVERTED, sort_components=True)
    # faithful: component 0 is now the middle cluster, its max 0.375 becomes the low threshold
    assert raw.low.item() == pytest.approx(0.375, abs=1e-6)
    assert raw.high.item() == pytest.approx(0.717, abs=1e-6)
    # sorted: the low threshold is the top of the lowest cluster
    assert fixed.low.item() == pytest.approx(0.148, abs=1e-6)
    assert fixed.high.item() == pytest.approx(0.717, abs=1e-6)


def _tight_cluster(seed: int) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    return (0.54 + 0.002 * torch.randn(36, generator=g)).float().tolist()


# a single tight cluster: the three components collapse onto it and an outer one gets no value
TIGHT = {0: [1, 35, 0], 3: [0, 36, 0]}  # seed -> assignment counts (scikit-learn gives the same)


@pytest.mark.parametrize("seed", sorted(TIGHT))
def test_empty_component_raise_and_keep(seed):
    res = gmm_1d(torch.tensor(_tight_cluster(seed)))
    assert res.assignment.bincount(minlength=3).tolist() == TIGHT[seed]
    with pytest.raises(RuntimeError, match="empty"):
        _feed(_tight_cluster(seed), on_empty="raise")
    kept = _feed(_tight_cluster(seed), on_empty="keep")
    assert kept.low.item() == 0.25 and kept.high.item() == 0.7 and int(kept.step) == 1
    # nothing above filter_thre (all-zero CAM): the official crashes on min() of an empty array
    with pytest.raises(RuntimeError, match="filter_thre"):
        _feed([0.01] * 36, on_empty="raise")
    kept = _feed([0.01] * 36)
    assert (kept.low.item(), kept.high.item()) == (0.25, 0.7)


@needs_sklearn
@pytest.mark.parametrize("seed", sorted(TIGHT))
def test_empty_component_official_crashes(seed):
    values = np.array(_tight_cluster(seed))
    _, pred = reference_gmm(values)
    assert np.bincount(pred, minlength=3).tolist() == TIGHT[seed]
    with pytest.raises(ValueError):  # max() / min() of an empty array in rungmm
        reference_thresholds(values)


def test_ema_rule_hand_computed():
    cams = _cams(3, 2, "bimodal")
    raw = ThresholdSearch(ema_decay=0.0, queue_ratio=2, stat_size=8, queue_init="empty")
    ema = ThresholdSearch(init_low=0.2, init_high=0.7, ema_decay=0.9, queue_ratio=2, stat_size=8,
                          queue_init="empty")
    low, high = 0.2, 0.7
    for cam in cams:
        new_low, new_high = (t.item() for t in raw(cam))
        got_low, got_high = ema(cam)
        low, high = low * 0.9 + new_low * (1 - 0.9), high * 0.9 + new_high * (1 - 0.9)
        assert got_low.item() == low and got_high.item() == high  # double precision, as the official floats
    assert 0.2 < low < 0.7 and high != 0.7


@needs_sklearn
def test_ema_matches_official_formula():
    torch.manual_seed(3)
    search = ThresholdSearch(ema_decay=0.99, queue_ratio=2, stat_size=8, batch_size=2)
    queue = search.queue.double().numpy().copy()
    cam = _cams(1, 2, "bimodal")[0]
    low, high = search(cam)
    queue[:2] = official_statistic(cam, 8)
    new_low, new_high = reference_thresholds(queue)
    assert low.item() == pytest.approx(0.25 * 0.99 + new_low * 0.01, abs=1e-12)
    assert high.item() == pytest.approx(0.7 * 0.99 + new_high * 0.01, abs=1e-12)


def test_fifo_order_and_wraparound():
    search = ThresholdSearch(queue_ratio=2, stat_size=2, queue_init="empty", ema_decay=0.0)

    def const(*vals):
        return torch.tensor(vals).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).clone()

    search(const(0.1, 0.2))
    assert search.queue.shape == (4, 4) and int(search.count) == 2 and int(search.ptr) == 2
    search(const(0.3, 0.4))
    search(const(0.5, 0.6))  # overwrites the oldest rows
    assert search.queue[:, 0].tolist() == pytest.approx([0.5, 0.6, 0.3, 0.4])
    assert int(search.count) == 4 and int(search.ptr) == 2 and int(search.step) == 3
    search(const(0.7, 0.8, 0.9))  # a larger batch (B <= Q) wraps around the end of the buffer
    assert search.queue[:, 0].tolist() == pytest.approx([0.9, 0.6, 0.7, 0.8]) and int(search.ptr) == 1
    search(const(0.95, 0.15))
    assert search.queue[:, 0].tolist() == pytest.approx([0.9, 0.95, 0.15, 0.8]) and int(search.ptr) == 3
    with pytest.raises(ValueError, match="exceeds the queue length 4"):
        search(const(*([0.5] * 5)))


@needs_sklearn
def test_statistic_resizes_before_the_max():
    g = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 3, 20, 20, generator=g)
    cam[1, 2] = 0.0
    search = ThresholdSearch(queue_ratio=1, stat_size=7, batch_size=2)
    search(cam)
    expected = official_statistic(cam, 7)
    np.testing.assert_array_equal(search.queue.numpy(), expected)
    other_order = F.interpolate(cam.amax(1, keepdim=True), size=(7, 7), mode="bilinear",
                                align_corners=False).flatten(1)
    assert not torch.allclose(other_order, torch.from_numpy(expected))  # the order matters


def test_empty_queue_fits_only_written_rows():
    cams = _cams(1, 2, "bimodal", size=16)
    empty = ThresholdSearch(ema_decay=0.0, queue_ratio=50, stat_size=16, queue_init="empty")
    one_batch = ThresholdSearch(ema_decay=0.0, queue_ratio=1, stat_size=16, queue_init="uniform")
    uniform = ThresholdSearch(ema_decay=0.0, queue_ratio=50, stat_size=16, queue_init="uniform")
    a, b, c = empty(cams[0]), one_batch(cams[0]), uniform(cams[0])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # Q=2 rows of real data == 2 filled rows
    assert not torch.equal(a[0], c[0])                          # the uniform noise rows change the fit


def test_eval_mode_does_not_update():
    search = ThresholdSearch(init_low=0.3, init_high=0.6, queue_ratio=2, stat_size=8)
    search.eval()
    low, high = search(torch.rand(2, 3, 16, 16))
    assert (low.item(), high.item()) == (0.3, 0.6)
    assert search.queue.shape[0] == 0 and int(search.step) == 0  # no allocation, no step
    search.train()
    search(torch.rand(2, 3, 16, 16))
    state = {k: v.clone() for k, v in search.state_dict().items()}
    search.eval()
    low, high = search(torch.rand(2, 3, 16, 16))
    for k, v in search.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(low, state["low"]) and torch.equal(high, state["high"])
    low.fill_(0.0)  # a copy: the buffer is untouched
    assert torch.equal(search.low, state["low"])


@pytest.mark.parametrize("queue_init, update_every", [("uniform", 1), ("empty", 2)])
def test_state_dict_resume_is_bit_identical(queue_init, update_every):
    cams = _cams(6, 2, "trimodal", size=16)
    kw = dict(queue_ratio=2, stat_size=8, queue_init=queue_init, update_every=update_every,
              sort_components=True, ema_decay=0.9)
    torch.manual_seed(0)
    run = ThresholdSearch(**kw)
    for cam in cams[:3]:
        run(cam)
    buffer = io.BytesIO()
    torch.save(run.state_dict(), buffer)
    buffer.seek(0)
    assert set(run.state_dict()) == {"queue", "ptr", "count", "low", "high", "step"}
    torch.manual_seed(123)  # the resumed module's own initial draws must not matter
    resumed = ThresholdSearch(**kw)  # fresh, queue not allocated yet
    assert resumed.queue.shape[0] == 0
    resumed.load_state_dict(torch.load(buffer))
    sized = ThresholdSearch(batch_size=2, **kw)  # pre-allocated
    sized.load_state_dict(run.state_dict())
    for cam in cams[3:]:
        expected = run(cam)
        for other in (resumed, sized):
            got = other(cam)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    for k, v in run.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert int(resumed.step) == 6


def test_uniform_queue_draws_from_global_generator():
    torch.manual_seed(7)
    expected = torch.rand(4, 9)
    torch.manual_seed(7)
    search = ThresholdSearch(queue_ratio=2, stat_size=3, batch_size=2)
    assert torch.equal(search.queue, expected)
    torch.manual_seed(7)
    lazy = ThresholdSearch(queue_ratio=2, stat_size=3)
    assert lazy.queue.shape == (0, 9)
    lazy.eval()
    lazy(torch.rand(2, 1, 3, 3))  # eval: no allocation, and the generator draws above shift nothing below
    torch.manual_seed(7)
    lazy.train()
    cam = torch.zeros(2, 1, 3, 3)
    lazy(cam)  # allocation happens before the batch is written
    assert torch.equal(lazy.queue[2:], expected[2:]) and torch.equal(lazy.queue[:2], torch.zeros(2, 9))


def test_function_equals_class():
    cams = _cams(2, 2, "bimodal", size=16)
    search = ThresholdSearch(ema_decay=0.0, queue_ratio=2, stat_size=8, queue_init="empty")
    for cam in cams:
        low, high = search(cam)
    x = search.queue.double().flatten()
    x = x[x > 0.05]
    res = gmm_1d(x)
    assert low.item() == x[res.assignment == 0].max().item()
    assert high.item() == x[res.assignment == 2].min().item()


def test_half_precision_and_autocast_input():
    cam = _cams(1, 2, "bimodal", size=16)[0]
    ref = ThresholdSearch(queue_ratio=1, stat_size=8, queue_init="empty", ema_decay=0.0)(cam)
    got = ThresholdSearch(queue_ratio=1, stat_size=8, queue_init="empty", ema_decay=0.0)(cam.half())
    assert abs(got[0].item() - ref[0].item()) < 5e-3 and abs(got[1].item() - ref[1].item()) < 5e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = ThresholdSearch(queue_ratio=1, stat_size=8, queue_init="empty", ema_decay=0.0)(cam)
    assert torch.equal(auto[0], ref[0]) and torch.equal(auto[1], ref[1])


@pytest.mark.parametrize("kwargs, match", [
    ({"init_low": 0.8, "init_high": 0.7}, "init_low"),
    ({"init_low": float("nan")}, "init_low"),
    ({"n_components": 4}, "n_components"),
    ({"queue_ratio": 0}, "queue_ratio"),
    ({"stat_size": 2.0}, "stat_size"),
    ({"update_every": 0}, "update_every"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"queue_init": "zeros"}, "queue_init"),
    ({"on_empty": "skip"}, "on_empty"),
    ({"sort_components": 1}, "sort_components"),
    ({"max_iter": -1}, "max_iter"),
    ({"tol": -1.0}, "tol"),
    ({"reg_covar": -1.0}, "reg_covar"),
    ({"batch_size": 0}, "batch_size"),
    ({"filter_thre": "0.05"}, "filter_thre"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThresholdSearch(**kwargs)


def test_bad_inputs():
    search = ThresholdSearch(queue_ratio=2, stat_size=4)
    with pytest.raises(ValueError, match=r"cam: expected a 4-D tensor \(B, K, H, W\), got shape \(2, 8, 8\)"):
        search(torch.rand(2, 8, 8))
    with pytest.raises(TypeError, match="cam: expected a floating-point dtype"):
        search(torch.ones(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="cam: expected a torch.Tensor"):
        search(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="non-empty"):
        search(torch.rand(2, 0, 8, 8))
    assert int(search.step) == 0


def test_extra_repr():
    text = repr(ThresholdSearch(init_low=0.2, queue_ratio=50, sort_components=True, on_empty="raise"))
    for part in ("init_low=0.2", "init_high=0.7", "n_components=3", "queue_ratio=50", "stat_size=28",
                 "filter_thre=0.05", "ema_decay=0.99", "update_every=1", "queue_init='uniform'",
                 "sort_components=True", "on_empty='raise'", "max_iter=100", "tol=0.001", "reg_covar=1e-06",
                 "batch_size=None"):
        assert part in text


def test_update_every():
    cams = _cams(4, 2, "bimodal", size=16)
    every = ThresholdSearch(queue_ratio=2, stat_size=8, queue_init="empty")
    second = ThresholdSearch(queue_ratio=2, stat_size=8, queue_init="empty", update_every=2)
    outs = [(every(c)[0].item(), second(c)[0].item()) for c in cams]
    assert outs[0][0] == outs[0][1]            # both fit on the first call
    assert outs[1][1] == outs[0][1]            # no fit on the second call
    assert outs[2][1] != outs[1][1] and outs[3][1] == outs[2][1]
    assert int(second.step) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    x = _values("trimodal", 20000)
    cpu = gmm_1d(x, tol=1e-6)
    gpu = gmm_1d(x.cuda(), tol=1e-6)
    assert gpu.means.device.type == "cuda"
    assert int(gpu.n_iter) == int(cpu.n_iter) and bool(gpu.converged) == bool(cpu.converged)
    torch.testing.assert_close(gpu.means.cpu(), cpu.means, atol=1e-10, rtol=0)
    assert (gpu.assignment.cpu() != cpu.assignment).sum() <= 2
    cams = _cams(3, 2, "bimodal")
    torch.manual_seed(0)
    search_cpu = ThresholdSearch(queue_ratio=3, stat_size=14)
    torch.manual_seed(0)
    search_gpu = ThresholdSearch(queue_ratio=3, stat_size=14).cuda()
    for cam in cams:
        a, b = search_cpu(cam), search_gpu(cam.cuda())
        assert b[0].device.type == "cuda"
        assert abs(a[0].item() - b[0].item()) < 1e-6 and abs(a[1].item() - b[1].item()) < 1e-6


def test_module_dtype_conversion():
    cam = _cams(1, 2, "bimodal", size=16)[0]
    ref = ThresholdSearch(queue_ratio=1, stat_size=8, queue_init="empty", ema_decay=0.0)
    search = ThresholdSearch(queue_ratio=1, stat_size=8, queue_init="empty", ema_decay=0.0).double()
    a, b = ref(cam), search(cam)
    assert search.queue.dtype == torch.float64 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("fill, match", [(float("nan"), "16 NaN"), (3.0, r"got values in \[.*, 3\]"),
                                         (-0.5, r"got values in \[-0.5, ")])
def test_nan_or_unnormalised_cam_never_enters_the_queue(fill, match):
    search = ThresholdSearch(queue_ratio=2, stat_size=4, queue_init="empty", sort_components=True)
    cam = torch.rand(2, 3, 8, 8) * 0.9
    search(cam)
    queue, low, high = search.queue.clone(), search.low.clone(), search.high.clone()
    bad = cam.clone()
    bad[1] = fill                                     # one whole image: it would be queued
    with pytest.raises(ValueError, match=rf"cam: expected .*{match}"):
        search(bad)
    assert torch.equal(search.queue, queue) and int(search.step) == 1           # nothing stored
    assert torch.equal(search.low, low) and torch.equal(search.high, high)
    search.eval()
    assert torch.equal(search(bad)[0], low)          # eval mode stores nothing and does not check


def test_returns_float64_tensors_convertible_to_float():
    search = ThresholdSearch(init_low=0.25, init_high=0.7, queue_ratio=2, stat_size=4)
    low, high = search.eval()(torch.rand(1, 3, 8, 8))
    assert isinstance(low, torch.Tensor) and low.dtype == torch.float64 and low.shape == ()
    assert (float(low), float(high)) == (0.25, 0.7)
