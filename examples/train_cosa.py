#!/usr/bin/env python
"""Train CoSA (co-training with swapping assignments, ECCV 2024) end to end from image-level labels.

With no arguments it trains a small ViT on the built-in synthetic shapes on the CPU and reports the
standard WSSS metrics (run time and results: the methods table of ``README.md``)::

    python examples/train_cosa.py                        # synthetic data, CPU
    python examples/train_cosa.py --recipe cam           # classification-only CAM baseline, same schedule
    torchrun --nproc_per_node=2 examples/train_cosa.py   # the same run on 2 processes (DDP, gloo on CPU)

    # PASCAL VOC 2012 + SBD as the released code trains (ViT-B/16, crop 448, 32k iterations, 2 GPUs):
    torchrun --nproc_per_node=2 examples/train_cosa.py --dataset voc --root VOC2012 --device cuda \\
        --split train_aug --mask-dir SegmentationClassAug --cls-labels cls_labels.npy \\
        --eval-split val --weights jx_vit_base_p16_224-80ecf9dd.pth --eval-msc cosa --eval-crf cosa

    # COCO 2014 (80 classes, the COCO preset: 60k iterations, batch 8, thresholds 0.65 / 0.25):
    torchrun --nproc_per_node=2 examples/train_cosa.py --dataset coco --root coco --split train2014 \\
        --eval-split val2014 --coco-classes all --recipe cosa_coco --weights ... --device cuda

    # any VOC-layout folder with its own classes, a DINOv2 ViT-S/14 (e.g. ../shared/data/ccp_voc):
    python examples/train_cosa.py --dataset voc --root ccp_voc --class-names ccp_voc/class_names.txt \\
        --no-background --cls-labels ccp_voc/cls_labels.npy --pseudo-split train_pixel --eval-split val \\
        --backbone vit_small_patch14_dinov2 --weights dinov2_vits14_imgfocus_fp16.pth --crop 224 ...

The training loop, DDP, mixed precision (``--amp``), checkpoints (``--resume``, ``--stop-at``), logging and
evaluation are the library's engine (:class:`wsseg.training.Trainer`); the EMA teacher and the threshold
queues are saved in the checkpoint and resumed with it. Every flag is listed by ``--help``; any recipe field
is set with ``--set key=value`` (e.g. ``--set threshold_search=true``, ``--set teacher_init=copy``,
``--set aux_cam_all_scales=true``).

Metrics (:func:`wsseg.training.evaluate_method`): ``cam_miou`` (teacher CAM, background at 0.5) and
``pseudo_label_miou`` (the CPL; ignored pixels counted as background) on the pseudo-label split,
``seg_miou`` (unfiltered) and ``seg_miou_filtered`` (logits of classes absent from the GT image label
removed — the released code's reported number) on the evaluation split. ``--eval-msc cosa --eval-crf cosa``
is the official protocol (448² resize, 5 scales × flip, logits summed; CRF 1 iteration).

Schedule scaling: unless set with ``--set``, the loss warm-up, the LR warm-up and the EMA half-life keep
their fractions of the official 32,000-iteration run; see ``CoSARecipe.scaled``.
"""

from __future__ import annotations

import os
import sys

from wsseg.training.cli import COSA_CLI, main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(COSA_CLI, sys.argv[1:], description=__doc__)
