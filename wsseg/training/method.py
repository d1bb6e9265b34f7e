"""The protocol a WSSS method implements to train on the shared engine (:class:`~wsseg.training.Trainer`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TrainingMethod", "check_training_batch", "zero_weighted"]


def zero_weighted(*outputs: Tensor) -> Tensor:
    """``0 * sum(outputs)``: exact zero gradients for every parameter the outputs depend on.

    What the official codes get by multiplying inactive loss terms by 0 (TSCD's classification-only phase,
    CoSA's loss warm-up), without computing those terms. The sums run in float32 (no fp16 overflow to inf,
    which would turn 0·inf into NaN); the result is exactly 0 for finite outputs and NaN otherwise, as the
    official zero-weighted terms.
    """
    total = outputs[0].sum(dtype=torch.float32)
    for t in outputs[1:]:
        total = total + t.sum(dtype=torch.float32)
    return total * 0.0


def check_training_batch(batch: Mapping[str, Tensor], model: nn.Module, step: int,
                         extra_images: tuple[str, ...] = ()) -> tuple[Tensor, Tensor, Tensor | None]:
    """Validate a training batch; returns ``(image, labels as image dtype, valid as bool or None)``.

    Args:
        batch: dict with ``image`` (B, 3, H, W) float, ``label`` (B, K), optional ``valid`` (B, H, W) and
            the keys in ``extra_images`` (further views of the same shape as ``image``).
        model: the (possibly wrapped) network; its ``num_classes`` (if any) is checked against K.
        step: the iteration (must be non-negative).

    Raises:
        ValueError: for a batch that is not a dict with ``image`` and ``label``, disagreeing shapes or a
            negative step.
        TypeError: for a non-floating-point image or a wrongly typed ``valid`` mask.
    """
    from ..utils.validation import check_labels, check_tensor
    from .distributed import unwrap_model

    if not isinstance(batch, Mapping) or "image" not in batch or "label" not in batch:
        raise ValueError("batch: expected a dict with at least 'image' (B, 3, H, W) and 'label' (B, K)")
    x = check_tensor(batch["image"], "batch['image']", ndim=4, dims="(B, 3, H, W)", dtype="float")
    for key in extra_images:
        if key not in batch:
            raise ValueError(f"batch: expected a {key!r} entry (B, 3, H, W) next to 'image'")
        v = check_tensor(batch[key], f"batch[{key!r}]", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if v.shape != x.shape:
            raise ValueError(f"batch[{key!r}]: expected the shape of batch['image'] {tuple(x.shape)}, "
                             f"got {tuple(v.shape)}")
    y = batch["label"]
    check_tensor(y, "batch['label']", ndim=2, dims="(B, K)")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"batch['label']: expected (B, K) with B={x.shape[0]}, got shape {tuple(y.shape)}")
    if out_k := getattr(unwrap_model(model), "num_classes", None):
        check_labels(y, "batch['label']", x.shape[0], out_k)
    valid = batch.get("valid")
    if valid is not None:
        check_tensor(valid, "batch['valid']", ndim=3, dims="(B, H, W)", dtype="bool_or_int")
        if tuple(valid.shape) != (x.shape[0], *x.shape[-2:]):
            raise ValueError(f"batch['valid']: expected shape {(x.shape[0], *x.shape[-2:])}, "
                             f"got {tuple(valid.shape)}")
        valid = valid.bool()
    if int(step) < 0:
        raise ValueError(f"step: expected a non-negative int, got {step}")
    return x, y.to(x.dtype), valid


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
    * ``train_transform(long_side)``: the per-sample training transform (default: the AFA/TSCD
      :func:`~wsseg.data.train_transform` from the recipe's ``crop_size``, ``scale_range`` and ``seed``);
      a method with its own views (CoSA's weak/strong pair) returns its own;
    * ``setup(model, device)``: called by the engine once the model is on its device, before a resume
      loads checkpoints (move or build method-owned networks such as an EMA teacher);
    * ``after_optimizer_step(model, step)``: hook after every optimizer step (EMA teachers, queues);
    * ``cam(model, images)``: normalised CAM ``(B, K, H, W)`` in [0, 1] at the images' size;
    * ``pseudo_label(model, images, labels, valid, cam)``: the training target ``(B, H, W)`` in
      {0..K, 255}; ``cam`` may be passed to avoid recomputing it;
    * ``predict(model, images)``: segmentation logits ``(B, K+1, H, W)`` at the images' size;
    * ``state_dict()`` / ``load_state_dict(state)``: extra training state to checkpoint (EMA teacher,
      queues); default none;
    * ``find_unused_parameters``: the DDP flag, True only where an iteration leaves parameters unused;
    * ``trains_segmentation``: whether training fits the output ``predict`` reads (default True; False for a
      classification-only recipe whose decoder keeps its initial weights, which
      :func:`~wsseg.training.evaluate_method` then does not score);
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

    @property
    def trains_segmentation(self) -> bool:
        """Whether training fits the segmentation output that :meth:`predict` reads (here: True).

        A classification-only recipe (TSCD's and CoSA's ``"cam"``) returns False: its decoder keeps its
        initial weights, so :func:`~wsseg.training.evaluate_method` skips the segmentation score by default
        (it would measure an untrained head and cost a network pass per evaluation image)."""
        return True

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

    def train_transform(self, long_side: int | None = None) -> Any:
        """The per-sample training transform ``t(sample, rng) -> sample`` (see :mod:`wsseg.data.transforms`).

        Default: :func:`~wsseg.data.train_transform` (rescale, flip, crop with zero padding, normalise) with
        the recipe's ``crop_size``, ``scale_range`` (default (0.5, 2.0)) and ``seed``; ``long_side`` first
        resizes every photo so its longer side has that length (``--train-long-side``).
        """
        from ..data import train_transform

        r = self.recipe
        return train_transform(r.crop_size, scale_range=getattr(r, "scale_range", (0.5, 2.0)), seed=r.seed,
                               long_side=long_side)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once by the engine after ``model`` was moved to ``device`` (before resuming). Default: nothing."""

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
