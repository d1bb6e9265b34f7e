"""Training and evaluation transforms for segmentation samples (image and mask kept aligned).

Every transform is a small callable ``t(sample, rng=None) -> sample`` acting on a *sample dict*:

* ``"image"``: ``numpy.ndarray`` ``(H, W, 3)``, ``uint8`` or float, RGB in 0–255, until
  :class:`Normalize` / :class:`ToTensor`;
* ``"mask"``: ``numpy.ndarray`` ``(H, W)`` integer label map in ``{0..K, 255}``;
* ``"valid"`` (optional): ``numpy.ndarray`` ``(H, W)`` bool, the real-image part (absent = all real);
* ``"box"`` (added by :class:`RandomCrop`): ``(top, bottom, left, right)``, half-open, crop pixels —
  the official ``img_box`` (see :func:`wsseg.utils.box_to_mask`);
* any other key (``"name"``, ``"label"``) is passed through unchanged.

Geometric transforms apply the same operation to ``image``, ``mask`` and ``valid``. Random transforms
draw from a :class:`numpy.random.Generator`: the ``rng`` argument when given (a :class:`Compose` passes
its own to its children), else the transform's own generator built from ``seed``. Inside a
:class:`torch.utils.data.DataLoader` worker the generator is re-seeded from ``(seed, worker seed)`` so
workers never repeat each other's augmentations and runs are reproducible under
:func:`torch.manual_seed`. With ``seed=None`` outside workers the generator is seeded from
:func:`torch.initial_seed`.

The pipeline ends with :class:`ToTensor`, which produces the wsseg sample format
(``common.md`` §0): ``image`` float32 ``(3, H, W)``, ``mask`` int64 ``(H, W)``, ``valid`` bool ``(H, W)``.

Example:
    >>> import numpy as np
    >>> t = train_transform(crop_size=32, seed=0)
    >>> s = t({"image": np.zeros((20, 40, 3), np.uint8), "mask": np.ones((20, 40), np.uint8)})
    >>> s["image"].shape, s["mask"].dtype, s["valid"].dtype
    (torch.Size([3, 32, 32]), torch.int64, torch.bool)
    >>> bool((s["mask"][~s["valid"]] == 255).all())
    True

Source:
    AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, ``datasets/transforms.py`` (``random_scaling``,
    ``random_fliplr``, ``random_crop``, ``normalize_img``) and ``datasets/voc.py``; TSCD ``tscd.md`` §7.1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..utils.image import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Compose",
    "RandomRescale",
    "RandomHorizontalFlip",
    "RandomCrop",
    "ResizeLongSide",
    "Normalize",
    "ToTensor",
    "train_transform",
    "slrnet_train_transform",
    "eval_transform",
]

Sample = dict[str, Any]


class _Transform:
    """Base class: owns an optional generator and resolves the one to use for a call."""

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"seed: expected None or a non-negative int, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._rng: np.random.Generator | None = None
        self._rng_key: object = object()

    def _generator(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is not None:
            if not isinstance(rng, np.random.Generator):
                raise TypeError(f"rng: expected a numpy.random.Generator or None, got {type(rng).__name__}")
            return rng
        info = torch.utils.data.get_worker_info()
        key = None if info is None else info.seed
        if self._rng is None or key != self._rng_key:
            if info is None:
                entropy: Any = self.seed if self.seed is not None else torch.initial_seed()
            else:
                entropy = [self.seed if self.seed is not None else 0, info.seed]
            self._rng = np.random.default_rng(entropy)
            self._rng_key = key
        return self._rng

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        raise NotImplementedError

    def _repr_args(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._repr_args()})"


def _check_sample(sample: object) -> Sample:
    if not isinstance(sample, dict) or "image" not in sample:
        raise TypeError(f"sample: expected a dict with an 'image' entry, got {type(sample).__name__}")
    image = sample["image"]
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"sample['image']: expected a numpy array (H, W, 3), got {type(image).__name__} "
                         f"with shape {shape}")
    for key in ("mask", "valid"):
        m = sample.get(key)
        if m is not None and (not isinstance(m, np.ndarray) or m.shape != image.shape[:2]):
            raise ValueError(f"sample[{key!r}]: expected a numpy array of shape {image.shape[:2]} "
                             f"(the image's H, W), got {getattr(m, 'shape', type(m).__name__)}")
    return dict(sample)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear PIL resize of an (H, W, 3) image to ``size = (w, h)``; uint8 stays uint8."""
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize(size, resample=Image.BILINEAR))
    chans = [np.asarray(Image.fromarray(image[..., c].astype(np.float32), mode="F")
                        .resize(size, resample=Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(chans, axis=-1)


def _resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.dtype == np.bool_:
        return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, resample=Image.NEAREST)) > 0
    if mask.dtype == np.uint8:
        return np.asarray(Image.fromarray(mask).resize(size, resample=Image.NEAREST))
    out = np.asarray(Image.fromarray(mask.astype(np.int32)).resize(size, resample=Image.NEAREST))
    return out.astype(mask.dtype)


def _resize_sample(sample: Sample, h: int, w: int) -> Sample:
    size = (w, h)
    sample["image"] = _resize_image(sample["image"], size)
    for key in ("mask", "valid"):
        if sample.get(key) is not None:
            sample[key] = _resize_nearest(sample[key], size)
    return sample


class Compose(_Transform):
    """Apply transforms in order, passing one shared generator to all of them.

    Args:
        transforms: callables ``t(sample, rng=None) -> sample``.
        seed: seed of the shared generator (``None``: from :func:`torch.initial_seed`); the children's
            own seeds are not used.

    Raises:
        TypeError: if an entry is not callable.

    Example:
        >>> import numpy as np
        >>> t = Compose([RandomHorizontalFlip(p=1.0), ToTensor()])
        >>> t({"image": np.arange(6, dtype=np.uint8).reshape(1, 2, 3)})["image"][0].tolist()
        [[3.0, 0.0]]
    """

    def __init__(self, transforms: Sequence[Callable[..., Sample]], seed: int | None = None) -> None:
        super().__init__(seed)
        for i, t in enumerate(transforms):
            if not callable(t):
                raise TypeError(f"transforms[{i}]: expected a callable, got {type(t).__name__}")
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        g = self._generator(rng)
        for t in self.transforms:
            sample = t(sample, rng=g)
        return sample

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n], seed={self.seed})"


class RandomRescale(_Transform):
    r"""Rescale image and mask by a random factor :math:`r \sim U(r_{\min}, r_{\max})`.

    The new size is :math:`(\lfloor r W \rfloor, \lfloor r H \rfloor)` (at least 1 pixel); the image is
    resized with PIL bilinear, the mask and ``valid`` with PIL nearest (AFA ``random_scaling``).

    Args:
        scale_range: ``(min, max)`` factor range, ``0 < min <= max`` (default ``(0.5, 2.0)``).
        seed: seed of the transform's own generator.

    Raises:
        ValueError: if ``scale_range`` is not an increasing positive pair.

    Example:
        >>> import numpy as np
        >>> t = RandomRescale((2.0, 2.0))
        >>> t({"image": np.zeros((3, 5, 3), np.uint8), "mask": np.zeros((3, 5), np.uint8)})["mask"].shape
        (6, 10)
    """

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0), seed: int | None = None) -> None:
        super().__init__(seed)
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range: expected (min, max) with 0 < min <= max, got {tuple(scale_range)}")
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        r = self._generator(rng).uniform(*self.scale_range)
        h, w = sample["image"].shape[:2]
        return _resize_sample(sample, max(1, int(r * h)), max(1, int(r * w)))

    def _repr_args(self) -> str:
        return f"scale_range={self.scale_range}"


class RandomHorizontalFlip(_Transform):
    """Flip image, mask and ``valid`` left–right with probability ``p``.

    Args:
        p: flip probability in [0, 1] (default 0.5, AFA ``random_fliplr``).
        seed: seed of the transform's own generator.

    Raises:
        ValueError: if ``p`` is outside [0, 1].

    Example:
        >>> import numpy as np
        >>> s = RandomHorizontalFlip(p=1.0)({"image": np.zeros((1, 2, 3)), "mask": np.array([[1, 2]])})
        >>> s["mask"].tolist()
        [[2, 1]]
    """

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__(seed)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p: expected a probability in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        if self._generator(rng).random() < self.p:
            for key in ("image", "mask", "valid"):
                if sample.get(key) is not None:
                    sample[key] = np.ascontiguousarray(sample[key][:, ::-1])
        return sample

    def _repr_args(self) -> str:
        return f"p={self.p}"


class RandomCrop(_Transform):
    r"""Random crop of a fixed size, zero-padding images smaller than the crop.

    As in AFA ``random_crop``: the image is first placed at a random offset inside a canvas of size
    :math:`(\max(S_h, H), \max(S_w, W))` filled with ``pad_value``, then a random :math:`S_h \times S_w`
    window of the canvas is taken. Padded mask pixels are ``ignore_index``; ``valid`` marks the real
    image and ``box = (top, bottom, left, right)`` its extent in the crop.

    **Padding convention.** ``pad_value`` is in *raw 0–255 pixel units*, applied **before**
    normalisation, like the official code: AFA/TSCD's classification dataset pads with
    ``mean_rgb=[0, 0, 0]`` (black; after ImageNet normalisation the padded pixels are
    :math:`-\mu/\sigma \approx -2`, not 0). AFA's segmentation dataset pads with the mean
    ``(123.675, 116.28, 103.53)``, which normalises to 0 — pass ``pad_value=(123.675, 116.28, 103.53)``
    for that variant.

    Args:
        crop_size: ``S`` or ``(S_h, S_w)`` in pixels.
        pad_value: fill of padded image pixels, a number or one per channel, 0–255 units (default 0).
        ignore_index: fill of padded mask pixels (default 255).
        cat_max_ratio: if set, retry the crop window up to 10 times until the most frequent non-ignored
            mask value covers less than this fraction of the crop (AFA's segmentation-dataset
            ``get_random_cropbox``, background included); ``None`` (default) takes the first window, as
            AFA/TSCD's classification training does.
        seed: seed of the transform's own generator.

    Raises:
        ValueError: if ``crop_size`` is not positive, ``pad_value`` has a wrong length or
            ``cat_max_ratio`` is outside (0, 1].

    Example:
        >>> import numpy as np
        >>> s = RandomCrop(4)({"image": np.full((2, 3, 3), 9, np.uint8), "mask": np.ones((2, 3), np.uint8)})
        >>> s["image"].shape, int(s["valid"].sum()), int((s["mask"] == 255).sum())
        ((4, 4, 3), 6, 10)
    """

    def __init__(self, crop_size: int | Sequence[int], pad_value: float | Sequence[float] = 0.0,
                 ignore_index: int = 255, cat_max_ratio: float | None = None, seed: int | None = None) -> None:
        super().__init__(seed)
        size = (crop_size, crop_size) if isinstance(crop_size, (int, np.integer)) else tuple(crop_size)
        if len(size) != 2 or any(int(s) != s or s <= 0 for s in size):
            raise ValueError(f"crop_size: expected a positive int or (h, w) pair, got {crop_size!r}")
        self.crop_size = (int(size[0]), int(size[1]))
        pad = np.asarray(pad_value, dtype=np.float64).reshape(-1)
        pad = np.repeat(pad, 3) if pad.size == 1 else pad
        if pad.size != 3:
            raise ValueError(f"pad_value: expected a number or 3 values (0-255 units), got {pad_value!r}")
        self.pad_value = tuple(float(v) for v in pad)
        if cat_max_ratio is not None and not 0.0 < cat_max_ratio <= 1.0:
            raise ValueError(f"cat_max_ratio: expected None or a value in (0, 1], got {cat_max_ratio}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = int(ignore_index)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        g = self._generator(rng)
        image = sample["image"]
        h, w = image.shape[:2]
        sh, sw = self.crop_size
        ch, cw = max(sh, h), max(sw, w)
        oy, ox = int(g.integers(0, ch - h + 1)), int(g.integers(0, cw - w + 1))

        canvas_img = np.empty((ch, cw, 3), dtype=np.float32)
        canvas_img[:] = np.asarray(self.pad_value, dtype=np.float32)
        canvas_img[oy:oy + h, ox:ox + w] = image
        valid = sample.get("valid")
        canvas_valid = np.zeros((ch, cw), dtype=bool)
        canvas_valid[oy:oy + h, ox:ox + w] = True if valid is None else valid
        mask = sample.get("mask")
        canvas_mask = None
        if mask is not None:
            canvas_mask = np.full((ch, cw), self.ignore_index, dtype=mask.dtype)
            canvas_mask[oy:oy + h, ox:ox + w] = mask

        attempts = 10 if (self.cat_max_ratio is not None and canvas_mask is not None) else 1
        for _ in range(attempts):
            y0, x0 = int(g.integers(0, ch - sh + 1)), int(g.integers(0, cw - sw + 1))
            if attempts == 1:
                break
            window = canvas_mask[y0:y0 + sh, x0:x0 + sw]  # type: ignore[index]
            _, cnt = np.unique(window[window != self.ignore_index], return_counts=True)
            if cnt.size > 0 and cnt.max() / cnt.sum() < self.cat_max_ratio:
                break

        sample["image"] = canvas_img[y0:y0 + sh, x0:x0 + sw]
        sample["valid"] = canvas_valid[y0:y0 + sh, x0:x0 + sw]
        if canvas_mask is not None:
            sample["mask"] = canvas_mask[y0:y0 + sh, x0:x0 + sw]
        top, left = max(oy - y0, 0), max(ox - x0, 0)
        bottom, right = min(oy + h - y0, sh), min(ox + w - x0, sw)
        sample["box"] = np.array([top, bottom, left, right], dtype=np.int64)
        return sample

    def _repr_args(self) -> str:
        return (f"crop_size={self.crop_size}, pad_value={self.pad_value}, ignore_index={self.ignore_index}, "
                f"cat_max_ratio={self.cat_max_ratio}")


class ResizeLongSide(_Transform):
    r"""Deterministically resize so that the longer side equals ``long_side`` (aspect ratio kept).

    The other side is :math:`\max(1, \operatorname{round}(s \cdot L / \max(H, W)))`. Image bilinear,
    mask/``valid`` nearest, so they stay aligned. For evaluation at the original resolution do not use
    it (predict, then upsample the logits to the mask size instead).

    Args:
        long_side: target length of the longer side in pixels.

    Raises:
        ValueError: if ``long_side`` is not a positive int.

    Example:
        >>> import numpy as np
        >>> ResizeLongSide(8)({"image": np.zeros((2, 4, 3), np.uint8)})["image"].shape
        (4, 8, 3)
    """

    def __init__(self, long_side: int) -> None:
        super().__init__(None)
        if not isinstance(long_side, (int, np.integer)) or isinstance(long_side, bool) or long_side <= 0:
            raise ValueError(f"long_side: expected a positive int, got {long_side!r}")
        self.long_side = int(long_side)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        h, w = sample["image"].shape[:2]
        s = self.long_side / max(h, w)
        return _resize_sample(sample, max(1, round(h * s)), max(1, round(w * s)))

    def _repr_args(self) -> str:
        return f"long_side={self.long_side}"


class Normalize(_Transform):
    r"""Mean/std normalisation of a 0–255 RGB image: :math:`(x - 255\mu) / (255\sigma)`.

    With the ImageNet defaults this is AFA's ``normalize_img`` (mean ``(123.675, 116.28, 103.53)``,
    std ``(58.395, 57.12, 57.375)``). Output float32, still ``(H, W, 3)``.

    Args:
        mean, std: per-channel statistics in the 0–1 range (default ImageNet).

    Raises:
        ValueError: if ``mean``/``std`` do not have 3 values or ``std`` has a non-positive entry.

    Example:
        >>> import numpy as np
        >>> x = Normalize()({"image": np.full((1, 1, 3), 255, np.uint8)})["image"]
        >>> [round(float(v), 4) for v in x[0, 0]]
        [2.2489, 2.4286, 2.64]
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__(None)
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean/std: expected 3 values each, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std: expected positive values, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        m = np.asarray(self.mean, dtype=np.float32) * 255.0
        s = np.asarray(self.std, dtype=np.float32) * 255.0
        sample["image"] = (sample["image"].astype(np.float32) - m) / s
        return sample

    def _repr_args(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class ToTensor(_Transform):
    """Convert a numpy sample to the wsseg tensor format.

    ``image`` → float32 ``(3, H, W)`` (values unchanged), ``mask`` → int64 ``(H, W)``, ``valid`` → bool
    ``(H, W)`` (all ``True`` when absent), ``box`` → int64 ``(4,)``, ``label`` → float32. Other entries
    are passed through.

    Example:
        >>> import numpy as np
        >>> s = ToTensor()({"image": np.zeros((2, 3, 3), np.float32), "mask": np.zeros((2, 3), np.uint8)})
        >>> tuple(s["image"].shape), s["mask"].dtype, bool(s["valid"].all())
        ((3, 2, 3), torch.int64, True)
    """

    def __init__(self) -> None:
        super().__init__(None)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        sample = _check_sample(sample)
        image = sample["image"]
        sample["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        if sample.get("mask") is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=np.int64))
        valid = sample.get("valid")
        valid = np.ones(image.shape[:2], dtype=bool) if valid is None else valid
        sample["valid"] = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))
        if isinstance(sample.get("box"), np.ndarray):
            sample["box"] = torch.from_numpy(sample["box"].astype(np.int64))
        if isinstance(sample.get("label"), np.ndarray):
            sample["label"] = torch.from_numpy(sample["label"].astype(np.float32))
        return sample


def train_transform(crop_size: int | Sequence[int] = 512, *, scale_range: Sequence[float] | None = (0.5, 2.0),
                    hflip_p: float = 0.5, pad_value: float | Sequence[float] = 0.0,
                    cat_max_ratio: float | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255,
                    seed: int | None = None, long_side: int | None = None) -> Compose:
    """The AFA/TSCD training pipeline: rescale → h-flip → crop with zero padding → normalise → tensor.

    No colour jitter (``tscd.md`` §7.1). All outputs of a given ``crop_size`` have the same shape, so
    they batch with the default collate function.

    Args:
        crop_size: crop ``S`` or ``(S_h, S_w)``; TSCD runs 320 (config), AFA 512.
        scale_range: random rescale range, or ``None`` to skip rescaling.
        hflip_p: flip probability (0 disables).
        pad_value: padded image value in 0–255 units before normalisation (see :class:`RandomCrop`).
        cat_max_ratio: optional crop-retry criterion (see :class:`RandomCrop`).
        mean, std: normalisation statistics in the 0–1 range.
        ignore_index: padded mask value.
        seed: seed of the pipeline's generator.
        long_side: if given, first resize every image (and mask) so that its longer side is
            ``long_side`` pixels (:class:`ResizeLongSide`). Not part of the official pipeline, where VOC
            photos (~500×375) are about the size of the crop (512), so a random rescale in [0.5, 2] and a
            crop keep most of each labelled object. With a crop much smaller than the photos (e.g. 224 on
            640-pixel COCO photos) most crops miss the objects their image-level label names; setting
            ``long_side`` to about the crop size restores the official image-to-crop ratio.

    Returns:
        A :class:`Compose`.

    Example:
        >>> import numpy as np
        >>> t = train_transform(16, seed=1)
        >>> a = t({"image": np.zeros((10, 12, 3), np.uint8), "mask": np.zeros((10, 12), np.uint8)})
        >>> sorted(a), tuple(a["box"].shape)
        (['box', 'image', 'mask', 'valid'], (4,))

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, ``datasets/voc.py`` (``VOC12ClsDataset``).
    """
    steps: list[_Transform] = []
    if long_side is not None:
        steps.append(ResizeLongSide(long_side))
    if scale_range is not None:
        steps.append(RandomRescale(scale_range))
    if hflip_p > 0:
        steps.append(RandomHorizontalFlip(hflip_p))
    steps += [RandomCrop(crop_size, pad_value=pad_value, ignore_index=ignore_index, cat_max_ratio=cat_max_ratio),
              Normalize(mean, std), ToTensor()]
    return Compose(steps, seed=seed)


def slrnet_train_transform(crop_size: int | Sequence[int] = 321, *, scale: Sequence[float] = (0.9, 1.0),
                           hflip_p: float = 0.5, jitter: Sequence[float] | None = (0.3, 0.3, 0.3, 0.1),
                           mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                           long_side: int | None = None, seed: int | None = None) -> Compose:
    """SLRNet's training pipeline: random resized crop → h-flip → colour jitter → normalise → tensor.

    :class:`~wsseg.data.RandomResizedCrop` (``crop_size``, area ``scale``, ratio (3/4, 4/3), bicubic; mask
    and ``valid`` nearest) → :class:`RandomHorizontalFlip` (``hflip_p``) →
    :class:`~wsseg.data.ColorJitter` (``*jitter``, p = 1) → :class:`Normalize` → :class:`ToTensor`, the
    order of the official ``MaskRandResizedCrop`` → ``MaskHFlip`` → ``MaskColourJitter`` →
    ``MaskNormalise``. The crop window lies inside the image, so there is no padding, ``valid`` stays all
    ``True`` and no ``box`` is added; every output has the crop's shape.

    Args:
        crop_size: output ``S`` or ``(S_h, S_w)`` (official 321).
        scale: area range of the crop window as a fraction of the image (official (0.9, 1.0)).
        hflip_p: flip probability (0 disables).
        jitter: ``(brightness, contrast, saturation, hue)`` strengths (official (0.3, 0.3, 0.3, 0.1)), or
            ``None`` for no colour jitter.
        mean, std: normalisation statistics in the 0–1 range (ImageNet).
        long_side: if given, first resize every image so that its longer side is ``long_side`` pixels
            (:class:`ResizeLongSide`; not official — the crop window is relative to the image anyway).
        seed: seed of the pipeline's generator.

    Returns:
        A :class:`Compose`.

    Raises:
        ValueError: if ``jitter`` does not have 4 values, or from the steps' constructors.

    Example:
        >>> import numpy as np
        >>> t = slrnet_train_transform(33, seed=0)
        >>> s = t({"image": np.zeros((40, 50, 3), np.uint8), "mask": np.zeros((40, 50), np.uint8)})
        >>> tuple(s["image"].shape), s["mask"].dtype, bool(s["valid"].all()), "box" in s
        ((3, 33, 33), torch.int64, True, False)

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``datasets/pascal_voc.py``
        (``VOCSegmentation`` transform) and ``datasets/transforms.py``; ``slrnet.md`` §7.
    """
    from .color_jitter import ColorJitter
    from .random_resized_crop import RandomResizedCrop

    if jitter is not None and len(jitter) != 4:
        raise ValueError(f"jitter: expected (brightness, contrast, saturation, hue) or None, got {tuple(jitter)}")
    steps: list[_Transform] = []
    if long_side is not None:
        steps.append(ResizeLongSide(long_side))
    steps.append(RandomResizedCrop(crop_size, scale=scale, interpolation="bicubic"))
    if hflip_p != 0:
        steps.append(RandomHorizontalFlip(hflip_p))
    if jitter is not None and any(float(v) != 0 for v in jitter):
        steps.append(ColorJitter(*(float(v) for v in jitter), p=1.0))
    steps += [Normalize(mean, std), ToTensor()]
    return Compose(steps, seed=seed)


def eval_transform(long_side: int | None = None, *, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> Compose:
    """The evaluation pipeline: optional long-side resize → normalise → tensor (no crop, deterministic).

    Args:
        long_side: if given, resize image and mask so the longer side has this length.
        mean, std: normalisation statistics in the 0–1 range.

    Returns:
        A :class:`Compose`.

    Example:
        >>> import numpy as np
        >>> eval_transform()({"image": np.zeros((5, 7, 3), np.uint8)})["image"].shape
        torch.Size([3, 5, 7])
    """
    steps: list[_Transform] = [] if long_side is None else [ResizeLongSide(long_side)]
    return Compose(steps + [Normalize(mean, std), ToTensor()], seed=0)
