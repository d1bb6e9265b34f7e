"""The official de-normalisation arithmetic of TSCD / AFA, transcribed for tests (not library code).

``utils/imutils.py`` of both repositories (github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023;
github.com/rulixiang/afa): every channel is written into a zero tensor as ``x[:, c] * std[c] + mean[c]``
with Python-float constants in the 0-255 range (float32 tensor arithmetic), the result is cast with
``.type(torch.uint8)`` and divided by 255. The official input normalisation (``datasets/transforms.py``,
``normalize_img``) subtracts and divides the same constants from a uint8 array in float64 and stores
the result in a float32 array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["OFFICIAL_MEAN_255", "OFFICIAL_STD_255", "official_denormalize", "official_normalize"]

OFFICIAL_MEAN_255 = (123.675, 116.28, 103.53)
OFFICIAL_STD_255 = (58.395, 57.12, 57.375)


def official_normalize(img_uint8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (H, W, 3) float32: ``(img - mean) / std`` computed in float64, stored as float32."""
    out = np.empty(img_uint8.shape, dtype=np.float32)
    for c in range(3):
        out[..., c] = (img_uint8[..., c] - OFFICIAL_MEAN_255[c]) / OFFICIAL_STD_255[c]
    return out


def official_denormalize(x: Tensor) -> Tensor:
    """(B, 3, H, W) float32 normalised → (B, 3, H, W) float32 in [0, 1] (``denormalize_img2``).

    Only for inputs whose de-normalised values lie in [0, 256): the uint8 cast of other values is
    undefined behaviour in C.
    """
    tmp = torch.zeros_like(x)
    for c in range(3):
        tmp[:, c, :, :] = x[:, c, :, :] * OFFICIAL_STD_255[c] + OFFICIAL_MEAN_255[c]
    return tmp.type(torch.uint8) / 255.0
