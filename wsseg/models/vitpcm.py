"""ViT-PCM reference model: ViT encoder → HV-BiLSTM → bias-free patch classifier → per-patch softmax → pooling."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..layers.adaptive_k_pooling import AdaptiveKPooling
from ..layers.hv_bilstm import HVBiLSTM
from ..layers.patch_classifier import PatchClassifier
from ..utils.stride import fit_to_stride
from ..utils.validation import check_tensor
from ._grad_checkpointing import GradCheckpointingMixin
from .registry import register_model

__all__ = ["ViTPCM", "ViTPCMOutput", "vitpcm", "vitpcm_b16"]


class ViTPCMOutput(NamedTuple):
    """Outputs of :meth:`ViTPCM.forward` (C = K + 1 channels, background at channel 0, grid G_h × G_w).

    Attributes:
        patch_logits: patch-classifier logits (B, C, G_h, G_w).
        patch_probs: per-patch softmax over the C classes, the patch-class map "PCM" (B, C, G_h, G_w).
        pooled: image-level scores in [0, 1] from the pooling layer (B, C); ViT-PCM's ``pooled_preds``.
        embeddings: HV-BiLSTM outputs entering the classifier (B, 4·hidden, G_h, G_w).
        features: encoder patch tokens after the final norm, CLS removed (B, D, G_h, G_w).
    """

    patch_logits: Tensor
    patch_probs: Tensor
    pooled: Tensor
    embeddings: Tensor
    features: Tensor


def _encoder_blocks(encoder: nn.Module) -> nn.Module:
    blocks = getattr(getattr(encoder, "model", None), "blocks", None)
    if blocks is None:
        raise ValueError(f"backbone: expected a wsseg.backbones.TimmViTBackbone (attribute 'model.blocks' missing), "
                         f"got {type(encoder).__name__}")
    return blocks


class ViTPCM(GradCheckpointingMixin, nn.Module):
    r"""ViT-PCM: a CAM-free patch-class-map network (Rossetti et al., ECCV 2022).

    With :math:`F` the final-LayerNorm patch tokens of the ViT (class token removed) on a :math:`G_h \times
    G_w` grid:

    .. math::
        E = \mathrm{HVBiLSTM}(F),\qquad L = W E\ \ (\text{bias-free}),\qquad
        P_{:,i} = \mathrm{softmax}_c(L_{:,i}),\qquad \hat y_c = \mathrm{pool}_i\, P_{c,i}

    with :math:`C = K + 1` classes (background included) and ``pool`` the
    :class:`~wsseg.layers.AdaptiveKPooling` layer: ``k_mode="max"`` is ViT-PCM's global max pooling (the
    faithful default); the other modes are APC's adaptive-K pooling (experimental, their rule is
    **[assumed]**, see :func:`~wsseg.layers.adaptive_k_pooling`). There is no CAM: the segmentation is the
    per-patch argmax of :math:`P` after :func:`~wsseg.pseudo.merge_class_labels`.

    **Freezing** (official ``warmup`` / ``unfreeze``): the patch embedding, class / positional embeddings
    and the first ``depth - num_unfrozen_blocks`` blocks are frozen for the whole run
    (``requires_grad=False`` at construction); the last ``num_unfrozen_blocks`` blocks and the final norm
    are trainable but receive no gradient while :attr:`encoder_grad` is ``False`` (the one-epoch warm-up
    stage, in which only the HV-BiLSTM and the classifier learn; the training step sets it).

    Build it with :func:`wsseg.create_model <wsseg.models.create_model>` (``"vitpcm"`` / ``"vitpcm_b16"``).

    Args:
        backbone: a :class:`~wsseg.backbones.TimmViTBackbone` returning the last block (``out_indices=(-1,)``).
        num_classes: K foreground classes (the classifier has K + 1 outputs; note the spec's sketch counts
            the background in ``num_classes``, wsseg's builders count foreground classes as everywhere).
        hidden: HV-BiLSTM hidden size per direction (official ``MODEL.HIDDEN_SIZE`` 192).
        dropout: dropout before the HV-BiLSTM and before the classifier (official ``SOLVER.DROPOUT`` 0.2).
        input_dropout: the LSTMs' input dropout (official: the same value, 0.2).
        init_std: classifier init N(0, init_std²) (0.05).
        l2: classifier L2 coefficient, :meth:`l2_penalty` (0.01).
        num_unfrozen_blocks: encoder blocks trained after the warm-up stage (official 5).
        k_mode, k, rho, k_min, k_max: the pooling layer (:class:`~wsseg.layers.AdaptiveKPooling`); ``"max"``
            is ViT-PCM.

    Shape:
        - x: :math:`(B, 3, H, W)`, ImageNet-normalised, H and W multiples of the patch size (official: square
          384 × 384 → 24 × 24).
        - output: :class:`ViTPCMOutput`.

    Raises:
        ValueError: for ``num_classes < 1``, ``num_unfrozen_blocks`` outside [0, depth], a backbone that is
            not a ViT backbone returning its last block, or invalid pooling hyperparameters.

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("vitpcm", backbone="test_vit", num_classes=3, hidden=8, num_unfrozen_blocks=1)
        >>> out = net(torch.rand(2, 3, 64, 64))
        >>> tuple(out.patch_probs.shape), tuple(out.pooled.shape), tuple(out.embeddings.shape)
        ((2, 4, 4, 4), (2, 4), (2, 32, 4, 4))

    Source:
        ViT-PCM, Rossetti et al., "Max Pooling with Vision Transformers reconciles Class and Shape in Weakly
        Supervised Semantic Segmentation", ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``get_model``,
        ``VITPCM``, ``HVBiLSTM``, ``PC``, ``warmup``, ``unfreeze``).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, hidden: int = 192, dropout: float = 0.2,
                 input_dropout: float = 0.2, init_std: float = 0.05, l2: float = 0.01, num_unfrozen_blocks: int = 5,
                 k_mode: str = "max", k: int | None = None, rho: float | None = None, k_min: int = 1,
                 k_max: int | None = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        blocks = _encoder_blocks(backbone)
        depth = len(blocks)
        if tuple(getattr(backbone, "out_indices", ())) != (depth - 1,):
            raise ValueError(f"backbone: expected out_indices ({depth - 1},) (the last block only), got "
                             f"{tuple(getattr(backbone, 'out_indices', ()))}; build it with out_indices=(-1,)")
        if isinstance(num_unfrozen_blocks, bool) or not isinstance(num_unfrozen_blocks, int) \
                or not 0 <= num_unfrozen_blocks <= depth:
            raise ValueError(f"num_unfrozen_blocks: expected an int in [0, {depth}], got {num_unfrozen_blocks!r}")
        self.num_classes = num_classes
        self.num_unfrozen_blocks = num_unfrozen_blocks
        self.encoder = backbone
        dim = int(backbone.out_channels[-1])
        self.hv_bilstm = HVBiLSTM(dim, hidden, dropout=dropout, input_dropout=input_dropout)
        self.classifier = PatchClassifier(4 * hidden, num_classes + 1, dropout=dropout, init_std=init_std, l2=l2)
        self.pooling = AdaptiveKPooling(k_mode, k=k, rho=rho, k_min=k_min, k_max=k_max)
        #: whether the trainable encoder tail receives gradients (False during the warm-up stage)
        self.encoder_grad = True
        self._freeze_encoder_head(depth - num_unfrozen_blocks)

    def _freeze_encoder_head(self, first_trainable: int) -> None:
        """Freeze everything of the encoder except blocks ``first_trainable..`` and the final norm."""
        model = self.encoder.model
        trainable = {id(p) for blk in list(model.blocks)[first_trainable:] for p in blk.parameters()}
        norm = getattr(model, "norm", None)
        if isinstance(norm, nn.Module):
            trainable |= {id(p) for p in norm.parameters()}
        for p in self.encoder.parameters():
            p.requires_grad_(id(p) in trainable)

    # ------------------------------------------------------------------ properties
    @property
    def stride(self) -> int:
        """The patch size (16 for ViT-B/16, 14 for DINOv2)."""
        return int(self.encoder.patch_size)

    def fit_input(self, x: Tensor) -> Tensor:
        """Resize ``x`` (bilinear) so both sides are multiples of :attr:`stride` (identity when they are)."""
        return fit_to_stride(x, self.stride)

    def l2_penalty(self) -> Tensor:
        """ViT-PCM's L_reg: ``l2 · Σ W²`` of the classifier (Keras ``L2(0.01)``)."""
        return self.classifier.l2_penalty()

    # ------------------------------------------------------------------ forward
    def encode(self, x: Tensor) -> Tensor:
        """Encoder patch tokens ``(B, D, G_h, G_w)``; no gradient while :attr:`encoder_grad` is False."""
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_grad):
            return self.encoder(x).features[-1]

    def head(self, features: Tensor) -> ViTPCMOutput:
        """HV-BiLSTM, classifier, softmax and pooling on encoder tokens ``(B, D, G_h, G_w)``."""
        emb = self.hv_bilstm(features)
        logits = self.classifier(emb)
        probs = logits.softmax(dim=1)
        pooled = self.pooling(probs)
        return ViTPCMOutput(patch_logits=logits, patch_probs=probs, pooled=pooled, embeddings=emb, features=features)

    def forward(self, x: Tensor, x_mosaic: Tensor | None = None) -> ViTPCMOutput | tuple[ViTPCMOutput, ViTPCMOutput]:
        """The PCM outputs of ``x``; with ``x_mosaic`` (the equivariance view, :func:`~wsseg.layers.mosaic_2x2`)
        a pair ``(out, out_mosaic)`` from one call (so that DDP sees a single forward per iteration).

        Shape:
            - x: :math:`(B, 3, H, W)`; x_mosaic: :math:`(B/4, 3, H_m, W_m)`, both multiples of :attr:`stride`.
            - output: :class:`ViTPCMOutput` (or a pair of them).
        """
        out = self.head(self.encode(x))
        if x_mosaic is None:
            return out
        return out, self.head(self.encode(x_mosaic))

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Two groups: ``"encoder"`` (the trainable tail: last blocks + final norm) and ``"heads"`` (HV-BiLSTM,
        classifier), both at ``base_lr`` (ViT-PCM uses one Adam learning rate per stage; the stage schedule
        lives in the training method). Frozen parameters are left out; empty groups are dropped.

        Raises:
            ValueError: if ``base_lr`` or ``weight_decay`` is negative.
        """
        if float(base_lr) < 0 or float(weight_decay) < 0:
            raise ValueError(f"base_lr / weight_decay: expected non-negative floats, got {base_lr}, {weight_decay}")
        enc = [p for p in self.encoder.parameters() if p.requires_grad]
        heads = [p for m in (self.hv_bilstm, self.classifier) for p in m.parameters() if p.requires_grad]
        groups = [{"name": "encoder", "params": enc, "lr": base_lr, "weight_decay": weight_decay},
                  {"name": "heads", "params": heads, "lr": base_lr, "weight_decay": weight_decay}]
        return [g for g in groups if g["params"]]


    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_unfrozen_blocks={self.num_unfrozen_blocks}"


#: :class:`ViTPCM` keyword arguments accepted by the builders (the rest goes to ``timm.create_model``).
_VITPCM_KWARGS = ("hidden", "dropout", "input_dropout", "init_std", "l2", "num_unfrozen_blocks", "k_mode", "k", "rho",
                  "k_min", "k_max")


def _split_vitpcm_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the :class:`ViTPCM` hyperparameters out of ``kwargs``."""
    return {k: kwargs.pop(k) for k in _VITPCM_KWARGS if k in kwargs}


def _vitpcm_backbone(backbone: str, weights: str | os.PathLike | None, encoder_dropout: float,
                     img_size: int | tuple[int, int] | None, pretrained: bool, **backbone_kwargs: Any) -> nn.Module:
    from .. import backbones as bb

    if pretrained:
        raise ValueError("pretrained: wsseg never downloads weights; pass weights=<path> instead")
    if not isinstance(backbone, str):
        raise TypeError(f"backbone: expected a timm ViT name (str), got {type(backbone).__name__}")
    import timm

    if not timm.is_model(backbone):
        raise ValueError(f"backbone: expected a timm ViT name, got {backbone!r}")
    if weights is not None and not os.path.isfile(weights):
        raise ValueError(f"weights: file not found: {weights}")
    if not 0.0 <= float(encoder_dropout) < 1.0:
        raise ValueError(f"encoder_dropout: expected a float in [0, 1), got {encoder_dropout!r}")
    kw = dict(backbone_kwargs)
    if encoder_dropout:
        kw.setdefault("proj_drop_rate", float(encoder_dropout))
    return bb.TimmViTBackbone(backbone, weights=weights, out_indices=(-1,), img_size=img_size, **kw)


@register_model(name="vitpcm")
def vitpcm(backbone: str = "vit_base_patch16_384", num_classes: int = 20, weights: str | os.PathLike | None = None,
           *, pretrained: bool = False, encoder_dropout: float = 0.1, img_size: int | tuple[int, int] | None = None,
           pos_embed_interp: str = "timm", **kwargs: Any) -> ViTPCM:
    """Build a :class:`ViTPCM` (registered as ``"vitpcm"``) on any timm ViT.

    The encoder is a :class:`~wsseg.backbones.TimmViTBackbone` returning the last block after the final norm
    (nothing downloaded; ``weights`` loads a timm-layout checkpoint strictly, fp16 → fp32). vit-keras blocks
    use dropout 0.1 after the attention output and in the MLP, which is timm's ``proj_drop_rate``
    (``encoder_dropout``). Any timm ViT works, e.g. ``"vit_small_patch14_dinov2"`` with the DINOv2 weights.

    Args:
        backbone: a timm ViT name (faithful: ``"vit_base_patch16_384"``).
        num_classes: K foreground classes (VOC 20, COCO 80).
        weights: path of encoder weights in timm layout.
        pretrained: must stay ``False``.
        encoder_dropout: dropout inside the encoder blocks (vit-keras 0.1).
        img_size: ``img_size`` passed to timm; ``None`` keeps the model's default.
        pos_embed_interp: positional-embedding resampling when the token grid differs from the stored
            one (:func:`~wsseg.backbones.resample_pos_embed`). Default ``"timm"``: the official vit-keras
            fork resizes with TensorFlow 2's ``tf.image.resize(method="bicubic")`` (Keys :math:`a = -0.5`,
            renormalised border taps), which timm's resampling equals when upsampling; the official
            training never resamples (view 1 and the 2 × 2 mosaic are 384², the stored grid).
            ``"bicubic"`` = plain PyTorch bicubic (:math:`a = -0.75`).
        **kwargs: :class:`ViTPCM` hyperparameters (``hidden``, ``dropout``, ``k_mode``, ...) and further
            ``timm.create_model`` keyword arguments.

    Raises:
        TypeError: if ``backbone`` is not a string.
        ValueError: for an unknown backbone, a missing weights file, ``pretrained=True`` or bad values.

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``get_model``, ``ViT``).
    """
    own = _split_vitpcm_kwargs(kwargs)
    enc = _vitpcm_backbone(backbone, weights, encoder_dropout, img_size, pretrained,
                           pos_embed_interp=pos_embed_interp, **kwargs)
    return ViTPCM(enc, num_classes, **own)


@register_model(name="vitpcm_b16")
def vitpcm_b16(num_classes: int = 20, weights: str | os.PathLike | None = None, **kwargs: Any) -> ViTPCM:
    """The faithful ViT-PCM preset: :func:`vitpcm` with ViT-B/16 at 384 × 384 (24 × 24 grid, N = 576).

    The official weights are vit-keras' "imagenet21k+imagenet2012" ViT-B_16 at 384 (timm's
    ``vit_base_patch16_384`` has the same architecture; convert and pass their path as ``weights``);
    HV-BiLSTM hidden 192, dropout 0.2, 5 unfrozen blocks, global max pooling.

    Raises:
        ValueError: if ``backbone`` is given (use ``create_model("vitpcm", backbone=...)``).

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, configs/voc12.yaml, model.py.
    """
    if "backbone" in kwargs:
        raise ValueError("backbone: vitpcm_b16 fixes backbone='vit_base_patch16_384'; "
                         "use create_model('vitpcm', backbone=...)")
    return vitpcm(backbone="vit_base_patch16_384", num_classes=num_classes, weights=weights, **kwargs)
