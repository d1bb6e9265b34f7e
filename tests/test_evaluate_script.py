"""``examples/evaluate.py`` on a checkpoint of each of the five methods (tiny synthetic runs of the engine).

The reference for the scores is independent of the script: the engine's own evaluation at the end of
training (``metrics.json``), which scores the same split single-scale at native resolution through
:func:`wsseg.training.evaluate_method`; ``evaluate.py --single-scale --long-side native`` must reproduce it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

from wsseg.training.cli import METHODS
from wsseg.training.cli import main as train_main

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--synthetic-images", "8", "--iters", "3", "--num-vis", "0", "--no-progress", "--threads", "1"]
VIT_PCM = ["--synthetic-size", "48", "--crop", "32", "--batch-size", "4", "--set", "hidden=4",
           "--set", "num_unfrozen_blocks=1"]
TINY = {
    "tscd": ["--synthetic-size", "64", "--crop", "64", "--batch-size", "2", "--backbone", "test_vit",
             "--decoder-dim", "8", "--set", "varm_num_iter=2", "--set", "scd_num_samples=8"],
    "cosa": ["--synthetic-size", "64", "--crop", "64", "--batch-size", "2", "--backbone", "test_vit",
             "--decoder-dim", "8", "--set", "pseudo_scales=1.0,0.5", "--set", "energy_scale=0.5"],
    "slrnet": ["--synthetic-size", "48", "--crop", "48", "--batch-size", "2", "--decoder-dim", "8",
               "--set", "pamr_iters=3"],
    "vitpcm": VIT_PCM,
    "apc": [*VIT_PCM, "--decoder-dim", "8", "--set", "k_mode=ratio_to_max", "--set", "rho=0.5",
            "--set", "w_pcl=0.5", "--set", "w_seg=1", "--set", "seg_start_iters=1"],
}
#: the protocol evaluate.py picks by default for each method's checkpoint
DEFAULT_PRESET = {"tscd": "tscd", "cosa": "cosa", "slrnet": "slrnet", "vitpcm": "vitpcm", "apc": "tscd"}


@pytest.fixture(scope="module")
def evaluate():
    spec = importlib.util.spec_from_file_location("wsseg_examples_evaluate", ROOT / "examples" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(TINY))
def run(request, tmp_path_factory):
    """One tiny engine run per method, shared by the tests of this module: (method, run folder, metrics)."""
    name = request.param
    out = tmp_path_factory.mktemp(f"run_{name}")
    torch.manual_seed(0)
    metrics = train_main(METHODS[name], [*COMMON, *TINY[name], "--out", str(out)])
    return name, out, metrics


def _evaluate(evaluate, run, tmp_path, *flags):
    name, out, _ = run
    res = evaluate.main([str(out / "checkpoint.pt"), "--no-progress", "--threads", "1",
                         "--out", str(tmp_path / "eval.json"), *flags])
    assert json.loads((tmp_path / "eval.json").read_text())["seg_miou"] == pytest.approx(res["seg_miou"], nan_ok=True)
    return res


def test_default_protocol_scores_every_method(evaluate, run, tmp_path, capsys):
    name, _, _ = run
    res = _evaluate(evaluate, run, tmp_path, "--max-images", "3")
    printed = capsys.readouterr().out
    preset = DEFAULT_PRESET[name]
    assert res["method"] == name and res["num_images"] == 3
    assert res["protocol"]["preset"] == preset
    assert res["protocol"]["resize_to"] is None                    # synthetic set: native size by default
    for key in ("seg_miou", "seg_miou_filtered"):
        assert 0.0 <= res[key] <= 1.0
    assert len(res["iou"]) == len(res["class_names"]) == 4         # background + 3 synthetic classes
    # the protocol is printed before the evaluation starts
    line = next(ln for ln in printed.splitlines() if ln.startswith("evaluate "))
    assert f"preset {preset}" in line and "3 images" in line and "input native size" in line
    assert "scales" in line and "flip" in line and "CRF off" in line
    assert printed.index(line) < printed.index("seg mIoU unfiltered")


def test_single_scale_native_equals_the_engine_score(evaluate, run, tmp_path):
    # independent path: the engine scored the same 8 images single-scale at native size after training
    name, _, metrics = run
    assert metrics["eval_splits"]["seg"]["inference"] == "single-scale" and metrics["eval_long_side"] is None
    plain = ["--no-postprocess"] if name == "slrnet" else []  # the engine scores SLRNet's plain argmax
    res = _evaluate(evaluate, run, tmp_path, "--single-scale", "--long-side", "native", "--batch-size", "1", *plain)
    assert res["num_images"] == metrics["eval_splits"]["seg"]["num_images"] == 8
    assert res["seg_miou"] == pytest.approx(metrics["seg_miou"], abs=1e-12)
    assert res["seg_miou_filtered"] == pytest.approx(metrics["seg_miou_filtered"], abs=1e-12)
    assert res["iou"] == pytest.approx(metrics["seg_iou"], abs=1e-12, nan_ok=True)
    # batching images of one size changes nothing but float rounding
    batched = _evaluate(evaluate, run, tmp_path, "--single-scale", "--long-side", "native", "--batch-size", "8", *plain)
    assert batched["seg_miou"] == pytest.approx(res["seg_miou"], abs=1e-3)


@pytest.mark.parametrize("run", ["tscd"], indirect=True)  # flag handling is method-independent
def test_long_side_preset_and_progress(evaluate, run, tmp_path, capsys):
    _, out, _ = run
    res = _evaluate(evaluate, run, tmp_path, "--max-images", "2", "--long-side", "32", "--preset", "cosa")
    assert res["protocol"]["resize_to"] == 32 and res["protocol"]["scales"] == [1.0, 0.5, 1.5, 0.75, 1.25]
    assert "input long side 32" in capsys.readouterr().out
    res = _evaluate(evaluate, run, tmp_path, "--max-images", "2", "--single-scale")
    assert res["protocol"]["scales"] == [1.0] and res["protocol"]["flip"] is False
    # progress bar with elapsed<remaining (the ETA) on stderr
    evaluate.main([str(out / "checkpoint.pt"), "--threads", "1", "--max-images", "2", "--out",
                   str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert re.search(r"evaluate: 100%.*2/2 \[\d\d:\d\d<\d\d:\d\d", err), err[-500:]


@pytest.mark.parametrize("flag, value, expected", [
    ("--threads", "-1", "positive integer"),
    ("--threads", "0", "positive integer"),
    ("--max-images", "0", "positive integer"),
    ("--batch-size", "0", "positive integer"),
    ("--long-side", "-10", "positive integer or 'native'"),
    ("--long-side", "0", "positive integer or 'native'"),
    ("--long-side", "big", "positive integer or 'native'"),
])
def test_flag_errors_name_the_flag(evaluate, flag, value, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.parse_args(["ckpt.pt", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expected in err and value in err


def test_bad_checkpoints_name_the_file(evaluate, tmp_path):
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SystemExit, match="not_a_checkpoint.pt"):
        evaluate.main([str(bad), "--no-progress"])
    with pytest.raises(SystemExit, match="missing.pt"):
        evaluate.main([str(tmp_path / "missing.pt"), "--no-progress"])


def test_checkpoint_without_method_is_named(evaluate, tmp_path):
    from wsseg.training import save_checkpoint

    path = tmp_path / "plain.pt"
    save_checkpoint(path, torch.nn.Linear(2, 1), step=1, extra={})
    with pytest.raises(SystemExit, match=r"plain\.pt: records no method"):
        evaluate.main([str(path), "--no-progress"])


@pytest.mark.parametrize("kwargs, name", [({"eval_long_side": -10}, "eval_long_side"),
                                          ({"eval_long_side": 0}, "eval_long_side"),
                                          ({"max_images": 0}, "max_images")])
def test_evaluate_method_checks_sizes_first(kwargs, name):
    from wsseg.data import SyntheticShapes
    from wsseg.training import TSCDMethod, TSCDRecipe, evaluate_method

    method = TSCDMethod(TSCDRecipe(crop_size=32))
    with pytest.raises(ValueError, match=f"{name}: expected None or a positive int, got {list(kwargs.values())[0]}"):
        evaluate_method(method, torch.nn.Identity(), seg_set=SyntheticShapes(num_images=1, size=32), **kwargs)


# ----------------------------------------------------------------------------- SLRNet official post-processing
#: tools/infer_voc.py defaults: scales (config test.scales of the VOC WSSS run), --fp_cut, --topk_classes, --bg_pow
SLRNET_SCALES = (1.0, 1.5, 2.0, 0.5, 0.75)
FP_CUT, TOPK, BG_POW = 0.3, 6, 3.0


def official_slrnet_scores(model, dataset, n: int, use_cls_label: bool, scales=SLRNET_SCALES, flip=True,
                           fp_cut=FP_CUT, topk=TOPK, bg_pow=BG_POW, long_side=None):
    """Straight transcription of SLRNet's ``tools/infer_voc.py`` ``_worker`` (one image at a time), then a plain
    numpy confusion matrix and mIoU over the classes present in the ground truth. Returns ``(miou, iou)``.

    The official network returns, for a (image, mirror) pair at one scale, the nGWP class logits of the
    segmentation head (``classifier_forward``) and the softmax masks upsampled to the scaled input
    (``align_corners=True``); the loop adds the mirror's masks flipped back, upsamples to the image size
    (``align_corners=True``), sums over scales and divides by 2 * #scales; the class logits are averaged over
    the pair, then over the scales. The scaled inputs are made as wsseg's preset makes them (``F.interpolate``,
    ``scale_factor``); the official loader resizes with PIL, which is outside what is checked here. ``long_side``
    (``--long-side N``, not official) resizes the image's long side to N before the scales; the masks still go
    back to the image size.
    """
    import numpy as np
    import torch.nn.functional as F

    c = dataset.num_classes + 1
    conf = np.zeros((c, c), dtype=np.int64)
    with torch.no_grad():
        for i in range(n):
            sample = dataset[i]
            img, gt, label = sample["image"][None], sample["mask"].numpy(), sample["label"]
            h, w = img.shape[-2:]
            if long_side is not None:
                r = long_side / max(h, w)
                img = F.interpolate(img, size=(int(h * r), int(w * r)), mode="bilinear", align_corners=False)
            mask_sum = torch.zeros(c, h, w)
            cls_sum = torch.zeros(c - 1)
            for s in scales:
                xs = img if s == 1.0 else F.interpolate(img, scale_factor=s, mode="bilinear", align_corners=False)
                pair = torch.cat([xs, xs.flip(-1)]) if flip else xs
                x = model(pair).seg_logits1                                  # (2, K+1, h', w') logits
                masks = torch.softmax(x, dim=1)
                # classifier_forward: sum(x * m) / (1 + sum(m)) + (1 - mean(m))^3 * log(0.01 + mean(m)), no bg
                fx, fm = x.flatten(2), masks.flatten(2)
                cls = ((fx * fm).sum(-1) / (1.0 + fm.sum(-1))
                       + (1 - fm.mean(-1)) ** 3 * torch.log(0.01 + fm.mean(-1)))[:, 1:]
                masks = F.interpolate(masks, size=xs.shape[-2:], mode="bilinear", align_corners=True)
                out_cam = masks[0] + masks[1].flip(-1) if flip else masks[0]
                mask_sum += F.interpolate(out_cam[None], size=(h, w), mode="bilinear", align_corners=True)[0]
                cls_sum += (cls[0] + cls[1]) / 2.0 if flip else cls[0]
            masks_pred = mask_sum / ((2 if flip else 1) * len(scales))
            cls_pred = cls_sum / len(scales)
            if use_cls_label:
                keep = label.float()
            else:
                sig = torch.sigmoid(cls_pred)
                kth = torch.topk(sig, k=min(topk, c - 1))[0][-1]             # official k = 6 needs K >= 6
                keep = ((sig > fp_cut) & (sig >= kth)).float()
            masks_pred[1:] *= keep[:, None, None]
            masks_pred[0] = masks_pred[0] ** bg_pow
            pred = masks_pred.argmax(0).numpy()
            valid = gt != 255
            conf += np.bincount(c * gt[valid].astype(np.int64) + pred[valid], minlength=c * c).reshape(c, c)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return float(np.nanmean(iou[conf.sum(1) > 0])), iou


def _tiny_slrnet(run):
    """The run's network and evaluation set, rebuilt with the library (not with examples/evaluate.py)."""
    from wsseg.data import SyntheticShapes, eval_transform
    from wsseg.training import SLRNetMethod, load_checkpoint

    _, out, _ = run
    model = SLRNetMethod().build_model(3, backbone="resnet38d_w16", decoder_dim=8)
    load_checkpoint(out / "checkpoint.pt", model, restore_rng=False)
    dataset = SyntheticShapes(num_images=8, size=48, num_classes=3, seed=0, transform=eval_transform(None))
    return model.eval(), dataset


@pytest.mark.parametrize("run", ["slrnet"], indirect=True)
def test_slrnet_official_postprocessing_equals_the_official_loop(evaluate, run, tmp_path, capsys):
    model, dataset = _tiny_slrnet(run)
    res = _evaluate(evaluate, run, tmp_path, "--batch-size", "1")
    printed = capsys.readouterr().out
    miou_pred, iou_pred = official_slrnet_scores(model, dataset, 8, use_cls_label=False)
    miou_gt, iou_gt = official_slrnet_scores(model, dataset, 8, use_cls_label=True)
    assert res["num_images"] == 8
    assert res["seg_miou"] == pytest.approx(miou_pred, abs=1e-9)              # predicted class set + bg ** 3
    assert res["iou"] == pytest.approx(list(iou_pred), abs=1e-9, nan_ok=True)
    assert res["seg_miou_filtered"] == pytest.approx(miou_gt, abs=1e-9)       # GT image labels + bg ** 3
    assert res["iou_filtered"] == pytest.approx(list(iou_gt), abs=1e-9, nan_ok=True)
    assert abs(res["seg_miou"] - res["seg_miou_filtered"]) > 1e-3             # the two class sets differ here
    post = res["protocol"]["postprocess"]
    assert post["name"] == "slrnet" and (post["fp_cut"], post["top_k"], post["bg_pow"]) == (FP_CUT, TOPK, BG_POW)
    assert res["protocol"]["scales"] == list(SLRNET_SCALES) and res["protocol"]["flip"] is True
    line = next(ln for ln in printed.splitlines() if ln.startswith("evaluate "))
    assert "post-processing slrnet" in line and "> 0.3, top 6" in line and "background ** 3" in line
    # batching images of one size changes nothing but float rounding
    batched = _evaluate(evaluate, run, tmp_path, "--batch-size", "8")
    assert batched["seg_miou"] == pytest.approx(res["seg_miou"], abs=1e-3)


@pytest.mark.parametrize("run", ["slrnet"], indirect=True)
def test_slrnet_no_postprocess_is_the_plain_fused_argmax(evaluate, run, tmp_path, capsys):
    import torch.nn.functional as F

    from wsseg.metrics import DualMIoU

    model, dataset = _tiny_slrnet(run)
    res = _evaluate(evaluate, run, tmp_path, "--no-postprocess", "--batch-size", "1")
    assert res["protocol"]["postprocess"] is None
    assert "post-processing off (--no-postprocess)" in capsys.readouterr().out
    # reference: the preset's fusion of the method's log-masks, plain argmax (the numbers before the post-processing)
    from wsseg.layers import multi_scale_inference
    from wsseg.training import SLRNetMethod

    method, acc = SLRNetMethod(), DualMIoU(4)
    with torch.no_grad():
        for i in range(8):
            s = dataset[i]
            p = multi_scale_inference(lambda x: method.predict(model, x), s["image"][None], scales=SLRNET_SCALES,
                                      flip=True, scale_fuse="mean", flip_fuse="mean", output="probs")
            acc.update(F.interpolate(p, size=s["mask"].shape, mode="bilinear", align_corners=False),
                       s["mask"][None], s["label"][None])
    ref = acc.compute()
    assert abs(ref["miou"] - official_slrnet_scores(model, dataset, 8, use_cls_label=False)[0]) > 1e-3  # bg ** 3 acts
    assert res["seg_miou"] == pytest.approx(ref["miou"], abs=1e-9)
    assert res["seg_miou_filtered"] == pytest.approx(ref["miou_filtered"], abs=1e-9)
    # another preset: no SLRNet post-processing, and the line says why
    other = _evaluate(evaluate, run, tmp_path, "--max-images", "2", "--preset", "tscd")
    assert other["protocol"]["postprocess"] is None
    assert "post-processing off (preset tscd)" in capsys.readouterr().out


@pytest.mark.parametrize("run", ["slrnet"], indirect=True)
@pytest.mark.parametrize("fp_cut, topk, bg_pow, changes", [
    (0.3, 6, 3.0, False),   # official: on the tiny net every class passes (sigmoids ~0.31-0.39)
    (0.3, 1, 3.0, False),   # the rank limit keeps the top class only (the one predicted anyway)
    (0.39, 6, 3.0, True),   # the threshold drops every class: background everywhere
    (0.3, 6, 1.0, True),    # semi-supervised background power: background wins again
])
def test_slrnet_postprocessing_options_single_scale(evaluate, run, tmp_path, fp_cut, topk, bg_pow, changes):
    model, dataset = _tiny_slrnet(run)
    res = _evaluate(evaluate, run, tmp_path, "--single-scale", "--batch-size", "1", "--fp-cut", str(fp_cut),
                    "--topk-classes", str(topk), "--bg-pow", str(bg_pow))
    kw = dict(scales=(1.0,), flip=False, fp_cut=fp_cut, topk=topk, bg_pow=bg_pow)
    miou_pred, _ = official_slrnet_scores(model, dataset, 8, use_cls_label=False, **kw)
    miou_gt, _ = official_slrnet_scores(model, dataset, 8, use_cls_label=True, **kw)
    assert res["seg_miou"] == pytest.approx(miou_pred, abs=1e-9)
    assert res["seg_miou_filtered"] == pytest.approx(miou_gt, abs=1e-9)
    post = res["protocol"]["postprocess"]
    assert (post["fp_cut"], post["top_k"], post["bg_pow"]) == (fp_cut, topk, bg_pow)
    if changes:  # the option is exercised: the unfiltered score moves away from the official default's
        default, _ = official_slrnet_scores(model, dataset, 8, use_cls_label=False, scales=(1.0,), flip=False)
        assert abs(res["seg_miou"] - default) > 1e-3


@pytest.mark.parametrize("flag, value, expected", [
    ("--fp-cut", "1.5", "expected a probability in [0, 1], got 1.5"),
    ("--bg-pow", "0", "expected a positive float, got 0.0"),
    ("--topk-classes", "0", "positive integer"),
])
def test_slrnet_postprocess_flag_errors_name_the_flag(evaluate, flag, value, expected, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate.parse_args(["ckpt.pt", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expected in err


@pytest.mark.parametrize("run", ["slrnet"], indirect=True)
def test_slrnet_crf_gets_the_postprocessed_probabilities(evaluate, run, tmp_path, monkeypatch):
    # pydensecrf is optional: a stand-in CRF (argmax of what it is given) records its inputs
    import sys
    import types

    from wsseg.pseudo import DenseCRF

    calls = []

    def stub(image, probs):
        calls.append(probs.clone())
        return probs.argmax(dim=1)

    monkeypatch.setitem(sys.modules, "pydensecrf", types.ModuleType("pydensecrf"))
    monkeypatch.setattr(DenseCRF, "from_preset", classmethod(lambda cls, name: calls.append(name) or stub))
    res = _evaluate(evaluate, run, tmp_path, "--crf", "--max-images", "4", "--batch-size", "4")
    assert calls[0] == "slrnet" and res["protocol"]["crf"] == "slrnet"
    unfiltered, filtered = calls[1], calls[2]                      # one batch: predicted set, then GT labels
    labels = torch.stack([_tiny_slrnet(run)[1][i]["label"] for i in range(4)])
    assert (filtered[:, 1:][labels == 0] == 0).all()               # absent classes zeroed
    assert not torch.allclose(unfiltered.sum(1), torch.ones(1))    # bg ** 3, not renormalised
    # argmax of what the CRF gets is the post-processed score: the CRF sees exactly the scored probabilities
    assert res["crf_miou"] == pytest.approx(res["seg_miou"], abs=1e-12)
    assert res["crf_miou_filtered"] == pytest.approx(res["seg_miou_filtered"], abs=1e-12)
