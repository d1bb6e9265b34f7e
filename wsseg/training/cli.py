"""The command line every ``examples/train_*.py`` shares: data set-ups, model, recipe and engine flags.

A method's example script is a few lines::

    from wsseg.training.cli import TSCD_CLI, main
    main(TSCD_CLI)

and runs unchanged as one process or under ``torchrun --nproc_per_node=N``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from .distributed import cleanup_distributed, init_distributed
from .loop import seed_everything
from .method import TrainingMethod
from .trainer import TrainConfig, Trainer

__all__ = ["APC_CLI", "COSA_CLI", "METHODS", "MethodCLI", "SLRNET_CLI", "TSCD_CLI", "VITPCM_CLI", "build_datasets",
           "backbone_kind", "build_parser", "check_args", "main", "make_recipe", "non_negative_int",
           "positive_int"]

SYNTHETIC = dict(num_images=96, size=96, num_classes=3)


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` ``type=`` for an integer ≥ 1; argparse prefixes the error with the flag's name.

    Raises:
        argparse.ArgumentTypeError: ``expected a positive integer (>= 1), got 0``.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(exit_on_error=False)
        >>> _ = p.add_argument("--threads", type=positive_int)
        >>> p.parse_args(["--threads", "2"]).threads
        2
        >>> try:
        ...     p.parse_args(["--threads", "-1"])
        ... except argparse.ArgumentError as err:
        ...     print(err)
        argument --threads: expected a positive integer (>= 1), got -1
    """
    return _int_at_least(text, 1, "a positive integer (>= 1)")


def non_negative_int(text: str) -> int:
    """``argparse`` ``type=`` for an integer ≥ 0 (e.g. ``--eval-every 0`` = at the end only).

    Raises:
        argparse.ArgumentTypeError: ``expected a non-negative integer (>= 0), got -1``.

    Example:
        >>> non_negative_int("0")
        0
    """
    return _int_at_least(text, 0, "a non-negative integer (>= 0)")


@dataclass
class MethodCLI:
    """What the shared command line needs to know about a method.

    Attributes:
        name: method name (``"tscd"``).
        method_cls: the :class:`TrainingMethod` subclass, built as ``method_cls(recipe)``.
        recipe_cls: its recipe dataclass, with ``preset(name)``, ``replace(**changes)``, ``scaled(iters)``,
            ``from_overrides(list, base=)`` and ``to_dict()`` (see :class:`~wsseg.training.TSCDRecipe`).
        recipes: the ``--recipe`` choices (the first is the default).
        synthetic_defaults, real_defaults: defaults of ``backbone``, ``crop``, ``iters``, ``batch_size``
            and ``decoder_dim`` for the built-in synthetic set and for real data.
        backbones: the ``--backbone`` kinds the method's builder accepts, checked before anything is
            built (:func:`backbone_kind`): ``"mit"``, ``"vit"``, ``"resnet38d"``, ``"cnn"``.
    """

    name: str
    method_cls: type[TrainingMethod]
    recipe_cls: Any
    recipes: tuple[str, ...]
    synthetic_defaults: dict[str, Any] = field(default_factory=dict)
    real_defaults: dict[str, Any] = field(default_factory=dict)
    backbones: tuple[str, ...] = ("mit", "vit", "resnet38d", "cnn")


_BACKBONE_KINDS = {"mit": "a MiT name (mit_b0 .. mit_b5)", "vit": "a timm ViT name (e.g. vit_base_patch16_224)",
                   "resnet38d": "resnet38d or resnet38d_w<n>", "cnn": "a timm CNN name (e.g. resnet50)"}


def backbone_kind(name: str) -> str | None:
    """The kind of a ``--backbone`` name: ``"mit"``, ``"resnet38d"``, ``"vit"`` (a timm model with
    ``patch_embed`` and ``blocks``, inspected on the meta device: no memory, no weights), ``"cnn"`` (any other
    timm model) or ``None`` (unknown name).

    Example:
        >>> [backbone_kind(n) for n in ("mit_b1", "resnet38d_w16", "test_vit", "resnet18", "nope")]
        ['mit', 'resnet38d', 'vit', 'cnn', None]
    """
    if name.startswith("mit_"):
        from .. import backbones

        return "mit" if callable(getattr(backbones, name, None)) else None
    if name == "resnet38d" or (name.startswith("resnet38d_w") and name[len("resnet38d_w"):].isdigit()):
        return "resnet38d"
    import timm

    if not timm.is_model(name):
        return None
    from ..models.tscd import _timm_vit_depth

    return "vit" if _timm_vit_depth(name) is not None else "cnn"


def _tscd_cli() -> MethodCLI:
    from .tscd import TSCDMethod, TSCDRecipe

    return MethodCLI("tscd", TSCDMethod, TSCDRecipe, ("tscd", "cam", "tscd_crop320"),
                     synthetic_defaults=dict(backbone="mit_b0", crop=96, iters=300, batch_size=4, decoder_dim=64),
                     real_defaults=dict(backbone="mit_b1", crop=512, iters=20000, batch_size=4, decoder_dim=256),
                     backbones=("mit", "vit"))


TSCD_CLI = _tscd_cli()


def _cosa_cli() -> MethodCLI:
    from .cosa import CoSAMethod, CoSARecipe

    return MethodCLI("cosa", CoSAMethod, CoSARecipe, ("cosa", "cam", "cosa_coco", "cosa_paper"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=64),
                     real_defaults=dict(backbone="vit_base_patch16_224", crop=448, iters=32000, batch_size=4,
                                        decoder_dim=512), backbones=("vit",))


COSA_CLI = _cosa_cli()


def _slrnet_cli() -> MethodCLI:
    from .slrnet import SLRNetMethod, SLRNetRecipe

    return MethodCLI("slrnet", SLRNetMethod, SLRNetRecipe, ("slrnet", "cam"),
                     synthetic_defaults=dict(backbone="resnet38d_w16", crop=96, iters=300, batch_size=4,
                                             decoder_dim=32),
                     real_defaults=dict(backbone="resnet38d", crop=321, iters=19830, batch_size=16, decoder_dim=256),
                     backbones=("resnet38d", "vit", "cnn"))


SLRNET_CLI = _slrnet_cli()



def _vitpcm_cli() -> MethodCLI:
    from .vitpcm import ViTPCMMethod, ViTPCMRecipe

    return MethodCLI("vitpcm", ViTPCMMethod, ViTPCMRecipe, ("vitpcm", "vitpcm_coco"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=None),
                     real_defaults=dict(backbone="vit_base_patch16_384", crop=384, iters=13280, batch_size=64,
                                        decoder_dim=None), backbones=("vit",))


VITPCM_CLI = _vitpcm_cli()


def _apc_cli() -> MethodCLI:
    from .apc import APCMethod, APCRecipe

    # no decoder width default: APC publishes none (pass --decoder-dim)
    return MethodCLI("apc", APCMethod, APCRecipe, ("apc", "apc_coco"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=None),
                     real_defaults=dict(backbone="vit_base_patch16_384", crop=384, iters=13280, batch_size=64,
                                        decoder_dim=None), backbones=("vit",))


APC_CLI = _apc_cli()

#: The methods the shared command line knows, by name (what checkpoints record as ``method``).
METHODS: dict[str, MethodCLI] = {"tscd": TSCD_CLI, "cosa": COSA_CLI, "slrnet": SLRNET_CLI, "vitpcm": VITPCM_CLI,
                                 "apc": APC_CLI}


class _ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (``prog: error: --flag: ...``) plus a pointer to ``--help``
    instead of the 20-line usage of the training flags."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(all flags: {self.prog} --help)\n")


def build_parser(spec: MethodCLI, description: str | None = None) -> argparse.ArgumentParser:
    """The shared argument parser (data, model, recipe, engine groups); ``description`` (a script's
    reStructuredText docstring) is shown as plain text (:func:`wsseg.utils.rst_to_text`)."""
    from ..layers.multi_scale_inference import MULTI_SCALE_INFERENCE_PRESETS
    from ..pseudo.dense_crf import DENSE_CRF_PRESETS
    from ..utils.rst_text import rst_to_text

    description = rst_to_text(description) if description else description
    p = _ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", choices=["synthetic", "voc", "coco"], default="synthetic")
    d.add_argument("--root", default=None, help="dataset folder (voc: VOC2012 layout; coco: images + annotations/)")
    d.add_argument("--split", default=None,
                   help="training split: voc list name (train, train_aug; default train); coco image folder "
                        "(train2014, train2017; default train2017) with annotations/instances_<split>.json")
    d.add_argument("--list-file", default=None, help="voc: explicit list file (e.g. the public repos' train_aug.txt)")
    d.add_argument("--mask-dir", default="SegmentationClass",
                   help="voc: mask folder (SegmentationClassAug for train_aug)")
    d.add_argument("--cls-labels", default=None,
                   help="voc: cls_labels.npy image-label dict (int or str keys); default: from the masks")
    d.add_argument("--class-names", default=None,
                   help="voc layout with its own classes: one name per line, line 0 = background")
    d.add_argument("--no-background", action="store_true",
                   help="--class-names lists only the foreground classes (line i = mask value i + 1)")
    d.add_argument("--pseudo-split", default=None,
                   help="split on which CAM / pseudo labels are scored (default: the training split; "
                        "e.g. train_pixel for ccp_voc, whose tag-only images have no masks)")
    d.add_argument("--eval-split", default=None,
                   help="split on which the segmentation is scored (voc: val; coco: val2014; default: the "
                        "pseudo-label split)")
    d.add_argument("--eval-mask-dir", default=None, help="voc: mask folder of the eval split (default --mask-dir)")
    d.add_argument("--coco-classes", choices=["voc", "all"], default="voc",
                   help="coco: map onto the 20 VOC classes (others = background) or keep all 80")
    d.add_argument("--coco-crowd", choices=["ignore", "class"], default="ignore",
                   help="coco: crowd regions as ignore (255) or painted as their class (TSCD/ToCo coco2voc)")
    d.add_argument("--train-long-side", type=positive_int, default=None,
                   help="resize training photos so the long side is N before the random rescale (not in the "
                        "official pipeline; use N ~ crop when photos are much larger than the crop)")
    d.add_argument("--synthetic-images", type=positive_int, default=SYNTHETIC["num_images"])
    d.add_argument("--synthetic-size", type=positive_int, default=SYNTHETIC["size"])
    d.add_argument("--synthetic-classes", type=positive_int, default=SYNTHETIC["num_classes"])
    m = p.add_argument_group("model and recipe")
    m.add_argument("--recipe", choices=list(spec.recipes), default=spec.recipes[0])
    m.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe fields, e.g. --set energy_scale=0.25 or --set k_mode=fixed k=8 "
                        "(several per flag; the flag is repeatable)")
    m.add_argument("--backbone", default=None, help="mit_b0/mit_b1/... or a timm ViT name")
    m.add_argument("--weights", default=None, help="encoder weights file (nothing is downloaded)")
    m.add_argument("--decoder-dim", type=positive_int, default=None)
    m.add_argument("--iters", type=positive_int, default=None)
    m.add_argument("--crop", type=positive_int, default=None)
    m.add_argument("--batch-size", type=positive_int, default=None, help="global batch, split over the processes")
    m.add_argument("--seed", type=non_negative_int, default=None)
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:<LOCAL_RANK>)")
    e.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast (fp16 adds GradScaler)")
    e.add_argument("--compile", action="store_true", help="torch.compile the model")
    e.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the encoder's blocks in backward instead of storing their activations (MiT and "
                        "ViT encoders; same gradients, less memory, slower)")
    e.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's malloc settings alone (default: keep freed memory for reuse, which saves "
                        "the page faults of re-allocating every iteration's activations; same results)")
    e.add_argument("--out", default=f"runs/train_{spec.name}")
    e.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (OUT/checkpoint.pt when given without a value); the run's "
                        "configuration must be the checkpoint's (only engine flags such as --stop-at may change)")
    e.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out folder that holds one (its files are removed first)")
    e.add_argument("--ckpt-every", type=non_negative_int, default=500)
    e.add_argument("--eval-every", type=non_negative_int, default=0,
                   help="evaluate every N iterations (0: at the end only)")
    e.add_argument("--stop-at", type=positive_int, default=None,
                   help="stop after N iterations (checkpoint written, schedule of --iters kept); then --resume")
    e.add_argument("--num-workers", type=non_negative_int, default=0)
    e.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads per process")
    e.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb (pip install tensorboard)")
    e.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in multi-process runs")
    e.add_argument("--per-rank-seed", action="store_true",
                   help="seed rank r with seed + r (default: the same seed everywhere, as the official code)")
    e.add_argument("--eval-long-side", type=positive_int, default=None,
                   help="network input long side at evaluation (default: native resolution); scores are "
                        "always computed at the masks' native resolution")
    e.add_argument("--eval-msc", default=None, choices=sorted(MULTI_SCALE_INFERENCE_PRESETS), metavar="PRESET",
                   help="multi-scale + flip segmentation evaluation preset (%(choices)s); default single scale")
    e.add_argument("--eval-crf", default=None, choices=sorted(DENSE_CRF_PRESETS), metavar="PRESET",
                   help="dense CRF preset after the segmentation (%(choices)s; needs pydensecrf)")
    e.add_argument("--num-vis", type=non_negative_int, default=4, help="number of PNG panels")
    e.add_argument("--max-eval-images", type=positive_int, default=None, help="evaluate only the first N images")
    e.add_argument("--no-progress", action="store_true")
    return p


def make_recipe(spec: MethodCLI, args: argparse.Namespace) -> Any:
    """The recipe from ``--recipe``, the dataset's defaults, ``--crop/--batch-size/--seed/--iters`` and ``--set``."""
    defaults = spec.synthetic_defaults if args.dataset == "synthetic" else spec.real_defaults
    recipe = spec.recipe_cls.preset(args.recipe)
    changes: dict[str, Any] = {}
    if args.crop is not None or args.dataset == "synthetic":
        changes["crop_size"] = defaults["crop"] if args.crop is None else args.crop
    if args.batch_size is not None or args.dataset == "synthetic":
        changes["batch_size"] = defaults["batch_size"] if args.batch_size is None else args.batch_size
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        recipe = spec.recipe_cls(**{**{k: getattr(recipe, k) for k in recipe.field_names()}, **changes})
    recipe = recipe.scaled(defaults["iters"] if args.iters is None else args.iters)
    return spec.recipe_cls.from_overrides(args.overrides, base=recipe) if args.overrides else recipe


def build_datasets(args: argparse.Namespace, recipe: Any, method: TrainingMethod | None = None) -> dict[str, Any]:
    """``train_set``, ``pseudo_set``, ``seg_set`` and their split names from the data arguments.

    The training transform is ``method.train_transform(long_side)`` when a method is given (CoSA's
    weak/strong views), else the AFA/TSCD :func:`~wsseg.data.train_transform`. Evaluation sets use the
    native resolution (``eval_transform(None)``); when the pseudo-label and segmentation splits coincide
    the same object is returned for both (one evaluation pass).

    Raises:
        ValueError: for a missing ``--root``, a class list that does not match the masks, or an empty split.
    """
    from ..data import COCOSegmentation, SyntheticShapes, VOCSegmentation, eval_transform, train_transform

    if method is not None:
        train_tf = method.train_transform(args.train_long_side)
    else:
        train_tf = train_transform(recipe.crop_size, scale_range=recipe.scale_range, seed=recipe.seed,
                                   long_side=args.train_long_side)
    eval_tf = eval_transform(None)
    if args.dataset == "synthetic":
        kw = dict(num_images=args.synthetic_images, size=args.synthetic_size, num_classes=args.synthetic_classes,
                  seed=0)
        try:
            ev = SyntheticShapes(transform=eval_tf, **kw)
        except ValueError as err:  # name the flag: num_classes -> --synthetic-classes, size -> --synthetic-size
            name, _, rest = str(err).partition(":")
            flag = {"num_classes": "--synthetic-classes", "size": "--synthetic-size",
                    "num_images": "--synthetic-images"}.get(name.strip())
            raise ValueError(f"{flag}:{rest}" if flag else str(err)) from err
        return dict(train_set=SyntheticShapes(transform=train_tf, **kw), pseudo_set=ev, seg_set=ev,
                    pseudo_split="synthetic", seg_split="synthetic")
    if args.root is None:
        raise ValueError(f"--root: required for --dataset {args.dataset}")
    if args.dataset == "coco":
        split = args.split or "train2017"

        def coco(s, tf):
            return COCOSegmentation(args.root, s, classes=args.coco_classes, skip_unlabeled=True, transform=tf,
                                    crowd=args.coco_crowd)

        train = coco(split, train_tf)
        pseudo = coco(args.pseudo_split or split, eval_tf)
        eval_split = args.eval_split or args.pseudo_split or split
        seg = pseudo if eval_split == (args.pseudo_split or split) else coco(eval_split, eval_tf)
        return dict(train_set=train, pseudo_set=pseudo, seg_set=seg, pseudo_split=args.pseudo_split or split,
                    seg_split=eval_split)
    split = args.split or "train"
    class_names = None
    if args.class_names:
        from ..data import read_class_names

        class_names = read_class_names(args.class_names, background=not args.no_background)
    common = dict(cls_labels=args.cls_labels)
    if class_names is not None:
        common["class_names"] = class_names

    def voc(s, tf, mask_dir, list_file=None):
        ds = VOCSegmentation(args.root, s, mask_dir=mask_dir, list_file=list_file, transform=tf, **common)
        ds.check_masks()  # a class list that does not match the masks fails here, naming the mask file
        return ds

    train = voc(split, train_tf, args.mask_dir, args.list_file)
    pseudo_split = args.pseudo_split or split
    pseudo = voc(pseudo_split, eval_tf, args.mask_dir, args.list_file if args.pseudo_split is None else None)
    eval_split = args.eval_split or pseudo_split
    seg = pseudo if eval_split == pseudo_split and args.eval_mask_dir in (None, args.mask_dir) else \
        voc(eval_split, eval_tf, args.eval_mask_dir or args.mask_dir)
    return dict(train_set=train, pseudo_set=pseudo, seg_set=seg, pseudo_split=pseudo_split, seg_split=eval_split)


#: recipe / engine field -> the flag that sets it (set-up errors name the flag)
_FIELD_FLAGS = {"crop_size": "--crop", "batch_size": "--batch-size", "iters": "--iters", "seed": "--seed",
                "decoder_dim": "--decoder-dim", "backbone": "--backbone", "weights": "--weights",
                "stop_at": "--stop-at", "ckpt_every": "--ckpt-every", "eval_every": "--eval-every",
                "num_workers": "--num-workers", "num_vis": "--num-vis", "threads": "--threads",
                "grad_checkpointing": "--grad-checkpointing", "keep_freed_cpu_memory": "--no-keep-freed-memory"}


def _name_flag(err: BaseException) -> str:
    """``"crop_size: ..."`` -> ``"--crop (crop_size): ..."``: a set-up error names the flag that set the value."""
    text = str(err)
    field_name, sep, rest = text.partition(":")
    flag = _FIELD_FLAGS.get(field_name.strip()) if sep else None
    return f"{flag} ({field_name.strip()}):{rest}" if flag else text


def check_args(spec: MethodCLI, args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> None:
    """Up-front checks of the parsed flags that need more than their type (before anything is built or trained).

    * ``--backbone`` must be of a kind the method accepts (``spec.backbones``, :func:`backbone_kind`);
    * ``--eval-crf`` needs pydensecrf (checked now rather than after training);
    * ``--stop-at`` at most ``--iters`` when both are given.

    Numeric ranges are checked by the parser itself (:func:`positive_int`, :func:`non_negative_int`); the crop
    against the backbone's stride is checked once the model is built.

    Raises:
        SystemExit: through ``parser.error`` (exit status 2) with a one-line message naming the flag, what
            is expected and what was given.
    """
    def fail(msg: str) -> None:
        if parser is not None:
            parser.error(msg)
        raise SystemExit(f"error: {msg}")

    if not isinstance(args.backbone, str) or not args.backbone:
        fail(f"--backbone: expected a model name, got {args.backbone!r}")
    kind = backbone_kind(args.backbone)
    if kind not in spec.backbones:
        accepted = " or ".join(_BACKBONE_KINDS[k] for k in spec.backbones)
        what = {None: "not a MiT, WideResNet-38 or timm model name", "mit": "a MiT", "vit": "a timm ViT",
                "resnet38d": "a WideResNet-38", "cnn": "a timm CNN"}[kind]
        fail(f"--backbone: {spec.name} accepts {accepted}; got {args.backbone!r} ({what})")
    if args.eval_crf is not None:
        try:
            import pydensecrf  # noqa: F401
        except ImportError:
            fail(f"--eval-crf {args.eval_crf}: needs the optional package pydensecrf "
                 f"(pip install \"wsseg[crf]\"); it is not installed")
    if args.stop_at is not None and args.iters is not None and args.stop_at > args.iters:
        fail(f"--stop-at: expected at most --iters {args.iters}, got {args.stop_at}")


def main(spec: MethodCLI, argv: list[str] | None = None, description: str | None = None) -> dict[str, Any]:
    """Parse ``argv``, build data, recipe, method and model, train on the engine and evaluate.

    Errors in the set-up (bad paths, class lists, crops) and in training (missing or corrupt images,
    non-finite loss) end the run with a message naming the cause; the last checkpoint stays intact.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(spec, description)
    args = parser.parse_args(argv)
    defaults = spec.synthetic_defaults if args.dataset == "synthetic" else spec.real_defaults
    if args.backbone is None:
        args.backbone = defaults["backbone"]
    if args.decoder_dim is None:
        args.decoder_dim = defaults["decoder_dim"]
    check_args(spec, args, parser)
    env = init_distributed(args.device)
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        try:
            recipe = make_recipe(spec, args)
            seed_everything(recipe.seed + (env.rank if args.per_rank_seed else 0))
            method = spec.method_cls(recipe)
            data = build_datasets(args, recipe, method)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {_name_flag(err)}") from err
        try:
            model = method.build_model(data["train_set"].num_classes, backbone=args.backbone, weights=args.weights,
                                       decoder_dim=args.decoder_dim)
        except (ValueError, TypeError, FileNotFoundError) as err:
            raise SystemExit(f"error: {_name_flag(err)}") from err
        stride = int(getattr(model, "stride", 0) or 0)
        if stride > 1 and recipe.crop_size % stride:
            lower, upper = recipe.crop_size // stride * stride, (recipe.crop_size // stride + 1) * stride
            fit = f"{lower} or {upper}" if lower > 0 else f"{upper}"
            raise SystemExit(f"error: --crop: expected a multiple of the stride {stride} of --backbone "
                             f"{args.backbone} (e.g. {fit}), got {recipe.crop_size}")
        min_size = int(getattr(model, "input_constraints", (1, 1))[1])
        if recipe.crop_size < min_size:  # MiT: every stage grid at least its spatial-reduction ratio
            least = -(-min_size // max(stride, 1)) * max(stride, 1)
            raise SystemExit(f"error: --crop: expected at least {least} for --backbone {args.backbone} (its "
                             f"smallest input side is {min_size}), got {recipe.crop_size}")
        config = TrainConfig(out_dir=args.out, device=args.device, amp=args.amp, compile=args.compile,
                             grad_checkpointing=args.grad_checkpointing,
                             keep_freed_cpu_memory=not args.no_keep_freed_memory,
                             ckpt_every=args.ckpt_every, eval_every=args.eval_every, stop_at=args.stop_at,
                             resume=args.resume, overwrite=args.overwrite, num_workers=args.num_workers,
                             threads=args.threads,
                             tensorboard=args.tensorboard, sync_bn=args.sync_bn, per_rank_seed=args.per_rank_seed,
                             show_progress=not args.no_progress, num_vis=args.num_vis,
                             max_eval_images=args.max_eval_images, eval_long_side=args.eval_long_side,
                             eval_inference=args.eval_msc, eval_crf=args.eval_crf,
                             command=[os.path.basename(sys.argv[0]), *argv])
        try:
            trainer = Trainer(method, model, data["train_set"], config, pseudo_set=data["pseudo_set"],
                              seg_set=data["seg_set"], pseudo_split=data["pseudo_split"],
                              seg_split=data["seg_split"], env=env, extra={"args": vars(args)})
        except ValueError as err:
            raise SystemExit(f"error: {_name_flag(err)}") from err
        try:
            return trainer.fit()
        except (FileNotFoundError, OSError, ValueError, FloatingPointError) as err:
            raise SystemExit(trainer.failure_message(err)) from err
    finally:
        cleanup_distributed()
