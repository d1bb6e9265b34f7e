"""Generic training-loop helpers used by the examples: optimizer, schedule, checkpoints, CSV log, progress."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CSVLogger",
    "build_optimizer",
    "build_scheduler",
    "infinite_loader",
    "load_checkpoint",
    "move_batch",
    "progress",
    "read_checkpoint",
    "save_checkpoint",
    "seed_everything",
]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, recipe: Any) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups(...)`` with the recipe's lr, multipliers, weight decay and betas.

    The model must provide ``param_groups(base_lr, weight_decay, head_lr_mult, encoder_norm_lr_mult)``
    (e.g. :class:`~wsseg.models.TSCDNet`); each group keeps its own lr and weight decay (the official
    ``PolyWarmupAdamW`` groups: encoder, frozen encoder norms, 10× heads, 10× decoder).

    Raises:
        TypeError: if ``model`` has no ``param_groups`` method.
    """
    if not callable(getattr(model, "param_groups", None)):
        raise TypeError(f"model: expected a model with a param_groups(base_lr, ...) method, "
                        f"got {type(model).__name__}")
    groups = model.param_groups(recipe.lr, weight_decay=recipe.weight_decay, head_lr_mult=recipe.head_lr_mult,
                                encoder_norm_lr_mult=recipe.encoder_norm_lr_mult)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), eps=recipe.adam_eps,
                             weight_decay=recipe.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Any):
    """:class:`~wsseg.optim.PolyWarmupLR` with the recipe's iterations, warm-up and power."""
    from ..optim import PolyWarmupLR

    return PolyWarmupLR(optimizer, max_iters=recipe.iters, warmup_iters=recipe.warmup_iters,
                        warmup_ratio=recipe.warmup_ratio, power=recipe.poly_power,
                        rebase_after_warmup=recipe.rebase_after_warmup)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() if hasattr(s, "cpu") else s for s in state["cuda"]])


#: Format of the files :func:`save_checkpoint` writes (2: with a content hash, ``"integrity"``).
CHECKPOINT_FORMAT = 2


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    flat = t.cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _update_digest(h: Any, obj: Any) -> None:
    """Feed a canonical encoding of ``obj`` (type tags, lengths, values, tensor dtype/shape/bytes) to ``h``."""
    if isinstance(obj, torch.Tensor):
        h.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, np.ndarray):
        h.update(f"N{obj.dtype.str}{obj.shape}".encode())
        h.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():  # insertion order (pickling keeps it)
            _update_digest(h, k)
            _update_digest(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for v in obj:
            _update_digest(h, v)
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}:".encode())
        h.update(b)
    elif isinstance(obj, bytes):
        h.update(f"B{len(obj)}:".encode())
        h.update(obj)
    elif obj is None or isinstance(obj, (bool, int, float, complex, np.generic, torch.dtype, torch.device)):
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())
    else:  # anything else pickled into a checkpoint: its type and repr
        h.update(f"O{type(obj).__module__}.{type(obj).__qualname__}:{obj!r};".encode())


def _checkpoint_digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's content: every tensor's dtype, shape and bytes and every other value.

    What :func:`save_checkpoint` stores under ``"integrity"`` and :func:`read_checkpoint` verifies. It is
    computed from the loaded objects, not from the file's bytes, so it does not depend on how torch
    serialises them (a file re-saved by another torch version still verifies); any changed value,
    dtype, shape or key changes it. Every entry of ``payload`` except ``"integrity"`` is covered.

    Example:
        >>> a = {"model": {"w": torch.zeros(2)}, "step": 3}
        >>> _checkpoint_digest(a) == _checkpoint_digest({"model": {"w": torch.zeros(2)}, "step": 3})
        True
        >>> _checkpoint_digest(a) == _checkpoint_digest({"model": {"w": torch.tensor([0.0, 1e-45])}, "step": 3})
        False
    """
    h = hashlib.sha256()
    _update_digest(h, {k: v for k, v in payload.items() if k != "integrity"})
    return h.hexdigest()


def _param_names(model: nn.Module | None, optimizer: torch.optim.Optimizer | None) -> dict[int, str]:
    """Optimizer state index -> parameter name (the order ``optimizer.state_dict()`` numbers them)."""
    if model is None or optimizer is None:
        return {}
    by_id = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return {i: by_id.get(id(p), f"#{i}") for i, p in enumerate(params)}


def _describe_bad(t: torch.Tensor) -> str:
    bad = ~torch.isfinite(t.detach())
    kinds = []
    if bool(torch.isnan(t).any()):
        kinds.append("nan")
    if bool(torch.isinf(t).any()):
        kinds.append("inf")
    return f"{int(bad.sum())} of {t.numel()} values non-finite ({'/'.join(kinds)})"


def _all_finite(t: torch.Tensor) -> bool:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    # fast path: a NaN or inf anywhere makes the float64 sum non-finite, and float64 cannot overflow on
    # float32/16 values; only a non-finite sum needs the element-wise check
    return bool(torch.isfinite(t.sum(dtype=torch.float64))) or bool(torch.isfinite(t).all())


def _first_non_finite_in(obj: Any, where: str) -> str | None:
    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not _all_finite(obj):
            return f"{where}: {_describe_bad(obj)}"
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else f"{where}: {obj!r}"
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if (bad := _first_non_finite_in(v, f"{where}[{k!r}]")) is not None:
                return bad
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            if (bad := _first_non_finite_in(v, f"{where}[{i}]")) is not None:
                return bad
    return None


def _first_non_finite(ckpt: Mapping[str, Any], param_names: Mapping[int, str] | None = None) -> str | None:
    """The first non-finite tensor (or float) of a checkpoint's training state, described; ``None`` if all finite.

    Looked at, in order: the model's parameters and buffers, the optimizer state (named by parameter when
    ``param_names`` maps the optimizer's indices to names), the scheduler, and the method state and grad
    scaler in ``extra`` (``method_state``, ``grad_scaler``). Metadata (evaluation scores, which may be NaN
    by definition) is not looked at.

    Example:
        >>> _first_non_finite({"model": {"bn.running_var": torch.tensor([1.0, float("inf")])}})
        "model['bn.running_var']: 1 of 2 values non-finite (inf)"
    """
    model = ckpt.get("model") or {}
    for k, v in model.items():
        if (bad := _first_non_finite_in(v, f"model[{k!r}]")) is not None:
            return bad
    opt = ckpt.get("optimizer") or {}
    names = dict(param_names or {})
    for idx, state in (opt.get("state") or {}).items():
        for k, v in state.items():
            who = f"parameter {names[idx]!r}" if idx in names else f"parameter #{idx}"
            if (bad := _first_non_finite_in(v, f"optimizer state {k!r} of {who}")) is not None:
                return bad
    for i, group in enumerate(opt.get("param_groups") or []):
        for k, v in group.items():
            if k != "params" and (bad := _first_non_finite_in(v, f"optimizer param_groups[{i}][{k!r}]")):
                return bad
    if (bad := _first_non_finite_in(ckpt.get("scheduler"), "scheduler")) is not None:
        return bad
    extra = ckpt.get("extra") or {}
    for key in ("method_state", "grad_scaler"):
        if (bad := _first_non_finite_in(extra.get(key), f"extra[{key!r}]")) is not None:
            return bad
    return None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Write ``path`` atomically: the caller writes ``<path>.tmp``, which is flushed to disk (``fsync``) and
    renamed over ``path`` (``os.replace``) on success and removed on error, so a process killed at any moment
    leaves the previous file or the new one, never a partial one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, step: int = 0, extra: Mapping[str, Any] | None = None, *,
                    check_finite: bool = True) -> Path:
    """Save model, optimizer, scheduler, the next step to run and all RNG states, verified and atomically.

    The file holds ``{"model", "optimizer", "scheduler", "step", "rng", "extra", "integrity"}``;
    ``integrity`` is ``{"format", "algorithm": "sha256", "digest"}``, a SHA-256 over the rest (every
    tensor's dtype, shape and bytes and every other value, in a canonical encoding), checked by
    :func:`read_checkpoint`. The file is written to ``<path>.tmp``, flushed to disk (``fsync``) and renamed over ``path`` (``os.replace``, atomic on POSIX and Windows), so a process
    killed at any moment leaves either the previous checkpoint or the new one, never a partial file.

    Args:
        path: output file.
        model, optimizer, scheduler: objects with ``state_dict()`` (optimizer/scheduler optional).
        step: the number of completed iterations (training resumes at this step).
        extra: any pickle-able metadata (e.g. the recipe dict; the engine adds ``method_state``,
            ``grad_scaler`` and its run state).
        check_finite: refuse to write a checkpoint whose training state (model parameters and buffers,
            optimizer and scheduler state, ``extra["method_state"]`` and ``extra["grad_scaler"]``) holds
            NaN or inf.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FloatingPointError: with ``check_finite``, when a parameter, buffer, optimizer or scheduler
            value, or a tensor of the method state is not finite (the message names the first one);
            nothing is written and a previous file at ``path`` is kept.

    Example:
        >>> import tempfile, os
        >>> net = torch.nn.Linear(2, 1)
        >>> path = save_checkpoint(os.path.join(tempfile.mkdtemp(), "ckpt.pt"), net, step=3)
        >>> load_checkpoint(path, torch.nn.Linear(2, 1))[0]
        3
        >>> with torch.no_grad():
        ...     _ = net.bias.fill_(float("inf"))
        >>> save_checkpoint(path, net, step=4)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FloatingPointError: checkpoint: not written to ...ckpt.pt at step 4: model['bias'] holds non-finite values: 1 of 1 values non-finite (inf); the file there is kept
    """
    path = Path(path)
    ckpt: dict[str, Any] = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    if check_finite and (bad := _first_non_finite(ckpt, _param_names(model, optimizer))) is not None:
        where, _, what = bad.partition(": ")
        raise FloatingPointError(f"checkpoint: not written to {path} at step {int(step)}: {where} holds non-finite "
                                 f"values: {what}; the file there is kept")
    ckpt["integrity"] = {"format": CHECKPOINT_FORMAT, "algorithm": "sha256", "digest": _checkpoint_digest(ckpt)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        torch.save(ckpt, f)
    return path


def read_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                    check_finite: bool = True) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`; returns its dict.

    Checks, each failure naming the file and what is wrong: the file exists and is not empty; torch can
    read it (a truncated or foreign file gives its reader's error, named); it is a dict with ``model``,
    ``step`` and ``extra``; its content hash matches (``integrity``, from :func:`save_checkpoint`; a
    checkpoint written before hashes existed is read with a warning); and, with ``check_finite``, its
    training state is finite (model, optimizer, scheduler, method state, grad scaler). Checkpoints are pickles: read only files you trust.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded (``torch.load``).
        check_finite: refuse a checkpoint holding NaN or inf in its training state.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an empty, truncated, corrupted or non-checkpoint file, a content-hash mismatch or
            a non-finite training state.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
        >>> _ = save_checkpoint(path, torch.nn.Linear(2, 1), step=5, extra={"method": "demo"})
        >>> ckpt = read_checkpoint(path)
        >>> ckpt["step"], ckpt["extra"]["method"], ckpt["integrity"]["algorithm"]
        (5, 'demo', 'sha256')
        >>> with open(path, "r+b") as f:
        ...     _ = f.truncate(100)
        >>> read_checkpoint(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ...ckpt.pt: cannot be read as a checkpoint (...); the file is truncated, corrupted or not a torch checkpoint
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as err:  # a truncated zip, a foreign pickle, flipped bytes: many possible errors
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"{path}: cannot be read as a checkpoint ({type(err).__name__}: {msg[:200]}; "
                         f"{size} bytes); the file is truncated, corrupted or not a torch checkpoint") from err
    if not isinstance(ckpt, Mapping) or not {"model", "step"} <= set(ckpt):
        got = (f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, Mapping)
               else f"a {type(ckpt).__name__}")
        raise ValueError(f"{path}: not a training checkpoint: expected a dict with 'model', 'step' and 'extra' "
                         f"(written by save_checkpoint / the training engine), got {got} (a weights file? "
                         f"pass it as --weights)")
    if not isinstance(ckpt["model"], Mapping):
        raise ValueError(f"{path}: not a training checkpoint: 'model' is a {type(ckpt['model']).__name__}, "
                         f"expected a state dict")
    integrity = ckpt.get("integrity")
    if integrity is None:
        warnings.warn(f"{path}: no content hash (written before checkpoints carried one); not verified",
                      stacklevel=2)
    else:
        if not isinstance(integrity, Mapping) or integrity.get("algorithm") != "sha256":
            raise ValueError(f"{path}: unknown integrity record {integrity!r} (expected sha256)")
        actual = _checkpoint_digest(ckpt)
        if actual != integrity.get("digest"):
            raise ValueError(f"{path}: content hash mismatch (SHA-256 {str(integrity.get('digest'))[:16]}... "
                             f"recorded, {actual[:16]}... computed): the file was corrupted after it was "
                             f"written; use another checkpoint")
    if check_finite and (bad := _first_non_finite(ckpt)) is not None:
        where, _, what = bad.partition(": ")
        raise ValueError(f"{path}: the training state is not finite: {where} holds {what}")
    return dict(ckpt)


def _state_mismatch(path: Path, model: nn.Module, state: Mapping[str, Any]) -> str | None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and isinstance(own[k], torch.Tensor)
              and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) of the model missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es) (checkpoint vs model: {'; '.join(shapes[:3])})")
    if not parts:
        return None
    return (f"{path}: the checkpoint does not fit this model ({type(model).__name__}): " + "; ".join(parts)
            + " (another backbone, decoder width or class count?)")


def _load_states(path: Path, ckpt: Mapping[str, Any], model: nn.Module, optimizer: Any = None,
                 scheduler: Any = None, restore_rng: bool = True) -> None:
    """Load a read and verified checkpoint dict into the objects (errors name ``path``)."""
    if (why := _state_mismatch(path, model, ckpt["model"])) is not None:
        raise ValueError(why)
    model.load_state_dict(ckpt["model"])
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is not None and ckpt.get(name) is not None:
            try:
                obj.load_state_dict(ckpt[name])
            except (ValueError, KeyError, TypeError, RuntimeError) as err:
                raise ValueError(f"{path}: the {name} state does not fit this {name} "
                                 f"({type(obj).__name__}): {err}") from err
    if restore_rng and ckpt.get("rng"):
        _set_rng_state(ckpt["rng"])


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, *, map_location: str | torch.device = "cpu",
                    restore_rng: bool = True, method: str | None = None,
                    check_finite: bool = True,
                    checkpoint: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and optimizer, scheduler).

    The file is read and verified by :func:`read_checkpoint` (content hash, finite state) before anything
    is loaded; with ``method`` its recorded method is checked first too, so a checkpoint of another
    method is named as such rather than failing on key lists.

    Args:
        path: the checkpoint file.
        model, optimizer, scheduler: what to restore (optimizer / scheduler optional).
        map_location: where tensors are loaded.
        restore_rng: also restore the Python, NumPy, torch and CUDA RNG states.
        method: the expected ``extra["method"]`` (``None``: not checked).
        check_finite: refuse a checkpoint whose training state holds NaN or inf.
        checkpoint: the dict :func:`read_checkpoint` already returned for ``path`` (not read and verified
            a second time), e.g. when its metadata was needed to build ``model``.

    Returns:
        ``(step, extra)``: the number of completed iterations and the metadata dict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for what :func:`read_checkpoint` rejects, another method, or a state that does not
            fit ``model`` / ``optimizer`` / ``scheduler`` (the message names the file and the keys).
    """
    path = Path(path)
    ckpt = checkpoint if checkpoint is not None else read_checkpoint(path, map_location=map_location,
                                                                     check_finite=check_finite)
    extra = dict(ckpt.get("extra") or {})
    if method is not None and extra.get("method") != method:
        raise ValueError(f"{path}: a checkpoint of method {extra.get('method')!r}, expected {method!r}")
    _load_states(path, ckpt, model, optimizer, scheduler, restore_rng)
    return int(ckpt.get("step", 0)), extra


class CSVLogger:
    """Append rows of scalars to a CSV file; the header is the union of keys seen in the first row
    (later unknown keys are dropped, missing ones left empty). Appends when the file exists (resume).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
        >>> log = CSVLogger(path); log.log({"step": 1, "loss": 0.5}); log.close()
        >>> open(path).read().splitlines()
        ['step,loss', '1,0.5']
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), None)
            self._fields = list(header) if header else None
        self._file = open(self.path, "a", newline="")  # noqa: SIM115
        self._writer: csv.DictWriter | None = None
        if self._fields:
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields, extrasaction="ignore")

    def log(self, row: Mapping[str, Any]) -> None:
        """Write one row."""
        if self._writer is None:
            self._fields = list(row)
            self._writer = csv.DictWriter(self._file, fieldnames=self._fields, extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> CSVLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
             desc: str | None = None, disable: bool | None = None):
    """A ``tqdm`` progress bar (disabled automatically when stderr is not a terminal unless asked)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable, dynamic_ncols=True,
                mininterval=1.0)


def infinite_loader(loader: Iterable) -> Iterator:
    """Iterate ``loader`` forever (re-creating its iterator at the end of every epoch)."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("loader: the data loader is empty")


def move_batch(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Move every tensor of a dict batch to ``device`` (other values unchanged)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
