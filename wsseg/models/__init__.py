"""Model registry and the reference model builders (``wsseg.create_model``)."""

from .cosa import CoSANet, CoSAOutput, cosa, cosa_vit_b16
from .registry import create_model, is_model, list_models, register_model
from .slrnet import SLRNet, SLRNetOutput, slrnet, slrnet_wr38
from .tscd import TSCDNet, TSCDOutput, tscd, tscd_mit_b1

__all__ = [
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
    "is_model",
    "list_models",
    "register_model",
    "tscd",
    "tscd_mit_b1",
]
