"""Confusion-matrix segmentation metric (mIoU with ``ignore_index`` and a NaN-mean over present classes)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wsseg.utils.validation import check_tensor

__all__ = ["SegmentationMetric", "confusion_matrix", "miou_from_confusion"]


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_tensor(pred, "pred", dtype="int")
    check_tensor(target, "target", dtype="int")
    if pred.shape != target.shape:
        raise ValueError(f"pred: expected the shape of target {tuple(target.shape)}, got {tuple(pred.shape)}")


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255,
                     pred_ignore_index: int | None = None) -> Tensor:
    r"""Confusion matrix of a predicted label map against the ground truth (rows = ground truth).

    One vectorised ``bincount`` over the flattened pixels with ground truth different from
    ``ignore_index``:

    .. math::
        N_{ij} = \#\{p : y_p = i,\ \hat y_p = j,\ y_p \ne \text{ignore}\}.

    Args:
        pred: predicted labels, any integer dtype, values in ``[0, C)`` on every counted pixel.
        target: ground-truth labels, same shape, values in ``[0, C)`` or ``ignore_index``.
        num_classes: C, the number of classes including background.
        ignore_index: ground-truth value excluded from the count (``None``: nothing ignored).
        pred_ignore_index: if not ``None``, pixels whose *prediction* equals this value are excluded as
            well. Used to score pseudo labels that contain "uncertain" pixels (CoSA ``pseudo_scores``).

    Returns:
        int64 tensor ``(C, C)`` on ``pred``'s device; ``N[i, j]`` counts GT class ``i`` predicted as ``j``.

    Shape:
        - pred, target: any shape, e.g. ``(B, H, W)``; both must be identical.
        - output: ``(C, C)``.

    Raises:
        TypeError: if ``pred`` or ``target`` is not an integer tensor.
        ValueError: if the shapes differ, ``num_classes < 1``, or a counted value lies outside ``[0, C)``.

    Example:
        >>> import torch
        >>> from wsseg.metrics import confusion_matrix
        >>> pred = torch.tensor([[0, 1, 1, 2]])
        >>> target = torch.tensor([[0, 1, 2, 255]])
        >>> confusion_matrix(pred, target, 3)
        tensor([[1, 0, 0],
                [0, 1, 0],
                [0, 1, 0]])

    Source:
        Standard ``_fast_hist`` of semantic-segmentation benchmarks; CoSA, Yang et al. ECCV 2024,
        github.com/youshyee/CoSA, ``utils/evaluation.py``; AFA ``utils/evaluate.py``.
    """
    _check_pair(pred, target)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    p = pred.reshape(-1).long()
    t = target.reshape(-1).long().to(p.device)
    keep = torch.ones_like(t, dtype=torch.bool)
    if ignore_index is not None:
        keep &= t != ignore_index
    if pred_ignore_index is not None:
        keep &= p != pred_ignore_index
    p, t = p[keep], t[keep]
    if t.numel() and (bool((t < 0).any()) or bool((t >= num_classes).any())):
        bad = t[(t < 0) | (t >= num_classes)][0].item()
        raise ValueError(f"target: expected values in [0, {num_classes}) or ignore_index={ignore_index}, "
                         f"got {bad}")
    if p.numel() and (bool((p < 0).any()) or bool((p >= num_classes).any())):
        bad = p[(p < 0) | (p >= num_classes)][0].item()
        raise ValueError(f"pred: expected values in [0, {num_classes}) on non-ignored pixels, got {bad}")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def miou_from_confusion(conf: Tensor) -> dict:
    r"""IoU per class, mean IoU over classes present in the ground truth, and pixel accuracy.

    .. math::
        \mathrm{IoU}_c = \frac{N_{cc}}{\sum_j N_{cj} + \sum_i N_{ic} - N_{cc}},\qquad
        \mathrm{mIoU} = \frac{1}{|\mathcal P|}\sum_{c\in\mathcal P}\mathrm{IoU}_c,\quad
        \mathcal P = \{c : \textstyle\sum_j N_{cj} > 0\}.

    Classes without ground-truth pixels are excluded from the mean even when they are predicted
    (their per-class IoU is then 0 and is still reported); a class with an empty union has IoU NaN.
    This is CoSA's ``nanmean(iu[valid])`` with ``valid = hist.sum(1) > 0``.

    Args:
        conf: confusion matrix ``(C, C)``, rows = ground truth, any numeric dtype.

    Returns:
        dict with ``miou`` (float, NaN if no class is present), ``iou`` (float64 ``(C,)``),
        ``present`` (bool ``(C,)``), ``pixel_acc`` (float, NaN on an empty matrix) and ``confusion``
        (the input).

    Shape:
        - conf: ``(C, C)``.

    Raises:
        TypeError: if ``conf`` is not a tensor.
        ValueError: if ``conf`` is not square 2-D.

    Example:
        >>> import torch
        >>> from wsseg.metrics import miou_from_confusion
        >>> res = miou_from_confusion(torch.tensor([[3, 1], [0, 2]]))
        >>> round(res["miou"], 4), res["iou"].tolist()
        (0.7083, [0.75, 0.6666666666666666])

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``utils/evaluation.py`` (``scores``).
    """
    check_tensor(conf, "conf", ndim=2, dims="(C, C)")
    if conf.shape[0] != conf.shape[1]:
        raise ValueError(f"conf: expected a square (C, C) matrix, got shape {tuple(conf.shape)}")
    c = conf.detach().to(torch.float64)
    tp = c.diagonal()
    gt = c.sum(dim=1)
    union = gt + c.sum(dim=0) - tp
    iou = tp / union  # 0/0 -> NaN
    present = gt > 0
    miou = float(iou[present].mean()) if bool(present.any()) else math.nan
    total = c.sum()
    pixel_acc = float(tp.sum() / total) if float(total) > 0 else math.nan
    return {"miou": miou, "iou": iou, "present": present, "pixel_acc": pixel_acc, "confusion": conf}


class SegmentationMetric:
    r"""Accumulating C×C confusion matrix and mIoU over a whole split.

    Not an ``nn.Module``: call :meth:`update` once per batch, :meth:`compute` at the end. Each update is
    a single vectorised ``bincount`` (see :func:`confusion_matrix`); the matrix lives on the device of
    the first update. mIoU is the mean over classes with ground-truth pixels
    (:func:`miou_from_confusion`).

    .. math::
        \mathrm{mIoU} = \operatorname{mean}_{c:\,\sum_j N_{cj}>0}\ \frac{N_{cc}}{\sum_j N_{cj}+\sum_i N_{ic}-N_{cc}}

    Args:
        num_classes: C, number of classes including background.
        ignore_index: ground-truth value that is not counted.
        pred_ignore_index: optional prediction value that is not counted (pseudo-label scoring).

    Shape:
        - update: pred ``(B, H, W)`` integer, target ``(B, H, W)`` integer.
        - compute: ``iou``/``present`` ``(C,)``, ``confusion`` ``(C, C)``.

    Raises:
        ValueError: on ``num_classes < 1``; see :func:`confusion_matrix` for ``update``.

    Example:
        >>> import torch
        >>> from wsseg.metrics import SegmentationMetric
        >>> m = SegmentationMetric(num_classes=3)
        >>> m.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [2, 255]]]))
        >>> res = m.compute()
        >>> round(res["miou"], 4), res["present"].tolist()
        (0.5, [True, True, True])

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``utils/evaluation.py``; AFA, Ru et al.
        CVPR 2022, github.com/rulixiang/afa, ``utils/evaluate.py``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255, pred_ignore_index: int | None = None):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.pred_ignore_index = pred_ignore_index
        self.confusion: Tensor = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self._placed = False

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._placed = False

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add the pixels of one batch (``pred`` and ``target`` of identical shape, e.g. ``(B, H, W)``)."""
        conf = confusion_matrix(pred, target, self.num_classes, self.ignore_index, self.pred_ignore_index)
        if not self._placed:
            self.confusion = self.confusion.to(conf.device)
            self._placed = True
        self.confusion += conf.to(self.confusion.device)

    def merge(self, other: SegmentationMetric) -> SegmentationMetric:
        """Add another metric's counts into this one (e.g. from another worker); returns ``self``.

        Raises:
            TypeError: if ``other`` is not a :class:`SegmentationMetric`.
            ValueError: if the number of classes or the ignore settings differ.
        """
        if not isinstance(other, SegmentationMetric):
            raise TypeError(f"other: expected a SegmentationMetric, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index, other.pred_ignore_index) != (
                self.num_classes, self.ignore_index, self.pred_ignore_index):
            raise ValueError(
                f"other: expected num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
                f"pred_ignore_index={self.pred_ignore_index}; got {other.num_classes}, "
                f"{other.ignore_index}, {other.pred_ignore_index}")
        self.confusion += other.confusion.to(self.confusion.device)
        return self

    def compute(self) -> dict:
        """Return ``dict(miou, iou, confusion, present, pixel_acc)`` (see :func:`miou_from_confusion`)."""
        return miou_from_confusion(self.confusion.clone())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
                f"pred_ignore_index={self.pred_ignore_index})")
