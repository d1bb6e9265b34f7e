"""Background/foreground-balanced cross-entropy for segmentation with pseudo labels (``common.md`` §6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import check_class_target, check_reduction, check_shape, check_tensor, empty_loss

__all__ = ["BalancedSegmentationLoss", "balanced_segmentation_loss"]


def balanced_segmentation_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    fg_alpha: float = 0.5,
    eps: float = 1e-6,
    align_corners: bool = False,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy averaged separately over background and foreground pixels, then mixed (unweighted).

    **No loss weight is applied inside**: the caller multiplies by the method's weight (CoSA's 0.1 is applied
    inside :class:`~wsseg.losses.SwappedAssignmentLoss` instead; see ``docs/conventions.rst``).

    The segmentation loss of AFA / TSCD / CoSA. The logits are bilinearly upsampled to the label size
    (when the sizes differ), the per-pixel cross-entropy :math:`\mathrm{CE}(p)` is computed, optionally
    multiplied by a per-pixel weight :math:`w(p)`, and averaged separately over the background pixels
    (label 0) and the foreground pixels (label in :math:`1, \dots, K`); ignored pixels contribute nothing.
    Sums and counts run over the **whole batch**:

    .. math::

        L_{bg} = \frac{\sum_{p: Y(p)=0} w(p)\,\mathrm{CE}(p)}{\#\{p: Y(p)=0\} + \varepsilon},\qquad
        L_{fg} = \frac{\sum_{p: Y(p)\notin\{0,\mathrm{ignore}\}} w(p)\,\mathrm{CE}(p)}
                      {\#\{p: Y(p)\notin\{0,\mathrm{ignore}\}\} + \varepsilon},

    .. math::

        L_{seg} = (1-\alpha)\,L_{bg} + \alpha\,L_{fg}.

    The normalisation is the pixel **count**, not :math:`\sum w` (CoSA's ``seg_weightloss``). With
    :math:`\varepsilon = 10^{-6}` (CoSA) an empty subset contributes 0; AFA/TSCD use plain means
    (:math:`\varepsilon \to 0`), which give NaN on an empty subset.

    Args:
        logits: raw segmentation logits, channel 0 = background.
        target: (pseudo) label map with values in ``{0..C-1, ignore_index}``, any integer dtype.
        weight: optional non-negative per-pixel weight at the label resolution (``None`` = 1).
        fg_alpha: :math:`\alpha`, weight of the foreground term (0.5 in all official code).
        eps: :math:`\varepsilon` added to both pixel counts.
        align_corners: corner alignment of the bilinear upsampling (TSCD passes ``True``; AFA ``False``).
        ignore_index: label value that is ignored.
        reduction: ``"mean"`` = the official balanced normalisation above; ``"sum"`` = plain sum of the
            (weighted) per-pixel cross-entropies over non-ignored pixels, without the bg/fg
            normalisation or :math:`\alpha`; ``"none"`` = the (weighted) per-pixel cross-entropy map,
            0 on ignored pixels.

    Returns:
        A scalar for ``"mean"``/``"sum"``, a ``(B, H, W)`` map for ``"none"``. An empty batch (:math:`B = 0`)
        gives 0 with a graph (``logits.sum() * 0``), or an empty :math:`(0, H, W)` map for ``"none"``. NaN in
        ``logits`` propagates (the engine's non-finite check stops the run).

    Shape:
        - logits: :math:`(B, C, h, w)`, C = K+1.
        - target: :math:`(B, H, W)`, any integer dtype (converted to int64).
        - weight: :math:`(B, H, W)` floating point.
        - output: scalar, or :math:`(B, H, W)` for ``reduction="none"``.

    Raises:
        TypeError: if ``logits``/``weight`` are not floating point or ``target`` is not integer.
        ValueError: on wrong ranks, a batch mismatch, a ``weight`` shape different from ``target``, a
            ``target`` value outside :math:`[0, C)` other than ``ignore_index`` (one reduction over the
            map), ``fg_alpha`` outside [0, 1], negative ``eps`` or an unknown ``reduction``.

    Example:
        >>> import torch
        >>> from wsseg.losses import balanced_segmentation_loss
        >>> logits = torch.zeros(1, 3, 2, 2)                  # uniform prediction: CE = log 3
        >>> target = torch.tensor([[[0, 1], [2, 255]]])
        >>> loss = balanced_segmentation_loss(logits, target, eps=0.0)
        >>> torch.allclose(loss, torch.log(torch.tensor(3.0)))
        True

    Source:
        AFA, Ru et al. CVPR 2022, github.com/rulixiang/afa ``utils/losses.py`` (``get_seg_loss``);
        TSCD, Xu et al. AAAI 2023, github.com/Rongtao-Xu/RepresentationLearning ``SCD-AAAI2023``;
        CoSA, Yang et al. ECCV 2024, github.com/youshyee/CoSA ``utils/seg_helper.py``
        (``seg_loss``, ``seg_weightloss``).
    """
    check_tensor(logits, "logits", ndim=4, dims="(B, C, h, w)", dtype="float")
    check_tensor(target, "target", ndim=3, dims="(B, H, W)", dtype="int")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target: expected batch size {logits.shape[0]} (that of logits), got {target.shape[0]}")
    if weight is not None:
        check_tensor(weight, "weight", ndim=3, dims="(B, H, W)", dtype="float")
        check_shape(weight, "weight", tuple(target.shape), "(B, H, W) = target.shape")
    if not 0.0 <= fg_alpha <= 1.0:
        raise ValueError(f"fg_alpha: expected a value in [0, 1], got {fg_alpha}")
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")
    check_reduction(reduction)
    target = check_class_target(target, "target", logits.shape[1], ignore_index)
    if logits.shape[0] == 0:
        return empty_loss(logits, reduction, tuple(target.shape))

    return _balanced(logits, target, weight, fg_alpha, eps, align_corners, ignore_index, reduction)


def _balanced(logits: Tensor, target: Tensor, weight: Tensor | None, fg_alpha: float, eps: float,
              align_corners: bool, ignore_index: int, reduction: str) -> Tensor:
    """The loss on checked inputs (``target`` int64, ``B > 0``)."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=align_corners)
    # The cross-entropy is a sensitive reduction: always evaluate it in (at least) float32.
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # 0 where ignored
    if weight is not None:
        ce = ce * weight.to(ce.dtype)
    if reduction == "none":
        return ce
    if reduction == "sum":
        return ce.sum()

    bg = target == 0
    fg = (target != 0) & (target != ignore_index)
    loss_bg = (ce * bg).sum() / (bg.sum() + eps)
    loss_fg = (ce * fg).sum() / (fg.sum() + eps)
    return (1.0 - fg_alpha) * loss_bg + fg_alpha * loss_fg


class BalancedSegmentationLoss(nn.Module):
    r"""Module form of :func:`balanced_segmentation_loss`; returns the **unweighted** loss (no weight inside).

    Multiply by your method's weight yourself (TSCD/AFA: 1; the CoSA-style :math:`\lambda_{c2s} = 0.1` is
    applied inside :class:`~wsseg.losses.SwappedAssignmentLoss`, not here; see ``docs/conventions.rst``).

    .. math::

        L_{seg} = (1-\alpha)\,\frac{\sum_{Y=0} w\,\mathrm{CE}}{\#\{Y=0\}+\varepsilon}
                + \alpha\,\frac{\sum_{Y\notin\{0,\mathrm{ignore}\}} w\,\mathrm{CE}}
                               {\#\{Y\notin\{0,\mathrm{ignore}\}\}+\varepsilon}

    Args:
        fg_alpha: weight :math:`\alpha` of the foreground term.
        eps: :math:`\varepsilon` added to both pixel counts (CoSA: 1e-6).
        align_corners: corner alignment when upsampling the logits to the label size (TSCD: ``True``).
        ignore_index: ignored label value.
        reduction: ``"mean"`` (official balanced normalisation), ``"sum"`` or ``"none"``; see
            :func:`balanced_segmentation_loss`.

    Shape:
        - logits: :math:`(B, C, h, w)`; target: :math:`(B, H, W)`; weight: :math:`(B, H, W)` or ``None``.
        - output: scalar, or :math:`(B, H, W)` for ``reduction="none"``.

    Raises:
        ValueError: see :func:`balanced_segmentation_loss` (e.g. a target value :math:`\ge C` other than
            ``ignore_index``).

    Example:
        >>> import torch
        >>> from wsseg.losses import BalancedSegmentationLoss
        >>> loss_fn = BalancedSegmentationLoss()
        >>> loss_fn(torch.randn(2, 21, 8, 8), torch.randint(0, 21, (2, 32, 32))).shape
        torch.Size([])

    Source:
        AFA ``utils/losses.py`` (``get_seg_loss``); CoSA ``utils/seg_helper.py`` (``seg_loss``).
    """

    def __init__(self, fg_alpha: float = 0.5, eps: float = 1e-6, align_corners: bool = False,
                 ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        if not 0.0 <= fg_alpha <= 1.0:
            raise ValueError(f"fg_alpha: expected a value in [0, 1], got {fg_alpha}")
        if eps < 0:
            raise ValueError(f"eps: expected a non-negative value, got {eps}")
        self.fg_alpha = fg_alpha
        self.eps = eps
        self.align_corners = align_corners
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Compute the loss; see :func:`balanced_segmentation_loss`."""
        return balanced_segmentation_loss(
            logits, target, weight, fg_alpha=self.fg_alpha, eps=self.eps, align_corners=self.align_corners,
            ignore_index=self.ignore_index, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"fg_alpha={self.fg_alpha}, eps={self.eps}, align_corners={self.align_corners}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r}")
