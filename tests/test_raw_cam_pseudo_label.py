"""raw_cam_pseudo_label / RawCAMPseudoLabel: hand values, equality with the TSCD and CoSA steps, errors."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import nn

from wsseg.layers import PAMR, PixelAdaptiveRefine, VariationAwareRefine, multi_scale_inputs
from wsseg.pseudo import RawCAMPseudoLabel, raw_cam_pseudo_label
from wsseg.utils import denormalize, normalize

EPS = 1e-5


def test_upsample_then_relu_then_minmax_hand_values():
    # raw (1, 1, 1, 2) = [-1, 3] -> bilinear (align_corners=False) to width 4: source x = (i + .5) / 2 - .5
    # = [-.25 -> 0, .25, .75, 1.25 -> 1] -> [-1, 0, 2, 3]; ReLU -> [0, 0, 2, 3]; min-max -> [0, 0, 2/3, 1].
    # (ReLU before the upsampling would give [0, .75, 2.25, 3] -> [0, .25, .75, 1].)
    raw = torch.tensor([[[[-1.0, 3.0]]]])
    out = raw_cam_pseudo_label(raw, torch.ones(1, 1), size=(1, 4), down_scale=1, return_cam=True)
    expected = torch.tensor([0.0, 0.0, 2.0 / (3.0 + EPS), 3.0 / (3.0 + EPS)])
    torch.testing.assert_close(out.cam.flatten(), expected)
    # thresholds 0.55 / 0.35: 2/3 and 1 are class 1, 0 is background
    assert out.label.flatten().tolist() == [0, 0, 1, 1]


def test_dual_threshold_band_and_absent_class_hand_values():
    # K = 2, class 2 absent. Class-1 values 0..10 over 11 pixels -> normalised v/10 (up to eps).
    raw = torch.zeros(1, 2, 1, 11)
    raw[0, 0, 0] = torch.arange(11.0)
    raw[0, 1, 0] = 100.0 - torch.arange(11.0)           # strong but absent: must be zeroed / never chosen
    out = raw_cam_pseudo_label(raw, torch.tensor([[1.0, 0.0]]), size=(1, 11), down_scale=1, return_cam=True)
    assert float(out.cam[:, 1].abs().max()) == 0.0
    # v = i/10: > 0.55 -> class 1 (i >= 6); < 0.35 -> background (i <= 3); in between (i = 4, 5) -> ignore
    assert out.label.flatten().tolist() == [0, 0, 0, 0, 255, 255, 1, 1, 1, 1, 1]


def test_flip_fuses_by_max_before_relu():
    # 2B rows: image then its flip. Flipped back, the max of [1, -5] and flip([2, -3]) = [-3, 2] is [1, 2].
    raw = torch.tensor([[[[1.0, -5.0]]], [[[2.0, -3.0]]]])
    out = raw_cam_pseudo_label(raw, torch.ones(1, 1), size=(1, 2), flip=True, down_scale=1, return_cam=True)
    torch.testing.assert_close(out.cam.flatten(), torch.tensor([0.0, 1.0 / (1.0 + EPS)]))


def test_scales_are_summed_after_relu():
    a = torch.tensor([[[[2.0, -1.0]]]])                   # ReLU -> [2, 0]
    b = torch.tensor([[[[-4.0, 1.0]]]])                   # ReLU -> [0, 1]; sum [2, 1] -> [1, 0]
    out = raw_cam_pseudo_label([a, b], torch.ones(1, 1), size=(1, 2), down_scale=1, return_cam=True)
    torch.testing.assert_close(out.cam.flatten(), torch.tensor([1.0 / (1.0 + EPS), 0.0]))


class _TinyCAMNet(nn.Module):
    """A deterministic conv network with a TSCD-style ``cam`` and a CoSA-style output."""

    class Out(NamedTuple):
        cam: torch.Tensor
        cam_aux: torch.Tensor
        seg: torch.Tensor

    def __init__(self, k: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 4, stride=4)
        self.aux = nn.Conv2d(3, k, 4, stride=4)
        self.seg = nn.Conv2d(3, k + 1, 4, stride=4)

    def cam(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.Out(self.conv(x), self.aux(x), self.seg(x))


def _batch(k: int = 3):
    g = torch.Generator().manual_seed(1)
    images = normalize(torch.rand(2, 3, 32, 32, generator=g))
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])[:, :k]
    return images, labels


def test_equals_tscd_training_step_pseudo_label():
    from wsseg.training import TSCDRecipe, TSCDTrainingStep

    net = _TinyCAMNet(3)
    images, labels = _batch()
    valid = torch.ones(2, 32, 32, dtype=torch.bool)
    valid[1, :, 28:] = False
    step = TSCDTrainingStep(TSCDRecipe(varm_num_iter=2))
    _, expected = step.pseudo_label(net, images, labels, valid)
    with torch.no_grad():
        cams = [net.cam(x) for x in multi_scale_inputs(images, (1.0, 0.5, 1.5), flip=True)]
    got = raw_cam_pseudo_label(cams, labels, denormalize(images, mode="truncate_uint8"), valid, flip=True,
                               high=0.55, low=0.35, refiner=VariationAwareRefine(num_iter=2))
    assert torch.equal(got, expected)
    assert (got == 255).any() and (got == 0).any()


def test_equals_cosa_training_step_cpl():
    from wsseg.training import CoSARecipe, CoSATrainingStep

    net = _TinyCAMNet(3)
    images, labels = _batch()
    step = CoSATrainingStep(CoSARecipe())
    pl = step.pseudo_labels(net, images, labels)
    with torch.no_grad():
        cams = [net(x).cam for x in multi_scale_inputs(images, (1.0, 0.5, 1.5), flip=True, scale_order="as_given")]
    to_label = RawCAMPseudoLabel(high=0.7, low=0.2, flip=True)
    got = to_label(cams, labels, size=(32, 32))
    assert torch.equal(got, pl.cpl)
    out = raw_cam_pseudo_label(cams, labels, size=(32, 32), flip=True, high=0.7, low=0.2, return_cam=True)
    assert torch.equal(out.cam, pl.cam)


@pytest.mark.parametrize("refiner", [PixelAdaptiveRefine(num_iter=2), VariationAwareRefine(num_iter=2),
                                     PAMR(num_iter=2)])
def test_refiners_plug_in(refiner):
    raw, image = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    y = raw_cam_pseudo_label(raw, labels, image, refiner=refiner)
    assert y.shape == (2, 32, 32) and y.dtype == torch.int64
    assert set(y[0].unique().tolist()) <= {0, 1, 3, 255}
    assert set(y[1].unique().tolist()) <= {0, 2, 255}


def test_no_gradient_and_detached():
    raw = torch.randn(1, 2, 4, 4, requires_grad=True)
    out = raw_cam_pseudo_label(raw, torch.ones(1, 2), size=(16, 16), return_cam=True)
    assert not out.cam.requires_grad and not out.label.requires_grad


@pytest.mark.parametrize("image, match", [
    (torch.full((1, 3, 8, 8), 200.0), "0-255"),
    (normalize(torch.zeros(1, 3, 8, 8)), "denormalize"),
])
def test_image_range_is_checked(image, match):
    with pytest.raises(ValueError, match=match):
        raw_cam_pseudo_label(torch.randn(1, 2, 4, 4), torch.ones(1, 2), image, refiner=PAMR(num_iter=1))


def test_errors():
    raw, labels = torch.randn(1, 3, 4, 4), torch.ones(1, 2)
    with pytest.raises(ValueError, match="background channel"):
        raw_cam_pseudo_label(raw, labels, size=(8, 8))
    with pytest.raises(ValueError, match="size"):
        raw_cam_pseudo_label(raw, torch.ones(1, 3))
    with pytest.raises(ValueError, match="image: required"):
        raw_cam_pseudo_label(raw, torch.ones(1, 3), size=(8, 8), refiner=PAMR())
    with pytest.raises(ValueError, match="2B rows"):
        raw_cam_pseudo_label(raw, torch.ones(1, 3), size=(8, 8), flip=True)
    with pytest.raises(ValueError, match="size"):
        raw_cam_pseudo_label(raw, torch.ones(1, 3), torch.rand(1, 3, 8, 8), size=(4, 4))
    with pytest.raises(ValueError, match="low"):
        raw_cam_pseudo_label(raw, torch.ones(1, 3), size=(8, 8), high=0.3, low=0.5)
    with pytest.raises(TypeError, match="cam"):
        raw_cam_pseudo_label(raw.long(), torch.ones(1, 3), size=(8, 8))
    with pytest.raises(TypeError, match="cam"):
        raw_cam_pseudo_label("cam", torch.ones(1, 3), size=(8, 8))
    with pytest.raises(ValueError, match="labels"):
        raw_cam_pseudo_label(raw, torch.ones(2, 3), size=(8, 8))
    with pytest.raises(ValueError, match="low"):
        RawCAMPseudoLabel(high=0.2, low=0.4)
    with pytest.raises(TypeError, match="refiner"):
        RawCAMPseudoLabel(refiner=3)


def test_module_repr_and_equality_with_function():
    m = RawCAMPseudoLabel(high=0.6, low=0.3, refiner=PixelAdaptiveRefine(num_iter=1))
    assert "high=0.6" in repr(m) and "low=0.3" in repr(m)
    raw, image, labels = torch.randn(1, 2, 4, 4), torch.rand(1, 3, 16, 16), torch.ones(1, 2)
    expected = raw_cam_pseudo_label(raw, labels, image, high=0.6, low=0.3, refiner=PixelAdaptiveRefine(num_iter=1))
    assert torch.equal(m(raw, labels, image), expected)
