"""Losses: balanced segmentation CE, affinity loss, dense energy loss, SCD, ..."""

from .affinity_loss import AffinityLoss, affinity_loss
from .balanced_segmentation import BalancedSegmentationLoss, balanced_segmentation_loss
from .cam_contrastive_separation import CAMContrastiveSeparation, cam_contrastive_separation
from .code_consistency import CodeConsistencyLoss, code_consistency_loss, max_mask
from .dense_energy import DenseEnergyLoss, dense_energy_loss
from .equivariance import EquivarianceLoss, equivariance_loss
from .gated_class_balanced_ce import GatedClassBalancedCE, gated_class_balanced_ce
from .mask_consistency import MaskConsistencyLoss, mask_consistency_loss
from .patch_contrast import PatchContrastLoss, patch_contrast_loss
from .pooled_bce import PooledBCELoss, pooled_bce
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
    "CodeConsistencyLoss",
    "code_consistency_loss",
    "max_mask",
    "GatedClassBalancedCE",
    "gated_class_balanced_ce",
    "MaskConsistencyLoss",
    "mask_consistency_loss",
    "PatchContrastLoss",
    "patch_contrast_loss",
    "PooledBCELoss",
    "pooled_bce",
    "EquivarianceLoss",
    "equivariance_loss",
]
