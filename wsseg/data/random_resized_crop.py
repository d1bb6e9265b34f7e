"""Random crop of random area and aspect ratio, resized to a fixed size (image, mask and ``valid`` aligned)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .transforms import Sample, _check_sample, _resize_nearest, _Transform

__all__ = ["RandomResizedCrop"]

_INTERPOLATIONS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _resize_image(image: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """PIL resize of an ``(H, W, 3)`` image to ``size = (w, h)``; uint8 stays uint8, float per channel."""
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, resample=resample))
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), mode="F")
                        .resize(size, resample=resample)) for c in range(image.shape[2])]
    return np.stack(chans, axis=-1)


class RandomResizedCrop(_Transform):
    r"""Crop a random window of random area and aspect ratio and resize it to ``size``.

    With an input of :math:`H \times W` pixels, up to 10 attempts draw an area fraction and a log-uniform
    aspect ratio

    .. math::
       s \sim U(s_{\min}, s_{\max}),\quad
       \rho = \exp(u),\ u \sim U(\log\rho_{\min}, \log\rho_{\max}),\quad
       w = \operatorname{round}\sqrt{sHW\rho},\quad h = \operatorname{round}\sqrt{sHW/\rho}

    and accept the first window with :math:`0 < w \le W`, :math:`0 < h \le H`, placed at a uniform integer
    offset :math:`t \in [0, H - h]`, :math:`l \in [0, W - w]`. If all 10 fail, the fallback is the central
    crop of the whole image clamped to the ratio range (the full image when its ratio is inside it). The
    window is then resized to ``size``: the image with PIL ``interpolation`` (bicubic by default, as
    SLRNet's ``MaskRandResizedCrop``), ``mask`` and ``valid`` with PIL nearest, so they stay aligned. The
    window always lies inside the image, so no padding is added and ``valid`` is carried through (all
    ``True`` if it was).

    **Random stream.** The sampling algorithm is torchvision's ``RandomResizedCrop.get_params``, but every
    draw comes from the given :class:`numpy.random.Generator` (``uniform`` for the area and the log-ratio,
    ``integers`` for the offsets), so runs resume exactly from a saved generator state. For a given seed
    the windows therefore differ from torchvision's (which draws from torch's global RNG); their
    distribution is the same.

    Args:
        size: output ``S`` or ``(S_h, S_w)`` in pixels.
        scale: range of the window area as a fraction of the image area, ``0 < min <= max``
            (default ``(0.08, 1.0)``; SLRNet ``(0.9, 1.0)``).
        ratio: range of the window aspect ratio :math:`w / h`, ``0 < min <= max`` (default
            ``(3/4, 4/3)``, torchvision's, which SLRNet keeps).
        interpolation: image resampling, ``"bicubic"`` (default), ``"bilinear"`` or ``"nearest"``.
        seed: seed of the transform's own generator (see :mod:`wsseg.data.transforms`).

    Raises:
        ValueError: if ``size`` is not positive, ``scale``/``ratio`` are not increasing positive pairs, or
            ``interpolation`` is unknown.

    Example:
        >>> import numpy as np
        >>> t = RandomResizedCrop(8, scale=(0.5, 1.0), seed=0)
        >>> s = t({"image": np.zeros((20, 30, 3), np.uint8), "mask": np.ones((20, 30), np.uint8)})
        >>> s["image"].shape, s["mask"].shape
        ((8, 8, 3), (8, 8))
        >>> top, left, h, w = t.get_params(20, 30, np.random.default_rng(0))
        >>> 0 <= top <= 20 - h and 0 <= left <= 30 - w
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``datasets/transforms.py``
        (``MaskRandResizedCrop``, which wraps torchvision's ``RandomResizedCrop.get_params``).
    """

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), interpolation: str = "bicubic",
                 seed: int | None = None) -> None:
        super().__init__(seed)
        out = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
        if len(out) != 2 or any(isinstance(s, bool) or int(s) != s or s <= 0 for s in out):
            raise ValueError(f"size: expected a positive int or (h, w) pair, got {size!r}")
        self.size = (int(out[0]), int(out[1]))
        for name, rng_ in (("scale", scale), ("ratio", ratio)):
            if len(rng_) != 2 or not 0 < rng_[0] <= rng_[1]:
                raise ValueError(f"{name}: expected (min, max) with 0 < min <= max, got {tuple(rng_)}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation: expected one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
        self.interpolation = interpolation

    def get_params(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """Draw a window ``(top, left, h, w)`` for an image of ``height`` × ``width`` pixels from ``rng``."""
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(lo, hi))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        g = self._generator(rng)
        height, width = sample["image"].shape[:2]
        top, left, h, w = self.get_params(height, width, g)
        size = (self.size[1], self.size[0])
        window = (slice(top, top + h), slice(left, left + w))
        sample["image"] = _resize_image(np.ascontiguousarray(sample["image"][window]), size,
                                        _INTERPOLATIONS[self.interpolation])
        for key in ("mask", "valid"):
            if sample.get(key) is not None:
                sample[key] = _resize_nearest(np.ascontiguousarray(sample[key][window]), size)
        return sample

    def _repr_args(self) -> str:
        return (f"size={self.size}, scale={self.scale}, ratio={tuple(round(r, 4) for r in self.ratio)}, "
                f"interpolation={self.interpolation!r}")
