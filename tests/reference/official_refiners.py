"""Reference implementations of the *official formulations* of PAR, PAMR and VARM.

Written for wsseg's tests and benchmarks (not library code). They follow the structure of the official
implementations rather than wsseg's vectorised one, so that agreement is meaningful:

* neighbours are gathered per dilation by padding with ``F.pad(mode="replicate")`` by ``d`` and running
  a dilated convolution with fixed one-hot 3×3 kernels (one output channel per neighbour, row-major
  3×3 order without the centre), then concatenated over the dilations;
* the kernel is built from ``torch.std`` over the neighbour dimension, broadcast differences, softmaxes;
* each iteration re-gathers the neighbours of the current maps and sums them weighted by the kernel.

Formulations (see the wsseg specs ``common.md`` §3–4 and ``tscd.md`` §4):

* PAR — AFA ``wetr/PAR.py`` (github.com/rulixiang/afa).
* PAMR — 1-Stage-WSeg / SLRNet ``models/mods/pamr.py`` (github.com/visinf/1-stage-wseg,
  github.com/DesertsP/SLRNet): σ over the 9-pixel stencil per dilation (centre included), differences
  taken as ``|centre − neighbour|`` with a (+1 centre, −1 neighbour) conv kernel.
* VARM — TSCD ``SCD-AAAI2023/network/VARM.py`` (github.com/Rongtao-Xu/RepresentationLearning): the
  variation of each shifted image is a forward difference inside its own frame, with the last
  row/column duplicated (difference 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OFFICIAL_STENCIL",
    "official_offsets",
    "one_hot_kernels",
    "official_neighbors",
    "official_par_kernel",
    "official_par",
    "official_pamr_kernel",
    "official_pamr",
    "official_varm_kernel",
    "official_varm",
]

# (row, col) positions in the 3×3 stencil of the 8 neighbours, row-major without the centre.
OFFICIAL_STENCIL = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def official_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """Offsets ``(row, col)`` of the neighbours in the official order (dilation-major)."""
    return [((r - 1) * d, (c - 1) * d) for d in dilations for r, c in OFFICIAL_STENCIL]


def one_hot_kernels(positions: Sequence[tuple[int, int]], *, dtype=torch.float32, device=None) -> Tensor:
    """Conv weights ``(len(positions), 1, 3, 3)``: output ``i`` picks stencil cell ``positions[i]``."""
    weight = torch.zeros(len(positions), 1, 3, 3, dtype=dtype, device=device)
    for i, (r, c) in enumerate(positions):
        weight[i, 0, r, c] = 1.0
    return weight


def official_neighbors(x: Tensor, dilations: Sequence[int], weight: Tensor | None = None) -> Tensor:
    """Dilated neighbours by one-hot convolution: ``(B, C, P·len(dilations), h, w)``.

    ``weight`` defaults to the 8 one-hot kernels of ``OFFICIAL_STENCIL``.
    """
    if weight is None:
        weight = one_hot_kernels(OFFICIAL_STENCIL, dtype=x.dtype, device=x.device)
    b, c, h, w = x.shape
    per_dilation = []
    for d in dilations:
        x_pad = F.pad(x, [d, d, d, d], mode="replicate").reshape(b * c, 1, h + 2 * d, w + 2 * d)
        per_dilation.append(F.conv2d(x_pad, weight, dilation=d).view(b, c, weight.shape[0], h, w))
    return torch.cat(per_dilation, dim=2)


def _resize(probs: Tensor, image: Tensor) -> Tensor:
    return F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=True)


def _iterate(probs: Tensor, kernel: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    for _ in range(num_iter):
        probs = (official_neighbors(probs, dilations) * kernel).sum(dim=2)
    return probs


# ------------------------------------------------------------------------------------------------ PAR
def official_par_kernel(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24), w1: float = 0.3,
                        w2: float = 0.01) -> Tensor:
    """AFA's PAR kernel ``(B, 1, K, h, w)`` in the official neighbour order."""
    b, _, h, w = image.shape
    neigh = official_neighbors(image, dilations)
    k = neigh.shape[2]
    centre = image.unsqueeze(2).repeat(1, 1, k, 1, 1)
    diff = (neigh - centre).abs()
    std = neigh.std(dim=2, keepdim=True)
    app = (-(diff / (std + 1e-8) / w1) ** 2).mean(dim=1, keepdim=True)
    # positional "distances": d for axial, d·sqrt(2) for diagonal neighbours, repeated over the image
    unit = torch.tensor([math.sqrt(2) if (r != 1 and c != 1) else 1.0 for r, c in OFFICIAL_STENCIL],
                        dtype=image.dtype, device=image.device)
    pos = torch.cat([unit * d for d in dilations]).view(1, 1, k, 1, 1).repeat(b, 1, 1, h, w)
    pos_std = pos.std(dim=2, keepdim=True)
    pos_aff = -(pos / (pos_std + 1e-8) / w1) ** 2
    return F.softmax(app, dim=2) + w2 * F.softmax(pos_aff, dim=2)


def official_par(image: Tensor, probs: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                 num_iter: int = 10) -> Tensor:
    """AFA's PAR forward: resize, kernel, ``num_iter`` propagation steps."""
    probs = _resize(probs, image)
    return _iterate(probs, official_par_kernel(image, dilations), dilations, num_iter)


# ----------------------------------------------------------------------------------------------- PAMR
def official_pamr_kernel(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)) -> Tensor:
    """1-Stage-WSeg/SLRNet PAMR kernel ``(B, 1, K, h, w)`` in the official neighbour order."""
    # difference kernels: +1 at the centre, -1 at the neighbour -> centre - neighbour
    diff_w = one_hot_kernels(OFFICIAL_STENCIL, dtype=image.dtype, device=image.device)
    diff_w = -diff_w
    diff_w[:, 0, 1, 1] += 1.0
    diff = official_neighbors(image, dilations, diff_w).abs()
    # σ over all 9 stencil cells of every dilation (54 samples for 6 dilations), torch default (unbiased)
    nine = [(r, c) for r in range(3) for c in range(3)]
    stencil = official_neighbors(image, dilations, one_hot_kernels(nine, dtype=image.dtype, device=image.device))
    std = stencil.std(dim=2, keepdim=True)
    aff = (-diff / (1e-8 + 0.1 * std)).mean(dim=1, keepdim=True)
    return F.softmax(aff, dim=2)


def official_pamr(image: Tensor, probs: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                  num_iter: int = 10) -> Tensor:
    """PAMR forward: resize, kernel, ``num_iter`` propagation steps."""
    probs = _resize(probs, image)
    return _iterate(probs, official_pamr_kernel(image, dilations), dilations, num_iter)


# ----------------------------------------------------------------------------------------------- VARM
def official_varm_kernel(image: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                         w2: float = 0.01) -> Tensor:
    """TSCD's VARM kernel ``(B, 1, K, h, w)`` in the official neighbour order (sums to ``1 - w2``)."""
    shifted = official_neighbors(image, dilations)  # (B, 3, K, h, w)
    # forward differences inside each shifted frame; the last row / column is repeated (difference 0)
    below = torch.cat([shifted[..., 1:, :], shifted[..., -1:, :]], dim=3)
    right = torch.cat([shifted[..., :, 1:], shifted[..., :, -1:]], dim=4)
    variation = ((shifted - below) ** 2 + (shifted - right) ** 2).mean(dim=1, keepdim=True)
    k = shifted.shape[2]
    diff = (shifted - image.unsqueeze(2).repeat(1, 1, k, 1, 1)).abs()
    std = shifted.std(dim=2, keepdim=True)
    app = (-((diff / (std + 1e-8)) * 4) ** 2).mean(dim=1, keepdim=True)
    return F.softmax(app, dim=2) - w2 * F.softmax(variation, dim=2)


def official_varm(image: Tensor, probs: Tensor, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
                  num_iter: int = 10) -> Tensor:
    """VARM forward: resize, kernel, ``num_iter`` propagation steps."""
    probs = _resize(probs, image)
    return _iterate(probs, official_varm_kernel(image, dilations), dilations, num_iter)


def to_official_order(kernel: Tensor, dilations: Sequence[int]) -> Tensor:
    """Permute a wsseg kernel ``(B, 1, K, H, W)`` (wsseg's neighbour order) into the official order."""
    from wsseg.layers._neighbors import neighbor_offsets

    canon = neighbor_offsets(dilations)
    return kernel[:, :, [canon.index(o) for o in official_offsets(dilations)]]
