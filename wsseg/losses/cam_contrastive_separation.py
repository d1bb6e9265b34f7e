"""EXPERIMENTAL: contrastive separation of the student CAMs (CoSA's L_csc, assumed margin form)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.multi_scale_cam import minmax_normalize
from ..utils.validation import check_class_target, check_labels, check_reduction, check_tensor

__all__ = ["CAMContrastiveSeparation", "cam_contrastive_separation"]

_EPS = 1e-5  # the min–max normalisation's epsilon (common.md §1)


def _check_margin(margin: float) -> float:
    if not isinstance(margin, (int, float)) or isinstance(margin, bool) or not math.isfinite(margin):
        raise ValueError(f"margin: expected a finite float, got {margin!r}")
    return float(margin)


def cam_contrastive_separation(cam_logits: Tensor, cpl: Tensor, labels: Tensor, *, margin: float,
                               ignore_index: int = 255, reduction: str = "mean") -> Tensor:
    r"""Experimental: push each present class's CAM up on its pseudo-label region and down elsewhere.

    **Assumed formula — not the published method.** CoSA's paper (§3.4) names a loss :math:`L_{csc}` that
    regularises the student CAMs "to contrastively separate the foreground from the background regions",
    but gives no definition that could be verified, and **the released code has no such loss**, so **no
    official reference exists**. This is the spec's margin form (``cosa.md`` §6).

    :math:`\hat M` = the student CAM after ReLU and per-(image, class) min–max normalisation over the CAM
    grid (with gradient, :math:`\epsilon = 10^{-5}`); :math:`Y` = the CPL resized to the CAM grid (nearest).
    For image :math:`b`, with present classes :math:`\mathcal{C}_b = \{c : y_{b,c} = 1\}` (CPL value
    :math:`c` for CAM channel :math:`c - 1`),
    :math:`R_c = \{p : Y(p) = c\}` for :math:`c \in \mathcal{C}_b`, :math:`R_0 = \{p : Y(p) = 0\}`, and
    :math:`N_c = R_0 \cup \bigcup_{c' \in \mathcal{C}_b \setminus \{c\}} R_{c'}` (ignored pixels, and pixels
    labelled with an absent or out-of-range class, belong to no region):

    .. math::

        \mathrm{pos}_{b,c} = \frac{1}{|R_c|}\sum_{p \in R_c} \hat M_c(p),\qquad
        \mathrm{neg}_{b,c} = \frac{1}{|N_c|}\sum_{p \in N_c} \hat M_c(p),

    .. math::

        \ell_{b,c} = \big(1 - \mathrm{pos}_{b,c}\big) + [\,|N_c| > 0\,]\,\max(0, \mathrm{neg}_{b,c} - m),
        \qquad
        L_{csc} = \frac{1}{|\mathcal{P}|}\sum_{(b,c) \in \mathcal{P}} \ell_{b,c},

    over the pairs :math:`\mathcal{P} = \{(b, c) : c \in \mathcal{C}_b, |R_c| > 0\}`; an empty negative
    region makes the negative term 0, and an empty :math:`\mathcal{P}` gives 0 (still differentiable).

    Args:
        cam_logits: raw student CAM logits (no ReLU), at the CAM grid.
        cpl: CAM pseudo label in ``{0..K, ignore_index}`` (0 = background, ``c`` = CAM channel ``c - 1``),
            at any resolution.
        labels: image-level labels in {0, 1} (present = ``> 0``).
        margin: :math:`m`, the negative mean tolerated without penalty (required: the spec suggests 0 but
            gives no source). Penalties are on a [0, 1) scale.
        ignore_index: CPL value that belongs to no region.
        reduction: ``"mean"`` (over :math:`\mathcal{P}`), ``"sum"`` (over :math:`\mathcal{P}`) or ``"none"``:
            the :math:`(B, K)` matrix of :math:`\ell_{b,c}`, **0 for pairs outside** :math:`\mathcal{P}`
            (absent class or empty :math:`R_c`).

    Returns:
        A scalar, or a :math:`(B, K)` tensor for ``reduction="none"``; float32 for half-precision inputs.

    Shape:
        - cam_logits: :math:`(B, K, h, w)`.
        - cpl: :math:`(B, H, W)` integer.
        - labels: :math:`(B, K)`.

    Raises:
        TypeError: if ``cam_logits`` is not floating point or ``cpl`` is not an integer tensor.
        ValueError: on wrong ranks, batch or class-count mismatches, a ``cpl`` value outside
            :math:`[0, K]` other than ``ignore_index``, labels that are not 0/1, a non-finite ``margin`` or an
            unknown ``reduction``.

    Example:
        >>> cam = torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]]])             # already separated: 1 at (0, 0)
        >>> cpl = torch.tensor([[[1, 0], [0, 255]]])
        >>> loss = cam_contrastive_separation(cam, cpl, torch.ones(1, 1), margin=0.0)
        >>> round(loss.item(), 4)                                       # 1 - 4/(4 + 1e-5), neg = 0
        0.0

    Source:
        CoSA, Yang et al. ECCV 2024 (paper §3.4, "Contrastive Separation in CAMs"); not in the released
        code (github.com/youshyee/CoSA); formula assumed by ``cosa.md`` §6.
    """
    check_tensor(cam_logits, "cam_logits", ndim=4, dims="(B, K, h, w)", dtype="float")
    check_tensor(cpl, "cpl", ndim=3, dims="(B, H, W)", dtype="int")
    b, k, h, w = cam_logits.shape
    if cpl.shape[0] != b:
        raise ValueError(f"cpl: expected batch size {b} (that of cam_logits), got {cpl.shape[0]}")
    check_labels(labels, "labels", b, k)
    margin = _check_margin(margin)
    check_reduction(reduction)
    cpl = check_class_target(cpl, "cpl", k + 1, ignore_index)   # values in {0..K, ignore}, any integer dtype

    cam = minmax_normalize(F.relu(cam_logits), eps=_EPS)  # (B, K, h, w), float32 at least
    if cpl.shape[-2:] != (h, w):
        y = F.interpolate(cpl[:, None].to(torch.float32), size=(h, w), mode="nearest")[:, 0].to(torch.long)
    else:
        y = cpl.long()
    kept = y != ignore_index                                                         # (B, h, w)
    present = labels.detach() > 0                                                    # (B, K)
    classes = torch.arange(1, k + 1, device=y.device)
    in_class = (y[:, None] == classes[None, :, None, None]) & kept[:, None]         # (B, K, h, w): R_c
    in_region = ((y == 0) & kept) | (in_class & present[:, :, None, None]).any(dim=1)  # (B, h, w)
    pos_cnt = in_class.sum(dim=(2, 3))
    pos_sum = (cam * in_class).sum(dim=(2, 3))
    # For a present class R_c is part of the union of regions, so N_c = union \ R_c.
    neg_cnt = in_region.sum(dim=(1, 2))[:, None] - pos_cnt
    neg_sum = (cam * in_region[:, None]).sum(dim=(2, 3)) - pos_sum
    pos = pos_sum / pos_cnt.clamp_min(1)
    neg = neg_sum / neg_cnt.clamp_min(1)
    term = (1.0 - pos) + torch.where(neg_cnt > 0, F.relu(neg - margin), torch.zeros_like(neg))
    pair = present & (pos_cnt > 0)
    term = torch.where(pair, term, torch.zeros_like(term))                           # (B, K)
    if reduction == "none":
        return term
    if reduction == "sum":
        return term.sum()
    return term.sum() / pair.sum().clamp_min(1)


class CAMContrastiveSeparation(nn.Module):
    r"""Experimental: module form of :func:`cam_contrastive_separation` (CoSA's :math:`L_{csc}`, assumed).

    No official reference exists (the released CoSA code has no contrastive separation); see the function.

    .. math::

        L_{csc} = \operatorname{mean}_{(b,c)}\Big[(1 - \mathrm{pos}_{b,c})
                  + \max(0, \mathrm{neg}_{b,c} - m)\Big]

    Args:
        margin: :math:`m` (required; the spec suggests 0 without a source).
        ignore_index: CPL value that belongs to no region.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (:math:`(B, K)`, 0 for absent classes and empty
            regions).

    Shape:
        - cam_logits: :math:`(B, K, h, w)`; cpl: :math:`(B, H, W)`; labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B, K)` for ``reduction="none"``.

    Raises:
        ValueError: on a non-finite ``margin`` or an unknown ``reduction``; see the function for the inputs.

    Example:
        >>> loss_fn = CAMContrastiveSeparation(margin=0.0)
        >>> cam = torch.randn(2, 3, 4, 4, requires_grad=True)
        >>> cpl = torch.randint(0, 4, (2, 16, 16))
        >>> loss = loss_fn(cam, cpl, torch.ones(2, 3))
        >>> loss.backward(); cam.grad.shape
        torch.Size([2, 3, 4, 4])

    Source:
        CoSA, Yang et al. ECCV 2024 (paper §3.4); not in github.com/youshyee/CoSA; ``cosa.md`` §6.
    """

    def __init__(self, margin: float, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _check_margin(margin)
        self.ignore_index = int(ignore_index)
        self.reduction = check_reduction(reduction)

    def forward(self, cam_logits: Tensor, cpl: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss; see :func:`cam_contrastive_separation`."""
        return cam_contrastive_separation(cam_logits, cpl, labels, margin=self.margin,
                                          ignore_index=self.ignore_index, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
