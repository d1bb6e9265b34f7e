"""Input validation shared by every public entry point.

All checks raise :class:`TypeError` (wrong type / dtype) or :class:`ValueError` (wrong shape or
value) with a message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_shape",
    "check_same_spatial",
    "check_reduction",
    "check_labels",
    "apply_reduction",
    "REDUCTIONS",
]

REDUCTIONS = ("none", "mean", "sum")

_KINDS = {
    "float": (lambda d: d.is_floating_point, "a floating-point dtype"),
    "int": (lambda d: (not d.is_floating_point) and d != torch.bool and not d.is_complex, "an integer dtype"),
    "bool": (lambda d: d == torch.bool, "torch.bool"),
    "bool_or_int": (lambda d: not d.is_floating_point and not d.is_complex, "torch.bool or an integer dtype"),
    "any": (lambda d: True, "any dtype"),
}


def check_tensor(x: object, name: str, *, ndim: int | Sequence[int] | None = None, dims: str | None = None,
                 dtype: str = "any") -> Tensor:
    """Check that ``x`` is a tensor with the given number of dimensions and dtype kind.

    Args:
        x: the object to check.
        name: argument name used in the error message.
        ndim: allowed number(s) of dimensions, or ``None`` for any.
        dims: human-readable layout for messages, e.g. ``"(B, K, H, W)"``.
        dtype: one of ``"float"``, ``"int"``, ``"bool"``, ``"bool_or_int"``, ``"any"``.

    Returns:
        ``x`` unchanged.

    Raises:
        TypeError: if ``x`` is not a tensor or has the wrong dtype kind.
        ValueError: if ``x`` has the wrong number of dimensions.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            layout = f" {dims}" if dims else ""
            raise ValueError(
                f"{name}: expected a {' or '.join(map(str, allowed))}-D tensor{layout}, "
                f"got shape {tuple(x.shape)}"
            )
    ok, desc = _KINDS[dtype]
    if not ok(x.dtype):
        raise TypeError(f"{name}: expected {desc}, got {x.dtype}")
    return x


def check_shape(x: Tensor, name: str, expected: Sequence[int | None], dims: str | None = None) -> Tensor:
    """Check ``x.shape`` against ``expected`` where ``None`` entries match any size.

    Raises:
        ValueError: if the number of dimensions or any fixed size differs.
    """
    shape = tuple(x.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape, strict=True)):
        exp = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        layout = f" {dims}" if dims else ""
        raise ValueError(f"{name}: expected shape {exp}{layout}, got {shape}")
    return x


def check_same_spatial(a: Tensor, a_name: str, b: Tensor, b_name: str) -> None:
    """Check that the last two dimensions of ``a`` and ``b`` agree.

    Raises:
        ValueError: if the spatial sizes differ.
    """
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"{b_name}: expected spatial size {tuple(a.shape[-2:])} (that of {a_name}), got {tuple(b.shape[-2:])}"
        )


def check_labels(labels: object, name: str, batch: int, num_classes: int) -> Tensor:
    """Check image-level labels of shape ``(B, K)`` with values in {0, 1}.

    Raises:
        TypeError: if ``labels`` is not a tensor.
        ValueError: if the shape is not ``(batch, num_classes)``.
    """
    check_tensor(labels, name, ndim=2, dims="(B, K)")
    check_shape(labels, name, (batch, num_classes), "(B, K)")
    return labels  # type: ignore[return-value]


def check_reduction(reduction: str) -> str:
    """Check a loss ``reduction`` argument.

    Raises:
        ValueError: if ``reduction`` is not one of ``"none"``, ``"mean"``, ``"sum"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def apply_reduction(x: Tensor, reduction: str) -> Tensor:
    """Reduce ``x`` by ``"none"`` (identity), ``"mean"`` or ``"sum"``."""
    check_reduction(reduction)
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
