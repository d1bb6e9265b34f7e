"""Crop boxes ↔ valid masks (``common.md`` §0)."""

from __future__ import annotations

import torch
from torch import Tensor

from .validation import check_tensor

__all__ = ["box_to_mask"]


def box_to_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    r"""Convert crop boxes to boolean valid masks.

    The official AFA/TSCD code records the real-image part of a zero-padded random crop as
    ``img_box = (top, bottom, left, right)`` (half-open, in crop pixels). This returns

    .. math::
        \text{valid}_b(i, j) = [\text{top}_b \le i < \text{bottom}_b] \wedge [\text{left}_b \le j < \text{right}_b].

    Args:
        boxes: ``(B, 4)`` integer boxes ``(top, bottom, left, right)``.
        height, width: crop size.

    Shape:
        - boxes: :math:`(B, 4)`.
        - output: :math:`(B, H, W)`, ``torch.bool``.

    Raises:
        TypeError: if ``boxes`` is not a tensor.
        ValueError: if ``boxes`` is not ``(B, 4)`` or the sizes are not positive.

    Example:
        >>> box_to_mask(torch.tensor([[0, 1, 1, 3]]), 2, 3).int().tolist()
        [[[0, 1, 1], [0, 0, 0]]]

    Source:
        AFA ``datasets/transforms.py`` / ``utils/camutils.py`` (``img_box``), github.com/rulixiang/afa.
    """
    check_tensor(boxes, "boxes", ndim=2, dims="(B, 4)")
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes: expected shape (B, 4), got {tuple(boxes.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height/width: expected positive sizes, got {height}x{width}")
    b = boxes.long()
    rows = torch.arange(height, device=boxes.device).view(1, -1, 1)
    cols = torch.arange(width, device=boxes.device).view(1, 1, -1)
    top, bottom, left, right = (b[:, i].view(-1, 1, 1) for i in range(4))
    return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
