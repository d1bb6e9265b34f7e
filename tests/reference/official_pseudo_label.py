"""Per-image-loop formulation of AFA's refined dual-threshold pseudo label (tests and benchmarks only).

A straightforward re-formulation of ``refine_cams_with_bkg_v2`` / ``_refine_cams``
(github.com/rulixiang/afa, utils/camutils.py): one Python loop over the images, one refiner call per
image and threshold on the channels {background} ∪ {present classes} only. The crop box of the
official code is replaced by a boolean ``valid`` mask. Written independently for comparison with the
vectorised :func:`wsseg.pseudo.dual_threshold_pseudo_label`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reference_dual_threshold_pseudo_label"]


@torch.no_grad()
def reference_dual_threshold_pseudo_label(cam: Tensor, labels: Tensor, image: Tensor | None = None,
                                          valid: Tensor | None = None, *, high: float = 0.55,
                                          low: float = 0.35, down_scale: int = 2, refiner=None,
                                          ignore_index: int = 255) -> Tensor:
    B, K, H, W = cam.shape
    h, w = H // down_scale, W // down_scale
    small_image = None
    if refiner is not None:
        small_image = F.interpolate(image.float(), size=(h, w), mode="bilinear", align_corners=False)

    per_threshold = []
    for tau in (high, low):
        bkg = torch.full((B, 1, H, W), tau, dtype=torch.float32, device=cam.device)
        z = torch.cat([bkg, cam.float()], dim=1)
        z = F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False)
        result = torch.full((B, H, W), ignore_index, dtype=torch.long, device=cam.device)
        for b in range(B):
            keys = torch.cat([torch.zeros(1, dtype=torch.long, device=cam.device),
                              torch.nonzero(labels[b] > 0)[:, 0] + 1])
            probs = z[b:b + 1, keys].softmax(dim=1)
            if refiner is not None:
                probs = refiner(small_image[b:b + 1], probs)
            probs = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)
            lab = keys[probs.argmax(dim=1)[0]]
            if valid is None:
                result[b] = lab
            else:
                result[b][valid[b]] = lab[valid[b]]
        per_threshold.append(result)

    y_hi, y_lo = per_threshold
    out = y_hi.clone()
    out[y_hi == 0] = ignore_index
    out[(y_hi + y_lo) == 0] = 0
    return out
