"""TSCD reference model: encoder + GMP classifier (CAM) + SegFormer decoder + attention-affinity head."""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.stride import fit_to_stride
from ..utils.validation import check_tensor
from ._grad_checkpointing import GradCheckpointingMixin
from ._param_groups import encoder_head_param_groups
from .registry import register_model

__all__ = ["TSCDNet", "TSCDOutput", "tscd", "tscd_mit_b1"]

_POOLING = ("gmp", "gap")


class TSCDOutput(NamedTuple):
    """Outputs of :meth:`TSCDNet.forward`.

    Attributes:
        cls: classification logits (B, K).
        seg: segmentation logits (B, K+1, h_s, w_s) at the stride of the first feature map
            (MiT: H/4; ViT: H/patch), background at channel 0.
        attn_logits: concatenated pre-softmax attention logits of the last two blocks (B, A, N, N).
        aff: predicted affinity (B, N, N) in (0, 1), N = (H/s)(W/s) with s the last feature stride.
    """

    cls: Tensor
    seg: Tensor
    attn_logits: Tensor
    aff: Tensor


class TSCDNet(GradCheckpointingMixin, nn.Module):
    r"""The TSCD network: a transformer encoder with a CAM classifier, a segmentation decoder and an
    affinity head, trained end-to-end from image-level labels.

    Given an image :math:`x`, the encoder returns feature maps :math:`F_0,\dots,F_{L-1}` and the
    pre-softmax attention logits of its blocks. Then

    * **classifier**: global max pooling (``pooling="gmp"``, faithful; ``"gap"`` = average) of
      :math:`F_{L-1}` and a bias-free 1×1 convolution :math:`W`: :math:`\text{cls} = W\,\mathrm{GMP}(F_{L-1})`;
    * **CAM**: the same weight applied densely, :math:`M = W * F_{L-1}` (no ReLU, detached), see :meth:`cam`;
    * **decoder**: :class:`~wsseg.layers.SegFormerHead` over all feature maps → K+1 logits;
    * **affinity**: :class:`~wsseg.layers.AffinityFromAttention` on the attention logits of the last
      ``num_attn_maps`` (= 2) blocks, **not symmetrised** (TSCD; AFA symmetrises):
      :math:`\hat A = \sigma(\mathrm{conv}_{1\times1}([\,Q_{L-2}K_{L-2}^\top; Q_{L-1}K_{L-1}^\top]))`.

    Build it with :func:`wsseg.create_model <wsseg.models.create_model>` (``"tscd"`` / ``"tscd_mit_b1"``) rather than directly.

    Args:
        backbone: an encoder module following the ``wsseg.backbones`` protocol (``forward(x) ->
            BackboneOutput`` with ``features`` and ``attn_logits``; attributes ``out_channels``,
            ``out_strides``, ``attn_heads``).
        num_classes: K, number of foreground classes.
        decoder_dim: SegFormer decoder width (official 256).
        decoder_dropout: ``Dropout2d`` probability in the decoder (official 0.1).
        pooling: ``"gmp"`` (official default) or ``"gap"``.
        num_attn_maps: how many of the last returned attention maps feed the affinity head (official 2).
        symmetrize_affinity: add the transpose of the attention logits before the affinity conv
            (AFA: True; TSCD faithful: False).
        cam_runs_decoder: faithful quirk — :meth:`cam` also evaluates the decoder (output discarded), so
            that in train mode the decoder's BatchNorm running statistics are updated by the CAM passes
            exactly as in the official code. ``False`` skips it (saves compute, changes BN statistics).
            When no module of the decoder is in train mode (``model.eval()``: evaluation, inference) the
            discarded pass can change nothing (no statistics update, no dropout draw) and is skipped either
            way.

    Shape:
        - x: :math:`(B, 3, H, W)` ImageNet-normalised; for ViT backbones H, W should be multiples of
          the patch size.
        - output: :class:`TSCDOutput`.

    Raises:
        ValueError: for ``num_classes < 1``, an unknown ``pooling``, or a backbone returning fewer
            attention maps than ``num_attn_maps``.
        TypeError: if ``x`` is not a floating-point tensor (in ``forward``/``cam``).

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("tscd", backbone="mit_b0", num_classes=3, decoder_dim=16)
        >>> out = net(torch.rand(1, 3, 64, 64))
        >>> tuple(out.cls.shape), tuple(out.seg.shape), tuple(out.aff.shape)
        ((1, 3), (1, 4, 16, 16), (1, 16, 16))

    Source:
        TSCD, Xu et al., "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic
        Segmentation", AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        SCD-AAAI2023/network/TSCD_model.py (itself AFA's ``wetr/model_attn_aff.py``).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, decoder_dim: int = 256,
                 decoder_dropout: float = 0.1, pooling: str = "gmp", num_attn_maps: int = 2,
                 symmetrize_affinity: bool = False, cam_runs_decoder: bool = True) -> None:
        super().__init__()
        from ..layers import AffinityFromAttention, SegFormerHead

        if int(num_classes) < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes}")
        if pooling not in _POOLING:
            raise ValueError(f"pooling: expected one of {_POOLING}, got {pooling!r}")
        if int(num_attn_maps) < 1:
            raise ValueError(f"num_attn_maps: expected a positive int, got {num_attn_maps}")
        for attr in ("out_channels", "out_strides", "attn_heads"):
            if not hasattr(backbone, attr):
                raise ValueError(f"backbone: expected a wsseg backbone with attribute {attr!r}, "
                                 f"got {type(backbone).__name__}")
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.num_attn_maps = int(num_attn_maps)
        self.cam_runs_decoder = bool(cam_runs_decoder)
        self.encoder = backbone
        # wsseg backbones can skip the attention logits in CAM-only passes (fused attention kernel there)
        self._encoder_skips_attn = "need_attn" in inspect.signature(backbone.forward).parameters
        channels = list(backbone.out_channels)
        self.classifier = nn.Conv2d(channels[-1], self.num_classes, kernel_size=1, bias=False)
        self.decoder = SegFormerHead(channels, self.num_classes + 1, embed_dim=decoder_dim,
                                     dropout=decoder_dropout)
        self.affinity = AffinityFromAttention(in_channels=self.num_attn_maps * int(backbone.attn_heads),
                                              symmetrize=symmetrize_affinity)

    # ------------------------------------------------------------------ properties
    @property
    def stride(self) -> int:
        """Stride of the last feature map (CAM / affinity grid); 16 for TSCD's MiT, the patch size for ViTs."""
        return int(self.encoder.out_strides[-1])

    @property
    def seg_stride(self) -> int:
        """Stride of the segmentation logits (that of the first feature map)."""
        return int(self.encoder.out_strides[0])

    @property
    def input_constraints(self) -> tuple[int, int]:
        """``(multiple, min_size)`` the encoder needs of input sides: ViT sides must be multiples of the
        patch size; MiT needs every stage grid at least as large as its spatial-reduction ratio."""
        multiple = int(getattr(self.encoder, "patch_size", 1))
        min_size = 1
        sr, strides = getattr(self.encoder, "sr_ratios", None), getattr(self.encoder, "strides", None)
        if sr is not None and strides is not None:
            prod = 1
            for s, r in zip(strides, sr, strict=False):
                prod *= int(s)
                min_size = max(min_size, (int(r) - 1) * prod + 1)
        return multiple, min_size

    def fit_input(self, x: Tensor) -> Tensor:
        """Resize ``x`` (bilinear) to the nearest size satisfying :attr:`input_constraints`; identity if
        it already does (always the case for MiT at the official crop). Used for inputs whose size is set
        by a scale factor (TSCD's 0.3× view, CAM scales, evaluation images); resize outputs back."""
        multiple, min_size = self.input_constraints
        return fit_to_stride(x, multiple, min_size)

    # ------------------------------------------------------------------ forward
    def _encode(self, x: Tensor, need_attn: bool = True):
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        if not need_attn and self._encoder_skips_attn:
            return self.encoder(x, need_attn=False)
        return self.encoder(x)

    def _attention(self, attn_logits: Sequence[Tensor]) -> Tensor:
        if len(attn_logits) < self.num_attn_maps:
            raise ValueError(f"backbone: returned {len(attn_logits)} attention maps, "
                             f"num_attn_maps={self.num_attn_maps} needed")
        return torch.cat(list(attn_logits[-self.num_attn_maps:]), dim=1)

    def forward(self, x: Tensor) -> TSCDOutput:
        """Classification logits, segmentation logits, attention logits and affinity of ``x``.

        Shape:
            - x: :math:`(B, 3, H, W)`, ImageNet-normalised.
            - output: :class:`TSCDOutput` (shapes listed there).
        """
        out = self._encode(x)
        feats = list(out.features)
        seg = self.decoder(feats)
        attn = self._attention(out.attn_logits)
        aff = self.affinity(attn)
        last = feats[-1]
        pooled = F.adaptive_max_pool2d(last, 1) if self.pooling == "gmp" else F.adaptive_avg_pool2d(last, 1)
        cls = self.classifier(pooled).flatten(1)
        return TSCDOutput(cls=cls, seg=seg, attn_logits=attn, aff=aff)

    def cam(self, x: Tensor) -> Tensor:
        r"""Raw class activation maps :math:`M = W * F_{L-1}` (no ReLU), detached.

        This is the ``cam_fn`` passed to :func:`wsseg.layers.multi_scale_cam`. With
        ``cam_runs_decoder=True`` (faithful) the decoder is evaluated as well and its output discarded,
        so that train-mode CAM passes update the decoder's BatchNorm statistics like the official code; with
        every decoder module in eval mode that pass has no effect and is skipped (evaluation: the same CAM,
        the same random stream; ≈ 3 % of a ccp_voc evaluation at 224 px with ViT-S/14).

        Shape:
            - x: :math:`(B, 3, H, W)`.
            - output: :math:`(B, K, H/s, W/s)`, s = :attr:`stride`.
        """
        out = self._encode(x, need_attn=False)
        feats = list(out.features)
        if self.cam_runs_decoder and self._decoder_has_train_mode():
            self.decoder(feats)
        return F.conv2d(feats[-1], self.classifier.weight).detach()

    def _decoder_has_train_mode(self) -> bool:
        """Whether a module of the decoder is in train mode (its discarded pass then updates BatchNorm
        statistics or draws dropout masks, as the official code's)."""
        return any(m.training for m in self.decoder.modules())

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, base_lr: float, weight_decay: float = 0.01, head_lr_mult: float = 10.0,
                     encoder_norm_lr_mult: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups of the official recipe (``tscd.md`` §2.4).

        * ``"encoder"``: encoder non-norm parameters, lr ``base_lr``, ``weight_decay``;
        * ``"encoder_norm"``: encoder norm parameters, lr ``base_lr * encoder_norm_lr_mult`` (official 0:
          "frozen"), weight decay 0;
        * ``"heads"``: classifier + affinity conv, lr ``base_lr * head_lr_mult`` (10×), ``weight_decay``;
        * ``"decoder"``: the SegFormer head, lr ``base_lr * head_lr_mult`` (10×), ``weight_decay``.

        Encoder parameters whose name contains ``"norm"`` form the norm group (the official rule).
        Only parameters with ``requires_grad`` are returned; empty groups are dropped.

        Raises:
            ValueError: if ``base_lr`` or a multiplier is negative.
        """
        heads = list(self.classifier.parameters()) + list(self.affinity.parameters())
        return encoder_head_param_groups(self.encoder, heads, self.decoder, base_lr=base_lr,
                                         weight_decay=weight_decay, head_lr_mult=head_lr_mult,
                                         encoder_norm_lr_mult=encoder_norm_lr_mult, norm_weight_decay=0.0)


    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, pooling={self.pooling!r}, num_attn_maps={self.num_attn_maps}, "
                f"cam_runs_decoder={self.cam_runs_decoder}")


# ---------------------------------------------------------------------- builders
def _timm_vit_depth(model_name: str) -> int | None:
    """Number of blocks of a ViT-style timm model (one with ``patch_embed`` and ``blocks``), else None.

    Built on the meta device (no memory, no weights). CNNs such as EfficientNet also have ``blocks``, hence
    the ``patch_embed`` condition.
    """
    import timm

    with torch.device("meta"):
        m = timm.create_model(model_name, pretrained=False)
    blocks = getattr(m, "blocks", None)
    if blocks is None or not hasattr(m, "patch_embed"):
        return None
    return len(blocks)


def _vit_depth(model_name: str) -> int:
    depth = _timm_vit_depth(model_name)
    if depth is None:
        raise ValueError(f"backbone: {model_name!r} is not a ViT-style timm model (no .patch_embed / .blocks)")
    return depth


def _build_backbone(backbone: str, *, weights: str | os.PathLike | None, strides: Sequence[int] | None,
                    drop_path_rate: float, out_indices: Sequence[int] | None, num_attn_maps: int,
                    **backbone_kwargs: Any) -> nn.Module:
    from .. import backbones as bb

    if not isinstance(backbone, str):
        raise TypeError(f"backbone: expected a model name (str), got {type(backbone).__name__}")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights: file not found: {weights}")
    if backbone.startswith("mit_"):
        builder = getattr(bb, backbone, None)
        if builder is None:
            raise ValueError(f"backbone: unknown MiT variant {backbone!r} (wsseg.backbones has no such builder)")
        enc = builder(strides=tuple(strides) if strides is not None else (4, 2, 2, 1),
                      drop_path_rate=drop_path_rate, **backbone_kwargs)
        if weights is not None:
            bb.load_weights(enc, weights)
        return enc
    import timm

    if not timm.is_model(backbone):
        raise ValueError(f"backbone: expected 'mit_b0'..'mit_b5' or a timm ViT name, got {backbone!r}")
    if strides is not None:
        raise ValueError("strides: only MiT backbones have configurable strides (a ViT's stride is its patch size)")
    depth = _vit_depth(backbone)
    if out_indices is None:
        # four evenly spaced block outputs (e.g. 2, 5, 8, 11 for 12 blocks), all at the patch stride
        out_indices = sorted({max(0, round(depth * f) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
    attn_indices = tuple(range(max(0, depth - num_attn_maps), depth))
    return bb.TimmViTBackbone(backbone, weights=weights, out_indices=tuple(out_indices), attn_indices=attn_indices,
                              drop_path_rate=drop_path_rate, **backbone_kwargs)


@register_model(name="tscd")
def tscd(backbone: str = "mit_b1", num_classes: int = 20, weights: str | os.PathLike | None = None, *,
         pretrained: bool = False, strides: Sequence[int] | None = None, pooling: str = "gmp",
         decoder_dim: int = 256, decoder_dropout: float = 0.1, drop_path_rate: float = 0.1,
         out_indices: Sequence[int] | None = None, num_attn_maps: int = 2, symmetrize_affinity: bool = False,
         cam_runs_decoder: bool = True, pos_embed_interp: str = "timm", **backbone_kwargs: Any) -> TSCDNet:
    """Build a :class:`TSCDNet` (registered as ``"tscd"``).

    Faithful preset: ``backbone="mit_b1"`` with patch-embedding strides (4, 2, 2, 1) (stage strides 4, 8,
    16, 16), drop-path 0.1, GMP classifier, decoder width 256, 2 attention maps, no symmetrisation,
    decoder run inside the CAM branch. Any timm ViT name (e.g. ``"vit_small_patch14_dinov2"``,
    ``"test_vit"``) is accepted instead: its stride is the patch size, the decoder gets four evenly
    spaced block outputs (``out_indices``) and the affinity head the last two blocks' attention.

    Args:
        backbone: ``"mit_b0"``, ``"mit_b1"``, ... or a timm ViT model name.
        num_classes: K foreground classes (VOC 20, COCO 80).
        weights: path of encoder weights (``.pth``/``.pt``/``.safetensors``); nothing is ever downloaded.
        pretrained: must stay False (wsseg never downloads; pass ``weights``).
        strides: MiT patch-embedding strides (default (4, 2, 2, 1)); not allowed for ViTs.
        pooling, decoder_dim, decoder_dropout, num_attn_maps, symmetrize_affinity, cam_runs_decoder:
            see :class:`TSCDNet`.
        drop_path_rate: stochastic depth of the encoder (official 0.1).
        out_indices: ViT blocks whose outputs feed the decoder (default: four evenly spaced).
        pos_embed_interp: ViT backbones only: positional-embedding resampling
            (:func:`~wsseg.backbones.resample_pos_embed`). TSCD's official encoder is MiT (no absolute
            positional embedding); the default ``"timm"`` is timm's own resampling.
        **backbone_kwargs: forwarded to the backbone builder.

    Raises:
        ValueError: for an unknown ``backbone``, a missing ``weights`` file, ``pretrained=True``, or
            ``strides`` with a ViT.

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        SCD-AAAI2023/network/TSCD_model.py, configs/voc_attn_reg.yaml.
    """
    if pretrained:
        raise ValueError("pretrained: wsseg never downloads weights; pass weights=<path to a checkpoint>")
    if pos_embed_interp != "timm":
        if backbone.startswith("mit_"):
            raise ValueError(f"pos_embed_interp: only for ViT backbones, got {pos_embed_interp!r} with {backbone!r}")
        backbone_kwargs["pos_embed_interp"] = pos_embed_interp
    enc = _build_backbone(backbone, weights=weights, strides=strides, drop_path_rate=drop_path_rate,
                          out_indices=out_indices, num_attn_maps=num_attn_maps, **backbone_kwargs)
    return TSCDNet(enc, num_classes, decoder_dim=decoder_dim, decoder_dropout=decoder_dropout, pooling=pooling,
                   num_attn_maps=num_attn_maps, symmetrize_affinity=symmetrize_affinity,
                   cam_runs_decoder=cam_runs_decoder)


@register_model(name="tscd_mit_b1")
def tscd_mit_b1(num_classes: int = 20, weights: str | os.PathLike | None = None, **kwargs: Any) -> TSCDNet:
    """The faithful TSCD preset: :func:`tscd` with ``backbone="mit_b1"`` (strides (4, 2, 2, 1)).

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023.
    """
    if "backbone" in kwargs:
        raise ValueError("backbone: tscd_mit_b1 fixes backbone='mit_b1'; use create_model('tscd', backbone=...)")
    return tscd(backbone="mit_b1", num_classes=num_classes, weights=weights, **kwargs)
