"""Visualisation helpers: VOC palette, label colouring, CAM overlays and image panels (numpy + Pillow).

Typical use in examples::

    panel = make_panel([image, overlay_cam(image, cam), colorize_label(pseudo),
                        colorize_label(pred), colorize_label(gt)],
                       titles=["image", "CAM", "pseudo label", "prediction", "ground truth"])
    panel.save("panel.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["voc_palette", "colorize_label", "jet_colormap", "overlay_cam", "make_panel", "save_panel"]


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, Image.Image):
        return np.asarray(x)
    raise TypeError(f"{name}: expected a numpy.ndarray, torch.Tensor or PIL.Image, got {type(x).__name__}")


def voc_palette(n: int = 256) -> np.ndarray:
    r"""The PASCAL VOC colour map: ``n`` RGB colours built from the bits of the class index.

    Colour ``i`` takes bit :math:`3j + k` of ``i`` (:math:`k` = 0, 1, 2 for R, G, B) into bit
    :math:`7 - j` of the channel, for :math:`j = 0, \dots, 7`. Index 0 is black, 1 is (128, 0, 0), 255 is
    (224, 224, 192) — the VOC "ignore"/boundary colour.

    Args:
        n: number of colours, 1 ≤ n ≤ 256.

    Returns:
        uint8 array ``(n, 3)``.

    Raises:
        ValueError: if ``n`` is out of range.

    Example:
        >>> from wsseg.viz import voc_palette
        >>> voc_palette()[[0, 1, 2, 15, 255]].tolist()
        [[0, 0, 0], [128, 0, 0], [0, 128, 0], [192, 128, 128], [224, 224, 192]]

    Source:
        PASCAL VOC development kit (``VOClabelcolormap``); AFA ``utils/imutils.py`` (``encode_cmap``).
    """
    if not isinstance(n, int) or not 1 <= n <= 256:
        raise ValueError(f"n: expected an int in [1, 256], got {n!r}")
    idx = np.arange(n, dtype=np.int64)
    pal = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for k in range(3):
            pal[:, k] |= ((idx >> (3 * j + k)) & 1) << (7 - j)
    return pal.astype(np.uint8)


def colorize_label(label, *, ignore_index: int = 255, ignore_color: Sequence[int] = (255, 255, 255),
                   palette: np.ndarray | None = None) -> np.ndarray:
    """Colour a label map with the VOC palette.

    Pixels equal to ``ignore_index`` get ``ignore_color`` (default **white**; pass ``(0, 0, 0)`` for
    black or ``None`` to keep the VOC palette colour 255 = (224, 224, 192)).

    Args:
        label: integer label map ``(H, W)``, numpy array or tensor, values in [0, 255].
        ignore_index: value drawn with ``ignore_color``.
        ignore_color: RGB triple, or ``None``.
        palette: optional ``(256, 3)`` uint8 palette (default :func:`voc_palette`).

    Returns:
        uint8 array ``(H, W, 3)``.

    Raises:
        TypeError: if ``label`` is not an integer array/tensor.
        ValueError: if ``label`` is not 2-D or has values outside [0, 255].

    Example:
        >>> import numpy as np
        >>> from wsseg.viz import colorize_label
        >>> colorize_label(np.array([[0, 1, 255]])).tolist()
        [[[0, 0, 0], [128, 0, 0], [255, 255, 255]]]
    """
    lab = _to_numpy(label, "label")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"label: expected an integer dtype, got {lab.dtype}")
    if lab.ndim != 2:
        raise ValueError(f"label: expected shape (H, W), got {tuple(lab.shape)}")
    if lab.size and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(f"label: expected values in [0, 255], got range [{lab.min()}, {lab.max()}]")
    pal = voc_palette(256) if palette is None else np.asarray(palette, dtype=np.uint8)
    out = pal[lab.astype(np.int64)]
    if ignore_color is not None:
        out[lab == ignore_index] = np.asarray(ignore_color, dtype=np.uint8)
    return out


def jet_colormap(x) -> np.ndarray:
    r"""Jet-like colour map implemented with numpy (no matplotlib).

    Piecewise-linear ramps: :math:`R = \mathrm{clip}(1.5 - |4x - 3|)`, :math:`G = \mathrm{clip}(1.5 -
    |4x - 2|)`, :math:`B = \mathrm{clip}(1.5 - |4x - 1|)` (dark blue → cyan → yellow → dark red).

    Args:
        x: values in [0, 1] (clipped), any shape.

    Returns:
        uint8 array ``(*x.shape, 3)``.

    Example:
        >>> import numpy as np
        >>> from wsseg.viz import jet_colormap
        >>> jet_colormap(np.array([0.0, 0.5, 1.0])).tolist()
        [[0, 0, 128], [128, 255, 128], [128, 0, 0]]
    """
    v = np.clip(np.asarray(_to_numpy(x, "x"), dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([1.5 - np.abs(4 * v - 3), 1.5 - np.abs(4 * v - 2), 1.5 - np.abs(4 * v - 1)], axis=-1)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def overlay_cam(image_uint8, cam, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured CAM over an RGB image: ``(1 - alpha) * image + alpha * jet(cam)``.

    Args:
        image_uint8: uint8 RGB ``(H, W, 3)`` (numpy, tensor or PIL image).
        cam: float map ``(H, W)`` in [0, 1] (values outside are clipped), same size as the image.
        alpha: CAM weight in [0, 1].

    Returns:
        uint8 array ``(H, W, 3)``.

    Raises:
        TypeError: if the image is not uint8.
        ValueError: on wrong shapes or ``alpha`` outside [0, 1].

    Example:
        >>> import numpy as np
        >>> from wsseg.viz import overlay_cam
        >>> overlay_cam(np.zeros((1, 1, 3), np.uint8), np.ones((1, 1)), alpha=1.0).tolist()
        [[[128, 0, 0]]]
    """
    img = _to_numpy(image_uint8, "image_uint8")
    c = _to_numpy(cam, "cam")
    if img.dtype != np.uint8:
        raise TypeError(f"image_uint8: expected dtype uint8, got {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image_uint8: expected shape (H, W, 3), got {tuple(img.shape)}")
    if c.ndim != 2 or c.shape != img.shape[:2]:
        raise ValueError(f"cam: expected shape {tuple(img.shape[:2])} (H, W of the image), got {tuple(c.shape)}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha!r}")
    heat = jet_colormap(c).astype(np.float64)
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * heat
    return np.round(np.clip(out, 0, 255)).astype(np.uint8)


def _as_rgb_uint8(x, i: int) -> np.ndarray:
    a = _to_numpy(x, f"images[{i}]")
    if a.ndim == 2:
        if np.issubdtype(a.dtype, np.integer):
            a = colorize_label(a)
        else:
            a = jet_colormap(a)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"images[{i}]: expected (H, W, 3) RGB or (H, W) label/float map, got {tuple(a.shape)}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0 and a.min() >= 0.0:
            a = np.round(a * 255)
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def make_panel(images: Sequence, titles: Sequence[str] | None = None, *, gap: int = 4,
               title_height: int = 14, background: Sequence[int] = (255, 255, 255)) -> Image.Image:
    """Concatenate images horizontally into one strip, with optional titles above each tile.

    Tiles are placed left to right, top-aligned, separated by ``gap`` pixels. Inputs may be uint8 RGB
    ``(H, W, 3)``, float RGB in [0, 1], integer label maps ``(H, W)`` (coloured with
    :func:`colorize_label`) or float maps ``(H, W)`` in [0, 1] (coloured with :func:`jet_colormap`).
    Typical strip: image | CAM | pseudo label | prediction | ground truth.

    Args:
        images: list of arrays/tensors/PIL images.
        titles: optional list of strings, one per image (drawn with Pillow's default font).
        gap: pixels between tiles.
        title_height: height of the title band (ignored without titles).
        background: RGB fill colour.

    Returns:
        A ``PIL.Image.Image`` in RGB mode.

    Raises:
        ValueError: if ``images`` is empty, ``titles`` has a different length, or a tile has a bad shape.

    Example:
        >>> import numpy as np
        >>> from wsseg.viz import make_panel
        >>> tiles = [np.zeros((8, 8, 3), np.uint8), np.ones((6, 5), np.int64)]
        >>> panel = make_panel(tiles, titles=["a", "b"])
        >>> panel.size
        (17, 22)
    """
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got an empty list")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected {len(images)} titles (one per image), got {len(titles)}")
    tiles = [_as_rgb_uint8(x, i) for i, x in enumerate(images)]
    top = title_height if titles is not None else 0
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    height = top + max(t.shape[0] for t in tiles)
    panel = Image.new("RGB", (width, height), tuple(int(v) for v in background))
    draw = ImageDraw.Draw(panel)
    x = 0
    for i, t in enumerate(tiles):
        panel.paste(Image.fromarray(t), (x, top))
        if titles is not None:
            draw.text((x + 1, 1), str(titles[i]), fill=(0, 0, 0))
        x += t.shape[1] + gap
    return panel


def save_panel(path: str | os.PathLike, images: Sequence, titles: Sequence[str] | None = None,
               **kwargs) -> Image.Image:
    """Build a panel with :func:`make_panel` and save it to ``path`` (format from the extension).

    Parent folders are created. Returns the panel.

    Example:
        >>> import numpy as np, tempfile, os
        >>> from wsseg.viz import save_panel
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_panel(os.path.join(d, "p.png"), [np.zeros((4, 4, 3), np.uint8)])
        ...     os.path.isfile(os.path.join(d, "p.png"))
        True
    """
    panel = make_panel(images, titles, **kwargs)
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    panel.save(path)
    return panel
