"""Load a checkpoint file (``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors``) into a module."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["LoadReport", "load_weights", "read_state_dict"]

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model")


class LoadReport(NamedTuple):
    """Result of :func:`load_weights`: keys the module expected but the file lacked, and vice versa."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def read_state_dict(path: str | PathLike) -> dict[str, Tensor]:
    """Read a flat ``{name: tensor}`` state dict from a checkpoint file, on CPU.

    ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``
    (no arbitrary code is executed); a top-level ``{"state_dict": ...}`` or ``{"model": ...}``
    wrapper (repeatedly nested or not) is unwrapped. ``.safetensors`` files are read with the
    ``safetensors`` package (imported lazily).

    Args:
        path: checkpoint file.

    Returns:
        the state dict, tensors in their stored dtype.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message names it).
        ValueError: unknown suffix, or the file does not hold a mapping of tensors.
        ImportError: a ``.safetensors`` file but the ``safetensors`` package is missing.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "w.pth")
        >>> torch.save({"state_dict": {"a": torch.ones(2)}}, f)
        >>> wsseg.backbones.read_state_dict(f)
        {'a': tensor([1., 1.])}
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: weights file not found: '{p}'")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a dependency in practice
            raise ImportError(f"path: reading '{p}' needs the 'safetensors' package") from e
        obj: object = load_file(str(p), device="cpu")
    elif suffix in _TORCH_SUFFIXES:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"path: expected a file ending in .safetensors or one of {_TORCH_SUFFIXES}, "
                         f"got '{p}'")
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"path: '{p}' does not contain a state dict (a mapping of names to tensors)")
    return dict(obj)


def _resolve_key(key: str, expected: Mapping[str, Tensor], prefixes: Sequence[str]) -> str:
    """Strip known prefixes from ``key`` until it names an entry of ``expected`` (else unchanged)."""
    current = key
    while current not in expected:
        stripped = next((current[len(pre):] for pre in prefixes if pre and current.startswith(pre)), None)
        if stripped is None:
            return key
        current = stripped
    return current


def load_weights(module: nn.Module, path: str | PathLike, *, strict: bool = True,
                 prefixes_to_strip: Sequence[str] = ("module.", "backbone.", "encoder."),
                 key_map: Mapping[str, str] | Callable[[str], str | None] | None = None) -> LoadReport:
    """Load a checkpoint file into ``module`` with key clean-up and dtype casting.

    Steps: read the file (:func:`read_state_dict`); apply ``key_map`` (a dict renames listed keys,
    a callable maps every key and may return ``None`` to drop it, e.g. a classification head);
    strip ``prefixes_to_strip`` from the front of a key (repeatedly, e.g. ``module.backbone.``)
    **only when the key does not already match** a module entry and the stripped one does; cast
    every floating tensor to the dtype of the module entry it loads into (e.g. fp16 files into a
    float32 model); then ``module.load_state_dict``.

    Args:
        module: the module to fill (in place).
        path: ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` file.
        strict: if True, any missing or unexpected key raises; if False they are only reported.
        prefixes_to_strip: wrapper prefixes removed from checkpoint keys when needed.
        key_map: optional renaming applied before prefix stripping (see above).

    Returns:
        :class:`LoadReport` ``(missing_keys, unexpected_keys)`` after the clean-up (both empty on a
        strict success).

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        ValueError: unknown file suffix or not a state dict.
        RuntimeError: ``strict=True`` and keys are missing or unexpected (the message lists them
            and names the file), or a tensor's shape does not match (always).

    Example:
        >>> import tempfile, os
        >>> src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        >>> f = os.path.join(tempfile.mkdtemp(), "w.pth")
        >>> state = {"module." + k: v.half() for k, v in src.state_dict().items()}
        >>> torch.save({"model": state}, f)
        >>> wsseg.backbones.load_weights(dst, f)
        LoadReport(missing_keys=[], unexpected_keys=[])
        >>> dst.weight.dtype, torch.equal(dst.weight, src.weight.half().float())
        (torch.float32, True)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    raw = read_state_dict(path)
    expected = module.state_dict()
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key_map is not None:
            new = key_map.get(key, key) if isinstance(key_map, Mapping) else key_map(key)
            if new is None:
                continue
            key = new
        key = _resolve_key(key, expected, prefixes_to_strip)
        target = expected.get(key)
        if target is not None and value.is_floating_point() and target.is_floating_point():
            value = value.to(target.dtype)
        state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"path: state dict in '{path}' does not match {type(module).__name__} "
            f"(strict=True): missing keys {missing[:20]}{' ...' if len(missing) > 20 else ''}, "
            f"unexpected keys {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}")
    module.load_state_dict(state, strict=False)
    return LoadReport(missing, unexpected)
