"""Straightforward re-formulation of the official TSCD/STEGO correlation loss (for tests and benchmarks).

Mirrors the structure of ``ContrastiveCorrelationLoss`` (github.com/Rongtao-Xu/RepresentationLearning
``SCD-AAAI2023/utils/corrloss.py``, derived from STEGO ``src/modules.py``), term ``pos_inter`` only:
sample both views with the permuted grid, 5-D correlation tensors via einsum, the two-step pointwise
centring, the clamp and the mean. Written independently; not a copy of the official code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def unit(t: Tensor, eps: float = 1e-10) -> Tensor:
    """Channel-wise L2 normalisation (dim 1) with a floor ``eps`` on the norm."""
    return t / t.norm(dim=1, keepdim=True).clamp(min=eps)


def sample_features(t: Tensor, grid: Tensor) -> Tensor:
    """(B,D,H,W) sampled at the (B,S,S,2) grid -> (B,D,S,S), with the official axis swap of the grid."""
    swapped = grid.transpose(1, 2)
    return F.grid_sample(t, swapped, mode="bilinear", padding_mode="border", align_corners=True)


def correlation(a: Tensor, b: Tensor) -> Tensor:
    """(B,D,h,w) x (B,D,i,j) -> (B,h,w,i,j) inner products."""
    return torch.einsum("nchw,ncij->nhwij", a, b)


def official_scd(teacher_1: Tensor, teacher_2: Tensor, student_1: Tensor, student_2: Tensor,
                 grid_1: Tensor, grid_2: Tensor, *, pointwise: bool = True, zero_clamp: bool = True,
                 shift: float = 0.0, stabilize: bool = False, reduce: bool = True) -> Tensor:
    """The official SCD loss on given grids; returns the mean, or the (B,S,S,S,S) terms if not ``reduce``."""
    with torch.no_grad():
        fd = correlation(unit(sample_features(teacher_1, grid_1)), unit(sample_features(teacher_2, grid_2)))
        if pointwise:
            mean_before = fd.mean()
            fd = fd - fd.mean(dim=(3, 4), keepdim=True)   # step 1: centre over the target points
            fd = fd - fd.mean() + mean_before              # step 2: restore the global mean
    cd = correlation(unit(sample_features(student_1, grid_1)), unit(sample_features(student_2, grid_2)))
    low = 0.0 if zero_clamp else -9999.0
    cd = cd.clamp(low, 0.8) if stabilize else cd.clamp(low)
    terms = -cd * (fd - shift)
    return terms.mean() if reduce else terms
