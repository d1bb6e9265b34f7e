"""The WSSS evaluation of a method during/after training: CAM, pseudo-label and segmentation mIoU."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import DualMIoU, SegmentationMetric
from ..pseudo import cam_to_label
from ..utils.image import denormalize
from .distributed import all_reduce_sum
from .loop import progress
from .method import TrainingMethod

__all__ = ["evaluate_method", "format_summary"]


def _resize_long_side(x: Tensor, long_side: int | None) -> Tensor:
    """Bilinear resize of a (1, 3, H, W) image so that its long side is ``long_side`` (None: unchanged)."""
    if long_side is None:
        return x
    h, w = x.shape[-2:]
    scale = long_side / max(h, w)
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _nearest(label: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    return F.interpolate(label[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _shard(n: int, rank: int, world_size: int) -> range:
    return range(rank, n, world_size)


def _sum_over_ranks(metrics: Sequence[SegmentationMetric], counts: Tensor) -> None:
    for m in metrics:
        all_reduce_sum(m.confusion)
    all_reduce_sum(counts)


@torch.no_grad()
def evaluate_method(method: TrainingMethod, model: nn.Module, *, pseudo_set: Any = None, seg_set: Any = None,
                    pseudo_split: str = "train", seg_split: str = "train", device: str | torch.device = "cpu",
                    eval_long_side: int | None = None, max_images: int | None = None,
                    out_dir: str | os.PathLike | None = None, num_vis: int = 0, show_progress: bool = False,
                    rank: int = 0, world_size: int = 1, seg_inference: str | None = None,
                    crf: str | None = None) -> dict[str, Any]:
    r"""Score a method's CAM, pseudo labels and segmentation predictions (the standard WSSS protocol).

    On ``pseudo_set`` (the training images with ground truth, e.g. VOC ``train`` or ccp_voc
    ``train_pixel``), per image:

    * ``cam_miou``: :meth:`~TrainingMethod.cam` thresholded with the GT image labels at the recipe's
      ``cam_eval_threshold`` (0.45), :func:`~wsseg.pseudo.cam_to_label`;
    * ``pseudo_label_miou``: :meth:`~TrainingMethod.pseudo_label` with ignored pixels (255) **counted as
      background**, so ignoring cannot inflate it; ``pseudo_label_miou_ignore_excluded`` scores the
      non-ignored pixels only and ``pseudo_label_ignore_fraction`` says how many were ignored.

    On ``seg_set`` (e.g. VOC ``val``): ``seg_miou`` (plain argmax) and ``seg_miou_filtered`` (logits of
    classes absent from the GT image label removed, :func:`~wsseg.metrics.filter_logits_by_labels`),
    single scale by default; ``seg_inference`` names a multi-scale + flip preset of
    :data:`~wsseg.layers.multi_scale_inference.MULTI_SCALE_INFERENCE_PRESETS` (e.g. ``"tscd"``: long side
    512, scales 1 / 0.5 / 0.75 + flip, max over scales) and ``crf`` a :class:`~wsseg.pseudo.DenseCRF`
    preset applied to the softmax of those logits (``seg_crf_miou`` / ``seg_crf_miou_filtered``; needs
    pydensecrf).

    The network sees each image with its long side resized to ``eval_long_side`` (``None``: native);
    labels and logits are resized back (nearest / bilinear) and **scored at the mask's native
    resolution**, accumulating one confusion matrix over the whole split (NaN-mean over the classes
    present, ``ignore_index=255``). Under DDP each rank scores images ``rank, rank + world_size, ...`` and
    the confusion matrices are summed over ranks, so the result equals a single-process evaluation.
    Samples must come without random augmentation (``eval_transform(None)``).

    Args:
        method: the :class:`TrainingMethod` (provides ``cam``, ``pseudo_label``, ``predict``).
        model: the trained network (possibly DDP-wrapped); put in eval mode here, restored afterwards.
        pseudo_set, seg_set: datasets of samples ``{"image", "mask", "label", "valid", "name"}``; either
            may be ``None`` (its metrics are then absent). Passing the same object scores both in one pass.
        pseudo_split, seg_split: split names recorded with the metrics.
        device: where the network runs.
        eval_long_side: network input long side (``None``: native resolution).
        max_images: score only the first N images of each set.
        out_dir: where ``vis/*.png`` panels go (image | CAM | pseudo label | prediction | ground truth).
        num_vis: number of panels (written by rank 0 from its first images).
        show_progress: tqdm bar.
        rank, world_size: this process's place in a DDP run.
        seg_inference: multi-scale + flip preset for the segmentation (``None``: single scale at
            ``eval_long_side``); with a preset, ``eval_long_side`` (if given) replaces its ``resize_to``.
        crf: dense-CRF preset name applied after ``seg_inference`` (``None``: no CRF).

    Returns:
        dict with the metrics above (fractions in [0, 1]), per-class ``cam_iou`` / ``pseudo_label_iou`` /
        ``seg_iou``, and ``eval_splits``: for each of ``cam``, ``pseudo_label`` and ``seg`` the split,
        ``num_images`` and ``num_images_with_masks`` it was computed on.

    Raises:
        ValueError: if both sets are ``None``, the sets' class counts differ, ``eval_long_side`` or
            ``max_images`` is not ``None`` or a positive int, or ``seg_inference`` is not a preset name.

    Example:
        >>> from wsseg.data import SyntheticShapes
        >>> from wsseg.training import TSCDMethod, TSCDRecipe
        >>> m = TSCDMethod(TSCDRecipe(crop_size=32, varm_num_iter=1))
        >>> net = m.build_model(3, backbone="test_vit", decoder_dim=8)
        >>> ds = SyntheticShapes(num_images=2, size=32)
        >>> res = evaluate_method(m, net, pseudo_set=ds, seg_set=ds)
        >>> res["eval_splits"]["seg"]["num_images"], 0.0 <= res["seg_miou"] <= 1.0
        (2, True)

    Source:
        The AFA/TSCD ``validate`` diagnostics (github.com/rulixiang/afa ``scripts/dist_train_voc.py``)
        and CoSA's filtered/unfiltered report (github.com/youshyee/CoSA ``evaluation_engine.py``).
    """
    if pseudo_set is None and seg_set is None:
        raise ValueError("pseudo_set, seg_set: expected at least one dataset, got None for both")
    for name, value in (("eval_long_side", eval_long_side), ("max_images", max_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected None or a positive int, got {value!r}")
    sets = [s for s in (pseudo_set, seg_set) if s is not None]
    K = sets[0].num_classes
    if any(s.num_classes != K for s in sets):
        raise ValueError(f"seg_set: expected {K} classes like pseudo_set, got {[s.num_classes for s in sets]}")
    C = K + 1
    device = torch.device(device)
    threshold = float(getattr(method.recipe, "cam_eval_threshold", 0.45))
    cam_m, pl_m, pl_valid_m = SegmentationMetric(C), SegmentationMetric(C), SegmentationMetric(C)
    seg_m = DualMIoU(C)
    crf_m, crf_f = SegmentationMetric(C), SegmentationMetric(C)
    preset = None
    if seg_inference is not None:
        from ..layers.multi_scale_inference import MULTI_SCALE_INFERENCE_PRESETS

        if seg_inference not in MULTI_SCALE_INFERENCE_PRESETS:
            raise ValueError(f"seg_inference: expected one of {sorted(MULTI_SCALE_INFERENCE_PRESETS)}, "
                             f"got {seg_inference!r}")
        preset = dict(MULTI_SCALE_INFERENCE_PRESETS[seg_inference])
        if eval_long_side is not None:
            preset["resize_to"] = eval_long_side
    crf_fn = None
    if crf is not None:
        from ..pseudo import DenseCRF

        crf_fn = DenseCRF.from_preset(crf)
    # counts: pseudo images, pseudo images with masks, ignored pixels, pseudo pixels, seg images, seg w/ masks
    counts = torch.zeros(6, dtype=torch.float64)
    same = pseudo_set is seg_set
    out_dir = Path(out_dir) if out_dir is not None else None
    was_training = model.training
    model.eval()

    def load(ds, i):
        s = ds[i]
        x = s["image"][None].to(device)
        gt = s["mask"][None].to(device)
        return s, x, gt, s["label"][None].to(device), s["valid"][None].to(device)

    def seg_logits(x: Tensor, xin: Tensor, size: Sequence[int]) -> Tensor:
        if preset is None:
            logits = method.predict(model, xin)
        else:
            from ..layers import multi_scale_inference

            logits = multi_scale_inference(lambda t: method.predict(model, t), x, **preset)
        return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)

    def update_seg(x: Tensor, seg: Tensor, gt: Tensor, y: Tensor) -> None:
        seg_m.update(seg, gt, y)
        if crf_fn is not None:
            from ..metrics import filter_logits_by_labels

            img = (denormalize(x.float()).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            crf_m.update(crf_fn(img, torch.softmax(seg, 1).cpu()).to(gt.device), gt)
            crf_f.update(crf_fn(img, torch.softmax(filter_logits_by_labels(seg, y), 1).cpu()).to(gt.device), gt)

    def n_of(ds):
        return len(ds) if max_images is None else min(max_images, len(ds))

    vis_left = num_vis if rank == 0 and out_dir is not None else 0
    try:
        if pseudo_set is not None:
            idx = _shard(n_of(pseudo_set), rank, world_size)
            for i in progress(idx, desc="evaluate", disable=not show_progress):
                s, x, gt, y, valid = load(pseudo_set, i)
                xin = _resize_long_side(x, eval_long_side)
                vin = _nearest(valid.long(), xin.shape[-2:]).bool()
                cam = method.cam(model, xin)
                cam_label = _nearest(cam_to_label(cam, y.to(cam.dtype), vin, bkg_thre=threshold), gt.shape[-2:])
                pseudo = _nearest(method.pseudo_label(model, xin, y, vin, cam=cam), gt.shape[-2:])
                has_mask = bool((gt != 255).any())
                counts += torch.tensor([1, has_mask, int((pseudo == 255).sum()), pseudo.numel(), 0, 0],
                                       dtype=torch.float64)
                cam_m.update(cam_label, gt)
                pl_m.update(torch.where(pseudo == 255, torch.zeros_like(pseudo), pseudo), gt)
                pl_valid_m.update(pseudo, torch.where(pseudo == 255, torch.full_like(gt, 255), gt))
                seg = None
                if same or vis_left > 0:
                    seg = seg_logits(x, xin, gt.shape[-2:])
                if same:
                    update_seg(x, seg, gt, y)
                    counts[4:] += torch.tensor([1, has_mask], dtype=torch.float64)
                if vis_left > 0:
                    _save_panel(out_dir, i, s["name"], x, y, cam, pseudo, seg, gt)
                    vis_left -= 1
        if seg_set is not None and not same:
            idx = _shard(n_of(seg_set), rank, world_size)
            for i in progress(idx, desc="evaluate seg", disable=not show_progress):
                s, x, gt, y, _ = load(seg_set, i)
                update_seg(x, seg_logits(x, _resize_long_side(x, eval_long_side), gt.shape[-2:]), gt, y)
                counts[4:] += torch.tensor([1, bool((gt != 255).any())], dtype=torch.float64)
    finally:
        model.train(was_training)

    _sum_over_ranks([cam_m, pl_m, pl_valid_m, seg_m.unfiltered, seg_m.filtered, crf_m, crf_f], counts)
    n_pl, n_pl_mask, ignored, total, n_seg, n_seg_mask = (int(v) for v in counts.tolist())
    out: dict[str, Any] = {"eval_splits": {}}
    if pseudo_set is not None:
        cam_res, pl_res = cam_m.compute(), pl_m.compute()
        out.update({
            "cam_miou": cam_res["miou"],
            "pseudo_label_miou": pl_res["miou"],
            "pseudo_label_ignore_fraction": ignored / max(total, 1),
            "pseudo_label_miou_ignore_excluded": pl_valid_m.compute()["miou"],
            "cam_iou": [float(v) for v in cam_res["iou"]],
            "pseudo_label_iou": [float(v) for v in pl_res["iou"]],
        })
        info = {"split": pseudo_split, "num_images": n_pl, "num_images_with_masks": n_pl_mask}
        out["eval_splits"].update(cam=dict(info), pseudo_label=dict(info))
    if seg_set is not None:
        seg_res = seg_m.compute()
        out.update({"seg_miou": seg_res["miou"], "seg_miou_filtered": seg_res["miou_filtered"],
                    "seg_iou": [float(v) for v in seg_res["iou"]],
                    "seg_iou_filtered": [float(v) for v in seg_res["iou_filtered"]]})
        out["eval_splits"]["seg"] = {"split": seg_split, "num_images": n_seg, "num_images_with_masks": n_seg_mask,
                                     "inference": seg_inference or "single-scale", "crf": crf}
        if crf_fn is not None:
            out["seg_crf_miou"] = crf_m.compute()["miou"]
            out["seg_crf_miou_filtered"] = crf_f.compute()["miou"]
    out["num_eval_images"] = max(n_pl, n_seg)
    out["eval_long_side"] = eval_long_side
    return out


def _save_panel(out_dir: Path, i: int, name: str, x: Tensor, y: Tensor, cam: Tensor, pseudo: Tensor,
                seg: Tensor, gt: Tensor) -> None:
    from ..viz import save_panel

    img = (denormalize(x.float())[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    present = y[0] > 0
    cam = F.interpolate(cam, size=gt.shape[-2:], mode="bilinear", align_corners=False)
    cam_vis = (cam[0][present].amax(0) if present.any() else torch.zeros_like(cam[0, 0])).cpu().numpy()
    save_panel(out_dir / "vis" / f"{i:03d}_{name}.png",
               [img, cam_vis, pseudo[0].cpu().numpy(), seg[0].argmax(0).cpu().numpy(), gt[0].cpu().numpy()],
               ["image", "CAM", "pseudo label", "prediction", "ground truth"])


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.2f}"


def format_summary(metrics: dict[str, Any], step: int | None = None) -> str:
    """One line per evaluation: CAM / pseudo-label / both segmentation mIoUs (in %), with their splits.

    Example:
        >>> m = {"cam_miou": 0.5, "pseudo_label_miou": 0.6, "pseudo_label_ignore_fraction": 0.1,
        ...      "seg_miou": 0.4, "seg_miou_filtered": 0.45,
        ...      "eval_splits": {"cam": {"split": "train", "num_images": 8},
        ...                      "seg": {"split": "val", "num_images": 4}}}
        >>> for part in format_summary(m, step=100).split(" | "):
        ...     print(part)
        step 100
        CAM mIoU 50.00
        pseudo-label mIoU 60.00 (ignore 10.0% counted as background) [train, 8 images]
        seg mIoU unfiltered 40.00 / GT-label-filtered 45.00 [val, 4 images]
    """
    parts = [] if step is None else [f"step {step}"]
    splits = metrics.get("eval_splits", {})
    if "cam_miou" in metrics:
        sp = splits.get("cam", {})
        parts.append(f"CAM mIoU {_pct(metrics['cam_miou'])}")
        parts.append(f"pseudo-label mIoU {_pct(metrics['pseudo_label_miou'])} (ignore "
                     f"{100 * metrics['pseudo_label_ignore_fraction']:.1f}% counted as background) "
                     f"[{sp.get('split')}, {sp.get('num_images')} images]")
    if "seg_miou" in metrics:
        sp = splits.get("seg", {})
        parts.append(f"seg mIoU unfiltered {_pct(metrics['seg_miou'])} / GT-label-filtered "
                     f"{_pct(metrics['seg_miou_filtered'])} [{sp.get('split')}, {sp.get('num_images')} images]")
    return " | ".join(parts)
