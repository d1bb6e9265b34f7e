"""Model registry and the reference model builders (``wsseg.create_model``)."""

from .cosa import CoSANet, CoSAOutput, cosa, cosa_vit_b16
from .registry import create_model, is_model, list_models, register_model
from .tscd import TSCDNet, TSCDOutput, tscd, tscd_mit_b1

__all__ = [
    "CoSANet",
    "CoSAOutput",
    "cosa",
    "cosa_vit_b16",
    "TSCDNet",
    "TSCDOutput",
    "create_model",
    "is_model",
    "list_models",
    "register_model",
    "tscd",
    "tscd_mit_b1",
]
