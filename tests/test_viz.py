"""Tests for visualisation helpers (wsseg.viz)."""

import numpy as np
import pytest
import torch
from PIL import Image

import wsseg.viz
from wsseg.viz import colorize_label, jet_colormap, make_panel, overlay_cam, save_panel, voc_palette


def test_palette_known_voc_colours():
    pal = voc_palette()
    assert pal.shape == (256, 3) and pal.dtype == np.uint8
    # VOC devkit colours: background, aeroplane, bicycle, bird, person (15), tvmonitor (20), void (255)
    assert pal[0].tolist() == [0, 0, 0]
    assert pal[1].tolist() == [128, 0, 0]
    assert pal[2].tolist() == [0, 128, 0]
    assert pal[3].tolist() == [128, 128, 0]
    assert pal[15].tolist() == [192, 128, 128]
    assert pal[20].tolist() == [0, 64, 128]
    assert pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal.tolist()}) == 256  # all distinct
    assert np.array_equal(voc_palette(21), pal[:21])
    with pytest.raises(ValueError, match="n"):
        voc_palette(0)


def test_colorize_label():
    lab = np.array([[0, 1], [15, 255]])
    out = colorize_label(lab)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert out[1, 0].tolist() == [192, 128, 128]
    assert out[1, 1].tolist() == [255, 255, 255]  # ignore -> white by default
    assert colorize_label(lab, ignore_color=(0, 0, 0))[1, 1].tolist() == [0, 0, 0]
    assert colorize_label(lab, ignore_color=None)[1, 1].tolist() == [224, 224, 192]
    assert np.array_equal(colorize_label(torch.from_numpy(lab)), out)
    with pytest.raises(TypeError, match="label"):
        colorize_label(lab.astype(np.float32))
    with pytest.raises(ValueError, match="label"):
        colorize_label(lab[None])
    with pytest.raises(ValueError, match="label"):
        colorize_label(np.array([[300]]))


def test_jet_endpoints_and_monotone_hue():
    c = jet_colormap(np.linspace(0, 1, 11))
    assert c.shape == (11, 3) and c.dtype == np.uint8
    assert c[0].tolist() == [0, 0, 128]   # dark blue
    assert c[-1].tolist() == [128, 0, 0]  # dark red
    assert c[5].tolist() == [128, 255, 128]
    # red rises, blue falls over the range
    assert c[-1, 0] > c[0, 0] and c[0, 2] > c[-1, 2]
    assert np.array_equal(jet_colormap(np.array([-1.0, 2.0])), jet_colormap(np.array([0.0, 1.0])))


def test_overlay_cam():
    img = np.full((4, 5, 3), 100, dtype=np.uint8)
    cam = np.zeros((4, 5))
    out = overlay_cam(img, cam, alpha=0.5)
    # 0.5 * 100 + 0.5 * jet(0) = (50, 50, 114)
    assert out[0, 0].tolist() == [50, 50, 114]
    assert np.array_equal(overlay_cam(img, cam, alpha=0.0), img)
    assert np.array_equal(overlay_cam(img, np.ones((4, 5)), alpha=1.0)[0, 0], np.array([128, 0, 0], np.uint8))
    assert np.array_equal(overlay_cam(torch.from_numpy(img), torch.from_numpy(cam)), out)
    with pytest.raises(TypeError, match="image_uint8"):
        overlay_cam(img.astype(np.float32), cam)
    with pytest.raises(ValueError, match="cam"):
        overlay_cam(img, cam[:3])
    with pytest.raises(ValueError, match="alpha"):
        overlay_cam(img, cam, alpha=1.5)
    with pytest.raises(ValueError, match="image_uint8"):
        overlay_cam(img[..., 0], cam)


def test_make_panel_layout():
    a = np.full((10, 6, 3), 10, dtype=np.uint8)
    b = np.array([[1, 255]] * 8)            # label map -> coloured
    c = np.full((5, 4), 1.0)                # float map -> jet
    panel = make_panel([a, b, c], gap=2)
    assert isinstance(panel, Image.Image) and panel.mode == "RGB"
    assert panel.size == (6 + 2 + 2 + 2 + 4, 10)
    arr = np.asarray(panel)
    assert arr[0, 0].tolist() == [10, 10, 10]
    assert arr[0, 8].tolist() == [128, 0, 0] and arr[0, 9].tolist() == [255, 255, 255]
    assert arr[0, 12].tolist() == [128, 0, 0]
    assert arr[9, 12].tolist() == [255, 255, 255]  # background below the short tile
    titled = make_panel([a, b, c], titles=["image", "label", "cam"], gap=2, title_height=12)
    assert titled.size == (16, 22)
    assert np.array_equal(np.asarray(titled)[12:], arr[:10])
    # float RGB in [0, 1] is scaled to uint8
    assert np.asarray(make_panel([np.ones((2, 2, 3))]))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="images"):
        make_panel([])
    with pytest.raises(ValueError, match="titles"):
        make_panel([a], titles=["x", "y"])
    with pytest.raises(ValueError, match=r"images\[0\]"):
        make_panel([np.zeros((2, 2, 4), np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\]"):
        make_panel(["not an image"])


def test_save_panel(tmp_path):
    path = tmp_path / "sub" / "panel.png"
    panel = save_panel(path, [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64)], titles=["a", "b"])
    assert path.is_file()
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(panel))


def test_module_reachable():
    assert wsseg.viz.voc_palette is voc_palette
