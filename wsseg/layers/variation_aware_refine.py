"""Variation-aware refinement (VARM) of class maps, from TSCD (AAAI 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsseg.layers._neighbors import (
    check_bool,
    check_dilations,
    check_num_iter,
    check_positive,
    check_refiner_inputs,
    gather_padded,
    local_std,
    refine_with_kernel,
    replicate_pad,
)

__all__ = ["variation_aware_refine", "VariationAwareRefine"]

_DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)


def _varm_kernel(image: Tensor, dilations: Sequence[int], appearance_scale: float, variation_weight: float,
                 eps: float, clip_negative: bool, renormalize: bool) -> Tensor:
    """VARM kernel ``W (B, 1, K, h, w)`` (canonical neighbour order); sums to ``1 - variation_weight``.

    ``clip_negative`` clamps ``W`` at 0 first, then ``renormalize`` divides by ``Σ_k W_k``.
    """
    h, w = image.shape[-2:]
    pad = max(dilations)
    padded = replicate_pad(image, pad)  # (B, 3, h + 2p, w + 2p)
    neighbors = gather_padded(padded, dilations, pad, (h, w))  # J_k = N_k(I): (B, 3, K, h, w)
    std = local_std(neighbors, unbiased=True)  # over the K neighbours, centre excluded
    # (λ |J_k - I| / (σ + eps))² averaged over the colour channels, computed in place as
    # (J_k - I)² · [λ² / (3 (σ + eps)²)] summed over the channels
    scale = std.add_(eps).square_().mul_(image.shape[1] / appearance_scale**2).reciprocal_()
    logits = neighbors.sub_(image.unsqueeze(2)).square_().mul_(scale).sum(dim=1, keepdim=True).neg_()
    kernel = torch.softmax(logits, dim=2)
    del logits, neighbors

    # Squared forward differences of each shifted image J_k, as in the official code: within the h×w
    # frame of J_k the last row (column) has difference 0. Because J_k(p) = P(p + pad + o_k) for the
    # padded image P, the differences are computed once on P (colour-averaged, one channel) and gathered
    # like any other map; the border rule is then applied on the output frame.
    diff_row = padded.new_zeros(padded.shape[0], 1, *padded.shape[-2:])
    diff_col = torch.zeros_like(diff_row)
    diff_row[:, :, :-1, :] = (padded[:, :, :-1, :] - padded[:, :, 1:, :]).square_().mean(dim=1, keepdim=True)
    diff_col[:, :, :, :-1] = (padded[:, :, :, :-1] - padded[:, :, :, 1:]).square_().mean(dim=1, keepdim=True)
    variation = gather_padded(diff_row, dilations, pad, (h, w))  # (B, 1, K, h, w)
    variation[..., -1, :] = 0
    variation_col = gather_padded(diff_col, dilations, pad, (h, w))
    variation_col[..., :, -1] = 0
    variation.add_(variation_col)
    del variation_col

    kernel.sub_(torch.softmax(variation, dim=2), alpha=variation_weight)
    if clip_negative:
        kernel.clamp_(min=0)
    if renormalize:
        kernel.div_(kernel.sum(dim=2, keepdim=True).clamp_(min=torch.finfo(kernel.dtype).tiny))
    return kernel


def variation_aware_refine(image: Tensor, probs: Tensor, *, dilations: Sequence[int] = _DEFAULT_DILATIONS,
                           num_iter: int = 10, appearance_scale: float = 4.0, variation_weight: float = 0.01,
                           eps: float = 1e-8, clip_negative: bool = False, renormalize: bool = False) -> Tensor:
    r"""Refine class maps by variation-aware propagation (VARM, TSCD).

    Parameter-free, iterative local propagation of class-probability maps with PAR's appearance kernel
    in which neighbours lying on strong image variation (edges, texture) are down-weighted. Same 48
    neighbours as PAR (8 per dilation, replicate padding); :math:`J_k = N_k(I)` is the image shifted to
    neighbour ``k`` and :math:`\sigma_c(p)` the **unbiased** standard deviation of
    :math:`J_{k,c}(p)` over ``k`` (centre excluded). With :math:`\lambda` = ``appearance_scale`` (4) and
    :math:`w` = ``variation_weight`` (0.01):

    .. math::

        a_k(p) &= -\frac{1}{3}\sum_c \left(\lambda\,\frac{|J_{k,c}(p) - I_c(p)|}{\sigma_c(p) + \epsilon}
                  \right)^2 \\
        V_k(p) &= \frac{1}{3}\sum_c \left[(J_{k,c}(p) - J_{k,c}(p + e_{row}))^2
                  + (J_{k,c}(p) - J_{k,c}(p + e_{col}))^2\right] \\
        W_k(p) &= \operatorname{softmax}_k a_k(p) - w\, \operatorname{softmax}_k V_k(p), \\
        Q &\leftarrow \sum_k N_k(Q) \odot W_k \quad (T = \texttt{num_iter} \text{ times}),

    where on the last row (column) of the frame the forward difference is 0. ``probs`` is first resized
    to the image size (bilinear, ``align_corners=True``). Every channel is refined independently with the
    same kernel, so a zero channel stays zero.

    Official quirks (kept by default): note the **minus** sign. :math:`\sum_k W_k = 1 - w = 0.99`
    exactly, so the mass of ``Q`` shrinks by ``0.99`` per step (``0.99**10 ≈ 0.904``); the output is not
    re-normalised. Because the ×4 appearance softmax is very peaked, most weights are slightly
    **negative** (about ``-w/48``). Only the argmax is used downstream. The one-sided (forward)
    differences make ``V`` — and hence VARM — not exactly equivariant to image flips, unlike PAR and
    PAMR (exact with ``variation_weight=0``). Unlike the appearance term,
    ``V`` depends on the intensity scale, so pass the image in [0, 1] (TSCD de-normalises with uint8
    truncation, see :func:`wsseg.utils.denormalize`).

    Options (wsseg additions, [assumed] semantics): ``clip_negative=True`` clamps ``W`` at 0;
    ``renormalize=True`` divides ``W`` by :math:`\sum_k W_k` so that it sums to 1. With both, the clamp
    is applied first (so the kernel is a non-negative partition of unity).

    No gradient: runs under :func:`torch.no_grad` and returns a detached tensor; computed in float32
    (float64 if an input is float64) with autocast disabled and cast back to ``probs.dtype``.

    Args:
        image: de-normalised RGB image in [0, 1] (TSCD: at half the crop resolution).
        probs: class probabilities, any resolution (TSCD: ``1 + #present classes`` channels).
        dilations: dilations of the 3×3 stencil; ``8·len(dilations)`` neighbours.
        num_iter: number of propagation steps ``T`` (10).
        appearance_scale: multiplier :math:`\lambda` of the normalised colour difference (4, i.e. PAR's
            form with ``w1 = 0.25``).
        variation_weight: weight :math:`w` of the subtracted variation softmax (0.01).
        eps: added to the standard deviation (1e-8).
        clip_negative: clamp negative kernel weights at 0 (not in the official code).
        renormalize: divide the kernel by its sum over the neighbours (not in the official code).

    Returns:
        The refined maps, same dtype as ``probs``.

    Shape:
        - image: :math:`(B, 3, H, W)`, values in [0, 1]
        - probs: :math:`(B, C, h, w)` (any ``h, w``)
        - output: :math:`(B, C, H, W)`

    Raises:
        TypeError: if ``image``/``probs`` is not a tensor or not floating point, or a hyperparameter has
            the wrong type.
        ValueError: if ``image``/``probs`` is not 4-D, ``image`` has not 3 channels, the batch sizes or
            devices differ, or a hyperparameter is out of range.

    Example:
        >>> image = torch.rand(2, 3, 32, 32)
        >>> probs = torch.rand(2, 4, 16, 16).softmax(dim=1)
        >>> out = wsseg.layers.variation_aware_refine(image, probs, num_iter=3)
        >>> out.shape
        torch.Size([2, 4, 32, 32])
        >>> # the mass shrinks by 0.99 per iteration
        >>> torch.allclose(out.sum(dim=1), torch.full((2, 32, 32), 0.99 ** 3))
        True

    Source:
        TSCD, Xu et al., "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic
        Segmentation", AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        ``SCD-AAAI2023/network/VARM.py``.
    """
    check_refiner_inputs(image, probs)
    dilations = check_dilations(dilations)
    num_iter = check_num_iter(num_iter)
    appearance_scale = check_positive(appearance_scale, "appearance_scale")
    variation_weight = check_positive(variation_weight, "variation_weight", allow_zero=True)
    eps = check_positive(eps, "eps", allow_zero=True)
    clip_negative = check_bool(clip_negative, "clip_negative")
    renormalize = check_bool(renormalize, "renormalize")
    return refine_with_kernel(image, probs, dilations, num_iter,
                              lambda img: _varm_kernel(img, dilations, appearance_scale, variation_weight, eps,
                                                       clip_negative, renormalize))


class VariationAwareRefine(nn.Module):
    r"""Module form of :func:`variation_aware_refine` (VARM, TSCD): parameter-free, no gradient.

    See :func:`variation_aware_refine` for the equations and the official quirks (kernel sums to
    ``1 - variation_weight = 0.99`` and has negative entries; the mass shrinks by ``0.99**num_iter``).

    Args:
        dilations: dilations of the 3×3 stencil (``(1, 2, 4, 8, 12, 24)``).
        num_iter: number of propagation steps (10).
        appearance_scale: multiplier of the normalised colour difference (4.0).
        variation_weight: weight of the subtracted variation softmax (0.01).
        eps: added to the standard deviation (1e-8).
        clip_negative: clamp negative kernel weights at 0 (wsseg option; official: False).
        renormalize: divide the kernel by its sum, after clipping (wsseg option; official: False).

    Shape:
        - image: :math:`(B, 3, H, W)`, values in [0, 1]
        - probs: :math:`(B, C, h, w)`
        - output: :math:`(B, C, H, W)`

    Raises:
        ValueError: if a hyperparameter is out of range (at construction); see
            :func:`variation_aware_refine` for the input checks in ``forward``.

    Example:
        >>> refine = wsseg.layers.VariationAwareRefine(num_iter=2)
        >>> refine(torch.rand(1, 3, 24, 20), torch.rand(1, 3, 12, 10)).shape
        torch.Size([1, 3, 24, 20])

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        ``SCD-AAAI2023/network/VARM.py``.
    """

    def __init__(self, dilations: Sequence[int] = _DEFAULT_DILATIONS, num_iter: int = 10,
                 appearance_scale: float = 4.0, variation_weight: float = 0.01, eps: float = 1e-8,
                 clip_negative: bool = False, renormalize: bool = False) -> None:
        super().__init__()
        self.dilations = check_dilations(dilations)
        self.num_iter = check_num_iter(num_iter)
        self.appearance_scale = check_positive(appearance_scale, "appearance_scale")
        self.variation_weight = check_positive(variation_weight, "variation_weight", allow_zero=True)
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.clip_negative = check_bool(clip_negative, "clip_negative")
        self.renormalize = check_bool(renormalize, "renormalize")

    def forward(self, image: Tensor, probs: Tensor) -> Tensor:
        """Refine ``probs (B, C, h, w)`` with ``image (B, 3, H, W)`` in [0, 1]; returns ``(B, C, H, W)``."""
        return variation_aware_refine(image, probs, dilations=self.dilations, num_iter=self.num_iter,
                                      appearance_scale=self.appearance_scale,
                                      variation_weight=self.variation_weight, eps=self.eps,
                                      clip_negative=self.clip_negative, renormalize=self.renormalize)

    def extra_repr(self) -> str:
        return (f"dilations={self.dilations}, num_iter={self.num_iter}, "
                f"appearance_scale={self.appearance_scale}, variation_weight={self.variation_weight}, "
                f"eps={self.eps}, clip_negative={self.clip_negative}, renormalize={self.renormalize}")
