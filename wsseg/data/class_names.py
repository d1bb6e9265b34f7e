"""Class-name tables (PASCAL VOC 2012, COCO 2017, the COCO → VOC map) and a reader for class-list files.

Foreground classes only (``common.md`` §0): index ``k`` of an image-level label vector is class
``k``, and the same class is value ``k + 1`` in a label map (0 is background).

Example:
    >>> from wsseg.data.class_names import COCO_CLASSES, COCO_TO_VOC, VOC_CLASSES
    >>> len(VOC_CLASSES), len(COCO_CLASSES), len(COCO_TO_VOC)
    (20, 80, 20)
    >>> COCO_TO_VOC["couch"]
    'sofa'

Source:
    PASCAL VOC 2012 (Everingham et al., IJCV 2010); COCO (Lin et al., ECCV 2014), official
    ``instances_*.json`` category table.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VOC_CLASSES", "COCO_CLASSES", "COCO_CATEGORY_IDS", "COCO_TO_VOC", "BACKGROUND_NAMES",
           "read_class_names"]

#: The 20 PASCAL VOC 2012 foreground classes, in the official (alphabetical) order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

#: The 80 COCO 2017 "things" classes, ordered by their official category id.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag",
    "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)

#: Official (non-contiguous, 1..90) COCO category id of each entry of :data:`COCO_CLASSES`.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
    *range(84, 91),
)

#: COCO class name → VOC class name for the 20 classes the two sets share.
COCO_TO_VOC: dict[str, str] = {
    "airplane": "aeroplane",
    "bicycle": "bicycle",
    "bird": "bird",
    "boat": "boat",
    "bottle": "bottle",
    "bus": "bus",
    "car": "car",
    "cat": "cat",
    "chair": "chair",
    "cow": "cow",
    "dining table": "diningtable",
    "dog": "dog",
    "horse": "horse",
    "motorcycle": "motorbike",
    "person": "person",
    "potted plant": "pottedplant",
    "sheep": "sheep",
    "couch": "sofa",
    "train": "train",
    "tv": "tvmonitor",
}

#: Lower-case names recognised as the background entry of a class-list file (line 0, mask value 0).
BACKGROUND_NAMES: frozenset[str] = frozenset({"background", "_background_", "__background__", "bg", "null"})


def read_class_names(path: str | os.PathLike, *, background: bool = True) -> tuple[str, ...]:
    """Read a class-list text file (one name per line) into the K foreground names.

    With ``background=True`` (the VOC convention ``background, aeroplane, bicycle, ...``) line 0 is
    the background entry (value 0 of the masks) and is dropped, so line ``i`` is mask value ``i``.
    With ``background=False`` the file lists only the foreground classes: line ``i`` (from 0) is mask
    value ``i + 1``. Either way the result is the ``class_names`` of
    :class:`~wsseg.data.VOCSegmentation`: entry ``k`` is label index ``k`` and mask value ``k + 1``.
    Names are stripped of surrounding whitespace; inner spaces are kept (``"dining table"``).
    Blank (or whitespace-only) lines are accepted only at the **end** of the file (a trailing newline);
    a blank line before a name is an error, because the line number is the mask value: skipping it would
    shift every later class by one, and dropping it would silently lose a class.

    Args:
        path: the text file.
        background: whether the first line is the background entry. A first line is recognised as
            background when it is one of :data:`BACKGROUND_NAMES` (case-insensitive).

    Returns:
        The K foreground class names, a tuple of str.

    Raises:
        FileNotFoundError: if ``path`` does not exist (named).
        ValueError: naming the file, if it holds no name (or only the background line), a blank line
            comes before a name (the line number is given), a name repeats,
            ``background=True`` but the first line is not a background entry, or ``background=False``
            but the first line is one.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "classes.txt"
        >>> _ = path.write_text("background\\nshirt\\nshoes\\n\\n")   # trailing blank lines are fine
        >>> read_class_names(path)
        ('shirt', 'shoes')
        >>> _ = path.write_text("background\\nshirt\\n\\nshoes\\n")
        >>> read_class_names(path)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: class-names file .../classes.txt: line 3 is blank but names follow it (...
        >>> _ = path.write_text("shirt\\nshoes\\n")
        >>> read_class_names(path, background=False)   # shirt = mask value 1, shoes = 2
        ('shirt', 'shoes')
        >>> path.unlink(); path.parent.rmdir()

    Source:
        PASCAL VOC (Everingham et al., IJCV 2010): class index 0 is background; ``_background_`` is the
        spelling of labelme's VOC export (github.com/wkentaro/labelme, ``labels.txt``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}")
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as err:
        raise ValueError(f"class-names file {path}: not a UTF-8 text file ({err})") from err
    while names and not names[-1]:  # trailing blank lines (a final newline) are fine
        names.pop()
    if not names:
        raise ValueError(f"class-names file {path} is empty (expected one class name per line)")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise ValueError(f"class-names file {path}: line {blank[0]} is blank but names follow it (the line "
                         "number is the mask value, so a blank line would shift every later class); remove "
                         f"the blank line(s) {blank[:5]} (blank lines are allowed only at the end of the file)")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ValueError(f"class-names file {path}: name {name!r} repeats (lines {seen[name] + 1} and {i + 1})")
        seen[name] = i
    first_is_bg = names[0].lower() in BACKGROUND_NAMES
    if background and not first_is_bg:
        raise ValueError(f"class-names file {path}: background=True expects the first line to be the "
                         f"background entry (one of {sorted(BACKGROUND_NAMES)}), got {names[0]!r}; if the file "
                         "lists only the foreground classes (line 0 = mask value 1), pass background=False "
                         "(--no-background on the command line)")
    if not background and first_is_bg:
        raise ValueError(f"class-names file {path}: background=False expects foreground classes only, but "
                         f"the first line is {names[0]!r}, a background entry; pass background=True to drop it")
    foreground = tuple(names[1:] if background else names)
    if not foreground:
        raise ValueError(f"class-names file {path} holds only the background line {names[0]!r}: no foreground "
                         "class")
    return foreground


assert len(VOC_CLASSES) == 20 and len(COCO_CLASSES) == 80 and len(COCO_CATEGORY_IDS) == 80
