"""CoSA on the engine: recipe values, the iteration's composition, the EMA teacher, exact resume, the CLI."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsseg.training import CoSAMethod, CoSARecipe, CoSATrainingStep, seed_everything
from wsseg.training.cli import COSA_CLI, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-images", "8", "--synthetic-size", "64", "--crop", "64", "--batch-size", "2",
        "--backbone", "test_vit", "--decoder-dim", "8", "--num-vis", "0", "--no-progress", "--threads", "1",
        "--set", "pseudo_scales=1.0,0.5", "--set", "energy_scale=0.5"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _tiny_recipe(**kw) -> CoSARecipe:
    base = dict(crop_size=32, batch_size=2, iters=10, loss_warmup_iters=0, pseudo_scales=(1.0,))
    return CoSARecipe(**{**base, **kw})


def _batch(B=2, K=3, S=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, S, S, generator=g)
    y = torch.zeros(B, K)
    y[torch.arange(B), torch.arange(B) % K] = 1.0
    return {"image": x, "image_strong": x + 0.1 * torch.randn(B, 3, S, S, generator=g), "label": y,
            "valid": torch.ones(B, S, S, dtype=torch.bool)}


# ---------------------------------------------------------------------- recipe
def test_recipe_defaults_are_the_released_voc_values():
    r = CoSARecipe()
    assert (r.crop_size, r.batch_size, r.iters, r.loss_warmup_iters, r.warmup_iters) == (448, 4, 32000, 6000, 1500)
    assert (r.high, r.low, r.high_aux, r.low_aux) == (0.7, 0.2, 0.7, 0.25)
    assert (r.w_cls, r.w_cls_aux, r.w_c2s, r.w_s2c, r.w_reg) == (1.0, 1.0, 0.1, 0.05, 0.05)
    assert (r.lr, r.head_lr_mult, r.encoder_norm_lr_mult, r.weight_decay, r.poly_power) == (6e-5, 10.0, 1.0, 0.01, 0.9)
    assert (r.ema_momentum, r.teacher_init, r.aux_layer, r.aux_cam_all_scales) == (0.9994, "independent", -3, False)
    assert r.pseudo_scales == (1.0, 0.5, 1.5) and r.seg_temperature == 0.01 and r.relu_cam
    assert not (r.threshold_search or r.raw or r.csc) and r.seed == 0 and r.cam_eval_threshold == 0.5
    c = CoSARecipe.preset("cosa_coco")
    assert (c.loss_warmup_iters, c.iters, c.batch_size, c.high, c.low, c.high_aux, c.low_aux) == \
        (10000, 60000, 8, 0.65, 0.25, 0.7, 0.25)
    assert CoSARecipe.preset("cosa_paper").threshold_search and CoSARecipe.preset("cam").recipe == "cam"


def test_scaled_keeps_fractions_and_teacher_half_life():
    r = CoSARecipe().scaled(400)
    assert (r.loss_warmup_iters, r.warmup_iters) == (75, 19)            # 6000/32000, 1500/32000 of 400
    # the teacher keeps the same half-life as a fraction of the run: m'^400 == m^32000
    assert r.ema_momentum ** 400 == pytest.approx(0.9994 ** 32000, rel=1e-9)
    assert CoSARecipe().scaled(32000) == CoSARecipe()
    pinned = CoSARecipe.from_overrides(["ema_momentum=0.99", "loss_warmup_iters=5"]).scaled(400)
    assert (pinned.ema_momentum, pinned.loss_warmup_iters) == (0.99, 5)


@pytest.mark.parametrize("kw, match", [
    (dict(raw=True), "raw_temperature"), (dict(csc=True, csc_margin=0.0), "csc_margin, w_csc"),
    (dict(low=0.8), "low"), (dict(teacher_init="ema"), "teacher_init"), (dict(ema_momentum=1.0), "ema_momentum"),
    (dict(recipe="tscd"), "recipe"), (dict(pseudo_scales=()), "pseudo_scales"),
])
def test_recipe_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        CoSARecipe(**kw)


def test_overrides_parse_optional_fields():
    r = CoSARecipe.from_overrides(["raw=true", "raw_temperature=0.1", "pseudo_scales=1,0.5"])
    assert r.raw and r.raw_temperature == 0.1 and r.pseudo_scales == (1.0, 0.5)
    assert CoSARecipe.from_overrides(["raw_temperature=none"]).raw_temperature is None


# ---------------------------------------------------------------------- the iteration
def _method(**kw):
    seed_everything(0)
    m = CoSAMethod(_tiny_recipe(**kw))
    net = m.build_model(3, backbone="test_vit", decoder_dim=8)
    m.setup(net, torch.device("cpu"))
    return m, net


def test_warmup_gives_the_decoder_exact_zero_gradients():
    m, net = _method(loss_warmup_iters=5)
    loss, logs = m.training_step(net, _batch(), step=5)              # step <= loss_warmup_iters
    assert sorted(k for k in logs if k.startswith("loss")) == ["loss", "loss_cls", "loss_cls_aux"]
    loss.backward()
    dec = [p.grad for n, p in net.named_parameters() if "decoder" in n or "seg_head" in n or "head" in n.split(".")[0]]
    assert dec and all(g is not None and torch.count_nonzero(g) == 0 for g in dec)
    # the classification losses equal the multilabel soft margin of the two heads on the strong view
    b = _batch()
    with torch.no_grad():
        out = net(b["image_strong"])
    bce = -(b["label"] * F.logsigmoid(out.cls) + (1 - b["label"]) * F.logsigmoid(-out.cls)).mean()
    assert logs["loss_cls"] == pytest.approx(float(bce), rel=1e-5)
    m2, net2 = _method(loss_warmup_iters=5, skip_zero_weighted_terms=True)
    m2.training_step(net2, _batch(), step=0)[0].backward()
    assert all(p.grad is None for n, p in net2.named_parameters() if "decoder" in n)


def test_full_step_composes_the_weighted_terms():
    m, net = _method()
    loss, logs = m.training_step(net, _batch(), step=1)
    r = m.recipe
    expect = (r.w_cls * logs["loss_cls"] + r.w_cls_aux * logs["loss_cls_aux"] + r.w_c2s * logs["loss_c2s"]
              + r.w_s2c * logs["loss_s2c"] + r.w_reg * logs["loss_reg"])
    assert float(loss.detach()) == pytest.approx(expect, rel=1e-5, abs=1e-6)
    assert 0.0 <= logs["cpl_ignore_frac"] <= 1.0 and (logs["tau_low"], logs["tau_high"]) == (0.2, 0.7)
    loss.backward()
    teacher_grads = [p.grad for p in m.teacher.parameters()]
    assert all(g is None for g in teacher_grads) and not any(p.requires_grad for p in m.teacher.parameters())


def test_ema_teacher_after_optimizer_steps_matches_the_closed_form():
    m, net = _method(ema_momentum=0.9)
    t0 = {k: v.clone() for k, v in m.teacher.state_dict().items()}
    students = []
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        loss, _ = m.training_step(net, _batch(seed=step), step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        students.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        m.after_optimizer_step(net, step)
    for k, v in m.teacher.state_dict().items():
        if not v.is_floating_point():
            continue
        ref = 0.9 ** 3 * t0[k] + sum(0.1 * 0.9 ** (2 - i) * students[i][k] for i in range(3))
        torch.testing.assert_close(v, ref, rtol=1e-5, atol=1e-6, msg=k)


def test_teacher_init_independent_vs_copy():
    m, net = _method()
    heads = [n for n, _ in net.named_parameters() if "classifier" in n]
    s, t = dict(net.named_parameters()), dict(m.teacher.named_parameters())
    assert heads and all(not torch.equal(s[n], t[n]) for n in heads)      # independently initialised heads
    enc = [n for n in s if n.startswith("backbone") or n.startswith("encoder")]
    m2, net2 = _method(teacher_init="copy")
    s2, t2 = dict(net2.named_parameters()), dict(m2.teacher.named_parameters())
    assert all(torch.equal(s2[n], t2[n]) for n in s2)
    assert enc


def test_threshold_search_updates_every_step_and_is_checkpointed():
    m, net = _method(threshold_search=True, gmm_queue_ratio=2, gmm_scale=8, loss_warmup_iters=3)
    lows = []
    for step in range(3):                                                # warm-up: queues still updated
        _, logs = m.training_step(net, _batch(seed=step), step)
        lows.append(logs["tau_low"])
    assert lows[0] != 0.2 or lows[1] != lows[0]
    state = m.state_dict()
    assert {"teacher", "thresholds"} <= set(state)
    m2, net2 = _method(threshold_search=True, gmm_queue_ratio=2, gmm_scale=8, loss_warmup_iters=3)
    m2.load_state_dict(state)
    assert m2.step_fn.current_thresholds() == m.step_fn.current_thresholds()


def test_cam_and_pseudo_label_come_from_the_teacher():
    m, net = _method()
    x = torch.randn(1, 3, 32, 32)
    cam_t = m.cam(net, x)
    assert cam_t.shape == (1, 3, 32, 32) and float(cam_t.min()) >= 0.0 and float(cam_t.max()) <= 1.0
    ref = m.step_fn.teacher_outputs(m.teacher, x, torch.ones(1, 3)).cam
    assert torch.equal(cam_t, ref)          # the CAM-only passes give the full teacher pass's CAM exactly
    y = torch.tensor([[1.0, 0.0, 0.0]])
    pl = m.pseudo_label(net, x, y)
    assert pl.shape == (1, 32, 32) and set(pl.unique().tolist()) <= {0, 1, 255}
    assert m.predict(net, x).shape == (1, 4, 32, 32)


def test_batch_errors():
    m, net = _method()
    b = _batch()
    del b["image_strong"]
    with pytest.raises(ValueError, match="image_strong"):
        m.training_step(net, b, 1)
    b = _batch()
    b["image_strong"] = b["image_strong"][:, :, :16]
    with pytest.raises(ValueError, match="image_strong"):
        m.training_step(net, b, 1)
    with pytest.raises(TypeError, match="CoSARecipe"):
        CoSATrainingStep(object())


# ---------------------------------------------------------------------- engine runs
def test_synthetic_run_loss_decreases(tmp_path):
    res = main(COSA_CLI, [*TINY, "--iters", "30", "--set", "loss_warmup_iters=0", "--set", "lr=1e-3",
                          "--max-eval-images", "2", "--out", str(tmp_path / "run")])
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 30 and all(r["loss_c2s"] for r in rows[1:])
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
    for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered"):
        assert 0.0 <= res[k] <= 1.0


def test_kill_and_resume_keeps_teacher_and_thresholds_bit_identical(tmp_path):
    common = [*TINY, "--iters", "6", "--ckpt-every", "2", "--max-eval-images", "1", "--set", "threshold_search=true",
              "--set", "gmm_queue_ratio=2", "--set", "gmm_scale=8", "--set", "loss_warmup_iters=2"]
    main(COSA_CLI, [*common, "--out", str(tmp_path / "full")])
    main(COSA_CLI, [*common, "--out", str(tmp_path / "cut"), "--stop-at", "3"])
    main(COSA_CLI, [*common, "--out", str(tmp_path / "cut"), "--resume"])
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for part in ("model",):
        for k, v in full[part].items():
            assert torch.equal(v, cut[part][k]), k
    fs, cs = full["extra"]["method_state"], cut["extra"]["method_state"]
    for k, v in fs["teacher"].items():
        assert torch.equal(v, cs["teacher"][k]), k
    for k, v in fs["thresholds"].items():
        assert torch.equal(v, cs["thresholds"][k]), k
    ref = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    assert [r["tau_low"] for r in rows] == [r["tau_low"] for r in ref]


def test_cam_baseline_has_no_teacher(tmp_path):
    res = main(COSA_CLI, [*TINY, "--recipe", "cam", "--iters", "4", "--max-eval-images", "2",
                          "--out", str(tmp_path / "cam")])
    ckpt = torch.load(tmp_path / "cam" / "checkpoint.pt", weights_only=False)
    assert ckpt["extra"]["method_state"] == {} and ckpt["extra"]["recipe"]["recipe"] == "cam"
    assert 0.0 <= res["cam_miou"] <= 1.0
    assert "seg_miou" not in res and "skipped" in res["eval_splits"]["seg"]   # the decoder is never trained


def test_evaluate_script_uses_the_cosa_preset_and_teacher_state(tmp_path):
    main(COSA_CLI, [*TINY, "--iters", "2", "--max-eval-images", "1", "--out", str(tmp_path / "r"),
                    "--set", "eval_network=teacher"])
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import evaluate as ev
    finally:
        sys.path.pop(0)
    out = ev.main([str(tmp_path / "r" / "checkpoint.pt"), "--max-images", "1", "--no-progress", "--long-side", "64"])
    assert out["method"] == "cosa" and out["protocol"]["preset"] == "cosa"
    assert out["protocol"]["scales"] == [1.0, 0.5, 1.5, 0.75, 1.25]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_train_cosa(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [*TINY, "--batch-size", "4", "--iters", "3", "--set", "loss_warmup_iters=0", "--max-eval-images", "2",
            "--set", "threshold_search=true", "--set", "gmm_queue_ratio=2", "--set", "gmm_scale=8",
            "--out", str(tmp_path / "ddp")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "examples/train_cosa.py", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ranks_identical_weights"]
    # each rank updates its own EMA teacher from the synchronised student: the teachers stay identical
    teacher = m["rank_method_state_hashes"]["teacher"]
    assert len(teacher) == 2 and teacher[0] == teacher[1]
