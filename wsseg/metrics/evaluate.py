"""Evaluation helpers that always report both the unfiltered and the GT-label-filtered mIoU."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsseg.utils.validation import check_labels, check_tensor

from .filter_logits import filter_logits_by_labels
from .segmentation_metric import SegmentationMetric

__all__ = ["DualMIoU", "evaluate_segmentation", "format_report", "UNFILTERED_LABEL", "FILTERED_LABEL"]

#: Display names used in every report (``common.md`` §9.2).
UNFILTERED_LABEL = "unfiltered"
FILTERED_LABEL = "GT-label-filtered (uses ground truth at test time)"


class DualMIoU:
    r"""Accumulates the unfiltered and the GT-image-label-filtered segmentation metrics side by side.

    For every batch it takes the argmax of the logits (*unfiltered*, CoSA "Seg_ps") and the argmax of
    :func:`~wsseg.metrics.filter_logits_by_labels` with the ground-truth image labels (*filtered*, CoSA
    "Seg_vd", which uses ground truth at test time), and updates one
    :class:`~wsseg.metrics.SegmentationMetric` for each.

    .. math::
        \hat y^{\text{unf}} = \arg\max_c z_c,\qquad
        \hat y^{\text{filt}} = \arg\max_c \tilde z_c\ \ (\tilde z_c = -10^5 \text{ for absent } c \ge 1)

    Args:
        num_classes: C = K + 1 (background included).
        ignore_index: ground-truth value not counted.
        fill: logit written into absent classes for the filtered variant (official ``-1e5``).

    Shape:
        - update: logits ``(B, C, H, W)`` at the mask size, target ``(B, H, W)``, labels ``(B, K)``.

    Raises:
        ValueError: if ``num_classes < 2`` or on inconsistent shapes in :meth:`update`.

    Example:
        >>> import torch
        >>> from wsseg.metrics import DualMIoU
        >>> acc = DualMIoU(num_classes=3)
        >>> logits = torch.tensor([[0.0, 1.0, 2.0]]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
        >>> target = torch.ones(1, 2, 2, dtype=torch.long)
        >>> acc.update(logits, target, torch.tensor([[1.0, 0.0]]))
        >>> res = acc.compute()
        >>> res["miou"], res["miou_filtered"]
        (0.0, 1.0)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``evaluation_engine.py`` (``preds_ps`` /
        ``preds_vd``).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, fill: float = -1e5):
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: expected an int >= 2 (C = K + 1, background included), "
                             f"got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.fill = fill
        self.unfiltered = SegmentationMetric(num_classes, ignore_index)
        self.filtered = SegmentationMetric(num_classes, ignore_index)

    def reset(self) -> None:
        """Zero both confusion matrices."""
        self.unfiltered.reset()
        self.filtered.reset()

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor, labels: Tensor) -> None:
        """Add one batch: logits ``(B, C, H, W)``, target ``(B, H, W)``, GT image labels ``(B, K)``."""
        check_tensor(logits, "logits", ndim=4, dims="(B, C, H, W)", dtype="float")
        check_tensor(target, "target", ndim=3, dims="(B, H, W)", dtype="int")
        b, c = logits.shape[:2]
        if c != self.num_classes:
            raise ValueError(f"logits: expected {self.num_classes} channels (C = K + 1), got shape "
                             f"{tuple(logits.shape)}")
        if target.shape != (b, *logits.shape[-2:]):
            raise ValueError(f"target: expected shape {(b, *logits.shape[-2:])} (batch and size of logits), "
                             f"got {tuple(target.shape)}")
        check_labels(labels, "labels", b, c - 1)
        self.unfiltered.update(logits.argmax(dim=1), target)
        self.filtered.update(filter_logits_by_labels(logits, labels, self.fill).argmax(dim=1), target)

    def merge(self, other: DualMIoU) -> DualMIoU:
        """Add another accumulator's counts; returns ``self``."""
        if not isinstance(other, DualMIoU):
            raise TypeError(f"other: expected a DualMIoU, got {type(other).__name__}")
        self.unfiltered.merge(other.unfiltered)
        self.filtered.merge(other.filtered)
        return self

    def compute(self) -> dict:
        """Both results: ``miou``, ``iou``, ``pixel_acc``, ``confusion`` and the same keys with a
        ``_filtered`` suffix, plus ``present`` (classes with GT pixels)."""
        u = self.unfiltered.compute()
        f = self.filtered.compute()
        return {
            "miou": u["miou"], "miou_filtered": f["miou"],
            "iou": u["iou"], "iou_filtered": f["iou"],
            "pixel_acc": u["pixel_acc"], "pixel_acc_filtered": f["pixel_acc"],
            "confusion": u["confusion"], "confusion_filtered": f["confusion"],
            "present": u["present"],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index})"


def evaluate_segmentation(predict_fn: Callable[[Tensor], Tensor], loader: Iterable, num_classes: int, *,
                          device: str | torch.device = "cpu", ignore_index: int | None = 255,
                          image_key: str = "image", mask_key: str = "mask", label_key: str = "label",
                          resize_logits: bool = True, fill: float = -1e5) -> dict:
    r"""Evaluate a segmentation predictor over a whole split, reporting filtered **and** unfiltered mIoU.

    For every batch ``predict_fn(images)`` returns logits; they are resized bilinearly
    (``align_corners=False``, as in the official evaluations) to the mask size when needed, then fed to a
    :class:`DualMIoU`. Runs under ``torch.no_grad()``; put your model in eval mode yourself.

    .. math::
        \mathrm{mIoU} = \operatorname{mean}_{c:\,\text{GT pixels}>0} \frac{TP_c}{TP_c+FP_c+FN_c}
        \quad\text{for } \hat y^{\text{unf}} \text{ and } \hat y^{\text{filt}}.

    Args:
        predict_fn: ``images (B, 3, H, W) -> logits (B, C, H', W')`` (e.g. a model wrapped with
            :func:`wsseg.layers.multi_scale_inference`).
        loader: iterable of dict batches with ``image`` ``(B, 3, H, W)``, ``mask`` ``(B, H, W)`` int64 and
            ``label`` ``(B, K)`` (the ``wsseg.data`` sample format collated by a ``DataLoader``).
        num_classes: C = K + 1 (background included; ``dataset.num_classes + 1`` for ``wsseg.data``).
        device: where ``predict_fn`` runs; images, masks and labels are moved there.
        ignore_index: ground-truth value not counted.
        image_key, mask_key, label_key: batch keys.
        resize_logits: resize logits to the mask size when they differ (else raise ``ValueError``).
        fill: logit for absent classes in the filtered variant.

    Returns:
        dict with ``miou``/``miou_filtered`` (float, fraction in [0, 1]), ``iou``/``iou_filtered``
        (float64 ``(C,)``), ``pixel_acc``/``pixel_acc_filtered``, ``confusion``/``confusion_filtered``
        (int64 ``(C, C)``), ``present`` (bool ``(C,)``) and ``num_images``. Print with
        :func:`format_report`.

    Shape:
        - images: ``(B, 3, H, W)``; masks ``(B, H, W)``; labels ``(B, K)``; logits ``(B, C, H', W')``.

    Raises:
        KeyError: if a batch lacks a key.
        ValueError: on inconsistent shapes (wrong C, size mismatch with ``resize_logits=False``).

    Example:
        >>> import torch
        >>> from wsseg.metrics import evaluate_segmentation
        >>> batch = {"image": torch.zeros(1, 3, 4, 4),
        ...          "mask": torch.zeros(1, 4, 4, dtype=torch.long),
        ...          "label": torch.zeros(1, 2)}
        >>> predict = lambda x: torch.zeros(x.shape[0], 3, 2, 2)
        >>> res = evaluate_segmentation(predict, [batch], 3)
        >>> res["miou"], res["miou_filtered"], res["num_images"]
        (1.0, 1.0, 1)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``evaluation_engine.py``; AFA ``scripts/
        test_msc_flip.py`` (bilinear resize of logits to the label size, argmax).
    """
    if not callable(predict_fn):
        raise TypeError(f"predict_fn: expected a callable, got {type(predict_fn).__name__}")
    acc = DualMIoU(num_classes, ignore_index, fill)
    n = 0
    with torch.no_grad():
        for batch in loader:
            images = batch[image_key].to(device)
            target = batch[mask_key].to(device)
            labels = batch[label_key].to(device)
            logits = predict_fn(images)
            check_tensor(logits, "logits", ndim=4, dims="(B, C, H, W)", dtype="float")
            if logits.shape[-2:] != target.shape[-2:]:
                if not resize_logits:
                    raise ValueError(f"logits: expected spatial size {tuple(target.shape[-2:])} (that of the "
                                     f"mask) with resize_logits=False, got {tuple(logits.shape[-2:])}")
                logits = F.interpolate(logits.float(), size=target.shape[-2:], mode="bilinear",
                                       align_corners=False)
            acc.update(logits.float(), target, labels)
            n += target.shape[0]
    out = acc.compute()
    out["num_images"] = n
    return out


def _pct(x: float) -> str:
    return "   n/a" if x is None or math.isnan(x) else f"{100.0 * x:6.2f}"


def format_report(results: dict, class_names: Sequence[str] | None = None, *, title: str | None = None) -> str:
    """Readable, labelled table of an evaluation result (both mIoU variants, per-class IoU in %).

    Args:
        results: output of :func:`evaluate_segmentation` or :meth:`DualMIoU.compute`.
        class_names: C names, or K foreground names (``"background"`` is then prepended); default
            ``class_0 … class_{C-1}``.
        title: optional first line, e.g. ``"last iteration (20000)"`` or ``"val-selected (best of 8)"``
            — keep last-iteration and val-selected results apart.

    Returns:
        A multi-line string. Classes without ground-truth pixels are marked ``(no GT)`` and excluded
        from the mIoU.

    Raises:
        KeyError: if ``results`` lacks ``miou``, ``miou_filtered``, ``iou`` or ``iou_filtered``.
        ValueError: if the number of class names matches neither C nor C - 1, or the per-class
            entries of ``results`` have different lengths.

    Example:
        >>> import torch
        >>> from wsseg.metrics import format_report
        >>> res = {"miou": 0.5, "miou_filtered": 0.75, "iou": torch.tensor([1.0, 0.0]),
        ...        "iou_filtered": torch.tensor([1.0, 0.5])}
        >>> print(format_report(res, ["cat"]))
        mIoU unfiltered                                         :  50.00
        mIoU GT-label-filtered (uses ground truth at test time) :  75.00
        class       unfiltered  GT-filtered
        background      100.00       100.00
        cat               0.00        50.00

    Source:
        Reporting policy of wsseg (``common.md`` §9.2): CoSA logs "Seg_ps" (unfiltered) and "Seg_vd"
        (filtered) and reports the filtered one.
    """
    for key in ("miou", "miou_filtered", "iou", "iou_filtered"):
        if key not in results:
            raise KeyError(f"results: missing key {key!r} (expected the output of evaluate_segmentation)")
    iou = torch.as_tensor(results["iou"], dtype=torch.float64).flatten().tolist()
    iou_f = torch.as_tensor(results["iou_filtered"], dtype=torch.float64).flatten().tolist()
    c = len(iou)
    if len(iou_f) != c:
        raise ValueError(f"results: expected iou_filtered of length {c} like iou, got {len(iou_f)}")
    if class_names is None:
        names = [f"class_{i}" for i in range(c)]
    elif len(class_names) == c:
        names = list(class_names)
    elif len(class_names) == c - 1:
        names = ["background", *class_names]
    else:
        raise ValueError(f"class_names: expected {c} (C) or {c - 1} (K) names, got {len(class_names)}")
    present = results.get("present")
    present = [True] * c if present is None else [bool(v) for v in torch.as_tensor(present).flatten()]
    if len(present) != c:
        raise ValueError(f"results: expected present of length {c} like iou, got {len(present)}")
    width = max(10, *(len(n) for n in names)) + (7 if not all(present) else 0)
    label_w = max(len(UNFILTERED_LABEL), len(FILTERED_LABEL)) + 5
    lines = [] if title is None else [title]
    lines.append(f"{('mIoU ' + UNFILTERED_LABEL).ljust(label_w)} : {_pct(results['miou'])}")
    lines.append(f"{('mIoU ' + FILTERED_LABEL).ljust(label_w)} : {_pct(results['miou_filtered'])}")
    lines.append(f"{'class'.ljust(width)}  unfiltered  GT-filtered")
    for name, a, b, p in zip(names, iou, iou_f, present, strict=True):
        shown = name if p else f"{name} (no GT)"
        lines.append(f"{shown.ljust(width)}  {_pct(a):>10}  {_pct(b):>11}")
    return "\n".join(lines)
