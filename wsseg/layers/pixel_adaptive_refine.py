"""Pixel-adaptive refinement (PAR) of class maps with an image-appearance kernel (AFA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wsseg.layers._neighbors import (
    check_dilations,
    check_num_iter,
    check_positive,
    check_refiner_inputs,
    gather_neighbors,
    local_std,
    positional_distances,
    refine_with_kernel,
)

__all__ = ["pixel_adaptive_refine", "PixelAdaptiveRefine"]

_DEFAULT_DILATIONS = (1, 2, 4, 8, 12, 24)


def _par_kernel(image: Tensor, dilations: Sequence[int], w_app: float, w_pos: float, eps: float) -> Tensor:
    """PAR kernel ``W (B, 1, K, h, w)`` in the canonical neighbour order of ``_neighbors``.

    ``image`` must already be in the compute dtype. ``W`` sums to ``1 + w_pos`` over ``K``.
    """
    neighbors = gather_neighbors(image, dilations)  # (B, 3, K, h, w)
    std = local_std(neighbors, unbiased=True)  # (B, 3, 1, h, w), 48 samples, centre excluded
    # (|N_k(I) - I| / ((σ + eps) w_app))² averaged over the colour channels, computed in place as
    # (N_k(I) - I)² · [1 / (3 ((σ + eps) w_app)²)] summed over the channels
    scale = std.add_(eps).mul_(w_app).square_().mul_(image.shape[1]).reciprocal_()
    logits = neighbors.sub_(image.unsqueeze(2)).square_().mul_(scale).sum(dim=1, keepdim=True).neg_()
    kernel = torch.softmax(logits, dim=2)
    # positional term: constant over pixels, computed in float64 then cast
    dist = positional_distances(dilations, dtype=torch.float64, device=image.device)
    pos_logits = -(dist / (dist.std() + eps) / w_app) ** 2
    pos = torch.softmax(pos_logits, dim=0).to(kernel.dtype)
    return kernel.add_(pos.view(1, 1, -1, 1, 1), alpha=w_pos)


def pixel_adaptive_refine(image: Tensor, probs: Tensor, *, dilations: Sequence[int] = _DEFAULT_DILATIONS,
                          num_iter: int = 10, w_app: float = 0.3, w_pos: float = 0.01,
                          eps: float = 1e-8) -> Tensor:
    r"""Refine class maps by pixel-adaptive propagation with an appearance kernel (PAR).

    Parameter-free, iterative propagation used by AFA/ToCo to make CAM-derived maps follow local colour
    structure. For every pixel ``p`` the neighbours ``k`` are the 8 non-centre positions of a 3×3 stencil
    dilated by each ``d`` in ``dilations`` (48 for the default), read with replicate padding. With
    :math:`\sigma_c(p)` the **unbiased** standard deviation of the 48 neighbour values of colour channel
    ``c`` (centre excluded) and :math:`\delta_k` the length of offset ``k`` (``d`` axial, ``d√2``
    diagonal) with standard deviation :math:`\sigma_\delta` over the 48 offsets:

    .. math::

        a_k(p) &= -\frac{1}{3}\sum_c \left(\frac{|I_c(p + o_k) - I_c(p)|}
                  {(\sigma_c(p) + \epsilon)\, w_{app}}\right)^2, \\
        b_k &= -\left(\frac{\delta_k}{(\sigma_\delta + \epsilon)\, w_{app}}\right)^2, \\
        W_k(p) &= \operatorname{softmax}_k a_k(p) + w_{pos}\, \operatorname{softmax}_k b_k, \\
        Q &\leftarrow \sum_k N_k(Q) \odot W_k \quad (T = \texttt{num_iter} \text{ times}).

    ``probs`` is first resized to the image size (bilinear, ``align_corners=True``). Every channel is
    refined independently with the same kernel, so a zero channel stays zero.

    Official quirk (kept): :math:`\sum_k W_k = 1 + w_{pos} = 1.01`, so the total mass of ``Q`` grows by
    ``1.01`` per iteration (``1.01**10 ≈ 1.105``); the output is **not** re-normalised. Harmless for an
    argmax, relevant if the output is read as probabilities. The appearance term is invariant to the
    intensity scale of the image (up to ``eps``), so any consistent image range works.

    No gradient: runs under :func:`torch.no_grad` and returns a detached tensor. The kernel and the
    iterations are computed in float32 (float64 if an input is float64), autocast disabled, and the
    result is cast back to ``probs.dtype``.

    Args:
        image: the image, any consistent intensity range (AFA passes it at half the crop resolution).
        probs: class maps (e.g. softmax probabilities), any resolution.
        dilations: dilations of the 3×3 stencil; ``8·len(dilations)`` neighbours.
        num_iter: number of propagation steps ``T`` (AFA: 10 on VOC, 15 on COCO).
        w_app: temperature ``w1`` of the appearance and positional logits (official 0.3).
        w_pos: weight of the positional softmax (``w2``, called ``w3`` in parts of AFA; official 0.01).
        eps: added to the standard deviations.

    Returns:
        The refined maps, same dtype as ``probs``.

    Shape:
        - image: :math:`(B, 3, H, W)`
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
        >>> out = wsseg.layers.pixel_adaptive_refine(image, probs, num_iter=3)
        >>> out.shape
        torch.Size([2, 4, 32, 32])
        >>> # the mass grows by 1.01 per iteration
        >>> torch.allclose(out.sum(dim=1), torch.full((2, 32, 32), 1.01 ** 3))
        True

    Source:
        AFA, Ru et al., "Learning Affinity from Attention", CVPR 2022; github.com/rulixiang/afa,
        ``wetr/PAR.py`` (copied in ToCo / ``youshyee/CoSA`` ``models/PAR.py``).
    """
    check_refiner_inputs(image, probs)
    dilations = check_dilations(dilations)
    num_iter = check_num_iter(num_iter)
    w_app = check_positive(w_app, "w_app")
    w_pos = check_positive(w_pos, "w_pos", allow_zero=True)
    eps = check_positive(eps, "eps", allow_zero=True)
    return refine_with_kernel(image, probs, dilations, num_iter,
                              lambda img: _par_kernel(img, dilations, w_app, w_pos, eps))


class PixelAdaptiveRefine(nn.Module):
    r"""Module form of :func:`pixel_adaptive_refine` (PAR): parameter-free, no gradient.

    See :func:`pixel_adaptive_refine` for the equations and the official quirk (the kernel sums to
    ``1 + w_pos = 1.01``, so the mass grows by ``1.01**num_iter``).

    Args:
        dilations: dilations of the 3×3 stencil (official ``(1, 2, 4, 8, 12, 24)``).
        num_iter: number of propagation steps (AFA: 10 on VOC, 15 on COCO).
        w_app: appearance/positional temperature ``w1`` (0.3).
        w_pos: positional softmax weight ``w2`` (0.01).
        eps: added to the standard deviations (1e-8).

    Shape:
        - image: :math:`(B, 3, H, W)`
        - probs: :math:`(B, C, h, w)`
        - output: :math:`(B, C, H, W)`

    Raises:
        ValueError: if a hyperparameter is out of range (at construction); see
            :func:`pixel_adaptive_refine` for the input checks in ``forward``.

    Example:
        >>> refine = wsseg.layers.PixelAdaptiveRefine(num_iter=2)
        >>> refine(torch.rand(1, 3, 24, 20), torch.rand(1, 3, 12, 10)).shape
        torch.Size([1, 3, 24, 20])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, ``wetr/PAR.py``.
    """

    def __init__(self, dilations: Sequence[int] = _DEFAULT_DILATIONS, num_iter: int = 10, w_app: float = 0.3,
                 w_pos: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__()
        self.dilations = check_dilations(dilations)
        self.num_iter = check_num_iter(num_iter)
        self.w_app = check_positive(w_app, "w_app")
        self.w_pos = check_positive(w_pos, "w_pos", allow_zero=True)
        self.eps = check_positive(eps, "eps", allow_zero=True)

    def forward(self, image: Tensor, probs: Tensor) -> Tensor:
        """Refine ``probs (B, C, h, w)`` with ``image (B, 3, H, W)``; returns ``(B, C, H, W)``."""
        return pixel_adaptive_refine(image, probs, dilations=self.dilations, num_iter=self.num_iter,
                                     w_app=self.w_app, w_pos=self.w_pos, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"dilations={self.dilations}, num_iter={self.num_iter}, w_app={self.w_app}, "
                f"w_pos={self.w_pos}, eps={self.eps}")
