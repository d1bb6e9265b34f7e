"""Benchmark: the (experimental) PatchContrastLoss (forward + backward) vs a dense (B·N)² formulation.

Compares :func:`wsseg.losses.patch_contrast_loss` — ``scope="image"``: one batched (B, N, N) similarity
matmul; ``scope="batch"``: only the kept patches, in row chunks of at most ``DEFAULT_CHUNK_PAIRS`` entries
with activation checkpointing — with ``tests/reference/official_vitpcm_contrast.py::dense_patch_contrast``
(the straightforward formulation: one full (B·N)×(B·N) cosine matrix over the batch plus boolean masks for
same image / same label / kept / not self), at ViT-PCM's training sizes: B = 16 images, N = 576 patches
(24×24 grid), D = 768, labels from C = 21 classes (background + 2 foreground classes per image, blocky
maps, about 10 % ignored), float32, both forms (margin m = 0; InfoNCE t = 0.1), both scopes.

One measured call = the loss and its backward into the embeddings. Values and gradients are asserted equal
(rtol 1e-4) before timing.

Time: median wall-clock over ``--repeats`` runs after one warm-up run, the two methods interleaved in one
process. Peak memory: each (method, case) runs in a fresh subprocess; on CPU the rise of the peak resident
set size during the first call over the resident set size just before it (``VmHWM − VmRSS``,
``benchmarks/_memory.py``); on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before it.

Usage::

    python benchmarks/bench_patch_contrast.py [--quick] [--repeats 3] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._memory import peak_memory_mib  # noqa: E402
from tests.reference.official_vitpcm_contrast import dense_patch_contrast  # noqa: E402
from wsseg.losses import patch_contrast_loss  # noqa: E402

N, D, C = 576, 768, 21
GRID = 24
METHODS = ("wsseg", "dense")
FORMS = {"margin": {"margin": 0.0}, "infonce": {"temperature": 0.1}}


def make_case(B: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, N, D, generator=g)
    labels = torch.zeros(B, GRID, GRID, dtype=torch.long)
    for b in range(B):                      # background + 2 foreground classes, blocky regions
        fg = torch.randperm(C - 1, generator=g)[:2] + 1
        classes = torch.cat([torch.zeros(1, dtype=torch.long), fg])
        score = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(GRID, GRID), mode="bilinear",
                              align_corners=False)[0]
        labels[b] = classes[score.argmax(0)]
    labels = labels.reshape(B, N)
    labels[torch.rand(B, N, generator=g) < 0.1] = 255
    return emb.to(device), labels.to(device)


def run(method: str, form: str, scope: str, case) -> tuple[torch.Tensor, torch.Tensor]:
    emb, labels = case
    x = emb.detach().requires_grad_()
    kw = FORMS[form]
    if method == "wsseg":
        loss = patch_contrast_loss(x, labels, form=form, scope=scope, **kw)
    else:
        out = dense_patch_contrast(x, labels, labels != 255, form=form, scope=scope, **kw)
        loss = out.mean() if scope == "image" else out
    loss.backward()
    return loss.detach(), x.grad


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_equal(form: str, scope: str, case) -> None:
    a_val, a_grad = run("wsseg", form, scope, case)
    b_val, b_grad = run("dense", form, scope, case)
    torch.testing.assert_close(a_val, b_val, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(a_grad, b_grad, rtol=1e-4, atol=1e-4 * b_grad.abs().max().item())


def worker(method: str, form: str, scope: str, B: int, device: str) -> dict:
    case = make_case(B, device)
    return {"peak_mib": peak_memory_mib(lambda: run(method, form, scope, case), device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 4, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scopes", default="image,batch", help="comma-separated scopes to run")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "FORM", "SCOPE", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        method, form, scope, B = args.worker
        print(json.dumps(worker(method, form, scope, int(B), args.device)))
        return

    B = 4 if args.quick else 16
    repeats = 1 if args.quick else max(3, args.repeats)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, B={B}, N={N}, "
          f"D={D}, C={C} label values, ~10% ignored, float32, forward+backward, median of {repeats} "
          f"(interleaved, after warm-up)\n")
    print("| form | scope | method | time [ms] | speed-up vs dense | peak memory increase [MiB] |")
    print("| --- | --- | --- | --- | --- | --- |")
    case = make_case(B, args.device)
    for scope in args.scopes.split(","):
        for form in FORMS:
            check_equal(form, scope, case)
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            for m in METHODS:  # warm-up
                run(m, form, scope, case)
            for _ in range(repeats):
                for m in METHODS:
                    _sync(args.device)
                    t0 = time.perf_counter()
                    run(m, form, scope, case)
                    _sync(args.device)
                    times[m].append(time.perf_counter() - t0)
            mem = {}
            for m in METHODS:
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                                      "--device", args.device, "--worker", m, form, scope, str(B)],
                                     capture_output=True, text=True, check=True)
                mem[m] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
            base = statistics.median(times["dense"])
            for m in METHODS:
                t = statistics.median(times[m])
                print(f"| {form} | {scope} | {m} | {1000 * t:.1f} | {base / t:.2f}× | {mem[m]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
