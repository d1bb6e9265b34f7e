"""Gradient checkpointing switch shared by the method networks (delegates to the encoder)."""

from __future__ import annotations

from torch import nn

#: the wsseg encoders whose blocks can be recomputed in backward (``set_grad_checkpointing``)
SUPPORTED = "MixTransformer (mit_b*) and TimmViTBackbone (timm ViTs)"


def set_encoder_grad_checkpointing(model: nn.Module, encoder: nn.Module, enable: bool) -> None:
    """Switch gradient checkpointing of ``encoder`` (the encoder of ``model``) on or off.

    Raises:
        ValueError: when enabling it on an encoder without ``set_grad_checkpointing`` (e.g. the WideResNet-38
            and timm CNN backbones), naming the model, the encoder and the supported ones. Disabling it is a
            no-op there.
    """
    setter = getattr(encoder, "set_grad_checkpointing", None)
    if setter is None:
        if enable:
            raise ValueError(f"grad_checkpointing: {type(model).__name__}'s encoder {type(encoder).__name__} has no "
                             f"gradient checkpointing (supported: {SUPPORTED}); train without it")
        return
    setter(bool(enable))


class GradCheckpointingMixin:
    """``set_grad_checkpointing`` for a method network whose encoder is the attribute ``_encoder_attr``."""

    _encoder_attr = "encoder"

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the encoder's blocks in backward instead of storing their activations (same gradients).

        Delegates to the encoder's ``set_grad_checkpointing``
        (:meth:`wsseg.backbones.MixTransformer.set_grad_checkpointing`,
        :meth:`wsseg.backbones.TimmViTBackbone.set_grad_checkpointing`); the engine calls it for
        ``TrainConfig(grad_checkpointing=True)`` (``--grad-checkpointing``).

        Raises:
            ValueError: when enabling it on an encoder without gradient checkpointing (WideResNet-38 and
                timm CNN backbones).

        Example:
            >>> net = wsseg.create_model("tscd", backbone="mit_b0", num_classes=3, decoder_dim=16)
            >>> net.set_grad_checkpointing()
            >>> net.encoder.grad_checkpointing
            True
            >>> wr38 = wsseg.create_model("slrnet", backbone="resnet38d_w16", num_classes=3, feature_dim=16)
            >>> wr38.set_grad_checkpointing()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: grad_checkpointing: SLRNet's encoder ResNet38d has no gradient checkpointing ...
        """
        set_encoder_grad_checkpointing(self, getattr(self, self._encoder_attr), enable)
