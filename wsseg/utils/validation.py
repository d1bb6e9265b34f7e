"""Input validation shared by every public entry point.

All checks raise :class:`TypeError` (wrong type / dtype) or :class:`ValueError` (wrong shape or
value) with a message that names the argument, what was expected and what was received.

The value checks (:func:`check_labels`, :func:`check_class_target`, :func:`check_finite`,
:func:`check_unit_range`) read one reduced value back from the tensor's device: on a GPU that is one
synchronisation per check (the CPU waits for the queued kernels), on the CPU one pass over the tensor.
The policy they implement is described in ``docs/conventions.rst``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_shape",
    "check_same_spatial",
    "check_reduction",
    "check_labels",
    "check_class_target",
    "check_finite",
    "check_unit_range",
    "empty_loss",
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


def check_labels(labels: object, name: str, batch: int, num_classes: int, *, values: bool = True,
                 soft: bool = False) -> Tensor:
    """Check image-level labels of shape ``(B, K)`` with values in {0, 1}.

    Any dtype is accepted (bool, integer or floating point); every entry must be exactly 0 or 1, so NaN,
    -1, 2 or a soft label such as 0.5 are rejected (they would otherwise act as "present" or "absent"
    without a word). The value check is one reduction over the :math:`B K` entries (one device
    synchronisation on a GPU).

    Args:
        labels: the tensor to check.
        name: argument name used in the messages.
        batch: expected B.
        num_classes: expected K.
        values: also check the values (default); ``False`` checks only type and shape.
        soft: accept soft labels: any finite value in :math:`[0, 1]` (for losses documented to take soft
            targets, e.g. :func:`~wsseg.losses.pooled_bce`).

    Raises:
        TypeError: if ``labels`` is not a tensor.
        ValueError: if the shape is not ``(batch, num_classes)`` or an entry is not 0 or 1 (the message
            gives the offending values).
    """
    check_tensor(labels, name, ndim=2, dims="(B, K)")
    check_shape(labels, name, (batch, num_classes), "(B, K)")
    if values and labels.numel() and labels.dtype != torch.bool:  # type: ignore[union-attr]
        if soft:   # NaN fails both comparisons: caught
            bad = ~((labels >= 0) & (labels <= 1))  # type: ignore[operator]
        else:      # NaN != 0 and NaN != 1: caught
            bad = (labels != 0) & (labels != 1)  # type: ignore[operator]
        if bool(bad.any()):
            found = torch.unique(labels[bad].detach().float().cpu())[:5].tolist()  # type: ignore[index]
            expected = "soft labels in [0, 1]" if soft else "image-level labels in {0, 1}"
            raise ValueError(f"{name}: expected {expected} (finite), got values {found}")
    return labels  # type: ignore[return-value]


def check_class_target(target: Tensor, name: str, num_classes: int, ignore_index: int) -> Tensor:
    """Check an integer label map against ``num_classes`` and return it as ``int64``.

    Any integer dtype (``uint8``, ``int16``, ``int32``, ``int64``) is accepted and converted with
    ``.long()`` (what :func:`torch.nn.functional.cross_entropy` needs); every value must lie in
    :math:`[0, C)` or equal ``ignore_index``. One reduction over the map (one device synchronisation on
    a GPU).

    Args:
        target: the label map (its rank and dtype kind are checked by the caller).
        name: argument name used in the messages.
        num_classes: :math:`C`, the number of channels of the prediction it is scored against.
        ignore_index: the ignored value.

    Returns:
        ``target`` as ``int64`` (the same tensor when it already is).

    Raises:
        ValueError: if a value is outside :math:`[0, C)` and is not ``ignore_index``.
    """
    target = target.long()
    if target.numel():
        bad = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
        if bool(bad.any()):
            found = torch.unique(target[bad].detach().cpu())[:5].tolist()
            raise ValueError(f"{name}: expected class indices in [0, {num_classes}) (C = {num_classes} classes, "
                             f"background included) or ignore_index={ignore_index}, got values {found}")
    return target


def check_finite(x: Tensor, name: str, why: str = "") -> Tensor:
    """Raise a ValueError naming ``name`` if ``x`` holds NaN or infinity (one reduction).

    Used where a non-finite value would silently become a decision (a threshold comparison, a stored
    statistic) instead of propagating as NaN.
    """
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan, n_inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        raise ValueError(f"{name}: expected finite values{why}, got {n_nan} NaN and {n_inf} infinite "
                         f"value(s) of {x.numel()}")
    return x


def check_unit_range(x: Tensor, name: str, what: str, *, tol: float = 1e-2) -> Tensor:
    """Check that ``x`` is finite and lies in ``[0, 1]`` up to ``tol`` (one ``aminmax``, one synchronisation).

    Args:
        x: the tensor (floating point).
        name: argument name used in the message.
        what: what ``x`` should be, e.g. ``"a normalised CAM (ReLU, then divided by its per-class maximum)"``.
        tol: allowed overshoot on both sides (interpolation and rounding).

    Raises:
        ValueError: on NaN/inf or values outside ``[-tol, 1 + tol]`` (the message gives the range found).
    """
    if x.numel():
        lo, hi = torch.aminmax(x.detach())
        lo_f, hi_f = float(lo), float(hi)   # one transfer of two numbers; NaN propagates through aminmax
        if not (lo_f >= -tol and hi_f <= 1.0 + tol):
            if not (math.isfinite(lo_f) and math.isfinite(hi_f)) or not bool(torch.isfinite(x).all()):
                check_finite(x, name, f" in [0, 1] ({what})")
            raise ValueError(f"{name}: expected values in [0, 1] ({what}), got values in [{lo_f:.4g}, {hi_f:.4g}]")
    return x


def empty_loss(anchor: Tensor, reduction: str, none_shape: Sequence[int]) -> Tensor:
    """The loss of an empty batch: 0 with a graph (``anchor.sum() * 0``), or an empty map for ``"none"``.

    ``anchor`` is the prediction (or a sum of the predictions): the zero depends on it, so ``backward``
    works and gives zero gradients, as for any other batch.
    """
    if reduction == "none":
        return anchor.new_zeros(tuple(none_shape)) + anchor.sum() * 0
    return anchor.sum() * 0.0


def check_reduction(reduction: str) -> str:
    """Check a loss ``reduction`` argument.

    Raises:
        ValueError: if ``reduction`` is not one of ``"none"``, ``"mean"``, ``"sum"``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def apply_reduction(x: Tensor, reduction: str) -> Tensor:
    """Reduce ``x`` by ``"none"`` (identity), ``"mean"`` or ``"sum"``.

    The mean of an empty tensor (an empty batch) is 0 with a graph (``x.sum() * 0``), not NaN.
    """
    check_reduction(reduction)
    if reduction == "mean":
        return x.mean() if x.numel() else x.sum() * 0.0
    if reduction == "sum":
        return x.sum()
    return x
