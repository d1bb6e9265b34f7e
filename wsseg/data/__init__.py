"""Datasets (PASCAL VOC layout, COCO instances JSON, built-in synthetic) and training transforms."""

from . import transforms
from .base import SegmentationDataset
from .class_names import COCO_CLASSES, COCO_TO_VOC, VOC_CLASSES, read_class_names
from .coco import COCOSegmentation
from .color_jitter import ColorJitter, color_jitter
from .dataset_check import DataProblem, check_coco, check_dataset, check_voc
from .random_resized_crop import RandomResizedCrop
from .synthetic import SyntheticShapes
from .transforms import eval_transform, slrnet_train_transform, train_transform
from .vitpcm_views import ViTPCMTwoViewTransform, ViTPCMViewParams, vitpcm_color_jitter
from .voc import VOCSegmentation, load_cls_labels
from .weak_strong import WeakStrongTransform

__all__: list[str] = [
    "COCOSegmentation",
    "COCO_CLASSES",
    "COCO_TO_VOC",
    "DataProblem",
    "ColorJitter",
    "RandomResizedCrop",
    "SegmentationDataset",
    "SyntheticShapes",
    "VOCSegmentation",
    "VOC_CLASSES",
    "ViTPCMTwoViewTransform",
    "ViTPCMViewParams",
    "vitpcm_color_jitter",
    "WeakStrongTransform",
    "check_coco",
    "check_dataset",
    "check_voc",
    "color_jitter",
    "eval_transform",
    "load_cls_labels",
    "read_class_names",
    "slrnet_train_transform",
    "train_transform",
    "transforms",
]
