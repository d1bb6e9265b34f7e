"""Tests for wsseg.pseudo.dual_threshold (common.md §2.2, tscd.md §5, cosa.md §3.2)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label
from wsseg.pseudo import DualThresholdPseudoLabel, dual_threshold_pseudo_label, varm_pseudo_label


class AvgRefine(torch.nn.Module):
    """Deterministic stand-in refiner: per-channel 3x3 replicate-padded box filter, a few iterations."""

    def __init__(self, num_iter: int = 3):
        super().__init__()
        self.num_iter = num_iter
        self.calls: list[tuple[int, ...]] = []

    def forward(self, image, probs):
        self.calls.append(tuple(probs.shape))
        probs = F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=True)
        for _ in range(self.num_iter):
            probs = F.avg_pool2d(F.pad(probs, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return probs


class NegateRefine(torch.nn.Module):
    """Maps p -> -p: zero channels stay zero, present channels become negative."""

    def forward(self, image, probs):
        return -F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=True)


def _par():
    try:
        mod = importlib.import_module("wsseg.layers.pixel_adaptive_refine")
        return mod.PixelAdaptiveRefine(num_iter=3)
    except (ImportError, AttributeError):
        return None


def _inputs(B=3, K=20, H=48, W=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    cam = F.interpolate(torch.rand(B, K, H // 8, W // 8, generator=g), size=(H, W), mode="bilinear",
                        align_corners=False)
    cam = cam - cam.amin((2, 3), keepdim=True)
    cam = cam / (cam.amax((2, 3), keepdim=True) + 1e-5)
    labels = torch.zeros(B, K)
    labels[0, [c % K for c in (2, 7, 11)]] = 1
    if B > 1:
        labels[1, 5 % K] = 1
    # the last image (B > 2) has no foreground label at all
    image = torch.rand(B, 3, H, W, generator=g)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[0, :, W - 7:] = False
    return cam, labels, image, valid


# ---------------------------------------------------------------- hand-computed values
def test_hand_values_full_resolution():
    # down_scale=1: no interpolation; classes: 1 present, 2 absent
    cam = torch.tensor([[[[0.9, 0.6], [0.45, 0.1]], [[0.2, 0.2], [0.3, 0.99]]]])
    labels = torch.tensor([[1.0, 0.0]])
    y = dual_threshold_pseudo_label(cam, labels, down_scale=1)
    # .9, .6 > .55 -> class 1; .45 in (.35, .55] -> ignore; .1 < .35 -> bkg (absent .99 not used)
    assert y.tolist() == [[[1, 1], [255, 0]]]
    assert y.dtype == torch.int64
    y2 = dual_threshold_pseudo_label(cam, torch.tensor([[1.0, 1.0]]), down_scale=1)
    assert y2.tolist() == [[[1, 1], [255, 2]]]
    # CoSA VOC main preset (0.7, 0.2): .6 now in the band
    y3 = dual_threshold_pseudo_label(cam, labels, down_scale=1, high=0.7, low=0.2)
    assert y3.tolist() == [[[1, 255], [255, 0]]]


def test_hand_values_down_scale_2_corners():
    # 2x2 blocks of constant value -> the half-res map is the block values; corner pixels of the
    # upsampled map equal the block values exactly
    blocks = torch.tensor([[0.9, 0.45], [0.2, 0.05]])
    cam = blocks.repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    y = dual_threshold_pseudo_label(cam, torch.ones(1, 1))
    assert [y[0, 0, 0].item(), y[0, 0, 3].item(), y[0, 3, 0].item(), y[0, 3, 3].item()] == [1, 255, 0, 0]


def test_rule_without_refiner_at_full_resolution():
    cam, labels, _, _ = _inputs(B=2, K=6, H=16, W=16)
    labels = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1]])
    y = dual_threshold_pseudo_label(cam, labels, down_scale=1)
    v = cam * labels[:, :, None, None]
    score, idx = v.max(1)
    expected = torch.full_like(y, 255)
    expected[score > 0.55] = idx[score > 0.55] + 1
    expected[score < 0.35] = 0
    assert torch.equal(y, expected)


# ---------------------------------------------------------------- valid region, absent classes
def test_valid_region_is_ignored():
    cam, labels, image, valid = _inputs()
    y = dual_threshold_pseudo_label(cam, labels, image, valid, refiner=AvgRefine())
    assert torch.all(y[~valid] == 255)
    y_all = dual_threshold_pseudo_label(cam, labels, image, None, refiner=AvgRefine())
    assert torch.equal(y[valid], y_all[valid])


def test_absent_channels_do_not_matter():
    cam, labels, image, valid = _inputs()
    y = dual_threshold_pseudo_label(cam, labels, image, valid, refiner=AvgRefine())
    cam2 = cam.clone()
    cam2[labels == 0] = 1.0  # absent classes at full score
    assert torch.equal(dual_threshold_pseudo_label(cam2, labels, image, valid, refiner=AvgRefine()), y)
    present = set(torch.nonzero(labels)[:, 1].add(1).tolist()) | {0, 255}
    assert set(y.unique().tolist()) <= present
    assert set(y[-1].unique().tolist()) <= {0, 255}  # image without labels: background only


# ---------------------------------------------------------------- vectorised == reference loop
@pytest.mark.parametrize("refiner_name", ["none", "avg", "negate", "par"])
def test_vectorised_equals_reference_loop(refiner_name):
    refiner = {"none": None, "avg": AvgRefine(), "negate": NegateRefine(), "par": _par()}[refiner_name]
    if refiner_name == "par" and refiner is None:
        pytest.skip("wsseg.layers.PixelAdaptiveRefine not available")
    for seed, (B, K, H, W) in enumerate([(3, 20, 48, 40), (3, 13, 33, 31)]):
        cam, labels, image, valid = _inputs(B, K, H, W, seed)
        ref = reference_dual_threshold_pseudo_label(cam, labels, image, valid, refiner=refiner)
        for chunk_pixels in (None, 1, (H // 2) * (W // 2) * 2):      # whole batch, per image, 2 images
            fast = dual_threshold_pseudo_label(cam, labels, image, valid, refiner=refiner,
                                               chunk_pixels=chunk_pixels)
            assert torch.equal(fast, ref), (refiner_name, chunk_pixels, (fast != ref).sum().item())


def test_batch_without_any_present_class_matches_reference():
    cam, _, image, valid = _inputs(B=2, K=5, H=16, W=16)
    labels = torch.zeros(2, 5)
    y = dual_threshold_pseudo_label(cam, labels, image, valid, refiner=AvgRefine())
    assert torch.equal(y, reference_dual_threshold_pseudo_label(cam, labels, image, valid, refiner=AvgRefine()))
    assert set(y.unique().tolist()) <= {0, 255}


def test_refiner_calls_follow_chunk_pixels():
    cam, labels, image, valid = _inputs(B=3, K=20)        # internal 24 x 20 = 480 pixels per image
    # both thresholds stacked on channels in every call; K' = 1 + max #present = 4
    for chunk_pixels, calls in ((None, [(3, 8, 24, 20)]), (0, [(3, 8, 24, 20)]), (10_000, [(3, 8, 24, 20)]),
                                (960, [(2, 8, 24, 20), (1, 8, 24, 20)]), (1, [(1, 8, 24, 20)] * 3)):
        refiner = AvgRefine()
        dual_threshold_pseudo_label(cam, labels, image, valid, refiner=refiner, chunk_pixels=chunk_pixels)
        assert refiner.calls == calls, chunk_pixels
    refiner = AvgRefine()
    DualThresholdPseudoLabel(refiner=refiner, chunk_pixels=480)(cam, labels, image, valid)
    assert refiner.calls == [(1, 8, 24, 20)] * 3


def test_batch_permutation_equivariance():
    cam, labels, image, valid = _inputs()
    y = dual_threshold_pseudo_label(cam, labels, image, valid, refiner=AvgRefine())
    perm = torch.tensor([2, 0, 1])
    yp = dual_threshold_pseudo_label(cam[perm], labels[perm], image[perm], valid[perm], refiner=AvgRefine())
    assert torch.equal(yp, y[perm])


def test_module_equals_function_and_autocast():
    cam, labels, image, valid = _inputs()
    m = DualThresholdPseudoLabel(high=0.6, low=0.3, refiner=AvgRefine())
    y = dual_threshold_pseudo_label(cam, labels, image, valid, high=0.6, low=0.3, refiner=AvgRefine())
    assert torch.equal(m(cam, labels, image, valid), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(m(cam, labels, image, valid), y)
    assert "high=0.6" in repr(m) and "AvgRefine" in repr(m)
    assert not y.requires_grad


def test_varm_preset_with_stand_in(monkeypatch):
    """varm_pseudo_label builds VariationAwareRefine(**kwargs) and uses the TSCD thresholds."""
    import sys
    import types

    made = {}

    class FakeVARM(AvgRefine):
        def __init__(self, **kwargs):
            super().__init__()
            made.update(kwargs)

    fake = types.ModuleType("wsseg.layers.variation_aware_refine")
    fake.VariationAwareRefine = FakeVARM
    monkeypatch.setitem(sys.modules, "wsseg.layers.variation_aware_refine", fake)
    cam, labels, image, valid = _inputs()
    y = varm_pseudo_label(cam, labels, image, valid, num_iter=3)
    assert made == {"num_iter": 3}
    assert torch.equal(y, reference_dual_threshold_pseudo_label(cam, labels, image, valid, high=0.55, low=0.35,
                                                                refiner=AvgRefine()))


def test_varm_preset_real_refiner():
    mod = pytest.importorskip("wsseg.layers.variation_aware_refine")
    cam, labels, image, valid = _inputs(B=2, K=20, H=32, W=32)
    y = varm_pseudo_label(cam, labels, image, valid, num_iter=3)
    ref = reference_dual_threshold_pseudo_label(cam, labels, image, valid,
                                                refiner=mod.VariationAwareRefine(num_iter=3))
    assert torch.equal(y, ref)


# ---------------------------------------------------------------- validation
def test_validation_errors():
    cam, labels, image, valid = _inputs(B=2, K=4, H=8, W=8)
    with pytest.raises(ValueError, match="cam"):
        dual_threshold_pseudo_label(cam[0], labels)
    with pytest.raises(TypeError, match="cam"):
        dual_threshold_pseudo_label(cam.long(), labels)
    with pytest.raises(ValueError, match="labels"):
        dual_threshold_pseudo_label(cam, labels[:1])
    with pytest.raises(ValueError, match="image"):
        dual_threshold_pseudo_label(cam, labels, None, refiner=AvgRefine())
    with pytest.raises(ValueError, match="image"):
        dual_threshold_pseudo_label(cam, labels, image[:, :, :4], refiner=AvgRefine())
    with pytest.raises(ValueError, match="image"):
        dual_threshold_pseudo_label(cam, labels, image[:, :2], refiner=AvgRefine())
    with pytest.raises(TypeError, match="image"):
        dual_threshold_pseudo_label(cam, labels, image.long(), refiner=AvgRefine())
    with pytest.raises(TypeError, match="valid"):
        dual_threshold_pseudo_label(cam, labels, valid=valid.long())
    with pytest.raises(ValueError, match="valid"):
        dual_threshold_pseudo_label(cam, labels, valid=valid[:, :4])
    with pytest.raises(ValueError, match="low"):
        dual_threshold_pseudo_label(cam, labels, high=0.3, low=0.5)
    with pytest.raises(ValueError, match="down_scale"):
        dual_threshold_pseudo_label(cam, labels, down_scale=0)
    with pytest.raises(ValueError, match="chunk_pixels"):
        dual_threshold_pseudo_label(cam, labels, chunk_pixels=-1)
    with pytest.raises(ValueError, match="chunk_pixels"):
        DualThresholdPseudoLabel(chunk_pixels=2.5)
    with pytest.raises(ValueError, match="down_scale"):
        dual_threshold_pseudo_label(cam, labels, down_scale=16)
    with pytest.raises(ValueError, match="low"):
        DualThresholdPseudoLabel(high=0.3, low=0.5)
    with pytest.raises(ValueError, match="down_scale"):
        DualThresholdPseudoLabel(down_scale=1.5)
    with pytest.raises(TypeError, match="refiner"):
        DualThresholdPseudoLabel(refiner="par")
    with pytest.raises(ValueError, match="image"):
        varm_pseudo_label(cam, labels, None)


def test_cam_with_background_channel_is_blamed_on_the_cam():
    cam = torch.rand(2, 4, 8, 8)                       # K + 1 = 4 channels, labels have K = 3
    labels = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"cam: has 4 channels but labels has 3 classes.*background channel.*"
                                         r"cam\[:, 1:\]"):
        dual_threshold_pseudo_label(cam, labels)
    with pytest.raises(ValueError, match=r"cam: has 5 channels but labels has 3 classes") as err:
        dual_threshold_pseudo_label(torch.rand(2, 5, 8, 8), labels)
    assert "background channel" not in str(err.value)


@pytest.mark.parametrize("scale, fill", [(30.0, None), (1.0, float("nan")), (-1.0, None)])
def test_unnormalised_or_nan_cam_is_rejected(scale, fill):
    cam = torch.rand(1, 3, 8, 8) * scale
    if fill is not None:
        cam[0, 0, 0, 0] = fill
    with pytest.raises(ValueError, match=r"cam: expected (finite )?values in \[0, 1\].*normalised CAM"):
        dual_threshold_pseudo_label(cam, torch.ones(1, 3))


def test_normalised_cam_within_tolerance_is_accepted():
    cam = torch.tensor([[[[1.005, 0.9], [0.45, 0.1]], [[0.2, 0.2], [0.3, 0.8]]]])
    out = dual_threshold_pseudo_label(cam, torch.tensor([[1.0, 0.0]]), down_scale=1)
    assert out[0].tolist() == [[1, 1], [255, 0]]       # hand-computed: > 0.55 -> class, < 0.35 -> bg


@pytest.mark.parametrize("bad", [float("nan"), 2.0, -1.0])
def test_bad_labels_values(bad):
    labels = torch.tensor([[1.0, bad]])
    with pytest.raises(ValueError, match=r"labels: expected image-level labels in \{0, 1\}"):
        dual_threshold_pseudo_label(torch.rand(1, 2, 4, 4), labels)
