"""Tensor-transforming modules: CAM fusion, refiners (PAR, PAMR, VARM), affinity heads, inference fusion."""

from .affinity_from_attention import AffinityFromAttention, affinity_from_attention
from .affinity_propagation import AffinityPropagation, affinity_propagation, token_grid_size
from .multi_scale_cam import (
    MultiScaleCAM,
    fuse_multi_scale_cams,
    minmax_normalize,
    multi_scale_cam,
    multi_scale_inputs,
)
from .multi_scale_inference import MultiScaleInference, multi_scale_inference
from .pamr import PAMR, pamr
from .pixel_adaptive_refine import PixelAdaptiveRefine, pixel_adaptive_refine
from .segformer_head import SegFormerHead, segformer_head
from .variation_aware_refine import VariationAwareRefine, variation_aware_refine

__all__: list[str] = ["SegFormerHead", "segformer_head", "MultiScaleInference", "multi_scale_inference", "AffinityFromAttention", "affinity_from_attention", "AffinityPropagation", "affinity_propagation", "token_grid_size", "MultiScaleCAM", "fuse_multi_scale_cams", "minmax_normalize", "multi_scale_cam", "multi_scale_inputs", "PAMR", "pamr", "PixelAdaptiveRefine", "pixel_adaptive_refine", "VariationAwareRefine", "variation_aware_refine"]
