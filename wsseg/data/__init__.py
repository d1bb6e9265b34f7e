"""Datasets (PASCAL VOC layout, COCO instances JSON, built-in synthetic) and training transforms."""

from . import transforms
from .base import SegmentationDataset
from .class_names import COCO_CLASSES, COCO_TO_VOC, VOC_CLASSES
from .coco import COCOSegmentation, rasterize_annotations, rle_decode
from .synthetic import SyntheticShapes
from .transforms import eval_transform, train_transform
from .voc import VOCSegmentation, load_cls_labels

__all__: list[str] = [
    "COCOSegmentation",
    "COCO_CLASSES",
    "COCO_TO_VOC",
    "SegmentationDataset",
    "SyntheticShapes",
    "VOCSegmentation",
    "VOC_CLASSES",
    "eval_transform",
    "load_cls_labels",
    "rasterize_annotations",
    "rle_decode",
    "train_transform",
    "transforms",
]
