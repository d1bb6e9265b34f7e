"""CoSA's teacher multi-scale pass, transcribed for tests (not library code).

``utils/seg_helper.py`` (``multi_scale_camseg``, ``cam_validation``) of github.com/youshyee/CoSA, written
as a plain per-scale loop: for every scale in list order the weak view is resized (bilinear,
``align_corners=False``; scale 1.0 keeps it), concatenated with its horizontal flip and passed through the
teacher. Main and aux CAMs are resized to the image size, fused with the flipped-back half by an
element-wise max and passed through a ReLU; the main CAMs are appended to a list, while the aux-CAM list is
**re-assigned** at every scale (the official bug: only the last scale survives). Segmentation logits are
resized and the two halves summed. Each CAM stack is summed over the list, shifted by its per-map minimum
(``+ adaptive_max_pool2d(-cam)``) and divided by its per-map maximum plus 1e-5; the segmentation maps are
summed. ``cam_validation`` then multiplies each CAM by the image labels, one image at a time here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["official_multi_scale_camseg", "official_cam_validation"]


@torch.no_grad()
def official_multi_scale_camseg(model_fn, imgs: Tensor, scales) -> tuple[Tensor, Tensor, Tensor]:
    """``model_fn(x) -> (seg, cam, cam_aux)`` raw outputs; returns (cam, cam_aux, seg) as the official code."""
    assert 1.0 in scales
    b, _, h, w = imgs.shape
    cam_list, cam_aux_list, seg_list = [], [], []
    for s in scales:
        if s != 1.0:
            x = F.interpolate(imgs, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
        else:
            x = imgs
        seg_s, cam_s, cam_aux_s = model_fn(torch.cat([x, x.flip(-1)], dim=0))
        cam_s = F.interpolate(cam_s, size=(h, w), mode="bilinear", align_corners=False)
        cam_s = torch.max(cam_s[:b], cam_s[b:].flip(-1))
        cam_aux_s = F.interpolate(cam_aux_s, size=(h, w), mode="bilinear", align_corners=False)
        cam_aux_s = torch.max(cam_aux_s[:b], cam_aux_s[b:].flip(-1))
        cam_list.append(F.relu(cam_s))
        cam_aux_list = [F.relu(cam_aux_s)]  # the official overwrite (not append), kept on purpose
        seg_s = F.interpolate(seg_s, size=(h, w), mode="bilinear", align_corners=False)
        seg_list.append(torch.sum(torch.stack([seg_s[:b], seg_s[b:].flip(-1)], dim=0), dim=0))

    def normalise(stack):
        cam = torch.sum(torch.stack(stack, dim=0), dim=0)
        cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
        return cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)

    return normalise(cam_list), normalise(cam_aux_list), torch.sum(torch.stack(seg_list, dim=0), dim=0)


def official_cam_validation(cam: Tensor, labels: Tensor) -> Tensor:
    """Multiply every (image, class) map by its image label, one image at a time."""
    out = torch.empty_like(cam)
    for i in range(cam.shape[0]):
        out[i] = cam[i] * labels[i].to(cam.dtype)[:, None, None]
    return out
