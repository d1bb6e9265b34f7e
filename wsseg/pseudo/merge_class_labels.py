"""ViT-PCM's ``merge_class_labels``: patch-class probabilities conditioned on the image-level labels."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import check_labels, check_tensor

__all__ = ["MergeClassLabels", "divide_no_nan", "merge_class_labels"]


def divide_no_nan(num: Tensor, den: Tensor) -> Tensor:
    r"""Element-wise ``num / den`` with 0 wherever ``den == 0`` (TensorFlow's ``tf.math.divide_no_nan``).

    .. math::

        \mathrm{div}(a, b) = \begin{cases} a / b & b \ne 0 \\ 0 & b = 0 \end{cases}

    The result is 0 where ``den == 0`` even when ``num`` is infinite or NaN. The gradient is finite
    everywhere: 0 with respect to both arguments where ``den == 0`` (as TensorFlow's ``DivNoNan``
    gradient), the ordinary quotient gradient elsewhere.

    Args:
        num: numerator.
        den: denominator, broadcastable against ``num`` (used inside :func:`merge_class_labels` with
            ``keepdim`` reductions; this internal helper does not check shapes).

    Returns:
        The quotient, of the broadcast shape.

    Example:
        >>> divide_no_nan(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0, 0.5]))
        tensor([0.5000, 0.0000, 6.0000])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``merge_class_labels`` uses ``tf.math.divide_no_nan``).
    """
    zero = den == 0
    # mask both operands (not only the quotient) so that the backward pass never forms 0 * inf or 0 * nan
    num = torch.where(zero, torch.zeros((), dtype=num.dtype, device=num.device), num)
    return num / torch.where(zero, torch.ones_like(den), den)


def merge_class_labels(probs: Tensor, labels: Tensor) -> Tensor:
    r"""Condition patch-class probabilities on the image labels (ViT-PCM's targets and pseudo labels).

    For each image :math:`b`, with :math:`P_{b,c,i}` the probability of class :math:`c` (background
    included, :math:`C = K + 1`) at patch :math:`i` and :math:`y_{b,c}` the multi-hot image labels
    (background entry included):

    .. math::

        Q_{b,c,i} = y_{b,c}\,P_{b,c,i}, \qquad
        R_{b,c,i} = \mathrm{div}\Bigl(Q_{b,c,i},\ \max_{j} Q_{b,c,j}\Bigr), \qquad
        M_{b,c,i} = \mathrm{div}\Bigl(R_{b,c,i},\ \sum_{c'} R_{b,c',i}\Bigr),

    where :math:`\mathrm{div}` is ``divide_no_nan`` (0 where the denominator is 0). Absent classes are
    zeroed, each present class's map is rescaled to peak 1 over the grid, and every patch is renormalised
    to a distribution over classes. A patch where every present class has probability 0 (or an image
    without any label) gets all zeros, not NaN.

    Consequences worth knowing: the output does not depend on a per-(image, class) positive rescaling of
    ``probs`` (the max division cancels it), so any positive label value acts as "present"; labels should
    be 0/1 (values are not checked, to avoid a device synchronisation).

    The function is differentiable (the max passes the gradient to its arg-max patch), but ViT-PCM only
    uses it on detached predictions: as the equivariance target (inside ``tf.stop_gradient``) and to build
    the pseudo labels (BPMs) at inference. Call it under ``torch.no_grad()`` there.

    Args:
        probs: per-patch class probabilities (the softmax over :math:`C` classes), channels-first
            :math:`(B, C, h, w)` (primary layout) or token layout :math:`(B, N, C)`.
        labels: image-level labels :math:`y` **including the background entry** (channel 0 in wsseg;
            ViT-PCM sets it from the mask, use 1 for official image-level labels). Any numeric or bool
            dtype; cast to ``probs.dtype``.

    Returns:
        :math:`M`, same shape and dtype as ``probs``; each patch sums to 1 over classes or is all zeros.

    Shape:
        - probs: :math:`(B, C, h, w)` or :math:`(B, N, C)`.
        - labels: :math:`(B, C)`.
        - output: same as ``probs``.

    Raises:
        TypeError: if ``probs`` is not a floating-point tensor or ``labels`` is not a tensor.
        ValueError: if ``probs`` is not 3-D or 4-D, or ``labels`` is not :math:`(B, C)`.

    Example:
        >>> p = torch.tensor([[0.6, 0.2], [0.2, 0.3], [0.2, 0.5]]).view(1, 3, 1, 2)   # C=3, 1x2 grid
        >>> merge_class_labels(p, torch.tensor([[1, 0, 1]])).view(3, 2)
        tensor([[0.7143, 0.2500],
                [0.0000, 0.0000],
                [0.2857, 0.7500]])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``merge_class_labels``; used in ``compute_cce_loss``, ``VITPCM.infer`` and ``compute_metrics``;
        the official layout is channels-last :math:`(B, h, w, C)`).
    """
    check_tensor(probs, "probs", ndim=(3, 4), dims="(B, C, h, w) or (B, N, C)", dtype="float")
    if probs.dim() == 4:
        class_dim, grid_dims = 1, (2, 3)
    else:
        class_dim, grid_dims = 2, (1,)
    num_classes = probs.shape[class_dim]
    check_labels(labels, "labels", probs.shape[0], num_classes, values=False)  # any value > 0 = present
    y = labels.to(device=probs.device, dtype=probs.dtype)
    y = y[:, :, None, None] if probs.dim() == 4 else y[:, None, :]
    masked = probs * y
    peaked = divide_no_nan(masked, masked.amax(dim=grid_dims, keepdim=True))
    return divide_no_nan(peaked, peaked.sum(dim=class_dim, keepdim=True))


class MergeClassLabels(nn.Module):
    r"""Module form of :func:`merge_class_labels` (no hyperparameters).

    .. math::

        M_{b,c,i} = \mathrm{div}\Bigl(R_{b,c,i}, \sum_{c'} R_{b,c',i}\Bigr), \quad
        R_{b,c,i} = \mathrm{div}\Bigl(y_{b,c} P_{b,c,i}, \max_j y_{b,c} P_{b,c,j}\Bigr)

    Shape:
        - probs: :math:`(B, C, h, w)` or :math:`(B, N, C)`; labels: :math:`(B, C)` (background included).
        - output: same as ``probs``.

    Raises:
        ValueError: see :func:`merge_class_labels`.

    Example:
        >>> merge = MergeClassLabels()
        >>> p = torch.softmax(torch.randn(2, 21, 24, 24), dim=1)
        >>> y = torch.zeros(2, 21); y[:, 0] = 1; y[:, 5] = 1
        >>> out = merge(p, y)
        >>> bool(torch.allclose(out.sum(1), torch.ones(2, 24, 24))), float(out[:, 1:5].abs().sum())
        (True, 0.0)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``merge_class_labels``).
    """

    def forward(self, probs: Tensor, labels: Tensor) -> Tensor:
        """Merge; see :func:`merge_class_labels`."""
        return merge_class_labels(probs, labels)
