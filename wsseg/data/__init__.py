"""Datasets (PASCAL VOC layout, COCO instances JSON, built-in synthetic) and training transforms."""

from . import transforms
from .base import SegmentationDataset
from .class_names import COCO_CLASSES, COCO_TO_VOC, VOC_CLASSES, read_class_names
from .coco import COCOSegmentation
from .synthetic import SyntheticShapes
from .transforms import eval_transform, train_transform
from .voc import VOCSegmentation, load_cls_labels
from .weak_strong import WeakStrongTransform

__all__: list[str] = [
    "COCOSegmentation",
    "COCO_CLASSES",
    "COCO_TO_VOC",
    "SegmentationDataset",
    "SyntheticShapes",
    "VOCSegmentation",
    "VOC_CLASSES",
    "WeakStrongTransform",
    "eval_transform",
    "load_cls_labels",
    "read_class_names",
    "train_transform",
    "transforms",
]
