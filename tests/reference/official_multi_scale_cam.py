"""The official multi-scale CAM loop of AFA / TSCD, transcribed for tests (not library code).

``utils/camutils.py`` (``multi_scale_cam``) of github.com/rulixiang/afa and of TSCD
(github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023): a first pass on the input itself (scale 1),
then one pass per listed scale different from 1.0, each on the batch concatenated with its horizontal
flip; every CAM is resized to the input size, fused with the flipped-back half by an element-wise max,
passed through a ReLU; the list is stacked and summed; the sum is shifted by its per-map minimum
(``+ adaptive_max_pool2d(-cam)``) and divided by its per-map maximum plus 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["official_multi_scale_cam"]


@torch.no_grad()
def official_multi_scale_cam(cam_fn, inputs: Tensor, scales) -> Tensor:
    b, _, h, w = inputs.shape

    def one_pass(x: Tensor) -> Tensor:
        out = cam_fn(torch.cat([x, x.flip(-1)], dim=0))
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return F.relu(torch.max(out[:b], out[b:].flip(-1)))

    maps = [one_pass(inputs)]
    for s in scales:
        if s != 1.0:
            x = F.interpolate(inputs, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False)
            maps.append(one_pass(x))
    cam = torch.sum(torch.stack(maps, dim=0), dim=0)
    cam = cam + F.adaptive_max_pool2d(-cam, (1, 1))
    cam = cam / (F.adaptive_max_pool2d(cam, (1, 1)) + 1e-5)
    return cam
