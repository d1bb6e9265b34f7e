"""COCO (instances JSON) as a semantic-segmentation dataset with image-level labels, no pycocotools."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .base import SegmentationDataset
from .class_names import COCO_TO_VOC, VOC_CLASSES
from .voc import read_image

__all__ = ["COCOSegmentation", "rle_decode", "rasterize_annotations"]


def _rle_counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed RLE string (6-bit chunks, offset 48, differential from count i-2)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode a COCO run-length encoding into a boolean mask.

    ``rle = {"size": [h, w], "counts": ...}``; the runs alternate 0s and 1s starting with 0s and run
    through the pixels in **column-major** order. ``counts`` is either a list of ints (uncompressed RLE,
    as used by crowd annotations in ``instances_*.json``) or COCO's compressed string.

    Shape:
        - output: :math:`(h, w)`, bool.

    Raises:
        ValueError: if the runs do not add up to ``h * w`` or a run is negative.

    Example:
        >>> rle_decode({"size": [2, 3], "counts": [1, 2, 3]}).astype(int).tolist()
        [[0, 1, 0], [1, 0, 0]]

    Source:
        COCO, Lin et al. ECCV 2014; the RLE format of github.com/cocodataset/cocoapi (``maskApi.c``).
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"rle: expected a dict with 'size' [h, w] and 'counts', got {rle!r:.80}") from err
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = np.asarray(_rle_counts_from_string(counts) if isinstance(counts, str) else counts, dtype=np.int64)
    if (runs < 0).any() or runs.sum() != h * w:
        raise ValueError(f"rle: runs must be non-negative and sum to h*w = {h * w}, got sum {int(runs.sum())}")
    flat = np.repeat((np.arange(runs.size) % 2).astype(bool), runs)
    return flat.reshape((h, w), order="F")


def rasterize_annotations(anns: list[dict[str, Any]], height: int, width: int,
                          cat_to_value: dict[int, int], crowd_value: int = 255) -> np.ndarray:
    """Paint COCO instance annotations into one semantic label map.

    Instances are painted in decreasing ``area`` so smaller objects stay on top of larger ones.
    Polygons are filled with PIL ``ImageDraw.polygon`` (pixels whose integer centre lies inside or on
    the outline; an axis-aligned square with integer corners :math:`x_0..x_1, y_0..y_1` covers
    :math:`(x_1 - x_0 + 1)(y_1 - y_0 + 1)` pixels). RLE segmentations are decoded with
    :func:`rle_decode`. A crowd instance (``iscrowd=1``) of a kept class is painted ``crowd_value``;
    an instance whose category maps to 0 (dropped class) is painted background, covering what it hides.

    Args:
        anns: annotations of one image (``segmentation``, ``category_id``, ``area``, ``iscrowd``).
        height, width: image size.
        cat_to_value: category id → label value (``0`` background/dropped, ``1..K`` classes).
        crowd_value: value of crowd regions of kept classes (default 255 = ignore).

    Shape:
        - output: :math:`(H, W)`, uint8.

    Raises:
        ValueError: if an annotation has an unknown category id or an unsupported segmentation.

    Example:
        >>> ann = {"segmentation": [[1, 1, 3, 1, 3, 3, 1, 3]], "category_id": 7, "area": 4, "iscrowd": 0}
        >>> int((rasterize_annotations([ann], 5, 5, {7: 2}) == 2).sum())  # 3 x 3 pixels
        9
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    order = sorted(anns, key=lambda a: -float(a.get("area", 0.0)))
    for ann in order:
        cat = ann.get("category_id")
        if cat not in cat_to_value:
            raise ValueError(f"annotation {ann.get('id')}: unknown category_id {cat!r}")
        value = cat_to_value[cat]
        if ann.get("iscrowd", 0) and value > 0:
            value = crowd_value
        seg = ann.get("segmentation")
        if isinstance(seg, list):
            for poly in seg:
                if len(poly) >= 6:
                    pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
                    draw.polygon([tuple(p) for p in pts.tolist()], fill=int(value))
        elif isinstance(seg, dict):
            region = rle_decode(seg)
            if region.shape != (height, width):
                raise ValueError(f"annotation {ann.get('id')}: RLE size {region.shape} differs from the image "
                                 f"size {(height, width)}")
            arr = np.array(canvas)
            arr[region] = value
            canvas = Image.fromarray(arr)
            draw = ImageDraw.Draw(canvas)
        else:
            raise ValueError(f"annotation {ann.get('id')}: unsupported segmentation type {type(seg).__name__}")
    return np.asarray(canvas)


class COCOSegmentation(SegmentationDataset):
    """COCO instance annotations turned into semantic masks and image-level labels.

    Parses the official ``instances_*.json`` with :mod:`json` (no pycocotools). The image-level label
    is the set of categories present (after the class remap, crowd instances included). Semantic masks
    are rasterised on access by :func:`rasterize_annotations` (larger instances first, crowd → 255).

    ``classes="voc"`` maps COCO onto the 20 PASCAL VOC classes (airplane→aeroplane,
    motorcycle→motorbike, couch→sofa, dining table→diningtable, potted plant→pottedplant,
    tv→tvmonitor, the others by name, see :data:`~wsseg.data.class_names.COCO_TO_VOC`); the other 60
    categories become background. ``classes="all"`` keeps the categories of the JSON, numbered
    contiguously in increasing category id (the 80 COCO classes for the official files).

    Args:
        root: dataset folder.
        image_dir: image folder relative to ``root``.
        ann_file: instances JSON relative to ``root`` (or absolute).
        classes: ``"voc"`` (K = 20) or ``"all"`` (K = number of JSON categories, 80).
        transform: sample transform (default :func:`~wsseg.data.transforms.eval_transform`).
        skip_empty: drop images with no annotation at all.
        skip_unlabeled: drop images whose label vector is all zero after the remap (useless for WSSS
            training; e.g. a VOC-remapped image with only COCO-only classes).
        crowd_value: mask value of crowd regions of kept classes (default 255 = ignore).

    Shape:
        - sample ``image``: :math:`(3, H, W)`; ``mask``, ``valid``: :math:`(H, W)`; ``label``: :math:`(K,)`.

    Raises:
        ValueError: if ``classes`` is unknown or the JSON lacks ``images``/``annotations``/``categories``.
        FileNotFoundError: if ``root``, the image folder or the JSON is missing; on access, if an image
            file is missing (named).

    Example:
        >>> ds = wsseg.data.SyntheticShapes(num_images=2, size=32)  # COCO needs files; same interface
        >>> sorted(ds[1])
        ['image', 'label', 'mask', 'name', 'valid']

    Source:
        COCO, Lin et al. ECCV 2014 (cocodataset.org, instances JSON format); the 80-class WSSS COCO
        setting of AFA, Ru et al. CVPR 2022, github.com/rulixiang/afa, ``datasets/coco.py`` (which reads
        pre-converted masks; wsseg rasterises the JSON itself).
    """

    def __init__(self, root: str | os.PathLike, *, image_dir: str = "train2017",
                 ann_file: str | os.PathLike = "annotations/instances_train2017.json", classes: str = "voc",
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 skip_empty: bool = False, skip_unlabeled: bool = False, crowd_value: int = 255) -> None:
        super().__init__(transform)
        if classes not in ("voc", "all"):
            raise ValueError(f"classes: expected 'voc' or 'all', got {classes!r}")
        if not 0 <= int(crowd_value) <= 255:
            raise ValueError(f"crowd_value: expected an int in [0, 255], got {crowd_value!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: COCO folder not found: {self.root}")
        self.image_dir = self.root / image_dir
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir: image folder not found: {self.image_dir}")
        ann_path = Path(ann_file)
        ann_path = ann_path if ann_path.is_absolute() else self.root / ann_path
        if not ann_path.is_file():
            raise FileNotFoundError(f"ann_file: annotation file not found: {ann_path}")
        try:
            data = json.loads(ann_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"ann_file: cannot parse {ann_path} as JSON: {err}") from err
        for key in ("images", "annotations", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise ValueError(f"ann_file: {ann_path} has no {key!r} list (expected a COCO instances JSON)")
        self.classes = classes
        self.crowd_value = int(crowd_value)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        if classes == "all":
            self.class_names = tuple(c["name"] for c in cats)
            self.cat_to_value = {c["id"]: i + 1 for i, c in enumerate(cats)}
        else:
            self.class_names = VOC_CLASSES
            voc_index = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
            self.cat_to_value = {c["id"]: voc_index.get(COCO_TO_VOC.get(c["name"], ""), 0) for c in cats}

        anns_by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            anns_by_image.setdefault(ann["image_id"], []).append(ann)
        self.images: list[dict[str, Any]] = []
        self.annotations: list[list[dict[str, Any]]] = []
        labels = []
        for img in sorted(data["images"], key=lambda im: im["id"]):
            anns = anns_by_image.get(img["id"], [])
            label = np.zeros(self.num_classes, dtype=np.float32)
            values = [self.cat_to_value.get(a["category_id"], 0) for a in anns]
            unknown = [a["category_id"] for a in anns if a["category_id"] not in self.cat_to_value]
            if unknown:
                raise ValueError(f"ann_file: image {img['id']} has annotations of unknown category ids {unknown[:3]}")
            for v in values:
                if v > 0:
                    label[v - 1] = 1.0
            if (skip_empty and not anns) or (skip_unlabeled and not label.any()):
                continue
            self.images.append(img)
            self.annotations.append(anns)
            labels.append(label)
        self._labels = np.stack(labels) if labels else np.zeros((0, self.num_classes), dtype=np.float32)
        self.names = [Path(img["file_name"]).stem for img in self.images]

    def load_image(self, index: int) -> np.ndarray:
        """The RGB image ``uint8`` ``(H, W, 3)`` of item ``index``."""
        img = self.images[self._check_index(index)]
        path = self.image_dir / img["file_name"]
        image = read_image(path)
        if image.shape[:2] != (img["height"], img["width"]):
            raise ValueError(f"image file {path}: size {image.shape[:2]} differs from the annotation's "
                             f"{(img['height'], img['width'])}")
        return image

    def load_mask(self, index: int) -> np.ndarray:
        """The rasterised label map ``uint8`` ``(H, W)`` in ``{0..K, 255}`` of item ``index``."""
        index = self._check_index(index)
        img = self.images[index]
        return rasterize_annotations(self.annotations[index], int(img["height"]), int(img["width"]),
                                     self.cat_to_value, self.crowd_value)

    def get_label(self, index: int) -> np.ndarray:
        """The image-level label ``float32`` ``(K,)``: the (remapped) categories annotated in the image."""
        return self._labels[self._check_index(index)].copy()

    @property
    def labels(self) -> np.ndarray:
        """All image-level labels, ``float32`` ``(N, K)``."""
        return self._labels.copy()
