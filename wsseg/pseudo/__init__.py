"""CAM → pseudo-label tools: thresholds, dual-threshold builders, affinity labels, dense CRF."""

from .affinity_label import AffinityLabel, affinity_label, radius_window
from .cam_to_label import CAMToLabel, cam_to_label
from .dense_crf import DenseCRF, dense_crf
from .dual_threshold import DualThresholdPseudoLabel, dual_threshold_pseudo_label, varm_pseudo_label
from .merge_class_labels import MergeClassLabels, merge_class_labels
from .perplexity_weight import PerplexityReliabilityWeight, perplexity_reliability_weight
from .pixel_to_patch_label import PixelToPatchLabel, pixel_to_patch_label
from .raw_cam_pseudo_label import RawCAMPseudoLabel, RawCAMPseudoLabelOutput, raw_cam_pseudo_label
from .seg_pseudo_label import SegPseudoLabel, seg_pseudo_label
from .slrnet_postprocess import SLRNetPostprocess, slrnet_postprocess, slrnet_predicted_classes
from .slrnet_pseudo_label import SLRNetPseudoLabel, slrnet_pseudo_label
from .threshold_search import GMM1DResult, ThresholdSearch, gmm_1d

__all__ = [
    "affinity_label",
    "AffinityLabel",
    "cam_to_label",
    "CAMToLabel",
    "dense_crf",
    "DenseCRF",
    "dual_threshold_pseudo_label",
    "DualThresholdPseudoLabel",
    "gmm_1d",
    "merge_class_labels",
    "MergeClassLabels",
    "GMM1DResult",
    "perplexity_reliability_weight",
    "PerplexityReliabilityWeight",
    "pixel_to_patch_label",
    "PixelToPatchLabel",
    "radius_window",
    "raw_cam_pseudo_label",
    "RawCAMPseudoLabel",
    "RawCAMPseudoLabelOutput",
    "seg_pseudo_label",
    "SegPseudoLabel",
    "slrnet_postprocess",
    "SLRNetPostprocess",
    "slrnet_predicted_classes",
    "slrnet_pseudo_label",
    "SLRNetPseudoLabel",
    "ThresholdSearch",
    "varm_pseudo_label",
]
