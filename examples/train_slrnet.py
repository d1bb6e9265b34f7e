#!/usr/bin/env python
"""Train SLRNet (self-supervised cross-view low-rank network, IJCV 2022) end to end from image-level labels.

With no arguments it trains a narrow WideResNet-38 (``resnet38d_w16``: every width / 16, same topology) on
the built-in synthetic shapes on the CPU and reports the standard WSSS metrics (run time and results: the
methods table of ``README.md``)::

    python examples/train_slrnet.py --threads 1            # synthetic data, CPU
    python examples/train_slrnet.py --recipe cam           # classification-only baseline, same schedule
    torchrun --nproc_per_node=2 examples/train_slrnet.py   # the same run on 2 processes (DDP, gloo on CPU)

    # PASCAL VOC 2012 + SBD as the official code trains (WideResNet-38, crop 321, batch 16, 30 epochs =
    # 19,830 iterations, SGD Nesterov, 2 GPUs; the README evaluates with 5 scales x flip and a CRF):
    torchrun --nproc_per_node=2 examples/train_slrnet.py --dataset voc --root VOC2012 --device cuda \\
        --split train_aug --mask-dir SegmentationClassAug --cls-labels cls_labels.npy --eval-split val \\
        --weights ilsvrc-cls_rna-a1_cls1000_ep-0001.pth --sync-bn \\
        --eval-msc slrnet --eval-crf slrnet

    # any VOC-layout folder with its own classes, a DINOv2 ViT-S/14 (e.g. ../shared/data/ccp_voc):
    python examples/train_slrnet.py --dataset voc --root ccp_voc --class-names ccp_voc/class_names.txt \\
        --no-background --cls-labels ccp_voc/cls_labels.npy --pseudo-split train_pixel --eval-split val \\
        --backbone vit_small_patch14_dinov2 --weights dinov2_vits14_imgfocus_fp16.pth --crop 224 ...

``--sync-bn`` matches the official DataParallel run, whose batch statistics span the 16 images (the
backbone's BatchNorms are frozen either way). The training loop, DDP, mixed precision (``--amp``),
checkpoints (``--resume``, ``--stop-at``), logging and evaluation are the library's engine
(:class:`wsseg.training.Trainer`). Every flag is listed by ``--help``; any recipe field is set with
``--set key=value`` (e.g. ``--set view_flip=true``, ``--set lowrank_iters=3``, ``--set keep_ties=false``).
The official ``torch.autograd.set_detect_anomaly(True)`` is not used (it only costs time).

Metrics (:func:`wsseg.training.evaluate_method`): ``cam_miou`` (single-view masks, background at 0.5) and
``pseudo_label_miou`` (the training target: both views, PAMR, relative thresholds; ignored pixels counted as
background) on the pseudo-label split, ``seg_miou`` (unfiltered) and ``seg_miou_filtered`` (classes absent
from the GT image label removed) on the evaluation split.

Schedule scaling: unless set with ``--set``, the constant-lr epochs, the cosine period and the start of the
segmentation loss keep their fractions of the official 30-epoch run (6/30, 25/30, 6/30); see
``SLRNetRecipe.scaled``.
"""

from __future__ import annotations

import os
import sys

from wsseg.training.cli import SLRNET_CLI, main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(SLRNET_CLI, sys.argv[1:], description=__doc__)
