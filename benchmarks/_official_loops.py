"""Straightforward transcriptions of the official training-loop bodies of TSCD, CoSA and SLRNet (benchmarks only).

Used by ``benchmarks/bench_official_iteration.py`` as the "official" side of the whole-iteration comparison.
Each function is one iteration of the official loop, in the official order, built from the transcriptions of
the official networks and components in ``tests/reference`` (written independently of :mod:`wsseg`):

* TSCD — ``scripts/dist_train_voc.py`` of github.com/Rongtao-Xu/RepresentationLearning (SCD-AAAI2023, on AFA's
  github.com/rulixiang/afa loop), as described in the spec ``tscd.md`` §7.2: forward of the crop, multi-scale
  CAM of the crop (network in train mode, ``cam_only=True`` still runs the decoder), the 0.3× view's forward
  and its multi-scale CAM, both segmentations upsampled (``align_corners=True``), the correlation (SCD) loss
  with its ``torch.rand`` grids, the inert "equivariant regularisation" (no gradient; computed and added as
  officially), the VARM dual-threshold pseudo label (one image and one threshold at a time,
  ``refine_cams_with_bkg_v2``), ``get_seg_loss`` (two cross-entropies), ``get_energy_loss`` (softmax,
  crop mask, de-normalisation to 0-255), ``cams_to_affinity_label`` with the precomputed radius mask of
  ``get_mask_by_radius`` and ``get_aff_loss``; total ``1·cls + 0.1·seg + 0.01·reg + 0.1·aff + 0.1·scd + 0.1·er``.
  The official MiT blocks use timm's ``DropPath`` (rate rising linearly 0 → 0.1 over the 8 blocks): added here
  to the re-written network of ``tests/reference/official_tscd_net.py`` (which has none).
* CoSA — ``main.py`` of github.com/youshyee/CoSA after the loss warm-up (``cosa.md`` §9): teacher
  ``multi_scale_camseg`` + ``cam_validation`` (no grad), ``cam2mask`` for the main and aux CAMs (per-image loop,
  crop boxes), student forward on the strong view, both classification losses, ``seg_loss`` ×2 +
  ``seg_refine_by_label`` + ``cam_loss``, ``get_energy_loss`` on the strong view; after ``backward`` the
  per-parameter EMA update of the teacher.
* SLRNet — ``Net.forward`` (training path) of github.com/DesertsP/SLRNet ``models/slrnet.py`` and the loss
  composition of ``train_voc_wss.py`` (the transcription of ``tests/test_slrnet_official_iteration.py``).

The dense-CRF energy loss is the one component that is **shared** (wsseg's
:class:`~wsseg.losses.DenseEnergyLoss`, permutohedral backend, passed in by the caller): the official layer is a
compiled C++ lattice (SWIG extension) that a Python transcription cannot stand in for at equal cost
(``tests/reference/official_permutohedral.py`` is a per-point Python loop, minutes per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.reference.official_cosa_losses import official_cam2mask, official_swapped_assignment
from tests.reference.official_cosa_teacher import official_cam_validation, official_multi_scale_camseg
from tests.reference.official_denormalize import OFFICIAL_MEAN_255, OFFICIAL_STD_255, official_denormalize
from tests.reference.official_multi_scale_cam import official_multi_scale_cam
from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label
from tests.reference.official_refiners import official_varm
from tests.reference.official_scd import official_scd
from tests.reference.official_slrnet_heads import official_pseudo_label, official_stochastic_gate
from tests.reference.official_slrnet_losses import (
    label_map_to_onehot,
    official_affine_transform,
    official_balanced_mask_loss_ce,
    official_classifier_forward,
    official_code_reg_loss,
    official_mask_reg_loss,
)
from tests.reference.official_slrnet_lowrank import official_dictionary_init
from tests.reference.official_tscd_net import OfficialTSCD, _Block

__all__ = [
    "add_official_drop_path",
    "official_cosa_ema_update",
    "official_cosa_iteration",
    "official_get_aff_loss",
    "official_get_energy_loss",
    "official_get_seg_loss",
    "official_affinity_label",
    "official_mask_by_radius",
    "official_slrnet_iteration",
    "official_tscd_iteration",
]


# ------------------------------------------------------------------------------------------------ TSCD
class _DropPathBlock(_Block):
    """The official MiT ``Block``: ``x + drop_path(attn(norm1(x)))``, ``x + drop_path(mlp(norm2(x)))``.

    ``drop_path`` as timm's ``DropPath`` (``scale_by_keep=True``): one Bernoulli draw per sample, in place
    division by the keep probability.
    """

    drop_path_p: float = 0.0

    def _drop(self, x: Tensor) -> Tensor:
        if self.drop_path_p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_path_p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        mask.div_(keep)
        return x * mask

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        a, logits = self.attn(self.norm1(x), h, w)
        x = x + self._drop(a)
        return x + self._drop(self.mlp(self.norm2(x), h, w)), logits


def add_official_drop_path(net: OfficialTSCD, drop_path_rate: float = 0.1) -> OfficialTSCD:
    """Give the re-written MiT its official stochastic depth (``linspace(0, rate, #blocks)``), in place."""
    blocks = [blk for s in range(1, 5) for blk in getattr(net.encoder, f"block{s}")]
    for blk, p in zip(blocks, torch.linspace(0, drop_path_rate, len(blocks)).tolist(), strict=True):
        blk.__class__ = _DropPathBlock
        blk.drop_path_p = float(p)
    return net


def official_mask_by_radius(h: int, w: int, radius: int = 8) -> np.ndarray:
    """``get_mask_by_radius``: the dense (hw, hw) window mask, built with the official Python loops."""
    hw = h * w
    mask = np.zeros((hw, hw))
    for i in range(hw):
        _h, _w = i // w, i % w
        for i1 in range(max(0, _h - radius), min(h, _h + radius + 1)):
            for i2 in range(max(0, _w - radius), min(w, _w + radius + 1)):
                j = i1 * w + i2
                mask[i, j] = 1
                mask[j, i] = 1
    return mask


def official_affinity_label(cam_label: Tensor, mask: Tensor | None = None, ignore_index: int = 255) -> Tensor:
    """``cams_to_affinity_label``: nearest downsample by 16, pairwise equality, 255 outside the window / on ignored."""
    b, h, w = cam_label.shape
    small = F.interpolate(cam_label.unsqueeze(1).type(torch.float32), size=[h // 16, w // 16], mode="nearest")
    flat = small.reshape(b, 1, -1)
    rep = flat.repeat([1, flat.shape[-1], 1])
    rep_t = rep.permute(0, 2, 1)
    aff = (rep == rep_t).type(torch.long)
    for i in range(b):
        if mask is not None:
            aff[i, mask == 0] = ignore_index
        aff[i, :, rep[i, 0, :] == ignore_index] = ignore_index
        aff[i, rep[i, 0, :] == ignore_index, :] = ignore_index
    return aff


def official_get_aff_loss(inputs: Tensor, targets: Tensor) -> Tensor:
    """``get_aff_loss``: ½ Σ_{A*=1}(1 − Â)/(n₊+1) + ½ Σ_{A*=0} Â/(n₋+1)."""
    pos = (targets == 1).type(torch.int16)
    neg = (targets == 0).type(torch.int16)
    pos_loss = torch.sum(pos * (1 - inputs)) / (pos.sum() + 1)
    neg_loss = torch.sum(neg * inputs) / (neg.sum() + 1)
    return 0.5 * pos_loss + 0.5 * neg_loss


def official_get_seg_loss(pred: Tensor, label: Tensor, ignore_index: int = 255) -> Tensor:
    """AFA / TSCD ``get_seg_loss``: mean CE over background pixels and over foreground pixels, averaged."""
    bg = label.clone()
    bg[label != 0] = ignore_index
    bg_loss = F.cross_entropy(pred, bg.type(torch.long), ignore_index=ignore_index)
    fg = label.clone()
    fg[label == 0] = ignore_index
    fg_loss = F.cross_entropy(pred, fg.type(torch.long), ignore_index=ignore_index)
    return (bg_loss + fg_loss) * 0.5


def official_get_energy_loss(img: Tensor, logit: Tensor, label: Tensor, img_box: Sequence[Sequence[int]],
                             loss_layer: Callable[..., Tensor]) -> Tensor:
    """``get_energy_loss``: softmax, crop mask from the boxes, image de-normalised to 0-255, the lattice layer."""
    prob = F.softmax(logit, dim=1)
    crop = torch.zeros_like(prob[:, 0])
    for i, (r0, r1, c0, c1) in enumerate(img_box):
        crop[i, r0:r1, c0:c1] = 1
    img255 = torch.zeros_like(img)
    for c in range(3):
        img255[:, c] = img[:, c] * OFFICIAL_STD_255[c] + OFFICIAL_MEAN_255[c]
    return loss_layer(prob, img255, crop > 0, label.long())


def official_tscd_iteration(net: OfficialTSCD, inputs: Tensor, cls_labels: Tensor, attn_mask: Tensor,
                            energy_layer: Callable[..., Tensor], *, scales=(1.0, 0.5, 1.5), scd_scale: float = 0.3,
                            num_samples: int = 40, high: float = 0.55, low: float = 0.35,
                            varm_iters: int = 10) -> tuple[Tensor, Tensor]:
    """One iteration after ``cam_iters``: returns ``(total loss, loss_er)`` (``loss_er`` has no gradient)."""
    b, _, h, w = inputs.shape
    img_box = [(0, h, 0, w)] * b
    inputs_denorm = official_denormalize(inputs.clone())

    cls, segs, _, attn_pred = net(inputs)

    def cam_fn(x: Tensor) -> Tensor:
        return net(x, cam_only=True)[0]

    cams = official_multi_scale_cam(cam_fn, inputs, scales)
    inputs2 = F.interpolate(inputs, scale_factor=scd_scale, mode="bilinear", align_corners=True)
    _, segs2, _, _ = net(inputs2)
    cams2 = official_multi_scale_cam(cam_fn, inputs2, scales)
    segs = F.interpolate(segs, size=(h, w), mode="bilinear", align_corners=True)
    segs2 = F.interpolate(segs2, size=inputs2.shape[2:], mode="bilinear", align_corners=True)
    coord_shape = [b, num_samples, num_samples, 2]
    coords1 = torch.rand(coord_shape, device=inputs.device) * 2 - 1
    coords2 = torch.rand(coord_shape, device=inputs.device) * 2 - 1
    loss_scd = official_scd(cams, cams2, segs, segs2, coords1, coords2)
    cams_down = F.interpolate(cams, size=cams2.shape[2:], mode="bilinear", align_corners=True)
    loss_er = torch.mean(torch.abs(cams_down[:, 1:] - cams2[:, 1:]))

    pseudo = reference_dual_threshold_pseudo_label(
        cams, cls_labels, inputs_denorm, torch.ones(b, h, w, dtype=torch.bool, device=inputs.device), high=high,
        low=low, down_scale=2, refiner=lambda img, p: official_varm(img, p, num_iter=varm_iters))
    seg_loss = official_get_seg_loss(segs, pseudo.type(torch.long))
    reg_loss = official_get_energy_loss(inputs, segs, pseudo, img_box, energy_layer)
    aff_label = official_affinity_label(pseudo, mask=attn_mask)
    aff_loss = official_get_aff_loss(attn_pred, aff_label)
    cls_loss = F.multilabel_soft_margin_loss(cls, cls_labels)
    loss = 1.0 * cls_loss + 0.1 * seg_loss + 0.01 * reg_loss + 0.1 * aff_loss + 0.1 * loss_scd + 0.1 * loss_er
    return loss, loss_er.detach()


# ------------------------------------------------------------------------------------------------ CoSA
def official_cosa_iteration(student: nn.Module, teacher: nn.Module, x_w: Tensor, x_s: Tensor, labels: Tensor,
                            energy_layer: Callable[..., Tensor], *, scales=(1.0, 0.5, 1.5), high: float = 0.7,
                            low: float = 0.2, high_aux: float = 0.7, low_aux: float = 0.25,
                            reg_weight: float = 0.05) -> Tensor:
    """One ``main.py`` iteration after the loss warm-up (fixed thresholds, full-image boxes): the total loss."""
    b, _, h, w = x_w.shape
    boxes = torch.tensor([[0, h, 0, w]] * b)
    with torch.no_grad():
        def teacher_fn(x: Tensor):
            out = teacher(x)
            return out[3], out[4], out[5]  # seg, cam, cam_aux

        t_cam, t_aux, t_seg = official_multi_scale_camseg(teacher_fn, x_w, list(scales))
        t_cam, t_aux = official_cam_validation(t_cam, labels), official_cam_validation(t_aux, labels)
        cpl = official_cam2mask(t_cam, labels, boxes, high, low)
        cpl_aux = official_cam2mask(t_aux, labels, boxes, high_aux, low_aux)
    cls, cls_aux, _, seg, cam, _ = student(x_s)
    loss = F.multilabel_soft_margin_loss(cls, labels) + F.multilabel_soft_margin_loss(cls_aux, labels)
    _, _, swap = official_swapped_assignment(seg, cam, cpl.long(), cpl_aux.long(), t_seg, labels.long())
    seg_up = F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False)
    reg = official_get_energy_loss(x_s, seg_up, cpl, boxes.tolist(), energy_layer)
    return loss + swap + reg_weight * reg


@torch.no_grad()
def official_cosa_ema_update(student: nn.Module, teacher: nn.Module, momentum: float = 0.9994) -> None:
    """The per-parameter EMA of the official loop: ``θ_t ← m·θ_t + (1 − m)·θ_s``."""
    for p_s, p_t in zip(student.parameters(), teacher.parameters(), strict=True):
        p_t.data = p_t.data * momentum + p_s.data * (1.0 - momentum)


# ---------------------------------------------------------------------------------------------- SLRNet
def official_slrnet_iteration(ref: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """``Net.forward`` (training path, both views) and the ``train_voc_wss.py`` loss, segmentation loss on."""
    from wsseg.utils import denormalize

    b = x.shape[0]
    k1 = labels.shape[1] + 1
    x2, inverse = official_affine_transform(x, scale_factor=0.5, flip=None)

    def backbone_forward(z):
        feats = ref.backbone.forward_as_dict(z)
        y = ref.aspp(feats["conv6"])
        skip = ref.fc8_skip(feats["conv3"])
        up = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return ref.fc8_x(torch.cat([up, skip], dim=1)), feats["conv3"]

    def segmentation_forward(z, shallow):
        z = official_stochastic_gate(z, ref.shallow_mask(shallow, z), 0.3, True)
        z = ref.last_conv(z)
        z = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
        return z, F.softmax(z, dim=1)

    f1, s1 = backbone_forward(x)
    f2, s2 = backbone_forward(x2)
    aux = ref.aux_head(f1)
    aux = torch.cat([1 - aux.max(dim=1, keepdim=True)[0], aux], dim=1)
    mask_aux = F.softmax(aux, dim=1)
    dict_init = official_dictionary_init(f1, aux.detach()).detach().permute(0, 2, 1)
    c = f1.shape[1]
    multi = torch.cat([f1.view(b, c, -1), f2.view(b, c, -1)], dim=-1)
    out, coding, _ = ref.factorization_reconstruction(multi.permute(0, 2, 1), dict_init)
    out = out.permute(0, 2, 1)
    n1, n2 = f1.shape[-1] * f1.shape[-2], f2.shape[-1] * f2.shape[-2]
    x_aug, x2_aug = torch.split(out, (n1, n2), dim=-1)
    x_aug, x2_aug = x_aug.reshape_as(f1), x2_aug.reshape_as(f2)
    code1, code2 = torch.split(coding, (n1, n2), dim=-1)
    code1 = code1.reshape(b, code1.shape[1], *f1.shape[-2:])
    code2 = code2.reshape(b, code2.shape[1], *f2.shape[-2:])
    x_aug, mask_aug = segmentation_forward(x_aug, s1)
    x2_aug, mask2_aug = segmentation_forward(x2_aug, s2)
    cls = official_classifier_forward(x_aug, mask_aug)
    cls_affine = official_classifier_forward(x2_aug, mask2_aug)
    grid = f1.shape[-2:]
    code2, x2_aug, mask2_aug = inverse(code2, grid), inverse(x2_aug, grid), inverse(mask2_aug, grid)
    cls_aux = official_classifier_forward(aux, mask_aux)
    reg = official_mask_reg_loss(mask_aug, mask2_aug, labels)
    code = official_code_reg_loss(code1, code2)
    masks = (mask_aug.detach() + mask2_aug.detach()) / 2.0
    pseudo = official_pseudo_label(masks, denormalize(x, mode="float"), labels)
    onehot = label_map_to_onehot(pseudo, k1)
    seg = (official_balanced_mask_loss_ce(x_aug, onehot, labels)
           + official_balanced_mask_loss_ce(x2_aug, onehot, labels)
           + 0.4 * official_balanced_mask_loss_ce(aux, onehot, labels))
    cls_loss = (F.multilabel_soft_margin_loss(cls, labels) + F.multilabel_soft_margin_loss(cls_affine, labels)
                + 0.4 * F.multilabel_soft_margin_loss(cls_aux, labels))
    return cls_loss + 4.0 * reg + 4.0 * code + seg.mean()
