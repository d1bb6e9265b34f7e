"""Tests for the poly + linear warm-up schedule (wsseg.optim.poly_warmup), against common.md §10 numbers."""

import pytest
import torch

from wsseg.optim import PolyWarmupLR, poly_warmup_multiplier


def _opt(*lrs):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(params, lr=lrs[0])


def _run(sched, opt, steps):
    for _ in range(steps):
        opt.step()
        sched.step()


def test_warmup_formula():
    r = 1e-6
    assert poly_warmup_multiplier(0, max_iters=100, warmup_iters=10, warmup_ratio=r) == pytest.approx(r)
    # t = 5 of W = 10: 1 - 0.5 * (1 - r)
    assert poly_warmup_multiplier(5, max_iters=100, warmup_iters=10, warmup_ratio=r) == pytest.approx(0.5 + r / 2)
    assert poly_warmup_multiplier(9, max_iters=100, warmup_iters=10, warmup_ratio=0.0) == pytest.approx(0.9)


def test_poly_formula_and_clamps():
    # t = 50, T = 100, p = 2: (1 - 0.5)^2 = 0.25
    assert poly_warmup_multiplier(50, max_iters=100, warmup_iters=0, power=2.0) == pytest.approx(0.25)
    assert poly_warmup_multiplier(100, max_iters=100, warmup_iters=0) == 0.0
    assert poly_warmup_multiplier(150, max_iters=100, warmup_iters=0) == 0.0  # clamped past T, no NaN
    assert poly_warmup_multiplier(90, max_iters=100, warmup_iters=0, power=1.0, min_mult=0.2) == pytest.approx(0.2)


def test_tscd_numbers():
    # TSCD: W = 1500, T = 20000, p = 1.0, encoder lr 6e-5
    lr = 6e-5
    kw = dict(max_iters=20000, warmup_iters=1500, power=1.0)
    before = lr * poly_warmup_multiplier(1499, **kw)
    at = lr * poly_warmup_multiplier(1500, **kw)
    assert before == pytest.approx(6.0e-5, rel=1e-3)     # 1 - (1/1500)(1 - 1e-6) = 0.99933
    assert at == pytest.approx(5.55e-5, rel=1e-9)         # (1 - 1500/20000)^1 = 0.925
    assert at < before                                     # official discontinuity at t = W


def test_cosa_numbers():
    # CoSA VOC: W = 1500, T = 32000, p = 0.9, eta = 6e-5
    kw = dict(max_iters=32000, warmup_iters=1500, power=0.9)
    assert poly_warmup_multiplier(1500, **kw) == pytest.approx((1 - 1500 / 32000) ** 0.9)
    assert poly_warmup_multiplier(1500, **kw) == pytest.approx(0.958, abs=5e-4)
    # log: lr 7.96e-6 at (1-based) iteration 200, i.e. step index 199; ~5.7e-5 at t = 1600
    assert 6e-5 * poly_warmup_multiplier(199, **kw) == pytest.approx(7.96e-6, abs=5e-9)
    assert 6e-5 * poly_warmup_multiplier(1600, **kw) == pytest.approx(5.7e-5, abs=5e-7)


def test_rebase_after_warmup_is_continuous():
    kw = dict(max_iters=20000, warmup_iters=1500, power=1.0, rebase_after_warmup=True)
    assert poly_warmup_multiplier(1500, **kw) == 1.0
    # halfway through [W, T]
    assert poly_warmup_multiplier(1500 + 9250, **kw) == pytest.approx(0.5)
    assert poly_warmup_multiplier(20000, **kw) == 0.0


def test_scheduler_matches_multiplier_per_group():
    opt = _opt(6e-5, 6e-4)  # encoder / 10x decoder group
    sched = PolyWarmupLR(opt, max_iters=200, warmup_iters=20, power=0.9)
    kw = dict(max_iters=200, warmup_iters=20, power=0.9)
    for t in range(60):
        m = poly_warmup_multiplier(t, **kw)
        assert opt.param_groups[0]["lr"] == pytest.approx(6e-5 * m)
        assert opt.param_groups[1]["lr"] == pytest.approx(6e-4 * m)
        assert sched.multiplier() == pytest.approx(m)
        _run(sched, opt, 1)


def test_scheduler_tscd_jump():
    opt = _opt(6e-5)
    sched = PolyWarmupLR(opt, max_iters=20000, warmup_iters=1500, power=1.0)
    _run(sched, opt, 1499)
    assert opt.param_groups[0]["lr"] == pytest.approx(6.0e-5, rel=1e-3)
    _run(sched, opt, 1)
    assert opt.param_groups[0]["lr"] == pytest.approx(5.55e-5)


def test_scheduler_state_dict_resume():
    opt = _opt(1.0)
    sched = PolyWarmupLR(opt, max_iters=100, warmup_iters=10)
    _run(sched, opt, 37)
    state = sched.state_dict()
    opt2 = _opt(1.0)
    sched2 = PolyWarmupLR(opt2, max_iters=100, warmup_iters=10)
    sched2.load_state_dict(state)
    _run(sched, opt, 1)
    _run(sched2, opt2, 1)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(poly_warmup_multiplier(38, max_iters=100, warmup_iters=10))
    assert "max_iters=100" in repr(sched)


def test_errors():
    with pytest.raises(ValueError, match="max_iters"):
        poly_warmup_multiplier(0, max_iters=0)
    with pytest.raises(ValueError, match="warmup_iters"):
        poly_warmup_multiplier(0, max_iters=10, warmup_iters=-1)
    with pytest.raises(ValueError, match="warmup_iters"):
        poly_warmup_multiplier(0, max_iters=10, warmup_iters=10, rebase_after_warmup=True)
    with pytest.raises(ValueError, match="warmup_ratio"):
        poly_warmup_multiplier(0, max_iters=10, warmup_ratio=2.0)
    with pytest.raises(ValueError, match="power"):
        poly_warmup_multiplier(0, max_iters=10, power=-1.0)
    with pytest.raises(ValueError, match="min_mult"):
        poly_warmup_multiplier(0, max_iters=10, min_mult=1.5)
    with pytest.raises(ValueError, match="step"):
        poly_warmup_multiplier(-1, max_iters=10)
    with pytest.raises(ValueError, match="max_iters"):
        PolyWarmupLR(_opt(1.0), max_iters=-5)
