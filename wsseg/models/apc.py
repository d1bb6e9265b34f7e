"""APC (experimental): ViT-PCM with adaptive-K pooling and an online segmentation decoder (single stage)."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from torch import Tensor, nn

from ..layers.large_fov_head import LargeFOVHead
from .registry import register_model
from .vitpcm import ViTPCM, _split_vitpcm_kwargs, _vitpcm_backbone

__all__ = ["APCNet", "APCOutput", "apc", "apc_vit_b16_experimental"]


class APCOutput(NamedTuple):
    """Outputs of :meth:`APCNet.forward`: those of :class:`~wsseg.models.ViTPCMOutput` plus ``seg``.

    Attributes:
        patch_logits, patch_probs: (B, C, G_h, G_w), C = K + 1 (background at channel 0).
        pooled: (B, C) pooled patch probabilities.
        embeddings: (B, 4·hidden, G_h, G_w) HV-BiLSTM outputs (the patch-contrast embeddings).
        features: (B, D, G_h, G_w) encoder tokens.
        seg: (B, C, G_h, G_w) segmentation-decoder logits.
    """

    patch_logits: Tensor
    patch_probs: Tensor
    pooled: Tensor
    embeddings: Tensor
    features: Tensor
    seg: Tensor


class APCNet(ViTPCM):
    r"""APC's single-stage network — **experimental, design [assumed]**.

    APC (Wu et al. 2024) is known only from its abstract: a CAM-free ViT with an Adaptive-K pooling layer
    in place of ViT-PCM's max pooling, a patch contrastive loss on the patch embeddings, and an end-to-end
    encoder–decoder that makes ViT-PCM's multi-stage pipeline single-stage. No official code is public. This
    class is the spec's assumed composition (``apc.md`` §5): the :class:`ViTPCM` branch (HV-BiLSTM → patch
    classifier → per-patch softmax → :class:`~wsseg.layers.AdaptiveKPooling`) plus a segmentation decoder on
    the encoder tokens, trained online on pseudo labels from the PCM (:class:`~wsseg.training.APCMethod`):

    .. math::
        S = \mathrm{Dec}(F),\qquad \mathrm{Dec} = \text{LargeFOV (3×3 conv dilation 5, ReLU, 1×1 conv)}

    **[assumed]**: the decoder type (LargeFOV, as the CoSA / ToCo single-stage family), its input (the
    encoder tokens, not the HV-BiLSTM output) and its width (``decoder_dim``, no published value; the
    builder requires it).

    Args:
        backbone: as :class:`ViTPCM`.
        num_classes: K foreground classes.
        decoder_dim: hidden width of the decoder (required; no published value).
        **kwargs: :class:`ViTPCM` hyperparameters (pooling, HV-BiLSTM, classifier, freezing).

    Shape:
        - x: :math:`(B, 3, H, W)`; output: :class:`APCOutput`.

    Raises:
        ValueError: as :class:`ViTPCM`, or for ``decoder_dim < 1``.

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("apc", backbone="test_vit", num_classes=3, hidden=8, decoder_dim=16,
        ...                    k_mode="ratio_to_max", rho=0.5, num_unfrozen_blocks=1)
        >>> out = net(torch.rand(2, 3, 64, 64))
        >>> tuple(out.seg.shape), tuple(out.pooled.shape)
        ((2, 4, 4, 4), (2, 4))

    Source:
        APC, Wu et al., "Adaptive Patch Contrast for Weakly Supervised Semantic Segmentation", 2024, arXiv
        2407.10649 (abstract; design assumed, see spec apc.md §5); ViT-PCM, Rossetti et al. ECCV 2022,
        github.com/deepplants/ViT-PCM (the PCM branch).
    """

    def __init__(self, backbone: nn.Module, num_classes: int, *, decoder_dim: int, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        if isinstance(decoder_dim, bool) or not isinstance(decoder_dim, int) or decoder_dim < 1:
            raise ValueError(f"decoder_dim: expected a positive int, got {decoder_dim!r}")
        self.decoder_dim = decoder_dim
        self.decoder = LargeFOVHead(int(backbone.out_channels[-1]), decoder_dim, num_classes + 1, dilation=5)

    def head(self, features: Tensor) -> APCOutput:  # type: ignore[override]
        """The PCM branch and the decoder on encoder tokens ``(B, D, G_h, G_w)``."""
        out = super().head(features)
        return APCOutput(*out, seg=self.decoder(features))

    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """:meth:`ViTPCM.param_groups` plus a ``"decoder"`` group at ``base_lr`` [assumed]."""
        groups = super().param_groups(base_lr, weight_decay)
        dec = [p for p in self.decoder.parameters() if p.requires_grad]
        return groups + [{"name": "decoder", "params": dec, "lr": base_lr, "weight_decay": weight_decay}]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decoder_dim={self.decoder_dim}"


@register_model(name="apc")
def apc(backbone: str = "vit_base_patch16_384", num_classes: int = 20, weights: str | os.PathLike | None = None, *,
        decoder_dim: int | None = None, pretrained: bool = False, encoder_dropout: float = 0.1,
        img_size: int | tuple[int, int] | None = None, pos_embed_interp: str = "timm", **kwargs: Any) -> APCNet:
    """Build an :class:`APCNet` (registered as ``"apc"``; **experimental**) on any timm ViT.

    The encoder is built as in :func:`~wsseg.models.vitpcm`. ``decoder_dim`` and the pooling
    hyperparameters of the adaptive modes have no published values and must be given.

    Args:
        backbone: a timm ViT name.
        num_classes: K foreground classes.
        weights: path of encoder weights in timm layout.
        decoder_dim: decoder width (required).
        pretrained: must stay ``False``.
        encoder_dropout: dropout inside the encoder blocks (vit-keras 0.1, as ViT-PCM [assumed kept]).
        img_size: ``img_size`` passed to timm.
        pos_embed_interp: positional-embedding resampling (:func:`~wsseg.backbones.resample_pos_embed`).
            APC has no public code; the default ``"timm"`` is ViT-PCM's (its official TensorFlow 2 bicubic
            equals timm's resampling when upsampling), APC's base.
        **kwargs: :class:`ViTPCM` hyperparameters and further ``timm.create_model`` keyword arguments.

    Raises:
        ValueError: if ``decoder_dim`` is missing, and as :func:`~wsseg.models.vitpcm`.

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (design assumed, spec apc.md §5).
    """
    if decoder_dim is None:
        raise ValueError("decoder_dim: required for 'apc' (no published value; e.g. create_model('apc', ..., "
                         "decoder_dim=256))")
    own = _split_vitpcm_kwargs(kwargs)
    enc = _vitpcm_backbone(backbone, weights, encoder_dropout, img_size, pretrained,
                           pos_embed_interp=pos_embed_interp, **kwargs)
    return APCNet(enc, num_classes, decoder_dim=decoder_dim, **own)


@register_model(name="apc_vit_b16_experimental")
def apc_vit_b16_experimental(num_classes: int = 20, weights: str | os.PathLike | None = None,
                             **kwargs: Any) -> APCNet:
    """:func:`apc` on ViT-B/16 at 384 (the ViT-PCM encoder; APC's own input size is unknown). Experimental.

    Raises:
        ValueError: if ``backbone`` is given, or as :func:`apc`.

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (design assumed, spec apc.md §5).
    """
    if "backbone" in kwargs:
        raise ValueError("backbone: apc_vit_b16_experimental fixes backbone='vit_base_patch16_384'; "
                         "use create_model('apc', backbone=...)")
    return apc(backbone="vit_base_patch16_384", num_classes=num_classes, weights=weights, **kwargs)
