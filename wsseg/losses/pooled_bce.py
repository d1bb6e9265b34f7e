"""ViT-PCM's multi-label BCE on the pooled patch probabilities (Keras ``BinaryCrossentropy`` semantics)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import apply_reduction, check_labels, check_reduction, check_tensor

__all__ = ["PooledBCELoss", "pooled_bce"]


def _check_eps(eps: float) -> float:
    """Check a Keras-style probability clipping constant: a number in ``[0, 0.5)``.

    Raises:
        TypeError: if ``eps`` is not a real number.
        ValueError: if ``eps`` is outside ``[0, 0.5)``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps: expected a float in [0, 0.5), got {type(eps).__name__}")
    if not 0.0 <= float(eps) < 0.5:
        raise ValueError(f"eps: expected a float in [0, 0.5), got {eps}")
    return float(eps)


def _compute_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs are computed in float32 (1 - 1e-7 is not representable in float16/bfloat16)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pooled_bce(pooled: Tensor, labels: Tensor, *, eps: float = 1e-7, reduction: str = "mean") -> Tensor:
    r"""Multi-label binary cross-entropy on pooled class probabilities, exactly as Keras computes it.

    ViT-PCM's :math:`L_{mce}`: with :math:`\hat y_{b,c} \in [0, 1]` the image-level score of class
    :math:`c` (the global max over patches of the per-patch softmax, background included) and
    :math:`y_{b,c} \in \{0, 1\}` the labels (background entry included),

    .. math::

        p_{b,c} = \mathrm{clip}(\hat y_{b,c}, \epsilon, 1 - \epsilon), \qquad
        \ell_{b,c} = -\bigl[y_{b,c} \log(p_{b,c} + \epsilon)
                      + (1 - y_{b,c}) \log(1 - p_{b,c} + \epsilon)\bigr],

    .. math::

        L_{mce} = \frac{1}{BC} \sum_{b,c} \ell_{b,c}.

    This is the tf.keras 2.x ``backend.binary_crossentropy`` on probabilities (TF 2.9 in ViT-PCM): the
    probabilities are clipped **and** :math:`\epsilon` is added inside both logarithms (Keras 3 dropped the
    added :math:`\epsilon`); ``losses.binary_crossentropy`` averages over the classes and ViT-PCM's
    ``tf.reduce_mean`` over the batch. It differs from ``torch.nn.functional.binary_cross_entropy`` (which
    clamps the log at -100): e.g. a present class scored 0 costs :math:`-\log(2\epsilon) \approx 15.4`, not
    100. The clip passes no gradient to scores outside :math:`[\epsilon, 1 - \epsilon]` (as
    ``tf.clip_by_value``). Keras's shortcut to logits does not apply: the pooled scores come from a max,
    not from a sigmoid.

    Labels are multi-hot, so there is no ``ignore_index``; weight classes through ``reduction="none"``.
    Float16/bfloat16 inputs are computed (and returned) in float32.

    Args:
        pooled: image-level class probabilities :math:`\hat y` (ViT-PCM: the global max over patches of the
            patch softmax; APC: an adaptive top-K mean); values outside :math:`[0, 1]` are clipped.
        labels: multi-hot labels :math:`y` **including the background entry**; any numeric or bool dtype
            (soft labels in :math:`[0, 1]` are accepted as in Keras).
        eps: the clipping constant :math:`\epsilon` in :math:`[0, 0.5)` (Keras ``epsilon()`` = 1e-7).
        reduction: ``"mean"`` (official: over batch and classes), ``"sum"``, or ``"none"`` for the
            per-element :math:`(B, C)` terms (``.mean(1)`` of which is Keras's per-sample
            ``Reduction.NONE`` output).

    Returns:
        A scalar, or :math:`(B, C)` for ``reduction="none"``.

    Shape:
        - pooled: :math:`(B, C)`, :math:`C = K + 1`.
        - labels: :math:`(B, C)`.
        - output: scalar, or :math:`(B, C)`.

    Raises:
        TypeError: if ``pooled`` is not floating point, ``labels`` is not a tensor or ``eps`` not a number.
        ValueError: if ``pooled`` is not 2-D, ``labels`` is not :math:`(B, C)` or has a value outside
            :math:`[0, 1]` or NaN (one reduction), ``eps`` is outside :math:`[0, 0.5)` or ``reduction`` is
            unknown.

    Example:
        >>> pooled = torch.tensor([[0.5, 0.9, 0.1]], dtype=torch.float64)
        >>> labels = torch.tensor([[1, 1, 0]])
        >>> pooled_bce(pooled, labels)         # -(log 0.5000001 + log 0.9000001 + log 0.9000001) / 3
        tensor(0.3013, dtype=torch.float64)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_mce_loss``: ``BinaryCrossentropy(reduction=NONE)`` on ``pooled_preds``, then
        ``tf.reduce_mean``); Keras 2.9 ``keras/backend.py`` (``binary_crossentropy``).
    """
    check_tensor(pooled, "pooled", ndim=2, dims="(B, C)", dtype="float")
    check_labels(labels, "labels", pooled.shape[0], pooled.shape[1], soft=True)  # soft targets allowed (Keras)
    eps = _check_eps(eps)
    check_reduction(reduction)
    p = _compute_dtype(pooled)
    y = labels.to(device=p.device, dtype=p.dtype)
    p = p.clamp(eps, 1.0 - eps)
    loss = -(y * torch.log(p + eps) + (1.0 - y) * torch.log(1.0 - p + eps))
    return apply_reduction(loss, reduction)


class PooledBCELoss(nn.Module):
    r"""Module form of :func:`pooled_bce` (ViT-PCM's :math:`L_{mce}`, weight 1).

    .. math::

        L_{mce} = -\frac{1}{BC} \sum_{b,c} \bigl[y_{b,c} \log(p_{b,c} + \epsilon)
            + (1 - y_{b,c}) \log(1 - p_{b,c} + \epsilon)\bigr], \quad
        p = \mathrm{clip}(\hat y, \epsilon, 1 - \epsilon)

    Args:
        eps: clipping constant in :math:`[0, 0.5)` (Keras: 1e-7).
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (per-element :math:`(B, C)`).

    Shape:
        - pooled: :math:`(B, C)` probabilities; labels: :math:`(B, C)` (background included).
        - output: scalar, or :math:`(B, C)` for ``reduction="none"``.

    Raises:
        ValueError: on invalid ``eps`` / ``reduction`` here, otherwise see :func:`pooled_bce`.

    Example:
        >>> loss_fn = PooledBCELoss()
        >>> probs = torch.softmax(torch.randn(2, 21, 24, 24), dim=1)
        >>> labels = torch.zeros(2, 21); labels[:, 0] = 1; labels[0, 3] = 1
        >>> loss = loss_fn(probs.amax(dim=(2, 3)), labels)
        >>> loss.shape, bool(loss > 0)
        (torch.Size([]), True)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py``
        (``compute_mce_loss``).
    """

    def __init__(self, eps: float = 1e-7, reduction: str = "mean") -> None:
        super().__init__()
        self.eps = _check_eps(eps)
        self.reduction = check_reduction(reduction)

    def forward(self, pooled: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss; see :func:`pooled_bce`."""
        return pooled_bce(pooled, labels, eps=self.eps, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"
