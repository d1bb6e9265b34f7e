"""Straightforward formulation of CoSA's pseudo labels and swapped-assignment losses (tests and benchmarks only).

Written independently from the description of the official code (github.com/youshyee/CoSA, commit
``da43065``): ``utils/seg_helper.py`` (``cam2mask`` and ``_refine_cams`` without refiner, ``seg_loss``,
``seg_refine_by_label``, ``cam_loss``) and the loss block of ``main.py`` (lines 120-233). It keeps the
official structure — per-image Python loops with crop boxes and a float label map in ``cam2mask``, two
cross-entropy calls per ``seg_loss``, the SPL at full resolution, the CAM loss on flattened matrices — so it
serves both as the reference of the vectorised :mod:`wsseg` code and as the "official" baseline of
``benchmarks/bench_cosa_losses.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "official_cam2mask",
    "official_cam_loss",
    "official_seg_loss",
    "official_seg_refine_by_label",
    "official_swapped_assignment",
]


@torch.no_grad()
def official_cam2mask(cams: Tensor, cls_labels: Tensor, img_boxes: Tensor, threshold_high: float,
                      threshold_low: float, ignore_index: int = 255, downscale: int = 2) -> Tensor:
    """``cam2mask`` with ``refine_model=None``: per-image loop, boxes ``(top, bottom, left, right)``.

    Returns the official float label map ``(B, H, W)`` (the training code casts it with ``.long()``).
    """
    b, _, h, w = cams.shape
    ones = torch.ones(b, 1, h, w, device=cams.device)
    high = torch.cat([ones.clone() * threshold_high, cams], dim=1)
    low = torch.cat([ones.clone() * threshold_low, cams], dim=1)
    if downscale:
        high = F.interpolate(high, size=[h // downscale, w // downscale], mode="bilinear", align_corners=False)
        low = F.interpolate(low, size=[h // downscale, w // downscale], mode="bilinear", align_corners=False)
    labels_bkg = torch.cat([torch.ones(b, 1, device=cls_labels.device), cls_labels], dim=1)
    mask_high = ones[:, 0] * ignore_index
    mask_low = mask_high.clone()
    for i, box in enumerate(img_boxes):
        keys = torch.nonzero(labels_bkg[i])[:, 0]
        per_threshold = []
        for z in (high, low):
            probs = z[i, keys].unsqueeze(0).softmax(dim=1)
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            per_threshold.append(keys[probs.argmax(dim=1)])
        r0, r1, c0, c1 = (int(v) for v in box)
        mask_high[i, r0:r1, c0:c1] = per_threshold[0][0, r0:r1, c0:c1].float()
        mask_low[i, r0:r1, c0:c1] = per_threshold[1][0, r0:r1, c0:c1].float()
    out = mask_high.clone()
    out[mask_high == 0] = ignore_index
    out[(mask_high + mask_low) == 0] = 0
    return out


def official_seg_loss(seg_pred: Tensor, mask_label: Tensor, fg_alpha: float = 0.5,
                      ignore_index: int = 255) -> Tensor:
    """``seg_loss``: background and foreground cross-entropies, each summed and divided by its count + 1e-6."""
    bg_label = mask_label.clone()
    bg_label[mask_label != 0] = ignore_index
    bg = F.cross_entropy(seg_pred, bg_label.long(), ignore_index=ignore_index, reduction="sum")
    bg = bg / ((bg_label != ignore_index).sum() + 1e-6)
    fg_label = mask_label.clone()
    fg_label[mask_label == 0] = ignore_index
    fg = F.cross_entropy(seg_pred, fg_label.long(), ignore_index=ignore_index, reduction="sum")
    fg = fg / ((fg_label != ignore_index).sum() + 1e-6)
    return (1 - fg_alpha) * bg + fg_alpha * fg


@torch.no_grad()
def official_seg_refine_by_label(seg: Tensor, cls_label: Tensor, softmaxtemp: float,
                                 after_softmax: bool = False) -> Tensor:
    """``seg_refine_by_label``: the SPL; absent classes -1e5 before the softmax, or x labels after it."""
    b, _, h, w = seg.shape
    labels_bkg = torch.cat([torch.ones(b, 1, dtype=torch.long, device=cls_label.device), cls_label], dim=1)
    if after_softmax:
        return labels_bkg[:, :, None, None].repeat(1, 1, h, w) * F.softmax(seg / softmaxtemp, dim=1)
    valid = seg.clone()
    valid[labels_bkg == 0] = -1e5
    return F.softmax(valid / softmaxtemp, dim=1)


def official_cam_loss(cam: Tensor, seg_ps: Tensor, is_relu: bool = True) -> Tensor:
    """``cam_loss`` (v1): multilabel soft margin of ReLU(CAM) on the downsampled foreground SPL."""
    B, C, H, W = cam.shape
    target = F.interpolate(seg_ps[:, 1:], size=[H, W], mode="bilinear", align_corners=False)
    target = target.permute(0, 2, 3, 1).contiguous().reshape(B * H * W, C)
    if is_relu:
        cam = F.relu(cam)
    cam = cam.permute(0, 2, 3, 1).contiguous().reshape(B * H * W, C)
    return F.multilabel_soft_margin_loss(cam, target)


def official_swapped_assignment(seg_pred: Tensor, cam_pred: Tensor, cpl: Tensor, cpl_aux: Tensor | None,
                                seg_ps: Tensor, cls_label: Tensor, *, fg_alpha: float = 0.5,
                                aux_alpha: float = 0.5, softmaxtemp: float = 0.01, after_softmax: bool = False,
                                is_relu: bool = True, seg_weight: float = 0.1,
                                cam_weight: float = 0.05) -> tuple[Tensor, Tensor, Tensor]:
    """The ``main.py`` loss block after warm-up: returns ``(seg_loss, cam_loss, weighted sum)``."""
    seg_pred = F.interpolate(seg_pred, size=cpl.shape[1:], mode="bilinear", align_corners=False)
    seg = official_seg_loss(seg_pred, cpl, fg_alpha=fg_alpha)
    if cpl_aux is not None:
        seg_aux = official_seg_loss(seg_pred, cpl_aux, fg_alpha=fg_alpha)
        seg = (1 - aux_alpha) * seg + aux_alpha * seg_aux
    spl = official_seg_refine_by_label(seg_ps, cls_label, softmaxtemp, after_softmax=after_softmax)
    cam = official_cam_loss(cam_pred, spl, is_relu=is_relu)
    return seg, cam, seg_weight * seg + cam_weight * cam
