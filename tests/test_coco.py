"""Tests for wsseg.data.COCOSegmentation: a synthetic instances JSON and, with WSSEG_SHARED, coco128.

Expected masks are computed here directly with pycocotools (``pycocotools.mask`` / ``COCO.annToMask``)
and the documented paint order (decreasing ``area``, stable), never with the dataset under test.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from wsseg.data import COCO_CLASSES, VOC_CLASSES, COCOSegmentation

# pycocotools 2.0.x decodes with np.array(copy=False), which numpy 2 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# ----------------------------------------------------------------------------- synthetic JSON

SIZES = [(10, 12), (10, 10), (8, 8), (12, 9)]  # (height, width) of images 1..4
CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 4, "name": "motorcycle"},
        {"id": 47, "name": "cup"}, {"id": 63, "name": "couch"}]
# category id -> mask value, written by hand: VOC indices + 1 (person 15, car 7, motorbike 14, sofa 18,
# cup is no VOC class -> 0) and the contiguous numbering of the 5 JSON categories by id.
VOC_VALUE = {1: 15, 3: 7, 4: 14, 47: 0, 63: 18}
ALL_VALUE = {1: 1, 3: 2, 4: 3, 47: 4, 63: 5}


def _square(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _compressed_rle(h, w, rows, cols):
    m = np.zeros((h, w), np.uint8)
    m[rows, cols] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


ANNS = [
    # image 1: a square (pycocotools covers the 4 x 4 pixels 2..5) and a triangle on it
    {"id": 1, "image_id": 1, "category_id": 4, "segmentation": _square(2, 2, 6, 6), "area": 16.0, "iscrowd": 0},
    {"id": 2, "image_id": 1, "category_id": 3, "segmentation": [[1, 1, 9.5, 4, 4, 8.5]], "area": 25.0,
     "iscrowd": 0},
    # image 2: small person listed before the big couch; larger first -> person stays on top
    {"id": 3, "image_id": 2, "category_id": 1, "segmentation": _square(3, 3, 6, 6), "area": 9.0, "iscrowd": 0},
    {"id": 4, "image_id": 2, "category_id": 63, "segmentation": _square(0, 0, 8, 8), "area": 64.0,
     "iscrowd": 0},
    # a cup (no VOC class) on the couch: background in VOC mode, its class in "all" mode
    {"id": 5, "image_id": 2, "category_id": 47, "segmentation": _square(6, 6, 8, 8), "area": 4.0, "iscrowd": 0},
    # crowd of people as uncompressed RLE: column-major, 80 zeros then 20 ones -> columns 8 and 9
    {"id": 6, "image_id": 2, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [80, 20]},
     "area": 20.0, "iscrowd": 1},
    # image 4: a compressed-RLE instance and a crowd cup (dropped class: background even when ignored)
    {"id": 7, "image_id": 4, "category_id": 3, "segmentation": _compressed_rle(12, 9, slice(2, 9), slice(1, 6)),
     "area": 35.0, "iscrowd": 0},
    {"id": 8, "image_id": 4, "category_id": 47, "segmentation": {"size": [12, 9], "counts": [100, 8]},
     "area": 8.0, "iscrowd": 1},
    # image 3 has no annotation
]


def _expected_mask(anns, h, w, value_of, crowd):
    """The semantic mask painted from pycocotools' decoded instances, larger areas first."""
    out = np.zeros((h, w), np.uint8)
    for ann in sorted(anns, key=lambda a: -a["area"]):
        seg = ann["segmentation"]
        if isinstance(seg, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            rle = seg
        region = mask_utils.decode(rle).astype(bool)
        value = value_of[ann["category_id"]]
        if ann["iscrowd"] and value > 0 and crowd == "ignore":
            value = 255
        out[region] = value
    return out


def _write_coco(root, image_dir="images", ann_name="inst.json", file_prefix=""):
    (root / image_dir).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images = []
    for i, (h, w) in enumerate(SIZES, start=1):
        name = f"{file_prefix}{i:012d}.jpg"
        Image.fromarray(np.full((h, w, 3), 50 * i, np.uint8)).save(root / image_dir / name)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
    data = {"images": images, "annotations": ANNS, "categories": CATS}
    (root / "annotations" / ann_name).write_text(json.dumps(data))
    return root


@pytest.fixture()
def tiny_coco(tmp_path):
    return _write_coco(tmp_path / "coco")


def _make(root, **kw):
    return COCOSegmentation(root, image_dir="images", ann_file="annotations/inst.json", **kw)


@pytest.mark.parametrize("crowd", ["ignore", "class"])
@pytest.mark.parametrize("classes", ["voc", "all"])
def test_masks_equal_pycocotools(tiny_coco, classes, crowd):
    ds = _make(tiny_coco, classes=classes, crowd=crowd)
    value_of = VOC_VALUE if classes == "voc" else ALL_VALUE
    assert ds.names == [f"{i:012d}" for i in range(1, 5)]
    for i, (h, w) in enumerate(SIZES):
        anns = [a for a in ANNS if a["image_id"] == i + 1]
        mask = ds.load_mask(i)
        assert mask.dtype == np.uint8 and mask.shape == (h, w)
        np.testing.assert_array_equal(mask, _expected_mask(anns, h, w, value_of, crowd))
        sample = ds[i]
        assert sample["mask"].dtype == torch.int64
        np.testing.assert_array_equal(sample["mask"].numpy(), mask)


def test_hand_values_order_crowd_and_remap(tiny_coco):
    person, sofa = VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("sofa") + 1
    mask = _make(tiny_coco).load_mask(1)
    assert (mask[3:6, 3:6] == person).all() and (mask == person).sum() == 9  # small person on top
    assert (mask[:, 8:] == 255).all() and (mask == 255).sum() == 20  # crowd RLE region ignored
    assert (mask[6:8, 6:8] == 0).all()  # cup -> background, painted over the couch
    assert (mask == sofa).sum() == 64 - 9 - 4
    mask = _make(tiny_coco, crowd="class").load_mask(1)
    assert (mask[:, 8:] == person).all() and (mask == person).sum() == 9 + 20
    mask = _make(tiny_coco, classes="all").load_mask(1)
    assert (mask[6:8, 6:8] == 4).all() and (mask[3:6, 3:6] == 1).all() and (mask == 5).sum() == 51
    # image 4: the crowd cup stays background, the compressed-RLE car is 7 x 5 pixels
    mask = _make(tiny_coco).load_mask(3)
    assert (mask == VOC_CLASSES.index("car") + 1).sum() == 35 and set(np.unique(mask).tolist()) == {0, 7}


def test_labels(tiny_coco):
    ds = _make(tiny_coco)
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES and ds.labels.shape == (4, 20)
    named = [[VOC_CLASSES[k] for k in np.flatnonzero(ds.get_label(i))] for i in range(4)]
    assert named == [["car", "motorbike"], ["person", "sofa"], [], ["car"]]
    all_ds = _make(tiny_coco, classes="all")
    assert all_ds.class_names == ("person", "car", "motorcycle", "cup", "couch")
    assert all_ds.labels.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]]
    assert torch.equal(all_ds[1]["label"], torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0]))


def test_skip_empty_and_unlabeled(tiny_coco, tmp_path):
    assert [d.names for d in (_make(tiny_coco, skip_empty=True), _make(tiny_coco, skip_unlabeled=True))] == \
        [["000000000001", "000000000002", "000000000004"]] * 2
    data = json.loads((tiny_coco / "annotations/inst.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == 47]  # cups only
    path = tmp_path / "cups.json"
    path.write_text(json.dumps(data))
    assert len(COCOSegmentation(tiny_coco, image_dir="images", ann_file=path, skip_empty=True)) == 2
    assert len(COCOSegmentation(tiny_coco, image_dir="images", ann_file=path, skip_unlabeled=True)) == 0
    assert len(COCOSegmentation(tiny_coco, image_dir="images", ann_file=path, classes="all",
                                skip_unlabeled=True)) == 2


def test_degenerate_polygons_cover_nothing(tiny_coco, tmp_path):
    data = json.loads((tiny_coco / "annotations/inst.json").read_text())
    data["annotations"] = [
        {"id": 1, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 5, 5]], "area": 0.0, "iscrowd": 0},
        {"id": 2, "image_id": 3, "category_id": 3, "segmentation": [], "area": 0.0, "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 4, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2], [7, 7]],
         "area": 4.0, "iscrowd": 0}]
    path = tmp_path / "degenerate.json"
    path.write_text(json.dumps(data))
    mask = COCOSegmentation(tiny_coco, image_dir="images", ann_file=path).load_mask(2)
    assert (mask[:2, :2] == VOC_VALUE[4]).all() and (mask == VOC_VALUE[4]).sum() == 4 and mask.max() == 14


@pytest.mark.parametrize("split", ["train2014", "val2014"])
def test_coco2014_split_layout(tmp_path, split):
    root = _write_coco(tmp_path / "coco", image_dir=split, ann_name=f"instances_{split}.json",
                       file_prefix=f"COCO_{split}_")
    ds = COCOSegmentation(root, split, classes="all")
    assert ds.split == split and ds.image_dir == root / split
    assert ds.ann_file == root / "annotations" / f"instances_{split}.json"
    assert ds.names[0] == f"COCO_{split}_000000000001" and len(ds) == 4
    assert ds[1]["image"].shape == (3, 10, 10)
    np.testing.assert_array_equal(ds.load_mask(1), _expected_mask(ANNS[2:6], 10, 10, ALL_VALUE, "ignore"))
    # explicit paths win over the split's
    (root / "imgs").symlink_to(root / split)
    other = COCOSegmentation(root, "val2017", image_dir="imgs",
                             ann_file=root / "annotations" / f"instances_{split}.json")
    assert other.names == ds.names and other.image_dir == root / "imgs"
    with pytest.raises(FileNotFoundError, match="train2017.*split='train2017'"):
        COCOSegmentation(root)  # default split: no train2017 folder here


def test_constructor_errors(tiny_coco):
    with pytest.raises(ValueError, match="classes"):
        _make(tiny_coco, classes="coco")
    with pytest.raises(ValueError, match="crowd"):
        _make(tiny_coco, crowd="255")
    with pytest.raises(TypeError, match="crowd_value"):
        _make(tiny_coco, crowd_value=255)  # replaced by crowd="ignore" | "class"
    with pytest.raises(TypeError, match="split"):
        COCOSegmentation(tiny_coco, 2014)
    with pytest.raises(ValueError, match="split"):
        COCOSegmentation(tiny_coco, " ")
    with pytest.raises(FileNotFoundError, match="root"):
        COCOSegmentation(tiny_coco / "nope")
    with pytest.raises(FileNotFoundError, match="image_dir"):
        COCOSegmentation(tiny_coco)  # no train2017 folder
    with pytest.raises(FileNotFoundError, match="instances_train2017.json"):
        COCOSegmentation(tiny_coco, image_dir="images")
    (tiny_coco / "annotations" / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file="annotations/bad.json")
    (tiny_coco / "annotations" / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="list.json"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file="annotations/list.json")
    (tiny_coco / "annotations" / "partial.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="partial.json.*annotations"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file="annotations/partial.json")


@pytest.mark.parametrize("change, match", [
    ({"category_id": 99}, "unknown category_id 99"),
    ({"segmentation": 3}, "segmentation must be"),
    ({"segmentation": {"size": [5, 5], "counts": [25]}}, r"RLE size \[5, 5\] differs"),
    ({"segmentation": {"size": [10, 12], "counts": [100, 10]}}, "sum to h\\*w = 120"),
])
def test_malformed_annotations_name_the_file(tiny_coco, tmp_path, change, match):
    data = json.loads((tiny_coco / "annotations/inst.json").read_text())
    data["annotations"][0].update(change)
    path = tmp_path / "malformed.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"malformed.json.*{match}"):
        COCOSegmentation(tiny_coco, image_dir="images", ann_file=path)


def test_annotations_without_image_warn_with_a_count(tiny_coco, tmp_path):
    data = json.loads((tiny_coco / "annotations/inst.json").read_text())
    extra = [dict(data["annotations"][0], id=900 + i, image_id=77 + (i % 2)) for i in range(3)]
    data["annotations"] += extra
    path = tmp_path / "orphans.json"
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=r"orphans.json: 3 annotation\(s\) refer to 2 image_id\(s\) that have "
                                         r"no entry in 'images' \(e.g. \['77', '78'\]\)"):
        ds = COCOSegmentation(tiny_coco, image_dir="images", ann_file=path)
    assert ds.num_orphan_annotations == 3 and len(ds) == len(SIZES)
    ref = _make(tiny_coco)                                   # the other samples are unchanged
    np.testing.assert_array_equal(ds.labels, ref.labels)


def test_no_warning_without_orphans(tiny_coco, recwarn):
    ds = _make(tiny_coco)
    assert ds.num_orphan_annotations == 0
    assert not [w for w in recwarn if "image_id" in str(w.message)]


def test_missing_pycocotools_is_actionable(tiny_coco, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycocotools.coco", None)  # makes `import pycocotools.coco` fail
    with pytest.raises(ImportError, match=r"pip install 'wsseg\[coco\]'.*pycocotools"):
        _make(tiny_coco)


def test_missing_image_file(tiny_coco):
    ds = _make(tiny_coco)
    (tiny_coco / "images" / "000000000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000000000002.jpg"):
        ds[1]


# ----------------------------------------------------------------------------- coco128 (real data)


@pytest.fixture(scope="module")
def coco128_all(coco128_dir):
    return COCOSegmentation(coco128_dir, classes="all")


@pytest.fixture(scope="module")
def coco128_api(coco128_dir):
    return COCO(str(coco128_dir / "annotations" / "instances_train2017.json"))


def _paint_with_api(api, image_id, value_of, crowd):
    info = api.imgs[image_id]
    out = np.zeros((info["height"], info["width"]), np.uint8)
    anns = api.loadAnns(api.getAnnIds(imgIds=[image_id]))
    for ann in sorted(anns, key=lambda a: -a["area"]):
        value = value_of[ann["category_id"]]
        if ann["iscrowd"] and value > 0 and crowd == "ignore":
            value = 255
        out[api.annToMask(ann) > 0] = value
    return out


def test_coco128_statistics(coco128_all, coco128_dir):
    ds = coco128_all
    assert len(ds) == 128 and ds.num_classes == 80 and ds.class_names == COCO_CLASSES
    assert sum(1 for a in ds.annotations if a) == 126
    assert len(COCOSegmentation(coco128_dir, classes="all", skip_empty=True)) == 126
    counts = ds.labels.sum(0)
    assert (counts > 0).sum() == 71
    assert ds.class_names[int(counts.argmax())] == "person" and counts.max() == 61
    assert counts[COCO_CLASSES.index("car")] == 12 and counts[COCO_CLASSES.index("dog")] == 9


@pytest.mark.parametrize("crowd", ["ignore", "class"])
def test_coco128_masks_equal_pycocotools(coco128_dir, coco128_api, crowd):
    api = coco128_api
    crowd_images = sorted({a["image_id"] for a in api.dataset["annotations"] if a["iscrowd"]})
    assert len(crowd_images) == 9
    ds_all = COCOSegmentation(coco128_dir, classes="all", crowd=crowd)
    ds_voc = COCOSegmentation(coco128_dir, classes="voc", crowd=crowd)
    all_value = {c["id"]: i + 1 for i, c in enumerate(sorted(api.dataset["categories"], key=lambda c: c["id"]))}
    voc_value = {cid: 0 for cid in all_value}
    voc_value.update({1: 15, 2: 2, 3: 7, 4: 14, 5: 1, 6: 6, 7: 19, 9: 4, 16: 3, 17: 8, 18: 12, 19: 13, 20: 17,
                      21: 10, 44: 5, 62: 9, 63: 18, 64: 16, 67: 11, 72: 20})  # official ids -> VOC value
    ids = [img["id"] for img in ds_all.images]
    for image_id in [9, 25, 30] + crowd_images[:5]:
        i = ids.index(image_id)
        got = ds_all.load_mask(i)
        np.testing.assert_array_equal(got, _paint_with_api(api, image_id, all_value, crowd))
        np.testing.assert_array_equal(ds_voc.load_mask(i), _paint_with_api(api, image_id, voc_value, crowd))
        assert (got == 255).any() == (crowd == "ignore" and image_id in crowd_images)


def test_coco128_samples_and_voc_remap(coco128_dir, coco128_all):
    s = coco128_all[0]
    assert s["name"] == "000000000009"
    assert s["image"].shape == (3, 480, 640) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (480, 640) and s["mask"].dtype == torch.int64 and s["valid"].all()
    ds = COCOSegmentation(coco128_dir, "train2017", classes="voc")
    assert ds.num_classes == 20 and ds.class_names == VOC_CLASSES and len(ds) == 128
    assert ds.labels.sum(0)[VOC_CLASSES.index("person")] == 61
    coco_to_voc = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
                   "dining table": "diningtable", "potted plant": "pottedplant", "tv": "tvmonitor"}
    expected = np.zeros((128, 20), np.float32)
    for j, name in enumerate(COCO_CLASSES):
        voc = coco_to_voc.get(name, name)
        if voc in VOC_CLASSES:
            k = VOC_CLASSES.index(voc)
            expected[:, k] = np.maximum(expected[:, k], coco128_all.labels[:, j])
    np.testing.assert_array_equal(ds.labels, expected)
    unlabeled = COCOSegmentation(coco128_dir, classes="voc", skip_unlabeled=True)
    assert len(unlabeled) == int((expected.sum(1) > 0).sum()) and (unlabeled.labels.sum(1) > 0).all()
