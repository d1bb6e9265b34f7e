"""Tests for ViT-PCM's two-view transform (wsseg.data.vitpcm_views) and its patch-grid geometry
(wsseg.layers.patch_grid_transform)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from tests.reference.official_vitpcm_views import (
    reference_color_transform,
    reference_patch_grid_transform,
    reference_view1_to_view2,
)
from wsseg.data import ViTPCMTwoViewTransform, ViTPCMViewParams, vitpcm_color_jitter
from wsseg.layers import PatchGridTransform, patch_grid_transform, patch_grid_view1_to_view2

ALL_FLIPS = [tuple(bool(v) for v in f) for f in itertools.product([False, True], repeat=3)]
NO_JITTER = {"brightness": 0.0, "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": 0.0, "grayscale_p": 0.0}


def _params(flips, crop_box=None):
    return ViTPCMViewParams(0.0, 1.0, 1.0, 0.0, False, flips, crop_box)


def _pool(view: torch.Tensor, patch: int) -> torch.Tensor:
    """Undo the default [-1, 1] normalisation and average each patch: (3, S, S) -> (3, S/p, S/p)."""
    x = view.double() * 127.5 + 127.5
    return F.avg_pool2d(x[None], patch)[0]


# ----------------------------------------------------------------------------------------------------------
# colour jitter (TF semantics)


def test_color_jitter_hand_values():
    x = np.array([[[100.0, 50.0, 10.0]], [[20.0, 30.0, 40.0]]], np.float32)
    np.testing.assert_allclose(vitpcm_color_jitter(x, brightness_delta=0.2), x + 0.2, atol=1e-5)
    # contrast: per-channel mean (60, 40, 25), (x - m) * 1.5 + m
    expect = np.array([[[120.0, 55.0, 2.5]], [[0.0, 25.0, 47.5]]])
    np.testing.assert_allclose(vitpcm_color_jitter(x, contrast_factor=1.5), expect, atol=1e-4)
    gray = vitpcm_color_jitter(x, grayscale=True)
    np.testing.assert_allclose(gray[0, 0], [60.38] * 3, atol=1e-3)  # 0.2989*100 + 0.587*50 + 0.114*10
    # saturation 0 -> grey value v = max; hue by 1/2 turn of pure red -> cyan
    np.testing.assert_allclose(vitpcm_color_jitter(x, saturation_factor=0.0)[0, 0], [100.0] * 3, atol=1e-4)
    red = np.array([[[200.0, 0.0, 0.0]]], np.float32)
    np.testing.assert_allclose(vitpcm_color_jitter(red, hue_delta=0.5)[0, 0], [0.0, 200.0, 200.0], atol=1e-3)


@pytest.mark.parametrize("factors", [(0.15, 0.7, 1.3, 0.07, False), (-0.2, 1.8, 0.6, -0.1, False),
                                     (0.0, 2.0, 1.5, 0.1, True), (0.1, 1.0, 1.0, 0.0, False)])
def test_color_jitter_matches_colorsys_reference(factors):
    rng = np.random.default_rng(3)
    image = rng.uniform(0, 255, size=(5, 6, 3)).astype(np.float32)
    out = vitpcm_color_jitter(image, *factors)
    ref = reference_color_transform(image, *factors)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out, ref, atol=2e-3)


def test_color_jitter_does_not_clip():
    x = np.array([[[250.0, 10.0, 128.0]], [[5.0, 240.0, 128.0]]], np.float32)
    out = vitpcm_color_jitter(x, contrast_factor=2.0)
    assert out.max() > 255  # contrast: (250 - 127.5) * 2 + 127.5 = 372.5 survives (TF float ops do not clip)


# ----------------------------------------------------------------------------------------------------------
# two-view transform: format, seeding, recorded parameters


def _sample(size=(40, 50), seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (*size, 3)).astype(np.uint8),
            "mask": rng.integers(0, 4, size).astype(np.uint8), "label": np.array([1, 0, 1], np.float32),
            "name": "img"}


def test_output_format_official_sizes():
    s = ViTPCMTwoViewTransform(seed=0)(_sample())
    assert s["image"].shape == (3, 384, 384) and s["image"].dtype == torch.float32
    assert s["image_view2"].shape == (3, 192, 192) and s["image_view2"].dtype == torch.float32
    assert s["mask"].shape == (384, 384) and s["mask"].dtype == torch.int64
    assert s["valid"].shape == (384, 384) and bool(s["valid"].all())
    for key in ("flips_view1", "flips_view2"):
        assert s[key].shape == (3,) and s[key].dtype == torch.bool
    assert s["crop_box_view2"].shape == (4,) and s["crop_box_view2"].dtype == torch.int64
    assert s["name"] == "img" and s["label"].tolist() == [1.0, 0.0, 1.0]
    batch = default_collate([s, ViTPCMTwoViewTransform(seed=1)(_sample())])
    out = patch_grid_view1_to_view2(torch.rand(2, 21, 24, 24), batch["flips_view1"], batch["flips_view2"],
                                    batch["crop_box_view2"])
    assert out.shape == (2, 21, 12, 12)


def test_seeded_determinism():
    outs = [ViTPCMTwoViewTransform(seed=s)(_sample()) for s in (5, 5, 6)]
    for key in ("image", "image_view2", "mask", "flips_view1", "flips_view2", "crop_box_view2"):
        assert torch.equal(outs[0][key], outs[1][key]), key
    assert not torch.equal(outs[0]["image"], outs[2]["image"])
    # an explicit generator gives the same stream as the seed
    t = ViTPCMTwoViewTransform(seed=123)
    via_rng = t(_sample(), rng=np.random.default_rng(5))
    assert torch.equal(via_rng["image_view2"], outs[0]["image_view2"])
    # consecutive calls of one transform differ (the stream advances) and replay from the same seed
    t1, t2 = ViTPCMTwoViewTransform(seed=9), ViTPCMTwoViewTransform(seed=9)
    a = [t1.get_params(t1._generator(None)) for _ in range(3)]
    b = [t2.get_params(t2._generator(None)) for _ in range(3)]
    assert a == b and a[0] != a[1]


def test_params_within_official_ranges():
    t = ViTPCMTwoViewTransform()
    rng = np.random.default_rng(0)
    draws = [p for _ in range(300) for p in t.get_params(rng)]
    assert all(-0.2 <= p.brightness_delta <= 0.2 and 0.5 <= p.contrast_factor <= 2.0 for p in draws)
    assert all(0.5 <= p.saturation_factor <= 1.5 and -0.1 <= p.hue_delta <= 0.1 for p in draws)
    gray = np.mean([p.grayscale for p in draws])
    crops = np.mean([p.crop_box is not None for p in draws[1::2]])
    flips = np.mean([p.flips for p in draws], axis=0)
    assert 0.06 < gray < 0.14 and 0.24 < crops < 0.36 and np.all(np.abs(flips - 0.5) < 0.06)
    assert all(p.crop_box is None for p in draws[0::2])  # view 1 is never cropped


def test_flags_and_crop_recorded():
    always = ViTPCMTwoViewTransform(crop_prob=1.0, flip_lr_p=1.0, flip_ud_p=1.0, transpose_p=1.0, seed=0)
    never = ViTPCMTwoViewTransform(crop_prob=0.0, flip_lr_p=0.0, flip_ud_p=0.0, transpose_p=0.0, seed=0)
    for seed in range(5):
        a = always(_sample(seed=seed), rng=np.random.default_rng(seed))
        assert a["flips_view1"].tolist() == [True] * 3 and a["flips_view2"].tolist() == [True] * 3
        top, left, bottom, right = a["crop_box_view2"].tolist()
        assert bottom - top == 8 and right - left == 8 and 0 <= top <= 16 and 0 <= left <= 16
        n = never(_sample(seed=seed), rng=np.random.default_rng(seed))
        assert n["flips_view1"].tolist() == [False] * 3 and n["flips_view2"].tolist() == [False] * 3
        assert n["crop_box_view2"].tolist() == [0, 0, 24, 24]
    assert ViTPCMTwoViewTransform.from_preset("coco14").crop_prob == 0.0
    assert ViTPCMTwoViewTransform.from_preset("voc12", seed=3).crop_prob == 0.3


def test_crop_content_is_resized_crop_of_the_resized_image():
    """Jitter and flips off: view 2 = the crop box of the 384 image, bilinearly (align_corners) resized."""
    t = ViTPCMTwoViewTransform(**NO_JITTER)
    image = np.random.default_rng(1).uniform(0, 255, (384, 384, 3)).astype(np.float32)
    s = t.apply({"image": image}, (_params((False,) * 3), _params((False,) * 3, (48, 112, 176, 240))))
    assert s["crop_box_view2"].tolist() == [3, 7, 11, 15]
    crop = torch.from_numpy(image[48:176, 112:240]).permute(2, 0, 1)[None].double()
    ref = F.interpolate(crop, size=(192, 192), mode="bilinear", align_corners=True)[0]
    np.testing.assert_allclose((s["image_view2"].double() * 127.5 + 127.5).numpy(), ref.numpy(), atol=5e-3)
    np.testing.assert_allclose((s["image"].double() * 127.5 + 127.5).numpy(), image.transpose(2, 0, 1), atol=1e-3)


@pytest.mark.parametrize("mode, p_last", [("official", 9 / 25), ("uniform", 1 / 17)])
def test_crop_corners_on_patch_grid(mode, p_last):
    t = ViTPCMTwoViewTransform(crop_prob=1.0, crop_start=mode)
    rng = np.random.default_rng(0)
    boxes = np.array([t.get_params(rng)[1].crop_box for _ in range(2000)])
    assert np.all(boxes % 16 == 0) and np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= 384)
    assert np.all(boxes[:, 2:] - boxes[:, :2] == 128)
    assert set(np.unique(boxes[:, 0])) == set(range(0, 257, 16))
    assert abs(np.mean(boxes[:, :2] == 256) - p_last) < 0.03


# ----------------------------------------------------------------------------------------------------------
# image side == grid side


def _index_image(size, patch):
    """Pixel value = its patch index (channel 0), reversed index (channel 1), row (channel 2)."""
    g = size // patch
    idx = np.arange(g * g, dtype=np.float32).reshape(g, g)
    idx = np.kron(idx, np.ones((patch, patch), np.float32))
    return np.stack([idx, g * g - 1 - idx, idx // g], -1), idx


@pytest.mark.parametrize("crop", [None, (8, 4, 24, 20)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_image_and_grid_agree_exactly_without_resampling(crop, align_corners):
    """All 8 x 8 flip combinations; no resampling (crop == view-2 size, or view 2 = whole image)."""
    size, patch = 32, 4
    view2 = 16 if crop is not None else 32
    t = ViTPCMTwoViewTransform(image_size=size, view2_size=view2, patch_size=patch, crop_size=16,
                               align_corners=align_corners, **NO_JITTER)
    image, idx = _index_image(size, patch)
    grid = torch.from_numpy(np.stack([image[::patch, ::patch, c] for c in range(3)]))[None].double()
    mask = idx.astype(np.int64)
    for f1, f2 in itertools.product(ALL_FLIPS, ALL_FLIPS):
        s = t.apply({"image": image, "mask": mask}, (_params(f1), _params(f2, crop)))
        g1, g2 = _pool(s["image"], patch)[None], _pool(s["image_view2"], patch)[None]
        fl1, fl2, box = torch.tensor([f1]), torch.tensor([f2]), s["crop_box_view2"][None]
        n = view2 // patch
        kw = {"align_corners": align_corners}
        torch.testing.assert_close(g1, patch_grid_transform(grid, fl1, None, out_size=None, **kw), atol=1e-4, rtol=0)
        torch.testing.assert_close(g2, patch_grid_transform(grid, fl2, box, out_size=n, **kw), atol=1e-4, rtol=0)
        torch.testing.assert_close(g2, patch_grid_view1_to_view2(g1, fl1, fl2, box, out_size=n, **kw),
                                   atol=1e-4, rtol=0)
        assert torch.equal(s["mask"][::patch, ::patch], g1[0, 0].round().long())  # mask follows view 1


def _position_errors(image_align, grid_align):
    """Max |image-side - grid-side| patch coordinate (view-1 patch units) at the official sizes:
    ``{"full" | "crop": (worst cell, worst interior cell)}``."""
    t = ViTPCMTwoViewTransform(align_corners=image_align, **NO_JITTER)
    ys, xs = np.mgrid[0:384, 0:384].astype(np.float32)
    image = np.stack([(xs + 0.5) / 2, (ys + 0.5) / 2, np.full_like(xs, 64.0)], -1)  # pooled / 8 - 0.5 = cell
    errors = {}
    for crop in (None, (32, 96, 160, 224)):
        worst = interior = 0.0
        for i, f1 in enumerate(ALL_FLIPS):
            f2 = ALL_FLIPS[(3 * i + 1) % 8]
            s = t.apply({"image": image}, (_params(f1), _params(f2, crop)))
            g1 = _pool(s["image"], 16)[None] / 8 - 0.5
            g2 = _pool(s["image_view2"], 16)[None] / 8 - 0.5
            mapped = patch_grid_view1_to_view2(g1, torch.tensor([f1]), torch.tensor([f2]),
                                               s["crop_box_view2"][None], align_corners=grid_align)
            err = (mapped - g2)[0, :2].abs()
            worst = max(worst, float(err.max()))
            interior = max(interior, float(err[:, 1:-1, 1:-1].max()))
        errors["crop" if crop else "full"] = (worst, interior)
    return errors


def test_image_and_grid_agree_with_resampling():
    """Position-encoding image at 384/192/128: the grid mapping tracks the image geometry (in patches)."""
    official = _position_errors(True, True)
    mixed = _position_errors(True, False)
    half = _position_errors(False, False)
    # official: TF align_corners=True on both sides leaves a sub-patch misalignment, largest without crop
    assert 0.4 < official["full"][0] < 0.5 and 0.1 < official["crop"][0] < 0.2 and official["crop"][1] > 0.1
    # half-pixel grid resize against the official image side: close everywhere but the crop's border cells
    assert mixed["full"][0] < 0.04 and mixed["crop"][1] < 0.04 and mixed["crop"][0] < 0.2
    # half-pixel on both sides: exact, except the clamped border cells of a crop
    assert half["full"][0] < 1e-4 and half["crop"][1] < 1e-4 and half["crop"][0] < 0.2


# ----------------------------------------------------------------------------------------------------------
# patch_grid_transform


def _random_case(b=6, c=5, g=24, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, g, g, generator=gen, dtype=dtype)
    flips = torch.rand(b, 3, generator=gen) < 0.5
    top = torch.randint(0, g - 2, (b,), generator=gen)
    left = torch.randint(0, g - 2, (b,), generator=gen)
    h = torch.minimum(torch.randint(1, g, (b,), generator=gen), g - top)
    w = torch.minimum(torch.randint(1, g, (b,), generator=gen), g - left)
    return x, flips, torch.stack([top, left, top + h, left + w], -1)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("out_size", [12, 24, 1, 31])
def test_matches_per_image_reference(align_corners, out_size):
    x, _, boxes = _random_case(b=64, c=3)
    pairs = list(itertools.product(ALL_FLIPS, ALL_FLIPS))  # every (T1, T2) combination once
    flips, flips2 = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    kw = {"align_corners": align_corners}
    for b in (boxes, None):
        torch.testing.assert_close(patch_grid_transform(x, flips, b, out_size=out_size, **kw),
                                   reference_patch_grid_transform(x, flips, b, out_size, **kw))
        torch.testing.assert_close(patch_grid_view1_to_view2(x, flips, flips2, b, out_size=out_size, **kw),
                                   reference_view1_to_view2(x, flips, flips2, b, out_size, **kw))
    torch.testing.assert_close(patch_grid_transform(x, flips, None, out_size=out_size, inverse=True, **kw),
                               reference_patch_grid_transform(x, flips, None, out_size, inverse=True, **kw))


def test_hand_computed_resizes():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    no = torch.zeros(1, 3, dtype=torch.bool)
    ac = patch_grid_transform(x, no, None, out_size=3)[0, 0]
    assert ac.tolist() == [[0.0, 0.5, 1.0], [1.0, 1.5, 2.0], [2.0, 2.5, 3.0]]
    hp = patch_grid_transform(x, no, None, out_size=4, align_corners=False)[0, 0, 0]
    assert hp.tolist() == [0.0, 0.25, 0.75, 1.0]  # src = (i + 1/2)/2 - 1/2, clamped to [0, 1]
    # crop of the 4x4 arange to rows 1..2, cols 2..3, then lr flip (no resize)
    y = torch.arange(16.0).view(1, 1, 4, 4)
    out = patch_grid_transform(y, torch.tensor([[True, False, False]]), torch.tensor([[1, 2, 3, 4]]), out_size=2)
    assert out[0, 0].tolist() == [[7.0, 6.0], [11.0, 10.0]]


@pytest.mark.parametrize("flags", ALL_FLIPS)
def test_inverse_of_forward_is_identity(flags):
    x = torch.rand(3, 4, 7, 7)
    f = torch.tensor([flags] * 3)
    fwd = patch_grid_transform(x, f, None, out_size=None)
    assert torch.equal(patch_grid_transform(fwd, f, None, out_size=None, inverse=True), x)
    inv = patch_grid_transform(x, f, None, out_size=None, inverse=True)
    assert torch.equal(patch_grid_transform(inv, f, None, out_size=None), x)
    assert torch.equal(patch_grid_view1_to_view2(fwd, f, f, None, out_size=7), fwd)


def test_flip_semantics_and_order():
    x = torch.arange(9.0).view(1, 1, 3, 3)

    def run(*flags):
        return patch_grid_transform(x, torch.tensor([flags]), None, out_size=None)[0, 0]

    assert torch.equal(run(True, False, False), x[0, 0].flip(-1))
    assert torch.equal(run(False, True, False), x[0, 0].flip(-2))
    assert torch.equal(run(False, False, True), x[0, 0].T)
    assert torch.equal(run(True, False, True), x[0, 0].flip(-1).T)  # lr first, then transpose
    assert not torch.equal(run(True, False, True), x[0, 0].T.flip(-1))


def test_full_box_equals_no_crop_and_dtypes():
    x, flips, _ = _random_case(dtype=torch.float64)
    full = torch.tensor([[0, 0, 24, 24]] * 6)
    out = patch_grid_transform(x, flips, full)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, patch_grid_transform(x, flips, None))
    assert patch_grid_transform(x.float(), flips, full).dtype == torch.float32


def test_gradcheck_float64():
    x, flips, boxes = _random_case(b=3, c=2, g=6, dtype=torch.float64)
    x.requires_grad_(True)
    for align in (True, False):
        assert torch.autograd.gradcheck(
            lambda t, a=align: patch_grid_transform(t, flips, boxes, out_size=4, align_corners=a), (x,))


def test_module_equals_function():
    x, flips, boxes = _random_case()
    m = PatchGridTransform(out_size=10, align_corners=False)
    assert repr(m) == "PatchGridTransform(out_size=10, inverse=False, align_corners=False)"
    assert torch.equal(m(x, flips, boxes), patch_grid_transform(x, flips, boxes, out_size=10, align_corners=False))
    mi = PatchGridTransform(out_size=None, inverse=True)
    assert torch.equal(mi(x, flips), patch_grid_transform(x, flips, out_size=None, inverse=True))


# ----------------------------------------------------------------------------------------------------------
# errors


def test_patch_grid_errors():
    x, flips, boxes = _random_case(b=2, g=8)
    with pytest.raises(TypeError, match="probs"):
        patch_grid_transform(x.long(), flips, boxes)
    with pytest.raises(ValueError, match="probs"):
        patch_grid_transform(x[0], flips, boxes)
    with pytest.raises(ValueError, match="square"):
        patch_grid_transform(x[..., :5], flips, None)
    with pytest.raises(TypeError, match="flips"):
        patch_grid_transform(x, flips.float(), boxes)
    with pytest.raises(ValueError, match="flips"):
        patch_grid_transform(x, flips[:, :2], boxes)
    with pytest.raises(TypeError, match="crop_boxes"):
        patch_grid_transform(x, flips, boxes.float())
    with pytest.raises(ValueError, match="crop_boxes"):
        patch_grid_transform(x, flips, torch.tensor([[0, 0, 9, 4], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="crop_boxes"):
        patch_grid_transform(x, flips, torch.tensor([[3, 0, 3, 4], [0, 0, 2, 2]]))
    with pytest.raises(ValueError, match="inverted"):
        patch_grid_transform(x, flips, boxes, inverse=True)
    with pytest.raises(ValueError, match="out_size"):
        patch_grid_transform(x, flips, boxes, out_size=0)
    with pytest.raises(ValueError, match="flips_view2"):
        patch_grid_view1_to_view2(x, flips, flips[:1], boxes)
    with pytest.raises(ValueError, match="out_size"):
        PatchGridTransform(out_size=2.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 100}, "image_size"), ({"view2_size": 0}, "view2_size"), ({"crop_size": 400}, "crop_size"),
    ({"crop_size": 120}, "crop_size"), ({"crop_prob": 1.5}, "crop_prob"), ({"transpose_p": -0.1}, "transpose_p"),
    ({"contrast": (2.0, 1.0)}, "contrast"), ({"saturation": (1.0,)}, "saturation"), ({"hue": 0.7}, "hue"),
    ({"brightness": -1.0}, "brightness"), ({"crop_start": "random"}, "crop_start"),
])
def test_transform_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ViTPCMTwoViewTransform(**kwargs)


def test_transform_runtime_errors():
    t = ViTPCMTwoViewTransform(image_size=32, view2_size=16, patch_size=4, crop_size=16)
    with pytest.raises(ValueError, match="crop_box"):
        t.apply(_sample(), (_params((False,) * 3), _params((False,) * 3, (24, 0, 40, 16))))
    with pytest.raises(TypeError, match="sample"):
        t([1, 2, 3])
    with pytest.raises(ValueError, match="name"):
        ViTPCMTwoViewTransform.from_preset("cityscapes")
    with pytest.raises(ValueError, match="hue_delta"):
        vitpcm_color_jitter(np.zeros((2, 2, 3)), hue_delta=0.8)
    with pytest.raises(ValueError, match="image"):
        vitpcm_color_jitter(np.zeros((2, 2)))
