"""The shared training engine: data order, exact resume, DDP under torchrun, AMP, real set-ups, errors."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import wsseg
from wsseg.data import SyntheticShapes, eval_transform, train_transform
from wsseg.training import (
    ResumableDistributedSampler,
    SeededSamples,
    TrainConfig,
    Trainer,
    TrainingMethod,
    TSCDMethod,
    TSCDRecipe,
    evaluate_method,
)
from wsseg.training.cli import TSCD_CLI, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-images", "8", "--synthetic-size", "64", "--crop", "64", "--batch-size", "2",
        "--backbone", "test_vit", "--decoder-dim", "8", "--num-vis", "0", "--no-progress", "--threads", "1",
        "--set", "varm_num_iter=2", "--set", "scd_num_samples=8", "--set", "cam_scales=1.0"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- data order
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_order_is_torch_distributed_sampler(world):
    n, seed = 11, 5
    for epoch in (0, 3):
        for rank in range(world):
            ref = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, seed=seed,
                                                      shuffle=True, drop_last=True)
            ref.set_epoch(epoch)
            s = ResumableDistributedSampler(range(n), num_replicas=world, rank=rank, seed=seed)
            s.set_epoch(epoch)
            assert [i for i, _ in s] == list(ref)
            assert {e for _, e in s} == {epoch}
            s.set_start(2)
            assert [i for i, _ in s] == list(ref)[2:] and len(s) == len(ref) - 2


def test_sampler_shards_partition_the_epoch():
    n, world = 12, 3
    shards = []
    for rank in range(world):
        s = ResumableDistributedSampler(range(n), num_replicas=world, rank=rank, seed=0)
        s.set_epoch(1)
        shards.append([i for i, _ in s])
    assert sorted(sum(shards, [])) == list(range(n))
    g = torch.Generator().manual_seed(0 + 1)
    perm = torch.randperm(n, generator=g).tolist()          # the epoch's order, interleaved over ranks
    assert [shards[k % world][k // world] for k in range(n)] == perm


def test_sampler_start_out_of_range():
    s = ResumableDistributedSampler(range(4), num_replicas=1, rank=0, seed=0)
    with pytest.raises(ValueError, match="start"):
        s.set_start(5)


def test_seeded_samples_do_not_depend_on_load_order():
    ds = SeededSamples(SyntheticShapes(num_images=4, size=48, transform=train_transform(32, seed=0)), seed=3)
    first = ds[(1, 2)]["image"]
    for key in [(0, 2), (3, 0), (2, 5)]:
        ds[key]
    assert torch.equal(ds[(1, 2)]["image"], first)           # same (index, epoch): same crop, whatever came before
    assert not torch.equal(ds[(1, 3)]["image"], first)       # another epoch: another crop
    with pytest.raises(TypeError, match="key"):
        ds[1]


def test_batches_do_not_depend_on_num_workers(tmp_path):
    batches = {}
    for workers in (0, 2):
        trainer = _tiny_trainer(tmp_path, num_workers=workers)
        it = trainer._batches(start=1)                      # resume position inside the first epoch
        batches[workers] = [next(it) for _ in range(3)]     # crosses into the second epoch (2 steps/epoch)
    for a, b in zip(batches[0], batches[2], strict=True):
        assert a["name"] == b["name"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


# ---------------------------------------------------------------------- exact resume
def test_kill_and_resume_is_bit_identical(tmp_path):
    # 8 images, batch 2: an epoch is 4 steps; stop after step 3 (mid-epoch), resume to 7 (crosses an epoch)
    common = [*TINY, "--iters", "7", "--ckpt-every", "2", "--max-eval-images", "2"]
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "full")])
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "cut"), "--stop-at", "3"])
    assert _weights(tmp_path / "cut" / "checkpoint.pt") is not None
    assert not (tmp_path / "cut" / "metrics.json").exists()
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "cut"), "--resume"])
    full, resumed = _weights(tmp_path / "full" / "checkpoint.pt"), _weights(tmp_path / "cut" / "checkpoint.pt")
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    rows = list(csv.DictReader(open(tmp_path / "cut" / "log.csv")))
    ref = list(csv.DictReader(open(tmp_path / "full" / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["resumed_from"] == 3
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    extra = ckpt["extra"]
    assert extra["method"] == "tscd" and extra["recipe"]["iters"] == 7
    assert extra["wsseg_version"] == wsseg.__version__ and "--resume" in extra["command"]


# ---------------------------------------------------------------------- DDP
def _torchrun(args, nproc=2, timeout=420):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={_free_port()}", *args]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res.stdout


def test_ddp_two_processes_match_single_process(tmp_path):
    common = [*TINY, "--batch-size", "4", "--iters", "4", "--ckpt-every", "2", "--num-vis", "2"]
    _torchrun(["examples/train_scd.py", *common, "--out", str(tmp_path / "ddp")])
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "single")])
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    # both ranks end with identical weights (hashes gathered from each rank)
    assert m["world_size"] == 2 and len(m["rank_weight_hashes"]) == 2 and m["ranks_identical_weights"]
    # files written once: one log row per step, one set of panels
    rows = list(csv.DictReader(open(tmp_path / "ddp" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert len(list((tmp_path / "ddp" / "vis").glob("*.png"))) == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "log.csv", "metrics.json", "vis"]
    # every parameter that trains single-process also trains under DDP (and the frozen ones stay frozen)
    wsseg.training.seed_everything(1)
    init = TSCDMethod(TSCDRecipe()).build_model(3, backbone="test_vit", decoder_dim=8).state_dict()
    ddp, single = _weights(tmp_path / "ddp" / "checkpoint.pt"), _weights(tmp_path / "single" / "checkpoint.pt")
    moved_single = {k for k, v in single.items() if v.is_floating_point() and not torch.equal(v, init[k])}
    moved_ddp = {k for k, v in ddp.items() if v.is_floating_point() and not torch.equal(v, init[k])}
    frozen = {k for k, v in single.items() if v.is_floating_point()} - moved_single
    assert moved_single and frozen                      # encoder norms are frozen (lr multiplier 0)
    assert moved_ddp == moved_single
    # the metrics gathered from the 2 ranks equal a single-process evaluation of the same checkpoint
    method = TSCDMethod(TSCDRecipe(crop_size=64, varm_num_iter=2, scd_num_samples=8, cam_scales=(1.0,)))
    net = method.build_model(3, backbone="test_vit", decoder_dim=8)
    net.load_state_dict(ddp)
    ds = SyntheticShapes(num_images=8, size=64, num_classes=3, seed=0, transform=eval_transform(None))
    ref = evaluate_method(method, net, pseudo_set=ds, seg_set=ds)
    for k in ("cam_miou", "pseudo_label_miou", "pseudo_label_ignore_fraction", "seg_miou", "seg_miou_filtered"):
        assert m[k] == pytest.approx(ref[k], abs=1e-12), k
    assert m["eval_splits"]["seg"]["num_images"] == 8


def test_evaluation_shards_sum_to_the_whole(monkeypatch):
    # the DDP evaluation's per-rank shards, summed as all_reduce would, give the single-process result
    import wsseg.training.evaluation as ev

    method = TSCDMethod(TSCDRecipe(crop_size=32, varm_num_iter=1, cam_scales=(1.0,)))
    torch.manual_seed(0)
    net = method.build_model(3, backbone="test_vit", decoder_dim=8)
    ds = SyntheticShapes(num_images=5, size=32, seed=0, transform=eval_transform(None))
    whole = evaluate_method(method, net, pseudo_set=ds, seg_set=ds)
    captured = []
    monkeypatch.setattr(ev, "_sum_over_ranks", lambda metrics, counts: captured.append(
        ([m.confusion.clone() for m in metrics], counts.clone())))
    for rank in range(2):
        evaluate_method(method, net, pseudo_set=ds, seg_set=ds, rank=rank, world_size=2)
    conf = [a + b for a, b in zip(captured[0][0], captured[1][0], strict=True)]
    counts = captured[0][1] + captured[1][1]
    assert int(counts[0]) == 5 and int(counts[4]) == 5
    from wsseg.metrics.segmentation_metric import miou_from_confusion

    assert miou_from_confusion(conf[0])["miou"] == pytest.approx(whole["cam_miou"], abs=1e-12)
    assert miou_from_confusion(conf[3])["miou"] == pytest.approx(whole["seg_miou"], abs=1e-12)


def test_multi_scale_segmentation_evaluation_matches_a_direct_computation():
    from wsseg.layers import multi_scale_inference
    from wsseg.metrics import DualMIoU

    method = TSCDMethod(TSCDRecipe(crop_size=32, varm_num_iter=1, cam_scales=(1.0,)))
    torch.manual_seed(0)
    net = method.build_model(3, backbone="test_vit", decoder_dim=8).eval()
    ds = SyntheticShapes(num_images=3, size=40, seed=2, transform=eval_transform(None))
    res = evaluate_method(method, net, seg_set=ds, seg_inference="tscd", eval_long_side=48)
    ref = DualMIoU(4)
    with torch.no_grad():
        for i in range(3):
            s = ds[i]
            x = s["image"][None]
            logits = multi_scale_inference(lambda t: torch.nn.functional.interpolate(
                net(net.fit_input(t)).seg, size=t.shape[-2:], mode="bilinear", align_corners=False), x,
                scales=(1.0, 0.5, 0.75), flip=True, scale_fuse="max", flip_fuse="mean", resize_to=48)
            logits = torch.nn.functional.interpolate(logits, size=(40, 40), mode="bilinear", align_corners=False)
            ref.update(logits, s["mask"][None], s["label"][None])
    out = ref.compute()
    assert res["seg_miou"] == pytest.approx(out["miou"], abs=1e-12)
    assert res["seg_miou_filtered"] == pytest.approx(out["miou_filtered"], abs=1e-12)
    assert "cam_miou" not in res and res["eval_splits"]["seg"]["inference"] == "tscd"
    with pytest.raises(ValueError, match="seg_inference"):
        evaluate_method(method, net, seg_set=ds, seg_inference="nope")


# ---------------------------------------------------------------------- mixed precision
def _tiny_trainer(tmp_path, amp="none", method=None, **cfg):
    recipe = TSCDRecipe(crop_size=32, batch_size=2, iters=2, cam_iters=0, varm_num_iter=1, scd_num_samples=4,
                        cam_scales=(1.0,), warmup_iters=0)
    method = method or TSCDMethod(recipe)
    torch.manual_seed(0)
    net = method.build_model(3, backbone="test_vit", decoder_dim=8)
    train = SyntheticShapes(num_images=4, size=32, transform=train_transform(32, seed=0))
    config = TrainConfig(out_dir=str(tmp_path), amp=amp, show_progress=False, num_vis=0, threads=1, **cfg)
    return Trainer(method, net, train, config)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_step_gives_finite_losses(tmp_path, amp):
    trainer = _tiny_trainer(tmp_path, amp=amp)
    try:
        trainer.fit()
    except RuntimeError as err:  # pragma: no cover - depends on the CPU build
        if amp == "fp16" and "Half" in str(err):
            pytest.skip(f"fp16 autocast is not supported on this CPU build: {err}")
        raise
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 2 and rows[1]["loss_seg"] != ""
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    if amp == "fp16":
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["extra"]["grad_scaler"]


def test_periodic_evaluation_prints_one_line_each(tmp_path, capsys):
    trainer = _tiny_trainer(tmp_path, eval_every=1)
    trainer.seg_set = SyntheticShapes(num_images=2, size=32, transform=eval_transform(None))
    trainer.seg_split = "val"
    m = trainer.fit()
    assert [e["step"] for e in m["periodic_evaluations"]] == [1]   # the final evaluation is not repeated
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "seg mIoU" in ln]
    assert len(lines) == 2 and lines[0].startswith("step 1 | seg mIoU unfiltered") and "[val, 2 images]" in lines[0]


def test_tensorboard_log(tmp_path):
    pytest.importorskip("tensorboard")
    _tiny_trainer(tmp_path, tensorboard=True).fit()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


# ---------------------------------------------------------------------- errors
class _NaNAfterFirst(TSCDMethod):
    def training_step(self, model, batch, step):
        loss, logs = super().training_step(model, batch, step)
        if step == 1:
            loss = loss * float("nan")
            logs["loss_cls"] = float("nan")
        return loss, logs


def test_non_finite_loss_names_step_and_terms_and_keeps_checkpoint(tmp_path):
    recipe = TSCDRecipe(crop_size=32, batch_size=2, iters=3, cam_iters=5, cam_scales=(1.0,))
    trainer = _tiny_trainer(tmp_path, method=_NaNAfterFirst(recipe), ckpt_every=1)
    before = None
    with pytest.raises(FloatingPointError, match=r"step 1.*loss_cls"):
        try:
            trainer.fit()
        finally:
            before = _weights(tmp_path / "checkpoint.pt")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 1 and before is not None       # the step-1 checkpoint, untouched


def test_trainer_rejects_bad_setups(tmp_path):
    with pytest.raises(ValueError, match="crop_size.*stride"):
        recipe = TSCDRecipe(crop_size=30, batch_size=2, iters=2)
        m = TSCDMethod(recipe)
        Trainer(m, m.build_model(3, backbone="test_vit", decoder_dim=8),
                SyntheticShapes(num_images=4, size=32), TrainConfig(out_dir=str(tmp_path)))
    trainer = _tiny_trainer(tmp_path)
    trainer.train_set = SyntheticShapes(num_images=1, size=32, transform=train_transform(32, seed=0))
    with pytest.raises(ValueError, match="no full batch"):
        trainer.fit()
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    from wsseg.training import DistributedEnv

    m = TSCDMethod(TSCDRecipe(crop_size=32, batch_size=2, iters=2))
    with pytest.raises(ValueError, match="sync_bn.*CUDA"):
        Trainer(m, m.build_model(3, backbone="test_vit", decoder_dim=8), SyntheticShapes(num_images=4, size=32),
                TrainConfig(out_dir=str(tmp_path), sync_bn=True), env=DistributedEnv(rank=0, world_size=2))
    with pytest.raises(TypeError, match="method"):
        Trainer(object(), None, None, TrainConfig())
    with pytest.raises(TypeError, match="recipe"):
        TrainingMethod(object())


# ---------------------------------------------------------------------- real set-ups (VOC layout in a temp folder)
def _voc_folder(root: Path, names_by_split: dict[str, list[str]], *, mask_dir="SegmentationClass",
                num_classes=3, int_keys=False, size=48) -> Path:
    src = SyntheticShapes(num_images=sum(len(v) for v in names_by_split.values()), size=size,
                          num_classes=num_classes, seed=1)
    (root / "JPEGImages").mkdir(parents=True)
    (root / mask_dir).mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    labels = {}
    k = 0
    for split, names in names_by_split.items():
        for name in names:
            Image.fromarray(src.load_image(k)).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
            Image.fromarray(src.load_mask(k), mode="L").save(root / mask_dir / f"{name}.png")
            key = int(name.replace("_", "")) if int_keys else name
            labels[key] = src.get_label(k)
            k += 1
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    np.save(root / "cls_labels.npy", labels)
    return root


def test_voc_train_aug_recipe_trains_and_scores_val(tmp_path):
    root = _voc_folder(tmp_path / "VOC2012", {"train_aug": [f"2007_{i:06d}" for i in range(6)],
                                             "val": [f"2008_{i:06d}" for i in range(3)]},
                       mask_dir="SegmentationClassAug", int_keys=True)
    list_file = tmp_path / "train_aug.txt"   # the public repos' DeepLab-style list
    list_file.write_text("".join(f"/JPEGImages/2007_{i:06d}.jpg /SegmentationClassAug/2007_{i:06d}.png\n"
                                 for i in range(6)))
    args = ["--dataset", "voc", "--root", str(root), "--split", "train_aug", "--list-file", str(list_file),
            "--mask-dir", "SegmentationClassAug", "--cls-labels", str(root / "cls_labels.npy"),
            "--class-names", str(_class_file(tmp_path, ["background", "a", "b", "c"])),
            "--eval-split", "val", "--out", str(tmp_path / "run"), *TINY, "--crop", "48", "--iters", "2",
            "--eval-msc", "tscd", "--eval-long-side", "48"]
    m = main(TSCD_CLI, args)
    assert m["eval_splits"]["seg"]["inference"] == "tscd"
    assert m["eval_splits"]["pseudo_label"] == {"split": "train_aug", "num_images": 6, "num_images_with_masks": 6}
    assert {k: m["eval_splits"]["seg"][k] for k in ("split", "num_images", "num_images_with_masks")} == \
        {"split": "val", "num_images": 3, "num_images_with_masks": 3}
    assert m["class_names"] == ["a", "b", "c"]


def _class_file(tmp_path: Path, names: list[str]) -> Path:
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def test_class_list_that_does_not_match_the_masks_is_an_error(tmp_path):
    root = _voc_folder(tmp_path / "data", {"train": [f"img_{i}" for i in range(4)]}, num_classes=3)
    args = ["--dataset", "voc", "--root", str(root), "--no-background",
            "--class-names", str(_class_file(tmp_path, ["only_one"])), "--out", str(tmp_path / "run"), *TINY]
    with pytest.raises(SystemExit, match=r"img_\d\.png"):
        main(TSCD_CLI, args)


def test_empty_split_and_missing_label_are_errors(tmp_path):
    root = _voc_folder(tmp_path / "data", {"train": [f"img_{i}" for i in range(4)]})
    (root / "ImageSets" / "Segmentation" / "empty.txt").write_text("\n")
    with pytest.raises(SystemExit, match="empty"):
        main(TSCD_CLI, ["--dataset", "voc", "--root", str(root), "--split", "empty", *TINY])
    labels = np.load(root / "cls_labels.npy", allow_pickle=True).item()
    labels.pop("img_2")
    np.save(root / "partial.npy", labels)
    classes = str(_class_file(tmp_path, ["background", "a", "b", "c"]))
    with pytest.raises(SystemExit, match="img_2"):
        main(TSCD_CLI, ["--dataset", "voc", "--root", str(root), "--cls-labels", str(root / "partial.npy"),
                        "--class-names", classes, *TINY])


def test_corrupt_image_names_the_file_and_keeps_the_checkpoint(tmp_path):
    root = _voc_folder(tmp_path / "data", {"train": [f"img_{i}" for i in range(4)]})
    out = tmp_path / "run"
    classes = str(_class_file(tmp_path, ["background", "a", "b", "c"]))
    main(TSCD_CLI, ["--dataset", "voc", "--root", str(root), "--out", str(out), *TINY, "--crop", "48",
                    "--iters", "4", "--stop-at", "2", "--class-names", classes])
    good = _weights(out / "checkpoint.pt")
    (root / "JPEGImages" / "img_1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit, match=r"img_1\.jpg.*\n.*checkpoint.*intact"):
        main(TSCD_CLI, ["--dataset", "voc", "--root", str(root), "--out", str(out), *TINY, "--crop", "48",
                        "--iters", "4", "--resume", "--class-names", classes])
    after = _weights(out / "checkpoint.pt")
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_crop_not_multiple_of_stride_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"--crop: expected a multiple of the stride 16 .*\(e\.g\. 48 or 64\), got 60"):
        main(TSCD_CLI, [*TINY, "--crop", "60", "--out", str(tmp_path)])


@pytest.mark.slow
def test_compile_runs_the_training_step(tmp_path):
    # torch.compile (inductor on CPU) compiles the model for ~1-2 minutes, hence slow
    m = main(TSCD_CLI, [*TINY, "--iters", "2", "--compile", "--out", str(tmp_path), "--max-eval-images", "1"])
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert len(rows) == 2 and all(np.isfinite(float(r["loss"])) for r in rows)
    assert m["config"]["engine"]["compile"] is True
