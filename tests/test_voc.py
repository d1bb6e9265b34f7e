"""Tests for wsseg.data.VOCSegmentation on a tiny VOC-layout tree built in tmp_path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from wsseg.data import VOC_CLASSES, VOCSegmentation, load_cls_labels, train_transform
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
