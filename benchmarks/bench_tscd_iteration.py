#!/usr/bin/env python
"""Cost of one TSCD training iteration on CPU, broken down by phase (Markdown table).

Backbone ViT-S/14 (``vit_small_patch14_dinov2``, random init — weights do not change the cost), crop 224,
batch 2 and 4, the official recipe after ``cam_iters`` (every term active). Phases, in execution order:

* ``forward``: forward pass with gradients on the crop (cls, seg, attention, affinity);
* ``cam passes``: teacher multi-scale CAM of the crop (3 scales × {image, flip}, no grad);
* ``second view``: the 0.3× view's forward with gradients and its teacher CAM;
* ``scd``: the self-correspondence distillation loss;
* ``varm label``: the VARM dual-threshold pseudo label (two thresholds, 10 VARM iterations, crop/2);
* ``aff+seg loss``: affinity label + loss and balanced segmentation loss;
* ``energy loss``: dense CRF energy loss (forward; its official gradient is cached for backward), with the
  default permutohedral-lattice filter or, with ``--energy-backend dense``, the exact dense Gaussian;
* ``backward``: ``loss.backward()``.

The phased computation is checked against :class:`wsseg.training.TSCDTrainingStep` (same RNG state →
same loss, ``allclose``) before timing. Time: median over ``--repeats`` iterations after one warm-up.
Peak memory: each case runs in its own subprocess and reports the increase of the peak RSS
(``resource.getrusage(...).ru_maxrss``) over the RSS before its first iteration (model and inputs
already allocated).

    OMP_NUM_THREADS=2 python benchmarks/bench_tscd_iteration.py [--batch 2 4] [--crop 224] [--repeats 3]
        [--energy-backend permutohedral|dense]
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

PHASES = ["forward", "cam passes", "second view", "scd", "varm label", "aff+seg loss", "energy loss", "backward"]


def phased_step(model, step_fn, batch, timings):
    """TSCDTrainingStep.__call__ (after cam_iters) re-written with a timer around every phase."""
    from wsseg.pseudo import affinity_label
    from wsseg.training.tscd import _token_grid, _upsample
    from wsseg.utils.image import denormalize

    r = step_fn.recipe
    x, y, valid = batch["image"], batch["label"], batch["valid"]
    H, W = x.shape[-2:]

    tick = ticker(timings)
    t = time.perf_counter()
    out = model(x)
    l_cls = F.multilabel_soft_margin_loss(out.cls, y)
    t = tick("forward", t)
    cam = step_fn.teacher_cam(model, x)
    seg = _upsample(out.seg, (H, W))
    t = tick("cam passes", t)
    x2 = F.interpolate(x, scale_factor=r.scd_scale, mode="bilinear", align_corners=True)
    out2 = model(model.fit_input(x2))
    cam2 = step_fn.teacher_cam(model, x2)
    seg2 = _upsample(out2.seg, x2.shape[-2:])
    t = tick("second view", t)
    l_scd = step_fn.scd_loss(cam, cam2, seg, seg2)
    t = tick("scd", t)
    pseudo = step_fn.pseudo_label_from_cam(cam, x, y, valid)
    t = tick("varm label", t)
    aff_t = affinity_label(pseudo, stride=model.stride, radius=r.aff_radius, grid_size=_token_grid(model, out.aff, x))
    l_aff = step_fn.aff_loss(out.aff, aff_t)
    l_seg = step_fn.seg_loss(seg, pseudo)
    t = tick("aff+seg loss", t)
    img255 = denormalize(x.float(), mode="float") * 255.0
    l_reg = step_fn.energy_loss(torch.softmax(seg.float(), dim=1), img255, valid, pseudo)
    t = tick("energy loss", t)
    loss = (r.w_cls * l_cls + r.w_scd * l_scd + r.w_aff * l_aff + r.w_seg * l_seg + r.w_reg * l_reg)
    loss.backward()
    tick("backward", t)
    return loss.detach()


def run_case(batch_size: int, crop: int, repeats: int, backbone: str, energy_backend: str) -> dict:
    import wsseg
    from wsseg.training import TSCDRecipe, TSCDTrainingStep

    torch.manual_seed(0)
    model = wsseg.create_model("tscd", backbone=backbone, num_classes=20).train()
    recipe = TSCDRecipe(crop_size=crop, batch_size=batch_size, cam_iters=0)
    step_fn = TSCDTrainingStep(recipe)
    step_fn.energy_loss.backend = energy_backend
    labels = torch.zeros(batch_size, 20)
    labels[:, 14] = 1
    labels[0, 11] = 1
    batch = {"image": torch.randn(batch_size, 3, crop, crop), "label": labels,
             "valid": torch.ones(batch_size, crop, crop, dtype=torch.bool)}
    row = measure(lambda timings: phased_step(model, step_fn, batch, timings),
                  lambda: step_fn(model, batch, step=1)[0], repeats, lambda: model.zero_grad(set_to_none=True))
    return {"batch": batch_size, "crop": crop, **row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--energy-backend", choices=("permutohedral", "dense"), default="permutohedral")
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # internal: run one case
    args = p.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.case, args.crop, args.repeats, args.backbone, args.energy_backend)))
        return
    cases = [["--case", str(b), "--crop", str(args.crop), "--repeats", str(args.repeats), "--backbone", args.backbone,
              "--energy-backend", args.energy_backend] for b in args.batch]
    rows = run_cases(__file__, cases)
    print_phase_table(f"One TSCD iteration on CPU ({args.backbone}, crop {args.crop}, {rows[0]['threads']} threads, "
                      f"energy backend {args.energy_backend}, median of {args.repeats}; seconds, share of the total "
                      "in parentheses)", rows, PHASES, lambda r: f"batch {r['batch']}")

if __name__ == "__main__":
    main()
