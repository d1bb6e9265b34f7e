"""Tests for wsseg.pseudo.cam_to_label (common.md §2.1)."""

from __future__ import annotations

import pytest
import torch

from wsseg.pseudo import CAMToLabel, cam_to_label


def _cam():
    # 2 classes on a 2x3 map
    c1 = torch.tensor([[0.90, 0.50, 0.20], [0.45, 0.30, 0.10]])
    c2 = torch.tensor([[0.30, 0.40, 0.60], [0.10, 0.36, 0.80]])
    return torch.stack([c1, c2])[None]


def test_hand_values_single_threshold():
    y = cam_to_label(_cam(), torch.tensor([[1.0, 1.0]]))
    # max: .9(c1) .5(c1) .6(c2) / .45(c1, <= .45 -> bkg) .36(c2 <= .45) .8(c2)
    assert y.tolist() == [[[1, 1, 2], [0, 0, 2]]]
    assert y.dtype == torch.int64


def test_hand_values_ignore_band_and_valid():
    valid = torch.tensor([[[True, True, True], [True, True, False]]])
    y = cam_to_label(_cam(), torch.tensor([[1.0, 1.0]]), valid, high=0.55, low=0.35)
    # .5 -> ignore (<= .55, > .35); .45 -> ignore; .36 -> ignore; .8 outside valid -> ignore
    assert y.tolist() == [[[1, 255, 2], [255, 255, 255]]]


def test_absent_class_excluded():
    y = cam_to_label(_cam(), torch.tensor([[1.0, 0.0]]))
    # only class 1 counts: .9 .5 .2 / .45 .3 .1
    assert y.tolist() == [[[1, 1, 0], [0, 0, 0]]]
    assert cam_to_label(_cam(), torch.zeros(1, 2)).eq(0).all()


def test_tie_goes_to_lowest_class_and_custom_ignore():
    cam = torch.full((1, 3, 1, 2), 0.5)
    cam[0, :, 0, 1] = 0.4
    y = cam_to_label(cam, torch.ones(1, 3), high=0.45, low=0.3, ignore_index=99)
    assert y.tolist() == [[[1, 99]]]


def test_batch_permutation_and_module_equals_function():
    torch.manual_seed(0)
    cam, labels = torch.rand(4, 5, 6, 7), (torch.rand(4, 5) > 0.5).float()
    valid = torch.rand(4, 6, 7) > 0.2
    y = cam_to_label(cam, labels, valid, high=0.55, low=0.35)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(cam_to_label(cam[perm], labels[perm], valid[perm], high=0.55, low=0.35), y[perm])
    m = CAMToLabel(bkg_thre=0.45, high=0.55, low=0.35)
    assert torch.equal(m(cam, labels, valid), y)
    assert "high=0.55" in repr(m)
    assert not y.requires_grad


def test_validation_errors():
    cam, labels = torch.rand(1, 2, 3, 3), torch.ones(1, 2)
    with pytest.raises(ValueError, match="cam"):
        cam_to_label(torch.rand(2, 3, 3), labels)
    with pytest.raises(TypeError, match="cam"):
        cam_to_label(cam.long(), labels)
    with pytest.raises(ValueError, match="labels"):
        cam_to_label(cam, torch.ones(1, 3))
    with pytest.raises(TypeError, match="valid"):
        cam_to_label(cam, labels, torch.ones(1, 3, 3))
    with pytest.raises(ValueError, match="valid"):
        cam_to_label(cam, labels, torch.ones(1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="high/low"):
        cam_to_label(cam, labels, high=0.5)
    with pytest.raises(ValueError, match="low"):
        cam_to_label(cam, labels, high=0.3, low=0.5)
    with pytest.raises(ValueError, match="high/low"):
        CAMToLabel(low=0.3)
    with pytest.raises(ValueError, match="low"):
        CAMToLabel(high=0.3, low=0.5)
