"""Model registry in the style of :mod:`timm`: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model"]

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a model builder under ``name`` (default: the function's ``__name__``).

    Usable as ``@register_model`` or ``@register_model(name="tscd")``.

    Raises:
        ValueError: if a builder with the same name is already registered.
    """

    def _register(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODEL_ENTRYPOINTS and _MODEL_ENTRYPOINTS[key] is not f:
            raise ValueError(f"name: a model called {key!r} is already registered")
        _MODEL_ENTRYPOINTS[key] = f
        return f

    if fn is not None:
        return _register(fn)
    return _register


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted names of registered models matching a shell-style ``pattern``.

    Example:
        >>> import wsseg
        >>> isinstance(wsseg.list_models(), list)
        True
    """
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def is_model(name: str) -> bool:
    """Return whether a builder called ``name`` is registered."""
    return name in _MODEL_ENTRYPOINTS


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model: ``create_model("tscd", backbone=..., num_classes=20, weights=...)``.

    Raises:
        ValueError: if ``name`` is not registered (the message lists the registered names).
    """
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"name: unknown model {name!r}; registered models: {list_models()}")
    return _MODEL_ENTRYPOINTS[name](**kwargs)
