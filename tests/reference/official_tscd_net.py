"""The official TSCD network, re-written for wsseg's tests (not library code).

Module tree, attribute names and forward follow the official definitions, independently of
:mod:`wsseg.models.tscd` / :mod:`wsseg.backbones.mix_transformer`:

* github.com/Rongtao-Xu/RepresentationLearning, ``SCD-AAAI2023/network/TSCD_model.py`` (``TSCD``: ``encoder``,
  ``dropout``, ``decoder``, ``attn_proj``, ``classifier``; ``forward(x, cam_only)``);
* AFA's ``wetr/mix_transformer.py`` (``MixVisionTransformer``: ``patch_embed1..4`` = conv + LayerNorm,
  ``block1..4`` of ``Block(norm1, attn(q, kv, sr, norm, proj), norm2, mlp(fc1, dwconv.dwconv, fc2))``,
  ``norm1..4``; every attention returns its unscaled logits ``q k^T``, query axis average-pooled by
  ``sr × sr`` so the map is square);
* ``segformer_head.py`` (``SegFormerHead``: ``linear_c1..4.proj``, ``linear_fuse`` = mmcv ``ConvModule``
  with parts ``conv`` (no bias) / ``bn`` / ReLU, ``dropout``, ``linear_pred``; concatenation order c4, c3,
  c2, c1).

So ``OfficialTSCD(...).state_dict()`` has the official key names (without the ``module.`` of DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OfficialMiT", "OfficialSegFormerHead", "OfficialTSCD"]


class _DWConv(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int) -> None:
        super().__init__()
        self.heads, self.sr_ratio = heads, sr
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=True)
        self.kv = nn.Linear(dim, 2 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).permute(0, 2, 1, 3)
        src = x
        if self.sr_ratio > 1:
            src = self.norm(self.sr(x.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1).permute(0, 2, 1))
        kv = self.kv(src).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        logits = q @ k.transpose(-2, -1)
        attn = (logits * self.scale).softmax(dim=-1)
        out = self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        nk = attn.shape[-1]
        grid = logits.reshape(b, self.heads, h, w, nk)
        if self.sr_ratio > 1:
            grid = F.avg_pool3d(grid, kernel_size=(self.sr_ratio, self.sr_ratio, 1),
                                stride=(self.sr_ratio, self.sr_ratio, 1))
        return out, grid.reshape(-1, self.heads, nk, nk)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        a, logits = self.attn(self.norm1(x), h, w)
        x = x + a
        return x + self.mlp(self.norm2(x), h, w), logits


class _PatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, k: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, k, stride, padding=k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class OfficialMiT(nn.Module):
    """``MixVisionTransformer`` (no classification head: TSCD pops ``head.*`` before loading)."""

    def __init__(self, dims, heads, depths, srs, stride=(4, 2, 2, 1)) -> None:
        super().__init__()
        prev = 3
        for s in range(4):
            setattr(self, f"patch_embed{s + 1}", _PatchEmbed(prev, dims[s], 7 if s == 0 else 3, stride[s]))
            setattr(self, f"block{s + 1}", nn.ModuleList([_Block(dims[s], heads[s], srs[s]) for _ in range(depths[s])]))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(dims[s], eps=1e-6))
            prev = dims[s]
        self.embed_dims = list(dims)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        b = x.shape[0]
        outs, attns = [], []
        for s in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{s}")(x)
            for blk in getattr(self, f"block{s}"):
                x, a = blk(x, h, w)
                attns.append(a)
            x = getattr(self, f"norm{s}")(x).reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs, attns


class _LinearEmbed(nn.Module):
    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cin, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(2).transpose(1, 2))


class _ConvModule(nn.Module):
    """mmcv ``ConvModule(kernel_size=1, norm_cfg=SyncBN)``: ``conv`` (bias off because of the norm), ``bn``, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.activate = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class OfficialSegFormerHead(nn.Module):
    def __init__(self, in_channels, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = in_channels
        self.linear_c4 = _LinearEmbed(c4, embedding_dim)
        self.linear_c3 = _LinearEmbed(c3, embedding_dim)
        self.linear_c2 = _LinearEmbed(c2, embedding_dim)
        self.linear_c1 = _LinearEmbed(c1, embedding_dim)
        self.dropout = nn.Dropout2d(0.1)
        self.linear_fuse = _ConvModule(4 * embedding_dim, embedding_dim)
        self.linear_pred = nn.Conv2d(embedding_dim, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        c1, c2, c3, c4 = feats
        n = c4.shape[0]
        size = c1.shape[2:]
        maps = []
        for c, lin in ((c4, self.linear_c4), (c3, self.linear_c3), (c2, self.linear_c2), (c1, self.linear_c1)):
            m = lin(c).permute(0, 2, 1).reshape(n, -1, c.shape[2], c.shape[3])
            if c is not c1:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            maps.append(m)
        return self.linear_pred(self.dropout(self.linear_fuse(torch.cat(maps, dim=1))))


class OfficialTSCD(nn.Module):
    """``TSCD(backbone, num_classes=K + 1, embedding_dim, stride, pooling="gmp")``."""

    def __init__(self, dims=(64, 128, 320, 512), heads=(1, 2, 5, 8), depths=(2, 2, 2, 2), srs=(8, 4, 2, 1),
                 num_classes: int = 21, embedding_dim: int = 256) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = OfficialMiT(dims, heads, depths, srs)
        self.dropout = nn.Dropout2d(0.5)
        self.decoder = OfficialSegFormerHead(dims, embedding_dim, num_classes)
        self.attn_proj = nn.Conv2d(2 * heads[3], 1, kernel_size=1, bias=True)
        self.classifier = nn.Conv2d(dims[3], num_classes - 1, kernel_size=1, bias=False)

    def forward(self, x: Tensor, cam_only: bool = False):
        feats, attns = self.encoder(x)
        x4 = feats[3]
        seg = self.decoder(feats)
        attn_pred = torch.sigmoid(self.attn_proj(torch.cat(attns[-2:], dim=1)))[:, 0]
        if cam_only:
            return F.conv2d(x4, self.classifier.weight).detach(), attn_pred
        cls = self.classifier(F.adaptive_max_pool2d(x4, (1, 1))).view(-1, self.num_classes - 1)
        return cls, seg, attns, attn_pred
