"""wsseg: composable PyTorch components for weakly-supervised semantic segmentation."""

from . import backbones, data, layers, losses, metrics, models, optim, pseudo, training, utils, viz
from .models import create_model, is_model, list_models, register_model

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    "backbones",
    "create_model",
    "data",
    "is_model",
    "layers",
    "list_models",
    "losses",
    "metrics",
    "models",
    "optim",
    "pseudo",
    "register_model",
    "training",
    "utils",
    "viz",
]
