"""Tests for the full data check (wsseg.data.dataset_check, ``python -m wsseg.data.check``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wsseg.data import check_coco, check_dataset, check_voc
from wsseg.data.dataset_check import PROBLEM_KINDS, DataProblem, main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

K = 3
CLASSES = ("shirt", "pants", "shoes")
N = 12


def _good_voc(root, n=N):
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = {}
    names = [f"img_{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        h, w = 10 + i % 3, 12
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((h, w), np.uint8)
        mask[2:5, 2:6] = 1 + i % K
        mask[0] = 255
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
        vec = np.zeros(K, np.float32)
        vec[i % K] = 1
        labels[name] = vec
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(names) + "\n")
    np.save(root / "cls_labels.npy", labels, allow_pickle=True)
    return names, labels


@pytest.fixture()
def voc(tmp_path):
    root = tmp_path / "voc"
    names, labels = _good_voc(root)
    return root, names, labels


def test_clean_split_has_no_problem(voc):
    root, _, _ = voc
    assert check_voc(root, cls_labels=root / "cls_labels.npy", class_names=CLASSES, progress=False) == []


def test_every_problem_is_listed_at_once(voc):
    root, names, labels = voc
    jpg, png = root / "JPEGImages", root / "SegmentationClass"
    # 1. corrupt JPEG (truncated to 40 bytes) at image 1
    data = (jpg / f"{names[1]}.jpg").read_bytes()
    (jpg / f"{names[1]}.jpg").write_bytes(data[:40])
    # 2. a mask with value 60 at image 3 (K = 3)
    m = np.array(Image.open(png / f"{names[3]}.png"))
    m[5, 5] = 60
    Image.fromarray(m, mode="L").save(png / f"{names[3]}.png")
    # 3. size mismatch at image 10 (beyond the 8 masks of the start-up check)
    Image.fromarray(np.full((5, 5), 1 + 10 % K, np.uint8), mode="L").save(png / f"{names[10]}.png")
    # 4. a list entry without image (and without mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join([*names, "ghost"]) + "\n")
    # 5. cls_labels: one entry missing, one of wrong length, one with value 2, one disagreeing with its mask
    bad = dict(labels)
    del bad[names[4]]
    bad[names[5]] = np.ones(K + 1, np.float32)
    bad[names[6]] = np.array([2.0, 0, 0], np.float32)
    bad[names[7]] = np.array([1.0, 0, 1], np.float32)      # mask of image 7 holds class 2 (pants) only
    np.save(root / "bad_labels.npy", bad, allow_pickle=True)

    problems = check_voc(root, cls_labels=root / "bad_labels.npy", class_names=CLASSES, progress=False)
    got = sorted((p.kind, p.name) for p in problems)
    assert got == sorted([
        ("corrupt_image", names[1]),
        ("mask_values", names[3]),
        ("size_mismatch", names[10]),
        ("missing_image", "ghost"), ("missing_mask", "ghost"), ("missing_label", "ghost"),
        ("missing_label", names[4]),
        ("bad_label", names[5]), ("bad_label", names[6]),
        ("label_mask_mismatch", names[7]),
    ])
    by = {(p.kind, p.name): p for p in problems}
    assert by[("corrupt_image", names[1])].path.endswith(f"{names[1]}.jpg")
    assert "found 60 (1 px)" in by[("mask_values", names[3])].message
    assert "{0..3, 255}" in by[("mask_values", names[3])].message
    assert "(5, 5)" in by[("size_mismatch", names[10])].message and "(11, 12)" in by[("size_mismatch", names[10])].message
    assert "expected a (3,) vector" in by[("bad_label", names[5])].message
    assert "[2.0]" in by[("bad_label", names[6])].message or "2.0" in by[("bad_label", names[6])].message
    msg = by[("label_mask_mismatch", names[7])].message
    assert "in the mask but not in the label: [2 'pants']" in msg
    assert "in the label but not in the mask: [1 'shirt', 3 'shoes']" in msg
    assert all(p.kind in PROBLEM_KINDS for p in problems)
    assert str(by[("missing_image", "ghost")]).startswith("[missing_image] ") and "ghost.jpg" in str(
        by[("missing_image", "ghost")])


def test_duplicate_entry_and_all_ignore_masks(voc):
    root, names, labels = voc
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join([*names, names[0]]) + "\n")
    # a tag-only image: all-255 mask, labels not compared
    h = 10
    Image.fromarray(np.full((h, 12), 255, np.uint8), mode="L").save(root / "SegmentationClass" / f"{names[0]}.png")
    problems = check_voc(root, cls_labels=root / "cls_labels.npy", class_names=CLASSES, progress=False)
    assert [(p.kind, p.name) for p in problems] == [("duplicate_entry", names[0])]
    assert "listed 2 times" in problems[0].message


@pytest.mark.parametrize("what", ["list", "masks", "cls_labels"])
def test_setup_problems(voc, tmp_path, what):
    root, _, _ = voc
    kw = dict(class_names=CLASSES, progress=False)
    if what == "list":
        problems = check_voc(root, "nope", **kw)
        assert "nope.txt" in problems[0].path
    elif what == "masks":
        problems = check_voc(root, mask_dir="Missing", **kw)
        assert problems[0].path.endswith("Missing")
    else:
        (tmp_path / "trunc.npy").write_bytes((root / "cls_labels.npy").read_bytes()[:30])
        problems = check_voc(root, cls_labels=tmp_path / "trunc.npy", **kw)
        assert "trunc.npy" in problems[0].message
    assert len(problems) == 1 and problems[0].kind == "setup"


def test_check_dataset_generic(voc):
    from wsseg.data import VOCSegmentation

    root, names, _ = voc
    ds = VOCSegmentation(root, class_names=CLASSES, cls_labels=root / "cls_labels.npy")
    assert check_dataset(ds, progress=False) == []
    Image.fromarray(np.zeros((3, 3), np.uint8), mode="L").save(root / "SegmentationClass" / f"{names[9]}.png")
    (root / "JPEGImages" / f"{names[2]}.jpg").unlink()
    problems = check_dataset(ds, progress=False)
    kinds = sorted((p.kind, p.name) for p in problems)
    assert ("missing_image", names[2]) in kinds and ("size_mismatch", names[9]) in kinds
    assert all(isinstance(p, DataProblem) for p in problems)


# ----------------------------------------------------------------------------- command line
def _argv(root, *extra):
    return ["--root", str(root), "--class-names", str(root / "names.txt"), "--no-background",
            "--cls-labels", str(root / "cls_labels.npy"), "--no-progress", *extra]


def test_cli_exit_codes_and_summary(voc, capsys):
    root, names, _ = voc
    (root / "names.txt").write_text("\n".join(CLASSES) + "\n")
    assert main(_argv(root)) == 0
    out = capsys.readouterr().out
    assert "split train: no problem" in out and "data check: no problem found" in out
    m = np.array(Image.open(root / "SegmentationClass" / f"{names[11]}.png"))
    m[1, 1] = 60
    Image.fromarray(m, mode="L").save(root / "SegmentationClass" / f"{names[11]}.png")
    (root / "ImageSets/Segmentation/val.txt").write_text(f"{names[0]}\nmissing_one\n")
    assert main(_argv(root, "--eval-split", "val")) == 1
    out = capsys.readouterr().out
    assert "split train: 1 mask_values" in out
    assert "split val: 1 missing_image, 1 missing_label, 1 missing_mask" in out
    assert f"{names[11]}.png: values must be in {{0..3, 255}}" in out and "data check: 4 problem(s) found" in out
    assert main(_argv(root, "--eval-split", "val", "--max-print", "1")) == 1
    assert "... and 3 more problem(s)" in capsys.readouterr().out


def test_cli_blank_line_in_class_names(voc, capsys):
    root, _, _ = voc
    (root / "names.txt").write_text("shirt\n\npants\nshoes\n")
    assert main(_argv(root)) == 1
    assert "names.txt: line 2 is blank" in capsys.readouterr().err


def test_cli_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--root", str(tmp_path / "nowhere")])
    assert err.value.code == 2 and "--root: folder not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------- COCO
def _coco(root):
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for i in range(1, 5):
        name = f"{i:012d}.jpg"
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(root / "train2017" / name)
        images.append({"id": i, "file_name": name, "height": 8, "width": 10})
    anns = [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": 4.0,
             "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]} for i in range(1, 5)]
    anns.append({"id": 50, "image_id": 99, "category_id": 1, "iscrowd": 0, "area": 4.0,
                 "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]})                        # no such image
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))


def test_check_coco(tmp_path):
    root = tmp_path / "coco"
    _coco(root)
    img = root / "train2017"
    (img / "000000000002.jpg").unlink()                                          # missing file
    (img / "000000000003.jpg").write_bytes((img / "000000000001.jpg").read_bytes()[:50])  # corrupt
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(img / "000000000004.jpg")  # size differs from record
    problems = check_coco(root, progress=False)
    got = sorted((p.kind, p.name) for p in problems)
    assert got == [("corrupt_image", "000000000003"), ("missing_image", "000000000002"),
                   ("orphan_annotations", ""), ("size_mismatch", "000000000004")]
    by = {p.kind: p for p in problems}
    assert by["orphan_annotations"].path.endswith("instances_train2017.json")
    assert "1 annotation(s)" in by["orphan_annotations"].message
    assert by["missing_image"].path.endswith("000000000002.jpg")
    assert "(6, 6)" in by["size_mismatch"].message and "(8, 10)" in by["size_mismatch"].message
    assert main(["--dataset", "coco", "--root", str(root), "--no-progress"]) == 1
