"""Tests for wsseg.data.WeakStrongTransform (CoSA's weak/strong views)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch.utils.data import default_collate

from wsseg.data import SyntheticShapes, WeakStrongTransform, train_transform
from wsseg.data.weak_strong import STRONG_OPS
from wsseg.utils import IMAGENET_MEAN, IMAGENET_STD, box_to_mask

MEAN = np.asarray(IMAGENET_MEAN, np.float64) * 255
STD = np.asarray(IMAGENET_STD, np.float64) * 255


def _uint8(view: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation of a (3, H, W) view; the views hold uint8 values exactly."""
    x = view.double().permute(1, 2, 0).numpy() * STD + MEAN
    out = np.rint(x)
    assert np.abs(x - out).max() < 1e-3
    return out.astype(np.uint8)


def _sample(h=12, w=17, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, size=(h, w)).astype(np.uint8)
    image = np.stack([mask * 40 + 10, rng.integers(0, 256, (h, w)), np.full((h, w), 7)], -1).astype(np.uint8)
    return {"image": image, "mask": mask, "label": np.array([1, 0, 1], np.float32), "name": "x"}


def _ramp(h=16, w=16):
    """A hand-made image holding every value 0..255 in each channel (channel-wise different layouts)."""
    v = np.arange(h * w, dtype=np.int64).reshape(h, w) % 256
    return np.stack([v, v[::-1], (v * 7) % 256], -1).astype(np.uint8)


def _fixed(ops, magnitude=None, **kw):
    """A transform whose geometry is the identity on an image of exactly the crop size."""
    kw = {"blur_p": 0.0, **kw}
    if magnitude is not None:
        kw["magnitude_range"] = (magnitude, magnitude + 1)
    return WeakStrongTransform(crop_size=16, scale_range=None, hflip_p=0.0, ops=ops, **kw)


def _strong(t, image, seed=0):
    out = t({"image": image}, rng=np.random.default_rng(seed))
    return _uint8(out["image"]), _uint8(out["image_strong"])


# ----------------------------------------------------------------------------------------------------------
# geometry, formats


def test_identity_views_equal_and_match_train_transform():
    t = WeakStrongTransform(crop_size=20, ops=("identity",), blur_p=0.0)
    ref = train_transform(20)
    for seed in range(6):
        out = t(_sample(), rng=np.random.default_rng(seed))
        torch.testing.assert_close(out["image_strong"], out["image"], rtol=0, atol=0)
        # Without blur the weak view and the geometry are exactly the AFA/TSCD pipeline's for the same rng.
        exp = ref(_sample(), rng=np.random.default_rng(seed))
        for key in ("image", "mask", "valid", "box", "label"):
            torch.testing.assert_close(out[key], exp[key], rtol=0, atol=0)
        assert out["name"] == "x"


def test_mask_valid_box_aligned_with_image_and_padding():
    # no rescale (bilinear image vs nearest mask would blur the encoding); random flip and padding offsets
    t = WeakStrongTransform(crop_size=(14, 24), scale_range=None, ops=("identity",), blur_p=0.0)
    flips = []
    for seed in range(12):
        out = t(_sample(), rng=np.random.default_rng(seed))
        img, mask, valid = _uint8(out["image"]), out["mask"].numpy(), out["valid"].numpy()
        np.testing.assert_array_equal(valid, box_to_mask(out["box"][None], 14, 24)[0].numpy())
        # real pixels: the image encodes the mask; padding: black image, ignore_index in the mask
        np.testing.assert_array_equal(img[..., 0][valid], mask[valid].astype(np.int64) * 40 + 10)
        assert (mask[~valid] == 255).all() and (img[~valid] == 0).all()
        assert (img[..., 2][valid] == 7).all()
        top, bottom, left, right = out["box"].tolist()
        assert (bottom - top, right - left) == (12, 17)  # the canvas is the crop: the whole image is kept
        src = _sample()
        inner = mask[top:bottom, left:right]
        flipped = np.array_equal(inner, src["mask"][:, ::-1])
        assert flipped or np.array_equal(inner, src["mask"])
        flips.append(flipped)
    assert 0 < sum(flips) < len(flips)


def test_flip_shared_by_views_and_mask():
    s = _sample(16, 16)
    t = WeakStrongTransform(crop_size=16, scale_range=None, hflip_p=1.0, blur_p=0.0, ops=("solarize",),
                            magnitude_range=(5, 6))
    out = t(s, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out["mask"].numpy(), s["mask"][:, ::-1])
    flipped = s["image"][:, ::-1]
    np.testing.assert_array_equal(_uint8(out["image"]), flipped)
    np.testing.assert_array_equal(_uint8(out["image_strong"]), np.where(flipped < 128, flipped, 255 - flipped))


def test_output_formats_and_collate():
    t = WeakStrongTransform(crop_size=32, seed=0)
    outs = [t(_sample(20, 40, seed=i)) for i in range(3)]
    for o in outs:
        assert o["image"].shape == o["image_strong"].shape == (3, 32, 32)
        assert o["image"].dtype == o["image_strong"].dtype == torch.float32
        assert o["mask"].dtype == torch.int64 and o["mask"].shape == (32, 32)
        assert o["valid"].dtype == torch.bool and o["valid"].shape == (32, 32)
        assert o["box"].dtype == torch.int64 and o["box"].shape == (4,)
        assert o["label"].dtype == torch.float32
    batch = default_collate(outs)
    assert batch["image_strong"].shape == (3, 3, 32, 32) and batch["box"].shape == (3, 4)
    # normalisation: a black padded pixel is -mean/std in both views
    o = WeakStrongTransform(crop_size=8, scale_range=None, hflip_p=0, blur_p=0, ops=("identity",))(
        {"image": np.zeros((4, 4, 3), np.uint8)})
    np.testing.assert_allclose(o["image"][:, 0, 0].numpy(), -np.asarray(IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    assert "mask" not in o and bool(o["valid"].sum() == 16)


def test_long_side_and_pad_value():
    s = {"image": np.full((100, 60, 3), 200, np.uint8), "mask": np.ones((100, 60), np.uint8)}
    t = WeakStrongTransform(crop_size=24, scale_range=None, hflip_p=0, blur_p=0, ops=("identity",),
                            long_side=20, pad_value=(10, 20, 30.9))
    out = t(s, rng=np.random.default_rng(1))
    valid = out["valid"].numpy()
    assert valid.sum() == 20 * 12
    img = _uint8(out["image"])
    np.testing.assert_array_equal(img[~valid], np.tile([10, 20, 30], ((~valid).sum(), 1)))  # truncated
    assert (img[valid] == 200).all()


def test_determinism_for_a_given_rng_and_seed():
    t = WeakStrongTransform(crop_size=20)
    a = t(_sample(), rng=np.random.default_rng(7))
    b = t(_sample(), rng=np.random.default_rng(7))
    for key in ("image", "image_strong", "mask", "valid", "box"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    diffs = [not torch.equal(t(_sample(), rng=np.random.default_rng(s))["image_strong"], a["image_strong"])
             for s in range(8, 14)]
    assert any(diffs)
    c1 = [WeakStrongTransform(crop_size=20, seed=3)(_sample())["image_strong"] for _ in range(2)]
    t3 = WeakStrongTransform(crop_size=20, seed=3)
    c2 = [t3(_sample())["image_strong"] for _ in range(2)]
    torch.testing.assert_close(c1[0], c2[0], rtol=0, atol=0)
    assert not torch.equal(c2[0], c2[1])  # the own generator advances


def test_global_random_state_untouched():
    np.random.seed(0)
    torch.manual_seed(0)
    expect_np, expect_torch = np.random.random(), torch.rand(1)
    np.random.seed(0)
    torch.manual_seed(0)
    WeakStrongTransform(crop_size=20)(_sample(), rng=np.random.default_rng(0))
    assert np.random.random() == expect_np and torch.equal(torch.rand(1), expect_torch)


def test_dataset_integration():
    ds = SyntheticShapes(num_images=2, size=40, transform=WeakStrongTransform(crop_size=32))
    s = ds.sample(1, rng=np.random.default_rng(0))
    assert s["image_strong"].shape == (3, 32, 32) and s["label"].shape == (3,)
    torch.testing.assert_close(ds.sample(1, rng=np.random.default_rng(0))["image_strong"], s["image_strong"])


# ----------------------------------------------------------------------------------------------------------
# strong operations: official magnitude mapping against PIL / numpy on hand-made images


@pytest.mark.parametrize("magnitude, threshold", [(1, 25), (3, 76), (5, 128), (9, 230), (10, 255)])
def test_solarize_threshold(magnitude, threshold):
    img = _ramp()
    weak, strong = _strong(_fixed(("solarize",), magnitude), img)
    np.testing.assert_array_equal(weak, img)
    np.testing.assert_array_equal(strong, np.where(img < threshold, img, 255 - img))


@pytest.mark.parametrize("magnitude, bits", [(1, 4), (2, 4), (3, 3), (4, 3), (5, 2), (7, 2), (8, 1), (9, 1)])
def test_posterize_bits(magnitude, bits):
    img = _ramp()
    _, strong = _strong(_fixed(("posterize",), magnitude), img)
    keep = 0xFF & ~((1 << (8 - bits)) - 1)
    np.testing.assert_array_equal(strong, img & keep)


@pytest.mark.parametrize("op, enhancer", [("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                                          ("brightness", ImageEnhance.Brightness),
                                          ("sharpness", ImageEnhance.Sharpness)])
@pytest.mark.parametrize("magnitude, factor", [(1, 0.28), (4, 0.82), (9, 1.72)])
def test_enhance_factor(op, enhancer, magnitude, factor):
    img = _ramp()
    _, strong = _strong(_fixed((op,), magnitude), img)
    expected = np.asarray(enhancer(Image.fromarray(img)).enhance(factor))
    # the factor literal may differ from 0.1 + 1.8 m / 10 in the last bit: allow one grey level
    assert np.abs(strong.astype(int) - expected.astype(int)).max() <= 1


def test_brightness_factor_by_hand():
    img = _ramp()
    _, strong = _strong(_fixed(("brightness",), 2), img)  # factor 0.46
    assert np.abs(strong.astype(float) - img * 0.46).max() <= 1.0
    _, strong = _strong(_fixed(("brightness",), 5), img)  # factor 1.0: unchanged
    np.testing.assert_array_equal(strong, img)


def test_magnitude_free_ops():
    img = (_ramp() // 2 + 50).astype(np.uint8)  # values 50..177
    _, strong = _strong(_fixed(("autocontrast",)), img)
    np.testing.assert_array_equal(strong, np.asarray(ImageOps.autocontrast(Image.fromarray(img))))
    assert strong.min() == 0 and strong.max() == 255
    _, strong = _strong(_fixed(("equalize",)), img)
    np.testing.assert_array_equal(strong, np.asarray(ImageOps.equalize(Image.fromarray(img))))
    weak, strong = _strong(_fixed(("identity",)), img)
    np.testing.assert_array_equal(strong, img)
    np.testing.assert_array_equal(weak, img)


def test_magnitudes_are_integers_one_to_nine_and_ops_uniform():
    img = _ramp()
    t = _fixed(("identity", "solarize"))
    thresholds, n_identity = set(), 0
    for seed in range(300):
        weak, strong = _strong(t, img, seed)
        changed = strong != weak
        if not changed.any():
            n_identity += 1
            continue
        thresholds.add(int(img[changed].min()))  # solarize inverts exactly the values >= threshold
    assert thresholds == {25, 51, 76, 102, 128, 153, 179, 204, 230}  # floor(25.6 m), m = 1..9
    assert 110 < n_identity < 190  # p = 1/2


def test_default_ops_are_the_official_nine():
    assert STRONG_OPS == ("identity", "autocontrast", "equalize", "solarize", "color", "contrast",
                          "brightness", "sharpness", "posterize")
    assert WeakStrongTransform().ops == STRONG_OPS


# ----------------------------------------------------------------------------------------------------------
# blur


def test_blur_shared_by_both_views_and_before_the_strong_op():
    img = _ramp()
    t = _fixed(("identity",), blur_p=1.0, blur_radius=(1.5, 1.5))
    weak, strong = _strong(t, img)
    expected = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(1.5)))
    np.testing.assert_array_equal(weak, expected)
    np.testing.assert_array_equal(strong, expected)
    t = _fixed(("solarize",), 5, blur_p=1.0, blur_radius=(1.5, 1.5))
    weak, strong = _strong(t, img)
    np.testing.assert_array_equal(weak, expected)
    np.testing.assert_array_equal(strong, np.where(expected < 128, expected, 255 - expected))


def test_blur_includes_padding_and_probability():
    img = np.full((10, 10, 3), 200, np.uint8)
    t = WeakStrongTransform(crop_size=16, scale_range=None, hflip_p=0, blur_p=1.0, blur_radius=(2.0, 2.0),
                            ops=("identity",))
    out = t({"image": img, "mask": np.ones((10, 10), np.uint8)}, rng=np.random.default_rng(0))
    top, bottom, left, right = out["box"].tolist()
    canvas = np.zeros((16, 16, 3), np.uint8)
    canvas[top:bottom, left:right] = img
    expected = np.asarray(Image.fromarray(canvas).filter(ImageFilter.GaussianBlur(2.0)))
    weak = _uint8(out["image"])
    np.testing.assert_array_equal(weak, expected)
    valid = out["valid"].numpy()
    assert weak[~valid].max() > 0 and weak[valid].min() < 200  # the blur crosses the box edge both ways
    # blur_p = 0.5: about half of the samples are blurred (the image has an edge only with padding)
    t = WeakStrongTransform(crop_size=16, scale_range=None, hflip_p=0, blur_p=0.5, ops=("identity",))
    blurred = 0
    for seed in range(200):
        o = t({"image": img}, rng=np.random.default_rng(seed))
        blurred += int(_uint8(o["image"])[~o["valid"].numpy()].max() > 0)
    assert 70 < blurred < 130


# ----------------------------------------------------------------------------------------------------------
# errors, repr


@pytest.mark.parametrize("kwargs", [
    {"blur_p": 1.5}, {"hflip_p": -0.1}, {"blur_radius": (2.0, 1.0)}, {"blur_radius": (-1.0, 1.0)},
    {"blur_radius": "ab"}, {"magnitude_range": (5, 5)}, {"magnitude_range": (1, 12)},
    {"magnitude_range": (1.5, 9)}, {"magnitude_range": (-1, 9)}, {"ops": ()}, {"ops": ("identity", "identity")},
    {"ops": ("rotate",)}, {"pad_value": 300}, {"pad_value": (0, 0)}, {"crop_size": 0},
    {"scale_range": (2.0, 1.0)}, {"seed": -1}, {"long_side": 0},
])
def test_invalid_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        WeakStrongTransform(**kwargs)


def test_invalid_samples():
    t = WeakStrongTransform(crop_size=8)
    with pytest.raises(TypeError, match="uint8"):
        t({"image": np.zeros((4, 4, 3), np.float32)})
    with pytest.raises(ValueError, match="image"):
        t({"image": np.zeros((4, 4), np.uint8)})
    with pytest.raises(TypeError, match="sample"):
        t(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        t({"image": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((3, 4), np.uint8)})
    with pytest.raises(TypeError, match="rng"):
        t({"image": np.zeros((4, 4, 3), np.uint8)}, rng=0)


def test_repr_shows_hyperparameters():
    r = repr(WeakStrongTransform(crop_size=64, blur_p=0.25, ops=("identity", "equalize")))
    for part in ("WeakStrongTransform(", "crop_size=(64, 64)", "scale_range=(0.5, 2.0)", "blur_p=0.25",
                 "blur_radius=(0.1, 2.0)", "magnitude_range=(1, 10)", "ops=('identity', 'equalize')",
                 "ignore_index=255", "long_side=None"):
        assert part in r


def test_strong_view_is_pointwise_function_of_weak_under_random_geometry():
    t = WeakStrongTransform(crop_size=20, ops=("solarize",), magnitude_range=(5, 6))
    for seed in range(5):
        out = t(_sample(), rng=np.random.default_rng(seed))
        weak = _uint8(out["image"])
        np.testing.assert_array_equal(_uint8(out["image_strong"]), np.where(weak < 128, weak, 255 - weak))
