"""Tests for wsseg.data.SyntheticShapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsseg.data import SyntheticShapes, train_transform


def test_shapes_dtypes_and_format():
    ds = SyntheticShapes(num_images=5, size=48, num_classes=4, seed=1)
    assert len(ds) == 5 and ds.num_classes == 4 and ds.class_names == ("circle", "square", "triangle", "diamond")
    s = ds[3]
    assert sorted(s) == ["image", "label", "mask", "name", "valid"]
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (48, 48) and s["mask"].dtype == torch.int64
    assert s["label"].shape == (4,) and s["label"].dtype == torch.float32
    assert s["valid"].all() and s["name"] == "synthetic_00003"
    img = ds.load_image(3)
    assert img.dtype == np.uint8 and img.shape == (48, 48, 3)


def test_determinism():
    a, b = SyntheticShapes(6, 40, seed=3), SyntheticShapes(6, 40, seed=3)
    c = SyntheticShapes(6, 40, seed=4)
    for i in [0, 5, 2, 0]:  # order does not matter
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["mask"], b[i]["mask"])
    assert any(not np.array_equal(a.load_image(i), c.load_image(i)) for i in range(6))
    assert not np.array_equal(a.load_image(0), a.load_image(1))


def test_label_iff_mask_contains_class():
    ds = SyntheticShapes(num_images=40, size=64, num_classes=5, seed=0)
    n_objects = []
    for i in range(len(ds)):
        s = ds[i]
        values = set(torch.unique(s["mask"]).tolist())
        assert values <= set(range(6))  # exact masks, no ignore pixels
        for k in range(5):
            assert bool(s["label"][k]) == ((k + 1) in values)
        n_objects.append(int(s["label"].sum()))
    assert min(n_objects) >= 1 and max(n_objects) <= 3 and len(set(n_objects)) > 1


def test_classes_learnable_from_colour():
    """A nearest-mean colour classifier separates the classes: appearance carries the class."""
    ds = SyntheticShapes(num_images=30, size=48, num_classes=6, seed=0)
    pix, lab = [], []
    for i in range(len(ds)):
        img, mask = ds.load_image(i).reshape(-1, 3).astype(np.float64), ds.load_mask(i).reshape(-1)
        pix.append(img)
        lab.append(mask)
    pix, lab = np.concatenate(pix), np.concatenate(lab)
    means = np.stack([pix[lab == k].mean(0) for k in range(7)])
    pred = ((pix[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    fg = lab > 0
    assert (pred[fg] == lab[fg]).mean() > 0.9
    # background is low-saturation, objects are saturated
    sat = pix.max(1) - pix.min(1)
    assert np.median(sat[~fg]) < 40 < np.median(sat[fg])


def test_training_transform_batches():
    ds = SyntheticShapes(num_images=4, size=40, seed=0, transform=train_transform(32, seed=0))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4, 3)
    assert (batch["mask"][~batch["valid"]] == 255).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"num_images": 0}, "num_images"),
    ({"size": 8}, "size"),
    ({"num_classes": 0}, "num_classes"),
    ({"num_classes": 9}, "num_classes"),
    ({"seed": -1}, "seed"),
])
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticShapes(**kwargs)


def test_index_and_transform_validation():
    with pytest.raises(IndexError, match="index"):
        SyntheticShapes(num_images=2, size=16)[2]
    with pytest.raises(TypeError, match="transform"):
        SyntheticShapes(transform=3)
    ds = SyntheticShapes(num_images=2, size=16, transform=lambda s: s)  # no ToTensor at the end
    with pytest.raises(TypeError, match="ToTensor"):
        ds[0]
