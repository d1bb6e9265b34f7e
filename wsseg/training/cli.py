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

__all__ = ["APC_CLI", "COSA_CLI", "METHODS", "MethodCLI", "SLRNET_CLI", "TSCD_CLI", "VITPCM_CLI", "build_datasets", "build_parser", "main", "make_recipe"]

SYNTHETIC = dict(num_images=96, size=96, num_classes=3)


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
    """

    name: str
    method_cls: type[TrainingMethod]
    recipe_cls: Any
    recipes: tuple[str, ...]
    synthetic_defaults: dict[str, Any] = field(default_factory=dict)
    real_defaults: dict[str, Any] = field(default_factory=dict)


def _tscd_cli() -> MethodCLI:
    from .tscd import TSCDMethod, TSCDRecipe

    return MethodCLI("tscd", TSCDMethod, TSCDRecipe, ("tscd", "cam", "tscd_crop320"),
                     synthetic_defaults=dict(backbone="mit_b0", crop=96, iters=300, batch_size=4, decoder_dim=64),
                     real_defaults=dict(backbone="mit_b1", crop=512, iters=20000, batch_size=4, decoder_dim=256))


TSCD_CLI = _tscd_cli()


def _cosa_cli() -> MethodCLI:
    from .cosa import CoSAMethod, CoSARecipe

    return MethodCLI("cosa", CoSAMethod, CoSARecipe, ("cosa", "cam", "cosa_coco", "cosa_paper"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=64),
                     real_defaults=dict(backbone="vit_base_patch16_224", crop=448, iters=32000, batch_size=4,
                                        decoder_dim=512))


COSA_CLI = _cosa_cli()


def _slrnet_cli() -> MethodCLI:
    from .slrnet import SLRNetMethod, SLRNetRecipe

    return MethodCLI("slrnet", SLRNetMethod, SLRNetRecipe, ("slrnet", "cam"),
                     synthetic_defaults=dict(backbone="resnet38d_w16", crop=96, iters=300, batch_size=4,
                                             decoder_dim=32),
                     real_defaults=dict(backbone="resnet38d", crop=321, iters=19830, batch_size=16, decoder_dim=256))


SLRNET_CLI = _slrnet_cli()



def _vitpcm_cli() -> MethodCLI:
    from .vitpcm import ViTPCMMethod, ViTPCMRecipe

    return MethodCLI("vitpcm", ViTPCMMethod, ViTPCMRecipe, ("vitpcm", "vitpcm_coco"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=None),
                     real_defaults=dict(backbone="vit_base_patch16_384", crop=384, iters=13280, batch_size=64,
                                        decoder_dim=None))


VITPCM_CLI = _vitpcm_cli()


def _apc_cli() -> MethodCLI:
    from .apc import APCMethod, APCRecipe

    # no decoder width default: APC publishes none (pass --decoder-dim)
    return MethodCLI("apc", APCMethod, APCRecipe, ("apc", "apc_coco"),
                     synthetic_defaults=dict(backbone="test_vit", crop=96, iters=300, batch_size=4, decoder_dim=None),
                     real_defaults=dict(backbone="vit_base_patch16_384", crop=384, iters=13280, batch_size=64,
                                        decoder_dim=None))


APC_CLI = _apc_cli()

#: The methods the shared command line knows, by name (what checkpoints record as ``method``).
METHODS: dict[str, MethodCLI] = {"tscd": TSCD_CLI, "cosa": COSA_CLI, "slrnet": SLRNET_CLI, "vitpcm": VITPCM_CLI,
                                 "apc": APC_CLI}


def build_parser(spec: MethodCLI, description: str | None = None) -> argparse.ArgumentParser:
    """The shared argument parser (data, model, recipe, engine groups)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    d.add_argument("--train-long-side", type=int, default=None,
                   help="resize training photos so the long side is N before the random rescale (not in the "
                        "official pipeline; use N ~ crop when photos are much larger than the crop)")
    d.add_argument("--synthetic-images", type=int, default=SYNTHETIC["num_images"])
    d.add_argument("--synthetic-size", type=int, default=SYNTHETIC["size"])
    d.add_argument("--synthetic-classes", type=int, default=SYNTHETIC["num_classes"])
    m = p.add_argument_group("model and recipe")
    m.add_argument("--recipe", choices=list(spec.recipes), default=spec.recipes[0])
    m.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override recipe fields, e.g. --set energy_scale=0.25 or --set k_mode=fixed k=8 "
                        "(several per flag; the flag is repeatable)")
    m.add_argument("--backbone", default=None, help="mit_b0/mit_b1/... or a timm ViT name")
    m.add_argument("--weights", default=None, help="encoder weights file (nothing is downloaded)")
    m.add_argument("--decoder-dim", type=int, default=None)
    m.add_argument("--iters", type=int, default=None)
    m.add_argument("--crop", type=int, default=None)
    m.add_argument("--batch-size", type=int, default=None, help="global batch, split over the processes")
    m.add_argument("--seed", type=int, default=None)
    e = p.add_argument_group("engine")
    e.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:<LOCAL_RANK>)")
    e.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast (fp16 adds GradScaler)")
    e.add_argument("--compile", action="store_true", help="torch.compile the model")
    e.add_argument("--out", default=f"runs/train_{spec.name}")
    e.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (OUT/checkpoint.pt when given without a value)")
    e.add_argument("--ckpt-every", type=int, default=500)
    e.add_argument("--eval-every", type=int, default=0, help="evaluate every N iterations (0: at the end only)")
    e.add_argument("--stop-at", type=int, default=None,
                   help="stop after N iterations (checkpoint written, schedule of --iters kept); then --resume")
    e.add_argument("--num-workers", type=int, default=0)
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    e.add_argument("--tensorboard", action="store_true", help="also log to OUT/tb (pip install tensorboard)")
    e.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm in multi-process runs")
    e.add_argument("--per-rank-seed", action="store_true",
                   help="seed rank r with seed + r (default: the same seed everywhere, as the official code)")
    e.add_argument("--eval-long-side", type=int, default=None,
                   help="network input long side at evaluation (default: native resolution); scores are "
                        "always computed at the masks' native resolution")
    e.add_argument("--eval-msc", default=None, metavar="PRESET",
                   help="multi-scale + flip segmentation evaluation preset (tscd, afa, cosa, slrnet); "
                        "default single scale")
    e.add_argument("--eval-crf", default=None, metavar="PRESET",
                   help="dense CRF preset after the segmentation (tscd, afa, ...; needs pydensecrf)")
    e.add_argument("--num-vis", type=int, default=4, help="number of PNG panels")
    e.add_argument("--max-eval-images", type=int, default=None, help="evaluate only the first N images")
    e.add_argument("--no-progress", action="store_true")
    return p


def make_recipe(spec: MethodCLI, args: argparse.Namespace) -> Any:
    """The recipe from ``--recipe``, the dataset's defaults, ``--crop/--batch-size/--seed/--iters`` and ``--set``."""
    defaults = spec.synthetic_defaults if args.dataset == "synthetic" else spec.real_defaults
    recipe = spec.recipe_cls.preset(args.recipe)
    changes: dict[str, Any] = {}
    if args.crop is not None or args.dataset == "synthetic":
        changes["crop_size"] = args.crop or defaults["crop"]
    if args.batch_size is not None or args.dataset == "synthetic":
        changes["batch_size"] = args.batch_size or defaults["batch_size"]
    if args.seed is not None:
        changes["seed"] = args.seed
    if changes:
        recipe = spec.recipe_cls(**{**{k: getattr(recipe, k) for k in recipe.field_names()}, **changes})
    recipe = recipe.scaled(args.iters or defaults["iters"])
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
        ev = SyntheticShapes(transform=eval_tf, **kw)
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


def main(spec: MethodCLI, argv: list[str] | None = None, description: str | None = None) -> dict[str, Any]:
    """Parse ``argv``, build data, recipe, method and model, train on the engine and evaluate.

    Errors in the set-up (bad paths, class lists, crops) and in training (missing or corrupt images,
    non-finite loss) end the run with a message naming the cause; the last checkpoint stays intact.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(spec, description).parse_args(argv)
    defaults = spec.synthetic_defaults if args.dataset == "synthetic" else spec.real_defaults
    env = init_distributed(args.device)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            recipe = make_recipe(spec, args)
            seed_everything(recipe.seed + (env.rank if args.per_rank_seed else 0))
            method = spec.method_cls(recipe)
            data = build_datasets(args, recipe, method)
        except (ValueError, FileNotFoundError) as err:
            raise SystemExit(f"error: {err}") from err
        args.backbone = args.backbone or defaults["backbone"]
        args.decoder_dim = args.decoder_dim or defaults["decoder_dim"]
        model = method.build_model(data["train_set"].num_classes, backbone=args.backbone, weights=args.weights,
                                   decoder_dim=args.decoder_dim)
        config = TrainConfig(out_dir=args.out, device=args.device, amp=args.amp, compile=args.compile,
                             ckpt_every=args.ckpt_every, eval_every=args.eval_every, stop_at=args.stop_at,
                             resume=args.resume, num_workers=args.num_workers, threads=args.threads,
                             tensorboard=args.tensorboard, sync_bn=args.sync_bn, per_rank_seed=args.per_rank_seed,
                             show_progress=not args.no_progress, num_vis=args.num_vis,
                             max_eval_images=args.max_eval_images, eval_long_side=args.eval_long_side or None,
                             eval_inference=args.eval_msc, eval_crf=args.eval_crf,
                             command=[os.path.basename(sys.argv[0]), *argv])
        try:
            trainer = Trainer(method, model, data["train_set"], config, pseudo_set=data["pseudo_set"],
                              seg_set=data["seg_set"], pseudo_split=data["pseudo_split"],
                              seg_split=data["seg_split"], env=env, extra={"args": vars(args)})
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err
        try:
            return trainer.fit()
        except (FileNotFoundError, OSError, ValueError, FloatingPointError) as err:
            ckpt = trainer.out_dir / "checkpoint.pt"
            where = f"the last checkpoint {ckpt} is intact" if ckpt.is_file() else "no checkpoint was written yet"
            raise SystemExit(f"error: training stopped: {err}\n({where}; continue with --resume)") from err
    finally:
        cleanup_distributed()
