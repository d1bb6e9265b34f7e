"""Fit an input's spatial size to a network's stride (shared by the model builders and the training steps)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .validation import check_tensor

__all__ = ["fit_to_stride"]


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def fit_to_stride(x: Tensor, multiple: int, min_size: int = 1) -> Tensor:
    r"""Bilinearly resize ``x`` so both sides are multiples of ``multiple`` and at least ``min_size``.

    Each side :math:`n` becomes the nearest multiple of ``multiple`` (at least one), raised by whole
    multiples until it reaches ``min_size``:

    .. math::

        n' = m \cdot \max\big(1, \mathrm{round}(n / m)\big) + m\,j,\qquad
        j = \min\{j \ge 0 : n' \ge \text{min\_size}\},

    with Python's ``round`` (half to even). Identity (the same tensor object) when the sides already
    qualify; otherwise ``F.interpolate(mode="bilinear", align_corners=False)``. Used for network inputs
    whose size is set by a scale factor (TSCD's 0.3× view and its CAM scales, the multi-scale CAM
    passes of the ViT methods): ViT backbones need sides that are multiples of the patch size, MiT
    needs a minimum size. Every output is resized back to the intended size afterwards, so at the
    official crops (MiT 512, ViT-B/16 448) this never changes anything.

    Args:
        x: a float batch of images or maps.
        multiple: the stride the sides must be multiples of (a ViT's patch size), ``>= 1``.
        min_size: the smallest allowed side, ``>= 1``.

    Returns:
        ``x`` itself, or its resized copy.

    Shape:
        - x: :math:`(B, C, H, W)`.
        - output: :math:`(B, C, H', W')`.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` is not 4-D, or ``multiple`` / ``min_size`` is not a positive int.

    Example:
        >>> from wsseg.utils import fit_to_stride
        >>> fit_to_stride(torch.zeros(1, 3, 67, 70), 14).shape
        torch.Size([1, 3, 70, 70])
        >>> x = torch.zeros(1, 3, 28, 42)
        >>> fit_to_stride(x, 14) is x
        True
    """
    check_tensor(x, "x", ndim=4, dims="(B, C, H, W)", dtype="float")
    multiple = _check_positive_int(multiple, "multiple")
    min_size = _check_positive_int(min_size, "min_size")
    h, w = x.shape[-2:]

    def fit(n: int) -> int:
        m = max(1, int(round(n / multiple))) * multiple
        if m < min_size:
            m += -(-(min_size - m) // multiple) * multiple
        return m

    th, tw = fit(h), fit(w)
    if (th, tw) == (h, w):
        return x
    return F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False)
