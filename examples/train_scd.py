#!/usr/bin/env python
"""Train TSCD (Self Correspondence Distillation, AAAI 2023) end to end from image-level labels.

With no arguments it trains a small model on the built-in synthetic shapes for a few CPU minutes and
reports the standard WSSS metrics::

    python examples/train_scd.py                      # synthetic data, CPU, ~3 min
    python examples/train_scd.py --recipe cam         # classification-only CAM baseline, same schedule
    python examples/train_scd.py --dataset coco --root /path/to/coco128 --coco-classes voc \\
        --backbone vit_small_patch14_dinov2 --weights dinov2_vits14.pth --crop 224 --iters 300
    python examples/train_scd.py --dataset voc --root VOC2012 --weights mit_b1.pth   # official recipe

Outputs in ``--out``: ``log.csv`` (one row per iteration), ``checkpoint.pt`` (model, optimizer,
scheduler, step, RNG states; ``--resume`` continues from it), ``metrics.json`` and ``vis/*.png`` panels
(image | CAM | pseudo label | prediction | ground truth).

Metrics (all on the **training images**, full images without crop, long side resized to
``--eval-long-side`` (default: the crop size) for speed; masks are resized with nearest neighbour and
scored at that resolution; the network is in eval mode, i.e. no drop-path in the CAM passes):

* ``cam_miou``: the multi-scale CAM thresholded at ``cam_eval_threshold`` (0.45) with the GT image
  labels (the official CAM diagnostic);
* ``pseudo_label_miou``: the recipe's training targets computed by the final model (TSCD: VARM
  dual-threshold label; ``--recipe cam``: the CAM label at 0.45). Ignored pixels (255) are **counted as
  background** so that ignoring cannot inflate the score; ``pseudo_label_ignore_fraction`` reports how
  many there are and ``pseudo_label_miou_ignore_excluded`` the score on the non-ignored pixels only;
* ``seg_miou`` / ``seg_miou_filtered``: single-scale segmentation-head predictions, unfiltered and with
  the logits of classes absent from the GT image label removed (uses GT at test time).

Schedule scaling: unless set with ``--set``, ``cam_iters`` and ``warmup_iters`` keep the official
fractions of the run (10 % and 7.5 %, i.e. 2,000 and 1,500 of 20,000); see ``TSCDRecipe.scaled``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import wsseg
from wsseg.data import COCOSegmentation, SyntheticShapes, VOCSegmentation, eval_transform, train_transform
from wsseg.metrics import DualMIoU, SegmentationMetric
from wsseg.pseudo import cam_to_label
from wsseg.training import (
    CSVLogger,
    TSCDRecipe,
    TSCDTrainingStep,
    build_optimizer,
    build_scheduler,
    infinite_loader,
    load_checkpoint,
    move_batch,
    progress,
    save_checkpoint,
    seed_everything,
)
from wsseg.utils.image import denormalize

# Defaults of the synthetic quick-start (a few CPU minutes): a tiny MiT-B0-like run.
SYNTHETIC_DEFAULTS = dict(backbone="mit_b0", crop=96, iters=300, batch_size=4, num_images=96, size=96,
                          num_classes=3, decoder_dim=64)
REAL_DEFAULTS = dict(backbone="mit_b1", crop=512, iters=20000, batch_size=4, decoder_dim=256)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["synthetic", "voc", "coco"], default="synthetic")
    p.add_argument("--root", default=None, help="dataset folder (voc: VOC2012 layout; coco: train2017 + annotations)")
    p.add_argument("--split", default="train", help="VOC split list (ImageSets/Segmentation/<split>.txt)")
    p.add_argument("--coco-classes", choices=["voc", "all"], default="voc",
                   help="coco: map onto the 20 VOC classes (others = background) or keep all 80")
    p.add_argument("--backbone", default=None,
                   help="mit_b0/mit_b1/... or a timm ViT name (default: mit_b0 for synthetic, mit_b1 otherwise)")
    p.add_argument("--weights", default=None, help="encoder weights file (nothing is downloaded)")
    p.add_argument("--decoder-dim", type=int, default=None, help="SegFormer decoder width (official 256)")
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--crop", type=int, default=None, help="training crop (official 512; the launcher bug runs 320)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/train_scd")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint path (or OUT/checkpoint.pt when given without a value)")
    p.add_argument("--recipe", choices=["tscd", "cam"], default="tscd")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TSCDRecipe field, e.g. --set energy_scale=0.25 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the recipe's, 1)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--train-long-side", type=int, default=None,
                   help="resize training photos so the long side is N before the random rescale (not in the "
                        "official pipeline, whose ~500-px VOC photos match its 512 crop; use N ≈ crop when the "
                        "photos are much larger than the crop, e.g. COCO at crop 224)")
    p.add_argument("--eval-long-side", type=int, default=None, help="evaluation resize (default: crop)")
    p.add_argument("--num-vis", type=int, default=4, help="number of PNG panels")
    p.add_argument("--max-eval-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--synthetic-images", type=int, default=SYNTHETIC_DEFAULTS["num_images"])
    p.add_argument("--synthetic-size", type=int, default=SYNTHETIC_DEFAULTS["size"])
    p.add_argument("--synthetic-classes", type=int, default=SYNTHETIC_DEFAULTS["num_classes"])
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def make_recipe(args) -> TSCDRecipe:
    defaults = SYNTHETIC_DEFAULTS if args.dataset == "synthetic" else REAL_DEFAULTS
    changes = {}
    if args.crop is not None or args.dataset == "synthetic":
        changes["crop_size"] = args.crop or defaults["crop"]
    if args.batch_size is not None or args.dataset == "synthetic":
        changes["batch_size"] = args.batch_size or defaults["batch_size"]
    if args.seed is not None:
        changes["seed"] = args.seed
    recipe = TSCDRecipe.preset(args.recipe)
    recipe = TSCDRecipe(**{**{k: getattr(recipe, k) for k in recipe.field_names()}, **changes})
    recipe = recipe.scaled(args.iters or defaults["iters"])
    return TSCDRecipe.from_overrides(args.overrides, base=recipe) if args.overrides else recipe


def build_datasets(args, recipe: TSCDRecipe):
    crop = recipe.crop_size
    train_tf = train_transform(crop, scale_range=recipe.scale_range, seed=recipe.seed,
                               long_side=args.train_long_side)
    eval_tf = eval_transform(args.eval_long_side or crop)
    if args.dataset == "synthetic":
        kw = dict(num_images=args.synthetic_images, size=args.synthetic_size, num_classes=args.synthetic_classes,
                  seed=0)
        return SyntheticShapes(transform=train_tf, **kw), SyntheticShapes(transform=eval_tf, **kw)
    if args.root is None:
        raise SystemExit(f"--root is required for --dataset {args.dataset}")
    if args.dataset == "voc":
        return (VOCSegmentation(args.root, args.split, transform=train_tf),
                VOCSegmentation(args.root, args.split, transform=eval_tf))
    kw = dict(classes=args.coco_classes, skip_unlabeled=True)
    return COCOSegmentation(args.root, transform=train_tf, **kw), COCOSegmentation(args.root, transform=eval_tf, **kw)


def _collate(samples):
    return torch.utils.data.default_collate([{k: v for k, v in s.items() if k != "box"} for s in samples])


@torch.no_grad()
def evaluate(model, step_fn: TSCDTrainingStep, dataset, device, out_dir: Path, num_vis: int,
             show_progress: bool, max_images: int | None = None) -> dict:
    """CAM / pseudo-label / segmentation mIoU on full (resized) training images, plus PNG panels."""
    from wsseg.viz import save_panel

    recipe = step_fn.recipe
    K = dataset.num_classes
    cam_m, pl_m, pl_valid_m = SegmentationMetric(K + 1), SegmentationMetric(K + 1), SegmentationMetric(K + 1)
    seg_m = DualMIoU(K + 1)
    ignored = total = 0
    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in progress(range(n), desc="evaluate", disable=not show_progress):
        s = dataset[i]
        x = s["image"][None].to(device)
        y = s["label"][None].to(device)
        gt = s["mask"][None].to(device)
        valid = s["valid"][None].to(device)
        cam = step_fn.teacher_cam(model, x)
        cam_label = cam_to_label(cam, y, valid, bkg_thre=recipe.cam_eval_threshold)
        pseudo = step_fn.pseudo_label_from_cam(cam, x, y, valid)
        ignored += int((pseudo == 255).sum())
        total += pseudo.numel()
        cam_m.update(cam_label, gt)
        pl_m.update(torch.where(pseudo == 255, torch.zeros_like(pseudo), pseudo), gt)
        pl_valid_m.update(pseudo, torch.where(pseudo == 255, torch.full_like(gt, 255), gt))
        seg = model(model.fit_input(x)).seg
        seg = F.interpolate(seg.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        seg_m.update(seg, gt, y)
        if i < num_vis:
            img = (denormalize(x.float())[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
            img = img.astype(np.uint8)
            present = y[0] > 0
            cam_vis = (cam[0][present].amax(0) if present.any() else torch.zeros_like(cam[0, 0])).cpu().numpy()
            save_panel(out_dir / "vis" / f"{i:03d}_{s['name']}.png",
                       [img, cam_vis, pseudo[0].cpu().numpy(), seg[0].argmax(0).cpu().numpy(), gt[0].cpu().numpy()],
                       ["image", "CAM", "pseudo label", "prediction", "ground truth"])
    seg_res = seg_m.compute()
    return {
        "cam_miou": cam_m.compute()["miou"],
        "pseudo_label_miou": pl_m.compute()["miou"],
        "pseudo_label_ignore_fraction": ignored / max(total, 1),
        "pseudo_label_miou_ignore_excluded": pl_valid_m.compute()["miou"],
        "seg_miou": seg_res["miou"],
        "seg_miou_filtered": seg_res["miou_filtered"],
        "num_eval_images": n,
        "pseudo_label_iou": [float(v) for v in pl_m.compute()["iou"]],
        "cam_iou": [float(v) for v in cam_m.compute()["iou"]],
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = make_recipe(args)
    seed_everything(recipe.seed)
    device = torch.device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_ds, eval_ds = build_datasets(args, recipe)
    defaults = SYNTHETIC_DEFAULTS if args.dataset == "synthetic" else REAL_DEFAULTS
    backbone = args.backbone = args.backbone or defaults["backbone"]
    args.decoder_dim = args.decoder_dim or defaults["decoder_dim"]
    model = wsseg.create_model("tscd", backbone=backbone, num_classes=train_ds.num_classes, weights=args.weights,
                               decoder_dim=args.decoder_dim)
    if recipe.crop_size % model.stride:
        raise SystemExit(f"--crop {recipe.crop_size} must be a multiple of the backbone stride {model.stride} "
                         f"(e.g. {recipe.crop_size // model.stride * model.stride})")
    model.to(device).train()
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe)
    start = 0
    if args.resume:
        path = out_dir / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        start, _ = load_checkpoint(path, model, optimizer, scheduler, map_location=device)
        print(f"resumed from {path} at step {start}")

    g = torch.Generator().manual_seed(recipe.seed + start)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.num_workers, collate_fn=_collate, generator=g,
                                         persistent_workers=args.num_workers > 0)
    batches = infinite_loader(loader)
    step_fn = TSCDTrainingStep(recipe)
    print(f"TSCD recipe={recipe.recipe} backbone={backbone} K={train_ds.num_classes} images={len(train_ds)} "
          f"crop={recipe.crop_size} batch={recipe.batch_size} iters={recipe.iters} cam_iters={recipe.cam_iters} "
          f"warmup={recipe.warmup_iters} device={device}")
    if not args.resume and (out_dir / "log.csv").exists():
        (out_dir / "log.csv").unlink()  # a fresh run starts a fresh log
    extra = {"recipe": recipe.to_dict(), "args": vars(args)}
    t_train = time.time()
    losses = []
    with CSVLogger(out_dir / "log.csv") as log:
        bar = progress(total=recipe.iters, initial=start, desc="train", disable=args.no_progress)
        for step in range(start, recipe.iters):
            t0 = time.time()
            batch = move_batch(next(batches), device)
            loss, logs = step_fn(model, batch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if not np.isfinite(logs["loss"]):
                raise SystemExit(f"non-finite loss at step {step}: {logs}")
            losses.append(logs["loss"])
            row = {"step": step, "lr": optimizer.param_groups[0]["lr"], "time_s": time.time() - t0, **logs}
            log.log({k: row.get(k, "") for k in ("step", "lr", "time_s", "loss", "loss_cls", "loss_seg", "loss_reg",
                                                    "loss_aff", "loss_scd", "pseudo_ignore_frac", "pseudo_fg_frac")})
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", cls=f"{logs['loss_cls']:.3f}")
            if (step + 1) % args.ckpt_every == 0 or step + 1 == recipe.iters:
                save_checkpoint(out_dir / "checkpoint.pt", model, optimizer, scheduler, step + 1, extra)
        bar.close()
    train_time = time.time() - t_train

    t_eval = time.time()
    metrics = evaluate(model, step_fn, eval_ds, device, out_dir, args.num_vis, not args.no_progress,
                       args.max_eval_images)
    metrics.update({
        "iters": recipe.iters,
        "resumed_from": start,
        "loss_first10": float(np.mean(losses[:10])) if losses else None,
        "loss_last10": float(np.mean(losses[-10:])) if losses else None,
        "train_time_s": train_time,
        "eval_time_s": time.time() - t_eval,
        "wall_time_s": time.time() - t_start,
        "class_names": list(eval_ds.class_names),
        "config": {**extra, "backbone": backbone, "torch_threads": torch.get_num_threads()},
    })
    with open(out_dir / "metrics.json", "w") as f:
        json.dump(metrics, f, indent=2, default=str)
    print(f"CAM mIoU {100 * metrics['cam_miou']:.2f} | pseudo-label mIoU {100 * metrics['pseudo_label_miou']:.2f} "
          f"(ignore {100 * metrics['pseudo_label_ignore_fraction']:.1f}% counted as background) | "
          f"seg mIoU unfiltered {100 * metrics['seg_miou']:.2f} / GT-label-filtered "
          f"{100 * metrics['seg_miou_filtered']:.2f} | {metrics['wall_time_s']:.0f} s -> {out_dir / 'metrics.json'}")
    return metrics


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
