#!/usr/bin/env python
"""One training iteration against the official loop body: wsseg's engine step vs a transcription of the official
code, same weights, same batch, side by side in one process (Markdown tables).

For each method (``--method tscd|cosa|slrnet|all``):

* **official**: the official loop body transcribed in ``benchmarks/_official_loops.py`` (forward passes, teacher
  / multi-scale CAM passes, pseudo labels, every loss term, ``backward``; CoSA also the EMA update), on the
  re-written official networks of ``tests/reference`` (``OfficialTSCD`` with the official drop-path,
  ``OfficialCoSA`` ×2, ``OfficialSLRNet``);
* **wsseg**: the library step as the engine runs it (:class:`~wsseg.training.TSCDTrainingStep`,
  :class:`~wsseg.training.CoSAMethod` ``training_step`` + ``after_optimizer_step`` with its EMA teacher,
  :class:`~wsseg.training.SLRNetTrainingStep`) and ``backward``, on ``wsseg.create_model(...)`` loaded with the
  official network's weights through :func:`wsseg.models.convert_official_state_dict`.

Random official-layout weights (``tests/test_official_checkpoints.py`` ``random_state``; the cost does not
depend on them). The dense-CRF energy term (TSCD, CoSA) is wsseg's :class:`~wsseg.losses.DenseEnergyLoss` on
both sides: the official layer is a compiled C++ lattice (see ``_official_loops.py``).

1. **Equality** first, from the same RNG state (``torch.manual_seed``) on both sides with every random draw on
   (drop-path, dropout, SCD grids, stochastic gate; TSCD and SLRNet also check that both sides made the same
   number of draws): the losses (TSCD: minus the official inert ``0.1·L_er``, which has no gradient and which
   wsseg does not compute) must be ``allclose`` (rtol 1e-4) and the worst relative gradient difference over all
   trainable tensors (max |Δ| / max |g_official| per tensor) is reported; tensors whose exact gradient is 0
   (rounding noise on both sides) are counted apart. CoSA also reports the teacher after the EMA update and the
   number of differing CPL pixels. CoSA's ``decoder.conv6.weight`` differs by a few 1e-3 at ViT-B/16 size:
   its inputs (the final tokens and the gradient of the head's output) agree to 5e-7, but the float64
   recomputation of that weight gradient from either side's inputs differs by the same amount — pre-activations
   within rounding distance of the two ReLU kinks switch, an ill-conditioned quantity, not a formulation
   difference. ``--float64`` builds both sides in float64 and runs only this check: the float32 differences
   (TSCD ~7e-5 in the head's projections, SLRNet ~4e-4 in ``factorization.transform1``, CoSA's ``conv6``) fall
   to 6e-11 / 6e-15 / 3e-10, i.e. they are rounding, not formulation. ``--no-check`` skips the check,
   ``--verbose`` lists the 8 largest differences.
2. **Timing**: one warm-up of each side, then ``--repeats`` rounds in which the official and the wsseg
   iteration run alternately (who goes first alternates too; gradients zeroed between calls, outside the timed
   region); the median wall-clock time of each, and the median process CPU time (``time.process_time``: on a
   shared machine the steadier figure with ``--threads 1``; with more threads it also counts OpenMP spinning).
3. ``--profile``: ``torch.profiler`` on one more iteration of each side: the top ``--top`` ops by self CPU
   time, the count / self time of the copy-like ops (``aten::copy_``, ``cat``, ``repeat`` move data;
   ``clone``, ``contiguous``, ``reshape``, ``to`` dispatch to ``copy_``) and, with ``--copy-sites N`` (default
   10), the N call sites whose ``copy_`` / ``cat`` cost the most (innermost Python frame, and the repository
   function that called it when that frame is in timm / torch; frames are shown as ``file(line of the def)``).

Sizes (defaults, the issue's settings): TSCD MiT-B1 crop 256 batch 2, every term active (after ``cam_iters``);
CoSA ViT-B/16 (random init) crop 224 batch 2 after the loss warm-up; SLRNet WideResNet-38 crop 161 batch 2,
segmentation loss on. ``--quick``: tiny networks and crops (a smoke test, seconds).

    python benchmarks/bench_official_iteration.py --method all --threads 2 --repeats 5 [--profile] [--quick]
        [--no-check] [--no-time] [--verbose] [--top 12] [--copy-sites 10] [--keep-freed-memory]
    python benchmarks/bench_official_iteration.py --method all --float64     # equality in float64 only
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
from torch import nn  # noqa: E402

COPY_OPS = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::_to_copy", "aten::to",
            "aten::repeat", "aten::index_put_", "aten::expand_as", "aten::_unsafe_view", "aten::reshape")
COPY_KERNELS = ("aten::copy_", "aten::cat", "aten::repeat")  # ops whose self time is actual data movement
VERBOSE = False  # --verbose: list the tensors with the largest gradient differences


@dataclass
class Case:
    """One method's two sides: ``official()`` / ``ours()`` run one iteration (forward + backward [+ EMA])."""

    method: str
    setting: str
    official: Callable[[], torch.Tensor]
    ours: Callable[[], torch.Tensor]
    reset: Callable[[], None]
    check: Callable[[], dict] = field(default=lambda: {})


def _labels(b: int, k: int) -> torch.Tensor:
    y = torch.zeros(b, k)
    y[:, min(14, k - 1)] = 1
    y[0, min(11, k - 2)] = 1
    if b > 1:
        y[1, 0] = 1
    return y


def _image(b: int, size: int, seed: int) -> torch.Tensor:
    """A normalised image batch with smooth structure, de-normalising into [0, 255] (for VARM's uint8 cast)."""
    from tests.reference.official_denormalize import OFFICIAL_MEAN_255, OFFICIAL_STD_255

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, max(2, size // 16), max(2, size // 16), generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    img = (0.8 * img + 0.2 * torch.rand(b, 3, size, size, generator=g)).clamp(0, 1) * 250.0 + 2.0
    mean = torch.tensor(OFFICIAL_MEAN_255).view(1, 3, 1, 1)
    std = torch.tensor(OFFICIAL_STD_255).view(1, 3, 1, 1)
    return (img - mean) / std


def _grad_pairs(method: str, ref: nn.Module, net: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(wsseg name, wsseg param, official param)`` for every trainable wsseg parameter (the conversion keeps the
    tensor objects, so the official tensor of each wsseg key is found by identity)."""
    from wsseg.models.official import convert_official_state_dict

    converted = convert_official_state_dict(method, ref.state_dict(keep_vars=True), model=net)
    official_ids = {id(p) for p in ref.parameters()}
    pairs = []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        q = converted[name]
        assert id(q) in official_ids, name
        pairs.append((name, p, q))
    return pairs


def _worst_grad(pairs) -> dict:
    """Worst ``max|g_wsseg - g_official| / max|g_official|`` over the trainable tensors.

    Tensors whose official gradient is below 1e-6 of the model's largest gradient on both sides are counted
    apart (``zero_grads``, with the largest value seen): their exact gradient is 0 (e.g. the biases in front of
    a train-mode BatchNorm) and what is left is rounding noise (~1e-9), whose relative difference means nothing.
    """
    live = [(name, p, q) for name, p, q in pairs if p.grad is not None or q.grad is not None]
    for name, p, q in live:
        if (p.grad is None) != (q.grad is None) and (p.grad if p.grad is not None else q.grad).abs().max() > 0:
            return {"grads": 0, "worst_rel_grad": float("inf"), "worst_at": name + " (gradient on one side only)",
                    "zero_grads": 0, "zero_grads_max_abs": 0.0}
    live = [(name, p, q) for name, p, q in live if p.grad is not None and q.grad is not None]
    floor = 1e-6 * max(float(q.grad.abs().max()) for _, _, q in live)
    zero, zero_max, rel = 0, 0.0, []
    for name, p, q in live:
        gq, gp = float(q.grad.abs().max()), float(p.grad.abs().max())
        if gq < floor and gp < floor:
            zero, zero_max = zero + 1, max(zero_max, gq, gp)
            continue
        rel.append((float((p.grad - q.grad).abs().max()) / gq, name))
    rel.sort(reverse=True)
    if VERBOSE:
        print("  worst relative gradient differences: " + ", ".join(f"{n} {r:.1e}" for r, n in rel[:8]))
    return {"grads": len(live), "worst_rel_grad": rel[0][0], "worst_at": rel[0][1], "zero_grads": zero,
            "zero_grads_max_abs": zero_max}


def _zero(*nets: nn.Module) -> None:
    for n in nets:
        n.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------ TSCD
def tscd_case(quick: bool) -> Case:
    from benchmarks._official_loops import (
        add_official_drop_path,
        official_mask_by_radius,
        official_tscd_iteration,
    )
    from tests.reference.official_tscd_net import OfficialTSCD
    from tests.test_official_checkpoints import random_state, tscd_official_shapes
    from wsseg import create_model
    from wsseg.models.official import convert_official_state_dict
    from wsseg.training import TSCDRecipe, TSCDTrainingStep

    if quick:
        dims, heads, depths, srs, embed, k, crop, b, backbone = (32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2), \
            (8, 4, 2, 1), 32, 4, 224, 1, "mit_b0"  # >= 214: the 0.15x CAM pass must reach sr 8
    else:
        dims, heads, depths, srs, embed, k, crop, b, backbone = (64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 2, 2), \
            (8, 4, 2, 1), 256, 20, 256, 2, "mit_b1"
    state = random_state(tscd_official_shapes(dims, depths, srs, heads[3], embed, k), seed=0)
    ref = add_official_drop_path(OfficialTSCD(dims, heads, depths, srs, num_classes=k + 1, embedding_dim=embed))
    ref.load_state_dict(state, strict=True)
    net = create_model("tscd", backbone=backbone, num_classes=k, decoder_dim=embed)
    net.load_state_dict(convert_official_state_dict("tscd", state, model=net), strict=True)
    ref.train()
    net.train()
    step_fn = TSCDTrainingStep(TSCDRecipe(crop_size=crop, batch_size=b, cam_iters=0))
    x = _image(b, crop, seed=1)
    y = _labels(b, k)
    batch = {"image": x, "label": y, "valid": torch.ones(b, crop, crop, dtype=torch.bool)}
    attn_mask = torch.from_numpy(official_mask_by_radius(crop // 16, crop // 16, 8))  # precomputed officially too
    energy = step_fn.energy_loss  # shared lattice (see the module docs)
    bn_state = {k_: v.clone() for k_, v in ref.state_dict().items() if "running" in k_ or "num_batches" in k_}
    bn_state_ours = {k_: v.clone() for k_, v in net.state_dict().items() if "running" in k_ or "num_batches" in k_}

    def official():
        loss, er = official_tscd_iteration(ref, x, y, attn_mask, energy)
        loss.backward()
        return loss.detach() - 0.1 * er

    def ours():
        loss, _ = step_fn(net, batch, step=1)
        loss.backward()
        return loss.detach()

    def reset():
        _zero(ref, net)

    def check():
        # same BN statistics on both sides before the check (the warm-up / earlier calls updated them)
        ref.load_state_dict(bn_state, strict=False)
        net.load_state_dict(bn_state_ours, strict=False)
        reset()
        torch.manual_seed(123)
        l_ref = official()
        rng_ref = torch.get_rng_state()
        torch.manual_seed(123)
        l_ours = ours()
        same_draws = torch.equal(rng_ref, torch.get_rng_state())
        grads = _worst_grad(_grad_pairs("tscd", ref, net))
        # BatchNorm statistics after the iteration (the 8 train-mode passes of the decoder update them)
        conv = convert_official_state_dict("tscd", ref.state_dict(), model=net)
        ours_state = net.state_dict()
        bn = max(float((ours_state[k_] - v).abs().max() / v.abs().max().clamp_min(1e-12))
                 for k_, v in conv.items() if "running" in k_)
        reset()
        return {"loss_official": float(l_ref), "loss_wsseg": float(l_ours), "same_random_draws": same_draws,
                "loss_close": bool(torch.allclose(l_ours, l_ref, rtol=1e-4, atol=1e-6)), **grads,
                "bn_running_stats_worst_rel": bn}

    setting = f"{backbone}, crop {crop}, B {b}, all terms (after cam_iters)"
    return Case("TSCD", setting, official, ours, reset, check)


# ------------------------------------------------------------------------------------------------ CoSA
def cosa_case(quick: bool) -> Case:
    from benchmarks._official_loops import official_cosa_ema_update, official_cosa_iteration
    from tests.reference.official_cosa_losses import official_cam2mask
    from tests.reference.official_cosa_net import OfficialCoSA
    from tests.reference.official_cosa_teacher import official_cam_validation, official_multi_scale_camseg
    from tests.test_official_checkpoints import cosa_official_shapes, random_state
    from wsseg.models.official import convert_official_state_dict
    from wsseg.training import CoSAMethod, CoSARecipe

    if quick:
        dim, depth, heads, hidden, fov, k, crop, b, backbone = 64, 6, 2, 192, 16, 4, 64, 2, "test_vit"
        grid = 10  # test_vit stores a 160-px grid
    else:
        dim, depth, heads, hidden, fov, k, crop, b, backbone = 768, 12, 12, 3072, 512, 20, 224, 2, \
            "vit_base_patch16_224"
        grid = 14
    recipe = CoSARecipe(crop_size=crop, batch_size=b, loss_warmup_iters=0)
    method = CoSAMethod(recipe)
    student = method.build_model(k, backbone=backbone, decoder_dim=fov)
    method.setup(student, torch.device("cpu"))
    teacher = method.teacher
    refs = []
    for seed, net in ((0, student), (1, teacher)):
        state = random_state(cosa_official_shapes(dim, depth, hidden, 16, grid, fov, k), seed=seed)
        ref = OfficialCoSA(num_classes=k + 1, aux_layer=recipe.aux_layer, img_size=grid * 16, dim=dim, depth=depth,
                           heads=heads, hidden=hidden, decoder_dim=fov)
        ref.load_state_dict(state, strict=True)
        ref.encoder.pos_embed.requires_grad_(False)  # official vit.py: pos_embed.requires_grad = False
        net.load_state_dict(convert_official_state_dict("cosa", state, model=net), strict=True)
        refs.append(ref)
    ref_s, ref_t = refs
    ref_s.train()
    ref_t.eval()
    for p in ref_t.parameters():
        p.requires_grad_(False)
    student.train()
    x_w = _image(b, crop, seed=1)
    x_s = (x_w + 0.3 * torch.randn(x_w.shape, generator=torch.Generator().manual_seed(2))).clamp(-2.0, 2.2)
    y = _labels(b, k)
    batch = {"image": x_w, "image_strong": x_s, "label": y, "valid": torch.ones(b, crop, crop, dtype=torch.bool)}
    energy = method.step_fn.energy_loss
    t_state = {k_: v.clone() for k_, v in ref_t.state_dict().items()}
    t_state_ours = {k_: v.clone() for k_, v in teacher.state_dict().items()}

    def official():
        loss = official_cosa_iteration(ref_s, ref_t, x_w, x_s, y, energy, scales=recipe.pseudo_scales,
                                       high=recipe.high, low=recipe.low, high_aux=recipe.high_aux,
                                       low_aux=recipe.low_aux, reg_weight=recipe.w_reg)
        loss.backward()
        official_cosa_ema_update(ref_s, ref_t, recipe.ema_momentum)
        return loss.detach()

    def ours():
        loss, _ = method.training_step(student, batch, step=1)
        loss.backward()
        method.after_optimizer_step(student, step=1)
        return loss.detach()

    def reset():
        _zero(ref_s, student)

    def check():
        ref_t.load_state_dict(t_state)
        teacher.load_state_dict(t_state_ours)
        reset()
        l_ref = official()
        l_ours = ours()
        grads = _worst_grad(_grad_pairs("cosa", ref_s, student))
        # the pseudo labels both sides trained on (teacher before the EMA update): differing pixels
        ref_t.load_state_dict(t_state)
        teacher.load_state_dict(t_state_ours)
        with torch.no_grad():
            def teacher_fn(x):
                o = ref_t(x)
                return o[3], o[4], o[5]

            t_cam, t_aux, _ = official_multi_scale_camseg(teacher_fn, x_w, list(recipe.pseudo_scales))
            t_cam, t_aux = official_cam_validation(t_cam, y), official_cam_validation(t_aux, y)
            boxes = torch.tensor([[0, crop, 0, crop]] * b)
            cpl = official_cam2mask(t_cam, y, boxes, recipe.high, recipe.low).long()
            cpl_aux = official_cam2mask(t_aux, y, boxes, recipe.high_aux, recipe.low_aux).long()
            pl = method.step_fn.pseudo_labels(teacher, x_w, y, batch["valid"])
        cpl_diff = int((pl.cpl != cpl).sum()) + int((pl.cpl_aux != cpl_aux).sum())
        official_cosa_ema_update(ref_s, ref_t, recipe.ema_momentum)
        method.after_optimizer_step(student, step=1)
        t_conv = convert_official_state_dict("cosa", ref_t.state_dict(), model=teacher)
        t_worst = max(float((v - t_conv[name]).abs().max() / t_conv[name].abs().max().clamp_min(1e-12))
                      for name, v in teacher.state_dict().items())
        reset()
        return {"loss_official": float(l_ref), "loss_wsseg": float(l_ours), "same_random_draws": "no draws",
                "loss_close": bool(torch.allclose(l_ours, l_ref, rtol=1e-4, atol=1e-6)), **grads,
                "teacher_after_ema_worst_rel": t_worst, "cpl_differing_pixels": cpl_diff,
                "cpl_pixels": 2 * pl.cpl.numel()}

    setting = f"{backbone} (random init), crop {crop}, B {b}, after the loss warm-up"
    return Case("CoSA", setting, official, ours, reset, check)


# ---------------------------------------------------------------------------------------------- SLRNet
def slrnet_case(quick: bool) -> Case:
    from benchmarks._official_loops import official_slrnet_iteration
    from tests.reference.official_slrnet_net import OfficialSLRNet
    from tests.test_official_checkpoints import slrnet_state
    from wsseg import create_model
    from wsseg.models.official import convert_official_state_dict
    from wsseg.training import SLRNetRecipe, SLRNetTrainingStep

    if quick:
        div, c, k, crop, b, backbone = 16, 16, 4, 49, 2, "resnet38d_w16"
    else:
        div, c, k, crop, b, backbone = 1, 256, 20, 161, 2, "resnet38d"
    state = slrnet_state(div, c, k, seed=3)
    ref = OfficialSLRNet(num_classes=k + 1, divisor=div, c=c)
    ref.load_state_dict(state, strict=True)
    net = create_model("slrnet", backbone=backbone, num_classes=k, feature_dim=c)
    net.load_state_dict(convert_official_state_dict("slrnet", state, model=net), strict=True)
    net.train()
    ref.train()
    for m in ref.aspp.modules():  # the official train(): _fix_running_stats(self.aspp, fix_params=False)
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = _image(b, crop, seed=4)
    y = _labels(b, k)
    step_fn = SLRNetTrainingStep(SLRNetRecipe(crop_size=crop, batch_size=b, seg_start_iters=0))
    batch = {"image": x, "label": y}

    def official():
        loss = official_slrnet_iteration(ref, x, y)
        loss.backward()
        return loss.detach()

    def ours():
        loss, logs = step_fn(net, batch, step=1)
        assert "loss_seg" in logs
        loss.backward()
        return loss.detach()

    def reset():
        _zero(ref, net)

    def check():
        reset()
        torch.manual_seed(7)
        l_ours = ours()
        rng = torch.get_rng_state()
        torch.manual_seed(7)
        l_ref = official()
        same = torch.equal(rng, torch.get_rng_state())
        ref_params = {id(p) for p in ref.parameters()}
        converted = convert_official_state_dict("slrnet", ref.state_dict(keep_vars=True), model=net)
        pairs = [(n, p, converted[n]) for n, p in net.named_parameters()
                 if p.requires_grad and id(converted[n]) in ref_params]
        grads = _worst_grad(pairs)
        reset()
        return {"loss_official": float(l_ref), "loss_wsseg": float(l_ours), "same_random_draws": same,
                "loss_close": bool(torch.allclose(l_ours, l_ref, rtol=1e-4, atol=1e-6)), **grads}

    setting = f"{'WR38/16' if quick else 'WideResNet-38'}, crop {crop}, B {b}, segmentation loss on"
    return Case("SLRNet", setting, official, ours, reset, check)


BUILDERS = {"tscd": tscd_case, "cosa": cosa_case, "slrnet": slrnet_case}


# ------------------------------------------------------------------------------------------------ timing
def time_case(case: Case, repeats: int, warmup: int = 1) -> dict[str, dict[str, list[float]]]:
    """``warmup`` calls of each side, then ``repeats`` alternating rounds (who goes first alternates too).

    Returns the raw wall-clock (``time.perf_counter``) and process CPU (``time.process_time``) times and the
    minor page faults (thousands; memory the allocator had returned to the OS and faults in again) of every
    timed call per side. On a shared machine the CPU time of a single-threaded run is the steadier figure (it
    does not count the time the process waits for a core); with several threads it also counts OpenMP spinning.
    """
    sides = {"official": case.official, "wsseg": case.ours}
    for _ in range(warmup):
        for fn in sides.values():
            fn()
            case.reset()
    times = {s: {"wall": [], "cpu": [], "minor_faults_k": []} for s in sides}
    for i in range(repeats):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        for s in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0, c0 = time.perf_counter(), time.process_time()
            sides[s]()
            times[s]["cpu"].append(time.process_time() - c0)
            times[s]["wall"].append(time.perf_counter() - t0)
            times[s]["minor_faults_k"].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 1e3)
            case.reset()
    return times


def _short(frame: str) -> str:
    for root in ("site-packages/", "wsseg/", "tests/", "benchmarks/"):
        i = frame.find(root)
        if i >= 0:
            return frame[i + len(root):] if root == "site-packages/" else frame[i:]
    return frame


def _site(event) -> str:
    """Where a profiler event comes from: its innermost Python frame (outside ``torch/nn/modules``), and, when
    that frame is in a library (timm, torch), the innermost frame of this repository that called it."""
    inner, q = None, event.cpu_parent
    while q is not None:
        name = q.name
        if ".py(" in name and "torch/nn/modules/module.py" not in name:
            if inner is None:
                inner = name
            if any(root in name for root in ("wsseg/", "tests/", "benchmarks/_official")):
                return _short(name) if name == inner else f"{_short(inner)} ← {_short(name)}"
        q = q.cpu_parent
    return _short(inner) if inner else "(no Python frame: autograd backward)"


def profile_case(case: Case, top: int, sites: int) -> dict[str, dict]:
    """``torch.profiler`` (CPU) on one iteration of each side: top ops by self CPU time, the copy-like ops and
    (``sites > 0``) the source lines whose copies (``copy_`` / ``cat``) cost the most self time."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for side, fn in (("official", case.official), ("wsseg", case.ours)):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=sites > 0, with_stack=sites > 0) as prof:
            fn()
        case.reset()
        ev = prof.key_averages()
        rows = sorted(((e.key, e.count, e.self_cpu_time_total / 1e3) for e in ev), key=lambda r: -r[2])
        total = sum(r[2] for r in rows)
        copies = [(e.key, e.count, e.self_cpu_time_total / 1e3, e.cpu_time_total / 1e3) for e in ev
                  if e.key in COPY_OPS]
        by_site: dict[str, list[float]] = {}
        if sites > 0:
            for e in prof.events():
                if e.name in ("aten::copy_", "aten::cat"):
                    key = f"{e.name} @ {_site(e)}"
                    acc = by_site.setdefault(key, [0, 0.0])
                    acc[0] += 1
                    acc[1] += e.self_cpu_time_total / 1e3
        site_rows = sorted(((k, v[0], v[1]) for k, v in by_site.items()), key=lambda r: -r[2])[:sites]
        out[side] = {"top": rows[:top], "total_ms": total, "copies": sorted(copies, key=lambda r: -r[2]),
                     "sites": site_rows}
    return out


def print_profile(case: Case, prof: dict, top: int) -> None:
    print(f"\n**{case.method}** ({case.setting}): top {top} ops by self CPU time, one iteration\n")
    print("| # | official op | calls | self ms | wsseg op | calls | self ms |")
    print("|---|---|---|---|---|---|---|")
    o, w = prof["official"]["top"], prof["wsseg"]["top"]
    for i in range(max(len(o), len(w))):
        a = o[i] if i < len(o) else ("", "", 0.0)
        b = w[i] if i < len(w) else ("", "", 0.0)
        print(f"| {i + 1} | `{a[0]}` | {a[1]} | {a[2]:.0f} | `{b[0]}` | {b[1]} | {b[2]:.0f} |")
    print(f"| | total self CPU | | {prof['official']['total_ms']:.0f} | total self CPU | | "
          f"{prof['wsseg']['total_ms']:.0f} |")
    print(f"\n**{case.method}** copy-like ops (calls, self ms; the data movement is in `copy_` / `cat` / `repeat`, "
          "`clone` / `contiguous` / `reshape` / `to` only dispatch to `copy_`)\n")
    names = sorted({r[0] for s in ("official", "wsseg") for r in prof[s]["copies"]})
    print("| op | official calls | official self ms | wsseg calls | wsseg self ms |")
    print("|---|---|---|---|---|")
    tot = {}
    for side in ("official", "wsseg"):
        d = {r[0]: r for r in prof[side]["copies"]}
        tot[side] = (sum(d[n][1] for n in COPY_KERNELS if n in d), sum(d[n][2] for n in COPY_KERNELS if n in d))
    for n in names:
        cells = []
        for side in ("official", "wsseg"):
            r = {r[0]: r for r in prof[side]["copies"]}.get(n)
            cells += [str(r[1]), f"{r[2]:.1f}"] if r else ["0", "0.0"]
        print(f"| `{n}` | " + " | ".join(cells) + " |")
    print(f"| **copies** (`copy_` + `cat` + `repeat`) | {tot['official'][0]} | {tot['official'][1]:.0f} | "
          f"{tot['wsseg'][0]} | {tot['wsseg'][1]:.0f} |")
    for side in ("official", "wsseg"):
        if prof[side]["sites"]:
            print(f"\n**{case.method}**, {side}: where the copies happen (innermost repository function, "
                  "file(line of its def): name; calls, self ms)\n")
            print("| op @ source line | calls | self ms |")
            print("|---|---|---|")
            for key, n, ms in prof[side]["sites"]:
                print(f"| `{key}` | {n} | {ms:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=("tscd", "cosa", "slrnet", "all"), default="all")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (median); default 5")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads; default 2")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls of each side before the timed rounds")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="apply wsseg.utils.keep_freed_cpu_memory() (what the Trainer does on CPU) before building; "
                        "process-wide, so it applies to the official side too")
    p.add_argument("--quick", action="store_true", help="tiny networks and crops (smoke test)")
    p.add_argument("--profile", action="store_true", help="profile one iteration of each side")
    p.add_argument("--top", type=int, default=12, help="ops listed per side in the profile (default 12)")
    p.add_argument("--copy-sites", type=int, default=10,
                   help="with --profile: list the N source lines with the costliest copies per side (0: off)")
    p.add_argument("--no-check", action="store_true", help="skip the equality check")
    p.add_argument("--float64", action="store_true",
                   help="build both sides in float64 and run the equality check only (no timing): separates "
                        "float32 rounding from a difference of formulation")
    p.add_argument("--no-time", action="store_true", help="skip the timing (check and/or profile only)")
    p.add_argument("--verbose", action="store_true", help="list the 8 tensors with the largest gradient differences")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats: expected >= 1, got {args.repeats}")
    if args.warmup < 0:
        p.error(f"--warmup: expected >= 0, got {args.warmup}")
    if args.threads < 1:
        p.error(f"--threads: expected >= 1, got {args.threads}")
    if args.float64 and (args.no_check or args.profile):
        p.error("--float64 runs the equality check only: drop --no-check / --profile")
    torch.set_num_threads(args.threads)
    if args.float64:
        torch.set_default_dtype(torch.float64)
        args.no_time = True
    if args.keep_freed_memory:
        from wsseg.utils.allocator import keep_freed_cpu_memory

        print(f"[allocator] keep_freed_cpu_memory() applied: {keep_freed_cpu_memory()}")
    global VERBOSE
    VERBOSE = args.verbose
    methods = ["tscd", "cosa", "slrnet"] if args.method == "all" else [args.method]
    rows, profiles = [], []
    for m in methods:
        case = BUILDERS[m](args.quick)
        if not args.no_check:
            res = case.check()
            print(f"[check] {case.method}: " + ", ".join(
                f"{k}={v:.3e}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()), flush=True)
        if not args.no_time:
            times = time_case(case, args.repeats, args.warmup)
            print(f"[time] {case.method}: " + "; ".join(
                f"{side} {clock} " + " ".join(f"{t:.3f}" if clock != "minor_faults_k" else f"{t:.0f}" for t in v)
                for side in times for clock, v in times[side].items()), flush=True)
            rows.append((case, {side: {clock: statistics.median(v) for clock, v in times[side].items()}
                                for side in times}))
        if args.profile:
            profiles.append((case, profile_case(case, args.top, args.copy_sites)))
        del case
    if rows:
        print(f"\nOne training iteration on CPU ({args.threads} thread{'s' if args.threads > 1 else ''}, median of "
              f"{args.repeats} alternating iterations after {args.warmup} warm-up call(s) each; forward + backward [+ EMA]; wall-clock "
              "time, and process CPU time in the last three columns)\n")
        print("| method | setting | official (s) | wsseg (s) | official / wsseg | official CPU (s) | wsseg CPU (s) "
              "| official / wsseg (CPU) |")
        print("|---|---|---|---|---|---|---|---|")
        for case, m in rows:
            o, w = m["official"], m["wsseg"]
            print(f"| {case.method} | {case.setting} | {o['wall']:.3f} | {w['wall']:.3f} | {o['wall'] / w['wall']:.2f}× "
                  f"| {o['cpu']:.3f} | {w['cpu']:.3f} | {o['cpu'] / w['cpu']:.2f}× |")
    for case, prof in profiles:
        print_profile(case, prof, args.top)


if __name__ == "__main__":
    main()
