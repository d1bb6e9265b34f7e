"""The official CoSA network (``VITNetwork`` with a ViT encoder and LargeFOV), re-written for wsseg's tests.

Module tree, attribute names and forward follow github.com/youshyee/CoSA, independently of
:mod:`wsseg.models.cosa` / :mod:`wsseg.backbones.timm_vit`:

* ``models/vit/vit.py``: ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``pos_embed`` stored for
  ``img_size``, ``blocks.i`` = ``Block(norm1, attn(qkv, proj), norm2, mlp(fc1, fc2))`` with LayerNorm eps
  1e-6, final ``norm``, ImageNet ``head``). ``prepare_tokens`` resizes the stored square patch grid to the
  input grid with ``F.interpolate(mode="bicubic", align_corners=False)`` on every forward;
  ``forward_features`` returns (class token, final-normed patch tokens, raw patch tokens of block
  ``aux_layer``);
* ``models/decoder/conv_head.py``: ``LargeFOV`` (``conv6``, ``conv7`` 3×3 dilation 5, ``conv8`` 1×1, no biases);
* ``models/__init__.py``: ``VITNetwork`` (``encoder``, ``decoder``, ``classifier``, ``aux_classifier``,
  global max pooling; ``num_classes`` counts the background).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OfficialViT", "OfficialLargeFOV", "OfficialCoSA"]


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class OfficialViT(nn.Module):
    def __init__(self, img_size: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 hidden: int = 3072, aux_layer: int = -3, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_embed = _PatchEmbed(patch, dim)
        self._size = img_size // patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self._size ** 2 + 1, dim))
        self.blocks = nn.ModuleList([_Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.patch_size = patch
        self.aux_layer = aux_layer

    def prepare_tokens(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        h, w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        tokens = self.patch_embed(x)
        grid = self.pos_embed[:, 1:].reshape(1, self._size, self._size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat((self.pos_embed[:, :1], grid.reshape(1, -1, h * w).permute(0, 2, 1)), dim=1)
        return torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1) + pos

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self.prepare_tokens(x)
        embeds = []
        for blk in self.blocks:
            x = blk(x)
            embeds.append(x)
        x = self.norm(x)
        embeds[-1] = x
        return x[:, 0], x[:, 1:], embeds[self.aux_layer][:, 1:]


class OfficialLargeFOV(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, embed_dim: int = 512, dilation: int = 5) -> None:
        super().__init__()
        self.conv6 = nn.Conv2d(in_planes, embed_dim, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu6 = nn.ReLU()
        self.conv7 = nn.Conv2d(embed_dim, embed_dim, 3, padding=dilation, dilation=dilation, bias=False)
        self.relu7 = nn.ReLU()
        self.conv8 = nn.Conv2d(embed_dim, out_planes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv8(self.relu7(self.conv7(self.relu6(self.conv6(x)))))


class OfficialCoSA(nn.Module):
    """``VITNetwork(backbone, num_classes=K + 1, aux_layer, isgap=False, decoder="LargeFOV")``."""

    def __init__(self, num_classes: int = 21, aux_layer: int = -3, img_size: int = 224, patch: int = 16,
                 dim: int = 768, depth: int = 12, heads: int = 12, hidden: int = 3072, decoder_dim: int = 512) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = OfficialViT(img_size, patch, dim, depth, heads, hidden, aux_layer)
        self.decoder = OfficialLargeFOV(dim, num_classes, decoder_dim)
        self.classifier = nn.Conv2d(dim, num_classes - 1, kernel_size=1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes - 1, kernel_size=1, bias=False)

    @staticmethod
    def to_2d(x: Tensor, h: int, w: int) -> Tensor:
        n, _, c = x.shape
        return x.transpose(1, 2).reshape(n, c, h, w)

    def forward(self, x: Tensor):
        _, tokens, aux = self.encoder.forward_features(x)
        h, w = x.shape[-2] // self.encoder.patch_size, x.shape[-1] // self.encoder.patch_size
        x4, x_aux = self.to_2d(tokens, h, w), self.to_2d(aux, h, w)
        seg = self.decoder(x4)
        cam = F.conv2d(x4, self.classifier.weight)
        cam_aux = F.conv2d(x_aux, self.aux_classifier.weight)
        cls_aux = self.aux_classifier(F.adaptive_max_pool2d(x_aux, (1, 1))).view(-1, self.num_classes - 1)
        cls = self.classifier(F.adaptive_max_pool2d(x4, (1, 1))).view(-1, self.num_classes - 1)
        return cls, cls_aux, x4, seg, cam, cam_aux
