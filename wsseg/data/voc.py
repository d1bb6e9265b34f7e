"""PASCAL VOC 2012 (optionally SBD-augmented) segmentation dataset with image-level labels."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .base import SegmentationDataset
from .class_names import VOC_CLASSES

__all__ = ["VOCSegmentation", "load_cls_labels", "read_image", "read_mask"]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB ``uint8`` ``(H, W, 3)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message names it).
        OSError: if the file cannot be decoded (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise OSError(f"cannot read image file {path}: {err}") from err


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label-map PNG (palette ``P`` or greyscale ``L`` of class indices) as ``uint8`` ``(H, W)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        OSError: if the file cannot be decoded.
        ValueError: if the PNG is not a palette/greyscale image of indices (e.g. an RGB colour map).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im) if mode in ("P", "L") else None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise OSError(f"cannot read mask file {path}: {err}") from err
    if arr is None:
        raise ValueError(f"mask file {path}: expected a palette ('P') or greyscale ('L') PNG of class indices, "
                         f"got mode {mode!r}")
    return arr.astype(np.uint8, copy=False)


def _canonical_voc_name(key: Any) -> str:
    """``2007000032`` / ``'2007000032'`` / ``'2007_000032'`` → ``'2007_000032'``."""
    if isinstance(key, bytes):
        key = key.decode()
    if isinstance(key, (int, np.integer)):
        key = str(int(key))
    key = str(key)
    if "_" not in key and key.isdigit() and len(key) > 4:
        key = f"{key[:4]}_{key[4:]}"
    return key


def load_cls_labels(source: str | os.PathLike | Mapping[Any, Any], num_classes: int) -> dict[str, np.ndarray]:
    """Load an image-label dictionary (``cls_labels.npy``) into ``{name: float32 (K,)}``.

    Two key formats exist and both are accepted: integer keys without the underscore
    (``2007000032``, the PSA/IRN ``cls_labels.npy``) and string names (``'2007_000032'``, AFA/TSCD
    ``cls_labels_onehot.npy``). Values are K-vectors in {0, 1} (no background entry).

    Args:
        source: path of a ``.npy`` file holding a pickled dict, or the dict itself.
        num_classes: K, the expected length of each vector.

    Returns:
        ``dict`` mapping the underscored name to a ``float32`` ``(K,)`` vector.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: naming the path, if it is a directory, the file is truncated or not a ``.npy`` pickle,
            it does not hold a dict, or a vector does not have K entries in {0, 1} (the message names the
            file when ``source`` is a path).

    Example:
        >>> import numpy as np
        >>> d = load_cls_labels({2007000032: np.eye(20)[0]}, 20)
        >>> list(d), d["2007_000032"][:3].tolist()
        (['2007_000032'], [1.0, 0.0, 0.0])
    """
    where = "cls_labels"
    if isinstance(source, Mapping):
        raw: Any = source
    else:
        raw = _read_cls_labels_file(source)
        where = f"cls_labels file {Path(source)}: entry"
    out: dict[str, np.ndarray] = {}
    for key, value in raw.items():
        vec = np.asarray(value, dtype=np.float32).reshape(-1)
        if vec.shape != (num_classes,) or not np.isin(vec, (0.0, 1.0)).all():
            raise ValueError(f"{where}[{key!r}]: expected a ({num_classes},) vector in {{0, 1}} (K = "
                             f"{num_classes} classes), got shape {np.asarray(value).shape} values "
                             f"{np.unique(vec)[:5].tolist()}")
        out[_canonical_voc_name(key)] = vec
    return out


def _read_cls_labels_file(source: str | os.PathLike) -> Mapping[Any, Any]:
    """The raw pickled dict of a ``cls_labels.npy`` file (errors name the path; entries not checked)."""
    path = Path(source)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.npy"))[:3]
        hint = f" (it holds {inside})" if inside else ""
        raise ValueError(f"cls_labels: {path} is a directory; expected the .npy file of the image-label "
                         f"dict, e.g. {path / 'cls_labels.npy'}{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"cls_labels file not found: {path}")
    try:
        raw = np.load(path, allow_pickle=True)
        raw = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object and raw.ndim == 0 else raw
    except Exception as err:  # truncated/corrupt: UnpicklingError, EOFError, ValueError, OSError, ...
        raise ValueError(f"cls_labels file {path}: cannot load a pickled dict (truncated or not a .npy "
                         f"file? {type(err).__name__}: {err})") from err
    if not isinstance(raw, Mapping):
        raise ValueError(f"cls_labels file {path}: expected a pickled dict name -> (K,) vector, "
                         f"got {type(raw).__name__}")
    return raw


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list file not found: {path}")
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        # Plain names ("2007_000032") or DeepLab-style "/JPEGImages/x.jpg /SegmentationClassAug/x.png".
        names.append(Path(line.split()[0]).stem)
    if not names:
        raise ValueError(f"split list file {path} is empty")
    return names


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC 2012 semantic segmentation with image-level labels (K = 20).

    Expected layout under ``root`` (the ``VOC2012`` folder)::

        JPEGImages/<name>.jpg
        SegmentationClass/<name>.png         # official masks (palette PNG, 255 = boundary)
        SegmentationClassAug/<name>.png      # SBD-augmented masks (greyscale PNG), for train_aug
        ImageSets/Segmentation/<split>.txt   # train, val, train_aug, ... one name per line

    Image-level labels come from a ``cls_labels.npy`` dictionary (both key formats, see
    :func:`load_cls_labels`) or, with ``cls_labels=None``, from the masks (class k present iff the
    mask contains k + 1). Without a transform a sample is the full image, normalised.

    Args:
        root: the VOC2012 folder.
        split: name of the list file ``ImageSets/Segmentation/<split>.txt``.
        mask_dir: mask sub-folder, e.g. ``"SegmentationClass"`` or ``"SegmentationClassAug"``; ``None``
            for no masks (every mask pixel is 255; then ``cls_labels`` is required).
        cls_labels: ``None``, a path to ``cls_labels.npy`` or a dict.
        list_file: explicit list-file path overriding ``split`` (e.g. AFA's ``datasets/voc/train_aug.txt``).
        transform: sample transform (see :mod:`wsseg.data.transforms`); default
            :func:`~wsseg.data.transforms.eval_transform`.
        class_names: the K foreground class names (default the 20 VOC classes); entry ``k`` is mask
            value ``k + 1``. For another VOC-layout set read them with
            :func:`~wsseg.data.class_names.read_class_names`.

    Shape:
        - sample ``image``: :math:`(3, H, W)` float32; ``mask``, ``valid``: :math:`(H, W)`;
          ``label``: :math:`(K,)`.

    Raises:
        FileNotFoundError: if ``root``, ``JPEGImages``, the mask folder, the list file or
            ``cls_labels`` is missing; on access, if an image/mask file is missing (named).
        TypeError: if ``class_names`` is a string or path instead of a sequence of names.
        ValueError: if the list file (named) is empty, ``cls_labels`` (named) lacks a name of the
            split, ``class_names`` is empty or repeats a name, or ``mask_dir=None`` without
            ``cls_labels``; on access (and in :meth:`check_masks`), if a mask is corrupt or holds values
            outside ``{0..K, 255}``.

    Example:
        >>> ds = wsseg.data.SyntheticShapes(num_images=2, size=32)  # VOC needs files; same interface
        >>> s = ds[0]
        >>> s["image"].shape, s["mask"].shape, s["label"].shape
        (torch.Size([3, 32, 32]), torch.Size([32, 32]), torch.Size([3]))

    Source:
        PASCAL VOC 2012 (Everingham et al.); SBD (Hariharan et al. ICCV 2011); AFA, Ru et al. CVPR 2022,
        github.com/rulixiang/afa, ``datasets/voc.py``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 mask_dir: str | None = "SegmentationClass",
                 cls_labels: str | os.PathLike | Mapping[Any, Any] | None = None,
                 list_file: str | os.PathLike | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 class_names: Sequence[str] = VOC_CLASSES) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: VOC folder not found: {self.root}")
        self.image_dir = self.root / "JPEGImages"
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"root: expected an image folder {self.image_dir}")
        if isinstance(class_names, (str, bytes, os.PathLike)):
            raise TypeError("class_names: expected a sequence of names, got a single "
                            f"{type(class_names).__name__} {str(class_names)!r:.80}; to read a class-list file use "
                            "wsseg.data.read_class_names(path)")
        if len(class_names) == 0:
            raise ValueError("class_names: expected at least one class name, got none")
        self.class_names = tuple(str(n) for n in class_names)
        repeated = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
        if repeated:
            raise ValueError(f"class_names: names must be unique, {repeated[:3]} repeat")
        if mask_dir is None:
            self.mask_dir = None
            if cls_labels is None:
                raise ValueError("cls_labels: required when mask_dir=None (labels cannot be derived from masks)")
        else:
            self.mask_dir = self.root / mask_dir
            if not self.mask_dir.is_dir():
                raise FileNotFoundError(f"mask_dir: mask folder not found: {self.mask_dir}")
        self.split = split
        list_path = Path(list_file) if list_file is not None else \
            self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self.list_file = list_path
        self.names = _read_list(list_path)
        self.cls_labels: dict[str, np.ndarray] | None = None
        if cls_labels is not None:
            table = load_cls_labels(cls_labels, self.num_classes)
            missing = [n for n in self.names if n not in table]
            if missing:
                source = "cls_labels" if isinstance(cls_labels, Mapping) else f"cls_labels file {cls_labels}"
                raise ValueError(f"{source}: no entry for {len(missing)} of the {len(self.names)} image(s) of "
                                 f"the split list {list_path}, e.g. {missing[:3]}")
            self.cls_labels = {n: table[n] for n in self.names}

    def load_image(self, index: int) -> np.ndarray:
        """The RGB image ``uint8`` ``(H, W, 3)`` of item ``index``."""
        return read_image(self.image_dir / f"{self.names[self._check_index(index)]}.jpg")

    def load_mask(self, index: int) -> np.ndarray:
        """The label map ``uint8`` ``(H, W)`` of item ``index`` (all 255 when ``mask_dir=None``)."""
        index = self._check_index(index)
        if self.mask_dir is None:
            h, w = self.load_image(index).shape[:2]
            return np.full((h, w), 255, dtype=np.uint8)
        path = self.mask_dir / f"{self.names[index]}.png"
        mask = read_mask(path)
        bad = (mask > self.num_classes) & (mask != 255)
        if bad.any():
            raise ValueError(f"mask file {path}: values must be in {{0..{self.num_classes}, 255}} for the "
                             f"{self.num_classes} classes of class_names, found "
                             f"{np.unique(mask[bad])[:5].tolist()}: the class list does not match the masks "
                             "(another class-names file, or a background line counted as a class?)")
        return mask

    def check_masks(self, num: int | None = 8) -> int:
        """Read the first ``num`` masks and check their values against the class list (a start-up check).

        A mask value above K (other than 255) means ``class_names`` does not describe the masks;
        catching it here costs a few PNG reads instead of failing mid-training. Every access still
        checks its own mask.

        Args:
            num: how many masks to read, from the start of the split (``None``: all of them).

        Returns:
            The number of masks read (0 when ``mask_dir=None``).

        Raises:
            ValueError: naming the mask file and K, if a mask holds values outside ``{0..K, 255}``;
                if ``num`` is below 1.
            TypeError: if ``num`` is neither an int nor ``None``.
            FileNotFoundError: if one of those mask files is missing.

        Example:
            >>> import shutil, tempfile
            >>> from pathlib import Path
            >>> root = Path(tempfile.mkdtemp())
            >>> for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            ...     (root / sub).mkdir(parents=True)
            >>> Image.new("RGB", (4, 4)).save(root / "JPEGImages" / "a.jpg")
            >>> Image.fromarray(np.full((4, 4), 3, np.uint8)).save(root / "SegmentationClass" / "a.png")
            >>> _ = (root / "ImageSets/Segmentation/train.txt").write_text("a\\n")
            >>> VOCSegmentation(root, class_names=("cat", "dog", "cow")).check_masks()
            1
            >>> VOCSegmentation(root, class_names=("cat", "dog")).check_masks()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: mask file .../a.png: values must be in {0..2, 255} for the 2 classes of class_names, ...
            >>> shutil.rmtree(root)
        """
        if num is not None and (isinstance(num, bool) or not isinstance(num, int)):
            raise TypeError(f"num: expected an int or None, got {type(num).__name__}")
        if num is not None and num < 1:
            raise ValueError(f"num: expected a positive int or None, got {num}")
        if self.mask_dir is None:
            return 0
        count = len(self) if num is None else min(num, len(self))
        for i in range(count):
            self.load_mask(i)
        return count

    def get_label(self, index: int) -> np.ndarray:
        """The image-level label ``float32`` ``(K,)``: from ``cls_labels`` or derived from the mask."""
        index = self._check_index(index)
        if self.cls_labels is not None:
            return self.cls_labels[self.names[index]].copy()
        present = np.bincount(self.load_mask(index).reshape(-1), minlength=256)[1:self.num_classes + 1] > 0
        return present.astype(np.float32)
