"""SLRNet's training augmentation: RandomResizedCrop, ColorJitter and slrnet_train_transform."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from wsseg.data import ColorJitter, RandomResizedCrop, color_jitter, slrnet_train_transform
from wsseg.data.transforms import Compose, Normalize, RandomHorizontalFlip, ResizeLongSide, ToTensor
from wsseg.utils.image import IMAGENET_MEAN, IMAGENET_STD


def _coord_sample(h: int, w: int) -> dict:
    """Image whose R channel is the row index and G channel the column index; mask = column; valid = top half."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    image = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)
    return {"image": image, "mask": xx.astype(np.uint8), "valid": yy < h // 2, "name": "x"}


def _rand_image(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- RandomResizedCrop
def test_crop_area_and_ratio_ranges_statistically():
    t = RandomResizedCrop(16, scale=(0.1, 0.5))
    g = np.random.default_rng(0)
    H = W = 200  # no attempt can fail here, so the draws are not filtered
    params = np.array([t.get_params(H, W, g) for _ in range(3000)])
    top, left, h, w = params.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
    area = h * w / (H * W)
    ratio = w / h
    # rounding of w and h to integers moves area and ratio by at most ~3 % at these sizes
    assert area.min() >= 0.1 * 0.97 and area.max() <= 0.5 * 1.03
    assert ratio.min() >= 0.75 * 0.97 and ratio.max() <= 4 / 3 * 1.03
    # area ~ U(0.1, 0.5), log-ratio ~ U(log 3/4, log 4/3)
    assert abs(area.mean() - 0.3) < 0.01 and abs(np.quantile(area, 0.25) - 0.2) < 0.01
    assert abs(np.log(ratio).mean()) < 0.01
    assert abs(np.log(ratio).std() - (2 * math.log(4 / 3)) / math.sqrt(12)) < 0.01
    # offsets uniform over the admissible range
    assert abs((top / (H - h)).mean() - 0.5) < 0.03 and abs((left / (W - w)).mean() - 0.5) < 0.03


def test_crop_distribution_matches_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    H, W, n = 180, 240, 1500  # area 0.9 often fails here: the accepted windows are a filtered distribution
    ours = np.array([RandomResizedCrop(8, scale=(0.5, 1.0)).get_params(H, W, np.random.default_rng(i))
                     for i in range(n)])
    torch.manual_seed(0)
    img = torch.zeros(1, H, W)
    theirs = np.array([tv.RandomResizedCrop.get_params(img, [0.5, 1.0], [3 / 4, 4 / 3]) for _ in range(n)])
    for p in (ours, theirs):
        assert (p[:, 2] <= H).all() and (p[:, 3] <= W).all()
    a_ours, a_theirs = ours[:, 2] * ours[:, 3] / (H * W), theirs[:, 2] * theirs[:, 3] / (H * W)
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert abs(np.quantile(a_ours, q) - np.quantile(a_theirs, q)) < 0.03
    r_ours, r_theirs = np.log(ours[:, 3] / ours[:, 2]), np.log(theirs[:, 3] / theirs[:, 2])
    assert abs(r_ours.mean() - r_theirs.mean()) < 0.02 and abs(r_ours.std() - r_theirs.std()) < 0.02


def test_crop_fallback_is_central_and_clamped():
    g = np.random.default_rng(0)
    # impossible area fraction: all 10 attempts fail
    t = RandomResizedCrop(8, scale=(2.0, 3.0))
    assert t.get_params(10, 100, g) == (0, (100 - 13) // 2, 10, 13)  # too wide: h = 10, w = round(10 * 4/3)
    assert t.get_params(100, 10, g) == ((100 - 13) // 2, 0, 13, 10)  # too tall: w = 10, h = round(10 / (3/4))
    assert t.get_params(30, 36, g) == (0, 0, 30, 36)  # ratio 1.2 inside the range: whole image


def test_mask_and_valid_follow_the_image_nearest():
    s = _coord_sample(40, 50)
    t = RandomResizedCrop((64, 72), scale=(0.3, 1.0), interpolation="nearest")
    for seed in range(5):
        top, left, h, w = t.get_params(40, 50, np.random.default_rng(seed))
        out = t(s, rng=np.random.default_rng(seed))
        assert out["image"].shape == (64, 72, 3) and out["mask"].shape == (64, 72) and out["valid"].dtype == bool
        np.testing.assert_array_equal(out["image"][..., 1], out["mask"])
        np.testing.assert_array_equal(out["valid"], out["image"][..., 0] < 20)
        # upsampling: every row/column of the window appears, nothing outside it
        assert out["mask"].min() == left and out["mask"].max() == left + w - 1
        assert out["image"][..., 0].min() == top and out["image"][..., 0].max() == top + h - 1
        assert out["name"] == "x"
    np.testing.assert_array_equal(s["mask"], _coord_sample(40, 50)["mask"])  # input untouched


def test_bicubic_image_is_aligned_with_nearest_mask():
    s = _coord_sample(60, 80)
    s["image"] = s["image"].astype(np.float32)
    t = RandomResizedCrop(50, scale=(0.5, 1.0))
    out = t(s, rng=np.random.default_rng(3))
    assert out["image"].dtype == np.float32
    # a linear ramp stays a ramp under bicubic; nearest sampling sits at most half a source pixel away
    inner = (slice(3, -3), slice(3, -3))
    diff = np.abs(out["image"][..., 1] - out["mask"].astype(np.float32))[inner]
    assert diff.max() <= 1.0
    np.testing.assert_array_equal(out["valid"][inner], (out["image"][..., 0] < 29.5)[inner])


def test_uint8_bicubic_matches_pil_crop_resize():
    img = _rand_image(30, 40)
    t = RandomResizedCrop((20, 25), scale=(0.4, 0.8))
    top, left, h, w = t.get_params(30, 40, np.random.default_rng(7))
    out = t({"image": img}, rng=np.random.default_rng(7))["image"]
    ref = np.asarray(Image.fromarray(img).crop((left, top, left + w, top + h)).resize((25, 20), Image.BICUBIC))
    np.testing.assert_array_equal(out, ref)


def test_crop_determinism_and_resume():
    s = {"image": _rand_image(50, 60), "mask": np.zeros((50, 60), np.uint8)}
    a = RandomResizedCrop(20, seed=5)
    b = RandomResizedCrop(20, seed=5)
    for _ in range(3):
        np.testing.assert_array_equal(a(s)["image"], b(s)["image"])
    g = np.random.default_rng(11)
    state = g.bit_generator.state
    first = RandomResizedCrop(20)(s, rng=g)["image"]
    g.bit_generator.state = state
    np.testing.assert_array_equal(RandomResizedCrop(20)(s, rng=g)["image"], first)
    windows = {RandomResizedCrop(20).get_params(50, 60, np.random.default_rng(i)) for i in range(20)}
    assert len(windows) > 10


# ----------------------------------------------------------------------------- ColorJitter
def test_jitter_factors_in_range_and_all_orders():
    t = ColorJitter(0.3, 1.5, 0.3, 0.1)
    g = np.random.default_rng(0)
    draws = [t.get_params(g) for _ in range(2000)]
    orders = {d[0] for d in draws}
    assert orders == set(itertools.permutations(range(4)))
    b, c, s, h = (np.array([d[i] for d in draws]) for i in range(1, 5))
    assert b.min() >= 0.7 and b.max() <= 1.3 and abs(b.mean() - 1.0) < 0.02
    assert c.min() >= 0.0 and c.max() <= 2.5 and abs(c.mean() - 1.25) < 0.05  # lower bound max(0, 1 - 1.5)
    assert s.min() >= 0.7 and s.max() <= 1.3
    assert h.min() >= -0.1 and h.max() <= 0.1 and abs(h.mean()) < 0.01 and h.max() > 0.09
    assert ColorJitter(brightness=0.2).get_params(g)[2:] == (None, None, None)


def test_jitter_identity_when_all_zero():
    for image in (_rand_image(), _rand_image().astype(np.float32) + 0.25):
        s = {"image": image, "mask": np.ones(image.shape[:2], np.uint8)}
        out = ColorJitter(seed=0)(s)
        assert out["image"] is image
    img = _rand_image()
    np.testing.assert_array_equal(color_jitter(img), img)


def test_jitter_probability():
    img = _rand_image()
    assert ColorJitter(0.5, p=0.0)({"image": img}, rng=np.random.default_rng(0))["image"] is img
    g = np.random.default_rng(1)
    changed = [ColorJitter(0.5, p=0.3)({"image": img}, rng=g)["image"] is not img for _ in range(400)]
    assert 0.22 < np.mean(changed) < 0.38


def _pil_chain(img: np.ndarray, order, factors) -> np.ndarray:
    pil = Image.fromarray(img)
    for i in order:
        f = factors[i]
        if f is None:
            continue
        if i == 0:
            pil = ImageEnhance.Brightness(pil).enhance(f)
        elif i == 1:
            pil = ImageEnhance.Contrast(pil).enhance(f)
        elif i == 2:
            pil = ImageEnhance.Color(pil).enhance(f)
        else:
            hsv = np.array(pil.convert("HSV"))
            hsv[..., 0] = (hsv[..., 0].astype(int) + int(f * 255)) % 256
            pil = Image.fromarray(hsv, "HSV").convert("RGB")
    return np.asarray(pil)


@pytest.mark.parametrize("op", range(4))
def test_each_op_equals_pil(op):
    img = _rand_image(16, 20, seed=op)
    f = [1.27, 0.74, 1.18, 0.07][op]
    factors = [None] * 4
    factors[op] = f
    np.testing.assert_array_equal(color_jitter(img, *factors), _pil_chain(img, (0, 1, 2, 3), factors))


def test_jitter_transform_equals_pil_chain_with_drawn_factors():
    img = _rand_image(20, 24)
    t = ColorJitter(0.3, 0.3, 0.3, 0.1)
    for seed in range(6):
        g = np.random.default_rng(seed)
        assert g.random() < 1.0
        order, *factors = t.get_params(g)
        out = t({"image": img, "mask": np.zeros((20, 24), np.uint8)}, rng=np.random.default_rng(seed))
        np.testing.assert_array_equal(out["image"], _pil_chain(img, order, factors))
        np.testing.assert_array_equal(out["mask"], 0)


def test_jitter_matches_torchvision_pil_functions():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = _rand_image(18, 22, seed=3)
    order, b, c, s, h = (2, 0, 3, 1), 1.21, 0.83, 0.77, -0.06
    pil = Image.fromarray(img)
    fns = {0: (tvf.adjust_brightness, b), 1: (tvf.adjust_contrast, c), 2: (tvf.adjust_saturation, s),
           3: (tvf.adjust_hue, h)}
    for i in order:
        fn, f = fns[i]
        pil = fn(pil, f)
    np.testing.assert_array_equal(color_jitter(img, b, c, s, h, order=order), np.asarray(pil))


def test_hand_computed_adjustments():
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert color_jitter(red, hue_factor=1 / 3)[0, 0].tolist() == [0, 255, 0]
    blue = color_jitter(red, hue_factor=-1 / 3)[0, 0]  # shift -85 -> hue 171/256 of a turn, just past blue
    assert blue[2] == 255 and blue[1] == 0 and blue[0] <= 6
    # shift int(127.5) = 127 -> hue 127/255 * 6 = 2.988 sextants: B = 0.988 * 255 (not exactly cyan)
    assert color_jitter(red, hue_factor=0.5)[0, 0].tolist() == [0, 255, 252]
    grey = np.full((2, 2, 3), 90, np.uint8)
    np.testing.assert_array_equal(color_jitter(grey, hue_factor=0.3), grey)
    assert color_jitter(np.full((1, 1, 3), 100, np.uint8), brightness_factor=1.5)[0, 0].tolist() == [150] * 3
    assert color_jitter(np.full((1, 1, 3), 200, np.uint8), brightness_factor=1.5)[0, 0].tolist() == [255] * 3
    two = np.array([[[50] * 3, [150] * 3]], np.uint8)  # luma mean 100
    assert color_jitter(two, contrast_factor=0.5)[0].tolist() == [[75] * 3, [125] * 3]
    # saturation 0 -> luma L = (299 R + 587 G + 114 B) / 1000
    assert color_jitter(red, saturation_factor=0.0)[0, 0].tolist() == [76] * 3


# ----------------------------------------------------------------------------- factory / method
def test_factory_pipeline_and_outputs():
    t = slrnet_train_transform(33, seed=0)
    kinds = [type(x) for x in t.transforms]
    assert kinds == [RandomResizedCrop, RandomHorizontalFlip, ColorJitter, Normalize, ToTensor]
    rrc, flip, jit = t.transforms[:3]
    assert rrc.scale == (0.9, 1.0) and rrc.ratio == pytest.approx((0.75, 4 / 3)) and rrc.interpolation == "bicubic"
    assert flip.p == 0.5 and (jit.brightness, jit.contrast, jit.saturation, jit.hue, jit.p) == (0.3, 0.3, 0.3, 0.1, 1)
    s = t({"image": _rand_image(40, 50), "mask": np.zeros((40, 50), np.uint8), "label": np.ones(3)})
    assert s["image"].shape == (3, 33, 33) and s["image"].dtype == torch.float32
    assert s["mask"].dtype == torch.int64 and bool(s["valid"].all()) and "box" not in s
    t2 = slrnet_train_transform((20, 30), jitter=None, hflip_p=0, long_side=64)
    assert [type(x) for x in t2.transforms] == [ResizeLongSide, RandomResizedCrop, Normalize, ToTensor]
    assert isinstance(t2, Compose)
    assert not any(isinstance(x, ColorJitter) for x in slrnet_train_transform(jitter=(0, 0, 0, 0)).transforms)


def test_factory_identity_geometry_gives_normalised_image():
    img = _rand_image(21, 21)
    t = slrnet_train_transform(21, scale=(1.0, 1.0), hflip_p=0, jitter=None, seed=0)
    out = t({"image": img})["image"]
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    ref = (img.astype(np.float32) / 255.0 - mean) / std
    torch.testing.assert_close(out, torch.from_numpy(ref.transpose(2, 0, 1).copy()), rtol=1e-5, atol=1e-5)


def test_factory_determinism():
    s = {"image": _rand_image(40, 44), "mask": np.zeros((40, 44), np.uint8)}
    a = slrnet_train_transform(25, seed=3)
    b = slrnet_train_transform(25, seed=3)
    for _ in range(3):
        torch.testing.assert_close(a(s)["image"], b(s)["image"], rtol=0, atol=0)


def test_slrnet_method_uses_official_pipeline():
    from wsseg.training import SLRNetMethod, SLRNetRecipe

    r = SLRNetRecipe()
    assert r.jitter == (0.3, 0.3, 0.3, 0.1) and r.scale_range == (0.9, 1.0) and r.hflip_p == 0.5
    t = SLRNetMethod(SLRNetRecipe(crop_size=33, jitter=(0.1, 0.0, 0.2, 0.05))).train_transform()
    rrc, _, jit = t.transforms[:3]
    assert isinstance(rrc, RandomResizedCrop) and rrc.size == (33, 33) and rrc.scale == (0.9, 1.0)
    assert (jit.brightness, jit.contrast, jit.saturation, jit.hue) == (0.1, 0.0, 0.2, 0.05)
    assert SLRNetRecipe.from_overrides(["jitter=0,0,0,0"]).jitter == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="jitter"):
        SLRNetRecipe(jitter=(0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="jitter"):
        SLRNetRecipe(jitter=(0.3, 0.3, 0.3, 0.7))


# ----------------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="size"):
        RandomResizedCrop(0)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrop(8, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="ratio"):
        RandomResizedCrop(8, ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="interpolation"):
        RandomResizedCrop(8, interpolation="lanczos3")
    with pytest.raises(ValueError, match="sample\\['image'\\]"):
        RandomResizedCrop(8)({"image": np.zeros((4, 4))})
    with pytest.raises(ValueError, match="sample\\['mask'\\]"):
        RandomResizedCrop(8)({"image": np.zeros((4, 4, 3)), "mask": np.zeros((3, 4))})
    with pytest.raises(TypeError, match="rng"):
        RandomResizedCrop(8)({"image": np.zeros((4, 4, 3))}, rng=0)
    with pytest.raises(ValueError, match="brightness"):
        ColorJitter(brightness=-0.1)
    with pytest.raises(ValueError, match="hue"):
        ColorJitter(hue=0.6)
    with pytest.raises(ValueError, match="p:"):
        ColorJitter(p=1.5)
    with pytest.raises(ValueError, match="order"):
        color_jitter(_rand_image(), 1.1, order=(0, 1, 1, 3))
    with pytest.raises(ValueError, match="hue_factor"):
        color_jitter(_rand_image(), hue_factor=0.7)
    with pytest.raises(ValueError, match="contrast_factor"):
        color_jitter(_rand_image(), contrast_factor=-1.0)
    with pytest.raises(ValueError, match="image"):
        color_jitter(np.zeros((4, 4)), 1.1)
    with pytest.raises(ValueError, match="jitter"):
        slrnet_train_transform(jitter=(0.3, 0.3, 0.3))
