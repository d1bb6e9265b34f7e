"""Model registry and the reference model builders (``wsseg.create_model``)."""

from .apc import APCNet, APCOutput, apc, apc_vit_b16_experimental
from .cosa import CoSANet, CoSAOutput, cosa, cosa_vit_b16
from .official import OFFICIAL_METHODS, convert_official_state_dict, load_official_checkpoint
from .registry import create_model, is_model, list_models, register_model
from .slrnet import SLRNet, SLRNetOutput, slrnet, slrnet_wr38
from .tscd import TSCDNet, TSCDOutput, tscd, tscd_mit_b1
from .vitpcm import ViTPCM, ViTPCMOutput, vitpcm, vitpcm_b16
from .vitpcm_keras import (
    hv_bilstm_state_from_keras,
    keras_lstm_to_torch,
    keras_vitpcm_key,
    load_vitpcm_keras_weights,
    patch_classifier_state_from_keras,
)

__all__ = [
    "APCNet",
    "APCOutput",
    "apc",
    "apc_vit_b16_experimental",
    "ViTPCM",
    "ViTPCMOutput",
    "vitpcm",
    "vitpcm_b16",
    "CoSANet",
    "CoSAOutput",
    "cosa",
    "cosa_vit_b16",
    "SLRNet",
    "SLRNetOutput",
    "slrnet",
    "slrnet_wr38",
    "TSCDNet",
    "TSCDOutput",
    "create_model",
    "OFFICIAL_METHODS",
    "convert_official_state_dict",
    "load_official_checkpoint",
    "is_model",
    "list_models",
    "register_model",
    "tscd",
    "tscd_mit_b1",
    "hv_bilstm_state_from_keras",
    "keras_lstm_to_torch",
    "keras_vitpcm_key",
    "load_vitpcm_keras_weights",
    "patch_classifier_state_from_keras",
]
