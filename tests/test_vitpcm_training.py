"""ViT-PCM and APC: the models, the recipes, the iteration's composition against the official equations,
the two-stage schedule, CLI runs (loss decreases, exact resume, DDP)."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsseg import create_model, list_models
from wsseg.training import (
    APCMethod,
    APCRecipe,
    ViTPCMMethod,
    ViTPCMRecipe,
    ViTPCMTrainingStep,
    seed_everything,
    vitpcm_pseudo_label,
)
from wsseg.training.cli import APC_CLI, METHODS, VITPCM_CLI, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-images", "8", "--synthetic-size", "48", "--crop", "32", "--batch-size", "4",
        "--num-vis", "0", "--no-progress", "--threads", "1", "--set", "hidden=4", "--set", "num_unfrozen_blocks=1"]
APC_SET = ["--decoder-dim", "8", "--set", "k_mode=ratio_to_max", "--set", "rho=0.5", "--set", "w_pcl=0.5",
           "--set", "w_seg=1", "--set", "seg_start_iters=2"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(name="vitpcm", **kw):
    seed_everything(0)
    base = dict(backbone="test_vit", num_classes=3, hidden=4, num_unfrozen_blocks=1, encoder_dropout=0.0)
    return create_model(name, **{**base, **kw})


# ---------------------------------------------------------------------- models
def test_model_outputs_and_composition():
    net = _net().eval()
    x = torch.randn(2, 3, 48, 64)
    out = net(x)
    assert out.patch_logits.shape == (2, 4, 3, 4) and out.embeddings.shape == (2, 16, 3, 4)
    assert out.features.shape == (2, 64, 3, 4)
    with torch.no_grad():
        feat = net.encoder(x).features[-1]
        logits = net.classifier(net.hv_bilstm(feat))
    torch.testing.assert_close(out.patch_logits, logits)
    torch.testing.assert_close(out.patch_probs.sum(dim=1), torch.ones(2, 3, 4))
    assert torch.equal(out.pooled, out.patch_probs.amax(dim=(2, 3)))          # ViT-PCM: global max pooling
    assert math.isclose(float(net.l2_penalty().detach()), 0.01 * float(sum((p.detach() ** 2).sum() for p in
                                                                   net.classifier.parameters())), rel_tol=1e-6)
    pair = net(x, torch.randn(1, 3, 32, 32))
    assert isinstance(pair, tuple) and pair[1].patch_probs.shape == (1, 4, 2, 2)


def test_freezing_follows_the_official_warmup_and_unfreeze():
    net = _net(num_unfrozen_blocks=1)
    trainable = {n for n, p in net.encoder.named_parameters() if p.requires_grad}
    depth = len(net.encoder.model.blocks)
    assert trainable and all(n.startswith(f"model.blocks.{depth - 1}.") or n.startswith("model.norm.")
                             for n in trainable)
    assert not net.encoder.model.patch_embed.proj.weight.requires_grad
    assert all(p.requires_grad for m in (net.hv_bilstm, net.classifier) for p in m.parameters())
    x = torch.randn(2, 3, 32, 32)
    net.encoder_grad = False
    net(x).pooled.sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.classifier.parameters())
    net.zero_grad(set_to_none=True)
    net.encoder_grad = True
    net(x).pooled.sum().backward()
    assert all(p.grad is not None for n, p in net.encoder.named_parameters() if n in trainable)
    names = [g["name"] for g in net.param_groups(1e-4)]
    assert names == ["encoder", "heads"]


def test_apc_model_adds_a_decoder_and_requires_its_width():
    net = _net("apc", decoder_dim=8, k_mode="fixed", k=2).eval()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.seg.shape == (2, 4, 2, 2) and net.pooling.k_mode == "fixed"
    assert [g["name"] for g in net.param_groups(1e-4)] == ["encoder", "heads", "decoder"]
    with pytest.raises(ValueError, match="decoder_dim"):
        create_model("apc", backbone="test_vit", num_classes=3)
    with pytest.raises(ValueError, match="rho"):
        create_model("apc", backbone="test_vit", num_classes=3, decoder_dim=8, k_mode="ratio_to_max")


def test_model_errors_and_registry():
    assert {"vitpcm", "vitpcm_b16", "apc", "apc_vit_b16_experimental"} <= set(list_models())
    with pytest.raises(ValueError, match="num_unfrozen_blocks"):
        _net(num_unfrozen_blocks=99)
    with pytest.raises(ValueError, match="num_classes"):
        _net(num_classes=0)
    with pytest.raises(ValueError, match="backbone"):
        create_model("vitpcm_b16", backbone="test_vit")
    with pytest.raises(ValueError, match="pretrained"):
        _net(pretrained=True)
    with pytest.raises(ValueError, match="x"):
        _net()(torch.randn(2, 1, 32, 32))


# ---------------------------------------------------------------------- recipes
def test_recipe_defaults_are_the_official_voc_values():
    r = ViTPCMRecipe()
    assert (r.crop_size, r.view2_px, r.view2_crop_px, r.crop_prob, r.patch_size) == (384, 192, 128, 0.3, 16)
    assert (r.batch_size, r.iters, r.stage_a_iters) == (64, 80 * 166, 166)
    assert (r.lr_stage_a, r.lr, r.betas, r.eps, r.seed) == (1e-3, 1e-4, (0.9, 0.999), 1e-7, 1234)
    assert (r.w_mce, r.w_reg, r.w_et, r.hidden, r.dropout, r.num_unfrozen_blocks, r.k_mode) == \
        (1.0, 1.0, 1.0, 192, 0.2, 5, "max")
    assert ViTPCMRecipe.preset("vitpcm_coco").crop_prob == 0.0
    assert ViTPCMRecipe().scaled(800).stage_a_iters == 10
    assert ViTPCMRecipe(stage_a_iters=7).replace(stage_a_iters=7).scaled(800).stage_a_iters == 7
    # DINOv2 at 224: 16 x 16 patches, view 2 of 112 (8 x 8), crop of round(16 / 3) = 5 patches
    r = ViTPCMRecipe(crop_size=224, patch_size=14)
    assert (r.view2_px, r.view2_crop_px) == (112, 70)


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=6), "batch_size"), (dict(crop_size=100), "crop_size"), (dict(k_mode="top"), "k_mode"),
    (dict(crop_prob=2.0), "crop_prob"), (dict(recipe="apc"), "recipe"), (dict(view2_crop=1000), "view2_crop"),
    (dict(betas=(0.9, 1.0)), "betas"), (dict(stage_a_iters=-1), "stage_a_iters")])
def test_recipe_errors_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        ViTPCMRecipe(**kw)


def test_apc_recipe_requires_every_unpublished_value():
    r = APCRecipe()
    assert r.k_mode is None and r.w_pcl is None and r.pcl_form == "margin" and r.pcl_margin == 0.0
    with pytest.raises(ValueError, match="k_mode, w_pcl, w_seg, seg_start_iters"):
        APCMethod(r)
    with pytest.raises(ValueError, match="pcl_temperature"):
        APCRecipe(k_mode="max", w_pcl=1.0, w_seg=1.0, seg_start_iters=0, pcl_form="infonce").check_required()
    with pytest.raises(ValueError, match="pcl_scope"):
        APCRecipe(pcl_scope="dataset")
    ok = APCRecipe.from_overrides(["k_mode=fixed", "k=4", "w_pcl=0.1", "w_seg=1", "seg_start_iters=5"])
    ok.check_required()
    assert ok.k == 4 and ok.w_pcl == 0.1


# ---------------------------------------------------------------------- the iteration
def _batch(B=4, S=32, flips=False, seed=0):
    """Views without flips / crops: view 2 = the image resized to S/2 (what the transform gives then)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(B, 3, S, S, generator=g)
    y = torch.zeros(B, 3)
    y[torch.arange(B), torch.arange(B) % 3] = 1.0
    fl = torch.zeros(B, 3, dtype=torch.bool)
    box = torch.tensor([[0, 0, S // 16, S // 16]] * B)
    return {"image": x1, "label": y, "image_view2": F.interpolate(x1, scale_factor=0.5, mode="bilinear"),
            "flips_view1": fl, "flips_view2": fl.clone(), "crop_box_view2": box}


def _keras_bce(p, y, eps=1e-7):
    p = p.clamp(eps, 1 - eps)
    return -(y * torch.log(p + eps) + (1 - y) * torch.log(1 - p + eps)).mean()


def test_terms_match_the_official_equations_without_dropout():
    r = ViTPCMRecipe(crop_size=64, batch_size=4, hidden=4, dropout=0.0, num_unfrozen_blocks=1, stage_a_iters=0)
    m = ViTPCMMethod(r)
    net = _net(num_classes=3, dropout=0.0, input_dropout=0.0, num_unfrozen_blocks=1)
    b = _batch(S=64)
    loss, logs = m.training_step(net, b, step=0)
    y = torch.cat([torch.ones(4, 1), b["label"]], dim=1)                   # background always 1
    with torch.no_grad():
        p1 = net(b["image"]).patch_probs                                    # (4, 4, 4, 4)
        tiles = b["image_view2"]                                            # (4, 3, 32, 32)
        mosaic = torch.cat([torch.cat([tiles[0], tiles[1]], dim=2), torch.cat([tiles[2], tiles[3]], dim=2)], dim=1)
        pm = net(mosaic[None]).patch_probs[0]                               # (4, 4, 4): 2 x 2 tiles of 2 x 2
        p2 = torch.stack([pm[:, :2, :2], pm[:, :2, 2:], pm[:, 2:, :2], pm[:, 2:, 2:]])
        t = F.interpolate(p1, size=(2, 2), mode="bilinear", align_corners=True) * y[:, :, None, None]
        mx = t.amax(dim=(2, 3), keepdim=True)
        t = torch.where(mx > 0, t / mx.clamp_min(1e-30), torch.zeros_like(t))
        t = t / t.sum(dim=1, keepdim=True)
        q = (p2 / p2.sum(dim=1, keepdim=True)).clamp(1e-7, 1 - 1e-7)
        l_et = -(t * q.log()).sum(dim=1).mean()
        l_mce = _keras_bce(p1.amax(dim=(2, 3)), y)
        l_reg = 0.01 * sum((p ** 2).sum() for p in net.classifier.parameters())
    assert math.isclose(logs["loss_mce"], float(l_mce), rel_tol=1e-5)
    assert math.isclose(logs["loss_reg"], float(l_reg), rel_tol=1e-5)
    assert math.isclose(logs["loss_et"], float(l_et), rel_tol=1e-5)
    assert math.isclose(float(loss.detach()), float(l_mce + l_reg + l_et), rel_tol=1e-5)


def test_two_stage_schedule_and_fresh_adam_at_the_switch():
    r = ViTPCMRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1, stage_a_iters=2)
    m = ViTPCMMethod(r)
    net = _net()
    opt = m.build_optimizer(net)
    sched = m.build_scheduler(opt)
    b = _batch()
    lrs, enc_grads = [], []
    for step in range(4):
        lrs.append({g["name"]: g["lr"] for g in opt.param_groups})
        loss, _ = m.training_step(net, b, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        enc_grads.append(any(p.grad is not None for p in net.encoder.parameters()))
        opt.step()
        sched.step()
        m.after_optimizer_step(net, step)
        if step == 1:
            assert len(opt.state) == 0                                   # new Adam, as the official re-compile
    assert lrs[0] == {"encoder": 0.0, "heads": 1e-3} and lrs[3] == {"encoder": 1e-4, "heads": 1e-4}
    assert enc_grads == [False, False, True, True]
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["eps"] == 1e-7


def test_apc_terms_and_pseudo_labels():
    r = APCRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1, k_mode="fixed", k=2, w_pcl=0.5,
                  w_seg=2.0, seg_start_iters=1, seg_min_confidence=0.6)
    m = APCMethod(r)
    seed_everything(0)
    net = m.build_model(3, backbone="test_vit", decoder_dim=8)
    b = _batch()
    _, logs0 = m.training_step(net, b, step=0)
    assert "loss_seg" not in logs0 and logs0["loss_pcl"] >= 0
    loss, logs = m.training_step(net, b, step=1)
    parts = ("loss_mce", "loss_reg", "loss_et")
    assert math.isclose(float(loss.detach()), sum(logs[k] for k in parts) + 0.5 * logs["loss_pcl"] + 2.0 * logs["loss_seg"],
                        rel_tol=1e-5)
    merged = torch.tensor([[[[0.9, 0.45]], [[0.1, 0.55]]]])                 # (1, 2, 1, 2): max 0.9 / 0.55
    assert m.step_fn.seg_pseudo_label(merged, (1, 2), None).tolist() == [[[0, 255]]]   # 0.55 < 0.6: ignored
    assert m.step_fn.seg_pseudo_label(merged, (1, 2), torch.tensor([[[False, True]]])).tolist() == [[[255, 255]]]


def test_pseudo_label_hand_case_and_inference_hooks():
    p = torch.tensor([[[[0.6, 0.2]], [[0.3, 0.5]], [[0.1, 0.3]]]])          # bg, class 1, class 2 (1 x 2 grid)
    # labels: only class 1 present -> class 2 zeroed; bg / max = (1, 1/3), class 1 / max = (0.6, 1)
    assert vitpcm_pseudo_label(p, torch.tensor([[1.0, 0.0]]), (1, 2)).tolist() == [[[0, 1]]]
    m = ViTPCMMethod(ViTPCMRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1))
    net = _net().eval()
    x = torch.randn(2, 3, 40, 56)
    cam = m.cam(net, x)
    assert cam.shape == (2, 3, 40, 56) and float(cam.max()) <= 1.0
    corner = m.cam(net, torch.randn(2, 3, 32, 32))          # 2 x 2 grid: align_corners maps it to the corners
    assert torch.allclose(corner.flatten(2).amax(-1), torch.ones(2, 3), atol=1e-6)  # each class peaks at 1
    pl = m.pseudo_label(net, x, torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    assert pl.shape == (2, 40, 56) and set(pl[0].unique().tolist()) <= {0, 1} and set(pl[1].unique().tolist()) <= {0, 3}
    logp = m.predict(net, x)
    torch.testing.assert_close(logp.exp().sum(dim=1), torch.ones(2, 40, 56), atol=1e-5, rtol=0)


def test_errors():
    m = ViTPCMMethod(ViTPCMRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1))
    net = _net()
    b = _batch()
    with pytest.raises(ValueError, match="image_view2"):
        m.training_step(net, {k: v for k, v in b.items() if k != "image_view2"}, 0)
    with pytest.raises(ValueError, match="divisible by 4"):
        m.training_step(net, {k: v[:2] for k, v in b.items()}, 0)
    with pytest.raises(TypeError, match="ViTPCMRecipe"):
        ViTPCMTrainingStep(object())
    with pytest.raises(ValueError, match="patch_size"):
        ViTPCMMethod(ViTPCMRecipe(crop_size=28, patch_size=14, batch_size=4)).setup(net, torch.device("cpu"))


# ---------------------------------------------------------------------- CLI runs
def test_methods_are_registered():
    assert METHODS["vitpcm"] is VITPCM_CLI and METHODS["apc"] is APC_CLI


def test_synthetic_vitpcm_run_loss_decreases(tmp_path):
    res = main(VITPCM_CLI, [*TINY, "--iters", "24", "--max-eval-images", "2", "--out", str(tmp_path / "run")])
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 24 and rows[0]["loss_et"]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6
    for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered"):
        assert 0.0 <= res[k] <= 1.0


def test_apc_run_needs_its_settings(tmp_path):
    with pytest.raises(SystemExit, match="no published value"):
        main(APC_CLI, [*TINY, "--iters", "2", "--out", str(tmp_path / "x")])
    res = main(APC_CLI, [*TINY, *APC_SET, "--iters", "4", "--max-eval-images", "1", "--out", str(tmp_path / "apc")])
    rows = list(csv.DictReader(open(tmp_path / "apc" / "log.csv")))
    assert not rows[1]["loss_seg"] and rows[2]["loss_seg"] and rows[0]["loss_pcl"]
    assert 0.0 <= res["seg_miou"] <= 1.0


def test_kill_and_resume_is_bit_identical_across_the_stage_switch(tmp_path):
    common = [*TINY, "--iters", "6", "--ckpt-every", "2", "--max-eval-images", "1", "--set", "stage_a_iters=3"]
    main(VITPCM_CLI, [*common, "--out", str(tmp_path / "full")])
    main(VITPCM_CLI, [*common, "--out", str(tmp_path / "cut"), "--stop-at", "4"])
    main(VITPCM_CLI, [*common, "--out", str(tmp_path / "cut"), "--resume"])
    full = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    for k, v in full["model"].items():
        assert torch.equal(v, cut["model"][k]), k
    ref = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_train_apc_through_the_stage_switch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    args = [*TINY, *APC_SET, "--batch-size", "8", "--iters", "3", "--set", "stage_a_iters=1", "--max-eval-images", "2",
            "--out", str(tmp_path / "ddp")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "examples/train_apc.py", "--method", "apc", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["ranks_identical_weights"]


def test_two_view_batch_from_the_method_transform():
    m = ViTPCMMethod(ViTPCMRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1, crop_prob=1.0))
    t = m.train_transform()
    s = t({"image": np.zeros((40, 50, 3), np.uint8), "label": np.array([1.0, 0.0])})
    assert s["image"].shape == (3, 32, 32) and s["image_view2"].shape == (3, 16, 16)
    box = s["crop_box_view2"].tolist()
    assert box[2] - box[0] == box[3] - box[1] == 1                        # 32 / 3 -> 1 patch of 16 px


def test_cli_set_takes_several_overrides_per_flag():
    """``--set a=1 b=2`` (the form the APC docs show) equals two ``--set`` flags; both reach the recipe."""
    from wsseg.training.cli import build_parser, make_recipe

    parser = build_parser(APC_CLI)
    one = parser.parse_args(["--set", "k_mode=fixed", "k=8", "w_pcl=0.5", "--set", "w_seg=2", "seg_start_iters=3"])
    assert one.overrides == ["k_mode=fixed", "k=8", "w_pcl=0.5", "w_seg=2", "seg_start_iters=3"]
    recipe = make_recipe(APC_CLI, one)
    assert (recipe.k_mode, recipe.k, recipe.w_pcl, recipe.w_seg, recipe.seg_start_iters) == ("fixed", 8, 0.5, 2.0, 3)
    recipe.check_required()  # nothing missing
