"""Straightforward transcriptions of ViT-PCM's two-view geometry and colour transform (test references).

Direct per-image / per-pixel loops written from the spec (``apc.md`` §2.5, §2.6) and the official TF code
(github.com/deepplants/ViT-PCM, ``utils.py``: ``apply_affine_transform``, ``apply_affine_transform_invertible``,
``revert_affine_transform``, ``color_transform``; ``model.py``: ``compute_cce_loss``), used by
``tests/test_vitpcm_views.py`` and ``benchmarks/bench_patch_grid_transform.py``. The grid resize uses
:func:`torch.nn.functional.interpolate` (bilinear, ``align_corners`` as TF-1 ``tf.image.resize``), one image
at a time; the colour ops use :mod:`colorsys` pixel by pixel.
"""

from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def _apply_flags(grid: Tensor, flags) -> Tensor:
    """Official order on a (C, G, G) grid: left-right flip, up-down flip, transpose."""
    if bool(flags[0]):
        grid = torch.flip(grid, dims=[2])
    if bool(flags[1]):
        grid = torch.flip(grid, dims=[1])
    if bool(flags[2]):
        grid = grid.permute(0, 2, 1)
    return grid


def _undo_flags(grid: Tensor, flags) -> Tensor:
    if bool(flags[2]):
        grid = grid.permute(0, 2, 1)
    if bool(flags[1]):
        grid = torch.flip(grid, dims=[1])
    if bool(flags[0]):
        grid = torch.flip(grid, dims=[2])
    return grid


def reference_patch_grid_transform(probs: Tensor, flips: Tensor, crop_boxes: Tensor | None, out_size: int | None,
                                   inverse: bool = False, align_corners: bool = True) -> Tensor:
    """Per-image loop: crop → ``F.interpolate`` → flips (or undo flips → resize)."""
    outs = []
    for b in range(probs.shape[0]):
        grid = probs[b]
        n = grid.shape[-1] if out_size is None else out_size
        if inverse:
            grid = _undo_flags(grid, flips[b].tolist())
        elif crop_boxes is not None:
            top, left, bottom, right = (int(v) for v in crop_boxes[b])
            grid = grid[:, top:bottom, left:right]
        if grid.shape[-1] != n or grid.shape[-2] != n:
            grid = F.interpolate(grid[None], size=(n, n), mode="bilinear", align_corners=align_corners)[0]
        if not inverse:
            grid = _apply_flags(grid, flips[b].tolist())
        outs.append(grid)
    return torch.stack(outs)


def reference_view1_to_view2(probs: Tensor, flips1: Tensor, flips2: Tensor, crop_boxes: Tensor | None,
                             out_size: int = 12, align_corners: bool = True) -> Tensor:
    """Per-image loop of ``compute_cce_loss``'s target geometry: undo T1, crop, resize, apply T2."""
    outs = []
    for b in range(probs.shape[0]):
        grid = _undo_flags(probs[b], flips1[b].tolist())
        if crop_boxes is not None:
            top, left, bottom, right = (int(v) for v in crop_boxes[b])
            grid = grid[:, top:bottom, left:right]
        if grid.shape[-1] != out_size or grid.shape[-2] != out_size:
            grid = F.interpolate(grid[None], size=(out_size, out_size), mode="bilinear",
                                 align_corners=align_corners)[0]
        outs.append(_apply_flags(grid, flips2[b].tolist()))
    return torch.stack(outs)


def reference_color_transform(image: np.ndarray, brightness_delta: float, contrast_factor: float,
                              saturation_factor: float, hue_delta: float, grayscale: bool) -> np.ndarray:
    """TF ``color_transform`` on a float (H, W, 3) image in 0-255 units, pixel by pixel with :mod:`colorsys`.

    brightness: ``x + delta``; contrast: per-channel ``(x - mean) f + mean``; saturation: HSV ``s <- clip(s f,
    0, 1)``; hue: HSV ``h <- (h + delta) mod 1``; grayscale: luma ``0.2989 R + 0.587 G + 0.114 B`` tiled.
    No clipping of the values (TF float ops do not clip). Valid for images that stay non-negative.
    """
    x = np.asarray(image, dtype=np.float64) + brightness_delta
    mean = x.mean(axis=(0, 1))
    x = (x - mean) * contrast_factor + mean
    h, w, _ = x.shape
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            r, g, b = x[i, j]
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
            ss = min(max(ss * saturation_factor, 0.0), 1.0)
            r, g, b = colorsys.hsv_to_rgb(hh, ss, vv)
            hh, ss, vv = colorsys.rgb_to_hsv(r, g, b)
            hh = (hh + hue_delta) % 1.0
            out[i, j] = colorsys.hsv_to_rgb(hh, ss, vv)
    if grayscale:
        gray = out[..., 0] * 0.2989 + out[..., 1] * 0.5870 + out[..., 2] * 0.1140
        out = np.repeat(gray[..., None], 3, axis=-1)
    return out
