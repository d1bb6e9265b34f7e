#!/usr/bin/env python
"""Evaluate any method's checkpoint written by the training engine: multi-scale + flip inference, optional CRF.

::

    python examples/evaluate.py runs/train_tscd/checkpoint.pt          # the run's evaluation split (main job: ~5 s)
    python examples/evaluate.py CKPT --split val --crf                 # another split of the same data
    python examples/evaluate.py CKPT --dataset voc --root VOC2012 --split val --mask-dir SegmentationClass

The checkpoint records the method, its recipe and the training command line; the model and the data
set-up (dataset, root, class list, cls_labels, masks) are rebuilt from them, and any data flag given
here overrides the recorded one. ``--split`` selects the split that is scored (default: the run's
``--eval-split``). Every method of the training engine is scored (tscd, cosa, slrnet, vitpcm, apc).

Before it starts, the script prints the protocol it runs (preset, scales, flip, network input size, CRF)
and the number of images and network passes; a progress bar shows the rate and the time left (ETA).

Protocol (preset ``tscd`` = AFA's ``scripts/test_msc_flip.py``): the image's long side is resized to 512,
scales {1, 0.5, 0.75} each with its horizontal flip, logits averaged over the flip and **max** over
scales, resized to the original image, argmax. ``--preset`` picks another method's protocol (default: the
method's own: ``cosa``, ``slrnet``, ``vitpcm``; ``tscd`` for TSCD and for APC, which publishes none).

Network input size (``--long-side``): ``N`` resizes the long side to N, ``native`` feeds the images at
their own size. The default is the preset's resize (512 for ``tscd``, 448 x 448 for ``cosa``, 960 x 960
for ``vitpcm``) on real data sets, and **native** on the built-in synthetic set: its 96-px images were
trained at 96 px, and resizing them to 512 multiplies the pixels (and the cost) by ~28 for no official
reason (the preset sizes are those of VOC photos). Give ``--long-side 512`` to use the preset's size there.
``--batch-size N`` (default 8) runs up to N consecutive images of one size through the network together.

``--crf`` adds the preset's dense CRF (``tscd``: 10 iterations; Gaussian sxy 3 / compat 3; bilateral
sxy 64 / srgb 5 / compat 4; ``cosa``: 1 iteration; see docs/evaluation.rst) on the softmax probabilities;
it is skipped with a message when ``pydensecrf`` is not installed. Both mIoUs are reported, labelled:
**unfiltered** (plain argmax) and **GT-label-filtered** (logits of classes absent from the ground-truth
image label removed — this uses ground truth at test time). Masks are scored at the original image
resolution. ``--single-scale`` evaluates one pass (scale 1, no flip); ``--single-scale --long-side native``
is the training engine's own segmentation score (``seg_miou`` of the run's ``metrics.json``, unless the
run set ``--eval-long-side`` / ``--eval-msc``; for SLRNet add ``--no-postprocess``).

SLRNet (engine checkpoints of ``slrnet`` and ``--official slrnet``) with preset ``slrnet`` (its default) is
scored with the official post-processing of ``tools/infer_voc.py`` (:class:`wsseg.pseudo.SLRNetPostprocess`).
The same network passes give the softmax masks (upsampled to the scaled input, then to the image, both
``align_corners=True``, averaged over the 2 x 5 passes) and the nGWP classification logits of the
segmentation head (averaged over each image and its mirror, then over the scales). For each class set the
foreground channels of the other classes are zeroed and the background probability is raised to the power
3 (``--bg-pow``; not renormalised) before the argmax: **unfiltered (predicted classes)** uses the official
label-free set (``--use_cls_label 0``: sigmoid(mean classification logit) > 0.3 (``--fp-cut``) and among
the top 6 (``--topk-classes``)), **GT-label-filtered** the ground-truth image labels (``--use_cls_label
1``). ``--crf`` runs the ``slrnet`` CRF preset on these post-processed probabilities. ``--no-postprocess``
(or another ``--preset``) scores the plain argmax of the fused masks instead. The protocol line and
``protocol.postprocess`` in the JSON say what was applied. The README's VOC val 67.2 (with CRF) does not
record which class set produced it; its inference command uses the predicted set (``--use_cls_label 0``).

``--official METHOD`` (tscd, cosa, slrnet) scores an authors' released checkpoint instead (CoSA's
``voc_weights.pth``, SLRNet's WR38 checkpoint, a TSCD DDP state dict), read with
:func:`wsseg.models.load_official_checkpoint`; the data flags are then required (nothing is recorded) and the
method's official preset is the default (``--crf``: its CRF preset), e.g.
``python examples/evaluate.py voc_weights.pth --official cosa --dataset voc --root VOC2012 --split val --crf``.
See ``docs/reproduce.rst``.
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

from wsseg.layers import multi_scale_inference, ngwp_score
from wsseg.layers.multi_scale_inference import MULTI_SCALE_INFERENCE_PRESETS
from wsseg.metrics import DualMIoU, SegmentationMetric, filter_logits_by_labels
from wsseg.models import OFFICIAL_METHODS, load_official_checkpoint
from wsseg.pseudo import SLRNetPostprocess
from wsseg.training import load_checkpoint, progress, read_checkpoint, unwrap_model
from wsseg.training.cli import METHODS, build_datasets, build_parser, positive_int
from wsseg.utils.image import denormalize


def long_side(text: str) -> int | str:
    """``--long-side``: a positive integer or ``native``."""
    if text.strip().lower() == "native":
        return "native"
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'native', got {text!r}") from None


#: the SLRNetPostprocess hyperparameter behind each post-processing flag
FLAG = {"fp_cut": "--fp-cut", "bg_pow": "--bg-pow", "top_k": "--topk-classes"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.pt written by the training engine (examples/train_*.py), or an "
                                      "authors' released file with --official")
    p.add_argument("--official", default=None, choices=list(OFFICIAL_METHODS), metavar="METHOD",
                   help="CHECKPOINT is the authors' released file of METHOD (%(choices)s), loaded with "
                        "wsseg.models.load_official_checkpoint; give the data flags (--dataset, --root, --split)")
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
    p.add_argument("--long-side", type=long_side, default=None, metavar="N|native",
                   help="network input long side, or 'native' (default: the preset's resize on real data, "
                        "native on the synthetic set)")
    p.add_argument("--crf", action="store_true", help="dense CRF post-processing: the preset's CRF (needs pydensecrf)")
    p.add_argument("--no-postprocess", action="store_true",
                   help="SLRNet: skip the official post-processing (class set + background power) of preset "
                        "slrnet; score the plain argmax of the fused masks")
    p.add_argument("--bg-pow", type=float, default=3.0,
                   help="SLRNet post-processing: background exponent (official --bg_pow: 3 WSSS, 1 semi-sup.)")
    p.add_argument("--fp-cut", type=float, default=0.3,
                   help="SLRNet post-processing: sigmoid threshold of the predicted class set (official 0.3)")
    p.add_argument("--topk-classes", type=positive_int, default=6,
                   help="SLRNet post-processing: at most this rank in the predicted class set (official 6)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--max-images", type=positive_int, default=None, help="score only the first N images")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="consecutive images of equal size run together, at most N per network call (default 8; "
                        "scores do not depend on it up to float rounding)")
    p.add_argument("--out", default=None, help="JSON output (default: <checkpoint dir>/eval_<preset>.json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:  # the SLRNet post-processing's own checks, reported with the flag's name
        SLRNetPostprocess(fp_cut=args.fp_cut, top_k=args.topk_classes, bg_pow=args.bg_pow)
    except ValueError as err:
        name, _, reason = str(err).partition(": ")
        p.error(f"argument {FLAG.get(name, name)}: {reason}")
    return args


def data_args(args, spec, recorded: dict) -> argparse.Namespace:
    """The training parser's data flags: its defaults, then ``recorded`` (the run's), then the flags given here."""
    train_args = build_parser(spec).parse_args([])            # defaults of every data flag
    vars(train_args).update(recorded)
    for key in ("dataset", "root", "mask_dir", "cls_labels", "class_names", "coco_classes"):
        if getattr(args, key) is not None:
            setattr(train_args, key, getattr(args, key))
    if args.split is not None:
        train_args.pseudo_split = train_args.eval_split = args.split
        train_args.list_file = None
    return train_args


def rebuild(args, ckpt: dict):
    """The method, its model and the dataset to score, from what the checkpoint recorded."""
    extra = ckpt.get("extra", {})
    name = extra.get("method")
    if name is None:
        raise SystemExit(f"error: {args.checkpoint}: records no method (not written by the training engine?)")
    if name not in METHODS:
        raise SystemExit(f"error: {args.checkpoint}: unknown method {name!r} (known: {sorted(METHODS)})")
    spec = METHODS[name]
    recorded = extra.get("args", {})
    if not recorded.get("backbone"):
        raise SystemExit(f"error: {args.checkpoint}: no backbone recorded (not written by the training engine?)")
    train_args = data_args(args, spec, recorded)
    recipe = spec.recipe_cls(**{k: (tuple(v) if isinstance(v, list) else v)
                                for k, v in extra.get("recipe", {}).items()})
    method = spec.method_cls(recipe)
    try:
        data = build_datasets(train_args, recipe, method)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    model = method.build_model(data["seg_set"].num_classes, backbone=recorded["backbone"],
                               decoder_dim=recorded.get("decoder_dim"))
    args.dataset = train_args.dataset  # the data set actually scored (sets the default --long-side)
    return method, model, data["seg_set"], data["seg_split"]


def rebuild_official(args):
    """``--official``: the method, the model loaded from the authors' file and the dataset of the data flags."""
    spec = METHODS[args.official]
    train_args = data_args(args, spec, {})
    method = spec.method_cls(spec.recipe_cls())                # default recipe: predict() uses the model itself
    try:
        model = load_official_checkpoint(args.checkpoint, args.official)
        data = build_datasets(train_args, method.recipe, method)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --official {args.official}: {err}") from err
    if model.num_classes != data["seg_set"].num_classes:
        raise SystemExit(f"error: --official {args.official}: '{args.checkpoint}' has {model.num_classes} classes, "
                         f"the data set ({train_args.dataset}) has {data['seg_set'].num_classes}; check --dataset / "
                         f"--coco-classes / --class-names")
    args.dataset = train_args.dataset
    return method, model, data["seg_set"], data["seg_split"]


def crf_preset(args) -> str | None:
    """The CRF preset of ``--crf``: the multi-scale preset's own when it has one (``cosa``), else ``tscd``."""
    from wsseg.pseudo.dense_crf import DENSE_CRF_PRESETS

    return args.preset if args.preset in DENSE_CRF_PRESETS else "tscd"


def slrnet_postprocessor(args, method: str) -> SLRNetPostprocess | None:
    """The SLRNet post-processing of ``tools/infer_voc.py`` when it applies (SLRNet, preset ``slrnet``)."""
    if method != "slrnet" or args.preset != "slrnet" or args.no_postprocess:
        return None
    return SLRNetPostprocess(fp_cut=args.fp_cut, top_k=args.topk_classes, bg_pow=args.bg_pow)


def slrnet_official_passes(model, image_size):
    """SLRNet's test-time forward as ``tools/infer_voc.py`` runs it, for :func:`multi_scale_inference`.

    Returns ``(fn, cls_per_pass)``. ``fn(x)`` runs the single-view network on one scale's batch
    (images then their mirrors), appends the nGWP classification logits of the segmentation head
    (``classifier_forward``, :func:`~wsseg.layers.ngwp_score`) to ``cls_per_pass`` and returns the softmax
    masks upsampled to the scaled input (the official forward, ``align_corners=True``) and then to
    ``image_size`` (the official infer loop, ``align_corners=True``), so that mean fusion of ``fn``'s
    outputs is the official ``sum / (2 * #scales)`` and the classification logits come from the very
    same network passes.
    """
    core = unwrap_model(model)
    cls_per_pass: list[torch.Tensor] = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = core(core.fit_input(x))
        logits = out.seg_logits1.float()
        probs = logits.softmax(dim=1)
        cls_per_pass.append(ngwp_score(logits, probs))
        masks = F.interpolate(probs, size=x.shape[-2:], mode="bilinear", align_corners=True)
        if masks.shape[-2:] != tuple(image_size):
            masks = F.interpolate(masks, size=tuple(image_size), mode="bilinear", align_corners=True)
        return masks

    return fn, cls_per_pass


def fuse_cls(cls_per_pass: list[torch.Tensor], flip: bool) -> torch.Tensor:
    """Mean classification logits ``(B, K)``: mean over the image and its mirror, then over the scales."""
    per_scale = [(c[: c.shape[0] // 2] + c[c.shape[0] // 2:]) / 2.0 if flip else c for c in cls_per_pass]
    return torch.stack(per_scale, dim=0).mean(dim=0)


def postprocess_text(args, method: str, post: SLRNetPostprocess | None) -> str:
    """The post-processing part of the protocol line (SLRNet checkpoints only; empty for other methods)."""
    if post is not None:
        return (f" | post-processing slrnet: unfiltered = predicted classes (sigmoid(mean cls logit) > "
                f"{post.fp_cut:g}, top {post.top_k}), filtered = GT labels; absent classes zeroed, "
                f"background ** {post.bg_pow:g}")
    if method == "slrnet":
        why = "--no-postprocess" if args.no_postprocess else f"preset {args.preset}"
        return f" | post-processing off ({why})"
    return ""


def describe(args, preset: dict, method: str, split: str, n: int, crf: str | None,
             post: SLRNetPostprocess | None = None) -> str:
    """What will run, printed before it starts: images, preset, scales, flip, fusion, input size,
    post-processing (SLRNet), CRF."""
    scales = ", ".join(f"{s:g}" for s in preset["scales"])
    passes = len(preset["scales"]) * (2 if preset["flip"] else 1)
    size = preset["resize_to"]
    if size is None:
        size_text = "native size" + (" (synthetic set; --long-side N resizes)" if args.long_side is None
                                     and args.dataset == "synthetic" else "")
    elif isinstance(size, int):
        size_text = f"long side {size}"
    else:
        size_text = f"{size[0]} x {size[1]} (aspect ratio ignored)"
    fuse = (f"{preset['flip_fuse']} over flips, " if preset["flip"] else "") + f"{preset['scale_fuse']} over scales"
    return (f"evaluate {method} on {split}: {n} images x {passes} network pass{'es' if passes > 1 else ''} | "
            f"preset {args.preset}"
            f"{' (single scale)' if args.single_scale else ''}: scales {scales}, flip "
            f"{'on' if preset['flip'] else 'off'}, {fuse} of {preset['output']}, input {size_text}"
            f"{postprocess_text(args, method, post)} | CRF {crf or 'off'}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    ckpt = None
    if args.official is not None:
        method, model, dataset, split = rebuild_official(args)
    else:
        try:
            ckpt = read_checkpoint(args.checkpoint, map_location="cpu")
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from err
        method, model, dataset, split = rebuild(args, ckpt)
    if args.preset is None:
        args.preset = method.name if method.name in MULTI_SCALE_INFERENCE_PRESETS else "tscd"
    device = torch.device(args.device)
    if ckpt is not None:
        try:  # the file was read and verified above: no second read
            load_checkpoint(args.checkpoint, model, restore_rng=False, checkpoint=ckpt)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err
    model.to(device).eval()
    if ckpt is not None:
        method.setup(model, device)          # method-owned networks (CoSA's EMA teacher) on the device ...
        method.load_state_dict({k: v for k, v in (ckpt.get("extra", {}).get("method_state") or {}).items()})

    preset = dict(MULTI_SCALE_INFERENCE_PRESETS[args.preset])
    if args.single_scale:
        preset.update(scales=(1.0,), flip=False)
    if args.long_side == "native" or (args.long_side is None and args.dataset == "synthetic"):
        preset["resize_to"] = None
    elif args.long_side is not None:
        preset["resize_to"] = args.long_side
    post = slrnet_postprocessor(args, method.name)
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
    seg_u, seg_f = SegmentationMetric(C), SegmentationMetric(C)  # SLRNet post-processing: predicted set / GT set
    crf_m, crf_f = SegmentationMetric(C), SegmentationMetric(C)

    def logit_fn(x):
        return method.predict(model, x)  # the method's network (CoSA: recipe.eval_network) at x's size

    n = len(dataset) if args.max_images is None else min(len(dataset), args.max_images)
    print(describe(args, preset, method.name, split, n, crf_preset(args) if crf is not None else None, post),
          flush=True)
    if not method.trains_segmentation:
        print(f"note: this checkpoint's recipe ({method.recipe.recipe!r}) trains no segmentation head; the score "
              "below is its untrained decoder's (the training run's metrics.json has the CAM and pseudo-label "
              "mIoU)", flush=True)

    def batches():
        """Consecutive samples of one image size, at most ``--batch-size`` of them (one network call per pass)."""
        group = []
        for i in range(n):
            s = dataset[i]
            if group and (len(group) == args.batch_size or s["image"].shape != group[0]["image"].shape
                          or s["mask"].shape != group[0]["mask"].shape):
                yield group
                group = []
            group.append(s)
        if group:
            yield group

    with torch.no_grad(), progress(total=n, desc="evaluate", disable=args.no_progress) as bar:
        for group in batches():
            x, gt, y = (torch.stack([s[k] for s in group]).to(device) for k in ("image", "mask", "label"))
            if post is not None:
                # SLRNet official (tools/infer_voc.py): masks and classification logits of the same passes,
                # mean-fused (the network returns probabilities, so the preset's fusion runs on them as is)
                fn, cls_per_pass = slrnet_official_passes(model, x.shape[-2:])
                probs = multi_scale_inference(fn, x, **{**preset, "output": "logits"})
                probs = F.interpolate(probs, size=gt.shape[-2:], mode="bilinear", align_corners=False)
                q_u = post(probs, cls_logits=fuse_cls(cls_per_pass, preset["flip"]))  # predicted class set
                q_f = post(probs, labels=y)                                          # GT image labels
                seg_u.update(q_u.argmax(dim=1), gt)
                seg_f.update(q_f.argmax(dim=1), gt)
            else:
                logits = multi_scale_inference(logit_fn, x, **preset)
                logits = F.interpolate(logits, size=gt.shape[-2:], mode="bilinear", align_corners=False)
                seg.update(logits, gt, y)
            if crf is not None:
                img = (denormalize(x.float()).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                if post is not None:  # on the post-processed probabilities (bg ** 3, not renormalised)
                    crf_m.update(crf(img, q_u.cpu()).to(device), gt)
                    crf_f.update(crf(img, q_f.cpu()).to(device), gt)
                else:
                    crf_m.update(crf(img, torch.softmax(logits, 1).cpu()).to(device), gt)
                    crf_f.update(crf(img, torch.softmax(filter_logits_by_labels(logits, y), 1).cpu()).to(device), gt)
            bar.update(len(group))
    if post is not None:
        res_u, res_f = seg_u.compute(), seg_f.compute()
        res = {"miou": res_u["miou"], "miou_filtered": res_f["miou"], "iou": res_u["iou"],
               "iou_filtered": res_f["iou"]}
    else:
        res = seg.compute()
    out = {
        "checkpoint": str(args.checkpoint),
        "method": method.name,
        "official": args.official is not None,
        "split": split,
        "num_images": n,
        "protocol": {"preset": args.preset, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in preset.items()},
                     "postprocess": None if post is None else {
                         "name": "slrnet", "unfiltered": "predicted classes", "filtered": "GT image labels",
                         "fp_cut": post.fp_cut, "top_k": post.top_k, "bg_pow": post.bg_pow,
                         "mask_resize": "align_corners=True to the image (official)",
                         "crf_input": "post-processed probabilities (not renormalised)"},
                     "crf": crf_preset(args) if crf is not None else None},
        "seg_miou": res["miou"],
        "seg_miou_filtered": res["miou_filtered"],
        "iou": [float(v) for v in res["iou"]],
        "iou_filtered": [float(v) for v in res["iou_filtered"]],
        "class_names": ["background", *dataset.class_names],
        "wall_time_s": time.time() - t0,
    }
    tag = f" + slrnet post-processing (bg ** {post.bg_pow:g})" if post is not None else ""
    unf = "unfiltered (predicted classes)" if post is not None else "unfiltered"
    print(f"[{args.preset}{' single-scale' if args.single_scale else ' multi-scale+flip'}{tag}] "
          f"seg mIoU {unf}: {100 * res['miou']:.2f} | GT-label-filtered: {100 * res['miou_filtered']:.2f} "
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
