"""Tensor-transforming modules: CAM fusion, refiners (PAR, PAMR, VARM), affinity heads, inference fusion."""

from .affinity_from_attention import AffinityFromAttention, affinity_from_attention
from .affinity_propagation import AffinityPropagation, affinity_propagation, token_grid_size
from .cosa_teacher_inference import CoSATeacherInference, CoSATeacherOutput, cosa_teacher_inference
from .large_fov_head import LargeFOVHead, large_fov_head
from .multi_scale_cam import (
    MultiScaleCAM,
    fuse_multi_scale_cams,
    minmax_normalize,
    multi_scale_cam,
    multi_scale_inputs,
    ordered_scales,
)
from .multi_scale_inference import MultiScaleInference, multi_scale_inference
from .pamr import PAMR, pamr
from .permutohedral import PermutohedralLattice, permutohedral_filter
from .pixel_adaptive_refine import PixelAdaptiveRefine, pixel_adaptive_refine
from .segformer_head import SegFormerHead, segformer_head
from .variation_aware_refine import VariationAwareRefine, variation_aware_refine

__all__ = [
    "affinity_from_attention",
    "affinity_propagation",
    "AffinityFromAttention",
    "AffinityPropagation",
    "CoSATeacherInference",
    "CoSATeacherOutput",
    "cosa_teacher_inference",
    "large_fov_head",
    "LargeFOVHead",
    "fuse_multi_scale_cams",
    "minmax_normalize",
    "multi_scale_cam",
    "multi_scale_inference",
    "multi_scale_inputs",
    "ordered_scales",
    "MultiScaleCAM",
    "MultiScaleInference",
    "pamr",
    "PAMR",
    "permutohedral_filter",
    "PermutohedralLattice",
    "pixel_adaptive_refine",
    "PixelAdaptiveRefine",
    "segformer_head",
    "SegFormerHead",
    "token_grid_size",
    "variation_aware_refine",
    "VariationAwareRefine",
]
