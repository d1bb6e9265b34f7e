"""The shared training engine: one loop for every method, from one CPU process to torchrun on N GPUs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import subprocess
import sys
import time
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
from .loop import CSVLogger, load_checkpoint, move_batch, progress, save_checkpoint
from .method import TrainingMethod
from .sampler import ResumableDistributedSampler, SeededSamples, collate_samples

__all__ = ["TrainConfig", "Trainer"]

_AMP = ("none", "bf16", "fp16")


@dataclass
class TrainConfig:
    """How the engine runs (not what the method computes: that is the method's recipe).

    Attributes:
        out_dir: output folder (``log.csv``, ``checkpoint.pt``, ``metrics.json``, ``vis/``, ``tb/``).
        device: ``"cpu"`` or ``"cuda"`` (under torchrun each rank takes ``cuda:<LOCAL_RANK>``).
        amp: ``"none"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast + ``GradScaler``).
        compile: wrap the model with ``torch.compile`` (opt-in).
        ckpt_every: checkpoint every N iterations (and at the end); 0 = only at the end.
        eval_every: evaluate every N iterations (0 = only at the end).
        stop_at: stop after this many completed iterations (a checkpoint is written there, no final
            evaluation) while keeping the schedule of ``recipe.iters``; continue with ``resume``. For
            time-limited cluster jobs.
        resume: ``None``, ``"auto"`` (``out_dir/checkpoint.pt``) or a checkpoint path.
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
    ckpt_every: int = 500
    eval_every: int = 0
    stop_at: int | None = None
    resume: str | None = None
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
    state and every RNG state are checkpointed. A run stopped after any checkpoint and resumed ends
    with bit-identical weights to the uninterrupted run (CPU, one thread).

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
            has fewer images than one batch, the crop is not a multiple of the model's stride, or
            ``stop_at`` exceeds ``recipe.iters``, or ``sync_bn`` is asked for a multi-process CPU run.
        FloatingPointError: when the loss is not finite (the message names the step and the terms);
            nothing is updated or saved for that step.

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
        seg mIoU unfiltered ... [val, 2 images] | ... s -> .../metrics.json
        >>> metrics["iters"], metrics["world_size"], metrics["eval_splits"]["seg"]["split"]
        (2, 1, 'val')
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

    def _batches(self, start: int):
        loader, sampler, spe = self._make_loader()
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
        from .loop import _rng_state

        if not self.env.distributed:
            return None
        states: list[Any] = [None] * self.env.world_size
        torch.distributed.all_gather_object(states, _rng_state())
        return states

    def _save(self, core: nn.Module, optimizer, scheduler, scaler, step: int, meta: dict) -> None:
        rng_per_rank = self._gather_rng() if self.config.per_rank_seed else None
        if not self.env.is_main:
            return
        extra = {**meta, "method_state": self.method.state_dict(),
                 "grad_scaler": scaler.state_dict() if scaler is not None else None,
                 "rng_per_rank": rng_per_rank}
        save_checkpoint(self.out_dir / "checkpoint.pt", core, optimizer, scheduler, step, extra)

    def _resume(self, core, optimizer, scheduler, scaler) -> int:
        from .loop import _set_rng_state

        cfg = self.config
        path = self.out_dir / "checkpoint.pt" if cfg.resume == "auto" else Path(cfg.resume)
        start, extra = load_checkpoint(path, core, optimizer, scheduler, map_location=self.env.device)
        if extra.get("method") not in (None, self.method.name):
            raise ValueError(f"resume: {path} was written by method {extra.get('method')!r}, "
                             f"not {self.method.name!r}")
        self.method.load_state_dict(extra.get("method_state") or {})
        if scaler is not None and extra.get("grad_scaler"):
            scaler.load_state_dict(extra["grad_scaler"])
        per_rank = extra.get("rng_per_rank")
        if per_rank and len(per_rank) == self.env.world_size:
            _set_rng_state(per_rank[self.env.rank])
        if self.env.is_main:
            print(f"resumed from {path} at step {start}", flush=True)
        return start

    def _check_finite(self, loss: torch.Tensor, logs: dict[str, float], step: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
        all_reduce_sum(bad)  # every rank must stop together, not hang in the next all-reduce (no-op for one)
        if float(bad) > 0:
            terms = {k: v for k, v in logs.items() if k.startswith("loss")}
            raise FloatingPointError(f"non-finite loss at step {step} (on at least one rank); terms: {terms}; "
                                     f"nothing was updated for this step, the last checkpoint is intact")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train from scratch or ``resume``, evaluate, write ``metrics.json``; returns the metrics."""
        cfg, env, method, recipe = self.config, self.env, self.method, self.method.recipe
        t_start = time.time()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        core = self.model.to(env.device)
        if cfg.sync_bn and env.distributed:
            core = nn.SyncBatchNorm.convert_sync_batchnorm(core)
        core.train()
        method.setup(core, env.device)
        optimizer = method.build_optimizer(core)
        scheduler = method.build_scheduler(optimizer)
        scaler = torch.amp.GradScaler(env.device.type) if cfg.amp == "fp16" else None
        start = self._resume(core, optimizer, scheduler, scaler) if cfg.resume else 0
        model: nn.Module = core
        if env.distributed:
            model = nn.parallel.DistributedDataParallel(
                core, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                find_unused_parameters=method.find_unused_parameters)
        if cfg.compile:
            model = torch.compile(model)
        stop = recipe.iters if cfg.stop_at is None else cfg.stop_at
        meta = self._metadata()
        if env.is_main:
            print(f"{method.name}: K={self.train_set.num_classes} images={len(self.train_set)} "
                  f"crop={recipe.crop_size} batch={recipe.batch_size} ({self.local_batch}/process x "
                  f"{env.world_size}) iters={recipe.iters} device={env.device} amp={cfg.amp}", flush=True)
            if not cfg.resume and (self.out_dir / "log.csv").exists():
                (self.out_dir / "log.csv").unlink()  # a fresh run starts a fresh log
        writer = self._tensorboard() if env.is_main and cfg.tensorboard else None
        log = CSVLogger(self.out_dir / "log.csv") if env.is_main else None
        keys = ("step", "lr", "time_s", *method.log_keys)
        batches = self._batches(start)
        losses: list[float] = []
        evals: list[dict[str, Any]] = []
        t_train = time.time()
        bar = progress(total=recipe.iters, initial=start, desc="train", disable=not (cfg.show_progress and env.is_main))
        step = start
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
                losses.append(float(logs["loss"]))
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
                if (cfg.ckpt_every and done % cfg.ckpt_every == 0) or done == stop:
                    self._save(core, optimizer, scheduler, scaler, done, meta)
                if cfg.eval_every and done % cfg.eval_every == 0 and done < recipe.iters:
                    evals.append(self._evaluate(model, done, num_vis=0, writer=writer))
        finally:
            bar.close()
            if log is not None:
                log.close()
        train_time = time.time() - t_train
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
        metrics.update({
            "iters": recipe.iters, "resumed_from": start, "world_size": env.world_size,
            "loss_first10": float(np.mean(losses[:10])) if losses else None,
            "loss_last10": float(np.mean(losses[-10:])) if losses else None,
            "train_time_s": train_time, "eval_time_s": time.time() - t_eval, "wall_time_s": time.time() - t_start,
            "class_names": list(self.train_set.class_names), "periodic_evaluations": evals,
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
            with open(self.out_dir / "metrics.json", "w") as f:
                json.dump(metrics, f, indent=2, default=str)
            print(format_summary(metrics) + f" | {metrics['wall_time_s']:.0f} s -> {self.out_dir / 'metrics.json'}",
                  flush=True)
        if writer is not None:
            writer.close()
        barrier()
        return metrics

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

    def _evaluate(self, model: nn.Module, step: int, *, num_vis: int, writer=None) -> dict[str, Any]:
        cfg, env = self.config, self.env
        if self.pseudo_set is None and self.seg_set is None:
            return {"step": step}
        broadcast_buffers(unwrap_model(model))  # every rank evaluates rank 0's (the checkpoint's) statistics
        res = evaluate_method(self.method, model, pseudo_set=self.pseudo_set, seg_set=self.seg_set,
                              pseudo_split=self.pseudo_split, seg_split=self.seg_split, device=env.device,
                              eval_long_side=cfg.eval_long_side, max_images=cfg.max_eval_images,
                              out_dir=self.out_dir if env.is_main else None, num_vis=num_vis,
                              show_progress=cfg.show_progress and env.is_main, rank=env.rank,
                              world_size=env.world_size, seg_inference=cfg.eval_inference, crf=cfg.eval_crf)
        res["step"] = step
        if env.is_main:
            if step < self.method.recipe.iters:
                print(format_summary(res, step), flush=True)
            if writer is not None:
                for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered"):
                    if k in res and not math.isnan(res[k]):
                        writer.add_scalar(f"eval/{k}", res[k], step)
        return res

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("tensorboard: --tensorboard needs the tensorboard package "
                              "(pip install 'wsseg[tensorboard]')") from err
        return SummaryWriter(str(self.out_dir / "tb"))
