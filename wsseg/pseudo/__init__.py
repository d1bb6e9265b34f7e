"""CAM → pseudo-label tools: thresholds, dual-threshold builders, affinity labels, dense CRF."""

from .affinity_label import AffinityLabel, affinity_label, radius_window
from .cam_to_label import CAMToLabel, cam_to_label
from .dense_crf import DenseCRF, dense_crf
from .dual_threshold import DualThresholdPseudoLabel, dual_threshold_pseudo_label, varm_pseudo_label

__all__ = [
    "affinity_label",
    "AffinityLabel",
    "cam_to_label",
    "CAMToLabel",
    "dense_crf",
    "DenseCRF",
    "dual_threshold_pseudo_label",
    "DualThresholdPseudoLabel",
    "radius_window",
    "varm_pseudo_label",
]
