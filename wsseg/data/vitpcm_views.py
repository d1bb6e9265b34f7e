"""ViT-PCM's two-view training transform (equivariance loss) and its TF-style colour jitter.

One sample gives two views of the same image, both square (aspect ratio not kept, as officially):

* **view 1** (``"image"``): image resized to :math:`S \\times S` (``image_size``, 384), colour jitter, random
  :math:`T_1` = {left–right flip, up–down flip, transpose};
* **view 2** (``"image_view2"``): the same resized image, an independent colour jitter, with probability
  ``crop_prob`` a ``crop_size`` crop whose corner lies on the patch grid, a resize to ``view2_size`` (192),
  an independent :math:`T_2`.

The geometric flags and the crop box are returned so that the view-1 patch predictions can be moved into
view-2 geometry with :func:`wsseg.layers.patch_grid_view1_to_view2`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .transforms import Normalize, Sample, ToTensor, _check_sample, _Transform

__all__ = ["ViTPCMTwoViewTransform", "ViTPCMViewParams", "vitpcm_color_jitter"]

_GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], dtype=np.float32)
_RGB_OFFSETS = np.array([5.0, 3.0, 1.0], dtype=np.float32)


def _rgb_to_hsv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's RGB -> HSV: v = max, s = (max - min) / v (0 when v <= 0), h in turns, [0, 1)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = np.maximum(np.maximum(r, g), b)
    rng = v - np.minimum(np.minimum(r, g), b)
    s = np.where(v > 0, rng / np.where(v > 0, v, 1), 0).astype(np.float32)
    norm = np.float32(1 / 6) / np.where(rng > 0, rng, 1)
    h = np.where(r == v, (g - b) * norm, np.where(g == v, (b - r) * norm + np.float32(1 / 3),
                                                   (r - g) * norm + np.float32(2 / 3)))
    h = np.where(rng > 0, h, 0)
    h = np.where(h < 0, h + 1, h)
    return h.astype(np.float32), s, v


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV -> RGB, ``v - v s clip(min(k, 4 - k), 0, 1)`` with ``k = (n + 6h) mod 6``, n = 5, 3, 1 (the
    sextant formula of TF's kernel written per channel)."""
    k = np.mod(_RGB_OFFSETS + (h * 6)[..., None], 6)
    return (v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def vitpcm_color_jitter(image: np.ndarray, brightness_delta: float = 0.0, contrast_factor: float = 1.0,
                        saturation_factor: float = 1.0, hue_delta: float = 0.0,
                        grayscale: bool = False) -> np.ndarray:
    r"""ViT-PCM's colour transform with given parameters: TF ``adjust_*`` semantics on a float image.

    In the official order, on :math:`x \in \mathbb{R}^{H \times W \times 3}` in 0–255 units, in float32 and
    **without clipping** (TF's float image ops do not clip):

    .. math::

        x &\leftarrow x + \delta_b \\
        x_{\cdot\cdot k} &\leftarrow (x_{\cdot\cdot k} - \bar x_k)\, f_c + \bar x_k
            \quad(\bar x_k \text{ the mean of channel } k) \\
        (h, s, v) &= \operatorname{hsv}(x),\ s \leftarrow \operatorname{clip}(s f_s, 0, 1),\
            x \leftarrow \operatorname{rgb}(h, s, v) \\
        (h, s, v) &= \operatorname{hsv}(x),\ h \leftarrow (h + \delta_h) \bmod 1,\ x \leftarrow \operatorname{rgb}(h, s, v) \\
        x &\leftarrow (0.2989 R + 0.587 G + 0.114 B)\,\mathbf{1}_3 \quad\text{if grayscale}

    with the HSV of TF's kernels (:math:`v = \max`, :math:`s = (\max - \min)/v` for :math:`v > 0` else 0,
    hue in turns).

    **What is matched.** ``tf.image.adjust_brightness`` (additive, in the image's units),
    ``adjust_contrast`` (per-channel mean, float), ``adjust_saturation`` / ``adjust_hue`` (HSV round trip
    with the same formulas, float32; exact up to float rounding) and ``rgb_to_grayscale`` (same weights).
    Pixels made negative by the contrast step go through the same formulas as in TF (e.g. a saturation step
    clamps :math:`s > 1` to 1). A saturation step with :math:`f_s = 1` or a hue step with :math:`\delta_h = 0`
    is skipped when the image is non-negative (then the round trip is the identity up to rounding); the two
    HSV round trips are fused into one (the same result up to rounding).
    **Not reused:** :func:`wsseg.data.color_jitter` follows PIL (multiplicative brightness, luma-mean
    contrast, uint8 rounding and clipping after every step, 256-level hue), which is not TF's behaviour.

    Args:
        image: ``(H, W, 3)`` RGB in 0–255 units, uint8 or float.
        brightness_delta: additive shift :math:`\delta_b` in 0–255 units (the official range is ±0.2, i.e.
            ±0.2 grey levels — practically no change, because the official image is a 0–255 float).
        contrast_factor: :math:`f_c \ge 0` (1 = identity).
        saturation_factor: :math:`f_s \ge 0` (1 = identity).
        hue_delta: :math:`\delta_h \in [-0.5, 0.5]` turns (0 = identity).
        grayscale: replace by the 3-channel luma.

    Returns:
        ``numpy.ndarray`` ``(H, W, 3)`` float32, values not clipped.

    Raises:
        ValueError: if ``image`` is not ``(H, W, 3)`` or a factor is out of range.

    Example:
        >>> import numpy as np
        >>> x = np.array([[[200., 100., 0.]], [[0., 100., 200.]]], np.float32)
        >>> vitpcm_color_jitter(x, contrast_factor=0.5)[:, 0].tolist()
        [[150.0, 100.0, 50.0], [50.0, 100.0, 150.0]]
        >>> vitpcm_color_jitter(x, saturation_factor=0.5).round(3)[0, 0].tolist()
        [200.0, 150.0, 100.0]
        >>> vitpcm_color_jitter(np.array([[[255, 0, 0]]], np.uint8), hue_delta=1 / 3).round(3)[0, 0].tolist()
        [0.0, 255.0, 0.0]

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``utils.py`` (``color_transform``:
        ``tf.image.random_brightness``, ``random_contrast``, ``random_saturation``, ``random_hue``,
        ``rgb_to_grayscale``).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected a numpy array (H, W, 3), got {type(image).__name__} with shape "
                         f"{getattr(image, 'shape', None)}")
    for name, f in (("contrast_factor", contrast_factor), ("saturation_factor", saturation_factor)):
        if not float(f) >= 0:
            raise ValueError(f"{name}: expected a non-negative float, got {f}")
    if not -0.5 <= float(hue_delta) <= 0.5:
        raise ValueError(f"hue_delta: expected a value in [-0.5, 0.5], got {hue_delta}")
    x = image.astype(np.float32, copy=True)
    if brightness_delta != 0:
        x += np.float32(brightness_delta)
    if contrast_factor != 1:
        mean = x.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
        x = (x - mean) * np.float32(contrast_factor) + mean
    if saturation_factor != 1 or hue_delta != 0 or x.min() < 0:
        # TF runs two HSV round trips (saturation, then hue); the HSV of the first one's output is
        # (h, clip(s f_s, 0, 1), v) again (a grey pixel's hue is irrelevant), so one round trip is the same.
        h, s, v = _rgb_to_hsv(x)
        x = _hsv_to_rgb(np.mod(h + np.float32(hue_delta), 1), np.clip(s * np.float32(saturation_factor), 0, 1), v)
    if grayscale:
        x = np.repeat((x @ _GRAY_WEIGHTS)[..., None], 3, axis=-1)
    return np.ascontiguousarray(x, dtype=np.float32)


class ViTPCMViewParams(NamedTuple):
    """The random choices of one view (see :meth:`ViTPCMTwoViewTransform.get_params`).

    ``flips`` = ``(lr, ud, transpose)``; ``crop_box`` = ``(top, left, bottom, right)`` in pixels of the
    :math:`S \\times S` image before the flips (half-open, corners on the patch grid), or ``None``.
    """

    brightness_delta: float
    contrast_factor: float
    saturation_factor: float
    hue_delta: float
    grayscale: bool
    flips: tuple[bool, bool, bool]
    crop_box: tuple[int, int, int, int] | None


def _resize_bilinear(image: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=align_corners)
    return out[0].permute(1, 2, 0).numpy()


def _nearest_index(in_size: int, out_size: int, align_corners: bool) -> np.ndarray:
    """TF-1 nearest-neighbour source rows: ``round(i (n_in-1)/(n_out-1))`` (align corners, half away from
    zero) or ``floor((i + 1/2) n_in / n_out)`` (half-pixel), clamped to the input."""
    i = np.arange(out_size, dtype=np.float32)
    if align_corners:
        scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0)
        idx = np.floor(i * scale + 0.5)
    else:
        idx = np.floor((i + 0.5) * np.float32(in_size / out_size))
    return np.minimum(idx.astype(np.int64), in_size - 1)


def _resize_nearest(m: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    if m.shape == (size, size):
        return m
    rows = _nearest_index(m.shape[0], size, align_corners)
    cols = _nearest_index(m.shape[1], size, align_corners)
    return np.ascontiguousarray(m[rows[:, None], cols[None, :]])


def _flip(x: np.ndarray, flips: Sequence[bool]) -> np.ndarray:
    """Official order on an (H, W[, C]) array: left-right flip, up-down flip, transpose."""
    if flips[0]:
        x = x[:, ::-1]
    if flips[1]:
        x = x[::-1]
    if flips[2]:
        x = x.swapaxes(0, 1)
    return np.ascontiguousarray(x)


def _prob(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _range(value: Sequence[float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a (lower, upper) pair, got {value!r}") from err
    if not 0.0 <= lo <= hi:
        raise ValueError(f"{name}: expected 0 <= lower <= upper, got {tuple(value)}")
    return lo, hi


class ViTPCMTwoViewTransform(_Transform):
    r"""ViT-PCM's two views of a training sample for the equivariance loss :math:`L_{et}`.

    Per call (all random choices drawn from the transform's :class:`numpy.random.Generator`, see
    :mod:`wsseg.data.transforms`; :meth:`get_params` then :meth:`apply`):

    1. the image is resized to :math:`S \times S` (bilinear, TF-1 ``align_corners=True``; aspect ratio not
       kept), the mask and ``valid`` with nearest neighbour;
    2. **view 1**: :func:`vitpcm_color_jitter` with :math:`\delta_b \sim U(-b, b)`,
       :math:`f_c \sim U(c_0, c_1)`, :math:`f_s \sim U(s_0, s_1)`, :math:`\delta_h \sim U(-h, h)`,
       grayscale with probability ``grayscale_p``; then :math:`T_1`: left–right flip, up–down flip,
       transpose, each with its probability, in this order. The mask and ``valid`` get :math:`T_1` too;
    3. **view 2**: an independent colour jitter; with probability ``crop_prob`` a crop of
       ``crop_size``² pixels whose top-left corner is on the ``patch_size`` grid; a bilinear resize of the
       (cropped or whole) image to ``view2_size``; an independent :math:`T_2`;
    4. both views are normalised, :math:`(x - 255\mu)/(255\sigma)` (default :math:`\mu = \sigma = 0.5`:
       the official ``pil2vit`` scaling to [-1, 1]; values may exceed it, nothing is clipped).

    **Output sample.** ``"image"`` view 1 float32 :math:`(3, S, S)`; ``"image_view2"`` float32
    :math:`(3, S_2, S_2)`; ``"flips_view1"``, ``"flips_view2"`` bool :math:`(3,)` = ``[lr, ud,
    transpose]``; ``"crop_box_view2"`` int64 :math:`(4,)` = ``(top, left, bottom, right)`` of the view-2
    crop **in view-1 patch-grid cells** (pixels / ``patch_size``) in the un-flipped frame — ``(0, 0, G, G)``
    with :math:`G = S / p` when the sample is not cropped (the whole image is resized); ``"mask"`` int64 and
    ``"valid"`` bool :math:`(S, S)` aligned with view 1 (``valid`` all ``True`` when absent); ``"label"``
    and any other entry unchanged (``label`` as float32 tensor, as :class:`~wsseg.data.transforms.ToTensor`).
    Batched by the default collate, ``flips_view*`` and ``crop_box_view2`` are exactly the arguments of
    :func:`wsseg.layers.patch_grid_view1_to_view2`.

    **Official quirks reproduced** (ViT-PCM ``utils.py``): the brightness delta is in the units of the 0–255
    float image, so ±0.2 is ±0.2 grey levels (effectively off; pass ``brightness=51`` for ±20 % of the
    range); contrast/saturation/hue act on unclipped floats; the crop corner is drawn uniformly from
    :math:`\{0, p, \dots, S\}` and then clamped to :math:`S - \text{crop}` (``crop_start="official"``), so
    the last position is over-represented (9/25 per axis at the defaults); ``crop_start="uniform"`` draws
    it uniformly from :math:`\{0, p, \dots, S - \text{crop}\}` instead. The grayscale draw is made after the
    four colour draws, as in ``color_transform``.

    **Approximations.** Random numbers come from numpy, so the draws differ from TF's for the same seed.
    Resizing uses :func:`torch.nn.functional.interpolate`, whose ``align_corners=True`` bilinear formula is
    TF-1 ``tf.image.resize(..., align_corners=True)``'s (no antialiasing). ``align_corners=False`` switches
    image and mask resizing to the half-pixel convention (not TF-1's legacy asymmetric default).

    **Presets.** ``crop_prob`` is 0.3 for PASCAL VOC (``configs/voc12.yaml``, the default here because VOC
    is the benchmark of the published results) and 0.0 for COCO (``configs/coco14.yaml``), see
    :attr:`PRESETS` / :meth:`from_preset`.

    Args:
        image_size: view-1 side :math:`S` in pixels (384), a multiple of ``patch_size``.
        view2_size: view-2 side :math:`S_2` (192), a multiple of ``patch_size``.
        patch_size: patch size :math:`p` of the crop grid (16).
        crop_prob: probability of cropping view 2, in [0, 1] (0.3, VOC).
        crop_size: crop side in pixels (128), a multiple of ``patch_size``, at most ``image_size``.
        flip_lr_p, flip_ud_p, transpose_p: probabilities of :math:`T`'s three operations (0.5 each).
        brightness: maximum brightness delta :math:`b \ge 0` in 0–255 units (0.2, official).
        contrast: :math:`(c_0, c_1)` contrast-factor range ((0.5, 2.0)).
        saturation: :math:`(s_0, s_1)` saturation-factor range ((0.5, 1.5)).
        hue: maximum hue delta :math:`h \in [0, 0.5]` turns (0.1).
        grayscale_p: grayscale probability (0.1).
        crop_start: ``"official"`` (clamped, see above) or ``"uniform"``.
        align_corners: resize convention, ``True`` (official) or ``False`` (half-pixel).
        mean, std: normalisation statistics in the 0–1 range (default 0.5: [-1, 1] as ``pil2vit``; use
            ``wsseg.utils.IMAGENET_MEAN`` / ``IMAGENET_STD`` for ImageNet-normalised backbones).
        seed: seed of the transform's generator.

    Raises:
        ValueError: on a non-positive or non-multiple size, a crop larger than the image, a probability
            outside [0, 1], a bad range or an unknown ``crop_start``.

    Example:
        >>> import numpy as np
        >>> t = ViTPCMTwoViewTransform(image_size=64, view2_size=32, crop_size=32, crop_prob=1.0, seed=0)
        >>> s = t({"image": np.zeros((50, 70, 3), np.uint8), "mask": np.zeros((50, 70), np.uint8),
        ...        "label": np.array([1.0, 0.0])})
        >>> tuple(s["image"].shape), tuple(s["image_view2"].shape), tuple(s["mask"].shape)
        ((3, 64, 64), (3, 32, 32), (64, 64))
        >>> s["flips_view1"].dtype, s["crop_box_view2"].tolist()[2] - s["crop_box_view2"].tolist()[0]
        (torch.bool, 2)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``dataloader.py``
        (``DatasetVITPCM._preprocess_image``) and ``utils.py`` (``color_transform``, ``affine_transform``,
        ``bbox_for_crop``, ``crop_image``, ``apply_affine_transform``, ``resize``, ``pil2vit``).
    """

    #: Dataset presets of the official configs (``configs/voc12.yaml``, ``configs/coco14.yaml``).
    PRESETS: dict[str, dict[str, Any]] = {"voc12": {"crop_prob": 0.3}, "coco14": {"crop_prob": 0.0}}

    def __init__(self, image_size: int = 384, view2_size: int = 192, patch_size: int = 16, crop_prob: float = 0.3,
                 crop_size: int = 128, flip_lr_p: float = 0.5, flip_ud_p: float = 0.5, transpose_p: float = 0.5,
                 brightness: float = 0.2, contrast: Sequence[float] = (0.5, 2.0),
                 saturation: Sequence[float] = (0.5, 1.5), hue: float = 0.1, grayscale_p: float = 0.1,
                 crop_start: str = "official", align_corners: bool = True,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 seed: int | None = None) -> None:
        super().__init__(seed)
        for name, v in (("image_size", image_size), ("view2_size", view2_size), ("patch_size", patch_size),
                        ("crop_size", crop_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name, v in (("image_size", image_size), ("view2_size", view2_size), ("crop_size", crop_size)):
            if v % patch_size:
                raise ValueError(f"{name}: expected a multiple of patch_size={patch_size}, got {v}")
        if crop_size > image_size:
            raise ValueError(f"crop_size: expected at most image_size={image_size}, got {crop_size}")
        if not isinstance(brightness, (int, float, np.floating, np.integer)) or isinstance(brightness, bool) \
                or not brightness >= 0:
            raise ValueError(f"brightness: expected a non-negative float (0-255 units), got {brightness!r}")
        if isinstance(hue, bool) or not isinstance(hue, (int, float, np.floating, np.integer)) \
                or not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue: expected a value in [0, 0.5], got {hue!r}")
        if crop_start not in ("official", "uniform"):
            raise ValueError(f"crop_start: expected 'official' or 'uniform', got {crop_start!r}")
        self.image_size, self.view2_size = int(image_size), int(view2_size)
        self.patch_size, self.crop_size = int(patch_size), int(crop_size)
        self.crop_prob = _prob(crop_prob, "crop_prob")
        self.flip_lr_p = _prob(flip_lr_p, "flip_lr_p")
        self.flip_ud_p = _prob(flip_ud_p, "flip_ud_p")
        self.transpose_p = _prob(transpose_p, "transpose_p")
        self.grayscale_p = _prob(grayscale_p, "grayscale_p")
        self.brightness, self.hue = float(brightness), float(hue)
        self.contrast = _range(contrast, "contrast")
        self.saturation = _range(saturation, "saturation")
        self.crop_start = crop_start
        self.align_corners = bool(align_corners)
        self._normalize = Normalize(mean, std)
        self.mean, self.std = self._normalize.mean, self._normalize.std
        self._to_tensor = ToTensor()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTPCMTwoViewTransform:
        """Build the transform of an official config (``"voc12"`` or ``"coco14"``), with ``overrides``.

        Raises:
            ValueError: if ``name`` is not a key of :attr:`PRESETS`.
        """
        if name not in cls.PRESETS:
            raise ValueError(f"name: expected one of {sorted(cls.PRESETS)}, got {name!r}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def _view_params(self, g: np.random.Generator, crop: bool) -> ViTPCMViewParams:
        b = float(g.uniform(-self.brightness, self.brightness))
        c = float(g.uniform(*self.contrast))
        s = float(g.uniform(*self.saturation))
        h = float(g.uniform(-self.hue, self.hue))
        gray = bool(g.random() < self.grayscale_p)
        box = None
        if crop:
            do_crop = g.random() < self.crop_prob
            last = self.image_size - self.crop_size
            top_stop = self.image_size if self.crop_start == "official" else last
            starts = g.integers(0, top_stop // self.patch_size + 1, size=2) * self.patch_size
            y0, x0 = (int(min(v, last)) for v in starts)
            if do_crop:
                box = (y0, x0, y0 + self.crop_size, x0 + self.crop_size)
        flips = (bool(g.random() < self.flip_lr_p), bool(g.random() < self.flip_ud_p),
                 bool(g.random() < self.transpose_p))
        return ViTPCMViewParams(b, c, s, h, gray, flips, box)  # type: ignore[arg-type]

    def get_params(self, rng: np.random.Generator) -> tuple[ViTPCMViewParams, ViTPCMViewParams]:
        """Draw the parameters of both views from ``rng``: ``(view1, view2)``.

        Draw order per view: brightness, contrast, saturation, hue, grayscale; for view 2 the crop decision
        and the two corner indices (always drawn, so the stream layout does not depend on the outcome);
        then the lr, ud and transpose flags. View 1 has ``crop_box=None``.
        """
        return self._view_params(rng, crop=False), self._view_params(rng, crop=True)

    def apply(self, sample: Sample, params: tuple[ViTPCMViewParams, ViTPCMViewParams]) -> Sample:
        """Apply given parameters (from :meth:`get_params` or hand-made) to a sample; deterministic.

        Raises:
            TypeError, ValueError: if the sample is malformed or a crop box is off the image.
        """
        sample = _check_sample(sample)
        p1, p2 = params
        s, ac = self.image_size, self.align_corners
        base = _resize_bilinear(sample["image"].astype(np.float32), s, ac)
        for key in ("mask", "valid"):
            if sample.get(key) is not None:
                sample[key] = _flip(_resize_nearest(sample[key], s, ac), p1.flips)

        view1 = _flip(self._jitter(base, p1), p1.flips)
        view2 = self._jitter(base, p2)
        box_cells = (0, 0, s // self.patch_size, s // self.patch_size)
        if p2.crop_box is not None:
            top, left, bottom, right = (int(v) for v in p2.crop_box)
            if not (0 <= top < bottom <= s and 0 <= left < right <= s):
                raise ValueError(f"params[1].crop_box: expected a box inside the {s}x{s} image, got {p2.crop_box}")
            view2 = view2[top:bottom, left:right]
            box_cells = tuple(v // self.patch_size for v in (top, left, bottom, right))  # type: ignore[assignment]
        view2 = _flip(_resize_bilinear(view2, self.view2_size, ac), p2.flips)

        sample["image"] = view1
        sample = self._to_tensor(self._normalize(sample))
        view2 = self._normalize({"image": view2})["image"]
        sample["image_view2"] = torch.from_numpy(np.ascontiguousarray(view2.transpose(2, 0, 1)))
        sample["flips_view1"] = torch.tensor(p1.flips, dtype=torch.bool)
        sample["flips_view2"] = torch.tensor(p2.flips, dtype=torch.bool)
        sample["crop_box_view2"] = torch.tensor(box_cells, dtype=torch.int64)
        return sample

    @staticmethod
    def _jitter(image: np.ndarray, p: ViTPCMViewParams) -> np.ndarray:
        return vitpcm_color_jitter(image, p.brightness_delta, p.contrast_factor, p.saturation_factor,
                                   p.hue_delta, p.grayscale)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        _check_sample(sample)
        return self.apply(sample, self.get_params(self._generator(rng)))

    def _repr_args(self) -> str:
        return (f"image_size={self.image_size}, view2_size={self.view2_size}, patch_size={self.patch_size}, "
                f"crop_prob={self.crop_prob}, crop_size={self.crop_size}, flip_lr_p={self.flip_lr_p}, "
                f"flip_ud_p={self.flip_ud_p}, transpose_p={self.transpose_p}, brightness={self.brightness}, "
                f"contrast={self.contrast}, saturation={self.saturation}, hue={self.hue}, "
                f"grayscale_p={self.grayscale_p}, crop_start={self.crop_start!r}, "
                f"align_corners={self.align_corners}, mean={self.mean}, std={self.std}, seed={self.seed}")
