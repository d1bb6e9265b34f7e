"""The shared training engine: one loop for every method, from one CPU process to torchrun on N GPUs."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import (
    DistributedEnv,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    init_distributed,
    unwrap_model,
)
from .evaluation import evaluate_method, format_summary
from .loop import (
    CSVLogger,
    _load_states,
    _rng_state,
    _set_rng_state,
    atomic_open,
    move_batch,
    progress,
    read_checkpoint,
    save_checkpoint,
)
from .method import TrainingMethod
from .sampler import ResumableDistributedSampler, SeededSamples, collate_samples

__all__ = ["RESUME_MAY_CHANGE", "RUN_FILES", "TrainConfig", "Trainer"]

_AMP = ("none", "bf16", "fp16")

#: :class:`TrainConfig` fields a resumed run may change: how the run is executed, saved and reported,
#: never what it computes. Every other field, the recipe, the method, the number of processes and the
#: recorded command-line arguments (``extra["args"]``, minus the flags below) must equal the checkpoint's.
RESUME_MAY_CHANGE: tuple[str, ...] = (
    "out_dir", "resume", "overwrite", "stop_at", "ckpt_every", "eval_every", "num_workers", "threads", "device",
    "compile", "grad_checkpointing", "keep_freed_cpu_memory", "tensorboard", "show_progress", "num_vis", "command")

#: The files that make a folder "hold a run" (a new run there needs ``overwrite``).
RUN_FILES: tuple[str, ...] = ("checkpoint.pt", "log.csv", "metrics.json")

# command-line arguments (extra["args"], the parsed flags of wsseg.training.cli) that a resume may change
# (the flags of RESUME_MAY_CHANGE), that the recipe comparison covers, and that mirror refused engine fields
_ARGS_MAY_CHANGE = frozenset({"out", "resume", "overwrite", "stop_at", "ckpt_every", "eval_every", "num_workers",
                              "threads", "device", "compile", "grad_checkpointing", "no_keep_freed_memory",
                              "tensorboard", "no_progress",
                              "num_vis"})
_ARGS_IN_RECIPE = frozenset({"recipe", "overrides", "iters", "crop", "batch_size", "seed"})
_ARGS_IN_ENGINE = frozenset({"amp", "sync_bn", "per_rank_seed", "eval_long_side", "eval_msc", "eval_crf",
                             "max_eval_images"})
_RECIPE_FLAGS = {"iters": "--iters", "crop_size": "--crop", "batch_size": "--batch-size", "seed": "--seed",
                 "recipe": "--recipe"}
_ENGINE_FLAGS = {"amp": "--amp", "sync_bn": "--sync-bn", "per_rank_seed": "--per-rank-seed",
                 "eval_long_side": "--eval-long-side", "eval_inference": "--eval-msc", "eval_crf": "--eval-crf",
                 "max_eval_images": "--max-eval-images"}
_ALLOWED_FLAGS = ("--stop-at, --eval-every, --ckpt-every, --num-workers, --threads, --device, --compile, "
                  "--grad-checkpointing, --no-keep-freed-memory, --tensorboard, --no-progress, --num-vis, --out")


@dataclass
class TrainConfig:
    """How the engine runs (not what the method computes: that is the method's recipe).

    Attributes:
        out_dir: output folder (``log.csv``, ``checkpoint.pt``, ``metrics.json``, ``vis/``, ``tb/``).
        device: ``"cpu"`` or ``"cuda"`` (under torchrun each rank takes ``cuda:<LOCAL_RANK>``).
        amp: ``"none"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + ``GradScaler``).
        compile: wrap the model with ``torch.compile`` (opt-in).
        grad_checkpointing: gradient checkpointing of the encoder (opt-in): its transformer blocks are run
            again in backward instead of keeping their activations, through the model's
            ``set_grad_checkpointing`` (MiT and timm ViT encoders). Same losses and gradients (the RNG state is
            restored for the recomputation), less activation memory, one more encoder forward per iteration.
            A resume may switch it on or off.
        keep_freed_cpu_memory: let glibc's ``malloc`` keep freed memory for reuse instead of returning every
            large buffer to the system (:func:`~wsseg.utils.keep_freed_cpu_memory`; process-wide, Linux only,
            results unchanged). Saves the page faults of re-allocating the same activations every iteration
            (up to a fifth of a CPU iteration's time, see the benchmarks page); ``False`` (CLI
            ``--no-keep-freed-memory``) leaves the allocator alone.
        ckpt_every: checkpoint every N iterations (and at the end); 0 = only at the end.
        eval_every: evaluate every N iterations (0 = only at the end).
        stop_at: stop after this many completed iterations (a checkpoint is written there, no final
            evaluation) while keeping the schedule of ``recipe.iters``; continue with ``resume``. For
            time-limited cluster jobs.
        resume: ``None``, ``"auto"`` (``out_dir/checkpoint.pt``) or a checkpoint path. The checkpoint is
            verified (content hash, finite state) and its run configuration must equal this one except
            for the fields in :data:`RESUME_MAY_CHANGE`; otherwise the resume is refused with the list of
            differences. A checkpoint at the last iteration is not trained further: the final evaluation
            is run again and ``metrics.json`` rewritten (same content).
        overwrite: a new run (no ``resume``) into a folder that holds a run (any of :data:`RUN_FILES`) is
            refused unless this is set; then the previous run's files are removed first (``checkpoint.pt``,
            ``log.csv``, ``metrics.json``, ``vis/*.png``, ``tb/events.out.tfevents.*``, ``eval_*.json``).
        num_workers: data-loader worker processes.
        threads: ``torch.set_num_threads`` (None = torch's choice).
        tensorboard: also log to TensorBoard (``out_dir/tb``; needs the ``tensorboard`` package).
        sync_bn: convert BatchNorm layers to ``SyncBatchNorm`` in a multi-process CUDA run (torch's
            SyncBatchNorm has no CPU implementation; a single process ignores it).
        per_rank_seed: seed rank r with ``seed + r`` (default: the same seed on every rank, as the
            official TSCD/AFA/CoSA launchers do; the ranks still see different images).
        show_progress: tqdm bars (with ETA).
        num_vis: PNG panels written by the final evaluation.
        max_eval_images: evaluate only the first N images of each split.
        eval_long_side: network input long side at evaluation (None = native resolution).
        eval_inference: multi-scale + flip preset for the segmentation scores (``"tscd"``, ...; None =
            single scale), see :func:`evaluate_method`.
        eval_crf: dense-CRF preset applied after it (None = no CRF; needs pydensecrf).
        command: the command line, recorded in checkpoints and ``metrics.json``.
    """

    out_dir: str = "runs/train"
    device: str = "cpu"
    amp: str = "none"
    compile: bool = False
    grad_checkpointing: bool = False
    keep_freed_cpu_memory: bool = True
    ckpt_every: int = 500
    eval_every: int = 0
    stop_at: int | None = None
    resume: str | None = None
    overwrite: bool = False
    num_workers: int = 0
    threads: int | None = None
    tensorboard: bool = False
    sync_bn: bool = False
    per_rank_seed: bool = False
    show_progress: bool = True
    num_vis: int = 4
    max_eval_images: int | None = None
    eval_long_side: int | None = None
    eval_inference: str | None = None
    eval_crf: str | None = None
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        if self.amp not in _AMP:
            raise ValueError(f"amp: expected one of {_AMP}, got {self.amp!r}")
        for name in ("ckpt_every", "eval_every", "num_workers", "num_vis"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {getattr(self, name)}")
        if self.stop_at is not None and int(self.stop_at) < 1:
            raise ValueError(f"stop_at: expected a positive int, got {self.stop_at}")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Trainer:
    """Train a :class:`~wsseg.training.TrainingMethod` and evaluate it: the loop every method shares.

    The engine owns: data order (a seeded :class:`ResumableDistributedSampler`, per-sample augmentation
    seeds), the per-rank batch (``recipe.batch_size`` is the global batch, split evenly over ranks),
    DDP wrapping, mixed precision, the optimizer and schedule the method builds, checkpoints (atomic,
    every ``ckpt_every`` iterations, with the recipe, command line, package version and git revision),
    exact resume, the CSV / TensorBoard log, tqdm progress and evaluation (:func:`evaluate_method`).
    Rank 0 alone writes files.

    Exact resume: the data order depends only on ``(seed, epoch, position)`` and each sample's
    augmentation only on ``(seed, epoch, index)``; model, optimizer, scheduler, grad scaler, method
    state, every RNG state, the periodic evaluations and the loss history are checkpointed, and periodic
    evaluations leave the random streams untouched. A run killed at any moment and resumed (any number
    of times) ends with a ``checkpoint.pt``, ``log.csv`` and ``metrics.json`` equal to the uninterrupted
    run's (CPU, one thread) except for times, the command line, ``resumed_from`` and the settings a
    resume may change (:data:`RESUME_MAY_CHANGE`). A resume with another configuration, a new run into a
    folder that holds one (without ``overwrite``) and a checkpoint that fails verification are refused
    before anything is written; a checkpoint is never written with a non-finite training state.

    Args:
        method: the method (recipe + training step + inference).
        model: the network from ``method.build_model`` (not yet wrapped or moved).
        train_set: training dataset (its samples go through ``train_transform`` with the augmentation
            seed the engine passes, see :class:`SeededSamples`).
        config: a :class:`TrainConfig`.
        pseudo_set, seg_set: evaluation datasets (no augmentation) for CAM / pseudo-label and
            segmentation scores; ``None`` skips those metrics.
        pseudo_split, seg_split: their split names (recorded in ``metrics.json``).
        env: the :class:`~wsseg.training.DistributedEnv` (default: :func:`init_distributed`).
        extra: more metadata for checkpoints and ``metrics.json`` (e.g. the parsed arguments).

    Raises:
        ValueError: if the global batch does not split evenly over the ranks, the training split
            has fewer images than one batch, the crop is not a multiple of the model's stride,
            ``stop_at`` exceeds ``recipe.iters``, ``sync_bn`` is asked for a multi-process CPU run, or
            ``grad_checkpointing`` for a model or encoder without it (WideResNet-38, timm CNNs);
            from :meth:`fit`: a folder holding a run without ``overwrite``, a resume whose checkpoint is
            unreadable, corrupted (content hash), non-finite, of another method or of another
            configuration (every difference listed), or a ``stop_at`` not after the checkpoint's step.
        FileNotFoundError: from :meth:`fit`, when the checkpoint to resume does not exist.
        FloatingPointError: when the loss is not finite (the message names the step and the terms;
            nothing is updated or saved for that step), or when the training state to checkpoint is
            not finite (the first bad parameter, buffer or optimizer tensor named; nothing is written).
            :meth:`failure_message` says which checkpoint is intact.

    Example:
        >>> import tempfile
        >>> from wsseg.data import SyntheticShapes, eval_transform, train_transform
        >>> from wsseg.training import TSCDMethod, TSCDRecipe
        >>> method = TSCDMethod(TSCDRecipe(crop_size=32, batch_size=2, iters=2, cam_iters=5))
        >>> net = method.build_model(3, backbone="test_vit", decoder_dim=8)
        >>> train = SyntheticShapes(num_images=4, size=32, transform=train_transform(32, seed=0))
        >>> val = SyntheticShapes(num_images=2, size=32, transform=eval_transform(None))
        >>> cfg = TrainConfig(out_dir=tempfile.mkdtemp(), show_progress=False, num_vis=0)
        >>> metrics = Trainer(method, net, train, cfg, seg_set=val, seg_split="val").fit()  # doctest: +ELLIPSIS
        tscd: K=3 images=4 crop=32 batch=2 (2/process x 1) iters=2 device=cpu amp=none
        evaluate: 2/2 images (100 %)...
        seg mIoU unfiltered ... [val, 2 images] | ... s -> .../metrics.json
        >>> metrics["iters"], metrics["world_size"], metrics["eval_splits"]["seg"]["split"]
        (2, 1, 'val')
        >>> Trainer(method, net, train, cfg).fit()  # the folder now holds a run  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: out_dir: ... already holds a run (checkpoint.pt, log.csv, metrics.json); continue it with --resume ...
    """

    def __init__(self, method: TrainingMethod, model: nn.Module, train_set: Any, config: TrainConfig, *,
                 pseudo_set: Any = None, seg_set: Any = None, pseudo_split: str = "train",
                 seg_split: str = "train", env: DistributedEnv | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        if not isinstance(method, TrainingMethod):
            raise TypeError(f"method: expected a TrainingMethod, got {type(method).__name__}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
        self.method, self.model, self.train_set, self.config = method, model, train_set, config
        self.pseudo_set, self.seg_set = pseudo_set, seg_set
        self.pseudo_split, self.seg_split = pseudo_split, seg_split
        self.env = env if env is not None else init_distributed(config.device)
        self.extra = dict(extra or {})
        self.out_dir = Path(config.out_dir)
        recipe = method.recipe
        if recipe.batch_size % self.env.world_size:
            raise ValueError(f"batch_size: the global batch {recipe.batch_size} must split evenly over "
                             f"{self.env.world_size} processes")
        self.local_batch = recipe.batch_size // self.env.world_size
        stride = getattr(unwrap_model(model), "stride", None)
        if stride and recipe.crop_size % int(stride):
            raise ValueError(f"crop_size: {recipe.crop_size} is not a multiple of the backbone stride {stride} "
                             f"(e.g. {recipe.crop_size // int(stride) * int(stride)})")
        if config.sync_bn and self.env.distributed and self.env.device.type != "cuda":
            raise ValueError(f"sync_bn: SyncBatchNorm runs on CUDA devices only (torch), got device "
                             f"{self.env.device}; drop --sync-bn for CPU runs")
        if config.stop_at is not None and config.stop_at > recipe.iters:
            raise ValueError(f"stop_at: expected at most iters={recipe.iters}, got {config.stop_at}")
        set_ckpt = getattr(unwrap_model(model), "set_grad_checkpointing", None)
        if config.grad_checkpointing:
            if set_ckpt is None:
                raise ValueError(f"grad_checkpointing: {type(unwrap_model(model)).__name__} has no "
                                 f"set_grad_checkpointing(enable) method; train without it")
            set_ckpt(True)  # raises ValueError for an encoder without support (WideResNet-38, timm CNNs)
        elif set_ckpt is not None:
            set_ckpt(False)
        #: the checkpoint a resume would continue from (written or loaded by this run, verified finite)
        self.last_checkpoint: Path | None = None
        self._ckpt_step: int | None = None
        self._started = False

    # ------------------------------------------------------------------ pieces
    def _autocast(self):
        amp = self.config.amp
        if amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.env.device.type, dtype=dtype)

    def _make_loader(self):
        recipe, env = self.method.recipe, self.env
        sampler = ResumableDistributedSampler(self.train_set, num_replicas=env.world_size, rank=env.rank,
                                              seed=recipe.seed)
        steps_per_epoch = len(sampler) // self.local_batch
        if steps_per_epoch == 0:
            raise ValueError(f"train_set: {len(self.train_set)} image(s) give no full batch of "
                             f"{self.local_batch} per process; use a smaller batch or more images")
        loader = torch.utils.data.DataLoader(
            SeededSamples(self.train_set, recipe.seed), batch_size=self.local_batch, sampler=sampler,
            drop_last=True, num_workers=self.config.num_workers, collate_fn=collate_samples,
            # a private generator: the loader must not draw from the global RNG (exact resume)
            generator=torch.Generator().manual_seed(recipe.seed),
            persistent_workers=False, pin_memory=self.env.device.type == "cuda")
        return loader, sampler, steps_per_epoch

    def _batches(self, start: int, made: tuple | None = None):
        loader, sampler, spe = made if made is not None else self._make_loader()
        epoch, offset = divmod(start, spe)
        while True:
            sampler.set_epoch(epoch)
            sampler.set_start(offset * self.local_batch)
            yield from loader
            epoch, offset = epoch + 1, 0

    def _metadata(self) -> dict[str, Any]:
        import wsseg

        recipe = self.method.recipe
        to_dict = getattr(recipe, "to_dict", None)
        return {"method": self.method.name, "recipe": to_dict() if callable(to_dict) else asdict(recipe),
                "command": list(self.config.command), "engine": asdict(self.config),
                "wsseg_version": wsseg.__version__, "git_revision": _git_revision(),
                "torch_version": torch.__version__, "world_size": self.env.world_size, **self.extra}

    def _gather_rng(self) -> list[Any] | None:
        """Every rank's RNG states (needed only when ranks are seeded differently)."""
        if not self.env.distributed:
            return None
        states: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(states, _rng_state())
        return states

    def _agree(self, message: str | None, exc: type[Exception] = ValueError) -> None:
        """Raise ``exc(message)`` on every rank when rank 0 found a problem (``message`` is rank 0's)."""
        flag = torch.tensor([1.0 if message else 0.0])
        all_reduce_sum(flag)  # no-op for one process: the ranks must not diverge into a hang
        if float(flag) > 0:
            raise exc(message or "rank 0 stopped the run (see its message)")

    # ------------------------------------------------------------------ run folder and resume
    def _resume_path(self) -> Path:
        cfg = self.config
        return self.out_dir / "checkpoint.pt" if cfg.resume == "auto" else Path(cfg.resume)

    def _prepare_out_dir(self, resume_path: Path | None) -> None:
        """Refuse a new run into a folder holding a run (unless ``overwrite``); remove its files if asked."""
        cfg, out = self.config, self.out_dir
        own = resume_path is not None and _same_file(resume_path, out / "checkpoint.pt")
        refusal = None
        held = [n for n in RUN_FILES if (out / n).is_file()] if self.env.is_main else []
        if held and not own and not cfg.overwrite:
            if resume_path is None:
                refusal = (f"out_dir: {out} already holds a run ({', '.join(held)}); continue it with --resume "
                           f"(resume='auto'), replace it with --overwrite (overwrite=True) or choose another --out")
            else:
                refusal = (f"out_dir: {out} holds another run ({', '.join(held)}) than the checkpoint "
                           f"{resume_path} being resumed; replace it with --overwrite or choose another --out")
        self._agree(refusal)
        if self.env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite and not own:
                removed = _remove_run_files(out)
                if removed:
                    print(f"overwrite: removed {removed} file(s) of the previous run in {out}", flush=True)
        barrier()

    def _read_resume(self, meta: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """Read and verify the checkpoint to resume, and check it continues this run (before anything is built)."""
        cfg, recipe = self.config, self.method.recipe
        path = self._resume_path()
        if not path.is_file():
            held = [n for n in RUN_FILES if (path.parent / n).is_file()]
            hint = (f" ({path.parent} holds {', '.join(held)}: the run stopped before its first checkpoint; "
                    f"start it again with --overwrite)" if held else "")
            raise FileNotFoundError(f"resume: no checkpoint at {path}{hint}")
        ckpt = read_checkpoint(path, map_location="cpu")
        extra = ckpt.get("extra") or {}
        saved = extra.get("method")
        if saved != self.method.name:
            raise ValueError(f"resume: {path} is a checkpoint of method {saved!r}, not {self.method.name!r}; "
                             f"resume it with its own training script" if saved else
                             f"resume: {path} records no method (not written by the training engine); "
                             f"it cannot be resumed, only loaded as weights")
        diffs = _config_differences(extra, meta)
        if diffs:
            lines = "\n".join(f"  {d}" for d in diffs)
            raise ValueError(
                f"resume: {path} belongs to a run with another configuration, and a resume continues the "
                f"same run. Differences (checkpoint -> now):\n{lines}\nA resume may change only {_ALLOWED_FLAGS} "
                f"(TrainConfig: {', '.join(RESUME_MAY_CHANGE)}). To run with other settings, start a new run "
                f"(--overwrite, or another --out).")
        step = int(ckpt["step"])
        if not 0 <= step <= recipe.iters:
            raise ValueError(f"resume: {path} is at step {step}, outside the run's {recipe.iters} iterations")
        if cfg.stop_at is not None and cfg.stop_at <= step and not cfg.stop_at == step == recipe.iters:
            raise ValueError(f"stop_at: {cfg.stop_at} is not after the checkpoint's step {step} ({path}); "
                             f"give a later --stop-at or none")
        for key in ("wsseg_version", "git_revision", "torch_version"):
            if extra.get(key) is not None and meta.get(key) is not None and extra[key] != meta[key]:
                warnings.warn(f"resume: {path} was written with {key} {extra[key]}, this is {meta[key]}: the "
                              f"continuation may differ from an uninterrupted run", stacklevel=3)
        return path, ckpt

    def _restore(self, path: Path, ckpt: dict[str, Any], core, optimizer, scheduler, scaler) -> dict[str, Any]:
        """Load a verified checkpoint into model, optimizer, scheduler, scaler, method and RNGs; its run state."""
        _load_states(path, ckpt, core, optimizer, scheduler, restore_rng=True)
        extra = ckpt.get("extra") or {}
        try:
            self.method.load_state_dict(extra.get("method_state") or {})
        except (KeyError, ValueError, RuntimeError, TypeError) as err:
            raise ValueError(f"{path}: the method state does not fit {self.method.name!r}: {err}") from err
        if scaler is not None and extra.get("grad_scaler"):
            scaler.load_state_dict(extra["grad_scaler"])
        per_rank = extra.get("rng_per_rank")
        if per_rank and len(per_rank) == self.env.world_size:
            _set_rng_state(per_rank[self.env.rank])
        state = extra.get("engine_state")
        if state is None:
            warnings.warn(f"resume: {path} carries no run state (written by an older version): metrics.json "
                          f"will lack the losses and periodic evaluations before step {ckpt['step']}",
                          stacklevel=3)
            state = _new_run_state()
        self.last_checkpoint, self._ckpt_step = path, int(ckpt["step"])
        if self.env.is_main:
            print(f"resumed from {path} at step {ckpt['step']}", flush=True)
        return {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def _save(self, core: nn.Module, optimizer, scheduler, scaler, step: int, meta: dict,
              run_state: dict[str, Any]) -> None:
        rng_per_rank = self._gather_rng() if self.config.per_rank_seed else None
        path = self.out_dir / "checkpoint.pt"
        error: FloatingPointError | None = None
        if self.env.is_main:
            extra = {**meta, "method_state": self.method.state_dict(),
                     "grad_scaler": scaler.state_dict() if scaler is not None else None,
                     "rng_per_rank": rng_per_rank, "engine_state": run_state}
            try:
                save_checkpoint(path, core, optimizer, scheduler, step, extra)
            except FloatingPointError as err:
                error = err
        self._agree(str(error) if error else None, FloatingPointError)
        self.last_checkpoint, self._ckpt_step = path, step

    def _check_finite(self, loss: torch.Tensor, logs: dict[str, float], step: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
        all_reduce_sum(bad)  # every rank must stop together, not hang in the next all-reduce (no-op for one)
        if float(bad) > 0:
            terms = {k: v for k, v in logs.items() if k.startswith("loss")}
            raise FloatingPointError(f"non-finite loss at step {step} (on at least one rank); terms: {terms}; "
                                     f"nothing was updated for this step")

    def failure_message(self, err: BaseException) -> str:
        """What to tell the user when :meth:`fit` raised ``err`` (the command line prints it).

        A refusal before training (a folder holding a run, a resume with another configuration, a bad
        checkpoint) gives the message alone. Once training started it adds which checkpoint is intact
        (the last one this run wrote or loaded; both are verified finite) and advises ``--resume``, or,
        when no checkpoint exists, says to start the run again with ``--overwrite``: ``--resume`` is never
        advised without a checkpoint to resume from.

        Args:
            err: the exception :meth:`fit` raised.

        Returns:
            The message, starting with ``"error: "``.
        """
        if not self._started:
            return f"error: {err}"
        if self.last_checkpoint is None:
            return (f"error: training stopped: {err}\n(no checkpoint was written; start the run again with "
                    f"--overwrite)")
        flag = "--resume" if _same_file(self.last_checkpoint, self.out_dir / "checkpoint.pt") else \
            f"--resume {self.last_checkpoint}"
        return (f"error: training stopped: {err}\n(the last checkpoint {self.last_checkpoint} (step "
                f"{self._ckpt_step}) is intact and finite; continue with {flag})")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train from scratch or ``resume``, evaluate, write ``metrics.json``; returns the metrics.

        Before anything is built or written: a ``resume`` checkpoint is read, verified and compared with
        this run's configuration, and the output folder is checked (see :class:`TrainConfig` ``resume`` and
        ``overwrite``). On a resume ``log.csv`` is cut back to the checkpoint's step, and the periodic
        evaluations, the loss history and the training time come from the checkpoint, so the files after
        any sequence of kills and resumes equal those of the uninterrupted run except for the fields
        listed in the engine documentation (times, ``resumed_from``, the command line and the settings of
        :data:`RESUME_MAY_CHANGE`).
        """
        cfg, env, method, recipe = self.config, self.env, self.method, self.method.recipe
        t_start = time.time()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.keep_freed_cpu_memory:
            from ..utils.allocator import keep_freed_cpu_memory

            keep_freed_cpu_memory()
        meta = self._metadata()
        resume_path, ckpt = self._read_resume(meta) if cfg.resume else (None, None)
        made = self._make_loader()  # a training set too small for one batch fails here, before any file
        self._prepare_out_dir(resume_path)
        core = self.model.to(env.device)
        if cfg.sync_bn and env.distributed:
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        core.train()
        method.setup(core, env.device)
        optimizer = method.build_optimizer(core)
        scheduler = method.build_scheduler(optimizer)
        scaler = torch.amp.GradScaler(env.device.type) if cfg.amp == "fp16" else None
        run = _new_run_state()
        start = 0
        if ckpt is not None and resume_path is not None:
            run = self._restore(resume_path, ckpt, core, optimizer, scheduler, scaler)
            start = int(ckpt["step"])
            del ckpt
        model: nn.Module = core
        if env.distributed:
            model = nn.parallel.DistributedDataParallel(
                core, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                find_unused_parameters=method.find_unused_parameters)
        if cfg.compile:
            model = torch.compile(model)
        stop = recipe.iters if cfg.stop_at is None else cfg.stop_at
        if env.is_main:
            print(f"{method.name}: K={self.train_set.num_classes} images={len(self.train_set)} "
                  f"crop={recipe.crop_size} batch={recipe.batch_size} ({self.local_batch}/process x "
                  f"{env.world_size}) iters={recipe.iters} device={env.device} amp={cfg.amp}", flush=True)
            if resume_path is not None:
                self._prepare_log(resume_path, start)
                if start == recipe.iters:
                    print(f"{resume_path} is at the last step {start}: nothing left to train; running the final "
                          f"evaluation again", flush=True)
        self._started = True
        writer = self._tensorboard(purge_step=start or None) if env.is_main and cfg.tensorboard else None
        log = CSVLogger(self.out_dir / "log.csv") if env.is_main else None
        keys = ("step", "lr", "time_s", *method.log_keys)
        batches = self._batches(start, made)
        t_train = time.time()
        train_time_before = float(run["train_time_s"])
        bar = progress(total=recipe.iters, initial=start, desc="train", disable=not (cfg.show_progress and env.is_main))
        try:
            for step in range(start, stop):
                t0 = time.time()
                batch = move_batch(next(batches), env.device)
                with self._autocast():
                    loss, logs = method.training_step(model, batch, step)
                self._check_finite(loss, logs, step)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                method.after_optimizer_step(model, step)
                value = float(logs["loss"])
                if len(run["loss_first10"]) < 10:
                    run["loss_first10"].append(value)
                run["loss_last10"] = [*run["loss_last10"], value][-10:]
                row = {"step": step, "lr": optimizer.param_groups[0]["lr"], "time_s": time.time() - t0, **logs}
                if log is not None:
                    log.log({k: row.get(k, "") for k in keys})
                if writer is not None:
                    for k, v in row.items():
                        if k != "step" and isinstance(v, (int, float)):
                            writer.add_scalar(f"train/{k}", v, step)
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
                done = step + 1
                # evaluate first, then checkpoint: the checkpoint of a step holds that step's evaluation
                if cfg.eval_every and done % cfg.eval_every == 0 and done < recipe.iters:
                    run["periodic_evaluations"].append(
                        self._evaluate(model, done, num_vis=0, writer=writer, keep_rng=True))
                if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == stop:
                    run["train_time_s"] = train_time_before + time.time() - t_train
                    self._save(core, optimizer, scheduler, scaler, done, meta, run)
        finally:
            bar.close()
            if log is not None:
                log.close()
        train_time = train_time_before + time.time() - t_train
        if stop < recipe.iters:
            if env.is_main:
                print(f"stopped after step {stop} of {recipe.iters} (--stop-at); continue with --resume", flush=True)
            if writer is not None:
                writer.close()
            return {"stopped_at": stop}

        weight_hashes = self._weight_hashes(core) if env.distributed else None
        state_hashes = self._method_state_hashes() if env.distributed else None
        t_eval = time.time()
        metrics = self._evaluate(model, recipe.iters, num_vis=cfg.num_vis, writer=writer)
        first10, last10 = run["loss_first10"], run["loss_last10"]
        metrics.update({
            "iters": recipe.iters, "resumed_from": start, "world_size": env.world_size,
            "loss_first10": float(np.mean(first10)) if first10 else None,
            "loss_last10": float(np.mean(last10)) if last10 else None,
            "train_time_s": train_time, "eval_time_s": time.time() - t_eval, "wall_time_s": time.time() - t_start,
            "class_names": list(self.train_set.class_names), "periodic_evaluations": run["periodic_evaluations"],
            "config": meta, "torch_threads": torch.get_num_threads(),
        })
        if weight_hashes is not None:
            metrics["rank_weight_hashes"] = weight_hashes
            metrics["ranks_identical_weights"] = len(set(weight_hashes)) == 1
        if state_hashes:
            # per entry of method.state_dict() (e.g. CoSA's EMA teacher: identical on every rank; its
            # threshold queues: per-rank data, so they may differ)
            metrics["rank_method_state_hashes"] = state_hashes
        if env.is_main:
            _write_json_atomic(self.out_dir / "metrics.json", metrics)
            print(format_summary(metrics) + f" | {metrics['wall_time_s']:.0f} s -> {self.out_dir / 'metrics.json'}",
                  flush=True)
        if writer is not None:
            writer.close()
        barrier()
        return metrics

    def _prepare_log(self, resume_path: Path, start: int) -> None:
        """Cut ``log.csv`` back to the rows of steps ``< start`` (from the resumed run's folder if this one has none)."""
        log = self.out_dir / "log.csv"
        src = log
        if not log.is_file() and not _same_file(resume_path.parent / "log.csv", log):
            src = resume_path.parent / "log.csv"
        if not src.is_file():
            if start:
                warnings.warn(f"resume: no log.csv with the rows of steps 0..{start - 1} (looked in {src}); the "
                              f"log starts at step {start}", stacklevel=3)
            return
        kept = _truncate_log(src, log, start)
        if kept != list(range(start)):
            missing = sorted(set(range(start)) - set(kept))
            warnings.warn(f"resume: {src} lacks the rows of {len(missing)} step(s) before {start} (first: "
                          f"{missing[:5]}); kept {len(kept)} row(s)", stacklevel=3)

    def _method_state_hashes(self) -> dict[str, list[str]]:
        """SHA-256 of every rank's ``method.state_dict()`` entries (tensors and nested dicts of tensors)."""
        out: dict[str, list[str]] = {}
        for key, value in sorted(self.method.state_dict().items()):
            h = hashlib.sha256()
            items = sorted(value.items()) if isinstance(value, dict) else [("", value)]
            for name, t in items:
                h.update(str(name).encode())
                if isinstance(t, torch.Tensor):
                    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
                else:
                    h.update(repr(t).encode())
            hashes: list[Any] = [None] * self.env.world_size
            torch.distributed.all_gather_object(hashes, h.hexdigest())
            out[str(key)] = [str(x) for x in hashes]
        return out

    def _weight_hashes(self, core: nn.Module) -> list[str]:
        """SHA-256 of every rank's parameters (DDP keeps them identical; this checks it once per run)."""
        h = hashlib.sha256()
        for name, p in core.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        hashes: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(hashes, h.hexdigest())
        return [str(x) for x in hashes]

    def _evaluate(self, model: nn.Module, step: int, *, num_vis: int, writer=None,
                  keep_rng: bool = False) -> dict[str, Any]:
        env = self.env
        if self.pseudo_set is None and self.seg_set is None:
            return {"step": step}
        broadcast_buffers(unwrap_model(model))  # every rank evaluates rank 0's (the checkpoint's) statistics
        # a periodic evaluation must not move the training's random streams (a resumed run does not redo it)
        rng = _rng_state() if keep_rng else None
        try:
            res = self._run_evaluation(model, num_vis)
        finally:
            if rng is not None:
                _set_rng_state(rng)
        res["step"] = step
        if env.is_main:
            if step < self.method.recipe.iters:
                print(format_summary(res, step), flush=True)
            if writer is not None:
                for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered"):
                    if k in res and not math.isnan(res[k]):
                        writer.add_scalar(f"eval/{k}", res[k], step)
        return res

    def _run_evaluation(self, model: nn.Module, num_vis: int) -> dict[str, Any]:
        cfg, env = self.config, self.env
        return evaluate_method(self.method, model, pseudo_set=self.pseudo_set, seg_set=self.seg_set,
                              pseudo_split=self.pseudo_split, seg_split=self.seg_split, device=env.device,
                              eval_long_side=cfg.eval_long_side, max_images=cfg.max_eval_images,
                              out_dir=self.out_dir if env.is_main else None, num_vis=num_vis,
                              show_progress=cfg.show_progress and env.is_main, rank=env.rank,
                              world_size=env.world_size, seg_inference=cfg.eval_inference, crf=cfg.eval_crf,
                              log_progress=env.is_main)

    def _tensorboard(self, purge_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("tensorboard: --tensorboard needs the tensorboard package "
                              "(pip install 'wsseg[tensorboard]')") from err
        # purge_step: events of steps >= the resumed step (written before a kill) are dropped
        return SummaryWriter(str(self.out_dir / "tb"), purge_step=purge_step)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _new_run_state() -> dict[str, Any]:
    """What a checkpoint carries for the final metrics (``extra["engine_state"]``)."""
    return {"loss_first10": [], "loss_last10": [], "periodic_evaluations": [], "train_time_s": 0.0}


def _remove_run_files(out: Path) -> int:
    """Delete the files a run writes in ``out`` (``overwrite``); returns how many."""
    paths = [out / n for n in (*RUN_FILES, "checkpoint.pt.tmp", "metrics.json.tmp", "log.csv.tmp")]
    paths += sorted((out / "vis").glob("*.png")) + sorted((out / "tb").glob("events.out.tfevents.*"))
    paths += sorted(out.glob("eval_*.json"))  # examples/evaluate.py's reports of the replaced checkpoint
    removed = 0
    for p in paths:
        if p.is_file():
            p.unlink()
            removed += 1
    return removed


def _write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)


def _truncate_log(src: Path, dst: Path, start: int) -> list[int]:
    """Write to ``dst`` (atomically) the header and the rows of ``src`` whose step is below ``start``.

    Rows are kept byte for byte; a last line without its newline (a write cut by a kill) and rows whose
    step does not parse are dropped. Returns the kept steps.
    """
    with open(src, newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")):
        lines = lines[:-1]
    kept: list[int] = []
    out_lines: list[str] = []
    if lines:
        header = lines[0]
        fields = next(csv.reader([header]))
        col = fields.index("step") if "step" in fields else 0
        out_lines.append(header)
        for line in lines[1:]:
            row = next(csv.reader([line]), [])
            try:
                step = int(row[col])
            except (IndexError, ValueError):
                continue
            if step < start:
                kept.append(step)
                out_lines.append(line)
    with atomic_open(dst, "w", newline="") as f:
        f.write("".join(out_lines))
    return kept


def _flag_of_arg(name: str) -> str:
    return "--" + name.replace("_", "-")


def _config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The differences between a checkpoint's recorded run configuration and this run's that a resume refuses."""
    diffs: list[str] = []

    def differ(label: str, a: Any, b: Any, hint: str = "") -> None:
        if a != b:
            diffs.append(f"{label}: {a!r} -> {b!r}{hint}")

    old_r, new_r = saved.get("recipe"), now.get("recipe")
    if not isinstance(old_r, dict):
        diffs.append("recipe: not recorded in the checkpoint (not written by the training engine)")
        old_r = {}
    for k in new_r:
        if k in old_r:
            label = _RECIPE_FLAGS.get(k, f"{k} (--set {k}=...)")
            hint = ""
            if k == "iters" and old_r[k] != new_r[k]:
                hint = (f" (the schedule - LR decay, warm-up, phase lengths - of this run was computed for "
                        f"{old_r[k]} iterations and cannot be stretched; to train for {new_r[k]}, start a new run "
                        f"with --iters {new_r[k]}; --stop-at N stops a run early and --resume continues it)")
            differ(label, old_r[k], new_r[k], hint)
    old_e, new_e = saved.get("engine") or {}, now.get("engine") or {}
    for k in new_e:
        if k in old_e and k not in RESUME_MAY_CHANGE:
            differ(f"{k} ({_ENGINE_FLAGS[k]})" if k in _ENGINE_FLAGS else k, old_e[k], new_e[k])
    if saved.get("world_size") is not None:
        differ("number of processes (torchrun --nproc_per_node)", saved.get("world_size"), now.get("world_size"))
    old_a, new_a = saved.get("args"), now.get("args")
    if isinstance(old_a, dict) and isinstance(new_a, dict):
        skip = _ARGS_MAY_CHANGE | _ARGS_IN_RECIPE | _ARGS_IN_ENGINE
        for k in new_a:
            if k in old_a and k not in skip:
                differ(_flag_of_arg(k), old_a[k], new_a[k])
    reserved = {"method", "recipe", "command", "engine", "wsseg_version", "git_revision", "torch_version",
                "world_size", "args", "method_state", "grad_scaler", "rng_per_rank", "engine_state"}
    for k in now:
        if k not in reserved and k in saved:
            differ(f"extra[{k!r}]", saved[k], now[k])
    return diffs
