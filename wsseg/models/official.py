"""Load the authors' released TSCD, CoSA and SLRNet checkpoints into the wsseg reference models."""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import cosa_official as _cosa
from . import slrnet_official as _slrnet
from . import tscd_official as _tscd
from .registry import create_model

__all__ = ["OFFICIAL_METHODS", "convert_official_state_dict", "load_official_checkpoint"]


@dataclass(frozen=True)
class _Layout:
    """Everything wsseg knows about one official key layout (the tables live in ``<method>_official.py``)."""

    model_name: str
    renames: tuple[tuple[str, str], ...]
    duplicates: tuple[tuple[str, str], ...]
    dropped: tuple[tuple[str, str], ...]
    signature: tuple[str, ...]
    container: str
    infer: Callable[[Mapping[str, Tensor]], dict[str, Any]]


_LAYOUTS: dict[str, _Layout] = {
    "tscd": _Layout("tscd", _tscd.TSCD_OFFICIAL_RENAMES, _tscd.TSCD_OFFICIAL_DUPLICATES, _tscd.TSCD_OFFICIAL_DROPPED,
                    _tscd.TSCD_OFFICIAL_SIGNATURE, _tscd.TSCD_OFFICIAL_CONTAINER, _tscd.tscd_config_from_official),
    "cosa": _Layout("cosa", _cosa.COSA_OFFICIAL_RENAMES, _cosa.COSA_OFFICIAL_DUPLICATES, _cosa.COSA_OFFICIAL_DROPPED,
                    _cosa.COSA_OFFICIAL_SIGNATURE, _cosa.COSA_OFFICIAL_CONTAINER, _cosa.cosa_config_from_official),
    "slrnet": _Layout("slrnet", _slrnet.SLRNET_OFFICIAL_RENAMES, _slrnet.SLRNET_OFFICIAL_DUPLICATES,
                      _slrnet.SLRNET_OFFICIAL_DROPPED, _slrnet.SLRNET_OFFICIAL_SIGNATURE,
                      _slrnet.SLRNET_OFFICIAL_CONTAINER, _slrnet.slrnet_config_from_official),
}

#: Methods whose official checkpoints can be loaded.
OFFICIAL_METHODS: tuple[str, ...] = tuple(_LAYOUTS)

# Classes the CoSA container's ``args`` (an argparse.Namespace holding pathlib paths) needs besides tensors.
_SAFE_CONTAINER_GLOBALS = (argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath,
                           pathlib.PureWindowsPath)


def _layout(method: object) -> _Layout:
    if method not in _LAYOUTS:
        raise ValueError(f"method: expected one of {OFFICIAL_METHODS}, got {method!r}")
    return _LAYOUTS[method]  # type: ignore[index]


def _match(key: str, rules: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The first ``(pattern, target)`` whose pattern equals ``key`` or is a prefix (ending in '.') of it."""
    for pattern, target in rules:
        if key == pattern or (pattern.endswith(".") and key.startswith(pattern)):
            return pattern, target
    return None


def _identify(state: Mapping[str, object]) -> str | None:
    return next((m for m, lay in _LAYOUTS.items() if all(k in state for k in lay.signature)), None)


def _check_state(state: object, method: str, what: str) -> dict[str, Tensor]:
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise TypeError(f"{what}: expected a non-empty mapping of names to tensors (the official {method} "
                        f"network's state_dict), got {type(state).__name__}")
    state = dict(state)
    found = _identify(state)
    if found != method:
        lay = _LAYOUTS[method]
        if found is not None:
            raise ValueError(f"{what}: holds an official {found} state dict (keys such as "
                             f"{list(_LAYOUTS[found].signature)}), not {method}")
        raise ValueError(f"{what}: not an official {method} state dict: expected keys such as {list(lay.signature)} "
                         f"(without a 'module.' prefix), got keys such as {list(state)[:5]}")
    return state


def _target_model(method: str, state: Mapping[str, Tensor], builder_kwargs: Mapping[str, Any],
                  extra: Mapping[str, Any] | None = None, device: str | torch.device | None = None) -> nn.Module:
    """Build the wsseg model for ``state``: tensor-inferred arguments < container arguments < ``builder_kwargs``."""
    lay = _LAYOUTS[method]
    inferred = lay.infer(state)
    k = inferred.get("num_classes")
    if "num_classes" in builder_kwargs and builder_kwargs["num_classes"] != k:
        raise ValueError(f"num_classes: the checkpoint's classifier has {k} classes, got num_classes="
                         f"{builder_kwargs['num_classes']!r}")
    if "weights" in builder_kwargs or "pretrained" in builder_kwargs:
        raise ValueError("builder_kwargs: weights/pretrained cannot be combined with an official checkpoint "
                         "(its tensors replace every encoder weight)")
    kwargs = {**inferred, **(extra or {}), **builder_kwargs}
    if kwargs.get("backbone") is None:
        raise ValueError(f"backbone: the {method} backbone could not be identified from the tensors "
                         f"({inferred.get('backbone_shape')}); pass backbone=<name>")
    kwargs.pop("backbone_shape", None)
    if device is not None:
        try:
            with torch.device(device):
                return create_model(lay.model_name, **kwargs)
        except (NotImplementedError, RuntimeError):  # a builder that reads tensor values while building
            pass
    return create_model(lay.model_name, **kwargs)


def convert_official_state_dict(method: str, state_dict: Mapping[str, Tensor], *, model: nn.Module | None = None,
                                **builder_kwargs: Any) -> dict[str, Tensor]:
    r"""Convert the state dict of an official TSCD / CoSA / SLRNet network to the wsseg model's keys.

    Each official key is resolved with the method's tables (:mod:`wsseg.models.tscd_official`,
    :mod:`~wsseg.models.cosa_official`, :mod:`~wsseg.models.slrnet_official`), in this order:

    1. **duplicates** (``*_OFFICIAL_DUPLICATES``): a second name of a tensor registered twice (SLRNet's
       ``backbone.fixed_layers.*`` and ``newly_added.*``) is checked to be identical to the tensor under
       its canonical name, then dropped;
    2. **dropped** (``*_OFFICIAL_DROPPED``): tensors wsseg does not keep, each with its reason (SLRNet's three
       constant PAMR kernels, CoSA's unused ImageNet head ``encoder.head.*``);
    3. **renames** (``*_OFFICIAL_RENAMES``): ``official prefix + rest`` → ``wsseg prefix + rest``.

    An official key matched by none of them is an error, and so is a wsseg tensor left unfilled, a
    converted key the wsseg model does not have, or a shape that differs: there are no silent leftovers on
    either side. The wsseg side is checked against ``model`` when given, else against the model that
    :func:`load_official_checkpoint` would build (constructed on the meta device: no memory, no weights).
    Tensors are returned as they are (same objects, same dtype).

    Args:
        method: ``"tscd"``, ``"cosa"`` or ``"slrnet"``.
        state_dict: the official network's bare state dict: no container, no ``module.`` prefix.
        model: optional wsseg model to check the converted keys and shapes against.
        **builder_kwargs: arguments of the wsseg builder for the check model (e.g. ``backbone=``), as in
            :func:`load_official_checkpoint`; ignored when ``model`` is given.

    Returns:
        ``{wsseg key: tensor}``, loadable with ``model.load_state_dict(..., strict=True)``.

    Raises:
        ValueError: unknown ``method``; a state dict of another method (named) or of none; official keys
            without a rule; a duplicate that differs from its canonical tensor; wsseg keys missing,
            unexpected or of another shape (all listed).
        TypeError: ``state_dict`` is not a mapping of tensors.

    Example:
        >>> from wsseg.models.tscd_official import TSCD_OFFICIAL_RENAMES
        >>> net = wsseg.create_model("tscd", backbone="mit_b0", num_classes=3, decoder_dim=16)
        >>> def official_name(k):  # the table read backwards, to fake an official file
        ...     off, ws = next((o, w) for o, w in TSCD_OFFICIAL_RENAMES if k.startswith(w))
        ...     return off + k[len(ws):]
        >>> official = {official_name(k): v for k, v in net.state_dict().items()}
        >>> sorted(official)[:2]
        ['attn_proj.bias', 'attn_proj.weight']
        >>> converted = wsseg.models.convert_official_state_dict("tscd", official)
        >>> net.load_state_dict(converted, strict=True)
        <All keys matched successfully>

    Source:
        Official key layouts: github.com/Rongtao-Xu/RepresentationLearning (SCD-AAAI2023/network/TSCD_model.py,
        AFA's mix_transformer.py / segformer_head.py), github.com/youshyee/CoSA (models/__init__.py,
        models/vit/vit.py, models/decoder/conv_head.py), github.com/DesertsP/SLRNet (models/slrnet.py,
        models/single_stage.py, models/backbones/resnet38d.py, models/mods/).
    """
    lay = _layout(method)
    state = _check_state(state_dict, method, "state_dict")
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        dup = _match(key, lay.duplicates)
        if dup is not None:
            canonical = dup[1] + key[len(dup[0]):]
            if canonical not in state:
                raise ValueError(f"state_dict: '{key}' is a second name of '{canonical}', which is missing")
            if not torch.equal(value, state[canonical]):
                raise ValueError(f"state_dict: '{key}' should be the same tensor as '{canonical}' (the official "
                                 f"module registers it twice) but the values differ")
            continue
        if _match(key, lay.dropped) is not None:
            continue
        ren = _match(key, lay.renames)
        if ren is None:
            unmatched.append(key)
            continue
        out[ren[1] + key[len(ren[0]):]] = value
    if unmatched:
        raise ValueError(f"state_dict: {len(unmatched)} official {method} key(s) have no rule in the {method} "
                         f"mapping table (neither renamed, nor a known duplicate, nor listed as dropped): "
                         f"{unmatched[:20]}")
    if model is None:
        model = _target_model(method, state, builder_kwargs, device="meta")
    expected = model.state_dict()
    missing = [k for k in expected if k not in out]
    unexpected = [k for k in out if k not in expected]
    shapes = [f"{k}: official {tuple(out[k].shape)} vs wsseg {tuple(expected[k].shape)}"
              for k in out if k in expected and out[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"state_dict: the converted official {method} tensors do not fill the wsseg "
                         f"{type(model).__name__}: missing {missing[:20]}, unexpected {unexpected[:20]}, "
                         f"shape mismatches {shapes[:20]}")
    return out


def _torch_load(path: str) -> object:
    """``torch.load(weights_only=True)`` on CPU, allowing only the container classes CoSA's ``args`` needs."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe_globals is None:  # torch < 2.5: no scoped allowlist; plain weights_only
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_globals(list(_SAFE_CONTAINER_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):
            raise ValueError(f"path: '{path}' is not a PyTorch checkpoint (torch.load failed: "
                             f"{str(err).strip().splitlines()[-1][:200] if str(err).strip() else 'UnpicklingError'})") from err
        old = "" if safe_globals is not None else (" (torch < 2.5 has no torch.serialization.safe_globals, so "
                                                   "not even CoSA's argparse.Namespace can be allowed: upgrade torch)")
        raise ValueError(f"path: '{path}' holds objects other than tensors, containers, an argparse.Namespace and "
                         f"paths{old}; wsseg does not unpickle arbitrary objects (that could run code). If you "
                         f"trust the file, re-save its state dict yourself. torch.load said: {str(err)[-300:]}") from err
    except Exception as err:  # garbage makes torch.load fail in many ways (zip, pickle opcodes, EOF, ...)
        raise ValueError(f"path: '{path}' is not a PyTorch checkpoint (torch.load failed: "
                         f"{type(err).__name__}: {str(err)[:200]})") from err


def _unwrap(obj: object, path: str, method: str) -> tuple[dict[str, Tensor], object]:
    """``(bare state dict, container args or None)`` from what ``torch.load`` returned."""
    lay = _LAYOUTS[method]
    args = None
    state: object = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                args = obj.get("args")
                break
    if (not isinstance(state, Mapping) or not state
            or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())):
        raise ValueError(f"path: '{path}' is not an official {method} checkpoint: expected {lay.container}; "
                         f"got a {type(obj).__name__}"
                         + (f" with keys {list(obj)[:8]}" if isinstance(obj, Mapping) else ""))
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = dict(state)
    found = _identify(state)
    if found != method:
        if found is not None:
            raise ValueError(f"path: '{path}' holds an official {found} checkpoint ({_LAYOUTS[found].container}), "
                             f"not {method}; use method={found!r}")
        raise ValueError(f"path: '{path}' is not an official {method} checkpoint: expected {lay.container}, with "
                         f"keys such as {list(lay.signature)}; found keys such as {list(state)[:5]}")
    return state, args


def load_official_checkpoint(path: str | os.PathLike, method: str, **builder_kwargs: Any) -> nn.Module:
    r"""Build the wsseg model of ``method`` and load an official checkpoint file into it (eval mode).

    Reads the container the official code writes, on CPU:

    * **TSCD**: ``torch.save(model.state_dict())`` of the ``DistributedDataParallel``-wrapped network, a flat
      dict whose keys start with ``module.`` (removed);
    * **CoSA**: ``{"model": state_dict, "args": argparse.Namespace, "epoch", "s_or_t", "result"}``
      (``voc_weights.pth``, ``coco_weights.pth``);
    * **SLRNet**: ``{"state_dict": model.module.state_dict(), "epoch": ...}`` (possibly with ``"optimizer"``).

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``, which only rebuilds
    tensors and plain containers. CoSA's ``args`` is an ``argparse.Namespace`` holding ``pathlib`` paths,
    which ``weights_only=True`` refuses by default; these classes (and nothing else) are allowed for the
    duration of the call with ``torch.serialization.safe_globals``: rebuilding them only sets attributes or
    joins path parts, whereas a plain ``weights_only=False`` load would execute any callable a crafted file
    names. (torch < 2.5 has no scoped allowlist: CoSA containers then fail with a message saying so.)

    The model is built with :func:`wsseg.create_model` from the tensors: the number of classes K (the
    classifier's rows; the official code counts K + 1 with background), the decoder width, the backbone
    (TSCD: the MiT variant from its stage widths; CoSA: the ViT from :data:`~wsseg.models.cosa_official.COSA_VIT_BY_SHAPE`
    and ``img_size`` from the stored 14 × 14 positional grid; SLRNet: ``resnet38d`` or a narrowed
    ``resnet38d_w<n>``). CoSA's ``aux_layer`` and ``pooling`` come from the file's ``args`` when present.
    ``builder_kwargs`` override all of these (e.g. ``aux_layer=-4``); the converted tensors
    (:func:`convert_official_state_dict`) are then loaded with ``strict=True``.

    The auxiliary-CAM block of CoSA is not in the tensors: ``run_voc.sh`` (the released configuration)
    passes ``--aux_layer -4`` while the shipped VOC log was run with −3 and wsseg's default is −3. Pass
    ``aux_layer=`` when the file has no ``args``; it changes only the auxiliary CAM, never the
    segmentation logits.

    Args:
        path: the checkpoint file.
        method: ``"tscd"``, ``"cosa"`` or ``"slrnet"``.
        **builder_kwargs: further arguments of the method's builder (:func:`~wsseg.models.tscd`,
            :func:`~wsseg.models.cosa`, :func:`~wsseg.models.slrnet`), e.g. ``backbone=``, ``aux_layer=``.

    Returns:
        the wsseg model (:class:`~wsseg.models.TSCDNet`, :class:`~wsseg.models.CoSANet` or
        :class:`~wsseg.models.SLRNet`) in eval mode, on CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown ``method``; a file that is not a PyTorch checkpoint, holds objects other than
            tensors / containers / a Namespace, is a checkpoint of another method (the message names it) or
            of none; ``num_classes`` contradicting the tensors; ``weights=`` given; a conversion error (see
            :func:`convert_official_state_dict`). Every message names the file.

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "notes.pth")
        >>> _ = open(f, "w").write("not a checkpoint")
        >>> try:
        ...     load_official_checkpoint(f, "cosa")
        ... except ValueError as err:
        ...     print(str(err).split(" (")[0].endswith("is not a PyTorch checkpoint"))
        True

    Source:
        TSCD: github.com/Rongtao-Xu/RepresentationLearning (SCD-AAAI2023, no released weights); CoSA:
        github.com/youshyee/CoSA, releases ``weight_release`` (``voc_weights.pth`` 76.2, ``coco_weights.pth``
        51.0); SLRNet: github.com/DesertsP/SLRNet, README "Pre-trained Model" (Google Drive, 67.2 with CRF).
    """
    lay = _layout(method)
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: checkpoint file not found: '{p}'")
    obj = _torch_load(str(p))
    state, args = _unwrap(obj, str(p), method)
    extra = _cosa.cosa_config_from_args(args) if method == "cosa" and args is not None else {}
    try:
        model = _target_model(method, state, builder_kwargs, extra)
        converted = convert_official_state_dict(method, state, model=model)
    except (ValueError, TypeError) as err:
        raise ValueError(f"path: '{p}' ({lay.container}): {err}") from err
    model.load_state_dict(converted, strict=True)
    return model.eval()
