#!/usr/bin/env python
"""Train ViT-PCM (ECCV 2022) or APC (2024, experimental) end to end from image-level labels.

``--method vitpcm`` (the default) is ViT-PCM, faithful to its official TensorFlow code: a ViT, the HV-BiLSTM,
a bias-free patch classifier, per-patch softmax, global max pooling, the pooled BCE, the classifier's L2 and
the equivariance loss on a 2 x 2 mosaic of second views, two Adam stages. ``--method apc`` adds APC's pieces,
whose formulas are not public (every one is an explicit setting, none has an invented default): Adaptive-K
pooling, the patch contrastive loss and an online segmentation decoder. With no arguments it trains
ViT-PCM on the built-in synthetic shapes with timm's tiny ``test_vit`` on the CPU (run time and results:
the methods table of ``README.md``)::

    python examples/train_apc.py --threads 1                          # ViT-PCM, synthetic data, CPU
    python examples/train_apc.py --method apc --decoder-dim 64 \\
        --set k_mode=ratio_to_max rho=0.5 w_pcl=0.1 w_seg=1 seg_start_iters=100   # APC (experimental)
    torchrun --nproc_per_node=2 examples/train_apc.py                 # the same run on 2 processes (DDP)

    # PASCAL VOC 2012 + SBD as the official code trains (ViT-B/16 at 384, batch 16 x 4 GPUs, 80 epochs,
    # test at 960 x 960 with a CRF):
    torchrun --nproc_per_node=4 examples/train_apc.py --dataset voc --root VOC2012 --device cuda \\
        --split train_aug --mask-dir SegmentationClassAug --cls-labels cls_labels.npy --eval-split val \\
        --weights vit_base_patch16_384.pth --eval-msc vitpcm --eval-crf vitpcm

    # any VOC-layout folder or COCO, a DINOv2 ViT-S/14 (patch 14: tell the recipe):
    python examples/train_apc.py --dataset coco --root coco128 --split train2017 --coco-classes voc \\
        --backbone vit_small_patch14_dinov2 --weights dinov2_vits14_imgfocus_fp16.pth --crop 224 \\
        --recipe vitpcm_coco --set patch_size=14 ...

The training loop, DDP, mixed precision, checkpoints, logging and evaluation are the library's engine
(:class:`wsseg.training.Trainer`). Every flag is listed by ``--help``; any recipe field is set with
``--set key=value`` (e.g. ``--set k_mode=fixed k=8`` for top-K pooling in ViT-PCM).

Metrics (:func:`wsseg.training.evaluate_method`): ``cam_miou`` (each class's patch probabilities rescaled
to peak 1, background at 0.45: a diagnostic, ViT-PCM has no CAM), ``pseudo_label_miou`` (the BPM: merged
patch probabilities, argmax) on the pseudo-label split, ``seg_miou`` / ``seg_miou_filtered`` on the
evaluation split (ViT-PCM: the argmax of the patch probabilities; APC: the decoder).
"""

from __future__ import annotations

import argparse
import os
import sys

from wsseg.training.cli import APC_CLI, VITPCM_CLI, main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=("vitpcm", "apc"), default="vitpcm")
    known, rest = pre.parse_known_args(sys.argv[1:])
    main(APC_CLI if known.method == "apc" else VITPCM_CLI, rest, description=__doc__)
