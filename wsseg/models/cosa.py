"""CoSA reference model: ViT encoder + main/aux GMP classifiers (CAMs) + LargeFOV segmentation head."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.large_fov_head import LargeFOVHead
from ..utils.stride import fit_to_stride
from ..utils.validation import check_tensor
from ._grad_checkpointing import GradCheckpointingMixin
from ._param_groups import encoder_head_param_groups
from .registry import register_model
from .tscd import _build_backbone, _vit_depth

__all__ = ["CoSANet", "CoSAOutput", "cosa", "cosa_vit_b16"]

_POOLING = ("gmp", "gap")
_CAM_DETACH = ("none", "all", "feat", "cls")


class CoSAOutput(NamedTuple):
    """Outputs of :meth:`CoSANet.forward` (K foreground classes, grid h×w = (H/p)×(W/p)).

    Attributes:
        cls: main classification logits (B, K).
        cls_aux: auxiliary classification logits (B, K), from block ``aux_layer``.
        cam: raw main CAM logits (B, K, h, w), no ReLU.
        cam_aux: raw auxiliary CAM logits (B, K, h, w), no ReLU.
        seg: segmentation logits (B, K+1, h, w), background at channel 0.
    """

    cls: Tensor
    cls_aux: Tensor
    cam: Tensor
    cam_aux: Tensor
    seg: Tensor


def _check_aux_layer(aux_layer: object, depth: int) -> int:
    if isinstance(aux_layer, bool) or not isinstance(aux_layer, int) or not -depth <= aux_layer < depth:
        raise ValueError(f"aux_layer: expected a block index in [{-depth}, {depth}) for a {depth}-block ViT, "
                         f"got {aux_layer!r}")
    return aux_layer % depth


class CoSANet(GradCheckpointingMixin, nn.Module):
    r"""The CoSA network: a ViT with a main and an auxiliary CAM classifier and a LargeFOV segmentation head.

    With :math:`F` the final-LayerNorm patch tokens of the last block and :math:`F_{aux}` the raw
    (un-normalised) patch tokens of block ``aux_layer`` (−3 = the 10th of 12 blocks), both reshaped to
    :math:`(B, D, h, w)`:

    .. math::
        z = W\,\mathrm{GMP}(F),\quad z_{aux} = W_{aux}\,\mathrm{GMP}(F_{aux}),\quad
        M = W * F,\quad M_{aux} = W_{aux} * F_{aux},\quad S = \mathrm{LargeFOV}(F)

    :math:`W, W_{aux}` are bias-free 1×1 convolutions D → K (PyTorch default initialisation), GMP is
    global max pooling (``pooling="gap"``: average), CAMs are returned raw (no ReLU) and
    :math:`S` has K + 1 channels (background first). ``cam_detach`` reproduces the official ``detach``
    option (applied to both CAMs, never to the classification logits): ``"none"`` (official default),
    ``"all"`` (CAMs detached), ``"feat"`` (features detached: CAM gradients reach only the classifier
    weights), ``"cls"`` (classifier weights detached: CAM gradients reach only the encoder).
    ``freeze_pos_embed`` (official) sets ``requires_grad=False`` on the ViT's absolute positional
    embedding (a no-op for models without one).

    Build it with :func:`wsseg.create_model <wsseg.models.create_model>` (``"cosa"`` /
    ``"cosa_vit_b16"``) rather than directly.

    Args:
        backbone: a :class:`~wsseg.backbones.TimmViTBackbone` built with
            ``out_indices=(aux_layer, -1)`` (aux block without the final norm, last block with it).
        num_classes: K, number of foreground classes.
        hidden_channels: width of the LargeFOV head (official 512).
        aux_layer: ViT block feeding the auxiliary classifier (official −3; ``run_voc.sh`` passes −4).
        freeze_pos_embed: freeze the positional embedding (official ``True``).
        pooling: ``"gmp"`` (official, ``isgap=False``) or ``"gap"``.
        cam_detach: ``"none"`` (official), ``"all"``, ``"feat"`` or ``"cls"``.

    Shape:
        - x: :math:`(B, 3, H, W)`, ImageNet-normalised, H and W multiples of the patch size p (see
          :meth:`fit_input`).
        - output: :class:`CoSAOutput`, grids :math:`h \times w = H/p \times W/p`.

    Raises:
        ValueError: for ``num_classes < 1``, an unknown ``pooling`` / ``cam_detach``, an ``aux_layer``
            out of range, or a backbone that is not a ViT backbone with ``out_indices=(aux_layer, -1)``.
        TypeError: if ``x`` is not a floating-point tensor (in ``forward``).

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=8)
        >>> out = net(torch.rand(2, 3, 64, 96))
        >>> tuple(out.cls.shape), tuple(out.cam_aux.shape), tuple(out.seg.shape)
        ((2, 3), (2, 3, 4, 6), (2, 4, 4, 6))

    Source:
        CoSA, Yang et al., "Weakly Supervised Co-training with Swapping Assignments for Semantic
        Segmentation", ECCV 2024; github.com/youshyee/CoSA, models/__init__.py (``VITNetwork``),
        models/vit/vit.py, models/decoder/conv_head.py.
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, hidden_channels: int = 512, aux_layer: int = -3,
                 freeze_pos_embed: bool = True, pooling: str = "gmp", cam_detach: str = "none") -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        if pooling not in _POOLING:
            raise ValueError(f"pooling: expected one of {_POOLING}, got {pooling!r}")
        if cam_detach not in _CAM_DETACH:
            raise ValueError(f"cam_detach: expected one of {_CAM_DETACH}, got {cam_detach!r}")
        for attr in ("model", "out_indices", "out_channels", "patch_size"):
            if not hasattr(backbone, attr):
                raise ValueError(f"backbone: expected a wsseg.backbones.TimmViTBackbone (attribute {attr!r} "
                                 f"missing), got {type(backbone).__name__}")
        depth = len(backbone.model.blocks)
        aux = _check_aux_layer(aux_layer, depth)
        expected = (aux, depth - 1)
        if tuple(backbone.out_indices) != expected:
            raise ValueError(f"backbone: expected out_indices {expected} (aux_layer={aux_layer} and the last "
                             f"block), got {tuple(backbone.out_indices)}; build it with "
                             f"TimmViTBackbone(..., out_indices=({aux_layer}, -1))")
        self.num_classes = num_classes
        self.aux_layer = aux_layer
        self.pooling = pooling
        self.cam_detach = cam_detach
        self.freeze_pos_embed = bool(freeze_pos_embed)
        self.encoder = backbone
        dim = int(backbone.out_channels[-1])
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1, bias=False)
        self.aux_classifier = nn.Conv2d(dim, num_classes, kernel_size=1, bias=False)
        self.decoder = LargeFOVHead(dim, hidden_channels, num_classes + 1, dilation=5, bias=False)
        pos_embed = getattr(backbone.model, "pos_embed", None)
        if self.freeze_pos_embed and isinstance(pos_embed, nn.Parameter):
            pos_embed.requires_grad_(False)

    # ------------------------------------------------------------------ properties
    @property
    def stride(self) -> int:
        """Stride of the CAM / segmentation grid: the ViT patch size (16 for ViT-B/16, 14 for DINOv2)."""
        return int(self.encoder.patch_size)

    def fit_input(self, x: Tensor) -> Tensor:
        """Resize ``x`` (bilinear) so both sides are the nearest multiples of :attr:`stride`; identity when
        they already are (always the case at the official crop 448 and scales 0.5 / 1.5). Used for inputs
        whose size is set by a scale factor; resize outputs back to the intended size afterwards."""
        return fit_to_stride(x, self.stride)

    # ------------------------------------------------------------------ forward
    def _cam(self, feat: Tensor, weight: Tensor) -> Tensor:
        if self.cam_detach == "all":
            return F.conv2d(feat, weight).detach()
        if self.cam_detach == "feat":
            return F.conv2d(feat.detach(), weight)
        if self.cam_detach == "cls":
            return F.conv2d(feat, weight.detach())
        return F.conv2d(feat, weight)

    def _pool(self, feat: Tensor) -> Tensor:
        return F.adaptive_max_pool2d(feat, 1) if self.pooling == "gmp" else F.adaptive_avg_pool2d(feat, 1)

    def forward(self, x: Tensor) -> CoSAOutput:
        """Classification logits, raw CAMs (main, aux) and segmentation logits of ``x``.

        Shape:
            - x: :math:`(B, 3, H, W)`, H and W multiples of :attr:`stride`.
            - output: :class:`CoSAOutput` (shapes listed there).
        """
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        feat_aux, feat = self.encoder(x).features
        seg = self.decoder(feat)
        cam = self._cam(feat, self.classifier.weight)
        cam_aux = self._cam(feat_aux, self.aux_classifier.weight)
        cls = self.classifier(self._pool(feat)).flatten(1)
        cls_aux = self.aux_classifier(self._pool(feat_aux)).flatten(1)
        return CoSAOutput(cls=cls, cls_aux=cls_aux, cam=cam, cam_aux=cam_aux, seg=seg)

    def cam(self, x: Tensor) -> Tensor:
        r"""The raw main CAM :math:`M = W * F` alone, detached: the encoder and the classifier weights as a
        1×1 convolution, without the decoder, the aux CAM or the pooled logits (values equal to
        ``forward(x).cam``; for evaluation passes that read only the CAM).

        Shape:
            - x: :math:`(B, 3, H, W)`, H and W multiples of :attr:`stride`.
            - output: :math:`(B, K, H/s, W/s)`, s = :attr:`stride`.
        """
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        _, feat = self.encoder(x).features
        return F.conv2d(feat, self.classifier.weight).detach()

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, base_lr: float, weight_decay: float = 0.01, head_lr_mult: float = 10.0,
                     encoder_norm_lr_mult: float = 1.0) -> list[dict[str, Any]]:
        """AdamW parameter groups of the official recipe (``cosa.md`` §9).

        * ``"encoder"``: encoder parameters whose name does not contain ``"norm"``, lr ``base_lr``;
        * ``"encoder_norm"``: encoder parameters whose name contains ``"norm"``, lr
          ``base_lr * encoder_norm_lr_mult`` (CoSA trains them: 1.0; 0 reproduces ``--freeze_norm``,
          which also sets their weight decay to 0);
        * ``"heads"``: ``classifier`` and ``aux_classifier`` weights, lr ``base_lr * head_lr_mult`` (10×);
        * ``"decoder"``: the LargeFOV head, lr ``base_lr * head_lr_mult`` (10×).

        Every group uses ``weight_decay`` (official 0.01 for all four). Frozen parameters (the
        positional embedding) are left out; empty groups are dropped.

        Raises:
            ValueError: if ``base_lr``, ``weight_decay`` or a multiplier is negative.
        """
        norm_wd = 0.0 if float(encoder_norm_lr_mult) == 0.0 else weight_decay
        return encoder_head_param_groups(self.encoder, (self.classifier.weight, self.aux_classifier.weight),
                                         self.decoder, base_lr=base_lr, weight_decay=weight_decay,
                                         head_lr_mult=head_lr_mult, encoder_norm_lr_mult=encoder_norm_lr_mult,
                                         norm_weight_decay=norm_wd)


    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, aux_layer={self.aux_layer}, pooling={self.pooling!r}, "
                f"cam_detach={self.cam_detach!r}, freeze_pos_embed={self.freeze_pos_embed}")


# ---------------------------------------------------------------------- builders
@register_model(name="cosa")
def cosa(backbone: str = "vit_base_patch16_224", num_classes: int = 20, weights: str | os.PathLike | None = None,
         *, pretrained: bool = False, aux_layer: int = -3, freeze_pos_embed: bool = True, pooling: str = "gmp",
         cam_detach: str = "none", hidden_channels: int = 512, img_size: int | tuple[int, int] | None = None,
         drop_path_rate: float = 0.0, pos_embed_interp: str = "bicubic", **backbone_kwargs: Any) -> CoSANet:
    """Build a :class:`CoSANet` (registered as ``"cosa"``) on any timm ViT.

    The encoder is a :class:`~wsseg.backbones.TimmViTBackbone` returning block ``aux_layer`` (raw
    residual stream) and the last block (after the final norm), built exactly like the ViT encoders of
    ``"tscd"`` (same weights loading: strict, fp16 → fp32, nothing downloaded). Faithful settings
    (:func:`cosa_vit_b16`): ``vit_base_patch16_224`` (LayerNorm eps 1e-6, qkv bias), ``aux_layer=-3``,
    frozen positional embedding resampled with plain bicubic, GMP, LargeFOV width 512, no drop-path. Any
    timm ViT works, e.g.
    ``"vit_small_patch14_dinov2"`` with ``weights=".../dinov2_vits14_imgfocus_fp16.pth"`` or ``"test_vit"``.

    Args:
        backbone: a timm ViT model name.
        num_classes: K foreground classes (VOC 20, COCO 80).
        weights: path of encoder weights in timm layout (``.pth``/``.pt``/``.safetensors``).
        pretrained: must stay ``False`` (wsseg never downloads; pass ``weights``).
        aux_layer, freeze_pos_embed, pooling, cam_detach, hidden_channels: see :class:`CoSANet`.
        img_size: ``img_size`` passed to timm (stored positional-embedding grid); ``None`` = default.
        drop_path_rate: stochastic depth of the encoder (official 0).
        pos_embed_interp: positional-embedding resampling when the token grid differs from the stored
            one (:func:`~wsseg.backbones.resample_pos_embed`). Official ``"bicubic"``: plain
            ``F.interpolate(mode="bicubic", align_corners=False)``, cubic kernel :math:`a = -0.75`, as the
            official ``prepare_tokens``; ``"timm"`` is timm's antialiased resampling (:math:`a = -0.5`).
            At the official crop 448 the grid is 28 × 28 from a stored 14 × 14, so this choice changes
            every forward.
        **backbone_kwargs: further ``timm.create_model`` keyword arguments.

    Raises:
        TypeError: if ``backbone`` is not a string.
        ValueError: for a name that is not a timm ViT, ``pretrained=True``, a missing ``weights`` file or
            an ``aux_layer`` out of range.

    Example:
        >>> net = cosa("test_vit", num_classes=3, hidden_channels=8, aux_layer=-2)
        >>> net.encoder.out_indices, net.stride
        ((4, 5), 16)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, models/__init__.py (``build_model``),
        args.py (defaults).
    """
    if pretrained:
        raise ValueError("pretrained: wsseg never downloads weights; pass weights=<path to a checkpoint>")
    if not isinstance(backbone, str):
        raise TypeError(f"backbone: expected a timm ViT model name (str), got {type(backbone).__name__}")
    import timm

    if backbone.startswith("mit_") or not timm.is_model(backbone):
        raise ValueError(f"backbone: CoSA needs a timm ViT model name (e.g. 'vit_base_patch16_224'), got {backbone!r}")
    _check_aux_layer(aux_layer, _vit_depth(backbone))
    enc = _build_backbone(backbone, weights=weights, strides=None, drop_path_rate=drop_path_rate,
                          out_indices=(aux_layer, -1), num_attn_maps=0, img_size=img_size,
                          pos_embed_interp=pos_embed_interp, **backbone_kwargs)
    return CoSANet(enc, num_classes, hidden_channels=hidden_channels, aux_layer=aux_layer,
                   freeze_pos_embed=freeze_pos_embed, pooling=pooling, cam_detach=cam_detach)


@register_model(name="cosa_vit_b16")
def cosa_vit_b16(num_classes: int = 20, weights: str | os.PathLike | None = None, **kwargs: Any) -> CoSANet:
    """The faithful CoSA preset: :func:`cosa` with ``backbone="vit_base_patch16_224"``.

    ViT-B/16 (12 blocks, 12 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6, no dropout / drop-path),
    aux block −3, frozen positional embedding resampled with plain bicubic (``pos_embed_interp="bicubic"``),
    GMP classifiers, LargeFOV (512, dilation 5). The official
    weights are timm's ``jx_vit_base_p16_224-80ecf9dd.pth`` (ImageNet-21k → 1k); pass their path as
    ``weights``.

    Raises:
        ValueError: if ``backbone`` is given (use ``create_model("cosa", backbone=...)``).

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, models/vit/vit.py (``vit_base_patch16_224``).
    """
    if "backbone" in kwargs:
        raise ValueError("backbone: cosa_vit_b16 fixes backbone='vit_base_patch16_224'; "
                         "use create_model('cosa', backbone=...)")
    return cosa(backbone="vit_base_patch16_224", num_classes=num_classes, weights=weights, **kwargs)
