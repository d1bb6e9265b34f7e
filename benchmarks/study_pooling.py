"""Study: APC's pooling rules (:class:`wsseg.layers.AdaptiveKPooling`) on real photos, frozen ViT-S/14 features.

Question: DINOv2 patch tokens contain a few high-norm outlier patches — the "abnormal patches" APC says
dominate a max-pooled patch classifier. Does pooling the top-K patches (fixed K, or K chosen by one of the
two [assumed] ratio rules) give better CAM-free pseudo labels than ViT-PCM's global max pooling?

Protocol (identical for every setting; only the pooling differs):

1. **Features, computed once.** Every image of the fit split and of the scoring split is resized to a
   ``--size`` × ``--size`` square (bilinear, ``align_corners=False``, no antialiasing — TensorFlow's
   ``tf.image.resize`` default; the aspect ratio is not kept, as in ViT-PCM), ImageNet-normalised, and
   passed once through the frozen ViT-S/14 (``vit_small_patch14_dinov2`` with the offline weights
   ``weights/dinov2_vits14_imgfocus_fp16.pth``). The final-LayerNorm patch tokens (grid 16 × 16 at 224,
   D = 384) are cached in float16 under ``runs/study_pooling/`` keyed by dataset, split, size and subset,
   and reused by later runs; the classifier computes in float32.
2. **Fit.** For every setting a :class:`~wsseg.layers.PatchClassifier` ``(384, K + 1)`` (bias-free,
   N(0, 0.05²)) is trained on the cached tokens: ViT-PCM's dropout 0.2 on the features → the classifier →
   per-patch softmax over the K + 1 classes → ``AdaptiveKPooling(setting)`` →
   :class:`~wsseg.losses.PooledBCELoss` against the image labels with the background entry always 1, plus
   the classifier's L2 penalty (0.01 · ΣW², ViT-PCM's kernel regulariser); Adam (lr ``--lr`` = 1e-3,
   β = (0.9, 0.999), eps 1e-7 as Keras; ViT-PCM's warm-up-stage rate), minibatches of 64 images (the last
   one partial), a fixed number of epochs per dataset (:data:`EPOCHS`). All settings train in lockstep
   (:func:`fit_all`): the same initial weight (seeded), the same minibatch order and the **same dropout
   masks** (drawn once per step and applied outside the classifiers, which are built with ``dropout=0``);
   for speed the classifiers are the row blocks of one stacked ``PatchClassifier`` (one GEMM per step),
   which is exactly equivalent to separate classifiers with separate Adam optimisers.
   This is ViT-PCM's warm-up stage with a frozen encoder, without the HV-BiLSTM and the equivariance loss.
3. **Score.** The CAM-free pseudo label of ViT-PCM (:func:`wsseg.training.vitpcm_pseudo_label`: merge with
   the GT image labels, bilinear ``align_corners=True`` upsampling to the mask's native size, argmax; no
   CRF) of every image of the scoring split, with the classifier in eval mode → mIoU
   (:class:`wsseg.metrics.SegmentationMetric`, K + 1 classes, 255 ignored, mean over the classes with GT
   pixels). For speed each image's probabilities are restricted to the background and its present classes
   before the call; ``vitpcm_pseudo_label`` zeroes the absent classes anyway, so the label map is
   identical (asserted on the first images of every setting). Also recorded: the mean K that
   ``return_k`` reports over the (image, present foreground class) pairs of the scoring split and over
   the images for the background, and the final training loss (mean over the minibatches of the last
   epoch; BCE and BCE + L2).

Datasets (``--shared``, default ``$WSSEG_SHARED`` or ``../shared``):

* ``coco128``: ``data/coco128`` split ``train2017``, COCO remapped to the 20 VOC classes
  (``classes="voc"``; the 29 images without any VOC class are dropped: 97 images), crowd regions
  ignored. Fit and score on the same images (the pseudo-label protocol of WSSS: labels are made
  for the training images).
* ``ccp_voc``: ``data/ccp_voc``, K = 53 clothing classes (``class_names.txt`` without a background line,
  ``cls_labels.npy``); fit on ``train`` (1,896 images, 803 with masks + 1,093 tag-only), score on
  ``train_pixel`` (the 803 pixel-annotated training images; their features are taken from the fit cache).

**The settings were fixed a priori** (the list :data:`SETTINGS` was written into this file before any
pseudo label was scored or any mask was looked at; none was added or removed afterwards), and every
setting is reported, not only the best. The adaptive modes use ``k_min = 1``, ``k_max = None`` (= N). The
numbers of epochs (:data:`EPOCHS`) were chosen from the training loss (BCE + L2) alone with ``--pilot``
(which loads no mask and scores nothing): the first epoch at which, for every setting, the mean training
loss over the last W epochs is within 1 % of its mean over the W epochs before, rounded up to a multiple
of 10, with W the number of epochs holding at least 100 optimiser steps (coco128: 2 steps per epoch,
W = 50; ccp_voc: 30 steps per epoch, W = 4). (A first version of the rule used W = 5 epochs; on coco128's
2-step epochs it fired on noise at epoch 160 while the loss was still falling, so the window was defined
in steps before any mask was scored.) Outcome: coco128 → 390 epochs (780 steps; pilot of 400 epochs).
ccp_voc → 30 epochs (900 steps): the ccp_voc pilot (40 epochs planned) was killed by the shared machine
after epoch 30, so only its 10-epoch loss snapshots survived; from epoch 20 to 30 every setting's loss
changed by < 1 % except ``ratio_consecutive rho=0.8`` (−2.4 %, still falling), and 40 epochs would not
fit the ~10-minute budget of a run on 2 cores.

Caveat: these are small sets (the 126/803 scoring images) and one seed; they compare the pooling rules
with each other on the same features, not with published numbers. The ratio rules are APC's pooling as
*assumed* by this library (spec ``apc.md`` §3), not APC's published method.

Usage::

    python benchmarks/study_pooling.py --dataset coco128 --threads 2 --out runs/study_pooling/coco128.json
    python benchmarks/study_pooling.py --dataset ccp_voc --threads 2 --out runs/study_pooling/ccp_voc.json
    python benchmarks/study_pooling.py --dataset coco128 --pilot --epochs 300    # loss curves only
    python benchmarks/study_pooling.py --dataset coco128 --quick                  # tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402

from wsseg.layers import AdaptiveKPooling, PatchClassifier, adaptive_k_pooling  # noqa: E402
from wsseg.losses import PooledBCELoss  # noqa: E402
from wsseg.metrics import SegmentationMetric  # noqa: E402
from wsseg.training import vitpcm_pseudo_label  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# The settings — FIXED A PRIORI, before any pseudo label was scored or any mask looked at. Do not edit
# after seeing results; report every row. ``k=None`` in the last row means K = N (all patches: average
# pooling), a reference row.
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("max (ViT-PCM)", {"k_mode": "max"}),
    *[(f"fixed K={k}", {"k_mode": "fixed", "k": k}) for k in (2, 4, 8, 16, 32)],
    *[(f"ratio_to_max rho={r}", {"k_mode": "ratio_to_max", "rho": r, "k_min": 1, "k_max": None})
      for r in (0.9, 0.75, 0.5, 0.25)],
    *[(f"ratio_consecutive rho={r}", {"k_mode": "ratio_consecutive", "rho": r, "k_min": 1, "k_max": None})
      for r in (0.99, 0.95, 0.9, 0.8)],
    ("fixed K=N (average)", {"k_mode": "fixed", "k": None}),
]
# Epochs per dataset, chosen from the training loss only (``--pilot``, rule in the module docstring).
EPOCHS: dict[str, int] = {"coco128": 390, "ccp_voc": 30}
# ---------------------------------------------------------------------------------------------------------

BATCH = 64
SEED = 1234
QUICK_FIT, QUICK_SCORE, QUICK_EPOCHS = 16, 8, 2
PILOT_WINDOW_STEPS = 100   # the --pilot rule compares means over windows of >= 100 optimiser steps


def build_dataset(name: str, shared: Path, split: str):
    """The wsseg dataset of ``name`` (``coco128`` / ``ccp_voc``) and ``split``, native-size eval samples."""
    from wsseg.data import COCOSegmentation, VOCSegmentation, eval_transform, read_class_names

    if name == "coco128":
        return COCOSegmentation(shared / "data" / "coco128", split, classes="voc", skip_unlabeled=True,
                                crowd="ignore", transform=eval_transform(None))
    root = shared / "data" / "ccp_voc"
    return VOCSegmentation(root, split, mask_dir="SegmentationClass", cls_labels=root / "cls_labels.npy",
                           class_names=read_class_names(root / "class_names.txt", background=False),
                           transform=eval_transform(None))


SPLITS = {"coco128": ("train2017", "train2017"), "ccp_voc": ("train", "train_pixel")}


@torch.no_grad()
def extract(ds, count: int, size: int, weights: Path, batch: int = 16) -> dict[str, Any]:
    """Frozen final-norm patch tokens ``(n, 384, G, G)`` (float16), labels ``(n, K)`` and names."""
    from wsseg.backbones import TimmViTBackbone

    net = TimmViTBackbone("vit_small_patch14_dinov2", weights=str(weights), out_indices=(-1,)).eval()
    tokens, labels, names = [], [], []
    t0 = time.perf_counter()
    for start in range(0, count, batch):
        imgs = []
        for i in range(start, min(start + batch, count)):
            s = ds[i]
            # normalise-then-resize equals resize-then-normalise (both linear per channel)
            imgs.append(F.interpolate(s["image"][None], size=(size, size), mode="bilinear",
                                      align_corners=False, antialias=False))
            labels.append(s["label"])
            names.append(s["name"])
        tokens.append(net(torch.cat(imgs)).features[0].half())
        done = min(start + batch, count)
        print(f"\r  extracted {done}/{count} ({time.perf_counter() - t0:.0f} s)", end="", flush=True)
    print()
    return {"tokens": torch.cat(tokens), "labels": torch.stack(labels).float(), "names": names}


def cached_features(args, split: str, count: int) -> dict[str, Any]:
    tag = "_quick" if args.quick else ""
    path = Path(args.cache_dir) / f"feats_{args.dataset}_{split}_{args.size}{tag}.pt"
    if path.is_file():
        print(f"features: {path} (cached)")
        return torch.load(path)
    print(f"features: extracting {split} ({count} images) -> {path}")
    data = extract(build_dataset(args.dataset, args.shared, split), count, args.size, args.weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


def pooling_kwargs(kw: dict[str, Any], n: int) -> dict[str, Any]:
    kw = dict(kw)
    if kw["k_mode"] == "fixed" and kw["k"] is None:
        kw["k"] = n
    return kw


def dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Inverted dropout (as ``F.dropout`` / Keras ``Dropout``) with a mask from ``torch.rand``: ~3x faster on
    CPU than ``F.dropout``'s ``bernoulli_`` at these sizes, and drawn once per step for all settings."""
    keep = torch.rand(x.shape, generator=generator) >= p
    return x * keep * (1.0 / (1.0 - p))


def fit_all(tokens: torch.Tensor, labels: torch.Tensor, settings: list[tuple[str, dict[str, Any]]], epochs: int,
            lr: float) -> dict[str, tuple[PatchClassifier, list[float], list[float]]]:
    """Train one classifier per setting, all in lockstep on the same minibatches and the same dropout masks.

    ``tokens`` are channels-last ``(n, G, G, D)``. Every setting's classifier starts from the same weight
    (a seeded :class:`~wsseg.layers.PatchClassifier` ``(D, K + 1)``). For speed the S classifiers are trained
    as the S row blocks of one stacked ``PatchClassifier(D, S (K + 1), dropout=0)`` (one GEMM per step
    instead of S): block s gives setting s's logits, the per-patch softmax is taken within each block, and
    the loss is the sum over settings of BCE_s + L2_s (the stacked L2 penalty is the sum of the blocks'
    penalties). The blocks are disjoint and Adam is element-wise, so every block follows exactly the
    trajectory of a separately trained classifier. ViT-PCM's dropout 0.2 on the features is drawn once per
    step and shared. Returns, per setting, its classifier (the trained block) and the per-epoch mean losses
    (BCE, BCE + L2).
    """
    n, gh, gw, d = tokens.shape
    s_count, c = len(settings), labels.shape[1] + 1
    torch.manual_seed(SEED)
    init = PatchClassifier(d, c, dropout=0.0).weight.detach()      # the common initial weight
    stacked = PatchClassifier(d, s_count * c, dropout=0.0).train()
    with torch.no_grad():
        stacked.weight.copy_(init.repeat(s_count, 1))
    pools = [AdaptiveKPooling(**pooling_kwargs(kw, gh * gw)) for _, kw in settings]
    bce = PooledBCELoss(eps=1e-7)
    opt = torch.optim.Adam(stacked.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-7)
    y_bg = torch.cat([torch.ones(n, 1), labels], dim=1)
    gen = torch.Generator().manual_seed(SEED)     # minibatch order and dropout masks
    hist_bce: list[torch.Tensor] = []
    hist_tot: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for e in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        sum_bce, sum_tot, nb = torch.zeros(s_count), torch.zeros(s_count), 0
        for start in range(0, n, BATCH):
            idx = perm[start:start + BATCH]
            x = dropout(tokens[idx].float(), 0.2, gen).permute(0, 3, 1, 2)  # (B, D, G, G), channels-last memory
            probs = rearrange(stacked(x), "b (s c) h w -> s b c h w", s=s_count).softmax(dim=2)
            l_mce = torch.stack([bce(pool(probs[j]), y_bg[idx]) for j, pool in enumerate(pools)])
            l_reg = stacked.l2 * rearrange(stacked.weight, "(s c) d -> s (c d)", s=s_count).square().sum(dim=1)
            opt.zero_grad(set_to_none=True)
            (l_mce.sum() + l_reg.sum()).backward()
            opt.step()
            sum_bce += l_mce.detach()
            sum_tot += (l_mce + l_reg).detach()
            nb += 1
        hist_bce.append(sum_bce / nb)
        hist_tot.append(sum_tot / nb)
        if e % 10 == 0 or e == epochs:
            print(f"    epoch {e}/{epochs} ({time.perf_counter() - t0:.0f} s): loss (BCE + L2) "
                  + " ".join(f"{v:.3f}" for v in hist_tot[-1].tolist()), flush=True)
    out = {}
    hb, ht = torch.stack(hist_bce), torch.stack(hist_tot)          # (epochs, S)
    for j, (name, _) in enumerate(settings):
        clf = PatchClassifier(d, c, dropout=0.0)
        with torch.no_grad():
            clf.weight.copy_(stacked.weight[j * c:(j + 1) * c])
        out[name] = (clf, hb[:, j].tolist(), ht[:, j].tolist())
    return out


@torch.no_grad()
def score(clf: PatchClassifier, tokens: torch.Tensor, labels: torch.Tensor, masks: list[torch.Tensor],
          kw: dict[str, Any]) -> dict[str, float]:
    """mIoU of the CAM-free pseudo labels and the mean K chosen per present class."""
    clf.eval()
    k_cls = labels.shape[1]
    probs = torch.cat([clf(tokens[s:s + 256].float().permute(0, 3, 1, 2)).softmax(dim=1)
                       for s in range(0, len(tokens), 256)])
    n_patches = probs.shape[2] * probs.shape[3]
    kk = adaptive_k_pooling(probs, return_k=True, **pooling_kwargs(kw, n_patches)).k.float()
    present = labels > 0
    metric = SegmentationMetric(k_cls + 1, ignore_index=255)
    for i, mask in enumerate(masks):
        keep = torch.cat([torch.zeros(1, dtype=torch.long), present[i].nonzero()[:, 0] + 1])
        sub = vitpcm_pseudo_label(probs[i:i + 1, keep], torch.ones(1, len(keep) - 1), mask.shape)
        pl = keep[sub]
        if i < 3:                                 # the restriction to present classes changes nothing
            full = vitpcm_pseudo_label(probs[i:i + 1], labels[i:i + 1], mask.shape)
            assert torch.equal(full, pl), "restricted pseudo label differs from the full one"
        metric.update(pl, mask[None])
    res = metric.compute()
    return {"miou": 100.0 * float(res["miou"]), "mean_k_fg": float(kk[:, 1:][present].mean()),
            "mean_k_bg": float(kk[:, 0].mean()), "iou": [round(100.0 * float(v), 2) for v in res["iou"]]}


def suggest_epochs(curves: dict[str, list[float]], window: int, tol: float = 0.01) -> int | None:
    """First epoch at which every curve's mean over the last ``window`` epochs is within ``tol`` (relative) of
    its mean over the ``window`` epochs before, rounded up to a multiple of 10 (None if no such epoch)."""
    n = min(len(c) for c in curves.values())
    for e in range(2 * window, n + 1):
        ok = True
        for c in curves.values():
            prev = sum(c[e - 2 * window:e - window]) / window
            last = sum(c[e - window:e]) / window
            ok &= abs(prev - last) <= tol * abs(prev)
        if ok:
            return int(math.ceil(e / 10) * 10)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["coco128", "ccp_voc"], required=True)
    p.add_argument("--shared", type=Path, default=Path(os.environ.get("WSSEG_SHARED", "../shared")))
    p.add_argument("--weights", type=Path, default=None,
                   help="ViT-S/14 weights (default <shared>/weights/dinov2_vits14_imgfocus_fp16.pth)")
    p.add_argument("--size", type=int, default=224, help="square input side (a multiple of 14)")
    p.add_argument("--epochs", type=int, default=None, help="default: EPOCHS[dataset] (2 with --quick)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=os.path.join(REPO, "runs", "study_pooling"))
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--quick", action="store_true", help=f"tiny smoke run ({QUICK_FIT} fit / {QUICK_SCORE} "
                   f"scored images, {QUICK_EPOCHS} epochs)")
    p.add_argument("--pilot", action="store_true",
                   help="train every setting and print the loss curves only (no mask loaded, nothing scored)")
    args = p.parse_args(argv)
    if args.size % 14:
        p.error(f"--size: expected a multiple of 14, got {args.size}")
    args.weights = args.weights or args.shared / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS[args.dataset])
    if epochs < 1:
        p.error("--epochs: required (EPOCHS has no value for this dataset yet; run --pilot first)")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    fit_split, score_split = SPLITS[args.dataset]
    fit_ds = build_dataset(args.dataset, args.shared, fit_split)
    n_fit = min(QUICK_FIT, len(fit_ds)) if args.quick else len(fit_ds)
    feats = cached_features(args, fit_split, n_fit)
    t_feat = time.perf_counter() - t_start
    tokens, labels = feats["tokens"].permute(0, 2, 3, 1).contiguous(), feats["labels"]  # (n, G, G, D)
    n, gh, gw, d = tokens.shape
    print(f"{args.dataset}: fit on {fit_split} ({n} images, grid {gh}x{gw}, D={d}, K={labels.shape[1]}), "
          f"{epochs} epochs, lr {args.lr}")

    t0 = time.perf_counter()
    fitted = fit_all(tokens, labels, SETTINGS, epochs, args.lr)
    t_fit = time.perf_counter() - t0
    curves = {name: f[2] for name, f in fitted.items()}
    for name, (_, _, h_tot) in fitted.items():
        print(f"  fit {name:28s} loss {h_tot[0]:.4f} -> {h_tot[-1]:.4f}")
    print(f"  fit time (all settings in lockstep): {t_fit:.0f} s")

    if args.pilot:
        for name, c in curves.items():
            print(f"{name}: " + " ".join(f"{v:.4f}" for v in c))
        window = math.ceil(PILOT_WINDOW_STEPS / math.ceil(n / BATCH))
        sug = suggest_epochs(curves, window)
        print(f"suggested epochs ({window}-epoch means within 1 % for every setting, rounded up to 10): {sug}")
        out = {"dataset": args.dataset, "pilot": True, "epochs": epochs, "window": window, "curves": curves,
               "suggested": sug}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(out, indent=1))
        return out

    # scoring split: features from the fit cache by name where possible
    score_ds = build_dataset(args.dataset, args.shared, score_split)
    n_score = min(QUICK_SCORE, len(score_ds)) if args.quick else len(score_ds)
    pos = {nm: i for i, nm in enumerate(feats["names"])}
    if all(score_ds.names[i] in pos for i in range(n_score)):
        sel = torch.tensor([pos[score_ds.names[i]] for i in range(n_score)])
        s_tokens, s_labels = tokens[sel], labels[sel]
    else:
        sf = cached_features(args, score_split, n_score)
        s_tokens, s_labels = sf["tokens"].permute(0, 2, 3, 1).contiguous(), sf["labels"]
    masks = [torch.from_numpy(score_ds.load_mask(i).astype("int64")) for i in range(n_score)]
    for i in range(n_score):                      # the labels used for merging are the scoring set's own
        assert torch.equal(torch.from_numpy(score_ds.get_label(i)).float(), s_labels[i])

    rows = []
    for name, kw in SETTINGS:
        clf, h_bce, h_tot = fitted[name]
        t0 = time.perf_counter()
        r = score(clf, s_tokens, s_labels, masks, kw)
        rows.append({"setting": name, "pooling": pooling_kwargs(kw, gh * gw), **r, "final_loss_bce": h_bce[-1],
                     "final_loss_total": h_tot[-1], "score_s": time.perf_counter() - t0,
                     "loss_curve": h_tot})

    print(f"\n{args.dataset}: fit {fit_split} ({n} images), score {score_split} ({n_score} images), "
          f"size {args.size}, {epochs} epochs, lr {args.lr}, batch {BATCH}, seed {SEED}\n")
    print("| setting | mIoU (%) | mean K (present classes) | mean K (background) | final train loss (BCE / +L2) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setting']} | {r['miou']:.2f} | {r['mean_k_fg']:.1f} | {r['mean_k_bg']:.1f} | "
              f"{r['final_loss_bce']:.4f} / {r['final_loss_total']:.4f} |")
    total = time.perf_counter() - t_start
    print(f"\ntime: features {t_feat:.0f} s, fit (all settings) {t_fit:.0f} s, total {total:.0f} s")
    out = {"dataset": args.dataset, "fit_split": fit_split, "score_split": score_split, "n_fit": n,
           "n_score": n_score, "size": args.size, "grid": [gh, gw], "epochs": epochs, "lr": args.lr,
           "batch": BATCH, "seed": SEED, "threads": args.threads, "quick": args.quick,
           "feature_s": t_feat, "fit_s": t_fit, "total_s": total, "command": [os.path.basename(__file__), *(argv or sys.argv[1:])],
           "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
