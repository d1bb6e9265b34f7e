#!/usr/bin/env python
"""Cost of one ViT-PCM and one APC training iteration on CPU, broken down by phase (Markdown table).

Backbone ViT-S/14 (``vit_small_patch14_dinov2``, random init — weights do not change the cost), view 1 at
crop 224 (16 × 16 patches), view 2 at 112 (the 2 × 2 mosaic is 224), the official HV-BiLSTM (hidden 192) and
5 trainable blocks, after the warm-up stage (the encoder tail receives gradients). APC adds ratio-to-max
pooling (ρ = 0.5, an arbitrary setting: the cost does not depend on it), the margin patch contrast and the
decoder loss. Phases, in execution order (:class:`wsseg.training.ViTPCMTrainingStep` /
:class:`wsseg.training.APCTrainingStep`):

* ``target pass``: view 1 in inference mode, no gradient;
* ``forward (view 1 + mosaic)``: the training-mode call on view 1 and the mosaic of view 2;
* ``ViT-PCM losses``: pooled BCE, L2, the grid transform + merge + equivariance CE;
* ``APC terms``: merge of the target, patch contrast, decoder pseudo label and loss (APC only);
* ``backward``: ``loss.backward()``.

The phased computation is checked against the library step (same inputs and RNG state → same loss) before
timing. Time: median over ``--repeats`` iterations after one warm-up. Peak memory: each case runs in its own
subprocess and reports the increase of the peak RSS over the RSS before its first iteration.

    OMP_NUM_THREADS=2 python benchmarks/bench_apc_iteration.py [--batch 4 8] [--crop 224] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks._iteration import measure, print_phase_table, run_cases, ticker  # noqa: E402

PHASES = ["target pass", "forward (view 1 + mosaic)", "ViT-PCM losses", "APC terms", "backward"]


def phased_step(method, model, batch, timings, apc: bool):
    """``ViTPCMTrainingStep.forward_losses`` (+ the APC terms) re-written with a timer around every phase."""
    from wsseg.layers import mosaic_2x2, patch_grid_view1_to_view2, unmosaic_2x2
    from wsseg.pseudo import merge_class_labels

    step_fn, r = method.step_fn, method.recipe
    x1, y = batch["image"], batch["label"]

    tick = ticker(timings)
    t = time.perf_counter()
    model.encoder_grad = True
    y_bg = torch.cat([torch.ones_like(y[:, :1]), y], dim=1)
    target = step_fn.target_pass(model, x1)
    t = tick("target pass", t)
    out, out_m = model(x1, mosaic_2x2(batch["image_view2"]))
    t = tick("forward (view 1 + mosaic)", t)
    loss = r.w_mce * step_fn.bce(out.pooled, y_bg) + r.w_reg * model.l2_penalty()
    p2 = unmosaic_2x2(out_m.patch_probs)
    y2 = merge_class_labels(patch_grid_view1_to_view2(target.patch_probs, batch["flips_view1"], batch["flips_view2"],
                                                      batch["crop_box_view2"], out_size=p2.shape[-1]), y_bg)
    loss = loss + r.w_et * step_fn.et_loss(p2, y2)
    t = tick("ViT-PCM losses", t)
    if apc:
        merged = merge_class_labels(target.patch_probs, y_bg)
        conf, labels = merged.max(dim=1)
        loss = loss + r.w_pcl * step_fn.pcl(out.embeddings, labels, None)
        pl = step_fn.seg_pseudo_label(merged, x1.shape[-2:], None)
        loss = loss + r.w_seg * step_fn.seg_loss(out.seg, pl)
    t = tick("APC terms", t)
    loss.backward()
    tick("backward", t)
    return loss.detach()


def _batch(batch_size: int, crop: int, patch: int):
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(batch_size, 20)
    y[:, 14] = 1
    y[0, 11] = 1
    grid = crop // patch
    boxes = torch.tensor([[0, 0, grid, grid]] * batch_size)
    boxes[0] = torch.tensor([2, 3, 2 + grid // 3, 3 + grid // 3])                    # one cropped view 2
    flips = torch.rand(batch_size, 3, generator=g) < 0.5
    return {"image": torch.randn(batch_size, 3, crop, crop, generator=g), "label": y,
            "image_view2": torch.randn(batch_size, 3, crop // 2, crop // 2, generator=g),
            "flips_view1": flips, "flips_view2": flips.roll(1, dims=0), "crop_box_view2": boxes}


def run_case(batch_size: int, crop: int, repeats: int, backbone: str, apc: bool) -> dict:
    from wsseg.training import APCMethod, APCRecipe, ViTPCMMethod, ViTPCMRecipe

    torch.manual_seed(0)
    patch = 14 if "patch14" in backbone else 16
    common = dict(crop_size=crop, patch_size=patch, batch_size=batch_size, stage_a_iters=0)
    if apc:
        method = APCMethod(APCRecipe(**common, k_mode="ratio_to_max", rho=0.5, w_pcl=1.0, w_seg=1.0, seg_start_iters=0))
        model = method.build_model(20, backbone=backbone, decoder_dim=256).train()
    else:
        method = ViTPCMMethod(ViTPCMRecipe(**common))
        model = method.build_model(20, backbone=backbone).train()
    batch = _batch(batch_size, crop, patch)
    row = measure(lambda timings: phased_step(method, model, batch, timings, apc),
                  lambda: method.training_step(model, batch, step=1)[0], repeats,
                  lambda: model.zero_grad(set_to_none=True))
    return {"batch": batch_size, "crop": crop, "method": "apc" if apc else "vitpcm", **row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[4, 8])
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "B,apc"
    args = p.parse_args()
    if args.case is not None:
        b, apc = args.case.split(",")
        print(json.dumps(run_case(int(b), args.crop, args.repeats, args.backbone, apc == "1")))
        return
    cases = [["--case", f"{b},{apc}", "--crop", str(args.crop), "--repeats", str(args.repeats), "--backbone",
              args.backbone] for b in args.batch for apc in (0, 1)]
    rows = run_cases(__file__, cases)
    print_phase_table(f"One ViT-PCM / APC iteration on CPU ({args.backbone}, crop {args.crop}, {rows[0]['threads']} "
                      f"threads, median of {args.repeats}; seconds, share of the total in parentheses)", rows, PHASES,
                      lambda r: f"{r['method']} batch {r['batch']}")

if __name__ == "__main__":
    main()
