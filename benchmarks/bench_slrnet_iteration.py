#!/usr/bin/env python
"""Cost of one SLRNet training iteration on CPU, broken down by phase (Markdown table).

Backbones: ViT-S/14 (``vit_small_patch14_dinov2``) and WideResNet-38 (``resnet38d``, the official one),
random init (weights do not change the cost), crop 224, batch 2 and 4, the official recipe after the
warm-up epochs (every term active). Phases, in execution order (:class:`wsseg.training.SLRNetTrainingStep`):

* ``forward (2 views)``: the network on the crop and its 0.5× view, the shared low-rank factorisation;
* ``classification``: softmax, nGWP scores and the multilabel soft margin loss of the three heads;
* ``consistency``: ``inverse_view`` of the view-2 outputs, mask and code consistency losses;
* ``pseudo label``: :class:`wsseg.pseudo.SLRNetPseudoLabel` (PAMR, 10 steps, 6 dilations; thresholds);
* ``gated CE``: :class:`wsseg.losses.GatedClassBalancedCE` on the three heads;
* ``backward``: ``loss.backward()``.

The phased computation is checked against :class:`wsseg.training.SLRNetTrainingStep` (same inputs, same
RNG state → same loss) before timing. Time: median over ``--repeats`` iterations after one warm-up. Peak
memory: each case runs in its own subprocess and reports the increase of the peak RSS over the RSS before
its first iteration (network and inputs already allocated).

    OMP_NUM_THREADS=2 python benchmarks/bench_slrnet_iteration.py [--batch 2 4] [--crop 224] [--repeats 3]
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
import torch.nn.functional as F  # noqa: E402

from benchmarks._iteration import measure, print_phase_table, run_cases, ticker  # noqa: E402

PHASES = ["forward (2 views)", "classification", "consistency", "pseudo label", "gated CE", "backward"]


def phased_step(method, model, batch, timings):
    """SLRNetTrainingStep.__call__ (after the warm-up) re-written with a timer around every phase."""
    from wsseg.layers import inverse_view, ngwp_score

    step_fn, r = method.step_fn, method.recipe
    x1, y, valid = batch["image"], batch["label"], batch["valid"]

    tick = ticker(timings)
    t = time.perf_counter()
    x2, flip = step_fn.views(x1, model)
    out = model(x1, x2)
    t = tick("forward (2 views)", t)
    p1, p2, p_aux = (o.softmax(dim=1) for o in (out.seg_logits1, out.seg_logits2, out.aux_logits))

    def cls(logits, probs):
        return F.multilabel_soft_margin_loss(ngwp_score(logits, probs), y)

    loss = r.w_cls * (cls(out.seg_logits1, p1) + cls(out.seg_logits2, p2) + r.aux_weight * cls(out.aux_logits, p_aux))
    t = tick("classification", t)
    grid = out.seg_logits1.shape[-2:]
    p2_inv = inverse_view(p2, grid, flip=flip)
    loss = loss + r.w_mask * step_fn.mask_loss(p1, p2_inv, y)
    loss = loss + r.w_code * step_fn.code_loss(out.codes1, inverse_view(out.codes2, grid, flip=flip))
    t = tick("consistency", t)
    pl = step_fn.pseudo_label((p1 + p2_inv) / 2.0, x1, y, valid)
    t = tick("pseudo label", t)
    seg2_inv = inverse_view(out.seg_logits2, grid, flip=flip)
    l_seg = (step_fn.seg_loss(out.seg_logits1, pl, y) + step_fn.seg_loss(seg2_inv, pl, y)
             + r.aux_weight * step_fn.seg_loss(out.aux_logits, pl, y))
    loss = loss + r.w_seg * l_seg
    t = tick("gated CE", t)
    loss.backward()
    tick("backward", t)
    return loss.detach()


def run_case(batch_size: int, crop: int, repeats: int, backbone: str) -> dict:
    from wsseg.training import SLRNetMethod, SLRNetRecipe

    torch.manual_seed(0)
    method = SLRNetMethod(SLRNetRecipe(crop_size=crop, batch_size=batch_size, seg_start_iters=0))
    model = method.build_model(20, backbone=backbone).train()
    labels = torch.zeros(batch_size, 20)
    labels[:, 14] = 1
    labels[0, 11] = 1
    x = torch.randn(batch_size, 3, crop, crop)
    x = model.fit_input(x)  # the backbone's input multiple (224 already fits both backbones)
    batch = {"image": x, "label": labels, "valid": torch.ones(batch_size, *x.shape[-2:], dtype=torch.bool)}
    row = measure(lambda timings: phased_step(method, model, batch, timings),
                  lambda: method.training_step(model, batch, step=1)[0], repeats,
                  lambda: model.zero_grad(set_to_none=True))
    return {"batch": batch_size, "crop": crop, "backbone": backbone, **row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", nargs="+", default=["vit_small_patch14_dinov2", "resnet38d"])
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "B,backbone"
    args = p.parse_args()
    if args.case is not None:
        b, bb = args.case.split(",")
        print(json.dumps(run_case(int(b), args.crop, args.repeats, bb)))
        return
    cases = [["--case", f"{b},{bb}", "--crop", str(args.crop), "--repeats", str(args.repeats)]
             for bb in args.backbone for b in args.batch]
    rows = run_cases(__file__, cases)
    print_phase_table(f"One SLRNet iteration on CPU (crop {args.crop}, {rows[0]['threads']} threads, median of "
                      f"{args.repeats}; seconds, share of the total in parentheses)", rows, PHASES,
                      lambda r: f"{r['backbone']} batch {r['batch']}")

if __name__ == "__main__":
    main()
