"""Tensor-transforming modules: CAM fusion, refiners (PAR, PAMR, VARM), affinity heads, inference fusion."""

from .adaptive_k_pooling import AdaptiveKOutput, AdaptiveKPooling, adaptive_k_pooling
from .affinity_from_attention import AffinityFromAttention, affinity_from_attention
from .affinity_propagation import AffinityPropagation, affinity_propagation, token_grid_size
from .aspp_decoder import ASPP, ASPPDecoder
from .cosa_teacher_inference import CoSATeacherInference, CoSATeacherOutput, cosa_teacher_cam, cosa_teacher_inference
from .cross_view import inverse_view, make_view
from .gci_head import GCIHead, GlobalCueInjection, StochasticGate, stochastic_gate
from .hv_bilstm import HVBiLSTM, hv_bilstm, keras_lstm_init_
from .large_fov_head import LargeFOVHead, large_fov_head
from .low_rank_factorization import EMFactorization, LowRankFactorization, LowRankOutput, em_factorize
from .mosaic import Mosaic2x2, Unmosaic2x2, mosaic_2x2, unmosaic_2x2
from .multi_scale_cam import (
    MultiScaleCAM,
    fuse_multi_scale_cams,
    minmax_normalize,
    multi_scale_cam,
    multi_scale_inputs,
    ordered_scales,
)
from .multi_scale_inference import MultiScaleInference, multi_scale_inference
from .ngwp_pooling import NGWPPooling, NGWPTerms, ngwp_pooling, ngwp_score
from .pamr import PAMR, pamr
from .patch_classifier import PatchClassifier, patch_classifier
from .patch_grid_transform import PatchGridTransform, patch_grid_transform, patch_grid_view1_to_view2
from .permutohedral import PermutohedralLattice, permutohedral_filter
from .pixel_adaptive_refine import PixelAdaptiveRefine, pixel_adaptive_refine
from .prototype_init import PrototypeInit, class_prototypes
from .segformer_head import SegFormerHead, segformer_head
from .slrnet_aux_head import SLRNetAuxHead, prepend_background
from .variation_aware_refine import VariationAwareRefine, variation_aware_refine

__all__ = [
    "adaptive_k_pooling",
    "AdaptiveKOutput",
    "AdaptiveKPooling",
    "affinity_from_attention",
    "affinity_propagation",
    "AffinityFromAttention",
    "AffinityPropagation",
    "ASPP",
    "ASPPDecoder",
    "class_prototypes",
    "CoSATeacherInference",
    "CoSATeacherOutput",
    "cosa_teacher_cam",
    "cosa_teacher_inference",
    "em_factorize",
    "EMFactorization",
    "large_fov_head",
    "LargeFOVHead",
    "LowRankFactorization",
    "LowRankOutput",
    "fuse_multi_scale_cams",
    "GCIHead",
    "GlobalCueInjection",
    "hv_bilstm",
    "HVBiLSTM",
    "keras_lstm_init_",
    "minmax_normalize",
    "multi_scale_cam",
    "multi_scale_inference",
    "multi_scale_inputs",
    "ordered_scales",
    "MultiScaleCAM",
    "MultiScaleInference",
    "pamr",
    "PatchGridTransform",
    "patch_grid_transform",
    "patch_grid_view1_to_view2",
    "PAMR",
    "patch_classifier",
    "PatchClassifier",
    "permutohedral_filter",
    "PermutohedralLattice",
    "prepend_background",
    "PrototypeInit",
    "pixel_adaptive_refine",
    "PixelAdaptiveRefine",
    "segformer_head",
    "SegFormerHead",
    "SLRNetAuxHead",
    "stochastic_gate",
    "StochasticGate",
    "token_grid_size",
    "variation_aware_refine",
    "VariationAwareRefine",
    "inverse_view",
    "make_view",
    "NGWPPooling",
    "NGWPTerms",
    "ngwp_pooling",
    "ngwp_score",
    "mosaic_2x2",
    "Mosaic2x2",
    "unmosaic_2x2",
    "Unmosaic2x2",
]
