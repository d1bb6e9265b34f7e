"""Full data check: read and decode every image and mask of a split and list every problem at once.

Training reads a sample only when it is drawn, so a corrupt JPEG, a mask with a value outside the class
list or an image/mask size mismatch is otherwise found mid-training (the start-up check of
:meth:`~wsseg.data.VOCSegmentation.check_masks` reads only the first 8 masks). Run the check once on a
new data set, with the same data flags as the training scripts::

    python3 -m wsseg.data.check --dataset voc --root data/ccp_voc --split train_pixel --eval-split val \\
        --class-names data/ccp_voc/class_names.txt --no-background --cls-labels data/ccp_voc/cls_labels.npy
    python3 -m wsseg.data.check --dataset coco --root data/coco128 --split train2017

It prints one line per problem and a summary, and exits with status 1 when a problem was found (0 when
the data is clean, 2 on a usage error). The library functions :func:`check_voc`, :func:`check_coco` and
:func:`check_dataset` return the problems as a list of :class:`DataProblem`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .class_names import VOC_CLASSES

__all__ = ["PROBLEM_KINDS", "DataProblem", "check_coco", "check_dataset", "check_voc", "main"]

#: The kinds of :class:`DataProblem`, with what each means.
PROBLEM_KINDS: dict[str, str] = {
    "setup": "the data set cannot be opened at all (missing folder or list file, unreadable class list, "
             "annotation file or cls_labels file); nothing else could be checked",
    "missing_image": "a list entry (or COCO image record) has no image file",
    "corrupt_image": "the image file cannot be decoded (truncated, not an image)",
    "missing_mask": "the image has no mask file in the mask folder",
    "corrupt_mask": "the mask cannot be decoded, or is not a palette/greyscale PNG of class indices",
    "mask_values": "the mask holds values above K other than 255 (the class list does not match the masks)",
    "size_mismatch": "image and mask (or the COCO record's height/width) differ in size",
    "missing_label": "a list entry has no cls_labels entry",
    "bad_label": "a cls_labels entry is not a (K,) vector of 0/1",
    "label_mask_mismatch": "the cls_labels classes differ from the classes painted in the mask",
    "duplicate_entry": "a name appears more than once in the list file",
    "orphan_annotations": "COCO annotations refer to an image_id without an image record (ignored)",
    "bad_annotation": "a COCO annotation cannot be painted into a mask",
}


class DataProblem(NamedTuple):
    """One problem found by the data check.

    Attributes:
        kind: one of :data:`PROBLEM_KINDS`.
        name: the sample name (``""`` for a problem of the whole split).
        path: the file concerned (image, mask, list, cls_labels or annotation file).
        message: what is wrong, with the expected and the found value.
    """

    kind: str
    name: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.path}: {self.message}"


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _cause(err: BaseException) -> str:
    """The underlying decoder message (the wrappers' messages repeat the path, which the problem holds)."""
    inner = err.__cause__ if err.__cause__ is not None else err
    return f"{type(inner).__name__}: {inner}"


def _class_list(values: Sequence[int] | np.ndarray, class_names: Sequence[str]) -> str:
    return "[" + ", ".join(f"{int(v)} {class_names[int(v) - 1]!r}" for v in values) + "]"


def _check_mask_values(mask: np.ndarray, num_classes: int, name: str, path: Path) -> list[DataProblem]:
    bad = (mask > num_classes) & (mask != 255)
    if not bad.any():
        return []
    values, counts = np.unique(mask[bad], return_counts=True)
    found = ", ".join(f"{int(v)} ({int(c)} px)" for v, c in zip(values[:8], counts[:8], strict=True))
    return [DataProblem("mask_values", name, str(path),
                        f"values must be in {{0..{num_classes}, 255}} for K = {num_classes} classes, found {found}")]


def _check_label_vs_mask(label: np.ndarray, mask: np.ndarray, class_names: Sequence[str], name: str,
                         path: str) -> list[DataProblem]:
    """Compare an image-level label with the classes painted in a mask (masks that are all 255 are skipped)."""
    if not (mask != 255).any():
        return []                                    # tag-only image: nothing to compare with
    K = len(class_names)
    present = np.bincount(mask.reshape(-1), minlength=256)[1:K + 1] > 0
    given = np.asarray(label).reshape(-1)[:K] > 0
    if np.array_equal(present, given):
        return []
    only_mask = np.nonzero(present & ~given)[0] + 1
    only_label = np.nonzero(given & ~present)[0] + 1
    parts = []
    if only_mask.size:
        parts.append(f"in the mask but not in the label: {_class_list(only_mask, class_names)}")
    if only_label.size:
        parts.append(f"in the label but not in the mask: {_class_list(only_label, class_names)}")
    return [DataProblem("label_mask_mismatch", name, path, "; ".join(parts))]


# --------------------------------------------------------------------------------------------- VOC layout
def _voc_item(name: str, image_path: Path, mask_path: Path | None, class_names: Sequence[str],
              label: np.ndarray | None, label_source: str) -> list[DataProblem]:
    from .voc import read_image, read_mask

    problems: list[DataProblem] = []
    image = mask = None
    if not image_path.is_file():
        problems.append(DataProblem("missing_image", name, str(image_path), "no such image file"))
    else:
        try:
            image = read_image(image_path)
        except (OSError, ValueError) as err:
            problems.append(DataProblem("corrupt_image", name, str(image_path), f"cannot decode ({_cause(err)})"))
    if mask_path is not None:
        if not mask_path.is_file():
            problems.append(DataProblem("missing_mask", name, str(mask_path), "no such mask file"))
        else:
            try:
                mask = read_mask(mask_path)
            except ValueError as err:
                problems.append(DataProblem("corrupt_mask", name, str(mask_path), str(err).split(": ", 1)[-1]))
            except OSError as err:
                problems.append(DataProblem("corrupt_mask", name, str(mask_path), f"cannot decode ({_cause(err)})"))
    if mask is not None:
        problems += _check_mask_values(mask, len(class_names), name, mask_path)  # type: ignore[arg-type]
        if image is not None and mask.shape != image.shape[:2]:
            problems.append(DataProblem("size_mismatch", name, str(mask_path),
                                        f"mask size {mask.shape} (H, W) differs from the image size "
                                        f"{image.shape[:2]} of {image_path.name}"))
        if label is not None:
            problems += _check_label_vs_mask(label, mask, class_names, name, f"{mask_path} vs {label_source}")
    return problems


def check_voc(root: str | os.PathLike, split: str = "train", *, mask_dir: str | None = "SegmentationClass",
              cls_labels: str | os.PathLike | Mapping[Any, Any] | None = None,
              list_file: str | os.PathLike | None = None, class_names: Sequence[str] = VOC_CLASSES,
              progress: bool = True) -> list[DataProblem]:
    """Check a VOC-layout split completely: every list entry's image and mask are read and decoded.

    Checks, all collected (nothing stops at the first problem): list entries without an image, images
    and masks that cannot be decoded, missing masks, mask values above K other than 255, image/mask size
    mismatches, list entries without a ``cls_labels`` entry, malformed ``cls_labels`` entries, ``cls_labels``
    that disagree with the classes painted in the mask (masks that are all 255, i.e. tag-only images, are
    not compared) and names listed twice. The layout and arguments are those of
    :class:`~wsseg.data.VOCSegmentation`.

    Args:
        root: the VOC-layout folder (``JPEGImages/``, mask folder, ``ImageSets/Segmentation/``).
        split: list name ``ImageSets/Segmentation/<split>.txt``.
        mask_dir: mask sub-folder, or ``None`` for a split without masks.
        cls_labels: ``cls_labels.npy`` path or dict, or ``None`` (labels come from the masks).
        list_file: explicit list file overriding ``split``.
        class_names: the K foreground class names (mask value ``k + 1`` is ``class_names[k]``).
        progress: show a tqdm progress bar on stderr.

    Returns:
        The problems, a list of :class:`DataProblem` (empty when the split is clean), in list order.

    Example:
        >>> import shutil, tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        ...     (root / sub).mkdir(parents=True)
        >>> Image.new("RGB", (4, 4)).save(root / "JPEGImages" / "a.jpg")
        >>> Image.fromarray(np.full((4, 4), 9, np.uint8)).save(root / "SegmentationClass" / "a.png")
        >>> _ = (root / "ImageSets/Segmentation/train.txt").write_text("a\\nb\\n")
        >>> for p in check_voc(root, class_names=("cat", "dog"), progress=False):
        ...     print(p.kind, p.name)
        mask_values a
        missing_image b
        missing_mask b
        >>> shutil.rmtree(root)
    """
    from .voc import _canonical_voc_name, _read_cls_labels_file, _read_list

    root = Path(root)
    class_names = tuple(class_names)
    K = len(class_names)
    list_path = Path(list_file) if list_file is not None else root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not (root / "JPEGImages").is_dir():
        return [DataProblem("setup", "", str(root / "JPEGImages"), "image folder not found")]
    mask_root = None if mask_dir is None else root / mask_dir
    if mask_root is not None and not mask_root.is_dir():
        return [DataProblem("setup", "", str(mask_root), "mask folder not found")]
    try:
        names = _read_list(list_path)
    except (OSError, ValueError) as err:
        return [DataProblem("setup", "", str(list_path), str(err))]

    problems: list[DataProblem] = []
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(DataProblem("duplicate_entry", name, str(list_path), f"listed {count} times"))

    table: dict[str, np.ndarray] | None = None
    label_source = "cls_labels"
    if cls_labels is not None:
        label_source = "cls_labels" if isinstance(cls_labels, Mapping) else str(cls_labels)
        try:
            raw = cls_labels if isinstance(cls_labels, Mapping) else _read_cls_labels_file(cls_labels)
        except (OSError, ValueError) as err:
            return problems + [DataProblem("setup", "", label_source, str(err))]
        table = {}
        for key, value in raw.items():
            table[_canonical_voc_name(key)] = np.asarray(value)
    label_of: dict[str, np.ndarray] = {}
    if table is not None:
        for name in dict.fromkeys(names):
            if name not in table:
                problems.append(DataProblem("missing_label", name, label_source, f"no entry for {name!r}"))
                continue
            raw_vec = table[name]
            try:
                vec = raw_vec.astype(np.float32).reshape(-1)
            except (TypeError, ValueError):
                vec = np.zeros(0, np.float32)
            if vec.shape != (K,) or not np.isin(vec, (0.0, 1.0)).all():
                problems.append(DataProblem("bad_label", name, label_source,
                                            f"entry {name!r}: expected a ({K},) vector of 0/1 for K = {K} classes, "
                                            f"got shape {raw_vec.shape} values {np.unique(vec)[:5].tolist()}"))
                continue
            label_of[name] = vec

    image_dir = root / "JPEGImages"
    unique = list(dict.fromkeys(names))
    with _progress(len(unique), f"check {list_path.stem}", progress) as bar:
        for name in unique:
            problems += _voc_item(name, image_dir / f"{name}.jpg",
                                  None if mask_root is None else mask_root / f"{name}.png", class_names,
                                  label_of.get(name), label_source)
            bar.update(1)
    return problems


# --------------------------------------------------------------------------------------------- any dataset
def check_dataset(dataset: Any, *, compare_labels: bool = True, progress: bool = True,
                  desc: str = "check") -> list[DataProblem]:
    """Check every item of a :class:`~wsseg.data.SegmentationDataset` (e.g. a COCO set) by reading it.

    For every index: the image is read and decoded (``load_image``), the mask is read (``load_mask``),
    its values are checked against :math:`\\{0..K, 255\\}`, its size against the image's, and (with
    ``compare_labels``) the image-level label (``get_label``) against the classes painted in the mask.
    Errors raised by the dataset are collected as problems, not re-raised.

    Args:
        dataset: a :class:`~wsseg.data.SegmentationDataset` (``names``, ``class_names``, ``load_image``,
            ``load_mask``, ``get_label``).
        compare_labels: compare labels with masks (off for data sets whose labels deliberately differ).
        progress: show a tqdm progress bar on stderr.
        desc: progress-bar label.

    Returns:
        The problems, a list of :class:`DataProblem`.
    """
    class_names = tuple(dataset.class_names)
    K = len(class_names)
    problems: list[DataProblem] = []
    with _progress(len(dataset), desc, progress) as bar:
        for i in range(len(dataset)):
            name = str(dataset.names[i])
            image = mask = None
            try:
                image = dataset.load_image(i)
            except FileNotFoundError as err:
                problems.append(DataProblem("missing_image", name, _path_in(err, name), "no such image file"))
            except ValueError as err:   # e.g. COCO: decoded size differs from the record
                problems.append(DataProblem("size_mismatch", name, _path_in(err, name), str(err)))
            except OSError as err:
                problems.append(DataProblem("corrupt_image", name, _path_in(err, name),
                                            f"cannot decode ({_cause(err)})"))
            try:
                mask = np.asarray(dataset.load_mask(i))
            except FileNotFoundError as err:
                problems.append(DataProblem("missing_mask", name, _path_in(err, name), "no such mask file"))
            except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
                kind = "mask_values" if "values must be in" in str(err) else "bad_annotation"
                problems.append(DataProblem(kind, name, _path_in(err, name), str(err)))
            if mask is not None:
                problems += _check_mask_values(mask, K, name, Path(name))
                if image is not None and mask.shape != image.shape[:2]:
                    problems.append(DataProblem("size_mismatch", name, name, f"mask size {mask.shape} differs "
                                                f"from the image size {image.shape[:2]}"))
                if compare_labels:
                    try:
                        label = np.asarray(dataset.get_label(i))
                    except (OSError, ValueError, KeyError) as err:
                        problems.append(DataProblem("missing_label", name, name, str(err)))
                    else:
                        problems += _check_label_vs_mask(label, mask, class_names, name, name)
            bar.update(1)
    return problems


def _path_in(err: BaseException, fallback: str) -> str:
    """The file named by a wsseg loader error (``... file <path>...``), else ``fallback``."""
    text = str(err)
    for marker in ("file not found: ", "image file ", "mask file ", "file "):
        if marker in text:
            rest = text.split(marker, 1)[1]
            return rest.split(": ", 1)[0].strip()
    return fallback


# --------------------------------------------------------------------------------------------- COCO
def check_coco(root: str | os.PathLike, split: str = "train2017", *, image_dir: str | os.PathLike | None = None,
               ann_file: str | os.PathLike | None = None, classes: str = "voc", crowd: str = "ignore",
               progress: bool = True) -> list[DataProblem]:
    """Check a COCO split completely: the annotation file, then every image record (decoded and painted).

    Reports annotations whose ``image_id`` has no image record, image records without a file, images
    that cannot be decoded or whose size differs from the record's ``height``/``width``, and annotations
    that cannot be painted. Every image record is checked, also those training drops with
    ``skip_unlabeled``. Arguments as :class:`~wsseg.data.COCOSegmentation`.

    Returns:
        The problems, a list of :class:`DataProblem`.
    """
    from .coco import COCOSegmentation

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # the orphan warning: reported as a problem below
            ds = COCOSegmentation(root, split, image_dir=image_dir, ann_file=ann_file, classes=classes, crowd=crowd)
    except (OSError, ValueError, ImportError, TypeError) as err:
        return [DataProblem("setup", "", str(root), str(err))]
    problems: list[DataProblem] = []
    if ds.num_orphan_annotations:
        problems.append(DataProblem("orphan_annotations", "", str(ds.ann_file),
                                    f"{ds.num_orphan_annotations} annotation(s) refer to an image_id with no "
                                    "entry in 'images' (ignored by COCOSegmentation)"))
    # the masks are painted from the annotations of each image: labels agree with them by construction
    return problems + check_dataset(ds, compare_labels=False, progress=progress, desc=f"check {split}")


# --------------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python3 -m wsseg.data.check",
        description="Read and decode every image and mask of the splits a training run would use, and list "
                    "every problem (missing or corrupt files, mask values outside the class list, size "
                    "mismatches, cls_labels missing or disagreeing with the masks). Takes the data flags of "
                    "the training scripts. Exit status: 0 clean, 1 problems found, 2 usage error.")
    d = p.add_argument_group("data (as the training scripts)")
    d.add_argument("--dataset", choices=["voc", "coco"], default="voc")
    d.add_argument("--root", required=True, help="dataset folder (voc: VOC layout; coco: images + annotations/)")
    d.add_argument("--split", default=None, help="training split (voc default train; coco default train2017)")
    d.add_argument("--list-file", default=None, help="voc: explicit list file of --split")
    d.add_argument("--mask-dir", default="SegmentationClass", help="voc: mask folder")
    d.add_argument("--cls-labels", default=None, help="voc: cls_labels.npy image-label dict")
    d.add_argument("--class-names", default=None,
                   help="voc layout with its own classes: one name per line, line 0 = background")
    d.add_argument("--no-background", action="store_true",
                   help="--class-names lists only the foreground classes (line i = mask value i + 1)")
    d.add_argument("--pseudo-split", default=None, help="also check this split (as training scores it)")
    d.add_argument("--eval-split", default=None, help="also check this split")
    d.add_argument("--eval-mask-dir", default=None, help="voc: mask folder of --eval-split (default --mask-dir)")
    d.add_argument("--coco-classes", choices=["voc", "all"], default="voc")
    d.add_argument("--coco-crowd", choices=["ignore", "class"], default="ignore")
    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--max-print", type=int, default=50,
                   help="print at most this many problem lines (default 50; the summary counts all)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command-line check; returns the exit status (0 clean, 1 problems found)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.max_print < 0:
        parser.error(f"--max-print: expected a non-negative int, got {args.max_print}")
    root = Path(args.root)
    if not root.is_dir():
        parser.error(f"--root: folder not found: {root}")
    progress = not args.no_progress
    runs: list[tuple[str, Any]] = []
    if args.dataset == "coco":
        split = args.split or "train2017"
        for s in dict.fromkeys([split, args.pseudo_split or split, args.eval_split or args.pseudo_split or split]):
            runs.append((s, lambda s=s: check_coco(root, s, classes=args.coco_classes, crowd=args.coco_crowd,
                                                   progress=progress)))
    else:
        class_names: Sequence[str] = VOC_CLASSES
        if args.class_names:
            from .class_names import read_class_names

            try:
                class_names = read_class_names(args.class_names, background=not args.no_background)
            except (OSError, ValueError) as err:
                print(f"--class-names: {err}", file=sys.stderr)
                print("data check: 1 problem (class list unreadable); nothing else checked", file=sys.stderr)
                return 1
        split = args.split or "train"
        pseudo = args.pseudo_split or split
        evals = args.eval_split or pseudo
        # the same (split, mask folder, list file) triples as the training scripts' build_datasets
        pseudo_job = (pseudo, args.mask_dir, args.list_file if args.pseudo_split is None else None)
        same = evals == pseudo and args.eval_mask_dir in (None, args.mask_dir)
        eval_job = pseudo_job if same else (evals, args.eval_mask_dir or args.mask_dir, None)
        jobs = dict.fromkeys([(split, args.mask_dir, args.list_file), pseudo_job, eval_job])
        for s, mdir, lfile in jobs:
            runs.append((s, lambda s=s, mdir=mdir, lfile=lfile: check_voc(
                root, s, mask_dir=mdir, cls_labels=args.cls_labels, list_file=lfile, class_names=class_names,
                progress=progress)))
    total: list[DataProblem] = []
    print(f"data check: {args.dataset} at {root}", flush=True)
    for split_name, run in runs:
        t0 = time.perf_counter()
        problems = run()
        dt = time.perf_counter() - t0
        counts = Counter(p.kind for p in problems)
        summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no problem"
        print(f"  split {split_name}: {summary} ({dt:.1f} s)", flush=True)
        total += problems
    for p in total[:args.max_print]:
        print(p)
    if len(total) > args.max_print:
        print(f"... and {len(total) - args.max_print} more problem(s) (--max-print to show them)")
    if total:
        print(f"data check: {len(total)} problem(s) found", flush=True)
        return 1
    print("data check: no problem found", flush=True)
    return 0
