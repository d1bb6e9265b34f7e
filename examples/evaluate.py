#!/usr/bin/env python
"""Evaluate any method's checkpoint written by the training engine: multi-scale + flip inference, optional CRF.

::

    python examples/evaluate.py runs/train_tscd/checkpoint.pt          # the run's evaluation split
    python examples/evaluate.py CKPT --split val --crf                 # another split of the same data
    python examples/evaluate.py CKPT --dataset voc --root VOC2012 --split val --mask-dir SegmentationClass

The checkpoint records the method, its recipe and the training command line; the model and the data
set-up (dataset, root, class list, cls_labels, masks) are rebuilt from them, and any data flag given
here overrides the recorded one. ``--split`` selects the split that is scored (default: the run's
``--eval-split``).

Protocol (preset ``tscd`` = AFA's ``scripts/test_msc_flip.py``): the image's long side is resized to 512
(``--long-side`` overrides it, e.g. 224 for speed on CPU), scales {1, 0.5, 0.75} each with its horizontal
flip, logits averaged over the flip and **max** over scales, resized to the original image, argmax.
``--crf`` adds the dense CRF preset ``tscd`` (10 iterations; Gaussian sxy 3 / compat 3; bilateral sxy 64 /
srgb 5 / compat 4; with ``--preset cosa`` the ``cosa`` CRF preset: 1 iteration) on the softmax probabilities; it is skipped with a message when ``pydensecrf`` is not
installed. Both mIoUs are reported, labelled: **unfiltered** (plain argmax) and **GT-label-filtered**
(logits of classes absent from the ground-truth image label removed — this uses ground truth at test time).
Masks are scored at the original image resolution. ``--single-scale`` evaluates one pass (scale 1, no flip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsseg.layers import multi_scale_inference
from wsseg.layers.multi_scale_inference import MULTI_SCALE_INFERENCE_PRESETS
from wsseg.metrics import DualMIoU, SegmentationMetric, filter_logits_by_labels
from wsseg.training import load_checkpoint, progress
from wsseg.training.cli import METHODS, build_datasets, build_parser
from wsseg.utils.image import denormalize


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt written by the training engine (examples/train_*.py)")
    p.add_argument("--dataset", choices=["synthetic", "voc", "coco"], default=None,
                   help="default: the training dataset recorded in the checkpoint")
    p.add_argument("--root", default=None)
    p.add_argument("--split", default=None, help="split to score (default: the run's --eval-split)")
    p.add_argument("--mask-dir", default=None)
    p.add_argument("--cls-labels", default=None)
    p.add_argument("--class-names", default=None)
    p.add_argument("--coco-classes", choices=["voc", "all"], default=None)
    p.add_argument("--preset", default=None, choices=sorted(MULTI_SCALE_INFERENCE_PRESETS),
                   help="multi-scale protocol (default: the method's own, e.g. cosa for CoSA; else tscd)")
    p.add_argument("--single-scale", action="store_true", help="one pass at scale 1, no flip")
    p.add_argument("--long-side", type=int, default=None, help="override the preset's long-side resize")
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing (preset tscd; needs pydensecrf)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-images", type=int, default=None)
    p.add_argument("--out", default=None, help="JSON output (default: <checkpoint dir>/eval_<preset>.json)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def rebuild(args, ckpt: dict):
    """The method, its model and the dataset to score, from what the checkpoint recorded."""
    extra = ckpt.get("extra", {})
    name = extra.get("method", "tscd")
    if name not in METHODS:
        raise SystemExit(f"{args.checkpoint}: unknown method {name!r} (known: {sorted(METHODS)})")
    spec = METHODS[name]
    recorded = extra.get("args", {})
    if not recorded.get("backbone"):
        raise SystemExit(f"{args.checkpoint}: no backbone recorded (not written by the training engine?)")
    train_args = build_parser(spec).parse_args([])            # defaults of every data flag
    vars(train_args).update(recorded)
    for key in ("dataset", "root", "mask_dir", "cls_labels", "class_names", "coco_classes"):
        if getattr(args, key) is not None:
            setattr(train_args, key, getattr(args, key))
    if args.split is not None:
        train_args.pseudo_split = train_args.eval_split = args.split
        train_args.list_file = None
    recipe = spec.recipe_cls(**{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in extra.get("recipe", {}).items()})
    method = spec.method_cls(recipe)
    try:
        data = build_datasets(train_args, recipe)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    model = method.build_model(data["seg_set"].num_classes, backbone=recorded["backbone"],
                               decoder_dim=recorded.get("decoder_dim"))
    return method, model, data["seg_set"], data["seg_split"]


def crf_preset(args) -> str | None:
    """The CRF preset of ``--crf``: the multi-scale preset's own when it has one (``cosa``), else ``tscd``."""
    from wsseg.pseudo.dense_crf import DENSE_CRF_PRESETS

    return args.preset if args.preset in DENSE_CRF_PRESETS else "tscd"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    method, model, dataset, split = rebuild(args, ckpt)
    if args.preset is None:
        args.preset = method.name if method.name in MULTI_SCALE_INFERENCE_PRESETS else "tscd"
    device = torch.device(args.device)
    load_checkpoint(args.checkpoint, model, map_location="cpu", restore_rng=False)
    model.to(device).eval()
    method.setup(model, device)          # method-owned networks (CoSA's EMA teacher) on the device ...
    method.load_state_dict({k: v for k, v in (ckpt.get("extra", {}).get("method_state") or {}).items()})

    preset = dict(MULTI_SCALE_INFERENCE_PRESETS[args.preset])
    if args.single_scale:
        preset.update(scales=(1.0,), flip=False)
    if args.long_side is not None:
        preset["resize_to"] = args.long_side
    crf = None
    if args.crf:
        try:
            import pydensecrf  # noqa: F401

            from wsseg.pseudo import DenseCRF
            crf = DenseCRF.from_preset(crf_preset(args))
        except ImportError:
            print("--crf: pydensecrf is not installed (pip install pydensecrf2); CRF skipped")

    C = dataset.num_classes + 1
    seg = DualMIoU(C)
    crf_m, crf_f = SegmentationMetric(C), SegmentationMetric(C)

    def logit_fn(x):
        return method.predict(model, x)  # the method's network (CoSA: recipe.eval_network) at x's size

    n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    with torch.no_grad():
        for i in progress(range(n), desc="evaluate", disable=args.no_progress):
            s = dataset[i]
            x, gt, y = s["image"][None].to(device), s["mask"][None].to(device), s["label"][None].to(device)
            logits = multi_scale_inference(logit_fn, x, **preset)
            logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
            seg.update(logits, gt, y)
            if crf is not None:
                img = (denormalize(x.float()).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                crf_m.update(crf(img, torch.softmax(logits, 1).cpu()).to(device), gt)
                crf_f.update(crf(img, torch.softmax(filter_logits_by_labels(logits, y), 1).cpu()).to(device), gt)
    res = seg.compute()
    out = {
        "checkpoint": str(args.checkpoint),
        "method": method.name,
        "split": split,
        "num_images": n,
        "protocol": {"preset": args.preset, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.items()}},
        "seg_miou": res["miou"],
        "seg_miou_filtered": res["miou_filtered"],
        "iou": [float(v) for v in res["iou"]],
        "iou_filtered": [float(v) for v in res["iou_filtered"]],
        "class_names": ["background", *dataset.class_names],
        "wall_time_s": time.time() - t0,
    }
    print(f"[{args.preset}{' single-scale' if args.single_scale else ' multi-scale+flip'}] "
          f"seg mIoU unfiltered: {100 * res['miou']:.2f} | GT-label-filtered: {100 * res['miou_filtered']:.2f} "
          f"({method.name}, {split}: {n} images)")
    if crf is not None:
        out["crf_miou"] = crf_m.compute()["miou"]
        out["crf_miou_filtered"] = crf_f.compute()["miou"]
        print(f"[+ dense CRF {crf_preset(args)}] seg mIoU unfiltered: {100 * out['crf_miou']:.2f} | "
              f"GT-label-filtered: {100 * out['crf_miou_filtered']:.2f}")
    path = Path(args.out) if args.out else Path(args.checkpoint).parent / f"eval_{args.preset}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o))
    print(f"-> {path}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
