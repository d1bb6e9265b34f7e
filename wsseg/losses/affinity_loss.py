"""Class-balanced L1 affinity loss (``common.md`` §5.3; ``aux_loss`` in TSCD)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsseg.utils.validation import check_reduction, check_tensor

__all__ = ["AffinityLoss", "affinity_loss"]


def _check_ignore(ignore_index: int) -> None:
    if ignore_index in (0, 1):
        raise ValueError(f"ignore_index: must differ from the target values 0 and 1, got {ignore_index}")


def affinity_loss(pred: Tensor, target: Tensor, *, ignore_index: int = 255, reduction: str = "mean") -> Tensor:
    r"""Balanced L1 loss between a predicted affinity in (0, 1) and a {0, 1, ignore} affinity target.

    .. math::
        \mathcal L_{aff} = \frac12\,\frac{\sum_{A^*_{ij}=1} (1 - \hat A_{ij})}{n_+ + 1}
                         + \frac12\,\frac{\sum_{A^*_{ij}=0} \hat A_{ij}}{n_- + 1}

    with :math:`n_+, n_-` the numbers of positive / negative pairs **over the whole batch**; the
    :math:`+1` avoids a division by zero. An L1-type loss on the sigmoid output, not BCE. Pairs whose
    target is neither 0 nor 1 (``ignore_index``) do not contribute. Computed in (at least) float32.

    Reductions: ``"mean"`` is the official normalisation above; ``"sum"`` the plain sum of the
    unnormalised terms :math:`\sum_{A^*=1}(1-\hat A) + \sum_{A^*=0}\hat A`; ``"none"`` the per-pair terms
    (:math:`1-\hat A` on positives, :math:`\hat A` on negatives, 0 on ignored pairs).

    Args:
        pred: predicted affinity :math:`\hat A` (e.g. :class:`~wsseg.layers.AffinityFromAttention`).
        target: affinity label :math:`A^*` (:func:`~wsseg.pseudo.affinity_label`).
        ignore_index: ignored target value (any value other than 0/1 is ignored as well).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.

    Shape:
        - pred: :math:`(B, N, N)`, float in (0, 1).
        - target: :math:`(B, N, N)`, integer (uint8 or int64).
        - output: scalar, or :math:`(B, N, N)` with ``reduction="none"``.

    Raises:
        TypeError: if ``pred`` is not floating-point or ``target`` not integer.
        ValueError: on shape mismatch, an unknown ``reduction`` or ``ignore_index`` in {0, 1}.

    Example:
        >>> pred = torch.tensor([[[0.8, 0.4], [0.4, 0.9]]])
        >>> target = torch.tensor([[[1, 0], [255, 1]]])
        >>> round(affinity_loss(pred, target).item(), 4)  # 0.5*0.3/3 + 0.5*0.4/2
        0.15

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/losses.py (``get_aff_loss``);
        TSCD, Xu et al. AAAI 2023 (``aux_loss``, weight 0.1).
    """
    check_tensor(pred, "pred", ndim=3, dims="(B, N, N)", dtype="float")
    check_tensor(target, "target", ndim=3, dims="(B, N, N)", dtype="int")
    if target.shape != pred.shape:
        raise ValueError(f"target: expected shape {tuple(pred.shape)} (that of pred), got {tuple(target.shape)}")
    check_reduction(reduction)
    _check_ignore(ignore_index)
    p = pred.to(torch.promote_types(pred.dtype, torch.float32))
    pos = target == 1
    neg = target == 0
    pos_terms = torch.where(pos, 1.0 - p, torch.zeros_like(p))
    neg_terms = torch.where(neg, p, torch.zeros_like(p))
    if reduction == "none":
        return pos_terms + neg_terms
    if reduction == "sum":
        return pos_terms.sum() + neg_terms.sum()
    n_pos = pos.sum().to(p.dtype) + 1
    n_neg = neg.sum().to(p.dtype) + 1
    return 0.5 * pos_terms.sum() / n_pos + 0.5 * neg_terms.sum() / n_neg


class AffinityLoss(nn.Module):
    r"""Module form of :func:`affinity_loss`.

    .. math::
        \mathcal L_{aff} = \tfrac12 \textstyle\sum_{A^*=1} (1 - \hat A)/(n_+ + 1)
                         + \tfrac12 \sum_{A^*=0} \hat A/(n_- + 1)

    Args:
        ignore_index: ignored target value.
        reduction: ``"mean"`` (official normalisation) | ``"sum"`` | ``"none"``.

    Shape:
        - pred: :math:`(B, N, N)`; target: :math:`(B, N, N)`; output: scalar (or :math:`(B, N, N)`).

    Raises:
        ValueError: on an unknown ``reduction``.

    Example:
        >>> loss = AffinityLoss()
        >>> pred, target = torch.full((1, 2, 2), 0.5), torch.tensor([[[1, 0], [0, 1]]])
        >>> round(loss(pred, target).item(), 4)  # 2 * 0.5 * 1.0 / 3
        0.3333

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/losses.py (``get_aff_loss``).
    """

    def __init__(self, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        _check_ignore(ignore_index)
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Affinity loss; see :func:`affinity_loss`."""
        return affinity_loss(pred, target, ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"ignore_index={self.ignore_index}, reduction={self.reduction!r}"
