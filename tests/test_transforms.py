"""Tests for wsseg.data.transforms (geometry alignment, padding convention, RNG, validation)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from wsseg.data import transforms as T
from wsseg.utils import IMAGENET_MEAN, IMAGENET_STD, box_to_mask


def _sample(h=12, w=17, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
    image = np.stack([mask * 40, np.arange(h * w).reshape(h, w) % 251, np.full((h, w), 7)], -1).astype(np.uint8)
    return {"image": image, "mask": mask, "name": "x"}


def test_rescale_factor_two_nearest_mask_is_kron():
    s = _sample()
    out = T.RandomRescale((2.0, 2.0))(s)
    assert out["image"].shape == (24, 34, 3) and out["image"].dtype == np.uint8
    np.testing.assert_array_equal(out["mask"], np.kron(s["mask"], np.ones((2, 2), np.uint8)))
    # constant channel stays constant under bilinear interpolation
    assert (out["image"][..., 2] == 7).all()
    assert out["name"] == "x"


def test_rescale_size_is_floor_and_in_range():
    t = T.RandomRescale((0.5, 2.0), seed=3)
    hs = []
    for _ in range(50):
        out = t(_sample(10, 13))
        h, w = out["mask"].shape
        assert out["image"].shape[:2] == (h, w)
        assert 5 <= h <= 20 and 6 <= w <= 26
        hs.append(h)
    assert min(hs) < 9 and max(hs) > 14  # both shrinking and enlarging happen


def test_rescale_float_image_and_valid():
    s = _sample()
    s["image"] = s["image"].astype(np.float32)
    s["valid"] = np.ones(s["mask"].shape, bool)
    out = T.RandomRescale((0.5, 0.5))(s)
    assert out["image"].dtype == np.float32 and out["valid"].dtype == bool and out["valid"].shape == (6, 8)
    np.testing.assert_allclose(out["image"][..., 2], 7.0, atol=1e-4)


def test_flip():
    s = _sample()
    out = T.RandomHorizontalFlip(p=1.0)(s)
    np.testing.assert_array_equal(out["image"], s["image"][:, ::-1])
    np.testing.assert_array_equal(out["mask"], s["mask"][:, ::-1])
    out = T.RandomHorizontalFlip(p=0.0)(s)
    np.testing.assert_array_equal(out["mask"], s["mask"])
    t = T.RandomHorizontalFlip(p=0.5, seed=0)
    flips = sum(bool((t(s)["mask"] != s["mask"]).any()) for _ in range(200))
    assert 70 < flips < 130


def test_crop_smaller_image_padding_box_and_alignment():
    s = _sample(5, 7)
    for seed in range(10):
        out = T.RandomCrop(9, pad_value=(1, 2, 3), seed=seed)(s)
        img, mask, valid, box = out["image"], out["mask"], out["valid"], out["box"]
        assert img.shape == (9, 9, 3) and mask.shape == (9, 9) and valid.shape == (9, 9)
        expected = box_to_mask(torch.from_numpy(box)[None], 9, 9)[0].numpy()
        np.testing.assert_array_equal(valid, expected)
        top, bottom, left, right = box.tolist()
        assert (bottom - top, right - left) == (5, 7)  # whole image inside the crop
        np.testing.assert_array_equal(mask[valid].reshape(5, 7), s["mask"])
        np.testing.assert_array_equal(img[valid].reshape(5, 7, 3), s["image"])
        assert (mask[~valid] == 255).all()
        np.testing.assert_array_equal(img[~valid], np.tile([1.0, 2.0, 3.0], ((~valid).sum(), 1)))


def test_crop_larger_image_is_a_window():
    s = _sample(20, 30)
    out = T.RandomCrop((8, 10), seed=1)(s)
    assert out["valid"].all() and out["box"].tolist() == [0, 8, 0, 10]
    # find the window: channel 1 encodes the flat position modulo 251 and the mask is aligned with it
    m = out["mask"]
    hits = [(y, x) for y in range(13) for x in range(21)
            if (s["mask"][y:y + 8, x:x + 10] == m).all()
            and (s["image"][y:y + 8, x:x + 10] == out["image"]).all()]
    assert hits


def test_crop_cat_max_ratio_retries_away_from_uniform_windows():
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 36:] = 1  # 90 % background: almost every 8x8 window is pure background
    s = {"image": np.zeros((40, 40, 3), np.uint8), "mask": mask}
    rng_plain, rng_retry = np.random.default_rng(0), np.random.default_rng(0)
    plain = [T.RandomCrop(8)(s, rng=rng_plain)["mask"] for _ in range(40)]
    retry = [T.RandomCrop(8, cat_max_ratio=0.75)(s, rng=rng_retry)["mask"] for _ in range(40)]
    assert sum((m == 1).any() for m in retry) > sum((m == 1).any() for m in plain)


def test_normalize_uses_0_255_imagenet_stats():
    img = np.array([[[123.675, 116.28, 103.53], [255.0, 0.0, 58.395]]], np.float32)
    out = T.Normalize()({"image": img})["image"]
    np.testing.assert_allclose(out[0, 0], 0.0, atol=1e-5)
    np.testing.assert_allclose(out[0, 1], [(255 - 123.675) / 58.395, -116.28 / 57.12, (58.395 - 103.53) / 57.375],
                               rtol=1e-5)


def test_zero_padding_is_before_normalisation():
    out = T.train_transform(16, scale_range=None, hflip_p=0.0, seed=0)(_sample(4, 4))
    pad = out["image"][:, ~out["valid"]]
    expected = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(pad, expected[:, None].expand_as(pad))


def test_to_tensor_and_train_pipeline_batchable():
    t = T.train_transform(32, seed=0)
    samples = [t(_sample(h, w, seed=h)) for h, w in [(10, 50), (40, 20), (33, 33)]]
    for s in samples:
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 32, 32)
        assert s["mask"].dtype == torch.int64 and s["valid"].dtype == torch.bool
        assert s["box"].dtype == torch.int64
        assert (s["mask"][~s["valid"]] == 255).all()
    batch = default_collate(samples)
    assert batch["image"].shape == (3, 3, 32, 32) and batch["name"] == ["x", "x", "x"]


def test_reproducible_and_seed_dependent():
    def run(seed):
        t = T.train_transform(16, seed=seed)
        return [t(_sample(20, 24))["mask"] for _ in range(4)]

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_explicit_rng_is_used():
    t = T.RandomCrop(8, seed=123)
    s = _sample(20, 20)
    a = t(s, rng=np.random.default_rng(1))["box"]
    g = np.random.default_rng(1)
    oy, ox = int(g.integers(0, 1)), int(g.integers(0, 1))  # no padding: offsets are 0
    y0, x0 = int(g.integers(0, 13)), int(g.integers(0, 13))
    out = t(s, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(out["mask"], s["mask"][y0:y0 + 8, x0:x0 + 8])
    assert (oy, ox) == (0, 0) and a.tolist() == [0, 8, 0, 8]


def test_worker_reseeding(monkeypatch):
    t = T.RandomCrop(8, seed=0)
    s = _sample(30, 30)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(seed=11, id=0))
    w0 = [t(s)["mask"].copy() for _ in range(3)]
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(seed=12, id=1))
    w1 = [t(s)["mask"].copy() for _ in range(3)]
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: types.SimpleNamespace(seed=11, id=0))
    w0_again = [t(s)["mask"].copy() for _ in range(3)]
    assert any((a != b).any() for a, b in zip(w0, w1, strict=True))
    assert all((a == b).all() for a, b in zip(w0, w0_again, strict=True))


def test_eval_transform_full_image_and_long_side():
    s = _sample(10, 20)
    out = T.eval_transform()(s)
    assert out["image"].shape == (3, 10, 20) and out["valid"].all() and "box" not in out
    expected = (torch.from_numpy(s["image"]).permute(2, 0, 1).float() / 255
                - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out["image"], expected)
    out = T.eval_transform(40)(s)
    assert out["image"].shape == (3, 20, 40)
    torch.testing.assert_close(out["mask"], torch.from_numpy(np.kron(s["mask"], np.ones((2, 2)))).long())


@pytest.mark.parametrize("make, match", [
    (lambda: T.RandomRescale((2.0, 1.0)), "scale_range"),
    (lambda: T.RandomRescale((0.0, 1.0)), "scale_range"),
    (lambda: T.RandomHorizontalFlip(1.5), "p"),
    (lambda: T.RandomCrop(0), "crop_size"),
    (lambda: T.RandomCrop((4, 4, 4)), "crop_size"),
    (lambda: T.RandomCrop(4, pad_value=(1, 2)), "pad_value"),
    (lambda: T.RandomCrop(4, cat_max_ratio=0.0), "cat_max_ratio"),
    (lambda: T.ResizeLongSide(0), "long_side"),
    (lambda: T.Normalize(mean=(0.5, 0.5)), "mean"),
    (lambda: T.Normalize(std=(0.5, 0.0, 0.5)), "std"),
    (lambda: T.RandomCrop(4, seed=-1), "seed"),
])
def test_constructor_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_call_validation():
    with pytest.raises(TypeError, match="transforms"):
        T.Compose([1])
    with pytest.raises(TypeError, match="sample"):
        T.RandomCrop(4)(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="image"):
        T.RandomCrop(4)({"image": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="mask"):
        T.RandomCrop(4)({"image": np.zeros((4, 4, 3)), "mask": np.zeros((4, 5))})
    with pytest.raises(TypeError, match="rng"):
        T.RandomCrop(4)({"image": np.zeros((4, 4, 3))}, rng=0)


def test_train_transform_long_side_resizes_before_rescale():
    import numpy as np

    from wsseg.data.transforms import train_transform

    img = np.zeros((480, 640, 3), np.uint8)
    mask = np.zeros((480, 640), np.uint8)
    mask[:, 320:] = 1  # right half is class 1
    t = train_transform(224, scale_range=None, hflip_p=0.0, long_side=224, seed=0)
    out = t({"image": img, "mask": mask})
    # 640x480 -> 224x168, then a 224x224 crop: the whole image fits, so the valid region is 168 rows.
    assert int(out["valid"].any(dim=1).sum()) == 168
    assert int(out["valid"].any(dim=0).sum()) == 224
    # the right half (112 columns of the resized image) keeps class 1
    assert int((out["mask"] == 1).any(dim=0).sum()) == 112
