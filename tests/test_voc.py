"""Tests for wsseg.data.VOCSegmentation on a tiny VOC-layout tree built in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wsseg.data import VOC_CLASSES, VOCSegmentation, load_cls_labels, read_class_names, train_transform
from wsseg.utils import IMAGENET_MEAN, IMAGENET_STD

NAMES = ["2007_000032", "2008_000123", "2011_003271"]
# (height, width, classes painted): class value v = VOC index + 1
SPECS = [(40, 60, [1, 15]), (50, 30, [12]), (36, 36, [])]


def _palette_png(mask: np.ndarray, path):
    im = Image.fromarray(mask, mode="P")
    pal = (np.arange(256 * 3) * 37 % 256).astype(np.uint8).tolist()
    im.putpalette(pal)
    im.save(path)


@pytest.fixture()
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w, classes) in zip(NAMES, SPECS, strict=True):
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        mask = np.zeros((h, w), np.uint8)
        for i, v in enumerate(classes):
            mask[5 + 10 * i: 12 + 10 * i, 5:20] = v
            mask[4 + 10 * i, 4:21] = 255  # object boundary, as VOC does
        mask[0, :] = 255
        _palette_png(mask, root / "SegmentationClass" / f"{name}.png")
        Image.fromarray(mask, mode="L").save(root / "SegmentationClassAug" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(NAMES) + "\n")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text(
        "".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in NAMES))
    return root


def _expected_labels():
    out = np.zeros((3, 20), np.float32)
    for i, (_, _, classes) in enumerate(SPECS):
        for v in classes:
            out[i, v - 1] = 1
    return out


def test_sample_format_and_derived_labels(voc_root):
    ds = VOCSegmentation(voc_root, "train")
    assert len(ds) == 3 and ds.num_classes == 20 and ds.class_names == VOC_CLASSES
    for i, (h, w, _) in enumerate(SPECS):
        s = ds[i]
        assert s["name"] == NAMES[i]
        assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
        assert s["mask"].shape == (h, w) and s["mask"].dtype == torch.int64
        assert s["valid"].dtype == torch.bool and s["valid"].all()
        assert s["label"].dtype == torch.float32
        np.testing.assert_array_equal(s["label"].numpy(), _expected_labels()[i])
        assert (s["mask"][0] == 255).all()
        raw = ds.load_image(i)
        assert raw.dtype == np.uint8 and raw.shape == (h, w, 3)
        expected = (torch.from_numpy(raw).permute(2, 0, 1).float() / 255
                    - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        torch.testing.assert_close(s["image"], expected)


def test_palette_and_aug_masks_agree(voc_root):
    a = VOCSegmentation(voc_root, "train")
    b = VOCSegmentation(voc_root, "train_aug", mask_dir="SegmentationClassAug")
    assert b.names == NAMES
    for i in range(3):
        np.testing.assert_array_equal(a.load_mask(i), b.load_mask(i))
    assert set(np.unique(a.load_mask(0)).tolist()) == {0, 1, 15, 255}


@pytest.mark.parametrize("key_format", ["int", "str"])
def test_cls_labels_both_key_formats(voc_root, tmp_path, key_format):
    # deliberately different from the masks, to prove the file is used
    table = {n: np.eye(20, dtype=np.float32)[(3 * i + 2) % 20] for i, n in enumerate(NAMES)}
    if key_format == "int":
        table = {int(k.replace("_", "")): v for k, v in table.items()}
    path = tmp_path / f"cls_labels_{key_format}.npy"
    np.save(path, table)
    ds = VOCSegmentation(voc_root, "train", cls_labels=path)
    for i in range(3):
        assert ds[i]["label"].argmax().item() == (3 * i + 2) % 20 and ds[i]["label"].sum() == 1
    ds2 = VOCSegmentation(voc_root, "train", cls_labels=table)  # a dict works too
    assert torch.equal(ds2[1]["label"], ds[1]["label"])


def test_load_cls_labels_validation(tmp_path):
    with pytest.raises(ValueError, match="cls_labels"):
        load_cls_labels({"2007_000032": np.ones(19)}, 20)
    with pytest.raises(ValueError, match="cls_labels"):
        load_cls_labels({"2007_000032": np.full(20, 0.5)}, 20)
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_cls_labels(tmp_path / "nope.npy", 20)
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(ValueError, match="arr.npy"):
        load_cls_labels(tmp_path / "arr.npy", 20)


@pytest.mark.parametrize("cut", [0, 10, 0.5])
def test_truncated_cls_labels_names_the_file(tmp_path, cut):
    path = tmp_path / "cls_labels.npy"
    np.save(path, {n: np.eye(20)[i] for i, n in enumerate(NAMES)}, allow_pickle=True)
    data = path.read_bytes()
    bad = tmp_path / "truncated.npy"
    bad.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(ValueError, match=r"cls_labels file .*truncated.npy: cannot load a pickled dict"):
        load_cls_labels(bad, 20)


def test_directory_as_cls_labels_names_it(voc_root, tmp_path):
    folder = tmp_path / "labels_dir"
    folder.mkdir()
    np.save(folder / "cls_labels.npy", {n: np.zeros(20) for n in NAMES}, allow_pickle=True)
    with pytest.raises(ValueError, match=r"cls_labels: .*labels_dir is a directory; expected the .npy file.*"
                                         r"cls_labels.npy"):
        load_cls_labels(folder, 20)
    with pytest.raises(ValueError, match="labels_dir is a directory"):
        VOCSegmentation(voc_root, cls_labels=folder)


def test_no_masks_requires_labels(voc_root):
    with pytest.raises(ValueError, match="cls_labels"):
        VOCSegmentation(voc_root, mask_dir=None)
    ds = VOCSegmentation(voc_root, mask_dir=None, cls_labels={n: np.zeros(20) for n in NAMES})
    assert (ds[0]["mask"] == 255).all()


def test_training_transform_and_loader(voc_root):
    ds = VOCSegmentation(voc_root, "train", transform=train_transform(32, seed=0))
    batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 32, 32)
    assert batch["label"].shape == (3, 20) and batch["valid"].shape == (3, 32, 32)
    assert (batch["mask"][~batch["valid"]] == 255).all()
    np.testing.assert_array_equal(batch["label"].numpy(), _expected_labels())


def test_missing_and_corrupt_files(voc_root):
    with pytest.raises(FileNotFoundError, match="root"):
        VOCSegmentation(voc_root / "missing")
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VOCSegmentation(voc_root, "val")
    with pytest.raises(FileNotFoundError, match="mask_dir"):
        VOCSegmentation(voc_root, mask_dir="SegmentationObject")
    with pytest.raises(ValueError, match="cls_labels"):
        VOCSegmentation(voc_root, cls_labels={NAMES[0]: np.zeros(20)})
    ds = VOCSegmentation(voc_root)
    (voc_root / "JPEGImages" / f"{NAMES[1]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=NAMES[1]):
        ds[1]
    (voc_root / "JPEGImages" / f"{NAMES[2]}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(OSError, match=NAMES[2]):
        ds[2]
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(voc_root / "SegmentationClass" / f"{NAMES[0]}.png")
    with pytest.raises(ValueError, match=NAMES[0]):
        ds[0]
    Image.fromarray(np.full((40, 60), 30, np.uint8), mode="L").save(
        voc_root / "SegmentationClass" / f"{NAMES[0]}.png")
    with pytest.raises(ValueError, match="30"):
        ds.load_mask(0)
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(voc_root / "SegmentationClass" / f"{NAMES[0]}.png")
    with pytest.raises(ValueError, match="image size"):
        ds[0]
    with pytest.raises(IndexError, match="index"):
        ds[3]


def test_missing_image_dir(tmp_path):
    (tmp_path / "VOC").mkdir()
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCSegmentation(tmp_path / "VOC")


# ----------------------------------------------------------------------------- train_aug (DeepLab list)


@pytest.mark.parametrize("key_format", ["int", "str"])
def test_train_aug_layout_with_list_file_and_cls_labels(voc_root, tmp_path, key_format):
    list_file = tmp_path / "lists" / "train_aug.txt"  # outside ImageSets, as AFA's datasets/voc/train_aug.txt
    list_file.parent.mkdir()
    list_file.write_text("".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n" for n in NAMES[::-1]))
    table = {n: _expected_labels()[i] for i, n in enumerate(NAMES)}
    if key_format == "int":
        table = {int(n.replace("_", "")): v for n, v in table.items()}  # PSA/IRN: 2007000032
    np.save(tmp_path / "cls_labels.npy", table)
    ds = VOCSegmentation(voc_root, "train_aug", mask_dir="SegmentationClassAug", list_file=list_file,
                         cls_labels=tmp_path / "cls_labels.npy")
    assert ds.names == NAMES[::-1] and ds.list_file == list_file
    assert ds.check_masks() == 3
    for i, name in enumerate(NAMES[::-1]):
        j = NAMES.index(name)
        s = ds[i]
        assert s["name"] == name and s["mask"].shape == SPECS[j][:2]
        np.testing.assert_array_equal(s["label"].numpy(), _expected_labels()[j])
        mask = np.array(Image.open(voc_root / "SegmentationClassAug" / f"{name}.png"))
        np.testing.assert_array_equal(s["mask"].numpy(), mask)


def test_empty_split_list_names_the_file(voc_root, tmp_path):
    for text in ("", "\n  \n"):
        (tmp_path / "empty.txt").write_text(text)
        with pytest.raises(ValueError, match="empty.txt is empty"):
            VOCSegmentation(voc_root, list_file=tmp_path / "empty.txt")
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("")
    with pytest.raises(ValueError, match="val.txt is empty"):
        VOCSegmentation(voc_root, "val")


def test_missing_cls_labels_entry_names_the_file(voc_root, tmp_path):
    path = tmp_path / "cls_labels.npy"
    np.save(path, {int(n.replace("_", "")): np.zeros(20) for n in NAMES[:2]})
    with pytest.raises(ValueError, match="cls_labels.npy") as err:
        VOCSegmentation(voc_root, "train", cls_labels=path)
    message = str(err.value)
    assert str(path) in message and NAMES[2] in message and "train.txt" in message and "1 of the 3" in message
    with pytest.raises(ValueError, match=f"cls_labels: .*{NAMES[2]}"):
        VOCSegmentation(voc_root, "train", cls_labels={n: np.zeros(20) for n in NAMES[:2]})
    np.save(path, {n: np.zeros(19) for n in NAMES})  # wrong K: the message names the file and K
    with pytest.raises(ValueError, match=r"cls_labels.npy.*\(20,\)"):
        VOCSegmentation(voc_root, "train", cls_labels=path)


def test_class_names_argument_validation(voc_root, tmp_path):
    with pytest.raises(TypeError, match="read_class_names"):
        VOCSegmentation(voc_root, class_names=str(tmp_path / "class_names.txt"))
    with pytest.raises(TypeError, match="read_class_names"):
        VOCSegmentation(voc_root, class_names=tmp_path / "class_names.txt")
    with pytest.raises(ValueError, match="unique.*'a'"):
        VOCSegmentation(voc_root, class_names=("a", "b", "a"))
    with pytest.raises(ValueError, match="class_names"):
        VOCSegmentation(voc_root, class_names=())


# ----------------------------------------------------------------------------- custom class list


CUSTOM = ["img_a", "img_b", "img_c"]
# masks of a 3-class set (1 shirt, 2 pants, 3 shoes) with an ignore border; img_c is tag-only (all 255)
CUSTOM_MASK_VALUES = [[1, 3], [2], []]


@pytest.fixture()
def custom_root(tmp_path):
    root = tmp_path / "clothes"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True)
    for name, values in zip(CUSTOM, CUSTOM_MASK_VALUES, strict=True):
        Image.fromarray(np.full((20, 16, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((20, 16), np.uint8) if values else np.full((20, 16), 255, np.uint8)
        for i, v in enumerate(values):
            mask[2 + 6 * i: 7 + 6 * i, 3:12] = v
        mask[:, 0] = 255
        Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(CUSTOM) + "\n")
    (root / "with_bg.txt").write_text("background\nshirt\npants\nshoes\n")
    (root / "no_bg.txt").write_text("shirt\npants\nshoes\n")
    return root


@pytest.mark.parametrize("file, background", [("with_bg.txt", True), ("no_bg.txt", False)])
def test_custom_class_list(custom_root, file, background):
    names = read_class_names(custom_root / file, background=background)
    assert names == ("shirt", "pants", "shoes")
    cls = {"img_a": [1, 0, 1], "img_b": [0, 1, 0], "img_c": [0, 1, 1]}  # img_c: tags only
    ds = VOCSegmentation(custom_root, class_names=names, cls_labels=cls)
    assert ds.num_classes == 3 and ds.class_names == names and ds.check_masks() == 3
    assert [ds[i]["label"].tolist() for i in range(3)] == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    assert (ds[2]["mask"] == 255).all()
    derived = VOCSegmentation(custom_root, class_names=names)  # labels from the masks
    assert [derived.get_label(i).tolist() for i in range(3)] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    assert set(np.unique(derived.load_mask(0)).tolist()) == {0, 1, 3, 255}


def test_class_list_mask_mismatch(custom_root):
    ds = VOCSegmentation(custom_root, class_names=("shirt", "pants"))  # one class short: masks hold 3
    with pytest.raises(ValueError, match="img_a.png.*2 classes.*does not match") as err:
        ds.check_masks()
    assert "{0..2, 255}" in str(err.value) and "[3]" in str(err.value)
    with pytest.raises(ValueError, match="img_a.png.*does not match"):
        ds[0]  # the per-access check stays
    # only the first `num` masks are read: a bad mask further down is found by a larger num
    ok = VOCSegmentation(custom_root, class_names=("shirt", "pants", "shoes"))
    Image.fromarray(np.full((20, 16), 7, np.uint8), mode="L").save(custom_root / "SegmentationClass" / "img_c.png")
    assert ok.check_masks(num=2) == 2
    with pytest.raises(ValueError, match="img_c.png.*3 classes"):
        ok.check_masks(num=3)
    with pytest.raises(ValueError, match="img_c.png"):
        ok.check_masks(num=None)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num"):
            ok.check_masks(num=bad)
    for bad in (1.5, True, "8"):
        with pytest.raises(TypeError, match="num"):
            ok.check_masks(num=bad)
    no_masks = VOCSegmentation(custom_root, mask_dir=None, class_names=("shirt", "pants", "shoes"),
                               cls_labels={n: np.zeros(3) for n in CUSTOM})
    assert no_masks.check_masks() == 0


# ----------------------------------------------------------------------------- ccp_voc (real data)


@pytest.fixture(scope="module")
def ccp_names(ccp_voc_dir):
    return read_class_names(ccp_voc_dir / "class_names.txt", background=False)


@pytest.mark.parametrize("split, size", [("train", 1896), ("train_pixel", 803), ("val", 200)])
def test_ccp_voc_splits(ccp_voc_dir, ccp_names, split, size):
    ds = VOCSegmentation(ccp_voc_dir, split, class_names=ccp_names, cls_labels=ccp_voc_dir / "cls_labels.npy")
    assert len(ds) == size and ds.num_classes == 53
    assert ds.check_masks(num=8) == 8
    s = ds[0]
    assert s["image"].shape[0] == 3 and max(s["image"].shape[1:]) == 400 and s["label"].shape == (53,)
    assert s["label"].sum() >= 1


def test_ccp_voc_tag_only_and_mismatch(ccp_voc_dir, ccp_names):
    cls = ccp_voc_dir / "cls_labels.npy"
    train = VOCSegmentation(ccp_voc_dir, "train", class_names=ccp_names, cls_labels=cls)
    pixel = set(VOCSegmentation(ccp_voc_dir, "train_pixel", class_names=ccp_names, cls_labels=cls).names)
    tag_only = [i for i, n in enumerate(train.names) if n not in pixel]
    assert len(tag_only) == 1896 - 803
    for i in tag_only[:3] + tag_only[-2:]:
        assert int(train.names[i][4:]) >= 1005  # the tag-only photos are ccp_1005..ccp_2098
        assert (train.load_mask(i) == 255).all() and train.get_label(i).sum() >= 1
    first = train.names[0]
    assert first not in (train.names[i] for i in tag_only)
    assert set(np.unique(train.load_mask(0)).tolist()) == {0, 5, 36, 38, 41, 43, 50, 255}  # ccp_0001
    with pytest.raises(ValueError, match=f"{first}.png.*20 classes.*does not match"):
        VOCSegmentation(ccp_voc_dir, "train").check_masks()  # the VOC class list on CCP masks
