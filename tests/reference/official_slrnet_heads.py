"""Straightforward formulation of SLRNet's decoder, heads, pseudo label and post-processing (tests only).

Re-written from the behaviour of github.com/DesertsP/SLRNet (``models/mods/aspp.py``, ``gci.py``, ``sg.py``,
``models/single_stage.py``, ``models/slrnet.py``, ``tools/infer_voc.py``): modules with the official
structure and parameter names, the official op order (``F.dropout`` on a ones tensor for the gate, the
explicit bilinear upsampling of the pooled ASPP branch, ``(1 - α)`` rescaling), the pseudo label with a
Python loop over the images and the test-time post-processing per image as in the inference worker.
Independent of the wsseg implementation, for comparison with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.reference.official_refiners import official_pamr

__all__ = [
    "OfficialBN",
    "OfficialASPP",
    "OfficialDecoder",
    "OfficialGCI",
    "official_stochastic_gate",
    "OfficialSegHead",
    "OfficialAuxHead",
    "official_pseudo_gtmask",
    "official_pseudo_label",
    "official_postprocess",
]


class OfficialBN(nn.BatchNorm2d):
    """``_BatchNorm`` of ``single_stage.py``: momentum 0.05, eps 1e-5."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs, momentum=0.05, eps=1e-5)


class _OfficialASPPBranch(nn.Module):
    def __init__(self, cin, cout, k, padding, dilation):
        super().__init__()
        self.atrous_conv = nn.Conv2d(cin, cout, k, stride=1, padding=padding, dilation=dilation, bias=False)
        self.bn = OfficialBN(cout)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.atrous_conv(x)))


class OfficialASPP(nn.Module):
    """ASPP, output stride 8: dilations 1 / 12 / 24 / 36, image pooling, 1280 → 256, dropout 0.5."""

    def __init__(self, inplanes, planes=256, dilations=(1, 12, 24, 36)):
        super().__init__()
        self.aspp1 = _OfficialASPPBranch(inplanes, planes, 1, 0, dilations[0])
        self.aspp2 = _OfficialASPPBranch(inplanes, planes, 3, dilations[1], dilations[1])
        self.aspp3 = _OfficialASPPBranch(inplanes, planes, 3, dilations[2], dilations[2])
        self.aspp4 = _OfficialASPPBranch(inplanes, planes, 3, dilations[3], dilations[3])
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)),
                                             nn.Conv2d(inplanes, planes, 1, stride=1, bias=False),
                                             OfficialBN(planes), nn.ReLU())
        self.conv1 = nn.Conv2d(5 * planes, planes, 1, bias=False)
        self.bn1 = OfficialBN(planes)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        x1, x2, x3, x4 = self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x)
        x5 = self.global_avg_pool(x)
        x5 = F.interpolate(x5, size=x4.shape[2:], mode="bilinear", align_corners=True)
        x = self.relu(self.bn1(self.conv1(torch.cat((x1, x2, x3, x4, x5), dim=1))))
        return self.dropout(x)


class OfficialDecoder(nn.Module):
    """``Net.backbone_forward`` after the backbone; the ASPP BNs are kept in eval mode by ``train()``."""

    def __init__(self, inplanes=4096, skip=256, planes=256, skip_planes=48, dilations=(1, 12, 24, 36)):
        super().__init__()
        self.aspp = OfficialASPP(inplanes, planes, dilations)
        self.fc8_skip = nn.Sequential(nn.Conv2d(skip, skip_planes, 1, bias=False), OfficialBN(skip_planes),
                                      nn.ReLU(False))
        self.fc8_x = nn.Sequential(nn.Conv2d(planes + skip_planes, planes, kernel_size=3, stride=1, padding=1,
                                             bias=False), OfficialBN(planes), nn.ReLU(False))

    def train(self, mode=True):
        super().train(mode)
        for m in self.aspp.modules():      # _fix_running_stats(self.aspp, fix_params=False)
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, conv6, conv3):
        x = self.aspp(conv6)
        x2_x = self.fc8_skip(conv3)
        x_up = F.interpolate(x, size=x2_x.shape[-2:], mode="bilinear", align_corners=True)
        return self.fc8_x(torch.cat([x_up, x2_x], dim=1))


class OfficialGCI(nn.Module):
    """Global cue injection; official argument order ``forward(x=shallow, y=deep)``."""

    def __init__(self, c=256):
        super().__init__()
        self.fc_deep = nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), OfficialBN(2 * c), nn.ReLU(False))
        self.fc_skip = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), OfficialBN(c, affine=False))
        self.fc_cls = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), OfficialBN(c), nn.ReLU(False))

    def forward(self, x, y):
        y = self.fc_deep(y)
        attrs, _ = y.view(y.size(0), y.size(1), -1).max(-1)
        x = self.fc_skip(x)
        bs, num_c = x.shape[:2]
        attrs = attrs.view(bs, 2, num_c)
        gamma = attrs[:, 0].unsqueeze(-1).unsqueeze(-1)
        beta = attrs[:, 1].unsqueeze(-1).unsqueeze(-1)
        x = F.relu(x * (gamma + 1) + beta)
        return self.fc_cls(x)


def official_stochastic_gate(x1: Tensor, x2: Tensor, alpha_rate: float, training: bool) -> Tensor:
    """``StochasticGate.forward`` (x1 deep, x2 shallow)."""
    if training:
        mask_drop = (1 - alpha_rate) * F.dropout(torch.ones_like(x1), alpha_rate)
        x1 = (x1 - alpha_rate * x2) / max(1e-8, 1 - alpha_rate)
        return mask_drop * x1 + (1 - mask_drop) * x2
    return (1 - alpha_rate) * x1 + alpha_rate * x2


class OfficialSegHead(nn.Module):
    """``Net.segmentation_forward``: GCI, gate (α = 0.3), ``last_conv``, constant background 1."""

    def __init__(self, num_classes=21, c=256):
        super().__init__()
        self.shallow_mask = OfficialGCI(c)
        self.last_conv = nn.Sequential(nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False), OfficialBN(c),
                                       nn.ReLU(False), nn.Dropout(0.5),
                                       nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False), OfficialBN(c),
                                       nn.ReLU(False), nn.Dropout(0.1),
                                       nn.Conv2d(c, num_classes - 1, 1, stride=1))

    def forward(self, x, x_s):
        x2 = self.shallow_mask(x_s, x)
        x = official_stochastic_gate(x, x2, 0.3, self.training)
        x = self.last_conv(x)
        bg = torch.ones_like(x[:, :1])
        x = torch.cat([bg, x], dim=1)
        return x, F.softmax(x, dim=1)


class OfficialAuxHead(nn.Module):
    """``Net.aux_head`` + ``Net.aux_forward`` (background ``1 - max``)."""

    def __init__(self, num_classes=21, c=256):
        super().__init__()
        self.aux_head = nn.Sequential(nn.Conv2d(c, c, 3, stride=1, padding=1, bias=False), OfficialBN(c),
                                      nn.ReLU(False), nn.Dropout(0.5), nn.Conv2d(c, num_classes - 1, 1, stride=1))

    def forward(self, x):
        x = self.aux_head(x)
        bg = 1 - torch.max(x, dim=1, keepdim=True)[0]
        x = torch.cat([bg, x], dim=1)
        return x, F.softmax(x, dim=1)


def official_pseudo_gtmask(mask: Tensor, cutoff_top: float = 0.6, cutoff_low: float = 0.2) -> Tensor:
    """``pseudo_gtmask``: relative thresholds (background 0.7 hard-coded), ambiguous pixels cleared."""
    bs, c, h, w = mask.size()
    mask = mask.view(bs, c, -1)
    mask_max, _ = mask.max(-1, keepdim=True)
    mask_max[:, :1] *= 0.7
    mask_max[:, 1:] *= cutoff_top
    lowest = torch.Tensor([cutoff_low]).type_as(mask_max)
    mask_max = mask_max.max(lowest)
    pseudo_gt = (mask > mask_max).type_as(mask)
    ambiguous = (pseudo_gt.sum(1, keepdim=True) > 1).type_as(mask)
    pseudo_gt = (1 - ambiguous) * pseudo_gt
    return pseudo_gt.view(bs, c, h, w)


@torch.no_grad()
def official_pseudo_label(masks: Tensor, x_raw: Tensor, labels: Tensor, num_iter: int = 10,
                          dilations=(1, 2, 4, 8, 12, 24), ignore_index: int = 255) -> Tensor:
    """Pseudo-label block of ``Net.forward`` + the argmax / ignore of ``balanced_mask_loss_ce``, per image."""
    B = masks.shape[0]
    H, W = x_raw.shape[-2:]
    out = []
    for b in range(B):
        m = masks[b:b + 1]
        im = F.interpolate(x_raw[b:b + 1], m.size()[-2:], mode="bilinear", align_corners=True)  # run_pamr
        refined = official_pamr(im, m, dilations, num_iter)
        refined = F.interpolate(refined, size=(H, W), mode="bilinear", align_corners=True)
        refined[:, 1:] *= labels[b:b + 1, :, None, None].type_as(refined)
        pseudo_gt = official_pseudo_gtmask(refined)
        mask_gt = torch.argmax(pseudo_gt, 1)
        mask_gt[pseudo_gt.sum(1) < 1.0] = ignore_index
        out.append(mask_gt[0])
    return torch.stack(out)


def official_postprocess(masks_pred: Tensor, labels: Tensor | None = None, cls_pred: Tensor | None = None,
                         fp_cut: float = 0.3, topk_classes: int = 6, bg_pow: float = 3.0) -> Tensor:
    """``_worker`` of ``tools/infer_voc.py`` after the fusion, one image at a time."""
    out = []
    for b in range(masks_pred.shape[0]):
        m = masks_pred[b].clone()
        if labels is None:
            cls_sigmoid = torch.sigmoid(cls_pred[b])
            cls_label = (cls_sigmoid > fp_cut) * (cls_sigmoid >= torch.topk(cls_sigmoid, k=topk_classes)[0][-1])
        else:
            cls_label = labels[b]
        cls_label = cls_label.type_as(m)
        m[1:, :, :] *= cls_label.view(cls_label.size(0), 1, 1)
        m[0, :, :] = torch.pow(m[0], bg_pow)
        out.append(m)
    return torch.stack(out)
