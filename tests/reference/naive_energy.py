"""Naive full-matrix O(N^2) dense energy (``common.md`` §7) for tests and benchmarks.

Builds the whole N x N bilateral kernel by explicit differences of features (no norm expansion) and
evaluates E = -(w/B) sum_b sum_c S'_c^T diag(g) W S'_c. Fully differentiable with autograd (exact gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def downscale(probs: Tensor, image: Tensor, valid: Tensor, label: Tensor, s: float):
    """The spec's resizing: image nearest, probs bilinear, valid nearest, label nearest (floor sizes)."""
    if s == 1.0:
        return probs, image, valid.float(), label
    h, w = int(probs.shape[-2] * s), int(probs.shape[-1] * s)
    probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    image = F.interpolate(image, size=(h, w), mode="nearest")
    valid = F.interpolate(valid[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    label = F.interpolate(label[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    return probs, image, valid, label


def bilateral_kernel(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """(B,3,h,w) -> (B,N,N) with W[p,q] = exp(-|xy_p-xy_q|^2/(2 sxy^2) - |rgb_p-rgb_q|^2/(2 srgb^2))."""
    b, _, h, w = image.shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=image.dtype), torch.arange(w, dtype=image.dtype), indexing="ij")
    xy = torch.stack([xx.flatten(), yy.flatten()], dim=1)                       # (N, 2)
    rgb = image.flatten(2).transpose(1, 2)                                        # (B, N, 3)
    d_xy = (xy[:, None, :] - xy[None, :, :]).pow(2).sum(-1)                      # (N, N)
    d_rgb = (rgb[:, :, None, :] - rgb[:, None, :, :]).pow(2).sum(-1)             # (B, N, N)
    return torch.exp(-d_xy / (2 * sigma_xy**2) - d_rgb / (2 * sigma_rgb**2))


def gate_map(probs: Tensor, valid: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """g = max(0, valid - max_c S), 1 where label == ignore_index. (B,h,w)."""
    g = (valid - probs.max(dim=1).values).clamp(min=0)
    return torch.where(label == ignore_index, torch.ones_like(g), g)


def naive_energy(probs: Tensor, image: Tensor, valid: Tensor, label: Tensor, *, sigma_rgb: float = 15.0,
                 sigma_xy: float = 100.0, scale_factor: float = 0.5, weight: float = 1e-7,
                 ignore_index: int = 255) -> Tensor:
    """The spec formula with an explicit (B,N,N) kernel."""
    probs, image, valid, label = downscale(probs, image, valid, label, scale_factor)
    kernel = bilateral_kernel(image, sigma_rgb, sigma_xy * scale_factor)
    g = gate_map(probs, valid, label, ignore_index).flatten(1)                   # (B, N)
    s = (probs * valid[:, None]).flatten(2)                                        # (B, C, N)
    ws = torch.einsum("bpq,bcq->bcp", kernel, s)
    return -weight * (s * g[:, None] * ws).sum() / probs.shape[0]
