"""Plain-loop re-formulation of the official permutohedral bilateral filter (tests and benchmarks only).

Follows, point by point and vertex by vertex, the algorithm of Krähenbühl's ``permutohedral.cpp`` as built by
the ``bilateralfilter`` SWIG extension of rloss / AFA / TSCD / CoSA (``wrapper/bilateralfilter``), in its
SSE build (the x86-64 default): float32 scalars throughout, rounding half to even, points processed in
blocks of 4 with all-zero padding features, a dictionary standing in for the hash table, vertex 0 of the
value table as the zero pad. The features are those of ``bilateralfilter.cpp``: (x/σ_xy, y/σ_xy, r/σ_rgb,
g/σ_rgb, b/σ_rgb), uncentred. Written independently from the algorithm description; not a copy of the
official code. Slow (Python loops): tiny images in the default tests, up to ~160² in slow tests.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from tests.reference.naive_energy import downscale, gate_map

f32 = np.float32


class LoopLattice:
    """Lattice of (N, d) float32 features, built with explicit per-point loops."""

    def __init__(self, features: np.ndarray, sse_padding: bool = True) -> None:
        features = np.asarray(features, dtype=f32)
        n, d = features.shape
        self.n, self.d = n, d
        total = n + ((-n) % 4 if sse_padding else 0)
        inv_std = f32(math.sqrt(2.0 / 3.0) * (d + 1))
        scale = [f32(1.0 / math.sqrt((i + 2) * (i + 1)) * float(inv_std)) for i in range(d)]
        down, up = f32(1.0 / (d + 1)), f32(d + 1)
        canonical = [[r if j <= d - r else r - (d + 1) for j in range(d + 1)] for r in range(d + 1)]
        self.table: dict[tuple[int, ...], int] = {}
        self.offset = np.zeros((total, d + 1), dtype=np.int64)
        self.weight = np.zeros((total, d + 1), dtype=f32)
        for k in range(total):
            f = features[k] if k < n else np.zeros(d, dtype=f32)
            elevated = [f32(0)] * (d + 1)
            sm = f32(0)
            for j in range(d, 0, -1):
                cf = f32(f[j - 1] * scale[j - 1])
                elevated[j] = f32(sm - f32(j) * cf)
                sm = f32(sm + cf)
            elevated[0] = sm
            rem0 = [f32(0)] * (d + 1)
            total_rd = 0
            for i in range(d + 1):
                rd = f32(np.rint(f32(down * elevated[i])))  # nearest, ties to even
                rem0[i] = f32(rd * up)
                total_rd += int(rd)
            rank = [0] * (d + 1)
            for i in range(d):
                di = f32(elevated[i] - rem0[i])
                for j in range(i + 1, d + 1):
                    if di < f32(elevated[j] - rem0[j]):
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d + 1):
                rank[i] += total_rd
                if rank[i] < 0:
                    rank[i] += d + 1
                    rem0[i] = f32(rem0[i] + up)
                elif rank[i] > d:
                    rank[i] -= d + 1
                    rem0[i] = f32(rem0[i] - up)
            bary = [f32(0)] * (d + 2)
            for i in range(d + 1):
                v = f32(f32(elevated[i] - rem0[i]) * down)
                bary[d - rank[i]] = f32(bary[d - rank[i]] + v)
                bary[d - rank[i] + 1] = f32(bary[d - rank[i] + 1] - v)
            bary[0] = f32(bary[0] + f32(f32(1) + bary[d + 1]))
            for r in range(d + 1):
                key = tuple(int(rem0[i]) + canonical[r][rank[i]] for i in range(d))
                if key not in self.table:
                    self.table[key] = len(self.table)
                self.offset[k, r] = self.table[key]
                self.weight[k, r] = bary[r]
        self.m = len(self.table)
        keys = [None] * self.m
        for key, idx in self.table.items():
            keys[idx] = key
        self.neighbors = np.zeros((d + 1, self.m, 2), dtype=np.int64)
        for j in range(d + 1):
            for idx, key in enumerate(keys):
                n1 = [c - 1 for c in key]
                n2 = [c + 1 for c in key]
                if j < d:
                    n1[j] = key[j] + d
                    n2[j] = key[j] - d
                self.neighbors[j, idx, 0] = self.table.get(tuple(n1), -1)
                self.neighbors[j, idx, 1] = self.table.get(tuple(n2), -1)

    def compute(self, values: np.ndarray) -> np.ndarray:
        """(N, C) -> (N, C): splat, d+1 blur passes, slice with alpha; float32."""
        values = np.asarray(values, dtype=f32)
        d = self.d
        c = values.shape[1]
        table = np.zeros((self.m + 2, c), dtype=f32)
        new_table = np.zeros((self.m + 2, c), dtype=f32)
        for i in range(self.n):
            for j in range(d + 1):
                o = self.offset[i, j] + 1
                table[o] += self.weight[i, j] * values[i]
        half = f32(0.5)
        for j in range(d + 1):
            for i in range(self.m):
                n1 = self.neighbors[j, i, 0] + 1
                n2 = self.neighbors[j, i, 1] + 1
                new_table[i + 1] = table[i + 1] + half * (table[n1] + table[n2])
            table, new_table = new_table, table
        alpha = f32(f32(1) / f32(f32(1) + f32(2.0 ** (-d))))
        out = np.zeros((self.n, c), dtype=f32)
        for i in range(self.n):
            acc = np.zeros(c, dtype=f32)
            for j in range(d + 1):
                o = self.offset[i, j] + 1
                acc += f32(self.weight[i, j] * alpha) * table[o]
            out[i] = acc
        return out


def bilateral_features(image: np.ndarray, sigma_rgb: float, sigma_xy: float) -> np.ndarray:
    """(3, H, W) -> (H*W, 5) float32: x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb, row-major pixels."""
    _, h, w = image.shape
    srgb, sxy = f32(sigma_rgb), f32(sigma_xy)
    feats = np.zeros((h * w, 5), dtype=f32)
    for y in range(h):
        for x in range(w):
            idx = y * w + x
            feats[idx, 0] = f32(x) / sxy
            feats[idx, 1] = f32(y) / sxy
            for ch in range(3):
                feats[idx, 2 + ch] = f32(image[ch, y, x]) / srgb
    return feats


def official_bilateral_filter(image: Tensor, values: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """``bilateralfilter_batch``: image (B,3,H,W) 0-255, values (B,C,H,W) -> (B,C,H,W) float32."""
    img = image.detach().cpu().float().numpy()
    val = values.detach().cpu().float().numpy()
    b, c, h, w = val.shape
    out = np.zeros_like(val)
    for i in range(b):
        lattice = LoopLattice(bilateral_features(img[i], sigma_rgb, sigma_xy))
        out[i] = lattice.compute(val[i].reshape(c, h * w).T).T.reshape(c, h, w)
    return torch.from_numpy(out)


def official_energy(probs: Tensor, image: Tensor, valid: Tensor, label: Tensor, *, sigma_rgb: float = 15.0,
                    sigma_xy: float = 100.0, scale_factor: float = 0.5, weight: float = 1e-7,
                    ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """The official energy loss with the lattice: (loss, dL/dS at the downscaled resolution).

    The returned gradient is the official backward rule -2 w (g * A S') * valid / B at the downscaled size;
    chain it through the downscaling with autograd if needed (see the tests).
    """
    p_low, i_low, v_low, l_low = downscale(probs.detach().float(), image.float(), valid, label, scale_factor)
    g = gate_map(p_low, v_low, l_low, ignore_index)  # (B, h, w)
    s = p_low * v_low[:, None]
    filtered = official_bilateral_filter(i_low, s, sigma_rgb, sigma_xy * scale_factor)
    gated = filtered * g[:, None]
    b = probs.shape[0]
    loss = -weight * (s.double() * gated.double()).sum() / b
    grad = -2.0 * weight * gated * v_low[:, None] / b
    return loss, grad
