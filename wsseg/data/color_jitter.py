"""Random brightness / contrast / saturation / hue jitter of the image of a sample (PIL implementation)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

from .transforms import Sample, _check_sample, _Transform

__all__ = ["ColorJitter", "color_jitter"]

_NAMES = ("brightness", "contrast", "saturation", "hue")


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _adjust_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    # PIL HSV stores the hue in 0..255; the shift wraps around (uint8 arithmetic), truncated toward zero.
    hsv = np.array(img.convert("HSV"))
    shift = int(hue_factor * 255) % 256
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def color_jitter(image: np.ndarray, brightness_factor: float | None = None, contrast_factor: float | None = None,
                 saturation_factor: float | None = None, hue_factor: float | None = None,
                 order: Sequence[int] = (0, 1, 2, 3)) -> np.ndarray:
    r"""Apply the colour adjustments with the given factors, in ``order``, to an RGB image.

    With :math:`x` the image and :math:`\operatorname{blend}(a, b, f) = b + f\,(a - b)` (PIL
    :class:`~PIL.ImageEnhance` semantics, rounded and clipped to uint8 after each operation):

    .. math::
       \text{brightness: } \operatorname{blend}(x, 0, f_b),\quad
       \text{contrast: } \operatorname{blend}(x, \bar g, f_c),\quad
       \text{saturation: } \operatorname{blend}(x, g, f_s),\quad
       \text{hue: } h \leftarrow (h + \lfloor 255 f_h \rceil_0) \bmod 256

    where :math:`g` is the luma (PIL ``"L"``) image, :math:`\bar g` its mean rounded to an integer,
    :math:`h` the PIL HSV hue channel (0–255) and :math:`\lfloor\cdot\rceil_0` truncation toward zero.
    These are the operations torchvision applies to **PIL** images (its ``adjust_brightness`` /
    ``adjust_contrast`` / ``adjust_saturation`` / ``adjust_hue`` on PIL inputs), which is what SLRNet's
    ``MaskColourJitter`` receives.

    **Difference from torchvision's tensor implementation.** On tensors torchvision computes in float
    without rounding between operations, uses the float luma mean for contrast and converts to a float
    HSV (hue continuous, not quantised to 256 levels). Results differ from this PIL path by a few grey
    levels per operation (hue up to about 1/256 of a turn); the PIL path is the official one.

    Args:
        image: ``numpy.ndarray`` ``(H, W, 3)`` RGB, uint8 (float is rounded and clipped to 0–255 first).
        brightness_factor, contrast_factor, saturation_factor: non-negative factors (1 = identity) or
            ``None`` to skip.
        hue_factor: hue shift in turns, in [-0.5, 0.5] (0 = identity), or ``None`` to skip.
        order: a permutation of ``(0, 1, 2, 3)`` = (brightness, contrast, saturation, hue) giving the
            order in which the operations are applied.

    Returns:
        ``numpy.ndarray`` ``(H, W, 3)`` uint8.

    Raises:
        ValueError: if ``image`` is not ``(H, W, 3)``, a factor is out of range or ``order`` is not a
            permutation of 0..3.

    Example:
        >>> import numpy as np
        >>> x = np.full((1, 1, 3), 100, np.uint8)
        >>> color_jitter(x, brightness_factor=1.5)[0, 0].tolist()
        [150, 150, 150]
        >>> color_jitter(np.array([[[255, 0, 0]]], np.uint8), hue_factor=1 / 3)[0, 0].tolist()
        [0, 255, 0]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``datasets/transforms.py``
        (``MaskColourJitter``: torchvision ``ColorJitter`` on PIL images).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected a numpy array (H, W, 3), got {type(image).__name__} with shape "
                         f"{getattr(image, 'shape', None)}")
    if sorted(int(i) for i in order) != [0, 1, 2, 3] or len(order) != 4:
        raise ValueError(f"order: expected a permutation of (0, 1, 2, 3), got {tuple(order)}")
    factors = (brightness_factor, contrast_factor, saturation_factor, hue_factor)
    for name, f in zip(_NAMES[:3], factors[:3], strict=True):
        if f is not None and not float(f) >= 0:
            raise ValueError(f"{name}_factor: expected None or a non-negative float, got {f}")
    if hue_factor is not None and not -0.5 <= float(hue_factor) <= 0.5:
        raise ValueError(f"hue_factor: expected None or a value in [-0.5, 0.5], got {hue_factor}")
    if all(f is None for f in factors):
        return _to_uint8(image)
    img = Image.fromarray(np.ascontiguousarray(_to_uint8(image)))
    for i in order:
        f = factors[int(i)]
        if f is None:
            continue
        if i == 0:
            img = ImageEnhance.Brightness(img).enhance(float(f))
        elif i == 1:
            img = ImageEnhance.Contrast(img).enhance(float(f))
        elif i == 2:
            img = ImageEnhance.Color(img).enhance(float(f))
        else:
            img = _adjust_hue(img, float(f))
    return np.asarray(img)


class ColorJitter(_Transform):
    r"""Randomly change brightness, contrast, saturation and hue, in a random order, with probability ``p``.

    Per call: with probability ``p`` (one uniform draw, always made) the image is jittered; a random
    permutation of the four operations is drawn, then the factors

    .. math::
       f_b \sim U(\max(0, 1 - b), 1 + b),\ f_c \sim U(\max(0, 1 - c), 1 + c),\
       f_s \sim U(\max(0, 1 - s), 1 + s),\ f_h \sim U(-h, h)

    (an operation whose value is 0 is skipped and draws nothing), and :func:`color_jitter` applies them.
    Only ``image`` changes (to uint8); ``mask``, ``valid`` and the other entries are untouched.

    **Random stream.** Factor ranges and the random order are torchvision's ``ColorJitter``; the draws
    come from the given :class:`numpy.random.Generator` (``random`` for ``p``, ``permutation`` for the
    order, ``uniform`` for the factors), so runs resume exactly but differ from torchvision's draws for
    the same seed. The operations are the PIL ones torchvision applies to PIL images (see
    :func:`color_jitter` for the difference from its tensor path).

    Args:
        brightness, contrast, saturation: non-negative jitter strengths (0 = off).
        hue: hue jitter strength in [0, 0.5] turns (0 = off).
        p: probability of jittering an image, in [0, 1] (default 1, as SLRNet's ``MaskColourJitter(p=1.0)``).
        seed: seed of the transform's own generator (see :mod:`wsseg.data.transforms`).

    Raises:
        ValueError: if a strength is negative, ``hue`` exceeds 0.5 or ``p`` is outside [0, 1].

    Example:
        >>> import numpy as np
        >>> t = ColorJitter(0.3, 0.3, 0.3, 0.1, seed=0)
        >>> s = t({"image": np.full((4, 4, 3), 120, np.uint8), "mask": np.zeros((4, 4), np.uint8)})
        >>> s["image"].dtype, s["mask"].tolist() == np.zeros((4, 4)).tolist()
        (dtype('uint8'), True)
        >>> order, b, c, sat, h = t.get_params(np.random.default_rng(0))
        >>> sorted(order), 0.7 <= b <= 1.3, -0.1 <= h <= 0.1
        ([0, 1, 2, 3], True, True)

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``datasets/transforms.py``
        (``MaskColourJitter``, torchvision ``ColorJitter(0.3, 0.3, 0.3, 0.1)``).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 p: float = 1.0, seed: int | None = None) -> None:
        super().__init__(seed)
        for name, v in zip(_NAMES, (brightness, contrast, saturation, hue), strict=True):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not v >= 0:
                raise ValueError(f"{name}: expected a non-negative float, got {v!r}")
        if hue > 0.5:
            raise ValueError(f"hue: expected a value in [0, 0.5], got {hue}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue, self.p = float(saturation), float(hue), float(p)

    def get_params(self, rng: np.random.Generator) -> tuple[tuple[int, ...], float | None, float | None,
                                                            float | None, float | None]:
        """Draw ``(order, brightness_factor, contrast_factor, saturation_factor, hue_factor)`` from ``rng``.

        ``order`` is a permutation of 0..3; a factor is ``None`` when its strength is 0.
        """
        order = tuple(int(i) for i in rng.permutation(4))
        factors: list[float | None] = []
        for v in (self.brightness, self.contrast, self.saturation):
            factors.append(None if v == 0 else float(rng.uniform(max(0.0, 1.0 - v), 1.0 + v)))
        factors.append(None if self.hue == 0 else float(rng.uniform(-self.hue, self.hue)))
        return (order, *factors)  # type: ignore[return-value]

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        g = self._generator(rng)
        if g.random() < self.p:
            order, b, c, s, h = self.get_params(g)
            if not (b is None and c is None and s is None and h is None):
                sample["image"] = color_jitter(sample["image"], b, c, s, h, order=order)
        return sample

    def _repr_args(self) -> str:
        return (f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"hue={self.hue}, p={self.p}")
