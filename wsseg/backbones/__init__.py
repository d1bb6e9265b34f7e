"""Backbones returning feature maps and attention logits (timm ViTs and CNNs, MiT/SegFormer, WideResNet-38)."""

from .base import BackboneOutput, split_norm_parameters
from .mix_transformer import MIT_CONFIGS, MixTransformer, mit_b0, mit_b1, mit_b2
from .resnet38d import RESNET38D_FEATURES, ResNet38d, load_resnet38d_weights, resnet38d
from .timm_cnn import TimmCNNBackbone, load_weights_by_order
from .timm_vit import TimmViTBackbone, qk_logits, resample_pos_embed
from .weights import LoadReport, load_weights, read_state_dict

__all__: list[str] = [
    "BackboneOutput",
    "LoadReport",
    "MIT_CONFIGS",
    "MixTransformer",
    "RESNET38D_FEATURES",
    "ResNet38d",
    "TimmCNNBackbone",
    "TimmViTBackbone",
    "load_resnet38d_weights",
    "load_weights",
    "load_weights_by_order",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "qk_logits",
    "read_state_dict",
    "resample_pos_embed",
    "resnet38d",
    "split_norm_parameters",
]
