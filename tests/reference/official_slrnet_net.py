"""The official SLRNet network (``models/slrnet.py``, ``Net``), re-written for wsseg's tests (not library code).

Module tree and attribute names follow github.com/DesertsP/SLRNet, independently of :mod:`wsseg.models.slrnet`:
``backbone`` (``ResNet38`` with the ``fixed_layers`` ModuleList that registers ``conv1a``, ``b2``, ``b2_1``,
``b2_2`` a second time), ``aspp``, ``_aff`` (PAMR with its three constant kernel buffers ``aff_x``,
``aff_m``, ``aff_std``), ``shallow_mask`` (GCI), ``sg``, ``fc8_skip``, ``fc8_x``, ``last_conv``,
``newly_added`` (ModuleList registering aspp, shallow_mask, sg, fc8_skip, fc8_x, last_conv,
factorization_reconstruction, initialize_dictionary, aux_head a second time),
``factorization_reconstruction``, ``initialize_dictionary``, ``aux_head``. So
``OfficialSLRNet(...).state_dict()`` has the official names, duplicates and constant buffers included.

:meth:`OfficialSLRNet.forward` is the single-scale test path of ``Net.forward(x, single_scale=True)``:
backbone → ASPP decoder → aux head → dictionary initialisation → factorisation → GCI + gate → ``last_conv``
with constant background 1 → nGWP classification (``classifier_forward``) and softmax masks upsampled to the
input (``align_corners=True``). The decoder and head sub-modules come from
:mod:`tests.reference.official_slrnet_heads` / :mod:`tests.reference.official_slrnet_lowrank`.
All widths can be divided (``divisor`` for the backbone, ``c`` for the 256-wide new layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.reference.official_slrnet_heads import (
    OfficialASPP,
    OfficialBN,
    OfficialGCI,
    official_stochastic_gate,
)
from tests.reference.official_slrnet_lowrank import (
    OfficialFactorizationReconstruction,
    official_dictionary_init,
)

__all__ = ["OfficialResNet38", "OfficialPAMRKernels", "OfficialSLRNet", "official_pamr_kernels"]


class _FixedBN(nn.BatchNorm2d):
    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, first_dilation: int | None = None,
                 dilation: int = 1) -> None:
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = _FixedBN(cin)
        self.conv_branch2a = nn.Conv2d(cin, mid, 3, stride, padding=first_dilation, dilation=first_dilation,
                                       bias=False)
        self.bn_branch2b1 = _FixedBN(mid)
        self.conv_branch2b1 = nn.Conv2d(mid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn_branch2a(x))
        b1 = x if self.same_shape else self.conv_branch1(a)
        return b1 + self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))


class _ResBlockBot(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn_branch2a = _FixedBN(cin)
        self.conv_branch2a = nn.Conv2d(cin, cout // 4, 1, stride, bias=False)
        self.bn_branch2b1 = _FixedBN(cout // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(cout // 4, cout // 2, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = _FixedBN(cout // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(cout // 2, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn_branch2a(x))
        y = self.dropout_2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(a))))
        y = self.dropout_2b2(F.relu(self.bn_branch2b2(self.conv_branch2b1(y))))
        return self.conv_branch1(a) + self.conv_branch2b2(y)


class OfficialResNet38(nn.Module):
    def __init__(self, divisor: int = 1) -> None:
        super().__init__()
        d = divisor
        self.conv1a = nn.Conv2d(3, 64 // d, 3, padding=1, bias=False)
        self.b2 = _ResBlock(64 // d, 128 // d, 128 // d, stride=2)
        self.b2_1 = _ResBlock(128 // d, 128 // d, 128 // d)
        self.b2_2 = _ResBlock(128 // d, 128 // d, 128 // d)
        self.b3 = _ResBlock(128 // d, 256 // d, 256 // d, stride=2)
        self.b3_1 = _ResBlock(256 // d, 256 // d, 256 // d)
        self.b3_2 = _ResBlock(256 // d, 256 // d, 256 // d)
        self.b4 = _ResBlock(256 // d, 512 // d, 512 // d, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", _ResBlock(512 // d, 512 // d, 512 // d))
        self.b5 = _ResBlock(512 // d, 512 // d, 1024 // d, stride=1, first_dilation=1, dilation=2)
        self.b5_1 = _ResBlock(1024 // d, 512 // d, 1024 // d, dilation=2)
        self.b5_2 = _ResBlock(1024 // d, 512 // d, 1024 // d, dilation=2)
        self.b6 = _ResBlockBot(1024 // d, 2048 // d, stride=1, dilation=4, dropout=0.3)
        self.b7 = _ResBlockBot(2048 // d, 4096 // d, dilation=4, dropout=0.5)
        self.bn7 = _FixedBN(4096 // d)
        self.fixed_layers = nn.ModuleList([self.conv1a, self.b2, self.b2_1, self.b2_2])

    def forward_as_dict(self, x: Tensor) -> dict[str, Tensor]:
        x = self.conv1a(x)
        for name in ("b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2"):
            x = getattr(self, name)(x)
        conv3 = x
        for name in ("b4", "b4_1", "b4_2", "b4_3", "b4_4", "b4_5", "b5", "b5_1", "b5_2", "b6", "b7"):
            x = getattr(self, name)(x)
        return {"conv3": conv3, "conv6": F.relu(self.bn7(x))}


def official_pamr_kernels() -> dict[str, Tensor]:
    """The three constant kernels of the official PAMR (``LocalAffinityAbs``, ``LocalAffinityCopy``, ``LocalStDev``)."""
    offsets = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]
    aff = torch.zeros(8, 1, 3, 3)
    copy = torch.zeros(8, 1, 3, 3)
    for i, (r, c) in enumerate(offsets):
        aff[i, 0, 1, 1] = 1
        aff[i, 0, r, c] = -1
        copy[i, 0, r, c] = 1
    std = torch.zeros(9, 1, 3, 3)
    for i in range(9):
        std[i, 0, i // 3, i % 3] = 1
    return {"aff_x": aff, "aff_m": copy, "aff_std": std}


class _KernelHolder(nn.Module):
    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        self.register_buffer("kernel", kernel)


class OfficialPAMRKernels(nn.Module):
    """The tensors of the official ``PAMR`` module: three constant buffers (its forward is not needed here)."""

    def __init__(self) -> None:
        super().__init__()
        for name, k in official_pamr_kernels().items():
            setattr(self, name, _KernelHolder(k))


class _NoParams(nn.Module):
    """Stand-in for the parameter-free ``StochasticGate`` / ``DictionaryInitialization`` modules."""


class OfficialSLRNet(nn.Module):
    def __init__(self, num_classes: int = 21, divisor: int = 1, c: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = OfficialResNet38(divisor)
        self.aspp = OfficialASPP(4096 // divisor, c)
        self._aff = OfficialPAMRKernels()
        self.shallow_mask = OfficialGCI(c)
        self.sg = _NoParams()
        self.fc8_skip = nn.Sequential(nn.Conv2d(256 // divisor, 48, 1, bias=False), OfficialBN(48), nn.ReLU())
        self.fc8_x = nn.Sequential(nn.Conv2d(c + 48, c, 3, padding=1, bias=False), OfficialBN(c), nn.ReLU())
        self.last_conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), OfficialBN(c), nn.ReLU(),
                                       nn.Dropout(0.5), nn.Conv2d(c, c, 3, padding=1, bias=False), OfficialBN(c),
                                       nn.ReLU(), nn.Dropout(0.1), nn.Conv2d(c, num_classes - 1, 1))
        self.newly_added = nn.ModuleList([self.aspp, self.shallow_mask, self.sg, self.fc8_skip, self.fc8_x,
                                          self.last_conv])
        self.factorization_reconstruction = OfficialFactorizationReconstruction(c, num_iters=1, scale=1.0)
        self.initialize_dictionary = _NoParams()
        self.aux_head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), OfficialBN(c), nn.ReLU(),
                                      nn.Dropout(0.5), nn.Conv2d(c, num_classes - 1, 1))
        self.newly_added.append(self.factorization_reconstruction)
        self.newly_added.append(self.initialize_dictionary)
        self.newly_added.append(self.aux_head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(cls (B, K), seg logits (B, K + 1, h, w), masks (B, K + 1, H, W))`` of the single-scale test path."""
        b, _, h_in, w_in = x.shape
        feats = self.backbone.forward_as_dict(x)
        y = self.aspp(feats["conv6"])
        skip = self.fc8_skip(feats["conv3"])
        y = self.fc8_x(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True),
                                  skip], dim=1))
        aux = self.aux_head(y)
        aux = torch.cat([1 - aux.max(dim=1, keepdim=True)[0], aux], dim=1)
        dict_init = official_dictionary_init(y, aux)                              # (B, C, K + 1)
        c = y.shape[1]
        out, _, _ = self.factorization_reconstruction(y.reshape(b, c, -1).permute(0, 2, 1),
                                                      dict_init.permute(0, 2, 1))
        y = out.permute(0, 2, 1).reshape_as(y)
        g = self.shallow_mask(feats["conv3"], y)
        y = official_stochastic_gate(y, g, 0.3, self.training)
        y = self.last_conv(y)
        seg = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)
        masks = F.softmax(seg, dim=1)
        flat, m = seg.reshape(b, seg.shape[1], -1), masks.reshape(b, seg.shape[1], -1)
        cls_1 = (flat * m).sum(-1) / (1.0 + m.sum(-1))
        mean = m.mean(-1)
        cls_2 = torch.pow(1 - mean, 3) * torch.log(0.01 + mean)
        cls = cls_1[:, 1:] + cls_2[:, 1:]
        return cls, seg, F.interpolate(masks, size=(h_in, w_in), mode="bilinear", align_corners=True)
