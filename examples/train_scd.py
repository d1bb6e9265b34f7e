#!/usr/bin/env python
"""Train TSCD (Self Correspondence Distillation, AAAI 2023) end to end from image-level labels.

With no arguments it trains a small model on the built-in synthetic shapes on the CPU and reports the
standard WSSS metrics (run time and results: the methods table of ``README.md``)::

    python examples/train_scd.py                      # synthetic data, CPU
    python examples/train_scd.py --recipe cam         # classification-only CAM baseline, same schedule
    torchrun --nproc_per_node=2 examples/train_scd.py # the same run on 2 processes (DDP, gloo on CPU)

    # PASCAL VOC 2012 + SBD as the paper trains (MiT-B1, crop 512, 20k iterations, 2 GPUs):
    torchrun --nproc_per_node=2 examples/train_scd.py --dataset voc --root VOC2012 --device cuda \\
        --split train_aug --mask-dir SegmentationClassAug --cls-labels cls_labels.npy \\
        --eval-split val --weights mit_b1.pth

    # any folder in VOC layout with its own classes (e.g. ../shared/data/ccp_voc):
    python examples/train_scd.py --dataset voc --root ccp_voc --class-names ccp_voc/class_names.txt \\
        --no-background --cls-labels ccp_voc/cls_labels.npy --pseudo-split train_pixel --eval-split val ...

The training loop, DDP, mixed precision (``--amp``), checkpoints (``--resume``, ``--stop-at``), logging and
evaluation are the library's engine (:class:`wsseg.training.Trainer`); every flag is listed by ``--help``.

Outputs in ``--out``: ``log.csv`` (one row per iteration), ``checkpoint.pt``, ``metrics.json`` and
``vis/*.png`` panels (image | CAM | pseudo label | prediction | ground truth). Metrics
(:func:`wsseg.training.evaluate_method`): ``cam_miou`` and ``pseudo_label_miou`` on the pseudo-label split
(ignored pixels counted as background), ``seg_miou`` / ``seg_miou_filtered`` on the evaluation split,
each recorded with its split and number of images.

Schedule scaling: unless set with ``--set``, ``cam_iters`` and ``warmup_iters`` keep the official
fractions of the run (10 % and 7.5 %, i.e. 2,000 and 1,500 of 20,000); see ``TSCDRecipe.scaled``.
"""

from __future__ import annotations

import os
import sys

from wsseg.training.cli import TSCD_CLI, main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(TSCD_CLI, sys.argv[1:], description=__doc__)
