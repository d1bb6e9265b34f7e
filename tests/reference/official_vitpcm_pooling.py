"""Straightforward formulation of ViT-PCM's global max pooling and APC's (assumed) Adaptive-K rules.

Tests and benchmarks only. Written from the spec (``apc.md`` §2.3, §3), not from the code under test:

* ViT-PCM (github.com/deepplants/ViT-PCM, ``model.py``): ``GlobalMaxPooling2D`` over the channels-last patch
  grid (B, G, G, C) of per-patch softmax probabilities, i.e. ``reduce_max`` over the two grid axes.
* Top-K / Adaptive-K pooling: one full descending sort of every (image, class) column, then a Python loop
  over images and classes that applies the rule as written in the spec, one rank at a time, and averages
  the first K sorted values. The per-rank comparisons use 0-d tensors of the input dtype, so the integer K
  is decided by the same floating-point operations as the spec's formulas (``rho * P_(1)`` and
  ``P_(k+1) / P_(k)``).

Inputs use the official channels-last token layout (B, N, C).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["official_global_max_pooling", "reference_adaptive_k", "reference_topk_mean"]


def official_global_max_pooling(probs_grid: Tensor) -> Tensor:
    """``GlobalMaxPooling2D`` on a channels-last grid (B, G, G, C) -> (B, C)."""
    return probs_grid.amax(dim=(1, 2))


def reference_topk_mean(probs: Tensor, k: int) -> Tensor:
    """Mean of the k largest values of every (b, c) column of (B, N, C), by a full sort and a loop."""
    srt = torch.sort(probs, dim=1, descending=True, stable=True).values
    B, _, C = probs.shape
    rows = []
    for b in range(B):
        rows.append(torch.stack([srt[b, :k, c].mean() for c in range(C)]))
    return torch.stack(rows)


def _k_ratio_to_max(col: Tensor, rho: float) -> int:
    """|{i : P_i >= rho * P_(1)}| for one descending column, counted one rank at a time."""
    thr = rho * col[0]
    count = 0
    for i in range(col.shape[0]):
        if not col[i] >= thr:      # sorted: no later rank can pass
            break
        count += 1
    return count


def _k_ratio_consecutive(col: Tensor, rho: float, stop: int) -> int:
    """The first k (1-based) with P_(k+1) / P_(k) < rho, a ratio with P_(k) = 0 counting as below rho.

    Ranks beyond ``stop`` are not examined (the result is clipped to ``stop`` anyway).
    """
    n = col.shape[0]
    k = 1
    while k < min(n, stop):
        prev, nxt = col[k - 1], col[k]
        if prev == 0 or not (nxt / prev >= rho):
            break
        k += 1
    return k


def reference_adaptive_k(probs: Tensor, mode: str, *, k: int | None = None, rho: float | None = None,
                         k_min: int = 1, k_max: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Scores (B, C), K (B, C) long and the selection mask (B, N, C) by a full sort + loop over (b, c).

    ``mode`` is ``"max"`` (K = 1), ``"fixed"`` (K = k), ``"ratio_to_max"`` or ``"ratio_consecutive"``.
    Ties are broken by the stable sort (lowest patch index first). Gradients flow through the sorted values.
    """
    B, N, C = probs.shape
    kmax = N if k_max is None else k_max
    srt = torch.sort(probs, dim=1, descending=True, stable=True)
    scores = []
    ks = torch.zeros(B, C, dtype=torch.long)
    mask = torch.zeros(B, N, C, dtype=torch.bool)
    for b in range(B):
        row = []
        for c in range(C):
            col = srt.values[b, :, c]
            with torch.no_grad():
                if mode == "max":
                    kk = 1
                elif mode == "fixed":
                    kk = k
                elif mode == "ratio_to_max":
                    kk = _k_ratio_to_max(col.detach(), rho)
                    kk = min(max(kk, k_min), kmax)
                elif mode == "ratio_consecutive":
                    kk = _k_ratio_consecutive(col.detach(), rho, kmax)
                    kk = min(max(kk, k_min), kmax)
                else:
                    raise ValueError(mode)
            ks[b, c] = kk
            mask[b, srt.indices[b, :kk, c], c] = True
            row.append(col[:kk].sum() / kk)
        scores.append(torch.stack(row))
    return torch.stack(scores), ks, mask
