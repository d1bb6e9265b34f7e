"""Normalised global weighted pooling (nGWP) with the focal size penalty (1-Stage-WSeg, SLRNet)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..utils.validation import check_shape, check_tensor

__all__ = ["NGWPPooling", "NGWPTerms", "ngwp_pooling", "ngwp_score"]


class NGWPTerms(NamedTuple):
    """The nGWP score and its two terms (returned by :func:`ngwp_pooling` with ``return_terms=True``).

    Attributes:
        scores: ``pooled + penalty``, the classification logits :math:`(B, K)` (or :math:`(B, K+1)`).
        pooled: the normalised weighted pooling term.
        penalty: the focal size penalty :math:`(1-\\bar m_k)^p \\log(\\epsilon + \\bar m_k)` (non-positive).
    """

    scores: Tensor
    pooled: Tensor
    penalty: Tensor


def _check_hparams(focal_power: float, focal_eps: float) -> None:
    if focal_power < 0:
        raise ValueError(f"focal_power: expected a non-negative value, got {focal_power}")
    if not focal_eps > 0:
        raise ValueError(f"focal_eps: expected a positive value, got {focal_eps}")


def ngwp_pooling(logits: Tensor, probs: Tensor, *, focal_power: float = 3.0, focal_eps: float = 0.01,
                 drop_background: bool = True, return_terms: bool = False) -> Tensor | NGWPTerms:
    r"""Image-level class scores by normalised global weighted pooling plus the focal size penalty.

    For each image and channel :math:`k` of the :math:`K+1`-way logits :math:`\bar L` and probabilities
    :math:`P` (softmax of the logits, over the channels) on :math:`n = 1..hw` pixels:

    .. math::

        s_k = \underbrace{\frac{\sum_n \bar L_{k,n} P_{k,n}}{1 + \sum_n P_{k,n}}}_{\text{nGWP}}
              + \underbrace{(1 - \bar m_k)^{p} \log(\epsilon + \bar m_k)}_{\text{focal size penalty}},
        \qquad \bar m_k = \frac{1}{hw} \sum_n P_{k,n},

    with :math:`p = 3`, :math:`\epsilon = 0.01`. The background entry (channel 0) is dropped, giving
    :math:`K` logits for ``multilabel_soft_margin_loss``. The penalty is :math:`\le 0` and vanishes as the
    mean mask :math:`\bar m_k \to 1`; it pushes small masks of present classes up. Half-precision inputs
    are evaluated in float32.

    Args:
        logits: the full :math:`K+1`-way logits (SLRNet main head: constant 1 prepended for background;
            aux head: :math:`1 - \max_k`).
        probs: the probabilities used as pooling weights (the softmax of ``logits`` in SLRNet; gradients
            flow through both arguments).
        focal_power: :math:`p \ge 0`.
        focal_eps: :math:`\epsilon > 0`.
        drop_background: drop channel 0 (official) or return all :math:`K+1` scores.
        return_terms: also return the two terms (:class:`NGWPTerms`).

    Returns:
        The scores :math:`(B, K)` (``(B, K+1)`` with ``drop_background=False``), or :class:`NGWPTerms`
        of three such tensors with ``return_terms=True``.

    Shape:
        - logits, probs: :math:`(B, K+1, h, w)`.
        - output: :math:`(B, K)`.

    Raises:
        TypeError: if ``logits`` or ``probs`` is not floating point.
        ValueError: on wrong ranks, mismatched shapes, fewer than 2 channels with ``drop_background``, a
            negative ``focal_power`` or a non-positive ``focal_eps``.

    Example:
        >>> logits = torch.zeros(1, 3, 4, 4)               # uniform: P = 1/3, nGWP term = 0
        >>> s = ngwp_pooling(logits, logits.softmax(dim=1))
        >>> penalty = (2 / 3) ** 3 * torch.tensor(0.01 + 1 / 3).log()
        >>> s.shape, torch.allclose(s, penalty.expand(1, 2))
        (torch.Size([1, 2]), True)

    Source:
        1-Stage-WSeg, Araslanov & Roth CVPR 2020 (github.com/visinf/1-stage-wseg); SLRNet, Pan et al.
        IJCV 2022, github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``Net.classifier_forward``) and
        ``models/single_stage.py`` (``focal_loss``).
    """
    check_tensor(logits, "logits", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_tensor(probs, "probs", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_shape(probs, "probs", tuple(logits.shape), "(B, K+1, h, w) = logits.shape")
    if drop_background and logits.shape[1] < 2:
        raise ValueError(f"logits: expected at least 2 channels with drop_background=True, got {logits.shape[1]}")
    _check_hparams(focal_power, focal_eps)
    if logits.dtype in (torch.float16, torch.bfloat16) or probs.dtype in (torch.float16, torch.bfloat16):
        logits, probs = logits.float(), probs.float()
    if drop_background:                       # the background entry is discarded: do not compute it
        logits, probs = logits[:, 1:], probs[:, 1:]
    lf, pf = logits.flatten(2), probs.flatten(2)
    mass = pf.sum(-1)
    pooled = (lf * pf).sum(-1) / (1.0 + mass)
    m = pf.mean(-1)
    penalty = (1.0 - m).pow(focal_power) * torch.log(focal_eps + m)
    scores = pooled + penalty
    return NGWPTerms(scores, pooled, penalty) if return_terms else scores


def ngwp_score(logits: Tensor, probs: Tensor, *, focal_power: float = 3.0, focal_eps: float = 0.01,
               drop_background: bool = True) -> Tensor:
    r"""The nGWP class scores alone: :func:`ngwp_pooling` with ``return_terms=False`` (the spec's name).

    .. math::

        s_k = \frac{\sum_n \bar L_{k,n} P_{k,n}}{1 + \sum_n P_{k,n}} + (1 - \bar m_k)^{p} \log(\epsilon + \bar m_k)

    Args:
        logits: :math:`K+1`-way logits.
        probs: pooling weights (softmax of the logits).
        focal_power: :math:`p`.
        focal_eps: :math:`\epsilon`.
        drop_background: drop channel 0.

    Returns:
        The scores.

    Shape:
        - logits, probs: :math:`(B, K+1, h, w)`.
        - output: :math:`(B, K)`.

    Raises:
        TypeError, ValueError: see :func:`ngwp_pooling`.

    Example:
        >>> x = torch.randn(2, 21, 8, 8)
        >>> ngwp_score(x, x.softmax(dim=1)).shape
        torch.Size([2, 20])

    Source:
        SLRNet, github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``classifier_forward``).
    """
    return ngwp_pooling(logits, probs, focal_power=focal_power, focal_eps=focal_eps,
                        drop_background=drop_background)  # type: ignore[return-value]


class NGWPPooling(nn.Module):
    r"""Module form of :func:`ngwp_pooling`: nGWP + focal size penalty → :math:`K` classification logits.

    .. math::

        s_k = \frac{\sum_n \bar L_{k,n} P_{k,n}}{1 + \sum_n P_{k,n}} + (1 - \bar m_k)^{p} \log(\epsilon + \bar m_k)

    Args:
        focal_power: :math:`p` (3 in 1-Stage-WSeg / SLRNet).
        focal_eps: :math:`\epsilon` (0.01).
        drop_background: drop channel 0 (official).
        return_terms: return :class:`NGWPTerms` instead of the scores.

    Shape:
        - logits, probs: :math:`(B, K+1, h, w)`.
        - output: :math:`(B, K)` (feed to ``F.multilabel_soft_margin_loss``).

    Raises:
        ValueError: see :func:`ngwp_pooling`.

    Example:
        >>> pool = NGWPPooling()
        >>> x = torch.randn(2, 21, 81, 81)
        >>> scores = pool(x, x.softmax(dim=1))
        >>> torch.nn.functional.multilabel_soft_margin_loss(scores, torch.ones(2, 20)).shape
        torch.Size([])

    Source:
        1-Stage-WSeg (Araslanov & Roth CVPR 2020); SLRNet, github.com/DesertsP/SLRNet, ``models/slrnet.py``.
    """

    def __init__(self, focal_power: float = 3.0, focal_eps: float = 0.01, drop_background: bool = True,
                 return_terms: bool = False) -> None:
        super().__init__()
        _check_hparams(focal_power, focal_eps)
        self.focal_power = focal_power
        self.focal_eps = focal_eps
        self.drop_background = drop_background
        self.return_terms = return_terms

    def forward(self, logits: Tensor, probs: Tensor) -> Tensor | NGWPTerms:
        """Compute the scores; see :func:`ngwp_pooling`."""
        return ngwp_pooling(logits, probs, focal_power=self.focal_power, focal_eps=self.focal_eps,
                            drop_background=self.drop_background, return_terms=self.return_terms)

    def extra_repr(self) -> str:
        return (f"focal_power={self.focal_power}, focal_eps={self.focal_eps}, "
                f"drop_background={self.drop_background}, return_terms={self.return_terms}")
