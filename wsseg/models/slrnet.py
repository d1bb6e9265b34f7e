"""SLRNet reference model: WideResNet-38 → ASPP decoder → cross-view low-rank factorisation → GCI head."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.aspp_decoder import ASPPDecoder
from ..layers.gci_head import GCIHead
from ..layers.low_rank_factorization import LowRankFactorization
from ..layers.prototype_init import PrototypeInit
from ..layers.slrnet_aux_head import SLRNetAuxHead
from ..utils.stride import fit_to_stride
from ..utils.validation import check_tensor
from ._grad_checkpointing import GradCheckpointingMixin
from .registry import register_model

__all__ = ["SLRNet", "SLRNetOutput", "slrnet", "slrnet_wr38"]

_RESNET38D = re.compile(r"^resnet38d(?:_w(\d+))?$")


class SLRNetOutput(NamedTuple):
    """Outputs of :meth:`SLRNet.forward` (K foreground classes, K + 1 atoms, d feature channels).

    View-2 entries are on the view-2 grid (not mapped back; use :func:`~wsseg.layers.inverse_view`) and
    ``None`` for a single-view forward.

    Attributes:
        seg_logits1: segmentation logits of view 1 (B, K+1, h, w), constant background logit at channel 0.
        seg_logits2: segmentation logits of view 2 (B, K+1, h2, w2) or ``None``.
        aux_logits: auxiliary-head logits of view 1 (B, K+1, h, w), background ``1 - max``.
        codes1: per-token codes of view 1 (B, K+1, h, w), summing to 1 over the atoms.
        codes2: codes of view 2 (B, K+1, h2, w2) or ``None``.
        dictionary: the final dictionary shared by the views (B, K+1, d), l2-normalised atoms.
    """

    seg_logits1: Tensor
    seg_logits2: Tensor | None
    aux_logits: Tensor
    codes1: Tensor
    codes2: Tensor | None
    dictionary: Tensor

    @property
    def seg(self) -> Tensor:
        """Alias of :attr:`seg_logits1` (what the engine's default ``predict`` reads)."""
        return self.seg_logits1


class SLRNet(GradCheckpointingMixin, nn.Module):
    r"""The SLRNet network: backbone, ASPP decoder, aux head, cross-view low-rank factorisation, GCI head.

    With :math:`X_s, X_d` the shallow (stride 4) and deep (stride 8) backbone maps of a view,

    .. math::
        F = \mathrm{ASPPDec}(X_s, X_d),\quad \bar A = \mathrm{Aux}(F^{(1)}),\quad
        D_0 = \mathrm{sg}\big(\mathrm{Proto}(F^{(1)}, \bar A)\big),\quad
        (Y^{(1)}, Y^{(2)}, C^{(1)}, C^{(2)}, D) = \mathrm{LRF}([F^{(1)}; F^{(2)}], D_0),\quad
        S^{(v)} = \mathrm{GCIHead}(Y^{(v)}, X_s^{(v)})

    :class:`~wsseg.layers.ASPPDecoder` gives :math:`F` (d = 256 channels, stride 4);
    :class:`~wsseg.layers.SLRNetAuxHead` the aux logits with background :math:`1 - \max_k`;
    :class:`~wsseg.layers.PrototypeInit` the K + 1 soft class prototypes of view 1 (stop-gradient), which
    initialise the dictionary of :class:`~wsseg.layers.LowRankFactorization`, run **once on the
    concatenated tokens of both views** (one dictionary shared by the views, rank = number of classes
    incl. background); :class:`~wsseg.layers.GCIHead` (global cue injection + stochastic gate α = 0.3,
    constant background logit 1) gives the segmentation logits of each view from its factorised
    features and its shallow map. Order of evaluation as officially: backbone+decoder of view 1, of
    view 2, aux head, prototypes, factorisation, head of view 1, head of view 2 (dropout RNG order).
    With one view (``x2=None``, test time) the same path runs single-view.

    The nGWP classification scores are not part of the forward (compute them with
    :func:`~wsseg.layers.ngwp_score` from logits and softmax, see :class:`~wsseg.training.SLRNetTrainingStep`).

    Build it with :func:`wsseg.create_model <wsseg.models.create_model>` (``"slrnet"`` /
    ``"slrnet_wr38"``) rather than directly.

    Args:
        backbone: a module returning :class:`~wsseg.backbones.BackboneOutput` whose ``features`` are
            ``[shallow, deep]`` (shallow first) with attributes ``out_channels`` and ``out_strides``
            (:class:`~wsseg.backbones.ResNet38d` with ``out_features=("conv3", "conv6")``, or a
            :class:`~wsseg.backbones.TimmViTBackbone` with two ``out_indices``).
        num_classes: K, foreground classes (VOC 20).
        feature_dim: d, width of F, of the factorisation and of both heads (256).
        skip_out_channels: width of the decoder's skip projection (48).
        aspp_dilations, aspp_dropout: see :class:`~wsseg.layers.ASPP` ((1, 12, 24, 36), 0.5).
        sg_alpha: stochastic-gate rate α (0.3).
        lowrank_iters: E/M steps T (1).
        temperature: softmax temperature τ of the E-step (1).
        normalize_tokens: l2-normalise the tokens before the E-step (option; official ``False``).
        detach_init: stop-gradient on the initial dictionary (official ``True``; ``False`` back-propagates
            into the aux head and F through the prototypes).
        bn_momentum, bn_eps: BatchNorm of every new layer (0.05, 1e-5).

    Shape:
        - x1: :math:`(B, 3, H, W)` ImageNet-normalised; x2: :math:`(B, 3, H_2, W_2)` or ``None``. For a
          ViT backbone both sides must be multiples of the patch size (:meth:`fit_input`).
        - output: :class:`SLRNetOutput`; grids :math:`h = \lceil H / s \rceil` with s = :attr:`output_stride`.

    Raises:
        ValueError: for ``num_classes < 1``, a backbone without two feature maps, or (``forward``) an
            input that is not ``(B, 3, H, W)`` / views with different batch sizes.
        TypeError: for a non-floating-point input.

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("slrnet", backbone="resnet38d_w16", num_classes=3, feature_dim=16)
        >>> out = net(torch.rand(2, 3, 65, 65), torch.rand(2, 3, 32, 32))
        >>> tuple(out.seg_logits1.shape), tuple(out.codes2.shape), tuple(out.dictionary.shape)
        ((2, 4, 17, 17), (2, 4, 8, 8), (2, 4, 16))

    Source:
        SLRNet, Pan et al., "Learning Self-Supervised Low-Rank Network for Single-Stage Weakly and
        Semi-Supervised Semantic Segmentation", IJCV 2022; github.com/DesertsP/SLRNet, models/slrnet.py
        (``Net``), models/single_stage.py (1-Stage-WSeg, Araslanov & Roth CVPR 2020).
    """

    _encoder_attr = "backbone"  # set_grad_checkpointing delegates to it

    def __init__(self, backbone: nn.Module, num_classes: int = 20, *, feature_dim: int = 256,
                 skip_out_channels: int = 48, aspp_dilations: Sequence[int] = (1, 12, 24, 36),
                 aspp_dropout: float = 0.5, sg_alpha: float = 0.3, lowrank_iters: int = 1, temperature: float = 1.0,
                 normalize_tokens: bool = False, detach_init: bool = True, bn_momentum: float = 0.05,
                 bn_eps: float = 1e-5) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        channels = list(getattr(backbone, "out_channels", []))
        strides = list(getattr(backbone, "out_strides", []))
        if len(channels) != 2 or len(strides) != 2:
            raise ValueError("backbone: expected a backbone with two feature maps [shallow, deep] and attributes "
                             f"out_channels / out_strides, got {type(backbone).__name__} with out_channels={channels}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.decoder = ASPPDecoder(in_channels=int(channels[1]), skip_channels=int(channels[0]),
                                   out_channels=feature_dim, skip_out_channels=skip_out_channels,
                                   aspp_dilations=aspp_dilations, aspp_dropout=aspp_dropout,
                                   bn_momentum=bn_momentum, bn_eps=bn_eps)
        d = self.decoder.out_channels
        self.aux_head = SLRNetAuxHead(d, num_classes, d, dropout=0.5, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.prototypes = PrototypeInit(detach=bool(detach_init))
        self.factorization = LowRankFactorization(d, num_iters=lowrank_iters, temperature=temperature,
                                                  detach_init=detach_init, normalize_tokens=normalize_tokens)
        self.seg_head = GCIHead(num_classes, d, int(channels[0]), alpha=sg_alpha, bn_momentum=bn_momentum,
                                bn_eps=bn_eps)
        self._stride = int(strides[0])

    # ------------------------------------------------------------------ properties
    @property
    def feature_dim(self) -> int:
        """d, the width of F (256)."""
        return self.decoder.out_channels

    @property
    def num_atoms(self) -> int:
        """Rank of the factorisation: K + 1 (classes incl. background)."""
        return self.num_classes + 1

    @property
    def output_stride(self) -> int:
        """Stride of the output grid: 4 for WideResNet-38 (conv3), the patch size for a ViT."""
        return self._stride

    @property
    def stride(self) -> int:
        """The multiple the input sides must have (what the engine checks the crop against): 1 for
        WideResNet-38, which takes any size (a side n gives ceil(n / 4) cells, 321 → 81), the patch size for
        a ViT. The output grid's stride is :attr:`output_stride`."""
        patch = getattr(self.backbone, "patch_size", None)
        return 1 if patch is None else int(patch)

    def fit_input(self, x: Tensor) -> Tensor:
        """Identity for WideResNet-38 (any size works); for a ViT, resize ``x`` (bilinear) so both sides are
        the nearest multiples of the patch size."""
        patch = getattr(self.backbone, "patch_size", None)
        if patch is None:
            return x
        return fit_to_stride(x, int(patch))

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(F, shallow)``: the decoder features (B, d, h, w) and the shallow backbone map (B, C_s, h, w)."""
        feats = self.backbone(x).features
        shallow, deep = feats[0], feats[-1]
        return self.decoder([shallow, deep]), shallow

    def _check(self, x: Tensor, name: str) -> None:
        check_tensor(x, name, ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"{name}: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> SLRNetOutput:
        """Both views (training) or one view (``x2=None``, inference); see the class docstring."""
        self._check(x1, "x1")
        if x2 is None:
            f1, s1 = self.encode(x1)
            aux = self.aux_head(f1)
            res = self.factorization(f1, self.prototypes(f1, aux))
            seg1 = self.seg_head(res.out, s1)
            return SLRNetOutput(seg1, None, aux, res.codes, None, res.dictionary)
        self._check(x2, "x2")
        if x2.shape[0] != x1.shape[0]:
            raise ValueError(f"x2: expected batch size {x1.shape[0]} (that of x1), got shape {tuple(x2.shape)}")
        f1, s1 = self.encode(x1)
        f2, s2 = self.encode(x2)
        aux = self.aux_head(f1)
        res = self.factorization([f1, f2], self.prototypes(f1, aux))
        seg1 = self.seg_head(res.out[0], s1)
        seg2 = self.seg_head(res.out[1], s2)
        return SLRNetOutput(seg1, seg2, aux, res.codes[0], res.codes[1], res.dictionary)

    def cam(self, x: Tensor) -> Tensor:
        r"""Diagnostic CAM: the single-view foreground masks :math:`P_{1..K}` (softmax of the segmentation
        logits, background dropped) upsampled bilinearly to the input size, in [0, 1], shape (B, K, H, W).

        SLRNet has no separate CAM branch; its masks play that role (and feed the pseudo labels).
        """
        out = self.forward(x)
        probs = out.seg_logits1.float().softmax(dim=1)[:, 1:]
        return F.interpolate(probs, size=x.shape[-2:], mode="bilinear", align_corners=True)

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, base_lr: float, weight_decay: float = 5e-4, bias_lr_mult: float = 2.0,
                     head_lr_mult: float = 10.0, head_bias_lr_mult: float = 20.0) -> list[dict[str, Any]]:
        """The four official SGD parameter groups (``slrnet.md`` §7; 1-Stage-WSeg ``parameter_groups``).

        * ``"backbone_weights"``: trainable backbone parameters not named ``*.bias``, lr ``base_lr``,
          ``weight_decay``;
        * ``"backbone_biases"``: trainable backbone biases, lr ``bias_lr_mult × base_lr`` (2×), no decay
          (empty with the faithful WideResNet-38: bias-free convs, frozen BN);
        * ``"new_weights"``: every other trainable parameter not named ``*.bias`` (decoder, heads, the
          factorisation's linear weights and the new BN weights), lr ``head_lr_mult × base_lr`` (10×),
          ``weight_decay``;
        * ``"new_biases"``: their biases (incl. new BN biases), lr ``head_bias_lr_mult × base_lr`` (20×),
          no decay.

        Frozen parameters (``requires_grad=False``) are left out; empty groups are dropped.

        Raises:
            ValueError: if ``base_lr``, ``weight_decay`` or a multiplier is negative.

        Example:
            >>> from wsseg import create_model
            >>> net = create_model("slrnet", backbone="resnet38d_w16", num_classes=3, feature_dim=16)
            >>> [(g["name"], g["lr"], g["weight_decay"]) for g in net.param_groups(5e-4)]
            [('backbone_weights', 0.0005, 0.0005), ('new_weights', 0.005, 0.0005), ('new_biases', 0.01, 0.0)]
        """
        for name, v in (("base_lr", base_lr), ("weight_decay", weight_decay), ("bias_lr_mult", bias_lr_mult),
                        ("head_lr_mult", head_lr_mult), ("head_bias_lr_mult", head_bias_lr_mult)):
            if float(v) < 0:
                raise ValueError(f"{name}: expected a non-negative float, got {v}")
        bw, bb, nw, nb = [], [], [], []
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            is_bias = name.endswith(".bias")
            if id(p) in backbone_ids:
                (bb if is_bias else bw).append(p)
            else:
                (nb if is_bias else nw).append(p)
        groups = [
            {"name": "backbone_weights", "params": bw, "lr": base_lr, "weight_decay": weight_decay},
            {"name": "backbone_biases", "params": bb, "lr": base_lr * bias_lr_mult, "weight_decay": 0.0},
            {"name": "new_weights", "params": nw, "lr": base_lr * head_lr_mult, "weight_decay": weight_decay},
            {"name": "new_biases", "params": nb, "lr": base_lr * head_bias_lr_mult, "weight_decay": 0.0},
        ]
        return [g for g in groups if g["params"]]


    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, feature_dim={self.feature_dim}, num_atoms={self.num_atoms}, "
                f"output_stride={self.output_stride}")


# ---------------------------------------------------------------------- builders
def _build_backbone(backbone: str, weights: str | os.PathLike | None, vit_skip_layer: int | None,
                    pos_embed_interp: str = "timm", **backbone_kwargs: Any) -> nn.Module:
    if not isinstance(backbone, str):
        raise TypeError(f"backbone: expected a model name (str), got {type(backbone).__name__}")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights: file not found: {weights}")
    m = _RESNET38D.match(backbone)
    if m and pos_embed_interp != "timm":
        raise ValueError(f"pos_embed_interp: only for ViT backbones, got {pos_embed_interp!r} with {backbone!r}")
    if m:
        from ..backbones import resnet38d

        divisor = int(m.group(1) or 1)
        return resnet38d(weights=weights, out_features=("conv3", "conv6"), width_divisor=divisor, **backbone_kwargs)
    import timm

    if backbone.startswith("mit_") or not timm.is_model(backbone):
        raise ValueError(f"backbone: expected 'resnet38d', 'resnet38d_w<divisor>' or a timm model name, "
                         f"got {backbone!r}")
    from ..backbones import TimmCNNBackbone, TimmViTBackbone
    from .tscd import _timm_vit_depth

    depth = _timm_vit_depth(backbone)
    if depth is None:
        if vit_skip_layer is not None:
            raise ValueError(f"vit_skip_layer: only for ViT backbones, got {vit_skip_layer!r} with {backbone!r}")
        if pos_embed_interp != "timm":
            raise ValueError(f"pos_embed_interp: only for ViT backbones, got {pos_embed_interp!r} with {backbone!r}")
        # a CNN: the stride-4 stage as the shallow map (WR38's conv3 role), the last stage as the deep map
        return TimmCNNBackbone(backbone, weights=weights, out_indices=(1, -1), **backbone_kwargs)
    skip = max(0, round(depth / 4) - 1) if vit_skip_layer is None else vit_skip_layer
    if isinstance(skip, bool) or not isinstance(skip, int) or not -depth <= skip < depth - 1:
        raise ValueError(f"vit_skip_layer: expected a block index in [{-depth}, {depth - 1}) for a {depth}-block "
                         f"ViT, got {vit_skip_layer!r}")
    return TimmViTBackbone(backbone, weights=weights, out_indices=(skip % depth, depth - 1), attn_indices=(),
                           pos_embed_interp=pos_embed_interp, **backbone_kwargs)


@register_model(name="slrnet")
def slrnet(backbone: str = "resnet38d", num_classes: int = 20, weights: str | os.PathLike | None = None, *,
           pretrained: bool = False, feature_dim: int = 256, aspp_dilations: Sequence[int] = (1, 12, 24, 36),
           sg_alpha: float = 0.3, lowrank_iters: int = 1, temperature: float = 1.0, normalize_tokens: bool = False,
           detach_init: bool = True, vit_skip_layer: int | None = None, pos_embed_interp: str = "timm",
           **backbone_kwargs: Any) -> SLRNet:
    """Build an :class:`SLRNet` (registered as ``"slrnet"``).

    Backbones:

    * ``"resnet38d"`` (faithful): WideResNet-38, output stride 8, frozen BN, frozen ``conv1a`` / ``b2``;
      shallow map = conv3 (256 channels, stride 4), deep map = conv6 (4096, stride 8); ``weights`` is the
      official mxnet-converted checkpoint (:func:`~wsseg.backbones.load_resnet38d_weights`).
      ``"resnet38d_w<n>"`` divides every width by n (same topology; ``resnet38d_w16`` for fast tests).
    * any timm ViT name (``"vit_small_patch14_dinov2"``, ``"test_vit"``) through
      :class:`~wsseg.backbones.TimmViTBackbone` (timm-layout ``weights``, strict, nothing downloaded).
      The deep map is the final (normed) patch-token map; **the WR38 conv3 skip is replaced by the patch
      tokens of block** ``vit_skip_layer`` (default: the last block of the first quarter, block 2 of 12),
      used both as the decoder skip and as GCI's shallow map. Everything runs at the patch stride
      (14 or 16 instead of 4), so the masks are coarser; the ASPP dilations stay those of output stride 8
      unless ``aspp_dilations`` is given.
    * any other timm model name, a CNN (``"mobilenetv2_100"``, ``"resnet50"``, ``"test_efficientnet"``),
      through :class:`~wsseg.backbones.TimmCNNBackbone`: the stride-4 stage is the shallow map (WR38's conv3
      role) and the last stage (stride 32) the deep map, upsampled to stride 4 by the decoder; ``weights`` by
      name or, for the same architecture under other key names (torchvision's MobileNetV2 checkpoint), by
      order (:func:`~wsseg.backbones.load_weights_by_order`).

    Args:
        backbone: ``"resnet38d"``, ``"resnet38d_w<n>"``, a timm ViT name or a timm CNN name.
        num_classes: K foreground classes (VOC 20, COCO 80).
        weights: backbone weights file.
        pretrained: must stay ``False`` (wsseg never downloads; pass ``weights``).
        feature_dim, aspp_dilations, sg_alpha, lowrank_iters, temperature, normalize_tokens, detach_init:
            see :class:`SLRNet`.
        vit_skip_layer: ViT block of the skip / shallow map (ignored for WideResNet-38).
        pos_embed_interp: ViT backbones only: positional-embedding resampling
            (:func:`~wsseg.backbones.resample_pos_embed`). SLRNet has no official ViT code; the default
            ``"timm"`` is timm's own resampling (``"bicubic"``: plain PyTorch bicubic, CoSA's kernel).
        **backbone_kwargs: further :func:`~wsseg.backbones.resnet38d` / ``TimmViTBackbone`` arguments.

    Raises:
        TypeError: if ``backbone`` is not a string.
        ValueError: for an unknown backbone, ``pretrained=True``, a missing ``weights`` file, a
            ``vit_skip_layer`` out of range or a ``pos_embed_interp`` other than ``"timm"`` for a non-ViT.

    Example:
        >>> net = slrnet("test_vit", num_classes=3, feature_dim=16)
        >>> net.output_stride, net.num_atoms, net.backbone.out_indices
        (16, 4, (1, 5))

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, models/slrnet.py,
        experiments/slrnet_voc_wss_v100x2.yaml.
    """
    if pretrained:
        raise ValueError("pretrained: wsseg never downloads weights; pass weights=<path to a checkpoint>")
    enc = _build_backbone(backbone, weights, vit_skip_layer, pos_embed_interp=pos_embed_interp, **backbone_kwargs)
    return SLRNet(enc, num_classes, feature_dim=feature_dim, aspp_dilations=aspp_dilations, sg_alpha=sg_alpha,
                  lowrank_iters=lowrank_iters, temperature=temperature, normalize_tokens=normalize_tokens,
                  detach_init=detach_init)


@register_model(name="slrnet_wr38")
def slrnet_wr38(num_classes: int = 20, weights: str | os.PathLike | None = None, **kwargs: Any) -> SLRNet:
    """The faithful SLRNet preset: :func:`slrnet` with ``backbone="resnet38d"`` (spec §1 interface name).

    Raises:
        ValueError: if ``backbone`` is given (use ``create_model("slrnet", backbone=...)``).

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, models/slrnet.py.
    """
    if "backbone" in kwargs:
        raise ValueError("backbone: slrnet_wr38 fixes backbone='resnet38d'; use create_model('slrnet', backbone=...)")
    return slrnet(backbone="resnet38d", num_classes=num_classes, weights=weights, **kwargs)
