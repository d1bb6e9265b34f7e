"""Mask the logits of foreground classes absent from the image-level label (GT-label filtering)."""

from __future__ import annotations

from torch import Tensor

from wsseg.utils.validation import check_labels, check_tensor

__all__ = ["filter_logits_by_labels"]


def filter_logits_by_labels(logits: Tensor, labels: Tensor, fill: float = -1e5) -> Tensor:
    r"""Set the logits of foreground classes absent from the image label to ``fill``; background is kept.

    .. math::
        \tilde z_{b,c} = \begin{cases} z_{b,c} & c = 0 \text{ or } y_{b,c-1} = 1 \\
        \text{fill} & \text{otherwise.}\end{cases}

    When ``labels`` are the **ground-truth** image labels this is CoSA's "Seg_vd" evaluation, which uses
    ground truth at test time; always report the unfiltered result next to it
    (see :func:`wsseg.metrics.evaluate_segmentation`). Out of place; differentiable w.r.t. ``logits``.

    Args:
        logits: segmentation logits, float, background at channel 0.
        labels: image-level labels in {0, 1} (float, int or bool), without a background entry.
        fill: value written into filtered channels (official: ``-1e5``). It is cast to ``logits.dtype``
            (``-1e5`` is representable in float16/bfloat16).

    Returns:
        Tensor of the shape, dtype and device of ``logits``.

    Shape:
        - logits: ``(B, C, H, W)`` with ``C = K + 1``.
        - labels: ``(B, K)``.
        - output: ``(B, C, H, W)``.

    Raises:
        TypeError: if ``logits`` is not a floating tensor or ``labels`` is not a tensor.
        ValueError: if ``logits`` is not 4-D or ``labels`` is not ``(B, C - 1)``.

    Example:
        >>> import torch
        >>> from wsseg.metrics import filter_logits_by_labels
        >>> logits = torch.zeros(1, 3, 1, 1)
        >>> filter_logits_by_labels(logits, torch.tensor([[0.0, 1.0]])).flatten().tolist()
        [0.0, -100000.0, 0.0]

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``utils/seg_helper.py`` (``seg_validation``) and ``evaluation_engine.py``
        (label masking with ``-1e5`` before argmax; the "Seg_vd" number).
    """
    check_tensor(logits, "logits", ndim=4, dims="(B, C, H, W)", dtype="float")
    b, c = logits.shape[:2]
    check_labels(labels, "labels", b, c - 1)
    keep = labels.to(device=logits.device) > 0.5 if labels.is_floating_point() else labels.to(logits.device) != 0
    keep = keep.reshape(b, c - 1, 1, 1)
    out = logits.clone()
    out[:, 1:] = logits[:, 1:].masked_fill(~keep, fill)
    return out
