"""The WSSS evaluation of a method during/after training: CAM, pseudo-label and segmentation mIoU."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import DualMIoU, SegmentationMetric
from ..pseudo import cam_to_label
from ..utils.image import denormalize
from .distributed import all_reduce_sum, unwrap_model
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


def _shard(n: int, rank: int, world_size: int, chunk: int) -> list[int]:
    """This rank's image indices: consecutive chunks of ``chunk`` images of ``0..n-1``, chunk ``c`` to rank
    ``c % world_size`` (the chunks, and so the batches formed inside them, do not depend on ``world_size``)."""
    return [i for c in range(rank * chunk, n, world_size * chunk) for i in range(c, min(c + chunk, n))]


def _sum_over_ranks(metrics: Sequence[SegmentationMetric], counts: Tensor) -> None:
    for m in metrics:
        all_reduce_sum(m.confusion)
    all_reduce_sum(counts)


class _Item(NamedTuple):
    """One evaluation image: its place in the rank's shard, dataset index, name, native image ``x``, network
    input ``xin`` (long side resized), native mask ``gt``, labels ``y`` and ``valid`` at the input size."""

    pos: int
    index: int
    name: str
    x: Tensor
    xin: Tensor
    gt: Tensor
    y: Tensor
    vin: Tensor


def _same_shape_batches(items: Iterable[_Item], chunk: int) -> Iterator[list[_Item]]:
    """Split ``items`` into consecutive chunks of ``chunk`` and each chunk into groups of equal network-input
    shape (in order of first appearance): the batches. Depends only on the order and shapes of ``items``."""
    it = iter(items)
    while True:
        groups: dict[tuple[int, ...], list[_Item]] = {}
        for _, item in zip(range(chunk), it, strict=False):  # at most `chunk` items
            groups.setdefault(tuple(item.xin.shape[-2:]), []).append(item)
        if not groups:
            return
        yield from groups.values()


class _ReuseForward:
    """While active, ``core``'s forward called again with one tensor equal to the previous call's returns the
    previous output instead of recomputing it (eval mode only; calls with more arguments always run).

    ``cam``, ``pseudo_label`` and ``predict`` of methods that opt in (``reuse_eval_forward = True``: all three
    read the same single-view output, e.g. ViT-PCM's patch probabilities) then share one network pass per
    batch. The output is reused only for an input bit-identical to the cached one, so the results are those
    of separate passes.
    """

    def __init__(self, core: nn.Module, enabled: bool) -> None:
        self.core, self.enabled, self.active = core, enabled, False
        self.own: Any = None
        self.key: Tensor | None = None
        self.value: Any = None

    def __enter__(self) -> _ReuseForward:
        if self.enabled:
            self.own = self.core.__dict__.get("forward")  # an instance-level forward set by someone else
            forward = self.core.forward

            def cached(*args: Any, **kwargs: Any) -> Any:
                x = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) else None
                if x is None or self.core.training:
                    return forward(*args, **kwargs)
                if self.key is not None and self.key.shape == x.shape and self.key.dtype == x.dtype \
                        and torch.equal(self.key, x):
                    return self.value
                self.key, self.value = None, None  # free the previous batch first
                self.value, self.key = forward(x), x.clone()  # a copy: the caller may change x in place
                return self.value

            self.core.forward = cached
            self.active = True
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self.active:
            self.active = False
            if self.own is None:
                del self.core.forward  # the instance attribute: the class's forward is back
            else:
                self.core.forward = self.own
        self.key = self.value = None
        return False


class _ProgressLog:
    """A line on stdout about every 10 % of the images: done / total, elapsed seconds and the estimated time
    left (linear in the images done), e.g. ``evaluate: 80/400 images (20 %), 41 s elapsed, ETA 164 s``."""

    def __init__(self, total: int, enabled: bool, every: float = 0.1) -> None:
        self.total, self.enabled, self.done = total, enabled and total > 0, 0
        self.step = max(1, int(np.ceil(every * total)))
        self.next = self.step
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled or (self.done < self.next and self.done < self.total):
            return
        while self.next <= self.done:
            self.next += self.step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"evaluate: {self.done}/{self.total} images ({100 * self.done / self.total:.0f} %), "
              f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)


@torch.no_grad()
def evaluate_method(method: TrainingMethod, model: nn.Module, *, pseudo_set: Any = None, seg_set: Any = None,
                    pseudo_split: str = "train", seg_split: str = "train", device: str | torch.device = "cpu",
                    eval_long_side: int | None = None, max_images: int | None = None,
                    out_dir: str | os.PathLike | None = None, num_vis: int = 0, show_progress: bool = False,
                    rank: int = 0, world_size: int = 1, seg_inference: str | None = None,
                    crf: str | None = None, batch_size: int = 8, log_progress: bool = False,
                    score_segmentation: bool | None = None) -> dict[str, Any]:
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
    pydensecrf). A method whose training fits no segmentation output
    (:attr:`~TrainingMethod.trains_segmentation` False: TSCD's and CoSA's classification-only ``"cam"``
    recipe) gets no segmentation score by default: ``seg_set`` is not read, the ``seg_*`` metrics are
    absent and ``eval_splits["seg"]`` says why (``skipped``).

    The network sees each image with its long side resized to ``eval_long_side`` (``None``: native);
    labels and logits are resized back (nearest / bilinear) and **scored at the mask's native
    resolution**, accumulating one confusion matrix over the whole split (NaN-mean over the classes
    present, ``ignore_index=255``). The images are taken in consecutive chunks of ``batch_size``; under DDP
    chunk ``c`` goes to rank ``c % world_size`` and the confusion matrices are summed over ranks.
    Samples must come without random augmentation (``eval_transform(None)``).

    Cost: inside a chunk, the images whose network input has the same size run through the network as one
    batch (``cam``, ``pseudo_label`` and ``predict`` are per-image operations in eval mode, so a batch gives
    each image the result of its own pass up to float rounding — a last-bit difference can move a
    thresholded pixel; since the chunks and batches do not depend on the number of ranks, a DDP evaluation
    equals a single-process one with the same ``batch_size`` exactly, and ``batch_size=1`` is the
    image-by-image evaluation); ``pseudo_label`` receives the CAM already computed;
    with ``pseudo_set is seg_set`` each image is loaded once for all three scores; and a method whose
    ``cam`` / ``pseudo_label`` / ``predict`` read the same single-view forward (class attribute
    ``reuse_eval_forward = True``: ViT-PCM, APC, SLRNet) gets that forward run once per batch (reused
    only for a bit-identical input). What remains is the protocol's own network passes (TSCD and CoSA:
    three scales plus flips for the CAM).

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
        show_progress: tqdm bar (with the estimated time left).
        rank, world_size: this process's place in a DDP run.
        seg_inference: multi-scale + flip preset for the segmentation (``None``: single scale at
            ``eval_long_side``); with a preset, ``eval_long_side`` (if given) replaces its ``resize_to``.
        crf: dense-CRF preset name applied after ``seg_inference`` (``None``: no CRF).
        batch_size: chunk size, the most images of equal input size passed through the network at once
            (1: one at a time).
        log_progress: when there is no tqdm bar (``show_progress=False``), print a line about every 10 % of
            the images (checked after each batch): images done / total, seconds elapsed and the estimated
            seconds left, e.g. ``evaluate: 80/400 images (20 %), 41 s elapsed, ETA 164 s``.
        score_segmentation: score ``seg_set`` (``None``: the method's ``trains_segmentation``; ``True``
            scores even an untrained head).

    Returns:
        dict with the metrics above (fractions in [0, 1]), per-class ``cam_iou`` / ``pseudo_label_iou`` /
        ``seg_iou``, and ``eval_splits``: for each of ``cam``, ``pseudo_label`` and ``seg`` the split,
        ``num_images`` and ``num_images_with_masks`` it was computed on (a segmentation score not taken:
        ``{"split", "skipped"}`` with the reason).

    Raises:
        ValueError: if both sets are ``None``, the sets' class counts differ, ``eval_long_side`` or
            ``max_images`` is not ``None`` or a positive int, ``batch_size`` is not a positive int, or
            ``seg_inference`` is not a preset name.
        TypeError: if ``score_segmentation`` is not ``None`` or a bool.

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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if score_segmentation is not None and not isinstance(score_segmentation, bool):
        raise TypeError(f"score_segmentation: expected None or a bool, got {type(score_segmentation).__name__}")
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
    score_seg = (bool(getattr(method, "trains_segmentation", True)) if score_segmentation is None
                 else score_segmentation)
    seg_skipped = None
    if seg_set is not None and not score_seg:
        seg_skipped = ("not scored: the recipe trains no segmentation head (classification only)"
                       if score_segmentation is None else "not scored: score_segmentation=False")
        seg_set, same = None, False
    out_dir = Path(out_dir) if out_dir is not None else None
    was_training = model.training
    model.eval()

    def items(ds, idx) -> Iterator[_Item]:
        for pos, i in enumerate(idx):
            s = ds[i]
            x = s["image"][None].to(device)
            xin = _resize_long_side(x, eval_long_side)
            vin = _nearest(s["valid"][None].to(device).long(), xin.shape[-2:]).bool()
            yield _Item(pos, i, s["name"], x, xin, s["mask"][None].to(device), s["label"][None].to(device), vin)

    def batches(ds, idx) -> Iterator[list[_Item]]:
        return _same_shape_batches(items(ds, idx), batch_size)

    def seg_logits(batch: list[_Item], xin: Tensor) -> list[Tensor]:
        """Per image: segmentation logits (1, C, h, w) at its mask's size."""
        if preset is None:
            logits = list(method.predict(model, xin).split(1))
        else:
            from ..layers import multi_scale_inference

            # the preset resizes the native image itself: one pass per group of equal native size
            logits = [None] * len(batch)
            groups: dict[tuple[int, ...], list[int]] = {}
            for j, it in enumerate(batch):
                groups.setdefault(tuple(it.x.shape[-2:]), []).append(j)
            for js in groups.values():
                x = torch.cat([batch[j].x for j in js])
                out = multi_scale_inference(lambda t: method.predict(model, t), x, **preset)
                for j, o in zip(js, out.split(1), strict=True):
                    logits[j] = o
        return [F.interpolate(z.float(), size=tuple(it.gt.shape[-2:]), mode="bilinear", align_corners=False)
                for z, it in zip(logits, batch, strict=True)]

    def update_seg(it: _Item, seg: Tensor) -> None:
        seg_m.update(seg, it.gt, it.y)
        if crf_fn is not None:
            from ..metrics import filter_logits_by_labels

            img = (denormalize(it.x.float()).clamp(0, 1) * 255).round().to(torch.uint8).cpu()
            crf_m.update(crf_fn(img, torch.softmax(seg, 1).cpu()).to(it.gt.device), it.gt)
            crf_f.update(crf_fn(img, torch.softmax(filter_logits_by_labels(seg, it.y), 1).cpu()).to(it.gt.device),
                         it.gt)
        counts[4:] += torch.tensor([1, bool((it.gt != 255).any())], dtype=torch.float64)

    def n_of(ds):
        return len(ds) if max_images is None else min(max_images, len(ds))

    pseudo_idx = _shard(n_of(pseudo_set), rank, world_size, batch_size) if pseudo_set is not None else []
    seg_idx = _shard(n_of(seg_set), rank, world_size, batch_size) if seg_set is not None and not same else []
    total = len(pseudo_idx) + len(seg_idx)
    bar = progress(total=total, desc="evaluate", disable=not show_progress)
    log = _ProgressLog(total, log_progress and not show_progress)
    vis_left = num_vis if rank == 0 and out_dir is not None else 0
    reuse = _ReuseForward(unwrap_model(model), bool(getattr(method, "reuse_eval_forward", False)))
    try:
        reuse.__enter__()
        for batch in (batches(pseudo_set, pseudo_idx) if pseudo_set is not None else ()):
            xin = torch.cat([it.xin for it in batch])
            y = torch.cat([it.y for it in batch])
            vin = torch.cat([it.vin for it in batch])
            cam = method.cam(model, xin)
            cam_label = cam_to_label(cam, y.to(cam.dtype), vin, bkg_thre=threshold)
            pseudo = method.pseudo_label(model, xin, y, vin, cam=cam)
            vis = [it.pos < vis_left for it in batch]
            segs = seg_logits(batch, xin) if same or any(vis) else [None] * len(batch)
            for j, it in enumerate(batch):
                gt = it.gt
                cl, pl = _nearest(cam_label[j:j + 1], gt.shape[-2:]), _nearest(pseudo[j:j + 1], gt.shape[-2:])
                counts += torch.tensor([1, bool((gt != 255).any()), int((pl == 255).sum()), pl.numel(), 0, 0],
                                       dtype=torch.float64)
                cam_m.update(cl, gt)
                pl_m.update(torch.where(pl == 255, torch.zeros_like(pl), pl), gt)
                pl_valid_m.update(pl, torch.where(pl == 255, torch.full_like(gt, 255), gt))
                if same:
                    update_seg(it, segs[j])
                if vis[j]:
                    _save_panel(out_dir, it.index, it.name, it.x, it.y, cam[j:j + 1], pl, segs[j], gt)
            bar.update(len(batch))
            log.update(len(batch))
        for batch in (batches(seg_set, seg_idx) if len(seg_idx) else ()):
            for it, seg in zip(batch, seg_logits(batch, torch.cat([it.xin for it in batch])), strict=True):
                update_seg(it, seg)
            bar.update(len(batch))
            log.update(len(batch))
    finally:
        reuse.__exit__()
        bar.close()
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
    elif seg_skipped is not None:
        out["eval_splits"]["seg"] = {"split": seg_split, "skipped": seg_skipped}
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
    elif "skipped" in splits.get("seg", {}):
        parts.append(f"seg {splits['seg']['skipped']}")
    return " | ".join(parts)
