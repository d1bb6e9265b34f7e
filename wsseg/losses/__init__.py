"""Losses: balanced segmentation CE, affinity loss, dense energy loss, SCD, ..."""

from .affinity_loss import AffinityLoss, affinity_loss
from .balanced_segmentation import BalancedSegmentationLoss, balanced_segmentation_loss
from .cam_contrastive_separation import CAMContrastiveSeparation, cam_contrastive_separation
from .dense_energy import DenseEnergyLoss, dense_energy_loss
from .self_correspondence_distillation import SelfCorrespondenceDistillation, self_correspondence_distillation
from .swapped_assignment import (
    SwappedAssignmentLoss,
    SwappedAssignmentTerms,
    cam_to_seg_loss,
    seg_to_cam_loss,
    swapped_assignment_loss,
)

__all__: list[str] = [
    "BalancedSegmentationLoss",
    "balanced_segmentation_loss",
    "CAMContrastiveSeparation",
    "cam_contrastive_separation",
    "DenseEnergyLoss",
    "dense_energy_loss",
    "SelfCorrespondenceDistillation",
    "self_correspondence_distillation",
    "AffinityLoss",
    "affinity_loss",
    "SwappedAssignmentLoss",
    "SwappedAssignmentTerms",
    "swapped_assignment_loss",
    "cam_to_seg_loss",
    "seg_to_cam_loss",
]
