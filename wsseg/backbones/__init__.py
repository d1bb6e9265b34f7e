"""Backbones returning feature maps and attention logits (timm ViTs, MiT/SegFormer)."""

from .base import BackboneOutput, split_norm_parameters
from .mix_transformer import MIT_CONFIGS, MixTransformer, mit_b0, mit_b1, mit_b2
from .timm_vit import TimmViTBackbone, qk_logits
from .weights import LoadReport, load_weights, read_state_dict

__all__: list[str] = [
    "BackboneOutput",
    "LoadReport",
    "MIT_CONFIGS",
    "MixTransformer",
    "TimmViTBackbone",
    "load_weights",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "qk_logits",
    "read_state_dict",
    "split_norm_parameters",
]
