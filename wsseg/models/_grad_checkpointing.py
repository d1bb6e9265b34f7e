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
