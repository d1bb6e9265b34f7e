"""Straightforward formulation of SLRNet's cross-view pair and training losses (tests and benchmarks only).

Written independently from the description of the official code (github.com/DesertsP/SLRNet, HEAD
``595e221``): ``models/slrnet.py`` (``affine_transform`` with its ``inverse_transform``, ``max_onehot``, the
``reg_loss`` / ``code_reg_loss`` lines of ``Net.forward``, ``Net.classifier_forward``),
``models/single_stage.py`` (``focal_loss``, ``balanced_mask_loss_ce``) and ``models/mods/transforms.py``
(``resize_to``, ``hflip`` by reversed index, ``random_hflip`` with a given per-image mask). It keeps the
official structure — a one-hot float pseudo label ``(B, K+1, H, W)`` for the balanced CE, the class weights
broadcast over the one-hot map, index-put masking in ``max_onehot``, boolean-index flips — so it serves both
as the reference of the :mod:`wsseg` code and as the "official" baseline of
``benchmarks/bench_slrnet_losses.py``. Where the official code is already batched it stays batched; the
per-image flip selection is a per-image loop here (the official boolean-index assignment).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "label_map_to_onehot",
    "official_affine_transform",
    "official_balanced_mask_loss_ce",
    "official_classifier_forward",
    "official_code_reg_loss",
    "official_mask_reg_loss",
    "official_max_onehot",
]


def _resize_to(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def _hflip_selected(x: Tensor, selected: Tensor) -> Tensor:
    """``random_hflip`` with a given per-image mask: copy, then overwrite the selected images reversed."""
    out = x.clone()
    w = x.shape[-1]
    rev = torch.arange(w - 1, -1, -1, device=x.device)
    for b in range(x.shape[0]):
        if bool(selected[b]):
            out[b] = x[b][..., rev]
    return out


def official_affine_transform(x: Tensor, scale_factor: float = 0.5, flip: Tensor | None = None):
    """``affine_transform``: resize to ``int(H * s), int(W * s)``, flip the selected images; returns the view
    and its inverse (un-flip, then resize to ``target_size``)."""
    _, _, h, w = x.shape
    out = _resize_to(x, (int(h * scale_factor), int(w * scale_factor)))
    if flip is not None:
        out = _hflip_selected(out, flip)

    def inverse(y: Tensor, target_size) -> Tensor:
        if flip is not None:
            y = _hflip_selected(y, flip)
        return _resize_to(y, target_size)

    return out, inverse


def official_max_onehot(x: Tensor) -> Tensor:
    """``max_onehot``: keep the entries equal to the channel maximum (values, ties kept), zero the rest."""
    top = x.max(dim=1, keepdim=True)[0]
    out = x.clone()
    out[x != top] = 0.0
    return out


def official_mask_reg_loss(mask_aug: Tensor, mask2_aug_inv: Tensor, labels: Tensor) -> Tensor:
    """``reg_loss``: foreground L1 between the views, times the image labels, plain mean."""
    reg = torch.abs(mask_aug[:, 1:, :, :] - mask2_aug_inv[:, 1:, :, :])
    reg = reg * labels[:, :, None, None].type_as(reg)
    return torch.mean(reg)


def official_code_reg_loss(coding: Tensor, coding2_inv: Tensor) -> Tensor:
    """``code_reg_loss``: L1 between the max-masked codes, plain mean."""
    return torch.mean(torch.abs(official_max_onehot(coding) - official_max_onehot(coding2_inv)))


def _focal_loss(x: Tensor, p: float = 1, c: float = 0.1) -> Tensor:
    return torch.pow(1 - x, p) * torch.log(c + x)


def official_classifier_forward(x: Tensor, masks: Tensor) -> Tensor:
    """``classifier_forward``: nGWP over all channels + focal penalty (p=3, c=0.01), background dropped."""
    bs, c, _, _ = x.shape
    feats = x.view(bs, c, -1)
    m = masks.view(bs, c, -1)
    cls_1 = (feats * m).sum(-1) / (1.0 + m.sum(-1))
    cls_2 = _focal_loss(m.mean(-1), p=3, c=0.01)
    return cls_1[:, 1:] + cls_2[:, 1:]


def label_map_to_onehot(target: Tensor, num_channels: int, ignore_index: int = 255) -> Tensor:
    """The one-hot float pseudo label of ``pseudo_gtmask`` (all-zero at ignored pixels) from a label map."""
    onehot = torch.zeros(target.shape[0], num_channels, *target.shape[1:], device=target.device)
    for k in range(num_channels):
        onehot[:, k] = (target == k).float()
    return onehot


def official_balanced_mask_loss_ce(mask: Tensor, pseudo_gt: Tensor, gt_labels: Tensor,
                                   ignore_index: int = 255) -> Tensor:
    """``balanced_mask_loss_ce``: per-image class-balanced CE on a one-hot pseudo label, gated. Returns (B,)."""
    mask = F.interpolate(mask, size=pseudo_gt.size()[-2:], mode="bilinear", align_corners=True)
    mask_gt = torch.argmax(pseudo_gt, 1)
    mask_gt[pseudo_gt.sum(1) < 1.0] = ignore_index
    bs, c, _, _ = pseudo_gt.size()
    per_class = pseudo_gt.view(bs, c, -1).sum(-1)
    total = per_class.sum(-1, keepdim=True)
    class_weight = (total - per_class) / (1 + total)
    class_weight = (pseudo_gt * class_weight[:, :, None, None]).sum(1).view(bs, -1)
    loss = F.cross_entropy(mask, mask_gt, ignore_index=ignore_index, reduction="none").view(bs, -1)
    gt_num = gt_labels.sum(-1).type_as(loss) + 1
    ps_num = (per_class > 0).type_as(loss).sum(-1)
    batch_weight = (gt_num == ps_num).type_as(loss)
    return batch_weight * (class_weight * loss).mean(-1)
