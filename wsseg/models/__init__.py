"""Model registry and the reference model builders (``wsseg.create_model``)."""

from .registry import create_model, is_model, list_models, register_model

__all__ = ["create_model", "is_model", "list_models", "register_model"]
