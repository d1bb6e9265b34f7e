"""SLRNet's cross-view mask consistency ("reg1"): L1 between the two views' foreground probabilities."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import apply_reduction, check_labels, check_reduction, check_shape, check_tensor

__all__ = ["MaskConsistencyLoss", "mask_consistency_loss"]


class _SelectedL1(torch.autograd.Function):
    """``scale * sum_{b,k} w_bk |p1[b, k+1] - p2[b, k+1]|`` over the channels with ``w_bk != 0`` only.

    The other channels contribute 0 to the value and to the gradients (as in the full weighted map, where
    their gradient is ``0 * sign``); the gradients are written into zero tensors at the selected channels.
    """

    @staticmethod
    def forward(ctx, probs1, probs2, weights, scale):  # noqa: ANN001, ANN205
        b_idx, k_idx = (weights != 0).nonzero(as_tuple=True)
        k_idx = k_idx + 1
        diff = probs1[b_idx, k_idx] - probs2[b_idx, k_idx]  # (M, h, w)
        w = weights[b_idx, k_idx - 1][:, None, None]
        ctx.save_for_backward(diff, w, b_idx, k_idx)
        ctx.scale, ctx.shape = scale, probs1.shape
        return (diff.abs() * w).sum() * scale

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        diff, w, b_idx, k_idx = ctx.saved_tensors
        vals = diff.sign().mul_(w).mul_(grad * ctx.scale)
        g1 = torch.zeros(ctx.shape, dtype=vals.dtype, device=vals.device)
        g2 = torch.zeros(ctx.shape, dtype=vals.dtype, device=vals.device)
        g1[b_idx, k_idx] = vals
        g2[b_idx, k_idx] = vals.neg_()
        return g1, g2, None, None


def mask_consistency_loss(probs1: Tensor, probs2_inv: Tensor, labels: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""L1 distance between the foreground probabilities of two views, restricted to the image's classes.

    With :math:`P^{(1)}` the view-1 probabilities and :math:`\mathrm{inv}(P^{(2)})` the view-2 probabilities
    mapped back to the view-1 grid (:func:`wsseg.layers.inverse_view`), both over :math:`K+1` channels
    (channel 0 = background, ignored), and :math:`y` the multi-hot image labels:

    .. math::

        L_{mask} = \frac{1}{B\,K\,h\,w} \sum_{b=1}^{B} \sum_{k=1}^{K} \sum_{n}
            y_{b,k}\,\bigl|P^{(1)}_{b,k,n} - \mathrm{inv}(P^{(2)})_{b,k,n}\bigr|.

    The denominator counts **all** :math:`K` foreground channels and all pixels, also those of absent
    classes (official ``torch.mean``). Gradients reach both views (at equal values the L1 gradient is 0).
    For ``"mean"`` / ``"sum"`` only the channels of the image's classes are read (the others contribute 0
    to the value and the gradient).

    Args:
        probs1: view-1 probabilities (softmax over :math:`K+1` channels).
        probs2_inv: view-2 probabilities on the view-1 grid.
        labels: image-level labels :math:`y` (multi-hot; any numeric dtype, used as a weight).
        reduction: ``"mean"`` (official, divides by :math:`BKhw`), ``"sum"``, or ``"none"`` for the
            weighted per-element map.

    Returns:
        A scalar, or a :math:`(B, K, h, w)` map for ``reduction="none"``.

    Shape:
        - probs1, probs2_inv: :math:`(B, K+1, h, w)`.
        - labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B, K, h, w)`.

    Raises:
        TypeError: if the probabilities are not floating point or ``labels`` is not a tensor.
        ValueError: on wrong ranks, mismatched shapes, ``labels`` not :math:`(B, K)` or an unknown
            ``reduction``.

    Example:
        >>> p1 = torch.tensor([0.2, 0.5, 0.3]).view(1, 3, 1, 1)
        >>> p2 = torch.tensor([0.1, 0.3, 0.6]).view(1, 3, 1, 1)
        >>> mask_consistency_loss(p1, p2, torch.tensor([[1.0, 0.0]]))    # |0.5 - 0.3| * 1 / 2
        tensor(0.1000)

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``Net.forward``,
        ``reg_loss``).
    """
    check_tensor(probs1, "probs1", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_tensor(probs2_inv, "probs2_inv", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_shape(probs2_inv, "probs2_inv", tuple(probs1.shape), "(B, K+1, h, w) = probs1.shape")
    if probs1.shape[1] < 2:
        raise ValueError(f"probs1: expected at least 2 channels (background + foreground), got {probs1.shape[1]}")
    check_labels(labels, "labels", probs1.shape[0], probs1.shape[1] - 1)
    check_reduction(reduction)
    weights = labels.to(probs1.dtype)
    if reduction != "none" and probs1.numel():
        # only the channels of the image's classes carry a nonzero term (and gradient): gather them instead of
        # forming the (B, K, h, w) weighted map; same value and gradients (0 on the other channels)
        scale = 1.0 / (probs1.shape[0] * (probs1.shape[1] - 1) * probs1.shape[2] * probs1.shape[3]) \
            if reduction == "mean" else 1.0
        return _SelectedL1.apply(probs1, probs2_inv, weights, scale)
    diff = (probs1[:, 1:] - probs2_inv[:, 1:]).abs()
    loss = diff * weights[:, :, None, None]
    return apply_reduction(loss, reduction)


class MaskConsistencyLoss(nn.Module):
    r"""Module form of :func:`mask_consistency_loss` (SLRNet's ``reg1``, weight 4 in the configs).

    .. math::

        L_{mask} = \frac{1}{BKhw} \sum_{b,k \ge 1,n} y_{b,k}\,
            \bigl|P^{(1)}_{b,k,n} - \mathrm{inv}(P^{(2)})_{b,k,n}\bigr|

    Args:
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (per-element :math:`(B, K, h, w)` map).

    Shape:
        - probs1, probs2_inv: :math:`(B, K+1, h, w)`; labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B, K, h, w)` for ``reduction="none"``.

    Raises:
        ValueError: see :func:`mask_consistency_loss`.

    Example:
        >>> loss_fn = MaskConsistencyLoss()
        >>> p = torch.softmax(torch.randn(2, 21, 81, 81), dim=1)
        >>> float(loss_fn(p, p, torch.ones(2, 20)))
        0.0

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, probs1: Tensor, probs2_inv: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss; see :func:`mask_consistency_loss`."""
        return mask_consistency_loss(probs1, probs2_inv, labels, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
