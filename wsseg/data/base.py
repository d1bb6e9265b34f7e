"""Shared base class of the wsseg segmentation datasets (sample format of ``common.md`` §0)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import eval_transform

__all__ = ["SegmentationDataset"]


class SegmentationDataset(Dataset):
    """Base class: subclasses provide raw images, masks and image-level labels; this class applies the
    transform and returns the wsseg sample dict.

    A sample is ``{"image": float32 (3, H, W) normalised, "mask": int64 (H, W) in {0..K, 255},
    "label": float32 (K,), "valid": bool (H, W), "name": str}`` (plus ``"box"`` after a random crop).
    Without a transform, :func:`~wsseg.data.transforms.eval_transform` is used: the full image,
    ImageNet-normalised.

    Subclasses set ``names`` (list of str), ``class_names`` (K names) and implement
    :meth:`load_image`, :meth:`load_mask` and :meth:`get_label`.

    Attributes:
        num_classes: K, the number of foreground classes.
        class_names: the K foreground class names.
        transform: callable ``transform(sample) -> sample`` on the raw numpy sample (see
            :mod:`wsseg.data.transforms`); it must end with :class:`~wsseg.data.transforms.ToTensor`.
    """

    names: list[str]
    class_names: tuple[str, ...]
    _default_transform = None

    def __init__(self, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable or None, got {type(transform).__name__}")
        self.transform = transform

    @property
    def num_classes(self) -> int:
        """K, the number of foreground classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.names)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index: expected an int in [{-n}, {n}), got {index}")
        return index % n

    def load_image(self, index: int) -> np.ndarray:
        """The raw RGB image, ``uint8`` ``(H, W, 3)`` (for visualisation and transforms)."""
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray:
        """The ground-truth label map, ``uint8`` ``(H, W)`` in ``{0..K, 255}``."""
        raise NotImplementedError

    def get_label(self, index: int) -> np.ndarray:
        """The image-level label, ``float32`` ``(K,)`` in {0, 1}."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index)

    def sample(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Item ``index`` with the transform's randomness drawn from ``rng`` (``None``: the transform's own
        generator). The training engine passes a generator seeded per (seed, epoch, index), so a sample's
        augmentation does not depend on what was loaded before (exact resume, any ``num_workers``).
        Transforms that are not wsseg transforms are called without ``rng``."""
        from .transforms import _Transform

        index = self._check_index(index)
        image, mask = self.load_image(index), self.load_mask(index)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of {self.names[index]!r}: expected the image size {image.shape[:2]}, "
                             f"got {mask.shape}")
        sample: dict[str, Any] = {"image": image, "mask": mask, "label": self.get_label(index),
                                  "name": self.names[index]}
        transform = self.transform
        if transform is None:
            if SegmentationDataset._default_transform is None:
                SegmentationDataset._default_transform = eval_transform()
            transform = SegmentationDataset._default_transform
        out = transform(sample, rng=rng) if rng is not None and isinstance(transform, _Transform) else transform(sample)
        if not isinstance(out, dict) or not isinstance(out.get("image"), torch.Tensor):
            raise TypeError("transform: expected it to return a dict whose 'image' is a torch.Tensor "
                            f"(end the pipeline with ToTensor()), got {type(out).__name__}")
        if isinstance(out.get("label"), np.ndarray):
            out["label"] = torch.from_numpy(out["label"].astype(np.float32))
        if "valid" not in out:
            out["valid"] = torch.ones(out["image"].shape[-2:], dtype=torch.bool)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_images={len(self)}, num_classes={self.num_classes})"
