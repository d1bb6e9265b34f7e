"""The shared training engine (:class:`Trainer`, DDP, AMP, exact resume, evaluation), the protocol a
method implements (:class:`TrainingMethod`), the methods' recipes and loop helpers."""

from .apc import APCMethod, APCRecipe, APCTrainingStep
from .cosa import CoSAMethod, CoSAPseudoLabels, CoSARecipe, CoSATrainingStep
from .distributed import (
    DistributedEnv,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
    unwrap_model,
)
from .ema_teacher import EMATeacher, ema_update_
from .evaluation import evaluate_method, format_summary
from .loop import (
    CSVLogger,
    build_optimizer,
    build_scheduler,
    infinite_loader,
    load_checkpoint,
    move_batch,
    progress,
    read_checkpoint,
    save_checkpoint,
    seed_everything,
)
from .method import TrainingMethod, check_training_batch, zero_weighted
from .recipe import RecipeMixin
from .sampler import ResumableDistributedSampler, SeededSamples, collate_samples
from .slrnet import SLRNetMethod, SLRNetRecipe, SLRNetTrainingStep
from .trainer import RESUME_MAY_CHANGE, RUN_FILES, TrainConfig, Trainer
from .tscd import TSCDMethod, TSCDRecipe, TSCDTrainingStep, fit_to_stride, tscd_training_step
from .vitpcm import ViTPCMMethod, ViTPCMRecipe, ViTPCMTrainingStep, vitpcm_pseudo_label

__all__: list[str] = [
    "APCMethod",
    "APCRecipe",
    "APCTrainingStep",
    "ViTPCMMethod",
    "ViTPCMRecipe",
    "ViTPCMTrainingStep",
    "vitpcm_pseudo_label",
    "CoSAMethod",
    "CoSAPseudoLabels",
    "CoSARecipe",
    "CoSATrainingStep",
    "RecipeMixin",
    "SLRNetMethod",
    "SLRNetRecipe",
    "SLRNetTrainingStep",
    "check_training_batch",
    "zero_weighted",
    "CSVLogger",
    "DistributedEnv",
    "EMATeacher",
    "ResumableDistributedSampler",
    "SeededSamples",
    "TSCDMethod",
    "TSCDRecipe",
    "TSCDTrainingStep",
    "RESUME_MAY_CHANGE",
    "RUN_FILES",
    "TrainConfig",
    "Trainer",
    "TrainingMethod",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "build_optimizer",
    "build_scheduler",
    "cleanup_distributed",
    "ema_update_",
    "collate_samples",
    "evaluate_method",
    "fit_to_stride",
    "format_summary",
    "infinite_loader",
    "init_distributed",
    "load_checkpoint",
    "move_batch",
    "progress",
    "read_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "tscd_training_step",
    "unwrap_model",
]
