"""The protocol a WSSS method implements to train on the shared engine (:class:`~wsseg.training.Trainer`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TrainingMethod"]


class TrainingMethod:
    """Base class of a method on the training engine: what one iteration computes, nothing else.

    The engine (:class:`~wsseg.training.Trainer`) owns data loading, the loop, mixed precision, DDP,
    the optimizer and schedule, checkpoints, logging and evaluation. A method supplies:

    * ``name``: registry-style name written to logs and checkpoints (``"tscd"``);
    * ``recipe``: a dataclass of hyperparameters with at least ``iters``, ``batch_size`` (global, over all
      ranks), ``crop_size``, ``scale_range`` and ``seed``;
    * ``build_model(num_classes, **kwargs)``: the ``nn.Module`` to train (called after seeding);
    * ``build_optimizer(model)``: default AdamW over ``model.param_groups`` (:func:`~wsseg.training.build_optimizer`);
    * ``build_scheduler(optimizer)``: default :class:`~wsseg.optim.PolyWarmupLR` (:func:`~wsseg.training.build_scheduler`);
    * ``training_step(model, batch, step) -> (loss, logs)``: a scalar tensor with grad and a dict of
      floats; ``model`` may be wrapped (DDP, ``torch.compile``): call it for gradient-carrying forwards
      and use :func:`~wsseg.training.unwrap_model` for attributes;
    * ``after_optimizer_step(model, step)``: hook after every optimizer step (EMA teachers, queues);
    * ``cam(model, images)``: normalised CAM ``(B, K, H, W)`` in [0, 1] at the images' size;
    * ``pseudo_label(model, images, labels, valid, cam)``: the training target ``(B, H, W)`` in
      {0..K, 255}; ``cam`` may be passed to avoid recomputing it;
    * ``predict(model, images)``: segmentation logits ``(B, K+1, H, W)`` at the images' size;
    * ``state_dict()`` / ``load_state_dict(state)``: extra training state to checkpoint (EMA teacher,
      queues); default none;
    * ``find_unused_parameters``: the DDP flag, True only where an iteration leaves parameters unused;
    * ``log_keys``: the CSV columns after ``step, lr, time_s`` (missing values left empty).

    Subclasses override what differs; ``training_step``, ``build_model`` and ``cam`` have no default.
    """

    name: str = "method"
    find_unused_parameters: bool = False
    log_keys: tuple[str, ...] = ("loss",)

    def __init__(self, recipe: Any) -> None:
        for field in ("iters", "batch_size", "crop_size", "seed"):
            if not hasattr(recipe, field):
                raise TypeError(f"recipe: expected a recipe with a {field!r} field, got {type(recipe).__name__}")
        self.recipe = recipe

    # ------------------------------------------------------------------ construction
    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """The network to train for ``num_classes`` foreground classes."""
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """The optimizer (default: AdamW over ``model.param_groups`` with the recipe's values)."""
        from .loop import build_optimizer

        return build_optimizer(model, self.recipe)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The per-iteration LR scheduler (default: poly with linear warm-up from the recipe)."""
        from .loop import build_scheduler

        return build_scheduler(optimizer, self.recipe)

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step`` (counted from 0) on ``batch``."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (EMA teacher update, queue push, ...). Default: nothing."""

    # ------------------------------------------------------------------ inference
    def cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """Normalised CAM ``(B, K, H, W)`` in [0, 1] of ``images`` (no grad)."""
        raise NotImplementedError

    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                     cam: Tensor | None = None) -> Tensor:
        """The training target ``(B, H, W)`` in {0..K, 255} (default: the CAM thresholded at 0.45)."""
        from ..pseudo import cam_to_label

        cam = self.cam(model, images) if cam is None else cam
        return cam_to_label(cam, labels.to(cam.dtype), valid,
                            bkg_thre=float(getattr(self.recipe, "cam_eval_threshold", 0.45)))

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Segmentation logits ``(B, K+1, H, W)`` at the size of ``images`` (single scale)."""
        from .distributed import unwrap_model

        core = unwrap_model(model)
        fit = getattr(core, "fit_input", None) or (lambda x: x)
        seg = core(fit(images)).seg
        return F.interpolate(seg.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Extra state saved in checkpoints (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, iters={self.recipe.iters})"
