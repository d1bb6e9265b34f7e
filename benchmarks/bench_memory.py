#!/usr/bin/env python
"""Peak memory of one training iteration per method at the official sizes, on CPU, with and without
gradient checkpointing of the encoder (Markdown table).

Every method at its official per-GPU size with random weights (nothing is downloaded; the weights do not
change the memory), the recipe past its warm-up (every loss term active):

* TSCD: MiT-B1 (strides 4, 2, 2, 1), crop 512, batch 2 per GPU (``tscd.md`` §7);
* CoSA: ViT-B/16, crop 448, batch 2 per GPU, EMA teacher (``cosa.md`` §7);
* SLRNet: WideResNet-38, crop 321, batch 8 per GPU (16 over DataParallel on 2 GPUs, ``slrnet.md`` §7); its
  encoder has no gradient checkpointing, so it has one row;
* ViT-PCM: ViT-B/16 at 384, batch 16 per replica, last 5 blocks trainable (``apc.md`` §2.6).

Each configuration runs in its own subprocess and does what the engine does per iteration
(:class:`wsseg.training.Trainer`): ``training_step``, ``zero_grad(set_to_none=True)``, ``backward``,
optimizer and scheduler steps, ``after_optimizer_step`` (EMA update), twice: the first iteration creates the
optimizer state, the second is the steady state. Reported, from Linux ``/proc/self/status``:

* ``RSS before``: resident memory before the first iteration (Python, torch, the model(s), the batch);
* ``peak RSS``: the process's peak resident memory (``VmHWM``) over both iterations: model, EMA teacher,
  gradients, optimizer state and the activations kept for backward, plus the runtime;
* ``state``: the exact size of weights (+ teacher) + gradients + optimizer state, from the tensors;
* ``time``: wall time of the second iteration (noisy on a shared machine; not the subject here);
* ``same losses``: the losses of both iterations are equal with and without checkpointing.

These are CPU RSS figures, not GPU allocator figures (the GPU peak lacks the runtime but has the same
state and activations). A configuration whose iteration is too slow can be run at a smaller batch with
``--batch METHOD=N``: the table then says so.

    OMP_NUM_THREADS=2 python benchmarks/bench_memory.py [--methods tscd cosa slrnet vitpcm] [--threads 2]
        [--batch vitpcm=8]
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

from benchmarks._iteration import run_cases  # noqa: E402
from benchmarks._memory import proc_status_kib, reset_peak_rss  # noqa: E402

#: method -> (backbone, crop, official per-GPU batch, supports gradient checkpointing)
OFFICIAL = {
    "tscd": ("mit_b1", 512, 2, True),
    "cosa": ("vit_base_patch16_224", 448, 2, True),
    "slrnet": ("resnet38d", 321, 8, False),
    "vitpcm": ("vit_base_patch16_384", 384, 16, True),
    "apc": ("vit_base_patch16_384", 384, 16, True),
}


def _labels(b: int) -> torch.Tensor:
    y = torch.zeros(b, 20)
    y[:, 14] = 1
    y[0, 11] = 1
    return y


def _setup(name: str, batch_size: int):
    """``(method, model, batch)`` at the official size, past every warm-up."""
    from wsseg import training as T

    backbone, crop, _, _ = OFFICIAL[name]
    g = torch.Generator().manual_seed(0)
    if name == "tscd":
        method = T.TSCDMethod(T.TSCDRecipe(crop_size=crop, batch_size=batch_size, cam_iters=0))
        model = method.build_model(20, backbone=backbone)
        batch = {"image": torch.randn(batch_size, 3, crop, crop, generator=g), "label": _labels(batch_size),
                 "valid": torch.ones(batch_size, crop, crop, dtype=torch.bool)}
    elif name == "cosa":
        method = T.CoSAMethod(T.CoSARecipe(crop_size=crop, batch_size=batch_size, loss_warmup_iters=0))
        model = method.build_model(20, backbone=backbone)
        x = torch.randn(batch_size, 3, crop, crop, generator=g)
        batch = {"image": x, "image_strong": x + 0.1 * torch.randn(x.shape, generator=g),
                 "label": _labels(batch_size), "valid": torch.ones(batch_size, crop, crop, dtype=torch.bool)}
    elif name == "slrnet":
        method = T.SLRNetMethod(T.SLRNetRecipe(crop_size=crop, batch_size=batch_size, seg_start_iters=0))
        model = method.build_model(20, backbone=backbone)
        x = model.fit_input(torch.randn(batch_size, 3, crop, crop, generator=g))
        batch = {"image": x, "label": _labels(batch_size),
                 "valid": torch.ones(batch_size, *x.shape[-2:], dtype=torch.bool)}
    else:
        common = dict(crop_size=crop, patch_size=16, batch_size=batch_size, stage_a_iters=0)
        if name == "apc":
            method = T.APCMethod(T.APCRecipe(**common, k_mode="ratio_to_max", rho=0.5, w_pcl=1.0, w_seg=1.0,
                                             seg_start_iters=0))
            model = method.build_model(20, backbone=backbone, decoder_dim=256)
        else:
            method = T.ViTPCMMethod(T.ViTPCMRecipe(**common))
            model = method.build_model(20, backbone=backbone)
        grid = crop // 16
        boxes = torch.tensor([[0, 0, grid, grid]] * batch_size)
        boxes[0] = torch.tensor([2, 3, 2 + 8, 3 + 8])  # one cropped view 2 (128 px of 384)
        flips = torch.rand(batch_size, 3, generator=g) < 0.5
        batch = {"image": torch.randn(batch_size, 3, crop, crop, generator=g), "label": _labels(batch_size),
                 "image_view2": torch.randn(batch_size, 3, crop // 2, crop // 2, generator=g),
                 "flips_view1": flips, "flips_view2": flips.roll(1, dims=0), "crop_box_view2": boxes}
    return method, model, batch


def _state_mib(model, method, optimizer) -> float:
    """Weights (+ EMA teacher) + gradients + optimizer state, in MiB."""
    seen: set[int] = set()
    total = 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()

    for p in model.parameters():
        add(p)
        add(p.grad)
    for b in model.buffers():
        add(b)
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        for t in (*teacher.parameters(), *teacher.buffers()):
            add(t)
    for state in optimizer.state.values():
        for v in state.values():
            add(v)
    return total / 2**20


def run_case(name: str, batch_size: int, checkpointing: bool, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    method, model, batch = _setup(name, batch_size)
    model.train()
    if checkpointing:
        model.set_grad_checkpointing(True)  # what Trainer does for TrainConfig(grad_checkpointing=True)
    method.setup(model, torch.device("cpu"))
    optimizer = method.build_optimizer(model)
    scheduler = method.build_scheduler(optimizer)
    rss_before = proc_status_kib("VmRSS") / 1024.0
    reset_peak_rss()
    times, losses = [], []
    for step in (1, 2):  # the engine's iteration, twice (the first one creates the optimizer state)
        t0 = time.perf_counter()
        loss, _ = method.training_step(model, batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        method.after_optimizer_step(model, step)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    peak = proc_status_kib("VmHWM") / 1024.0
    return {"method": name, "backbone": OFFICIAL[name][0], "crop": OFFICIAL[name][1], "batch": batch_size,
            "checkpointing": checkpointing, "rss_before_mib": rss_before, "peak_rss_mib": peak,
            "state_mib": _state_mib(model, method, optimizer), "time_s": times[-1], "first_time_s": times[0],
            "losses": losses, "threads": torch.get_num_threads(),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["tscd", "cosa", "slrnet", "vitpcm"], choices=sorted(OFFICIAL))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", nargs="*", default=[], metavar="METHOD=N",
                   help="run METHOD at batch N instead of its official per-GPU batch")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: "method,batch,ckpt"
    args = p.parse_args()
    if args.case is not None:
        name, b, ck = args.case.split(",")
        print(json.dumps(run_case(name, int(b), ck == "1", args.threads)))
        return
    batches = {m: OFFICIAL[m][2] for m in args.methods}
    for item in args.batch:
        m, _, n = item.partition("=")
        if m not in batches or not n.isdigit() or int(n) < 1:
            p.error(f"--batch: expected METHOD=N with METHOD in {args.methods} and N >= 1, got {item!r}")
        batches[m] = int(n)
    cases = []
    for m in args.methods:
        for ck in ((0, 1) if OFFICIAL[m][3] else (0,)):
            cases.append(["--case", f"{m},{batches[m]},{ck}", "--threads", str(args.threads)])
    rows = []
    for case in cases:  # one subprocess at a time; print each row as it comes
        row = run_cases(__file__, [case])[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nOne training iteration at the official per-GPU size, CPU, float32, {rows[0]['threads']} threads; "
          "peak RSS of the process (MiB); time of the second iteration (s)\n")
    print("| method | backbone, crop, batch | RSS before | peak RSS, no ckpt | peak RSS, ckpt | saving | "
          "state | time no ckpt / ckpt | same losses |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in args.methods:
        off = next(r for r in rows if r["method"] == m and not r["checkpointing"])
        on = next((r for r in rows if r["method"] == m and r["checkpointing"]), None)
        official = "" if off["batch"] == OFFICIAL[m][2] else f" (official {OFFICIAL[m][2]})"
        head = f"| {m} | {off['backbone']}, {off['crop']}, {off['batch']}{official} | {off['rss_before_mib']:.0f} | "
        if on is None:
            print(head + f"{off['peak_rss_mib']:.0f} | n/a | n/a | {off['state_mib']:.0f} | {off['time_s']:.1f} / n/a "
                  "| n/a |")
        else:
            save = off["peak_rss_mib"] - on["peak_rss_mib"]
            rise = off["peak_rss_mib"] - off["rss_before_mib"]
            print(head + f"{off['peak_rss_mib']:.0f} | {on['peak_rss_mib']:.0f} | {save:.0f} "
                  f"({100 * save / rise:.0f}% of the rise) | {off['state_mib']:.0f} | "
                  f"{off['time_s']:.1f} / {on['time_s']:.1f} | {'yes' if on['losses'] == off['losses'] else 'NO'} |")


if __name__ == "__main__":
    main()
