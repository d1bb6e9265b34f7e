"""Losses: balanced segmentation CE, affinity loss, dense energy loss, SCD, ..."""

from .affinity_loss import AffinityLoss, affinity_loss
from .balanced_segmentation import BalancedSegmentationLoss, balanced_segmentation_loss
from .dense_energy import DenseEnergyLoss, dense_energy_loss
from .self_correspondence_distillation import SelfCorrespondenceDistillation, self_correspondence_distillation

__all__: list[str] = [
    "BalancedSegmentationLoss",
    "balanced_segmentation_loss",
    "DenseEnergyLoss",
    "dense_energy_loss",
    "SelfCorrespondenceDistillation",
    "self_correspondence_distillation",
    "AffinityLoss",
    "affinity_loss",
]
