"""What every method's recipe dataclass shares: ``key=value`` overrides, copies that remember explicitly set
fields, and the schedule-scaling rule for short runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RecipeMixin"]


class RecipeMixin:
    """Mix-in for a recipe ``@dataclass`` with a ``_pinned: tuple[str, ...]`` field (the explicitly set fields).

    Gives :meth:`replace`, :meth:`field_names`, :meth:`from_overrides` (the ``--set key=value`` flags),
    :meth:`to_dict` and :meth:`_scale_schedule` (the helper behind each recipe's ``scaled(iters)``).
    """

    _pinned: tuple[str, ...]

    def validate(self) -> None:  # pragma: no cover - every recipe overrides it
        """Check every field; raises ValueError naming the field."""

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied (changed fields are remembered as explicitly set)."""
        pinned = tuple(sorted(set(self._pinned) | set(changes)))
        return dataclasses.replace(self, _pinned=pinned, **changes)  # type: ignore[type-var]

    @classmethod
    def field_names(cls) -> list[str]:
        """Public field names (what ``key`` may be in ``key=value`` overrides)."""
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]  # type: ignore[arg-type]

    @classmethod
    def from_overrides(cls, overrides: Sequence[str], base: Any = None):
        """Apply ``["key=value", ...]`` overrides (``--set`` on the command line) to ``base``.

        ``base`` defaults to the official recipe. Values are parsed according to the field's default
        type: ints, floats, booleans (``true/false/1/0/yes/no``), strings, ``none`` for optional fields
        and comma-separated tuples (``cam_scales=1,0.5,1.5``). Overridden fields are remembered as
        explicitly set, so ``scaled`` leaves them alone.

        Raises:
            TypeError: if ``overrides`` is a single string.
            ValueError: for a malformed item, an unknown key (the message lists valid keys) or an
                unparsable / invalid value.
        """
        base = cls() if base is None else base
        if isinstance(overrides, str):
            raise TypeError("overrides: expected a list of 'key=value' strings, got a single string")
        names = base.field_names()
        types = {f.name: f.type for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        changes: dict[str, Any] = {}
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"overrides: expected 'key=value', got {item!r}")
            key, value = (s.strip() for s in item.split("=", 1))
            if key not in names:
                raise ValueError(f"overrides: unknown recipe key {key!r}; valid keys: {', '.join(names)}")
            changes[key] = _parse_value(value, getattr(base, key), key, str(types.get(key, "")))
        return base.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the public fields."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()  # type: ignore[call-overload]
                if not k.startswith("_")}

    def _scale_schedule(self, iters: int, fractions: Mapping[str, float]):
        """A copy with ``iters`` and, for every field in ``fractions`` that still has its official default
        and was not set explicitly, ``round(fraction * iters)``."""
        if int(iters) < 1:
            raise ValueError(f"iters: expected a positive int, got {iters}")
        changes: dict[str, Any] = {"iters": int(iters)}
        official = type(self).__dataclass_fields__  # type: ignore[attr-defined]
        for name, frac in fractions.items():
            if name not in self._pinned and getattr(self, name) == official[name].default:
                changes[name] = int(round(frac * iters))
        pinned = self._pinned
        out = dataclasses.replace(self, **changes)  # type: ignore[type-var]
        out._pinned = pinned
        return out


def _parse_value(value: str, default: Any, key: str, annotation: str = "") -> Any:
    try:
        if value.lower() == "none" and (default is None or "None" in annotation):
            return None
        if isinstance(default, bool) or (default is None and "bool" in annotation):
            v = value.lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if isinstance(default, int) or (default is None and "int" in annotation and "float" not in annotation):
            return int(value)
        if isinstance(default, float) or (default is None and "float" in annotation):
            return float(value)
        if isinstance(default, tuple):
            elem = type(default[0]) if default else float
            return tuple(elem(s) for s in value.replace("(", "").replace(")", "").split(",") if s.strip())
        return value
    except ValueError as e:
        raise ValueError(f"overrides: cannot parse {key}={value!r} as {type(default).__name__}") from e
