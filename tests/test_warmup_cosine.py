"""Tests for the constant-then-cosine schedule (wsseg.optim.warmup_cosine), against SLRNet's numbers."""

import math

import pytest
import torch

from wsseg.optim import WarmupCosineLR, warmup_cosine_multiplier


def _opt(*lrs):
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(params, lr=lrs[0])


def test_multiplier_hand_values():
    kw = dict(warmup_iters=10, t_max=20)
    assert [warmup_cosine_multiplier(t, **kw) for t in (0, 5, 9, 10)] == [1.0, 1.0, 1.0, 1.0]
    assert warmup_cosine_multiplier(20, **kw) == pytest.approx(0.5)         # quarter period: cos(pi/2) = 0
    assert warmup_cosine_multiplier(30, **kw) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_multiplier(15, **kw) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def test_slrnet_voc_schedule_ends_at_0_4_percent():
    ipe = 661
    m = warmup_cosine_multiplier(30 * ipe, warmup_iters=6 * ipe, t_max=25 * ipe)
    assert m == pytest.approx((1 + math.cos(math.pi * 24 / 25)) / 2) and 0.0039 < m < 0.0040


def test_scheduler_matches_torch_cosine_after_warmup_and_keeps_group_ratios():
    opt = _opt(5e-4, 1e-3, 5e-3, 1e-2)
    sched = WarmupCosineLR(opt, warmup_iters=3, t_max=7)
    ref_opt = _opt(5e-4, 1e-3, 5e-3, 1e-2)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=7, eta_min=0.0)
    for t in range(12):
        lrs = [g["lr"] for g in opt.param_groups]
        if t < 3:
            assert lrs == [5e-4, 1e-3, 5e-3, 1e-2]
        else:
            assert lrs == pytest.approx([g["lr"] for g in ref_opt.param_groups], rel=1e-9, abs=1e-15)
            ref_opt.step()
            ref.step()
        assert lrs[3] == pytest.approx(20.0 * lrs[0], abs=1e-15)
        opt.step()
        sched.step()


def test_eta_min_and_resume():
    opt = _opt(1.0)
    sched = WarmupCosineLR(opt, warmup_iters=2, t_max=4, eta_min=0.1)
    for _ in range(6):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    state = sched.state_dict()
    opt2 = _opt(1.0)
    sched2 = WarmupCosineLR(opt2, warmup_iters=2, t_max=4, eta_min=0.1)
    sched2.load_state_dict(state)
    assert sched2.get_lr() == pytest.approx([0.1])


@pytest.mark.parametrize("kw, match", [
    (dict(warmup_iters=-1, t_max=4), "warmup_iters"), (dict(warmup_iters=0, t_max=0), "t_max"),
    (dict(warmup_iters=0, t_max=4, eta_min=-1.0), "eta_min"), (dict(warmup_iters=1.5, t_max=4), "warmup_iters"),
])
def test_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosineLR(_opt(1.0), **kw)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine_multiplier(-1, warmup_iters=0, t_max=4)
