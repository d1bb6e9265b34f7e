"""Procedural textured-shapes dataset with exact masks: smoke tests and the examples' default data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import SegmentationDataset

__all__ = ["SyntheticShapes", "SHAPE_NAMES"]

#: Shape of each class, in class order (class ``k`` is ``SHAPE_NAMES[k]``).
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "cross", "ellipse", "hexagon")


def _shape_region(kind: int, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean region of shape ``kind`` in coordinates normalised by the object radius."""
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == 0:
        return dx * dx + dy * dy <= 1.0
    if kind == 1:
        return np.maximum(ax, ay) <= 0.85
    if kind == 2:
        return (dy <= 0.8) & (1.7 * ax <= dy + 0.9)
    if kind == 3:
        return ax + ay <= 1.0
    if kind == 4:
        r2 = dx * dx + dy * dy
        return (r2 <= 1.0) & (r2 >= 0.3)
    if kind == 5:
        return ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0))
    if kind == 6:
        return dx * dx + 4.0 * dy * dy <= 1.0
    return (ay <= 0.87) & (0.87 * ax + 0.5 * ay <= 0.87)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


class SyntheticShapes(SegmentationDataset):
    """Images of textured shapes on textured backgrounds, with exact masks and image-level labels.

    Class ``k`` has one shape (:data:`SHAPE_NAMES` ``[k]``: circle, square, triangle, ...), one colour
    family (hue :math:`k / K`, jittered per object) and one stripe texture (orientation
    :math:`k\\pi / K`, class-specific period), so it is recognisable from appearance alone and a small
    network learns a sensible CAM in a few hundred iterations. Each image holds 1–3 objects (classes
    drawn with replacement, random position and radius 12–22 % of the size, always fully inside the
    image; later objects occlude earlier ones) on a grey, low-saturation background made of smooth
    random waves plus pixel noise. The label is computed from the final mask, so class ``k`` is in the
    label **iff** the mask contains ``k + 1``. Masks have no ignore pixels.

    Images are generated on the fly (vectorised numpy) from ``(seed, index)``: the dataset is
    deterministic, needs no files and is the same in every DataLoader worker.

    Args:
        num_images: dataset length.
        size: image side in pixels (square images).
        num_classes: K, 1 to 8.
        seed: base seed of the generator.
        transform: sample transform (default :func:`~wsseg.data.transforms.eval_transform`).

    Shape:
        - sample ``image``: :math:`(3, S, S)` float32 normalised; ``mask``: :math:`(S, S)` int64 in
          ``{0..K}``; ``valid``: :math:`(S, S)` bool; ``label``: :math:`(K,)` float32.

    Raises:
        ValueError: if ``num_images`` < 1, ``size`` < 16 or ``num_classes`` is outside 1..8.

    Example:
        >>> ds = SyntheticShapes(num_images=4, size=32, num_classes=3, seed=0)
        >>> s = ds[0]
        >>> s["image"].shape, s["mask"].dtype, ds.num_classes, ds.class_names
        (torch.Size([3, 32, 32]), torch.int64, 3, ('circle', 'square', 'triangle'))
        >>> present = torch.stack([(s["mask"] == k + 1).any() for k in range(3)]).float()
        >>> bool((present == s["label"]).all())
        True
    """

    def __init__(self, num_images: int = 64, size: int = 128, num_classes: int = 3, *, seed: int = 0,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        super().__init__(transform)
        if int(num_images) != num_images or num_images < 1:
            raise ValueError(f"num_images: expected a positive int, got {num_images!r}")
        if int(size) != size or size < 16:
            raise ValueError(f"size: expected an int >= 16, got {size!r}")
        if int(num_classes) != num_classes or not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(f"num_classes: expected an int in 1..{len(SHAPE_NAMES)}, got {num_classes!r}")
        if int(seed) != seed or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        self.num_images, self.size, self.seed = int(num_images), int(size), int(seed)
        self.class_names = SHAPE_NAMES[: int(num_classes)]
        self.names = [f"synthetic_{i:05d}" for i in range(self.num_images)]
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._check_index(index)
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, index])
        s, k_total = self.size, self.num_classes
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)

        # Background: grey level + slight tint, two smooth random waves, pixel noise.
        grey = rng.uniform(70.0, 180.0)
        tint = rng.uniform(-12.0, 12.0, size=3)
        waves = np.zeros((s, s), dtype=np.float32)
        for _ in range(2):
            fx, fy = rng.uniform(0.5, 2.5, size=2) * 2.0 * np.pi / s
            waves += np.sin(fx * xx + fy * yy + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        image = grey + tint[:, None, None] + 15.0 * waves[None] + rng.normal(0.0, 6.0, size=(3, s, s))
        mask = np.zeros((s, s), dtype=np.uint8)

        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(0, k_total))
            radius = rng.uniform(0.12, 0.22) * s
            cy, cx = rng.uniform(radius + 1.0, s - radius - 1.0, size=2)
            region = _shape_region(k, (xx - cx) / radius, (yy - cy) / radius)
            hue = (k / k_total + rng.uniform(-0.03, 0.03)) % 1.0
            colour = 255.0 * _hsv_to_rgb(hue, rng.uniform(0.7, 0.9), rng.uniform(0.75, 0.95))
            theta = np.pi * k / k_total
            period = s * (0.06 + 0.02 * (k % 3))
            phase = rng.uniform(0.0, 2.0 * np.pi)
            stripes = np.sin(2.0 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
            texture = colour[:, None, None] * (0.8 + 0.2 * stripes[None]) + rng.normal(0.0, 5.0, size=(3, s, s))
            image = np.where(region[None], texture, image)
            mask[region] = k + 1

        image_u8 = np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        image_u8 = np.ascontiguousarray(image_u8)
        self._cache = (index, image_u8, mask)
        return image_u8, mask

    def load_image(self, index: int) -> np.ndarray:
        """The RGB image ``uint8`` ``(S, S, 3)`` of item ``index`` (for visualisation)."""
        return self._generate(index)[0].copy()

    def load_mask(self, index: int) -> np.ndarray:
        """The exact label map ``uint8`` ``(S, S)`` in ``{0..K}`` of item ``index``."""
        return self._generate(index)[1].copy()

    def get_label(self, index: int) -> np.ndarray:
        """The image-level label ``float32`` ``(K,)``: class k present iff the mask contains k + 1."""
        mask = self._generate(index)[1]
        return (np.bincount(mask.reshape(-1), minlength=self.num_classes + 1)[1:] > 0).astype(np.float32)

    def __repr__(self) -> str:
        return (f"SyntheticShapes(num_images={self.num_images}, size={self.size}, "
                f"num_classes={self.num_classes}, seed={self.seed})")
