"""Evaluation: confusion-matrix mIoU, GT-label filtering, evaluation helpers."""

from .evaluate import DualMIoU, evaluate_segmentation, format_report
from .filter_logits import filter_logits_by_labels
from .segmentation_metric import SegmentationMetric, confusion_matrix, miou_from_confusion

__all__: list[str] = ["DualMIoU", "SegmentationMetric", "confusion_matrix", "evaluate_segmentation", "filter_logits_by_labels", "format_report", "miou_from_confusion"]
