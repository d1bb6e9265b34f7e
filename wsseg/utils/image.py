"""Image normalisation constants and de-normalisation (``common.md`` §11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .validation import check_tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "denormalize", "normalize"]

#: ImageNet mean in the 0-1 range (multiply by 255 for 0-255 pixel values).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
#: ImageNet standard deviation in the 0-1 range.
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _stats(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ValueError(
            f"mean/std: expected {x.shape[1]} values (one per channel of x), got {len(mean)} and {len(std)}"
        )
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return m, s


def normalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    r"""Normalise an image batch in [0, 1]: :math:`(x - \mu) / \sigma`.

    Shape:
        - x: :math:`(B, 3, H, W)`, float in [0, 1].
        - output: :math:`(B, 3, H, W)`.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` is not 4-D or ``mean``/``std`` do not have one value per channel.

    Example:
        >>> x = torch.rand(1, 3, 4, 4)
        >>> torch.allclose(denormalize(normalize(x)), x, atol=1e-6)
        True
    """
    check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
    m, s = _stats(x, mean, std)
    return (x - m) / s


def denormalize(x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                mode: str = "float") -> Tensor:
    r"""Undo mean/std normalisation and return an image in [0, 1].

    .. math::
        \hat I &= x \sigma + \mu \quad (\texttt{mode="float"}), \\
        \hat I &= \lfloor 255 (x \sigma + \mu) \rfloor_{\text{uint8}} / 255 \quad (\texttt{mode="truncate_uint8"})

    ``"truncate_uint8"`` reproduces TSCD/AFA's ``denormalize_img2``: the value is cast to uint8 by
    truncation toward zero with **no clamp and no rounding** (values outside [0, 255] wrap modulo 256,
    as a C cast does), then divided by 255. The TSCD faithful preset uses it because VARM's variation
    term depends on the intensity scale.

    Args:
        x: normalised images.
        mean, std: per-channel statistics in the 0-1 range.
        mode: ``"float"`` or ``"truncate_uint8"``.

    Shape:
        - x: :math:`(B, 3, H, W)`.
        - output: :math:`(B, 3, H, W)`, float, in [0, 1] for in-range inputs.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: if ``x`` is not 4-D or ``mode`` is unknown.

    Example:
        >>> x = normalize(torch.full((1, 3, 2, 2), 0.6))
        >>> y = denormalize(x, mode="truncate_uint8")
        >>> round(y[0, 0, 0, 0].item() * 255)  # 0.6 * 255 = 153.0
        153

    Source:
        TSCD ``utils/imutils.py`` (``denormalize_img2``), Rongtao-Xu/RepresentationLearning.
    """
    check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
    if mode not in ("float", "truncate_uint8"):
        raise ValueError(f"mode: expected 'float' or 'truncate_uint8', got {mode!r}")
    m, s = _stats(x, mean, std)
    img = x * s + m
    if mode == "float":
        return img
    v = torch.trunc(img * 255.0)
    # C-style cast to uint8: truncation toward zero, then wrap modulo 256.
    v = torch.remainder(v, 256.0)
    return v / 255.0
