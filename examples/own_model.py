#!/usr/bin/env python
"""Train a CAM network of your own with wsseg's components only (no builder, no training engine).

A plain timm CNN (``resnet18``, random weights) and a timm ViT (``test_vit``) each get a CAM head and a
segmentation head and are trained on the built-in synthetic shapes with:

    image-level score (GAP or AdaptiveKPooling) -> classification loss
    teacher CAM -> raw_cam_pseudo_label (upsample, ReLU, min-max, thresholds, refiner) -> pseudo label
    pseudo label -> BalancedSegmentationLoss, or CoSA's SwappedAssignmentLoss
    pseudo label -> pixel_to_patch_label -> PatchContrastLoss on the feature grid

Every arrow is explained, with shapes and value ranges, in the documentation page "Your own model"
(``docs/own_model.rst``), which shows this file's code. Run::

    python examples/own_model.py                           # both models, ~30 iterations each, CPU
    python examples/own_model.py --model vit --refiner varm --seg-loss swapped --teacher ema
    python examples/own_model.py --pool topk --high 0.6 --low 0.3 --walkthrough

``--walkthrough`` prints the shape, dtype and value range at every arrow for one batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

import timm
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wsseg.data import SyntheticShapes
from wsseg.layers import PAMR, AdaptiveKPooling, PixelAdaptiveRefine, VariationAwareRefine
from wsseg.losses import BalancedSegmentationLoss, PatchContrastLoss, SwappedAssignmentLoss
from wsseg.pseudo import pixel_to_patch_label, raw_cam_pseudo_label
from wsseg.training import EMATeacher
from wsseg.utils import denormalize, rst_to_text


# [start:model]
class CNNEncoder(nn.Module):
    """A timm CNN cut at stride 8: ``(B, 3, H, W) -> (B, C, H/8, W/8)``."""

    def __init__(self, name: str = "resnet18") -> None:
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=(2,))
        self.channels = self.body.feature_info.channels()[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)[-1]


class ViTEncoder(nn.Module):
    """A timm ViT whose patch tokens are laid out as a grid: ``(B, 3, H, W) -> (B, D, H/p, W/p)``."""

    def __init__(self, name: str = "test_vit") -> None:
        super().__init__()
        self.body = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        self.channels = self.body.embed_dim
        self.patch = self.body.patch_embed.patch_size[0]

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.body.forward_features(x)[:, self.body.num_prefix_tokens:]   # drop class token
        return rearrange(tokens, "b (h w) d -> b d h w", h=x.shape[-2] // self.patch)


class Output(NamedTuple):
    cam: Tensor        # (B, K, h, w)   raw CAM logits, any real value (no ReLU, no sigmoid)
    seg: Tensor        # (B, K+1, h, w) segmentation logits, channel 0 = background
    features: Tensor   # (B, C, h, w)   the feature grid (patch embeddings for the ViT)


class OwnCAMNet(nn.Module):
    """Your network: any encoder, a bias-free 1x1 CAM head (K channels), a seg head (K+1)."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.cam_head = nn.Conv2d(encoder.channels, num_classes, 1, bias=False)
        self.seg_head = nn.Conv2d(encoder.channels, num_classes + 1, 1)

    def forward(self, x: Tensor) -> Output:
        f = self.encoder(x)
        return Output(cam=self.cam_head(f), seg=self.seg_head(f), features=f)
# [end:model]


# [start:score]
def image_scores(cam: Tensor, pool: str) -> Tensor:
    """Image-level class scores ``(B, K)`` from the raw CAM ``(B, K, h, w)``."""
    if pool == "gap":
        # GAP of the CAM = the classifier on GAP(features) (linear head): LOGITS, any real value
        return cam.mean(dim=(2, 3))
    # top-k pooling of per-patch PROBABILITIES (sigmoid: independent classes, no background)
    return AdaptiveKPooling("fixed", k=4)(torch.sigmoid(cam))         # in [0, 1]


def classification_loss(scores: Tensor, labels: Tensor, pool: str) -> Tensor:
    """Multi-label loss against the image labels ``(B, K)`` in {0, 1}."""
    if pool == "gap":
        return F.multilabel_soft_margin_loss(scores, labels)           # takes LOGITS
    return F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), labels)  # takes PROBABILITIES
# [end:score]


# [start:refiner]
def make_refiner(name: str) -> nn.Module | None:
    """Parameter-free refiners: all take ``(image in [0, 1], probs)``, at any resolution."""
    return {"none": None,                                  # CoSA
            "par": PixelAdaptiveRefine(num_iter=10),       # AFA
            "varm": VariationAwareRefine(num_iter=10),     # TSCD
            "pamr": PAMR(num_iter=10)}[name]               # SLRNet's refiner
# [end:refiner]


def describe(name: str, t: Tensor, note: str = "") -> None:
    """One line: name, shape, dtype and value range (for ``--walkthrough``)."""
    t = t.detach()
    lo, hi = float(t.min()), float(t.max())
    vals = ""
    if not t.is_floating_point():
        vals = f", values {sorted(t.unique().tolist())}"
    print(f"{name:<13} {str(tuple(t.shape)):<15} {str(t.dtype).replace('torch.', ''):<7} "
          f"[{lo:.3g}, {hi:.3g}]{vals}  {note}")


# [start:step]
def train_step(model: nn.Module, teacher: nn.Module | None, batch: dict, args: argparse.Namespace,
               it: int, walk: bool = False) -> tuple[Tensor, dict[str, float]]:
    """One iteration; ``teacher`` is the EMA network, or ``None`` for the detached student."""
    x, y = batch["image"], batch["label"]      # (B, 3, H, W) normalised; (B, K) float in {0, 1}
    out = model(x)                             # raw CAM (B, K, h, w), seg logits (B, K+1, h, w)
    scores = image_scores(out.cam, args.pool)  # (B, K) logits (gap) or probabilities (topk)
    loss_cls = classification_loss(scores, y, args.pool)
    logs = {"cls": float(loss_cls.detach())}
    if it < args.cam_iters:                    # the CAM must be trained before it can teach
        return loss_cls, logs

    # 1. teacher signals, no gradient: the EMA teacher's forward, or the student's outputs detached
    with torch.no_grad():
        t = teacher(x) if teacher is not None else Output(*(o.detach() for o in out))
    # 2. raw CAM -> pseudo label at image resolution (upsampling, ReLU, min-max inside)
    image01 = denormalize(x)                   # (B, 3, H, W) in [0, 1]
    pseudo, cam01 = raw_cam_pseudo_label(t.cam, y, image01, high=args.high, low=args.low,
                                         refiner=make_refiner(args.refiner), return_cam=True)
    # pseudo: (B, H, W) int64 in {0..K, 255}
    # cam01: the normalised CAM (B, K, H, W) in [0, 1), absent classes 0
    # 3. segmentation loss on the pseudo label
    if args.seg_loss == "balanced":
        # unweighted inside: the caller applies the weight (0.1 as TSCD / AFA)
        loss_seg = 0.1 * BalancedSegmentationLoss()(out.seg, pseudo)   # upsampled inside
    else:
        # CoSA: CPL -> student seg, teacher's soft seg label -> student CAM; 0.1 / 0.05 INSIDE
        t_seg = F.interpolate(t.seg, size=pseudo.shape[-2:], mode="bilinear", align_corners=False)
        loss_seg = SwappedAssignmentLoss()(out.seg, out.cam, pseudo, t_seg, y)
    # 4. patch contrast on the feature grid, with the pseudo label shrunk to that grid
    patch = pixel_to_patch_label(pseudo, grid_size=tuple(out.features.shape[-2:]))   # (B, h, w)
    loss_pcl = 0.1 * PatchContrastLoss()(out.features, patch)          # unweighted inside
    if walk:
        describe("x", x, "normalised input")
        describe("out.cam", out.cam, "raw CAM logits")
        describe("out.seg", out.seg, "seg logits, 0 = bg")
        describe("scores", scores, "logits (gap) / probs (topk)")
        describe("image01", image01, "refiner's image")
        describe("cam01", cam01, "ReLU + min-max, x labels")
        describe("pseudo", pseudo, "255 = ignored")
        describe("patch", patch, "per feature cell")
    logs.update(seg=float(loss_seg.detach()), pcl=float(loss_pcl.detach()),
                ignore=float((pseudo == 255).float().mean()))
    return loss_cls + loss_seg + loss_pcl, logs
# [end:step]


# [start:loop]
def train(kind: str, args: argparse.Namespace, loader) -> dict[str, list[float]]:
    """Build the network ``kind`` ("cnn" or "vit") and train it for ``args.iters`` iterations."""
    torch.manual_seed(args.seed)
    encoder = CNNEncoder("resnet18") if kind == "cnn" else ViTEncoder("test_vit")
    model = OwnCAMNet(encoder, num_classes=loader.dataset.num_classes)
    teacher, ema = None, None
    if args.teacher == "ema":
        ema = EMATeacher(momentum=args.momentum, init="copy")  # CoSA: "independent" + factory
        teacher = ema.build(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    history: dict[str, list[float]] = {"loss": [], "cls": []}
    it = 0
    while it < args.iters:
        for batch in loader:
            walk = args.walkthrough and it == args.cam_iters
            loss, logs = train_step(model, teacher, batch, args, it, walk)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.step(teacher, model)              # after every optimiser step
            history["loss"].append(float(loss.detach()))
            history["cls"].append(logs["cls"])
            it += 1
            if it >= args.iters:
                break
    return history
# [end:loop]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=rst_to_text(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("cnn", "vit", "both"), default="both")
    p.add_argument("--iters", type=int, default=30, help="iterations per model (default 30)")
    p.add_argument("--cam-iters", type=int, default=None,
                   help="classification-only iterations first (default: half of --iters)")
    p.add_argument("--pool", choices=("gap", "topk"), default="gap", help="image-level score")
    p.add_argument("--refiner", choices=("none", "par", "varm", "pamr"), default="par")
    p.add_argument("--high", type=float, default=0.55, help="high background threshold (AFA/TSCD 0.55)")
    p.add_argument("--low", type=float, default=0.35, help="low background threshold (AFA/TSCD 0.35)")
    p.add_argument("--seg-loss", choices=("balanced", "swapped"), default="balanced")
    p.add_argument("--teacher", choices=("detached", "ema"), default="detached")
    p.add_argument("--momentum", type=float, default=0.9, help="EMA momentum (CoSA 0.9994 for 32k iterations)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--size", type=int, default=64, help="synthetic image side")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--walkthrough", action="store_true", help="print shapes and ranges at every arrow once")
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f"--iters: expected a positive int, got {args.iters}")
    if args.size % 16:
        p.error(f"--size: expected a multiple of 16 (the ViT's patch size), got {args.size}")
    if args.cam_iters is None:
        args.cam_iters = args.iters // 2
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = SyntheticShapes(num_images=16, size=args.size, num_classes=3, seed=args.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(args.seed))
    results = {}
    for kind in (("cnn", "vit") if args.model == "both" else (args.model,)):
        t0 = time.perf_counter()
        hist = train(kind, args, loader)
        n = max(1, min(5, len(hist["cls"]) // 2))
        first, last = sum(hist["cls"][:n]) / n, sum(hist["cls"][-n:]) / n
        print(f"{kind}: {args.iters} iterations in {time.perf_counter() - t0:.1f} s, classification loss "
              f"{first:.3f} -> {last:.3f}, total loss (last) {hist['loss'][-1]:.3f}")
        results[kind] = hist
    return results


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(sys.argv[1:])
