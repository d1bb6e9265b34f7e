"""evaluate_method: images of equal input size batched, equal to the per-image protocol; progress log."""

import re

import pytest
import torch
import torch.nn.functional as F

from wsseg.data import SyntheticShapes, eval_transform
from wsseg.metrics import DualMIoU, SegmentationMetric
from wsseg.pseudo import cam_to_label
from wsseg.training import (
    SLRNetMethod,
    SLRNetRecipe,
    TSCDMethod,
    TSCDRecipe,
    ViTPCMMethod,
    ViTPCMRecipe,
    evaluate_method,
)
from wsseg.training.evaluation import _same_shape_batches, _shard


class _MixedSizes:
    """Synthetic images of several sizes (square 32 and 40, and 32x24 / 40x30 crops), interleaved."""

    def __init__(self, n=8):
        self.a = SyntheticShapes(num_images=n, size=32, seed=3, transform=eval_transform(None))
        self.b = SyntheticShapes(num_images=n, size=40, seed=4, transform=eval_transform(None))
        self.n, self.num_classes = n, 3

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        s = dict((self.a if i % 2 == 0 else self.b)[i])
        if i % 3 == 1:  # a portrait crop
            w = s["image"].shape[-1] * 3 // 4
            s["image"], s["mask"], s["valid"] = s["image"][..., :w], s["mask"][..., :w], s["valid"][..., :w]
        return s


def _reference(method, net, ds, long_side=None, n=None):
    """The protocol transcribed image by image: CAM at 0.45, pseudo label (ignored -> background), seg argmax."""
    C = ds.num_classes + 1
    cam_m, pl_m, seg_m = SegmentationMetric(C), SegmentationMetric(C), DualMIoU(C)
    net.eval()
    with torch.no_grad():
        for i in range(len(ds) if n is None else n):
            s = ds[i]
            x, gt, y = s["image"][None], s["mask"][None], s["label"][None]
            h, w = x.shape[-2:]
            if long_side is not None:
                f = long_side / max(h, w)
                size = (max(1, round(h * f)), max(1, round(w * f)))
                if size != (h, w):
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            v = F.interpolate(s["valid"][None, None].float(), size=x.shape[-2:], mode="nearest")[:, 0].bool()
            cam = method.cam(net, x)
            lab = cam_to_label(cam, y, v, bkg_thre=0.45)
            pl = method.pseudo_label(net, x, y, v, cam=cam)
            near = [F.interpolate(t[:, None].float(), size=(h, w), mode="nearest")[:, 0].long() for t in (lab, pl)]
            cam_m.update(near[0], gt)
            pl_m.update(near[1].masked_fill(near[1] == 255, 0), gt)
            seg = F.interpolate(method.predict(net, x).float(), size=(h, w), mode="bilinear", align_corners=False)
            seg_m.update(seg, gt, y)
    seg = seg_m.compute()
    return {"cam_miou": cam_m.compute()["miou"], "pseudo_label_miou": pl_m.compute()["miou"],
            "seg_miou": seg["miou"], "seg_miou_filtered": seg["miou_filtered"]}


def _tscd():
    method = TSCDMethod(TSCDRecipe(crop_size=32, varm_num_iter=2))
    torch.manual_seed(0)
    return method, method.build_model(3, backbone="test_vit", decoder_dim=8)


def _slrnet():
    method = SLRNetMethod(SLRNetRecipe(crop_size=32))
    torch.manual_seed(0)
    return method, method.build_model(3, backbone="test_vit", decoder_dim=8)


def _vitpcm():
    method = ViTPCMMethod(ViTPCMRecipe(crop_size=32))
    torch.manual_seed(0)
    return method, method.build_model(3, backbone="test_vit")


KEYS = ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered")


@pytest.mark.parametrize("build", [_tscd, _slrnet, _vitpcm], ids=["tscd", "slrnet", "vitpcm"])
@pytest.mark.parametrize("long_side", [None, 36])
def test_batched_evaluation_equals_the_per_image_protocol(build, long_side):
    # mixed native sizes (32, 40, crops): at native size 4 input shapes, at long side 36 two (36x36, 36x27)
    method, net = build()
    ds = _MixedSizes(8)
    ref = _reference(method, net, ds, long_side)
    for batch_size in (1, 3, 8):
        res = evaluate_method(method, net, pseudo_set=ds, seg_set=ds, eval_long_side=long_side,
                              batch_size=batch_size)
        for k in KEYS:
            assert res[k] == pytest.approx(ref[k], abs=1e-9), (k, batch_size)
        assert res["eval_splits"]["seg"]["num_images"] == 8 and res["num_eval_images"] == 8


def test_separate_sets_max_images_and_ranks():
    # different pseudo / seg sets, max_images, and the two DDP shards summing to the whole
    import wsseg.training.evaluation as ev

    method, net = _tscd()
    pseudo, seg = _MixedSizes(6), SyntheticShapes(num_images=5, size=32, seed=9, transform=eval_transform(None))
    res = evaluate_method(method, net, pseudo_set=pseudo, seg_set=seg, max_images=4, batch_size=4)
    one = evaluate_method(method, net, pseudo_set=pseudo, seg_set=seg, max_images=4, batch_size=2)
    ref_p, ref_s = _reference(method, net, pseudo, n=4), _reference(method, net, seg, n=4)
    assert res["cam_miou"] == pytest.approx(ref_p["cam_miou"], abs=1e-9)
    assert res["pseudo_label_miou"] == pytest.approx(ref_p["pseudo_label_miou"], abs=1e-9)
    assert res["seg_miou"] == pytest.approx(ref_s["seg_miou"], abs=1e-9)
    assert res["eval_splits"]["cam"]["num_images"] == 4 and res["eval_splits"]["seg"]["num_images"] == 4
    confs = []
    orig = ev._sum_over_ranks
    try:
        ev._sum_over_ranks = lambda metrics, counts: confs.append([m.confusion.clone() for m in metrics])
        for rank in range(2):  # batch_size 2: two chunks, one per rank; the same batches as one process
            evaluate_method(method, net, pseudo_set=pseudo, seg_set=seg, max_images=4, rank=rank, world_size=2,
                            batch_size=2)
    finally:
        ev._sum_over_ranks = orig
    from wsseg.metrics.segmentation_metric import miou_from_confusion

    assert miou_from_confusion(confs[0][0] + confs[1][0])["miou"] == one["cam_miou"]
    assert miou_from_confusion(confs[0][1] + confs[1][1])["miou"] == one["pseudo_label_miou"]
    assert miou_from_confusion(confs[0][3] + confs[1][3])["miou"] == one["seg_miou"]


class _Shaped:
    def __init__(self, h, w):
        self.xin = torch.zeros(1, 3, h, w)


def test_same_shape_batches_groups_within_chunks():
    shapes = [(4, 4), (4, 5), (4, 4), (6, 6), (4, 4), (4, 5), (7, 7), (8, 8), (9, 9), (4, 4)]
    items = [_Shaped(*s) for s in shapes]
    out = list(_same_shape_batches(iter(items), 4))
    # chunks {0..3}, {4..7}, {8, 9}; inside each, equal shapes together in order of first appearance
    assert [[items.index(it) for it in b] for b in out] == [[0, 2], [1], [3], [4], [5], [6], [7], [8], [9]]
    assert [[items.index(it) for it in b] for b in _same_shape_batches(iter(items), 1)] == [[i] for i in range(10)]
    assert list(_same_shape_batches(iter([]), 4)) == []


def test_shards_are_round_robin_chunks():
    assert _shard(10, 0, 2, 3) == [0, 1, 2, 6, 7, 8] and _shard(10, 1, 2, 3) == [3, 4, 5, 9]
    assert _shard(5, 0, 1, 8) == [0, 1, 2, 3, 4] and _shard(2, 1, 2, 8) == []
    assert _shard(7, 0, 3, 1) == [0, 3, 6]  # batch_size 1: the image-wise round robin
    for n, w, c in ((17, 3, 4), (8, 2, 8), (9, 4, 2)):
        assert sorted(i for r in range(w) for i in _shard(n, r, w, c)) == list(range(n))


def test_progress_log_lines(capsys):
    method, net = _vitpcm()
    ds = SyntheticShapes(num_images=20, size=32, seed=0, transform=eval_transform(None))
    evaluate_method(method, net, pseudo_set=ds, seg_set=ds, batch_size=1, log_progress=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("evaluate:")]
    assert len(lines) == 10  # every 10 % of 20 images
    done = [int(re.match(r"evaluate: (\d+)/20 images \((\d+) %\), \d+ s elapsed, ETA \d+ s$", ln).group(1))
            for ln in lines]
    assert done == list(range(2, 21, 2))
    assert lines[-1].endswith("ETA 0 s")
    # nothing without the flag, nothing when the tqdm bar is on
    evaluate_method(method, net, pseudo_set=ds, seg_set=ds, max_images=3)
    evaluate_method(method, net, pseudo_set=ds, seg_set=ds, max_images=3, log_progress=True, show_progress=True)
    assert "evaluate:" not in capsys.readouterr().out


def test_batch_size_validated():
    method, net = _vitpcm()
    ds = SyntheticShapes(num_images=2, size=32, transform=eval_transform(None))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            evaluate_method(method, net, pseudo_set=ds, batch_size=bad)


@pytest.mark.parametrize("build, reused, plain", [(_vitpcm, 1, 3), (_slrnet, 2, 3)], ids=["vitpcm", "slrnet"])
def test_one_forward_shared_by_cam_pseudo_label_and_seg(build, reused, plain, monkeypatch):
    # 4 equal-size images, one batch, pseudo set = seg set: ViT-PCM's cam, pseudo label and seg read one
    # forward (3 without reuse); SLRNet's cam and seg share the single-view one (its pseudo label is two-view)
    method, net = build()
    calls = []
    cls_forward = type(net).forward
    monkeypatch.setattr(type(net), "forward", lambda self, *a, **k: calls.append(len(a)) or cls_forward(self, *a, **k))
    ds = SyntheticShapes(num_images=4, size=32, seed=1, transform=eval_transform(None))
    a = evaluate_method(method, net, pseudo_set=ds, seg_set=ds, batch_size=4)
    assert len(calls) == reused and "forward" not in vars(net)  # the instance's forward is removed again
    calls.clear()
    method.reuse_eval_forward = False
    b = evaluate_method(method, net, pseudo_set=ds, seg_set=ds, batch_size=4)
    assert len(calls) == plain
    for k in KEYS:
        assert a[k] == b[k], k


def test_forward_restored_after_an_error():
    method, net = _vitpcm()
    net.train()

    class Broken(SyntheticShapes):
        def __getitem__(self, i):
            if i == 1:
                raise OSError("unreadable image")
            return super().__getitem__(i)

    with pytest.raises(OSError, match="unreadable"):
        evaluate_method(method, net, pseudo_set=Broken(num_images=3, size=32, transform=eval_transform(None)),
                        batch_size=1)
    assert "forward" not in vars(net) and net.training  # forward and the train mode restored


@pytest.mark.parametrize("same", [True, False])
def test_classification_only_recipe_skips_the_untrained_segmentation(same, monkeypatch):
    # TSCD recipe "cam" trains no decoder: no segmentation pass and no seg_* metrics, unless asked for
    from wsseg.training import format_summary

    method = TSCDMethod(TSCDRecipe(recipe="cam", crop_size=32, varm_num_iter=2))
    torch.manual_seed(0)
    net = method.build_model(3, backbone="test_vit", decoder_dim=8)
    pseudo = SyntheticShapes(num_images=4, size=32, seed=2, transform=eval_transform(None))
    seg = pseudo if same else SyntheticShapes(num_images=3, size=32, seed=8, transform=eval_transform(None))
    ref = _reference(method, net, pseudo)
    calls = []
    orig = TSCDMethod.predict
    monkeypatch.setattr(TSCDMethod, "predict", lambda self, m, x: calls.append(x.shape[0]) or orig(self, m, x))
    res = evaluate_method(method, net, pseudo_set=pseudo, seg_set=seg, seg_split="val")
    assert calls == []                                            # the untrained decoder never ran
    assert not any(k.startswith("seg_") for k in res)
    assert res["eval_splits"]["seg"] == {"split": "val", "skipped": "not scored: the recipe trains no "
                                                                    "segmentation head (classification only)"}
    assert res["cam_miou"] == pytest.approx(ref["cam_miou"], abs=1e-9)
    assert res["pseudo_label_miou"] == pytest.approx(ref["pseudo_label_miou"], abs=1e-9)
    assert "seg not scored" in format_summary(res) and "seg mIoU" not in format_summary(res)
    # asked for: the untrained head is scored like any other (equal to the per-image reference on that set)
    forced = evaluate_method(method, net, pseudo_set=pseudo, seg_set=seg, score_segmentation=True)
    assert forced["seg_miou"] == pytest.approx(_reference(method, net, seg)["seg_miou"], abs=1e-9)
    assert forced["cam_miou"] == res["cam_miou"] and calls
    # and a method that trains its head can be told not to score it
    full = TSCDMethod(TSCDRecipe(crop_size=32, varm_num_iter=2))
    off = evaluate_method(full, net, pseudo_set=pseudo, seg_set=seg, score_segmentation=False)
    assert "seg_miou" not in off and off["eval_splits"]["seg"]["skipped"] == "not scored: score_segmentation=False"


def test_trains_segmentation_per_recipe():
    from wsseg.training import CoSAMethod, CoSARecipe

    assert TSCDMethod(TSCDRecipe()).trains_segmentation and not TSCDMethod(TSCDRecipe(recipe="cam")).trains_segmentation
    assert CoSAMethod(CoSARecipe()).trains_segmentation and not CoSAMethod(CoSARecipe(recipe="cam")).trains_segmentation
    # SLRNet's segmentation is its mask head, which the classification loss trains: scored for both presets
    assert SLRNetMethod(SLRNetRecipe.preset("cam")).trains_segmentation
    assert ViTPCMMethod(ViTPCMRecipe()).trains_segmentation


def test_score_segmentation_type_error():
    method, net = _tscd()
    ds = SyntheticShapes(num_images=1, size=32, transform=eval_transform(None))
    with pytest.raises(TypeError, match="score_segmentation: expected None or a bool, got int"):
        evaluate_method(method, net, seg_set=ds, score_segmentation=1)
