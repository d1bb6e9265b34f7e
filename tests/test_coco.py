"""Tests for wsseg.data.COCOSegmentation (coco128 real data + a hand-written JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from wsseg.data import COCO_CLASSES, VOC_CLASSES, COCOSegmentation, rasterize_annotations, rle_decode

# ----------------------------------------------------------------------------- coco128 (real data)


@pytest.fixture(scope="module")
def coco_all(coco128_dir):
    return COCOSegmentation(coco128_dir, classes="all")


def test_coco128_statistics(coco_all, coco128_dir):
    ds = coco_all
    assert len(ds) == 128 and ds.num_classes == 80 and ds.class_names == COCO_CLASSES
    assert sum(1 for a in ds.annotations if a) == 126
    assert len(COCOSegmentation(coco128_dir, classes="all", skip_empty=True)) == 126
    counts = ds.labels.sum(0)
    assert (counts > 0).sum() == 71
    assert ds.class_names[int(counts.argmax())] == "person" and counts.max() == 61


def test_coco128_samples(coco_all):
    s = coco_all[0]
    assert s["name"] == "000000000009"
    assert s["image"].shape == (3, 480, 640) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (480, 640) and s["mask"].dtype == torch.int64 and s["valid"].all()
    assert s["label"].shape == (80,)
    assert coco_all.load_image(0).dtype == np.uint8


def test_coco128_voc_remap(coco128_dir, coco_all):
    ds = COCOSegmentation(coco128_dir, classes="voc")
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES and len(ds) == 128
    assert ds.labels.shape == (128, 20)
    assert ds.labels.sum(0)[VOC_CLASSES.index("person")] == 61
    # the VOC label of an image is exactly the remap of its 80-class label
    coco_to_voc = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
                   "dining table": "diningtable", "potted plant": "pottedplant", "tv": "tvmonitor"}
    expected = np.zeros((128, 20), np.float32)
    for j, name in enumerate(COCO_CLASSES):
        voc = coco_to_voc.get(name, name)
        if voc in VOC_CLASSES:
            expected[:, VOC_CLASSES.index(voc)] = np.maximum(expected[:, VOC_CLASSES.index(voc)],
                                                             coco_all.labels[:, j])
    np.testing.assert_array_equal(ds.labels, expected)
    for i in range(len(ds)):
        mask = ds.load_mask(i)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(21)) | {255}
        fg = {v for v in values if 0 < v < 255}
        assert fg <= {k + 1 for k in np.flatnonzero(ds.get_label(i))}  # every painted class is labelled
    unlabeled = COCOSegmentation(coco128_dir, classes="voc", skip_unlabeled=True)
    assert len(unlabeled) == int((ds.labels.sum(1) > 0).sum()) and (unlabeled.labels.sum(1) > 0).all()


# ----------------------------------------------------------------------------- hand-written JSON


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def tiny_coco(tmp_path):
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i, (h, w) in enumerate([(10, 12), (10, 10), (8, 8)], start=1):
        Image.fromarray(np.full((h, w, 3), 50 * i, np.uint8)).save(root / "images" / f"{i:012d}.jpg")
    cats = [{"id": 1, "name": "person"}, {"id": 4, "name": "motorcycle"}, {"id": 47, "name": "cup"},
            {"id": 63, "name": "couch"}]
    anns = [
        # image 1: one square polygon with corners (2,2)-(6,6): PIL fills 5 x 5 = 25 pixels
        {"id": 1, "image_id": 1, "category_id": 4, "segmentation": _square(2, 2, 6, 6), "area": 16.0,
         "iscrowd": 0},
        # image 2: small person listed before the big couch; larger first -> person stays on top
        {"id": 2, "image_id": 2, "category_id": 1, "segmentation": _square(3, 3, 5, 5), "area": 4.0,
         "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 63, "segmentation": _square(0, 0, 7, 7), "area": 49.0,
         "iscrowd": 0},
        # a cup (not a VOC class) on the couch: background in VOC mode, class in "all" mode
        {"id": 4, "image_id": 2, "category_id": 47, "segmentation": _square(6, 6, 7, 7), "area": 1.0,
         "iscrowd": 0},
        # crowd of people as uncompressed RLE: column-major, 80 zeros then 20 ones -> columns 8 and 9
        {"id": 5, "image_id": 2, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [80, 20]},
         "area": 20.0, "iscrowd": 1},
    ]
    data = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w}
                       for i, (h, w) in enumerate([(10, 12), (10, 10), (8, 8)], start=1)],
            "annotations": anns, "categories": cats}
    (root / "annotations" / "inst.json").write_text(json.dumps(data))
    return root


def _make(root, **kw):
    return COCOSegmentation(root, image_dir="images", ann_file="annotations/inst.json", **kw)


def test_square_polygon_area(tiny_coco):
    ds = _make(tiny_coco)
    mask = ds.load_mask(0)
    moto = VOC_CLASSES.index("motorbike") + 1
    assert mask.shape == (10, 12) and (mask == moto).sum() == 25
    assert (mask[2:7, 2:7] == moto).all()
    assert ds[0]["label"].nonzero().flatten().tolist() == [moto - 1]


def test_overlap_order_crowd_and_remap(tiny_coco):
    ds = _make(tiny_coco)
    mask = ds.load_mask(1)
    person, sofa = VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("sofa") + 1
    assert (mask[3:6, 3:6] == person).all() and (mask == person).sum() == 9
    assert (mask[:, 8:] == 255).all() and (mask == 255).sum() == 20  # crowd RLE region
    assert (mask[6:8, 6:8] == 0).all()  # cup -> background, painted over the couch
    assert (mask == sofa).sum() == 64 - 9 - 4
    assert ds.get_label(1).nonzero()[0].tolist() == [person - 1, sofa - 1]
    # image 3 has no annotation
    assert (ds.load_mask(2) == 0).all() and ds.get_label(2).sum() == 0
    assert len(_make(tiny_coco, skip_empty=True)) == 2


def test_all_classes_mode(tiny_coco):
    ds = _make(tiny_coco, classes="all")
    assert ds.class_names == ("person", "motorcycle", "cup", "couch")
    mask = ds.load_mask(1)
    assert (mask[6:8, 6:8] == 3).all() and (mask[3:6, 3:6] == 1).all() and (mask == 4).sum() == 51
    assert ds.get_label(1).tolist() == [1.0, 0.0, 1.0, 1.0]
    with_crowd_class = _make(tiny_coco, classes="all", crowd_value=1)
    assert (with_crowd_class.load_mask(1)[:, 8:] == 1).all()


def test_skip_unlabeled(tiny_coco, tmp_path):
    data = json.loads((tiny_coco / "annotations/inst.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in (4, 47)]
    data["annotations"][0]["image_id"] = 3  # motorcycle on image 3 only; image 2 keeps only the cup
    path = tmp_path / "cup_only.json"
    path.write_text(json.dumps(data))
    ds = COCOSegmentation(tiny_coco, image_dir="images", ann_file=path, skip_unlabeled=True)
    assert ds.names == ["000000000003"]
    assert len(COCOSegmentation(tiny_coco, image_dir="images", ann_file=path, skip_empty=True)) == 2


def test_rle_decode_by_hand():
    m = rle_decode({"size": [3, 2], "counts": [2, 3, 1]})
    assert m.astype(int).tolist() == [[0, 1], [0, 1], [1, 0]]
    # compressed string: each count < 16 is one char chr(48 + x); the 4th is relative to the 2nd
    assert rle_decode({"size": [2, 7], "counts": "3243"}).sum() == 2 + 5
    np.testing.assert_array_equal(rle_decode({"size": [2, 7], "counts": "3243"}),
                                  rle_decode({"size": [2, 7], "counts": [3, 2, 4, 5]}))
    with pytest.raises(ValueError, match="rle"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="rle"):
        rle_decode({"counts": [4]})


def test_rasterize_validation():
    with pytest.raises(ValueError, match="category_id"):
        rasterize_annotations([{"category_id": 9, "segmentation": [], "area": 1}], 4, 4, {1: 1})
    with pytest.raises(ValueError, match="segmentation"):
        rasterize_annotations([{"category_id": 1, "segmentation": 3, "area": 1}], 4, 4, {1: 1})


def test_constructor_errors(tiny_coco):
    with pytest.raises(ValueError, match="classes"):
        _make(tiny_coco, classes="coco")
    with pytest.raises(ValueError, match="crowd_value"):
        _make(tiny_coco, crowd_value=300)
    with pytest.raises(FileNotFoundError, match="root"):
        COCOSegmentation(tiny_coco / "nope")
    with pytest.raises(FileNotFoundError, match="image_dir"):
        COCOSegmentation(tiny_coco)  # no train2017 folder
    with pytest.raises(FileNotFoundError, match="ann_file"):
        COCOSegmentation(tiny_coco, image_dir="images")
    (tiny_coco / "annotations" / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file="annotations/bad.json")
    (tiny_coco / "annotations" / "partial.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="annotations"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file="annotations/partial.json")


def test_missing_image_file(tiny_coco):
    ds = _make(tiny_coco)
    (tiny_coco / "images" / "000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000002.jpg"):
        ds[1]
