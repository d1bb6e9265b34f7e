"""Tests of the TSCD recipe, the per-iteration loss composition and the generic loop helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import wsseg
from wsseg.training import (
    CSVLogger,
    TSCDRecipe,
    TSCDTrainingStep,
    build_optimizer,
    build_scheduler,
    fit_to_stride,
    infinite_loader,
    load_checkpoint,
    save_checkpoint,
    tscd_training_step,
)

K = 3


def _net(backbone="test_vit", **kw):
    torch.manual_seed(0)
    return wsseg.create_model("tscd", backbone=backbone, num_classes=K, decoder_dim=8, **kw).train()


def _batch(b=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(b, K)
    labels[torch.arange(b), torch.arange(b) % K] = 1.0
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[:, :, -8:] = False  # a zero-padded strip
    return {"image": torch.randn(b, 3, size, size, generator=g), "label": labels, "valid": valid}


def _fast_recipe(**kw):
    base = dict(crop_size=64, cam_iters=0, varm_num_iter=2, scd_num_samples=8, energy_chunk_size=1024)
    base.update(kw)
    return TSCDRecipe(**base)


# ---------------------------------------------------------------------- recipe
def test_recipe_official_values():
    r = TSCDRecipe()
    assert (r.recipe, r.crop_size, r.batch_size, r.iters, r.cam_iters, r.warmup_iters) == ("tscd", 512, 4, 20000, 2000, 1500)
    assert (r.poly_power, r.lr, r.head_lr_mult, r.encoder_norm_lr_mult, r.weight_decay) == (1.0, 6e-5, 10.0, 0.0, 0.01)
    assert r.betas == (0.9, 0.999) and r.warmup_ratio == 1e-6 and r.rebase_after_warmup is False
    assert r.cam_scales == (1.0, 0.5, 1.5) and r.cam_flip
    assert (r.high, r.low, r.cam_eval_threshold) == (0.55, 0.35, 0.45)
    assert (r.aff_radius, r.scd_scale, r.scd_num_samples) == (8, 0.3, 40)
    assert (r.w_cls, r.w_seg, r.w_reg, r.w_aff, r.w_scd) == (1.0, 0.1, 0.01, 0.1, 0.1)
    assert (r.energy_sigma_rgb, r.energy_sigma_xy, r.energy_scale, r.energy_weight) == (15.0, 100.0, 0.5, 1e-7)
    assert r.denormalize == "truncate_uint8" and r.teacher_mode == "train" and r.seed == 1
    assert r.skip_zero_weighted_terms is False
    assert r.pseudo_down_scale == 2 and r.varm_num_iter == 10 and r.seg_fg_alpha == 0.5


def test_recipe_presets():
    assert TSCDRecipe.preset("cam").recipe == "cam"
    assert TSCDRecipe.preset("tscd_crop320").crop_size == 320
    with pytest.raises(ValueError, match="name"):
        TSCDRecipe.preset("afa")


def test_from_overrides_parsing():
    r = TSCDRecipe.from_overrides(["crop_size=320", "lr=1e-4", "cam_flip=no", "cam_scales=1,0.5",
                                   "teacher_mode=eval", "betas=0.9,0.99"])
    assert r.crop_size == 320 and isinstance(r.crop_size, int)
    assert r.lr == pytest.approx(1e-4) and r.cam_flip is False and r.cam_scales == (1.0, 0.5)
    assert r.teacher_mode == "eval" and r.betas == (0.9, 0.99)
    base = TSCDRecipe(recipe="cam")
    assert TSCDRecipe.from_overrides(["iters=10"], base=base).recipe == "cam"


@pytest.mark.parametrize("items, exc, match", [
    (["nokey=1"], ValueError, "unknown recipe key"),
    (["crop_size"], ValueError, "key=value"),
    (["crop_size=abc"], ValueError, "crop_size"),
    (["cam_flip=maybe"], ValueError, "cam_flip"),
    (["teacher_mode=sometimes"], ValueError, "teacher_mode"),
    ("crop_size=3", TypeError, "overrides"),
])
def test_from_overrides_errors(items, exc, match):
    with pytest.raises(exc, match=match):
        TSCDRecipe.from_overrides(items)


def test_scaled_keeps_official_fractions_unless_set():
    r = TSCDRecipe().scaled(400)
    assert (r.iters, r.cam_iters, r.warmup_iters) == (400, 40, 30)
    r = TSCDRecipe.from_overrides(["cam_iters=7"]).scaled(400)
    assert (r.cam_iters, r.warmup_iters) == (7, 30)
    r = TSCDRecipe(warmup_iters=5).scaled(400)
    assert (r.cam_iters, r.warmup_iters) == (40, 5)
    with pytest.raises(ValueError, match="iters"):
        TSCDRecipe().scaled(0)


@pytest.mark.parametrize("kw, match", [
    (dict(recipe="afa"), "recipe"), (dict(crop_size=0), "crop_size"), (dict(lr=-1.0), "lr"),
    (dict(scd_scale=0.0), "scd_scale"), (dict(energy_scale=1.5), "energy_scale"),
    (dict(high=0.3, low=0.5), "low"), (dict(cam_scales=()), "cam_scales"), (dict(denormalize="x"), "denormalize"),
    (dict(w_seg=-0.1), "w_seg"), (dict(cam_iters=-1), "cam_iters"),
])
def test_recipe_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        TSCDRecipe(**kw)


def test_to_dict_is_json_friendly():
    import json

    d = TSCDRecipe().to_dict()
    assert json.loads(json.dumps(d))["cam_scales"] == [1.0, 0.5, 1.5]
    assert "_pinned" not in d


def test_fit_to_stride():
    x = torch.randn(1, 2, 67, 70)
    assert fit_to_stride(x, 14).shape[-2:] == (70, 70)
    assert fit_to_stride(x, 1, min_size=80).shape[-2:] == (80, 80)
    assert fit_to_stride(x, 16).shape[-2:] == (64, 64)
    y = torch.randn(1, 2, 28, 42)
    assert fit_to_stride(y, 14) is y
    assert fit_to_stride(torch.randn(1, 1, 5, 5), 14).shape[-2:] == (14, 14)  # at least one patch


# ---------------------------------------------------------------------- the step
def _hand_soft_margin(z, y):
    """Multi-label soft margin written out: -mean_{b,k}[y log sigmoid(z) + (1 - y) log sigmoid(-z)]."""
    z, y = z.detach().double(), y.double()
    log_sig = -torch.log1p(torch.exp(-z))
    log_sig_neg = -torch.log1p(torch.exp(z))
    return float(-(y * log_sig + (1 - y) * log_sig_neg).mean())


def _decoder_and_affinity_params(net):
    return list(net.decoder.parameters()) + list(net.affinity.parameters())


def test_cls_only_before_cam_iters():
    net = _net().eval()  # deterministic forward for the hand-computed reference
    batch = _batch()
    step = TSCDTrainingStep(_fast_recipe(cam_iters=5))
    loss, logs = step(net, batch, step=5)  # step <= cam_iters -> L_cls only (official `n_iter <= cam_iters`)
    assert sorted(logs) == ["loss", "loss_cls"]
    expected = _hand_soft_margin(net(batch["image"]).cls, batch["label"])
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert logs["loss"] == logs["loss_cls"]                  # the zero-weighted part adds exactly 0
    _, logs = step(net, batch, step=6)
    assert {"loss_seg", "loss_reg", "loss_aff", "loss_scd"} <= set(logs)


def test_cls_only_phase_gives_exact_zero_gradients():
    """Official: the other terms are multiplied by 0, so the decoder and affinity head get zero gradients,
    not none; the encoder and classifier gradients are those of L_cls alone."""
    batch = _batch()
    grads = {}
    for skip in (False, True):
        net = _net()
        torch.manual_seed(7)
        loss, _ = TSCDTrainingStep(_fast_recipe(cam_iters=5, skip_zero_weighted_terms=skip))(net, batch, step=3)
        loss.backward()
        grads[skip] = {n: p.grad for n, p in net.named_parameters()}
        head = _decoder_and_affinity_params(net)
        if skip:
            assert all(p.grad is None for p in head)
        else:
            assert all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for p in head)
        assert net.classifier.weight.grad.abs().sum() > 0
    for name, g in grads[True].items():                      # encoder / classifier: identical
        if g is not None:
            assert torch.equal(g, grads[False][name]), name


def test_cls_only_phase_zero_gradient_is_nan_when_outputs_are():
    """0 * NaN = NaN, as in the official zero-weighted sum (documented)."""
    net = _net()
    with torch.no_grad():
        net.decoder.pred.bias.fill_(float("nan"))
    loss, _ = TSCDTrainingStep(_fast_recipe(cam_iters=5))(net, _batch(), step=0)
    assert math.isnan(loss.item())
    loss, _ = TSCDTrainingStep(_fast_recipe(cam_iters=5, skip_zero_weighted_terms=True))(net, _batch(), step=0)
    assert math.isfinite(loss.item())


def test_cls_only_phase_adamw_closed_form():
    """Decoder / affinity weights after classification-only steps and the first full step equal AdamW's
    closed form with zero gradients in the phase (decay only, step counter advancing), written out here
    independently of torch.optim:

        phase (g = 0):   p_n = p_0 (1 - lr wd)^n,  m = v = 0
        step t = n + 1:  p = p_n (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps),
                         m_hat = (1 - b1) g / (1 - b1^t),  v_hat = (1 - b2) g^2 / (1 - b2^t)
    """
    n_phase = 3
    recipe = _fast_recipe(cam_iters=n_phase - 1, lr=0.01, weight_decay=0.5)
    net = _net().eval()            # deterministic forwards; BN / dropout do not matter for the check
    opt = build_optimizer(net, recipe)
    names = ["decoder.pred.weight", "decoder.fuse.0.weight", "affinity.proj.weight"]
    params = dict(net.named_parameters())
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    p0 = {n: params[n].detach().double().clone() for n in names}
    step_fn = TSCDTrainingStep(recipe)
    batch = _batch()
    for it in range(n_phase):
        loss, _ = step_fn(net, batch, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n in names:
        g = group_of[id(params[n])]
        lr, wd = g["lr"], g["weight_decay"]
        assert lr * wd > 0.01                                 # a visible decay
        expected = p0[n] * (1.0 - lr * wd) ** n_phase
        torch.testing.assert_close(params[n].detach().double(), expected, rtol=1e-6, atol=1e-9)
        assert opt.state[params[n]]["step"] == n_phase
    # first full step: bias correction uses t = n_phase + 1
    pn = {n: params[n].detach().double().clone() for n in names}
    loss, _ = step_fn(net, batch, n_phase)
    opt.zero_grad()
    loss.backward()
    grad = {n: params[n].grad.detach().double().clone() for n in names}
    opt.step()
    b1, b2 = recipe.betas
    t = n_phase + 1
    for n in names:
        g = group_of[id(params[n])]
        lr, wd, eps = g["lr"], g["weight_decay"], g["eps"]
        m_hat = (1 - b1) * grad[n] / (1 - b1 ** t)
        v_hat = (1 - b2) * grad[n] ** 2 / (1 - b2 ** t)
        expected = pn[n] * (1 - lr * wd) - lr * m_hat / (v_hat.sqrt() + eps)
        torch.testing.assert_close(params[n].detach().double(), expected, rtol=1e-5, atol=1e-7)
    assert grad["decoder.pred.weight"].abs().sum() > 0


def test_skip_zero_weighted_terms_leaves_heads_untouched():
    recipe = _fast_recipe(cam_iters=5, lr=0.01, weight_decay=0.5, skip_zero_weighted_terms=True)
    net = _net().eval()
    opt = build_optimizer(net, recipe)
    before = net.decoder.pred.weight.detach().clone()
    loss, _ = TSCDTrainingStep(recipe)(net, _batch(), 0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.equal(net.decoder.pred.weight, before)
    assert net.decoder.pred.weight not in opt.state


def test_cls_only_phase_updates_decoder_batchnorm_statistics():
    net = _net()
    bn = net.decoder.fuse[1]
    before = bn.running_mean.clone()
    TSCDTrainingStep(_fast_recipe(cam_iters=5))(net, _batch(), step=0)
    assert not torch.equal(before, bn.running_mean)


def test_cam_recipe_never_computes_other_terms():
    net = _net()
    _, logs = TSCDTrainingStep(_fast_recipe(recipe="cam"))(net, _batch(), step=10_000)
    assert sorted(logs) == ["loss", "loss_cls"]


def _hand_balanced_ce(logits, label):
    """Official ``get_seg_loss`` arithmetic: 0.5 (CE over background pixels + CE over foreground pixels)."""
    bg = label.clone()
    bg[label != 0] = 255
    fg = label.clone()
    fg[label == 0] = 255
    return 0.5 * (F.cross_entropy(logits, bg, ignore_index=255) + F.cross_entropy(logits, fg, ignore_index=255))


def _hand_affinity_loss(pred, target):
    """Official ``get_aff_loss`` arithmetic: 0.5 sum_pos(1 - A) / (n_pos + 1) + 0.5 sum_neg(A) / (n_neg + 1)."""
    pos, neg = (target == 1).double(), (target == 0).double()
    pred = pred.double()
    return 0.5 * (pos * (1 - pred)).sum() / (pos.sum() + 1) + 0.5 * (neg * pred).sum() / (neg.sum() + 1)


def test_full_step_total_matches_official_composition():
    """Every term recomputed outside the step on the same (deterministic, eval-mode) forwards, combined with
    the official weights written out here: L = 1.0 cls + 0.1 seg + 0.01 reg + 0.1 aff + 0.1 SCD."""
    net = _net().eval()
    batch = _batch()
    recipe = _fast_recipe()
    step = TSCDTrainingStep(recipe)
    torch.manual_seed(11)
    loss, logs = step(net, batch, step=1)

    x, y, valid = batch["image"], batch["label"], batch["valid"]
    with torch.no_grad():
        torch.manual_seed(11)
        out = net(x)
        cam = step.teacher_cam(net, x)
        x2 = F.interpolate(x, scale_factor=0.3, mode="bilinear", align_corners=True)
        out2 = net(net.fit_input(x2))
        cam2 = step.teacher_cam(net, x2)
        seg = F.interpolate(out.seg, size=x.shape[-2:], mode="bilinear", align_corners=True)
        seg2 = F.interpolate(out2.seg, size=x2.shape[-2:], mode="bilinear", align_corners=True)
        ref_scd = float(step.scd_loss(cam, cam2, seg, seg2))
        pseudo = step.pseudo_label_from_cam(cam, x, y, valid)
        ref_cls = _hand_soft_margin(out.cls, y)
        ref_seg = float(_hand_balanced_ce(seg, pseudo))
        grid = (x.shape[-2] // net.stride, x.shape[-1] // net.stride)
        aff_target = wsseg.pseudo.affinity_label(pseudo, stride=net.stride, radius=8, grid_size=grid)
        ref_aff = float(_hand_affinity_loss(out.aff, aff_target))
        img255 = (x * torch.tensor([0.229, 0.224, 0.225])[:, None, None]
                  + torch.tensor([0.485, 0.456, 0.406])[:, None, None]) * 255.0
        ref_reg = float(step.energy_loss(torch.softmax(seg, dim=1), img255, valid, pseudo))
    assert logs["loss_cls"] == pytest.approx(ref_cls, rel=1e-5)
    assert logs["loss_seg"] == pytest.approx(ref_seg, rel=1e-5)
    assert logs["loss_aff"] == pytest.approx(ref_aff, rel=1e-5)
    assert logs["loss_scd"] == pytest.approx(ref_scd, rel=1e-5)
    assert logs["loss_reg"] == pytest.approx(ref_reg, rel=1e-4, abs=1e-9)
    assert ref_reg < 0.0                                     # the energy is negative
    total = 1.0 * ref_cls + 0.1 * ref_seg + 0.01 * ref_reg + 0.1 * ref_aff + 0.1 * ref_scd
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert 0.0 <= logs["pseudo_ignore_frac"] <= 1.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_scd_gradient_reaches_student_only():
    """With only L_SCD active, the seg decoder and encoder get gradients; the classifier (the teacher CAM's
    weights) and the affinity head get none: the teacher side is stopped."""
    net = _net()
    recipe = _fast_recipe(w_cls=0.0, w_seg=0.0, w_reg=0.0, w_aff=0.0, w_scd=1.0)
    step = TSCDTrainingStep(recipe)
    loss, logs = step(net, _batch(), step=1)
    assert set(logs) >= {"loss_scd"} and "loss_seg" not in logs and "loss_aff" not in logs
    loss.backward()
    assert net.decoder.pred.weight.grad.abs().sum() > 0
    assert net.encoder.model.patch_embed.proj.weight.grad.abs().sum() > 0
    g = net.classifier.weight.grad
    assert g is None or torch.count_nonzero(g) == 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.affinity.parameters())


def test_teacher_cam_has_no_grad_and_is_normalised():
    net = _net()
    x = _batch()["image"].requires_grad_(True)
    cam = TSCDTrainingStep(_fast_recipe()).teacher_cam(net, x)
    assert not cam.requires_grad
    assert cam.shape == (2, K, 64, 64)
    assert float(cam.min()) >= 0.0 and float(cam.max()) < 1.0
    assert net.training  # train-mode teacher (faithful) leaves the mode unchanged


def test_teacher_mode_eval_restores_train_mode():
    net = _net()
    step = TSCDTrainingStep(_fast_recipe(teacher_mode="eval"))
    seen = []
    orig = net.cam
    net.cam = lambda x: (seen.append(net.training), orig(x))[1]
    step.teacher_cam(net, _batch()["image"])
    assert seen and not any(seen)
    assert net.training


def test_affinity_term_only_trains_affinity_head_and_encoder():
    """The decoder, reached only by the zero-weighted seg / reg / SCD terms, gets an exact zero gradient
    (none with ``skip_zero_weighted_terms``)."""
    for skip in (False, True):
        net = _net()
        recipe = _fast_recipe(w_cls=0.0, w_seg=0.0, w_reg=0.0, w_scd=0.0, skip_zero_weighted_terms=skip)
        loss, logs = TSCDTrainingStep(recipe)(net, _batch(), 1)
        loss.backward()
        g = net.decoder.pred.weight.grad
        assert (g is None) if skip else (g is not None and torch.count_nonzero(g) == 0)
        assert sum(float(p.grad.abs().sum()) for p in net.affinity.parameters()) > 0


def test_pseudo_label_properties():
    net = _net()
    batch = _batch()
    step = TSCDTrainingStep(_fast_recipe())
    cam, pseudo = step.pseudo_label(net, batch["image"], batch["label"], batch["valid"])
    assert pseudo.dtype == torch.int64 and pseudo.shape == (2, 64, 64)
    assert bool((pseudo[~batch["valid"]] == 255).all())           # padding is ignored
    for b in range(2):                                            # only present classes (or bg / ignore)
        allowed = {0, 255} | {k + 1 for k in range(K) if batch["label"][b, k] > 0}
        assert set(pseudo[b].unique().tolist()) <= allowed
    cam_step = TSCDTrainingStep(_fast_recipe(recipe="cam"))
    lab = cam_step.pseudo_label_from_cam(cam, batch["image"], batch["label"], batch["valid"])
    expected = wsseg.pseudo.cam_to_label(cam, batch["label"], batch["valid"], bkg_thre=0.45)
    torch.testing.assert_close(lab, expected)


def test_function_form_matches_hand_computed_loss():
    net = _net().eval()
    batch = _batch()
    loss, logs = tscd_training_step(net, batch, 0, _fast_recipe(cam_iters=2))
    assert loss.item() == pytest.approx(_hand_soft_margin(net(batch["image"]).cls, batch["label"]), rel=1e-6)
    assert sorted(logs) == ["loss", "loss_cls"]


def test_mit_step_with_tiny_crop_uses_fitted_second_view():
    net = _net("mit_b0")
    loss, logs = TSCDTrainingStep(_fast_recipe())(net, _batch(b=1), 1)  # 0.3 x 64 = 19 < MiT minimum 29
    assert math.isfinite(loss.item()) and "loss_scd" in logs


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda b: b.pop("label"), ValueError, "batch"),
    (lambda b: b.__setitem__("image", torch.randn(3, 64, 64)), ValueError, "image"),
    (lambda b: b.__setitem__("label", torch.ones(3, K)), ValueError, "label"),
    (lambda b: b.__setitem__("label", torch.ones(2, K + 1)), ValueError, "label"),
    (lambda b: b.__setitem__("valid", torch.ones(2, 32, 32, dtype=torch.bool)), ValueError, "valid"),
])
def test_step_validation(mutate, exc, match):
    batch = _batch()
    mutate(batch)
    with pytest.raises(exc, match=match):
        TSCDTrainingStep(_fast_recipe())(_net(), batch, 1)


def test_step_rejects_bad_recipe_and_step():
    with pytest.raises(TypeError, match="recipe"):
        TSCDTrainingStep({"lr": 1})
    with pytest.raises(ValueError, match="step"):
        TSCDTrainingStep(_fast_recipe())(_net(), _batch(), -1)


# ---------------------------------------------------------------------- loop helpers
def test_optimizer_and_scheduler_follow_recipe():
    net = _net()
    recipe = _fast_recipe(iters=100, warmup_iters=10)
    opt = build_optimizer(net, recipe)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    sched = build_scheduler(opt, recipe)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["encoder"] == pytest.approx(6e-5 * 1e-6) and lrs["encoder_norm"] == 0.0
    assert lrs["heads"] == pytest.approx(6e-4 * 1e-6)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(6e-5 * (1 - 10 / 100))  # poly power 1, not re-based
    with pytest.raises(TypeError, match="model"):
        build_optimizer(torch.nn.Linear(2, 2), recipe)


def test_checkpoint_roundtrip_restores_state_and_rng(tmp_path):
    net = _net()
    recipe = _fast_recipe(iters=20, warmup_iters=2)
    opt = build_optimizer(net, recipe)
    sched = build_scheduler(opt, recipe)
    loss, _ = TSCDTrainingStep(recipe)(net, _batch(), 1)
    loss.backward()
    opt.step()
    sched.step()
    save_checkpoint(tmp_path / "c.pt", net, opt, sched, step=1, extra={"note": "x"})
    expected_rand = torch.rand(3)
    net2 = _net()
    opt2 = build_optimizer(net2, recipe)
    sched2 = build_scheduler(opt2, recipe)
    torch.manual_seed(123)
    step, extra = load_checkpoint(tmp_path / "c.pt", net2, opt2, sched2)
    assert step == 1 and extra == {"note": "x"}
    torch.testing.assert_close(torch.rand(3), expected_rand)
    for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=False):
        torch.testing.assert_close(a, b)
    assert sched2.last_epoch == sched.last_epoch
    assert opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(FileNotFoundError, match="path"):
        load_checkpoint(tmp_path / "missing.pt", net2)


def test_csv_logger_appends_on_resume(tmp_path):
    path = tmp_path / "log.csv"
    with CSVLogger(path) as log:
        log.log({"step": 0, "loss": 1.5})
    with CSVLogger(path) as log:
        log.log({"step": 1, "loss": 0.25, "extra": 3})
    assert path.read_text().splitlines() == ["step,loss", "0,1.5", "1,0.25"]


def test_infinite_loader():
    it = infinite_loader([1, 2])
    assert [next(it) for _ in range(5)] == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="loader"):
        next(infinite_loader([]))


# ---------------------------------------------------------------------- smoke training
def test_training_smoke_loss_decreases():
    """A few TSCD iterations (test_vit, SyntheticShapes, fixed seed): L_cls goes down."""
    from wsseg.data import SyntheticShapes, train_transform

    torch.manual_seed(1)
    np.random.seed(1)
    ds = SyntheticShapes(num_images=16, size=64, num_classes=K, seed=0,
                         transform=train_transform(64, scale_range=None, seed=1))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(1),
                                         collate_fn=lambda s: torch.utils.data.default_collate(
                                             [{k: v for k, v in x.items() if k != "box"} for x in s]))
    net = _net()
    recipe = _fast_recipe(iters=40, cam_iters=10, warmup_iters=2, lr=1e-3)
    opt = build_optimizer(net, recipe)
    sched = build_scheduler(opt, recipe)
    step_fn = TSCDTrainingStep(recipe)
    it = infinite_loader(loader)
    cls = []
    for step in range(recipe.iters):
        loss, logs = step_fn(net, next(it), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        assert math.isfinite(logs["loss"])
        cls.append(logs["loss_cls"])
    assert np.mean(cls[-8:]) < np.mean(cls[:8]) - 0.05


# ---------------------------------------------------------------------- the classification-only phase's passes
def _official_phase_iteration(net, batch, recipe):
    """The official loop body (tscd.md §7.2) at ``n_iter <= cam_iters``, as far as it draws random numbers or
    updates BatchNorm statistics: forward of the crop, multi-scale CAM of the crop, the 0.3× view's forward and
    multi-scale CAM, the two SCD point grids (the loss terms themselves are multiplied by 0)."""
    from tests.reference.official_multi_scale_cam import official_multi_scale_cam

    x = batch["image"]
    out = net(x)
    official_multi_scale_cam(net.cam, x, recipe.cam_scales)
    x2 = F.interpolate(x, scale_factor=0.3, mode="bilinear", align_corners=True)
    net(x2)
    official_multi_scale_cam(net.cam, x2, recipe.cam_scales)
    s = recipe.scd_num_samples
    torch.rand((x.shape[0], s, s, 2))  # grid of view 1
    torch.rand((x.shape[0], s, s, 2))  # grid of view 2
    return out


def _bn_state(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}


def test_cls_only_phase_runs_the_official_passes_by_default():
    phase_step = 3
    recipe = _fast_recipe(crop_size=224, cam_iters=5)
    assert recipe.cam_phase_passes == "official"
    batch = _batch(size=224)
    ours, ref = _net("mit_b0"), _net("mit_b0")  # drop-path 0.1: every train-mode pass draws random numbers
    tracked = ours.decoder.fuse[1].num_batches_tracked.item()
    torch.manual_seed(11)
    loss, logs = TSCDTrainingStep(recipe)(ours, batch, step=phase_step)
    rng_ours = torch.get_rng_state()
    torch.manual_seed(11)
    out = _official_phase_iteration(ref, batch, recipe)
    rng_ref = torch.get_rng_state()
    assert torch.equal(rng_ours, rng_ref)  # same random stream after the iteration
    bn_ours, bn_ref = _bn_state(ours), _bn_state(ref)
    assert bn_ours.keys() == bn_ref.keys() and bn_ours
    for k in bn_ours:
        torch.testing.assert_close(bn_ours[k], bn_ref[k], rtol=0, atol=0)
    # 1 + 3 + 1 + 3 = 8 decoder BN updates per iteration, as officially
    assert ours.decoder.fuse[1].num_batches_tracked.item() == tracked + 8
    assert sorted(logs) == ["loss", "loss_cls"]
    assert loss.item() == pytest.approx(F.multilabel_soft_margin_loss(out.cls, batch["label"]).item(), rel=1e-6)


def test_cls_only_phase_skip_option_runs_one_forward():
    recipe = _fast_recipe(crop_size=224, cam_iters=5, cam_phase_passes="skip")
    batch = _batch(size=224)
    ours, ref = _net("mit_b0"), _net("mit_b0")
    tracked = ours.decoder.fuse[1].num_batches_tracked.item()
    torch.manual_seed(12)
    TSCDTrainingStep(recipe)(ours, batch, step=2)
    rng_ours = torch.get_rng_state()
    torch.manual_seed(12)
    ref(batch["image"])
    assert torch.equal(rng_ours, torch.get_rng_state())
    assert ours.decoder.fuse[1].num_batches_tracked.item() == tracked + 1
    for k, v in _bn_state(ours).items():
        torch.testing.assert_close(v, _bn_state(ref)[k], rtol=0, atol=0)


def test_cls_only_phase_gradients_do_not_depend_on_the_passes():
    batch = _batch(size=224)
    grads = {}
    for mode in ("official", "skip"):
        net = _net("mit_b0", drop_path_rate=0.0)
        loss, _ = TSCDTrainingStep(_fast_recipe(crop_size=224, cam_iters=5, cam_phase_passes=mode))(net, batch, 1)
        loss.backward()
        grads[mode] = [p.grad.clone() for p in net.parameters() if p.requires_grad]
    for a, b in zip(grads["official"], grads["skip"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_cam_phase_passes_validation():
    with pytest.raises(ValueError, match="cam_phase_passes: expected one of .*'official', 'skip'.*got 'none'"):
        TSCDRecipe(cam_phase_passes="none")
