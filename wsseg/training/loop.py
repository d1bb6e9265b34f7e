"""Generic training-loop helpers used by the examples: optimizer, schedule, checkpoints, CSV log, progress."""

from __future__ import annotations

import csv
import os
import random
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
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, step: int = 0, extra: Mapping[str, Any] | None = None) -> None:
    """Save model, optimizer, scheduler, the next step to run and all RNG states (atomic rename).

    Args:
        path: output file.
        model, optimizer, scheduler: objects with ``state_dict()`` (optimizer/scheduler optional).
        step: the number of completed iterations (training resumes at this step).
        extra: any JSON/pickle-able metadata (e.g. the recipe dict).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, *, map_location: str | torch.device = "cpu",
                    restore_rng: bool = True) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(step, extra)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng"):
        _set_rng_state(ckpt["rng"])
    return int(ckpt.get("step", 0)), dict(ckpt.get("extra", {}))


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
