"""Class-name tables: PASCAL VOC 2012 (20 classes), COCO 2017 (80 classes) and the COCO → VOC map.

Foreground classes only (``common.md`` §0): index ``k`` of an image-level label vector is class
``k``, and the same class is value ``k + 1`` in a label map (0 is background).

Example:
    >>> from wsseg.data.class_names import COCO_CLASSES, COCO_TO_VOC, VOC_CLASSES
    >>> len(VOC_CLASSES), len(COCO_CLASSES), len(COCO_TO_VOC)
    (20, 80, 20)
    >>> COCO_TO_VOC["couch"]
    'sofa'

Source:
    PASCAL VOC 2012 (Everingham et al., IJCV 2010); COCO (Lin et al., ECCV 2014), official
    ``instances_*.json`` category table.
"""

from __future__ import annotations

__all__ = ["VOC_CLASSES", "COCO_CLASSES", "COCO_CATEGORY_IDS", "COCO_TO_VOC"]

#: The 20 PASCAL VOC 2012 foreground classes, in the official (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

#: The 80 COCO 2017 "things" classes, ordered by their official category id.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: Official (non-contiguous, 1..90) COCO category id of each entry of :data:`COCO_CLASSES`.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
    *range(84, 91),
)

#: COCO class name → VOC class name for the 20 classes the two sets share.
COCO_TO_VOC: dict[str, str] = {
    "airplane": "aeroplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "dining table": "diningtable",
    "dog": "dog",
    "horse": "horse",
    "motorcycle": "motorbike",
    "person": "person",
    "potted plant": "pottedplant",
    "sheep": "sheep",
    "couch": "sofa",
    "train": "train",
    "tv": "tvmonitor",
}

assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80 and len(COCO_CATEGORY_IDS) == 80
