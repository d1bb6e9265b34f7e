"""SegFormer's all-MLP decoder head (``SegFormerHead``) as used by TSCD and AFA."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import check_tensor

__all__ = ["SegFormerHead", "segformer_head"]


def _check_features(features: Sequence[Tensor], in_channels: Sequence[int] | None = None) -> list[Tensor]:
    if isinstance(features, Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(f"features: expected a list of tensors (B, C_i, h_i, w_i), got {type(features).__name__}")
    if len(features) == 0:
        raise ValueError("features: expected at least one feature map, got an empty list")
    if in_channels is not None and len(features) != len(in_channels):
        raise ValueError(
            f"features: expected {len(in_channels)} feature maps (one per entry of in_channels), got {len(features)}"
        )
    feats = []
    for i, f in enumerate(features):
        check_tensor(f, f"features[{i}]", ndim=4, dims="(B, C_i, h_i, w_i)", dtype="float")
        if in_channels is not None and f.shape[1] != in_channels[i]:
            raise ValueError(
                f"features[{i}]: expected {in_channels[i]} channels (in_channels[{i}]), got shape {tuple(f.shape)}"
            )
        if f.shape[0] != features[0].shape[0]:
            raise ValueError(
                f"features[{i}]: batch size {f.shape[0]} differs from features[0] ({features[0].shape[0]})"
            )
        feats.append(f)
    return feats


def segformer_head(features: Sequence[Tensor], proj_weights: Sequence[Tensor], proj_biases: Sequence[Tensor],
                   fuse: nn.Module, pred: nn.Module, *, align_corners: bool = False) -> Tensor:
    r"""Functional SegFormer all-MLP decoding: project, upsample to the first map, concat, fuse, classify.

    .. math::
        E_i = \mathrm{up}_{h_0 \times w_0}(W_i F_i + b_i), \qquad
        Y = W_{\text{pred}}\, \mathrm{fuse}\big([E_{L-1}; \dots; E_0]\big)

    The projected maps are concatenated in **reverse** stage order (deepest first), as in the official
    head. ``fuse`` is the 1×1 conv + norm + ReLU (+ dropout) block, ``pred`` the final 1×1 conv; they are
    passed as modules because the head is learnable (use :class:`SegFormerHead` normally).

    Args:
        features: feature maps :math:`F_i`, the first one sets the output resolution.
        proj_weights: per-map linear weights :math:`W_i` of shape (D, C_i).
        proj_biases: per-map biases :math:`b_i` of shape (D,).
        fuse: module mapping (B, L·D, h_0, w_0) to (B, D, h_0, w_0).
        pred: module mapping (B, D, h_0, w_0) to (B, C, h_0, w_0).
        align_corners: ``align_corners`` of the bilinear upsampling (official: False).

    Shape:
        - features[i]: :math:`(B, C_i, h_i, w_i)`.
        - output: :math:`(B, C, h_0, w_0)`.

    Raises:
        TypeError: if ``features`` is not a list of floating-point tensors.
        ValueError: if the number of maps, weights and biases differ or a map has the wrong channels.

    Example:
        >>> head = SegFormerHead([8, 16], num_classes=3, embed_dim=4)
        >>> w = [m.weight for m in head.proj]; b = [m.bias for m in head.proj]
        >>> feats = [torch.rand(1, 8, 8, 8), torch.rand(1, 16, 4, 4)]
        >>> _ = head.eval()
        >>> out = segformer_head(feats, w, b, head.fuse, head.pred)
        >>> torch.allclose(out, head(feats))
        True

    Source:
        SegFormer, Xie et al. NeurIPS 2021 (``mmseg/models/decode_heads/segformer_head.py``); the copy
        used by TSCD: github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023/network/segformer_head.py.
    """
    feats = _check_features(features)
    if not (len(proj_weights) == len(proj_biases) == len(feats)):
        raise ValueError(
            f"proj_weights: expected {len(feats)} weights and biases (one per feature map), "
            f"got {len(proj_weights)} and {len(proj_biases)}"
        )
    for f, w in zip(feats, proj_weights, strict=False):
        if w.shape[1] != f.shape[1]:
            raise ValueError(f"features: a map has {f.shape[1]} channels but its projection expects {w.shape[1]}")
    first = fuse[0] if isinstance(fuse, nn.Sequential) and len(fuse) > 0 else None
    if (isinstance(first, nn.Conv2d) and first.kernel_size == (1, 1) and first.stride == (1, 1)
            and first.padding == (0, 0) and first.groups == 1 and first.in_channels == sum(w.shape[0]
                                                                                        for w in proj_weights)):
        return pred(fuse[1:](_fused_low_resolution(feats, proj_weights, proj_biases, first, align_corners)))
    size = feats[0].shape[-2:]
    projected = []
    for f, w, b in zip(feats, proj_weights, proj_biases, strict=False):
        # A per-token linear layer == a 1x1 convolution with the same weights.
        e = F.conv2d(f, w[:, :, None, None], b)
        if e.shape[-2:] != size:
            e = F.interpolate(e, size=size, mode="bilinear", align_corners=align_corners)
        projected.append(e)
    x = torch.cat(projected[::-1], dim=1)
    return pred(fuse(x))


def _fused_low_resolution(feats: Sequence[Tensor], proj_weights: Sequence[Tensor], proj_biases: Sequence[Tensor],
                          conv: nn.Conv2d, align_corners: bool) -> Tensor:
    r"""The fusion convolution's output :math:`W_{\text{fuse}} [\mathrm{up}(W_{L-1} F_{L-1} + b_{L-1}); \dots]`
    computed without the concatenation.

    Bilinear upsampling acts on each channel alone and the 1×1 fusion conv mixes channels per position, so
    the two commute: the fusion weight's slice for map ``i`` is multiplied into that map's projection
    (:math:`V_i = W_{\text{fuse},i} W_i`), applied **at the map's own resolution**, maps of equal size are
    summed before one upsampling, and the biases fold into one constant
    (:math:`\sum_i W_{\text{fuse},i} b_i`, an upsampled constant is the constant). Same function as the
    concatenate-then-fuse order up to float rounding; at crop 512 it saves the (B, L·D, h_0, w_0)
    concatenation and three quarters of the fusion multiply-adds (:math:`L = 4`).
    """
    size = feats[0].shape[-2:]
    weight = conv.weight.flatten(1)  # (D_out, L*D), slots deepest map first
    d = proj_weights[0].shape[0]
    n = len(feats)
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    by_size: dict[tuple[int, int], Tensor] = {}
    for i, (f, w, b) in enumerate(zip(feats, proj_weights, proj_biases, strict=False)):
        slot = weight[:, (n - 1 - i) * d:(n - i) * d]
        y = F.conv2d(f, (slot @ w)[:, :, None, None])
        if b is not None:
            bias = bias + slot @ b
        key = tuple(f.shape[-2:])
        by_size[key] = y if key not in by_size else by_size[key] + y
    out = by_size.pop(tuple(size), None)
    for y in by_size.values():
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=align_corners)
        out = y if out is None else out + y
    return out + bias[None, :, None, None]


class SegFormerHead(nn.Module):
    r"""SegFormer all-MLP decoder: per-map linear projection, upsampling, concatenation and fusion.

    Every input map :math:`F_i` (B, C_i, h_i, w_i) is projected per position by a linear layer to
    ``embed_dim`` channels and bilinearly upsampled to the resolution of the **first** map; the maps are
    concatenated deepest-first and fused by a 1×1 convolution (no bias) + BatchNorm + ReLU, then
    ``Dropout2d(dropout)`` and a 1×1 convolution to ``num_classes`` channels:

    .. math::
        Y = W_{\text{pred}}\,\mathrm{Drop}\Big(\mathrm{ReLU}\big(\mathrm{BN}(W_{\text{fuse}}
            [\mathrm{up}(W_{L-1} F_{L-1});\dots;\mathrm{up}(W_0 F_0)])\big)\Big) + b_{\text{pred}}

    It works with the four MiT stages (strides 4, 8, 16, 16 in TSCD; output at stride 4) and with several
    same-stride ViT block maps (no upsampling happens; output at the patch stride).

    Initialisation as the official mmcv ``ConvModule``: the fusion convolution is re-initialised
    Kaiming-normal with fan-out and ReLU gain, :math:`W_{\text{fuse}} \sim \mathcal N(0, 2/D)` (std 0.088
    for D = 256, against 0.018 for PyTorch's default uniform init), its bias (``norm="none"`` only) set
    to 0, the BatchNorm to weight 1 / bias 0; the projections and the classifier keep PyTorch's default
    ``nn.Linear`` / ``nn.Conv2d`` init, as officially (:meth:`reset_parameters`).

    Deviation: the official head uses **SyncBN** (mmcv ``ConvModule``); wsseg uses plain
    :class:`torch.nn.BatchNorm2d` (``norm="bn"``; identical on one device — convert with
    :func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm` for DDP). ``norm="none"`` drops the norm and
    gives the fusion conv a bias.

    Args:
        in_channels: channels :math:`C_i` of each input map (one entry per map).
        num_classes: output channels :math:`C` (K+1 for a segmentation head, background at index 0).
        embed_dim: projection and fusion width D (TSCD: 256).
        dropout: ``Dropout2d`` probability before the classifier (official 0.1).
        norm: ``"bn"`` (default) or ``"none"``.
        align_corners: bilinear upsampling flag (official False).

    Shape:
        - features[i]: :math:`(B, C_i, h_i, w_i)`; the first map has the highest resolution.
        - output: :math:`(B, C, h_0, w_0)`.

    Raises:
        ValueError: on empty ``in_channels``, non-positive sizes, a dropout outside [0, 1), an unknown
            ``norm``, or (in ``forward``) a wrong number of maps / channels.

    Example:
        >>> head = SegFormerHead([64, 128, 320, 512], num_classes=21, embed_dim=32)
        >>> sizes = zip([64, 128, 320, 512], [16, 8, 4, 4])
        >>> feats = [torch.rand(2, c, s, s) for c, s in sizes]
        >>> head(feats).shape
        torch.Size([2, 21, 16, 16])

    Source:
        SegFormer, Xie et al. NeurIPS 2021; TSCD (Xu et al. AAAI 2023) copy:
        github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023/network/segformer_head.py;
        initialisation: github.com/open-mmlab/mmcv, mmcv/cnn/bricks/conv_module.py (``init_weights``:
        ``kaiming_init``, mode ``fan_out``, ReLU, normal).
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, embed_dim: int = 256, dropout: float = 0.1,
                 norm: str = "bn", align_corners: bool = False) -> None:
        super().__init__()
        in_channels = [int(c) for c in in_channels]
        if len(in_channels) == 0 or any(c <= 0 for c in in_channels):
            raise ValueError(f"in_channels: expected a non-empty list of positive ints, got {in_channels}")
        if int(num_classes) <= 0:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes}")
        if int(embed_dim) <= 0:
            raise ValueError(f"embed_dim: expected a positive int, got {embed_dim}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        if norm not in ("bn", "none"):
            raise ValueError(f"norm: expected 'bn' or 'none', got {norm!r}")
        self.in_channels = in_channels
        self.num_classes = int(num_classes)
        self.embed_dim = int(embed_dim)
        self.dropout_p = float(dropout)
        self.norm = norm
        self.align_corners = bool(align_corners)
        self.proj = nn.ModuleList([nn.Linear(c, self.embed_dim) for c in in_channels])
        fuse: list[nn.Module] = [nn.Conv2d(len(in_channels) * self.embed_dim, self.embed_dim, 1, bias=norm == "none")]
        if norm == "bn":
            fuse.append(nn.BatchNorm2d(self.embed_dim))
        fuse += [nn.ReLU(inplace=True), nn.Dropout2d(self.dropout_p)]
        self.fuse = nn.Sequential(*fuse)
        self.pred = nn.Conv2d(self.embed_dim, self.num_classes, 1)
        self._init_fuse()

    def _init_fuse(self) -> None:
        """mmcv ``ConvModule`` init of the fusion block (Kaiming-normal fan-out ReLU, zero bias, BN 1 / 0)."""
        conv = self.fuse[0]
        nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        if self.norm == "bn":
            nn.init.ones_(self.fuse[1].weight)
            nn.init.zeros_(self.fuse[1].bias)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter as the official head: PyTorch defaults for the projections and
        the classifier, mmcv ``ConvModule`` init for the fusion block."""
        for m in self.proj:
            m.reset_parameters()
        self.pred.reset_parameters()
        if self.norm == "bn":
            self.fuse[1].reset_running_stats()
        self._init_fuse()

    def forward(self, features: list[Tensor]) -> Tensor:
        """Segmentation logits ``(B, C, h_0, w_0)`` from the feature maps (first = highest resolution)."""
        _check_features(features, self.in_channels)
        return segformer_head(features, [m.weight for m in self.proj], [m.bias for m in self.proj],
                              self.fuse, self.pred, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, embed_dim={self.embed_dim}, "
                f"dropout={self.dropout_p}, norm={self.norm!r}, align_corners={self.align_corners}")
