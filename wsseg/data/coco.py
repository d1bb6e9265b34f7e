"""COCO (instances JSON, read with pycocotools) as a semantic-segmentation dataset with image-level labels."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import SegmentationDataset
from .class_names import COCO_TO_VOC, VOC_CLASSES
from .voc import read_image

__all__ = ["COCOSegmentation"]

_CROWD_MODES = ("ignore", "class")


def _import_coco() -> Any:
    """``pycocotools.coco.COCO``, or an ImportError that says how to install it."""
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise ImportError("COCOSegmentation needs pycocotools to read COCO annotations: "
                          "pip install 'wsseg[coco]' (or pip install pycocotools)") from err
    return COCO


def _check_segmentation(ann: dict[str, Any], img: dict[str, Any], ann_path: Path) -> None:
    """Raise ValueError (naming the file and annotation id) for a segmentation pycocotools would mis-read."""
    seg = ann.get("segmentation")
    where = f"ann_file: {ann_path}, annotation id {ann.get('id')!r} (image {img['id']})"
    if isinstance(seg, list):
        if not all(isinstance(p, list) for p in seg):
            raise ValueError(f"{where}: polygon segmentation must be a list of coordinate lists")
        return
    if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
        raise ValueError(f"{where}: segmentation must be a polygon list or an RLE dict with 'size' and "
                         f"'counts', got {type(seg).__name__}")
    h, w = int(img["height"]), int(img["width"])
    if [int(v) for v in seg["size"]] != [h, w]:
        raise ValueError(f"{where}: RLE size {list(seg['size'])} differs from the image size {[h, w]}")
    counts = seg["counts"]
    if isinstance(counts, list) and (sum(counts) != h * w or min(counts, default=0) < 0):
        raise ValueError(f"{where}: uncompressed RLE runs must be non-negative and sum to h*w = {h * w}, "
                         f"got sum {sum(counts)}")


class COCOSegmentation(SegmentationDataset):
    """COCO instance annotations turned into semantic masks and image-level labels.

    The instances JSON is read with ``pycocotools`` (``COCO(ann_file)``; install with
    ``pip install 'wsseg[coco]'``) and every instance mask comes from ``coco.annToMask(ann)``
    (polygons, uncompressed and compressed RLE). The semantic mask of an image paints its instances
    in **decreasing** ``area`` (ties keep the JSON order), so smaller objects stay on top of larger
    ones; an instance of a dropped class (value 0) is painted background, covering what it hides.
    The image-level label is the set of (remapped) categories annotated in the image, crowd
    instances included.

    Crowd instances (``iscrowd=1``) of kept classes are painted 255 (ignore) with
    ``crowd="ignore"``, or as their class with ``crowd="class"`` (like the coco2voc masks used by
    TSCD/ToCo).

    ``classes="voc"`` maps COCO onto the 20 PASCAL VOC classes (airplane→aeroplane,
    motorcycle→motorbike, couch→sofa, dining table→diningtable, potted plant→pottedplant,
    tv→tvmonitor, the others by name, see :data:`~wsseg.data.class_names.COCO_TO_VOC`); the other 60
    categories become background. ``classes="all"`` keeps the categories of the JSON, numbered
    contiguously in increasing category id (the 80 COCO classes for the official files).

    ``split`` names the official layout: ``root/<split>/*.jpg`` with
    ``root/annotations/instances_<split>.json`` — ``"train2017"`` (default, e.g. coco128),
    ``"val2017"``, or ``"train2014"`` / ``"val2014"`` as in the WSSS COCO benchmark (train on
    train2014, evaluate on val2014). ``image_dir`` / ``ann_file`` override the derived paths.

    Args:
        root: dataset folder.
        split: split name; gives the default ``image_dir`` (``<split>``) and ``ann_file``
            (``annotations/instances_<split>.json``).
        image_dir: image folder relative to ``root`` (or absolute); default ``split``.
        ann_file: instances JSON relative to ``root`` (or absolute); default
            ``annotations/instances_<split>.json``.
        classes: ``"voc"`` (K = 20) or ``"all"`` (K = number of JSON categories, 80).
        transform: sample transform (default :func:`~wsseg.data.transforms.eval_transform`).
        skip_empty: drop images with no annotation at all.
        skip_unlabeled: drop images whose label vector is all zero after the remap (useless for WSSS
            training; e.g. a VOC-remapped image with only COCO-only classes).
        crowd: ``"ignore"`` (crowd regions of kept classes → 255) or ``"class"`` (painted as their class).

    Shape:
        - sample ``image``: :math:`(3, H, W)`; ``mask``, ``valid``: :math:`(H, W)`; ``label``: :math:`(K,)`.

    Warns:
        UserWarning: naming the JSON and giving the count, when annotations refer to an ``image_id`` that
            has no entry in ``images`` (they are ignored; the count is ``num_orphan_annotations``).

    Raises:
        ImportError: if pycocotools is not installed.
        TypeError: if ``split`` is not a string.
        ValueError: if ``split``, ``classes`` or ``crowd`` is unknown/empty, or the JSON (named) cannot
            be parsed, lacks ``images``/``annotations``/``categories``, or holds an annotation of an
            unknown category or with a malformed segmentation.
        FileNotFoundError: if ``root``, the image folder or the JSON is missing; on access, if an image
            file is missing (named).

    Example:
        >>> import json, shutil, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "train2014").mkdir(); (root / "annotations").mkdir()
        >>> Image.new("RGB", (8, 6)).save(root / "train2014" / "COCO_train2014_000000000001.jpg")
        >>> person = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 4.0,
        ...           "segmentation": [[2, 1, 4, 1, 4, 3, 2, 3]]}
        >>> data = {"images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 6,
        ...                     "width": 8}], "annotations": [person], "categories": [{"id": 1, "name": "person"}]}
        >>> _ = (root / "annotations" / "instances_train2014.json").write_text(json.dumps(data))
        >>> ds = wsseg.data.COCOSegmentation(root, "train2014")
        >>> ds.names, ds.class_names[14], ds.get_label(0)[14].item()
        (['COCO_train2014_000000000001'], 'person', 1.0)
        >>> sorted(set(ds.load_mask(0).ravel().tolist()))  # 0 background, 15 = person
        [0, 15]
        >>> shutil.rmtree(root)

    Source:
        COCO, Lin et al. ECCV 2014 (cocodataset.org, instances JSON format; masks from
        github.com/cocodataset/cocoapi ``pycocotools``); the 80-class WSSS COCO 2014 setting of AFA,
        Ru et al. CVPR 2022, github.com/rulixiang/afa, ``datasets/coco.py`` (which reads pre-converted
        masks; wsseg paints them from the JSON on access).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train2017", *,
                 image_dir: str | os.PathLike | None = None, ann_file: str | os.PathLike | None = None,
                 classes: str = "voc", transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 skip_empty: bool = False, skip_unlabeled: bool = False, crowd: str = "ignore") -> None:
        super().__init__(transform)
        if not isinstance(split, str):
            raise TypeError(f"split: expected a str such as 'train2017' or 'train2014', got {type(split).__name__}")
        if not split.strip():
            raise ValueError("split: expected a non-empty name such as 'train2017' or 'train2014'")
        if classes not in ("voc", "all"):
            raise ValueError(f"classes: expected 'voc' or 'all', got {classes!r}")
        if crowd not in _CROWD_MODES:
            raise ValueError(f"crowd: expected 'ignore' (crowd regions -> 255) or 'class', got {crowd!r}")
        COCO = _import_coco()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: COCO folder not found: {self.root}")
        self.split = split
        derived = f" (derived from split={split!r}; pass image_dir/ann_file for another layout)"
        self.image_dir = self.root / (split if image_dir is None else image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image_dir: image folder not found: {self.image_dir}"
                                    f"{derived if image_dir is None else ''}")
        ann_path = Path(f"annotations/instances_{split}.json" if ann_file is None else ann_file)
        ann_path = ann_path if ann_path.is_absolute() else self.root / ann_path
        if not ann_path.is_file():
            raise FileNotFoundError(f"ann_file: annotation file not found: {ann_path}"
                                    f"{derived if ann_file is None else ''}")
        self.ann_file = ann_path
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress lines
                self.coco = COCO(str(ann_path))
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError, KeyError, TypeError) as err:
            raise ValueError(f"ann_file: cannot parse {ann_path} as a COCO instances JSON: {err}") from err
        data = self.coco.dataset
        for key in ("images", "annotations", "categories"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"ann_file: {ann_path} has no {key!r} list (expected a COCO instances JSON)")
        self.classes = classes
        self.crowd = crowd
        # annotations whose image_id is not among the JSON's images belong to no sample: say so
        orphans = [a for a in data["annotations"] if a.get("image_id") not in self.coco.imgs]
        #: Number of annotations dropped because their ``image_id`` has no entry in ``images``.
        self.num_orphan_annotations = len(orphans)
        if orphans:
            ids = sorted({str(a.get("image_id")) for a in orphans})
            warnings.warn(f"ann_file: {ann_path}: {len(orphans)} annotation(s) refer to {len(ids)} image_id(s) "
                          f"that have no entry in 'images' (e.g. {ids[:3]}); they are ignored", stacklevel=2)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        if classes == "all":
            self.class_names = tuple(c["name"] for c in cats)
            self.cat_to_value = {c["id"]: i + 1 for i, c in enumerate(cats)}
        else:
            self.class_names = VOC_CLASSES
            voc_index = {n: i + 1 for i, n in enumerate(VOC_CLASSES)}
            self.cat_to_value = {c["id"]: voc_index.get(COCO_TO_VOC.get(c["name"], ""), 0) for c in cats}

        self.images: list[dict[str, Any]] = []
        self.annotations: list[list[dict[str, Any]]] = []
        labels = []
        for img_id in sorted(self.coco.imgs):
            img = self.coco.imgs[img_id]
            anns = self.coco.imgToAnns.get(img_id, [])
            label = np.zeros(self.num_classes, dtype=np.float32)
            for ann in anns:
                if ann.get("category_id") not in self.cat_to_value:
                    raise ValueError(f"ann_file: {ann_path}, image {img_id} has an annotation (id "
                                     f"{ann.get('id')!r}) of unknown category_id {ann.get('category_id')!r}")
                _check_segmentation(ann, img, ann_path)
                value = self.cat_to_value[ann["category_id"]]
                if value > 0:
                    label[value - 1] = 1.0
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

    def _instance_mask(self, ann: dict[str, Any]) -> np.ndarray:
        """The binary mask ``uint8`` ``(H, W)`` of one annotation, from ``pycocotools`` ``annToMask``.

        Polygons with fewer than 3 points cover no pixel and are dropped before the call
        (pycocotools would read a lone 4-number polygon as a box).
        """
        seg = ann["segmentation"]
        if isinstance(seg, list):
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                img = self.coco.imgs[ann["image_id"]]
                return np.zeros((int(img["height"]), int(img["width"])), dtype=np.uint8)
            if len(polys) != len(seg):
                ann = {**ann, "segmentation": polys}
        with warnings.catch_warnings():  # pycocotools 2.0.x under numpy 2: a copy=False DeprecationWarning
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="pycocotools")
            return self.coco.annToMask(ann)

    def load_mask(self, index: int) -> np.ndarray:
        """The painted label map ``uint8`` ``(H, W)`` in ``{0..K, 255}`` of item ``index``.

        Instances are painted in decreasing ``area`` (stable), crowd instances of kept classes as 255
        (``crowd="ignore"``) or as their class (``crowd="class"``).
        """
        index = self._check_index(index)
        img = self.images[index]
        mask = np.zeros((int(img["height"]), int(img["width"])), dtype=np.uint8)
        anns = self.annotations[index]
        areas = [float(a["area"]) if "area" in a else None for a in anns]
        regions = [self._instance_mask(a) for a in anns]
        areas = [float(r.sum()) if a is None else a for a, r in zip(areas, regions, strict=True)]
        for i in sorted(range(len(anns)), key=lambda i: -areas[i]):
            ann = anns[i]
            value = self.cat_to_value[ann["category_id"]]
            if ann.get("iscrowd", 0) and value > 0 and self.crowd == "ignore":
                value = 255
            mask[regions[i] > 0] = value
        return mask

    def get_label(self, index: int) -> np.ndarray:
        """The image-level label ``float32`` ``(K,)``: the (remapped) categories annotated in the image."""
        return self._labels[self._check_index(index)].copy()

    @property
    def labels(self) -> np.ndarray:
        """All image-level labels, ``float32`` ``(N, K)``."""
        return self._labels.copy()
