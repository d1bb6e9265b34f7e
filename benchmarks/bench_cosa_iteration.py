#!/usr/bin/env python
"""Cost of one CoSA training iteration on CPU, broken down by phase (Markdown table).

Backbone ViT-S/14 (``vit_small_patch14_dinov2``, random init — weights do not change the cost), crop 224,
batch 2 and 4, the released recipe after the loss warm-up (every term active). Phases, in execution order:

* ``teacher passes``: the EMA teacher on the weak view, scales (1.0, 0.5, 1.5) × {image, flip}, no grad
  (:func:`wsseg.layers.cosa_teacher_inference`: forwards + fusion);
* ``cpl``: main and aux CAM pseudo labels (:func:`wsseg.pseudo.dual_threshold_pseudo_label`, no refiner);
* ``student forward``: the student on the strong view with gradients, both classification losses;
* ``swap losses``: :class:`wsseg.losses.SwappedAssignmentLoss` (c2s on the upsampled logits, SPL, s2c);
* ``energy loss``: :class:`wsseg.losses.DenseEnergyLoss` (permutohedral lattice, scale 0.5);
* ``backward``: ``loss.backward()``;
* ``ema update``: :func:`wsseg.training.ema_update_`.

A second column group, ``official formulation``, replaces the teacher fusion and the CPL builder by the
straightforward transcriptions of the official code in ``tests/reference`` (``multi_scale_camseg`` with its
per-scale loop, ``cam_validation`` per image, ``cam2mask`` per image and threshold) and the EMA update by
the official per-parameter loop; everything else is shared.

The phased computation is checked against :class:`wsseg.training.CoSATrainingStep` (same inputs → same
loss, ``allclose``) before timing. Time: median over ``--repeats`` iterations after one warm-up. Peak
memory: each case runs in its own subprocess and reports the increase of the peak RSS over the RSS before
its first iteration (both networks and the inputs already allocated).

    OMP_NUM_THREADS=2 python benchmarks/bench_cosa_iteration.py [--batch 2 4] [--crop 224] [--repeats 3]
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

PHASES = ["teacher passes", "cpl", "student forward", "swap losses", "energy loss", "backward", "ema update"]


def phased_step(method, student, batch, timings, official: bool = False):
    """CoSATrainingStep.__call__ (after the loss warm-up) re-written with a timer around every phase."""
    from wsseg.pseudo import dual_threshold_pseudo_label
    from wsseg.training import ema_update_
    from wsseg.utils.image import denormalize

    step_fn, r, teacher = method.step_fn, method.recipe, method.teacher
    x_w, x_s, y, valid = batch["image"], batch["image_strong"], batch["label"], batch["valid"]

    tick = ticker(timings)
    t = time.perf_counter()
    with torch.no_grad():
        if official:
            from tests.reference.official_cosa_teacher import (
                official_cam_validation,
                official_multi_scale_camseg,
            )

            def model_fn(x):
                o = teacher(teacher.fit_input(x))
                return o.seg, o.cam, o.cam_aux

            cam, cam_aux, seg_t = official_multi_scale_camseg(model_fn, x_w, r.pseudo_scales)
            cam, cam_aux = official_cam_validation(cam, y), official_cam_validation(cam_aux, y)
        else:
            out_t = step_fn.teacher_outputs(teacher, x_w, y)
            cam, cam_aux, seg_t = out_t.cam, out_t.cam_aux, out_t.seg_logits
    t = tick("teacher passes", t)
    if official:
        from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label as cpl_fn
    else:
        cpl_fn = dual_threshold_pseudo_label
    kw = dict(valid=valid, down_scale=r.pseudo_down_scale)
    cpl = cpl_fn(cam, y, high=r.high, low=r.low, **kw)
    cpl_aux = cpl_fn(cam_aux, y, high=r.high_aux, low=r.low_aux, **kw)
    t = tick("cpl", t)
    out = student(x_s)
    loss = r.w_cls * F.multilabel_soft_margin_loss(out.cls, y) + r.w_cls_aux * F.multilabel_soft_margin_loss(out.cls_aux, y)
    t = tick("student forward", t)
    terms = step_fn.swap_loss(out.seg, out.cam, cpl, seg_t, y, cpl_aux)
    loss = loss + terms.total
    t = tick("swap losses", t)
    seg = F.interpolate(out.seg, size=x_s.shape[-2:], mode="bilinear", align_corners=False)
    img255 = denormalize(x_s.float(), mode="float") * 255.0
    loss = loss + r.w_reg * step_fn.energy_loss(torch.softmax(seg.float(), dim=1), img255, valid, cpl)
    t = tick("energy loss", t)
    loss.backward()
    t = tick("backward", t)
    if official:
        with torch.no_grad():
            for p_s, p_t in zip(student.parameters(), teacher.parameters(), strict=True):
                p_t.data.mul_(r.ema_momentum).add_((1 - r.ema_momentum) * p_s.detach().data)
    else:
        ema_update_(teacher, student, momentum=r.ema_momentum)
    tick("ema update", t)
    return loss.detach()


def run_case(batch_size: int, crop: int, repeats: int, backbone: str, official: bool) -> dict:
    from wsseg.training import CoSAMethod, CoSARecipe

    torch.manual_seed(0)
    method = CoSAMethod(CoSARecipe(crop_size=crop, batch_size=batch_size, loss_warmup_iters=0))
    student = method.build_model(20, backbone=backbone).train()
    method.setup(student, torch.device("cpu"))
    labels = torch.zeros(batch_size, 20)
    labels[:, 14] = 1
    labels[0, 11] = 1
    x = torch.randn(batch_size, 3, crop, crop)
    batch = {"image": x, "image_strong": x + 0.1 * torch.randn_like(x), "label": labels,
             "valid": torch.ones(batch_size, crop, crop, dtype=torch.bool)}
    teacher_state = {k: v.clone() for k, v in method.teacher.state_dict().items()}

    def reset():  # the phased step updates the EMA teacher: start every call from the same one
        student.zero_grad(set_to_none=True)
        method.teacher.load_state_dict(teacher_state)

    row = measure(lambda timings: phased_step(method, student, batch, timings, official=official),
                  lambda: method.training_step(student, batch, step=1)[0], repeats, reset)
    return {"batch": batch_size, "crop": crop, "official": official, **row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[2, 4])
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "B,official"
    args = p.parse_args()
    if args.case is not None:
        b, off = args.case.split(",")
        print(json.dumps(run_case(int(b), args.crop, args.repeats, args.backbone, off == "1")))
        return
    cases = [["--case", f"{b},{off}", "--crop", str(args.crop), "--repeats", str(args.repeats), "--backbone",
              args.backbone] for b in args.batch for off in (0, 1)]
    rows = run_cases(__file__, cases)
    print_phase_table(f"One CoSA iteration on CPU ({args.backbone}, crop {args.crop}, {rows[0]['threads']} threads, "
                      f"median of {args.repeats}; seconds, share of the total in parentheses)", rows, PHASES,
                      lambda r: f"batch {r['batch']} {'official formulation' if r['official'] else 'wsseg'}")

if __name__ == "__main__":
    main()
