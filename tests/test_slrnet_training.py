"""SLRNet on the engine: recipe values, the iteration's composition, warm-up, optimiser, CLI runs, resume."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.layers import make_view
from wsseg.training import SLRNetMethod, SLRNetRecipe, SLRNetTrainingStep, seed_everything
from wsseg.training.cli import METHODS, SLRNET_CLI, main

TINY = ["--synthetic-images", "8", "--synthetic-size", "48", "--crop", "48", "--batch-size", "2",
        "--decoder-dim", "8", "--num-vis", "0", "--no-progress", "--threads", "1", "--set", "pamr_iters=3"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _batch(B=2, K=3, S=33, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.zeros(B, K)
    y[torch.arange(B), torch.arange(B) % K] = 1.0
    return {"image": torch.randn(B, 3, S, S, generator=g), "label": y}


def _method(**kw):
    seed_everything(0)
    base = dict(crop_size=33, batch_size=2, iters=10, seg_start_iters=0, pamr_iters=3)
    m = SLRNetMethod(SLRNetRecipe(**{**base, **kw}))
    return m, m.build_model(3, backbone="resnet38d_w16", decoder_dim=8)


# ---------------------------------------------------------------------- recipe
def test_recipe_defaults_are_the_official_voc_values():
    r = SLRNetRecipe()
    assert (r.crop_size, r.batch_size, r.iters, r.seed) == (321, 16, 30 * 661, 128)
    assert (r.warmup_iters, r.cosine_iters, r.seg_start_iters, r.eta_min) == (6 * 661, 25 * 661, 6 * 661, 0.0)
    assert (r.lr, r.momentum, r.nesterov, r.weight_decay) == (5e-4, 0.9, True, 5e-4)
    assert (r.bias_lr_mult, r.head_lr_mult, r.head_bias_lr_mult) == (2.0, 10.0, 20.0)
    assert (r.w_cls, r.w_mask, r.w_code, r.w_seg, r.aux_weight) == (1.0, 4.0, 4.0, 1.0, 0.4)
    assert (r.view_scale, r.view_flip, r.lowrank_iters, r.temperature) == (0.5, False, 1, 1.0)
    assert not r.normalize_tokens and r.detach_init and r.keep_ties and r.gate and r.sg_alpha == 0.3
    assert (r.bg_factor, r.fg_factor, r.min_thre, r.pamr_iters) == (0.7, 0.6, 0.2, 10)
    assert r.pamr_dilations == (1, 2, 4, 8, 12, 24) and r.scale_range == (0.9, 1.0)
    c = SLRNetRecipe.preset("cam")
    assert (c.w_mask, c.w_code, c.w_seg, c.iters) == (0.0, 0.0, 0.0, r.iters)
    assert METHODS["slrnet"] is SLRNET_CLI


def test_scaled_keeps_the_epoch_fractions():
    r = SLRNetRecipe().scaled(300)
    assert (r.iters, r.warmup_iters, r.cosine_iters, r.seg_start_iters) == (300, 60, 250, 60)
    assert SLRNetRecipe().scaled(19830) == SLRNetRecipe()
    pinned = SLRNetRecipe.from_overrides(["seg_start_iters=5"]).scaled(300)
    assert (pinned.seg_start_iters, pinned.warmup_iters) == (5, 60)


@pytest.mark.parametrize("kw, match", [
    (dict(recipe="tscd"), "recipe"), (dict(iters=0), "iters"), (dict(seg_start_iters=-1), "seg_start_iters"),
    (dict(w_mask=-1.0), "w_mask"), (dict(view_scale=0.0), "view_scale"), (dict(temperature=0.0), "temperature"),
    (dict(pamr_dilations=()), "pamr_dilations"), (dict(bg_factor=1.5), "bg_factor"),
])
def test_recipe_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        SLRNetRecipe(**kw)


# ---------------------------------------------------------------------- optimiser and schedule
def test_sgd_nesterov_groups_and_constant_then_cosine():
    m, net = _method(lr=1e-3, warmup_iters=2, cosine_iters=4)
    opt = m.build_optimizer(net)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in opt.param_groups] == [
        ("backbone_weights", 1e-3, 5e-4), ("new_weights", 1e-2, 5e-4), ("new_biases", 2e-2, 0.0)]
    sched = m.build_scheduler(opt)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expect = [1e-3, 1e-3] + [1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]
    assert lrs == pytest.approx(expect, abs=1e-12)


# ---------------------------------------------------------------------- the iteration
def _mlsm(s, y):
    return (-(y * F.logsigmoid(s) + (1 - y) * F.logsigmoid(-s))).mean()


def _ngwp(logits, probs):
    m = probs.flatten(2).mean(-1)
    s = (logits * probs).flatten(2).sum(-1) / (1 + probs.flatten(2).sum(-1)) + (1 - m) ** 3 * torch.log(0.01 + m)
    return s[:, 1:]


def _maxkeep(c):
    return c * (c == c.amax(1, keepdim=True))


def test_terms_match_the_spec_equations_in_eval_mode():
    """loss_cls / loss_mask / loss_code against a direct transcription of spec §3-§4 (deterministic forward)."""
    m, net = _method(seg_start_iters=100)
    net.eval()
    b = _batch()
    loss, logs = m.training_step(net, b, step=0)
    x1, y = b["image"], b["label"]
    with torch.no_grad():
        out = net(x1, make_view(x1, scale=0.5))
    p1, p2, pa = (t.softmax(1) for t in (out.seg_logits1, out.seg_logits2, out.aux_logits))
    l_cls = (_mlsm(_ngwp(out.seg_logits1, p1), y) + _mlsm(_ngwp(out.seg_logits2, p2), y)
             + 0.4 * _mlsm(_ngwp(out.aux_logits, pa), y))
    p2i = F.interpolate(p2, size=p1.shape[-2:], mode="bilinear", align_corners=True)
    l_mask = ((p1[:, 1:] - p2i[:, 1:]).abs() * y[:, :, None, None]).mean()
    c2i = F.interpolate(out.codes2, size=p1.shape[-2:], mode="bilinear", align_corners=True)
    l_code = (_maxkeep(out.codes1) - _maxkeep(c2i)).abs().mean()
    assert logs["loss_cls"] == pytest.approx(float(l_cls), rel=1e-5)
    assert logs["loss_mask"] == pytest.approx(float(l_mask), rel=1e-5)
    assert logs["loss_code"] == pytest.approx(float(l_code), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(l_cls + 4 * l_mask + 4 * l_code), rel=1e-5)


def test_full_step_is_the_weighted_sum_of_the_logged_terms():
    m, net = _method(w_cls=0.5, w_mask=2.0, w_code=3.0, w_seg=1.5)
    loss, logs = m.training_step(net, _batch(), step=0)
    expect = 0.5 * logs["loss_cls"] + 2.0 * logs["loss_mask"] + 3.0 * logs["loss_code"] + 1.5 * logs["loss_seg"]
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-5)
    assert 0.0 <= logs["pl_ignore_frac"] <= 1.0 and 0.0 <= logs["pl_fg_frac"] <= 1.0
    loss.backward()
    assert net.factorization.transform1.weight.grad is not None and net.aux_head.classifier.weight.grad is not None


def test_warmup_epochs_have_no_segmentation_loss():
    m, net = _method(seg_start_iters=3)
    for step, has_seg in ((0, False), (2, False), (3, True)):
        net.eval()                                      # deterministic: the difference is L_seg alone
        loss, logs = m.training_step(net, _batch(), step)
        assert ("loss_seg" in logs) is has_seg
        rest = logs["loss_cls"] + 4 * logs["loss_mask"] + 4 * logs["loss_code"]
        assert float(loss.detach()) == pytest.approx(rest + (logs["loss_seg"] if has_seg else 0.0), rel=1e-5)
    c, net_c = _method(recipe="cam", w_mask=0.0, w_code=0.0, w_seg=0.0)
    _, logs = c.training_step(net_c, _batch(), step=5)
    assert sorted(k for k in logs if k.startswith("loss")) == ["loss", "loss_cls"]


def test_view_flip_round_trip_and_inference_hooks():
    m, net = _method(view_flip=True)
    loss, logs = m.training_step(net, _batch(), step=0)
    assert torch.isfinite(loss)
    net.eval()
    x = torch.randn(1, 3, 33, 33)
    cam = m.cam(net, x)
    assert cam.shape == (1, 3, 33, 33) and 0.0 <= float(cam.min()) and float(cam.max()) <= 1.0
    pl = m.pseudo_label(net, x, torch.tensor([[1.0, 0.0, 0.0]]))
    assert pl.shape == (1, 33, 33) and set(pl.unique().tolist()) <= {0, 1, 255}
    logp = m.predict(net, x)
    assert logp.shape == (1, 4, 33, 33)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(1, 33, 33))


def test_errors():
    m, net = _method()
    with pytest.raises(ValueError, match="label"):
        m.training_step(net, {"image": torch.randn(2, 3, 33, 33)}, 0)
    with pytest.raises(TypeError, match="SLRNetRecipe"):
        SLRNetTrainingStep(object())
    with pytest.raises(TypeError, match="SLRNetRecipe"):
        SLRNetMethod(object())
    with pytest.raises(TypeError, match="param_groups"):
        m.build_optimizer(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------- engine runs
def test_synthetic_run_loss_decreases(tmp_path):
    res = main(SLRNET_CLI, [*TINY, "--iters", "24", "--set", "lr=5e-3", "--max-eval-images", "2",
                            "--out", str(tmp_path / "run")])
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss_cls"]) for r in rows]
    assert len(rows) == 24 and not rows[3]["loss_seg"] and rows[-1]["loss_seg"]     # L_seg from step 5 (24/5)
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
    for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered"):
        assert 0.0 <= res[k] <= 1.0


def test_kill_and_resume_is_bit_identical(tmp_path):
    common = [*TINY, "--iters", "6", "--ckpt-every", "2", "--max-eval-images", "1", "--set", "seg_start_iters=2",
              "--set", "view_flip=true"]
    main(SLRNET_CLI, [*common, "--out", str(tmp_path / "full")])
    main(SLRNET_CLI, [*common, "--out", str(tmp_path / "cut"), "--stop-at", "3"])
    main(SLRNET_CLI, [*common, "--out", str(tmp_path / "cut"), "--resume"])
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    ref = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
