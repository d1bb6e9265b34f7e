"""CoSA's weak/strong two-view training transform (shared geometry, different photometry).

Source:
    CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``dataloaders/voc.py``
    (``VOC12ClsDatasetNew.__transforms``), ``dataloaders/transforms.py`` (``random_scaling``,
    ``random_fliplr``, ``random_crop``, ``GaussianBlur``) and ``dataloaders/randaug.py`` (``OneOf`` and the
    ``Rand*`` operations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..utils.image import IMAGENET_MEAN, IMAGENET_STD
from .transforms import (
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomRescale,
    ResizeLongSide,
    ToTensor,
    _check_sample,
    _Transform,
)

__all__ = ["WeakStrongTransform", "STRONG_OPS"]

Sample = dict[str, Any]

#: The strong photometric operations, in the official ``OneOf`` order.
STRONG_OPS: tuple[str, ...] = ("identity", "autocontrast", "equalize", "solarize", "color", "contrast",
                               "brightness", "sharpness", "posterize")

_MAX_LEVEL = 10  # the official PARAMETER_MAX: magnitudes are expressed on a 0..10 scale
_ENHANCERS = {"color": ImageEnhance.Color, "contrast": ImageEnhance.Contrast,
              "brightness": ImageEnhance.Brightness, "sharpness": ImageEnhance.Sharpness}


def _apply_op(image: Image.Image, op: str, magnitude: int) -> Image.Image:
    """One strong operation with the official magnitude mapping (``randaug.py``)."""
    if op == "identity":
        return image
    if op == "autocontrast":
        return ImageOps.autocontrast(image)
    if op == "equalize":
        return ImageOps.equalize(image)
    if op == "solarize":  # mmcv.solarize == PIL solarize: invert values >= threshold
        return ImageOps.solarize(image, threshold=min(magnitude * 256 // _MAX_LEVEL, 255))
    if op == "posterize":
        return ImageOps.posterize(image, 4 - magnitude * 4 // _MAX_LEVEL)
    factor = float(magnitude) * 1.8 / _MAX_LEVEL + 0.1
    return _ENHANCERS[op](image).enhance(factor)


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a (min, max) pair of numbers, got {value!r}") from err
    return lo, hi


class WeakStrongTransform(_Transform):
    r"""CoSA's training transform: one random geometry, a weak and a strong photometric view of it.

    Steps, all randomness drawn from one :class:`numpy.random.Generator` (see
    :mod:`wsseg.data.transforms` for the ``rng`` protocol):

    1. optional :class:`~wsseg.data.transforms.ResizeLongSide` (``long_side``; **not official**, for photos
       much larger than the crop, as in :func:`~wsseg.data.transforms.train_transform`);
    2. :class:`~wsseg.data.transforms.RandomRescale` by :math:`r \sim U(r_{\min}, r_{\max})` (bilinear image,
       nearest mask);
    3. :class:`~wsseg.data.transforms.RandomHorizontalFlip` with probability ``hflip_p``;
    4. :class:`~wsseg.data.transforms.RandomCrop` of ``crop_size`` with ``pad_value`` padding (official: 0,
       black), no crop retries; padded mask pixels are ``ignore_index``, ``box`` is the official
       ``img_box``;
    5. with probability ``blur_p``, a PIL Gaussian blur of radius :math:`\rho \sim U(\rho_{\min},
       \rho_{\max})`, applied to the **whole crop, padding included** (as official), and shared by both
       views;
    6. weak view :math:`x_w` = the (blurred) crop; strong view :math:`x_s = \mathrm{op}_m(x_w)` with ``op``
       drawn uniformly from ``ops`` and an **integer** magnitude
       :math:`m \sim U\{m_{\min}, \dots, m_{\max} - 1\}` (official ``np.random.randint(1, 10)``: 1..9),
       again applied to the whole crop, padding included. Magnitude mapping (official ``randaug.py``,
       maximum level 10):

       .. math::

           f_{\text{enhance}} = 0.1 + 1.8\,\frac{m}{10},\qquad
           t_{\text{solarize}} = \min\!\left(\left\lfloor \frac{256\,m}{10} \right\rfloor, 255\right),\qquad
           b_{\text{posterize}} = 4 - \left\lfloor \frac{4\,m}{10} \right\rfloor,

       where the enhancement factor is that of PIL ``ImageEnhance.{Color, Contrast, Brightness,
       Sharpness}``, solarize inverts values :math:`\ge t` and posterize keeps :math:`b` bits;
       ``identity``, ``autocontrast`` and ``equalize`` (PIL ``ImageOps``) ignore :math:`m`;
    7. both views are normalised with ``mean``/``std`` (0–1 units, like
       :class:`~wsseg.data.transforms.Normalize`) and converted to tensors.

    The geometry is shared, so pseudo labels computed on the weak view are pixel-aligned with the strong
    view (no label warping).

    **Deviation from the spec's sketch.** The spec sketches ``__call__(image, label)``; this class follows
    the library's transform protocol ``t(sample, rng=None) -> sample`` so that datasets and the training
    engine (per-sample seeding, exact resume) work unchanged. Output keys: ``"image"`` = weak view,
    ``"image_strong"`` = strong view, plus ``"mask"``, ``"valid"``, ``"box"`` as produced by
    :func:`~wsseg.data.transforms.train_transform`; any other key (``"label"``, ``"name"``) is passed
    through (a numpy ``"label"`` becomes a float32 tensor).

    Args:
        crop_size: crop ``S`` or ``(S_h, S_w)`` in pixels (CoSA: 448).
        scale_range: random rescale range ``(min, max)`` (CoSA: ``(0.5, 2.0)``), or ``None`` to skip.
        hflip_p: flip probability in [0, 1] (0 disables the step).
        blur_p: blur probability in [0, 1] (CoSA: 0.5).
        blur_radius: ``(min, max)`` blur radius in pixels, ``0 <= min <= max`` (CoSA: ``(0.1, 2.0)``).
        magnitude_range: half-open integer range ``[min, max)`` of the strong magnitude,
            ``0 <= min < max <= 11`` (CoSA: ``(1, 10)``, i.e. 1..9).
        ops: names of the strong operations drawn from, a non-empty subset of :data:`STRONG_OPS` without
            repetitions (default: all nine, the official set).
        mean, std: normalisation statistics in the 0–1 range (default ImageNet, as official).
        pad_value: padded image value in 0–255 units before the photometric operations (default 0 = the
            official ``mean_rgb=[0, 0, 0]``); a number or one per channel. Non-integer values are
            truncated to ``uint8`` like the official padded canvas.
        ignore_index: padded mask value.
        long_side: if given, first resize every image so that its longer side has this length.
        seed: seed of the transform's own generator (used when no ``rng`` is passed).

    Shape:
        - input ``sample["image"]``: ``numpy.uint8`` :math:`(H, W, 3)` RGB; optional ``"mask"`` :math:`(H, W)`,
          ``"valid"`` :math:`(H, W)` bool.
        - output ``"image"``, ``"image_strong"``: float32 :math:`(3, S_h, S_w)`; ``"mask"``: int64
          :math:`(S_h, S_w)`; ``"valid"``: bool :math:`(S_h, S_w)`; ``"box"``: int64 :math:`(4,)`
          ``(top, bottom, left, right)``.

    Raises:
        ValueError: on an invalid hyperparameter (probability outside [0, 1], bad ranges, unknown or
            repeated ``ops``, ``pad_value`` outside 0–255), or when called on a sample whose image is not a
            numpy ``(H, W, 3)`` array.
        TypeError: when called on a sample whose image is not ``uint8``, or with an ``rng`` that is not a
            :class:`numpy.random.Generator`.

    Example:
        >>> import numpy as np
        >>> t = WeakStrongTransform(crop_size=32, seed=0)
        >>> s = t({"image": np.full((20, 40, 3), 100, np.uint8), "mask": np.ones((20, 40), np.uint8)},
        ...       rng=np.random.default_rng(0))
        >>> s["image"].shape, s["image_strong"].shape, s["mask"].dtype, s["valid"].dtype, s["box"].shape
        (torch.Size([3, 32, 32]), torch.Size([3, 32, 32]), torch.int64, torch.bool, torch.Size([4]))
        >>> bool((s["mask"][~s["valid"]] == 255).all())
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``dataloaders/voc.py``
        (``VOC12ClsDatasetNew``), ``dataloaders/transforms.py`` (``GaussianBlur``, ``random_crop``),
        ``dataloaders/randaug.py``.
    """

    def __init__(self, crop_size: int | Sequence[int] = 448, scale_range: Sequence[float] | None = (0.5, 2.0),
                 hflip_p: float = 0.5, blur_p: float = 0.5, blur_radius: Sequence[float] = (0.1, 2.0),
                 magnitude_range: Sequence[int] = (1, 10), ops: Sequence[str] = STRONG_OPS,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 pad_value: float | Sequence[float] = 0.0, ignore_index: int = 255,
                 long_side: int | None = None, seed: int | None = None) -> None:
        super().__init__(seed)
        if not 0.0 <= blur_p <= 1.0:
            raise ValueError(f"blur_p: expected a probability in [0, 1], got {blur_p}")
        r_lo, r_hi = _pair(blur_radius, "blur_radius")
        if not 0.0 <= r_lo <= r_hi:
            raise ValueError(f"blur_radius: expected (min, max) with 0 <= min <= max, got {tuple(blur_radius)}")
        try:
            m_lo, m_hi = (int(v) for v in magnitude_range)
            integral = all(int(v) == v for v in magnitude_range)
        except (TypeError, ValueError) as err:
            raise ValueError(f"magnitude_range: expected an integer pair (min, max), got {magnitude_range!r}") from err
        if not integral or not 0 <= m_lo < m_hi <= _MAX_LEVEL + 1:
            raise ValueError(f"magnitude_range: expected integers with 0 <= min < max <= {_MAX_LEVEL + 1} "
                             f"(half-open [min, max)), got {tuple(magnitude_range)}")
        ops_t = (ops,) if isinstance(ops, str) else tuple(ops)
        unknown = [o for o in ops_t if o not in STRONG_OPS]
        if not ops_t or unknown or len(set(ops_t)) != len(ops_t):
            raise ValueError(f"ops: expected a non-empty subset of {STRONG_OPS} without repetitions, got {ops!r}")
        pad = np.asarray(pad_value, dtype=np.float64).reshape(-1)
        if pad.size not in (1, 3) or not ((pad >= 0) & (pad <= 255)).all():
            raise ValueError(f"pad_value: expected a number or 3 values in [0, 255], got {pad_value!r}")

        steps: list[_Transform] = []
        if long_side is not None:
            steps.append(ResizeLongSide(long_side))
        if scale_range is not None:
            steps.append(RandomRescale(scale_range))
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p: expected a probability in [0, 1], got {hflip_p}")
        if hflip_p > 0:
            steps.append(RandomHorizontalFlip(hflip_p))
        self._crop = RandomCrop(crop_size, pad_value=pad_value, ignore_index=ignore_index)
        steps.append(self._crop)
        self._geometry = steps
        self._normalize = Normalize(mean, std)
        self._to_tensor = ToTensor()

        self.crop_size = self._crop.crop_size
        self.scale_range = None if scale_range is None else (float(scale_range[0]), float(scale_range[1]))
        self.hflip_p = float(hflip_p)
        self.blur_p = float(blur_p)
        self.blur_radius = (r_lo, r_hi)
        self.magnitude_range = (m_lo, m_hi)
        self.ops = ops_t
        self.mean, self.std = self._normalize.mean, self._normalize.std
        self.pad_value = self._crop.pad_value
        self.ignore_index = int(ignore_index)
        self.long_side = None if long_side is None else int(long_side)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        if sample["image"].dtype != np.uint8:
            raise TypeError(f"sample['image']: expected a uint8 RGB array, got dtype {sample['image'].dtype}")
        g = self._generator(rng)
        for t in self._geometry:
            sample = t(sample, rng=g)
        # The crop canvas is float32 holding integral values (and the pad value): back to uint8 for PIL.
        crop = Image.fromarray(np.clip(sample["image"], 0, 255).astype(np.uint8))
        if g.random() < self.blur_p:
            crop = crop.filter(ImageFilter.GaussianBlur(radius=float(g.uniform(*self.blur_radius))))
        op = self.ops[int(g.integers(len(self.ops)))]
        magnitude = int(g.integers(*self.magnitude_range))
        strong = _apply_op(crop, op, magnitude)

        sample["image"] = np.asarray(crop)
        sample = self._to_tensor(self._normalize(sample))
        strong_np = self._normalize({"image": np.asarray(strong)})["image"]
        sample["image_strong"] = torch.from_numpy(np.ascontiguousarray(strong_np.transpose(2, 0, 1)))
        return sample

    def _repr_args(self) -> str:
        return (f"crop_size={self.crop_size}, scale_range={self.scale_range}, hflip_p={self.hflip_p}, "
                f"blur_p={self.blur_p}, blur_radius={self.blur_radius}, magnitude_range={self.magnitude_range}, "
                f"ops={self.ops}, mean={self.mean}, std={self.std}, pad_value={self.pad_value}, "
                f"ignore_index={self.ignore_index}, long_side={self.long_side}, seed={self.seed}")
