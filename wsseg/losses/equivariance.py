"""ViT-PCM's equivariance loss: Keras categorical cross-entropy between two views' patch predictions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import apply_reduction, check_reduction, check_shape, check_tensor
from .pooled_bce import _check_eps, _compute_dtype

__all__ = ["EquivarianceLoss", "equivariance_loss"]


def equivariance_loss(pred: Tensor, target: Tensor, *, eps: float = 1e-7, reduction: str = "mean") -> Tensor:
    r"""Per-patch cross-entropy of the second view's predictions against the first view's merged ones.

    ViT-PCM's :math:`L_{et}`: with :math:`P^{(2)}` the patch-class probabilities of the second view (the
    mosaic forward split back by :func:`wsseg.layers.unmosaic_2x2`) and :math:`Y^{(2)}` the first view's
    predictions mapped to the second view's patch grid and passed through
    :func:`wsseg.pseudo.merge_class_labels`,

    .. math::

        \tilde P_{b,c,i} = \mathrm{clip}\Bigl(\frac{P^{(2)}_{b,c,i}}{\sum_{c'} P^{(2)}_{b,c',i}},
            \epsilon, 1 - \epsilon\Bigr), \qquad
        \ell_{b,i} = -\sum_{c} Y^{(2)}_{b,c,i} \log \tilde P_{b,c,i},

    .. math::

        L_{et} = \frac{1}{B\,h\,w} \sum_{b,i} \ell_{b,i}.

    This is tf.keras 2.x ``backend.categorical_crossentropy`` on probabilities (TF 2.9 in ViT-PCM): the
    prediction is renormalised over the classes, then clipped; unlike the binary version no
    :math:`\epsilon` is added inside the logarithm. ``CategoricalCrossentropy(reduction=NONE)`` returns
    :math:`\ell` per patch and ViT-PCM's ``tf.reduce_mean`` averages over images and patches. A patch with an
    all-zero target (no present class predicted there) contributes 0 but is still counted. Keras's shortcut
    to logits does not apply (the official prediction comes out of a patch extraction, not a softmax op).

    The target is **detached** inside the function (the official target is computed in inference mode
    outside the gradient tape and wrapped in ``tf.stop_gradient``): no gradient reaches it even if it
    requires grad. Soft targets make ``ignore_index`` meaningless; a patch is ignored by giving it an
    all-zero target (then it still counts in the mean) or by weighting ``reduction="none"``.
    Float16/bfloat16 inputs are computed (and returned) in float32.

    Args:
        pred: second-view patch-class probabilities :math:`P^{(2)}` (a softmax over :math:`C` classes,
            background included; renormalised here as in Keras).
        target: aligned, merged first-view probabilities :math:`Y^{(2)}` (each patch a distribution over
            classes or all zeros; not checked).
        eps: the clipping constant :math:`\epsilon` in :math:`[0, 0.5)` (Keras ``epsilon()`` = 1e-7).
        reduction: ``"mean"`` (official: over images and patches), ``"sum"``, or ``"none"`` for the
            per-patch :math:`(B, h, w)` terms :math:`\ell`.

    Returns:
        A scalar, or :math:`(B, h, w)` for ``reduction="none"``.

    Shape:
        - pred: :math:`(B, C, h, w)` (ViT-PCM: :math:`(B, 21, 12, 12)`).
        - target: :math:`(B, C, h, w)`.
        - output: scalar, or :math:`(B, h, w)`.

    Raises:
        TypeError: if ``pred`` or ``target`` is not floating point or ``eps`` is not a number.
        ValueError: if ``pred`` is not 4-D, ``target`` differs in shape, ``eps`` is outside
            :math:`[0, 0.5)` or ``reduction`` is unknown.

    Example:
        >>> pred = torch.tensor([0.4, 0.6, 1.0], dtype=torch.float64).view(1, 3, 1, 1)   # sums to 2
        >>> target = torch.tensor([0.25, 0.0, 0.75], dtype=torch.float64).view(1, 3, 1, 1)
        >>> equivariance_loss(pred, target)           # -(0.25 log 0.2 + 0.75 log 0.5)
        tensor(0.9222, dtype=torch.float64)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_cce_loss``: ``CategoricalCrossentropy(reduction=NONE)``, ``tf.stop_gradient`` on the
        merged target, ``tf.reduce_mean``); Keras 2.9 ``keras/backend.py`` (``categorical_crossentropy``).
    """
    check_tensor(pred, "pred", ndim=4, dims="(B, C, h, w)", dtype="float")
    check_tensor(target, "target", ndim=4, dims="(B, C, h, w)", dtype="float")
    check_shape(target, "target", tuple(pred.shape), "(B, C, h, w) = pred.shape")
    eps = _check_eps(eps)
    check_reduction(reduction)
    p = _compute_dtype(pred)
    y = target.detach().to(dtype=p.dtype)
    p = (p / p.sum(dim=1, keepdim=True)).clamp(eps, 1.0 - eps)
    loss = -(y * torch.log(p)).sum(dim=1)
    return apply_reduction(loss, reduction)


class EquivarianceLoss(nn.Module):
    r"""Module form of :func:`equivariance_loss` (ViT-PCM's :math:`L_{et}`, weight 1).

    .. math::

        L_{et} = -\frac{1}{Bhw} \sum_{b,i} \sum_c Y^{(2)}_{b,c,i}
            \log \mathrm{clip}\Bigl(\frac{P^{(2)}_{b,c,i}}{\sum_{c'} P^{(2)}_{b,c',i}}, \epsilon, 1-\epsilon\Bigr)

    Args:
        eps: clipping constant in :math:`[0, 0.5)` (Keras: 1e-7).
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (per-patch :math:`(B, h, w)`).

    Shape:
        - pred_view2: :math:`(B, C, h, w)` probabilities of the second view.
        - target_view2: :math:`(B, C, h, w)` first-view probabilities, aligned to the second view and merged
          with the labels (detached inside).
        - output: scalar, or :math:`(B, h, w)` for ``reduction="none"``.

    Raises:
        ValueError: on invalid ``eps`` / ``reduction`` here, otherwise see :func:`equivariance_loss`.

    Example:
        >>> loss_fn = EquivarianceLoss()
        >>> p = torch.softmax(torch.randn(4, 21, 12, 12), dim=1)
        >>> float(loss_fn(p, torch.zeros_like(p))) == 0.0      # all-zero targets cost nothing
        True

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_cce_loss``).
    """

    def __init__(self, eps: float = 1e-7, reduction: str = "mean") -> None:
        super().__init__()
        self.eps = _check_eps(eps)
        self.reduction = check_reduction(reduction)

    def forward(self, pred_view2: Tensor, target_view2: Tensor) -> Tensor:
        """Compute the loss; see :func:`equivariance_loss`."""
        return equivariance_loss(pred_view2, target_view2, eps=self.eps, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
