"""Training recipes (the per-iteration loss composition of each method) and generic loop helpers."""

from .loop import (
    CSVLogger,
    build_optimizer,
    build_scheduler,
    infinite_loader,
    load_checkpoint,
    move_batch,
    progress,
    save_checkpoint,
    seed_everything,
)
from .tscd import TSCDRecipe, TSCDTrainingStep, fit_to_stride, tscd_training_step

__all__: list[str] = [
    "CSVLogger",
    "TSCDRecipe",
    "TSCDTrainingStep",
    "build_optimizer",
    "build_scheduler",
    "fit_to_stride",
    "infinite_loader",
    "load_checkpoint",
    "move_batch",
    "progress",
    "save_checkpoint",
    "seed_everything",
    "tscd_training_step",
]
