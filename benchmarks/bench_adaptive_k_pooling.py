"""Benchmark: AdaptiveKPooling (forward + backward) vs the straightforward formulation.

Compares :func:`wsseg.layers.adaptive_k_pooling` — K from a vectorised comparison, one ``torch.topk`` at
``k_max`` (``k`` for ``"fixed"``, ``amax`` for ``"max"``), ranks beyond K masked — with
``tests/reference/official_vitpcm_pooling.py`` (one full descending sort, then a Python loop over images and
classes that applies the rule rank by rank and averages the first K sorted values), at ViT-PCM's training
size: B = 16 images, N = 576 patches (24×24 grid at 384 px), C = 21 classes (VOC + background), float32,
per-patch softmax of random logits (scale 3). wsseg gets the library's channels-first grid (B, C, 24, 24),
the reference the official channels-last tokens (B, N, C); the inputs are built before timing.

Every mode is measured; the hyperparameter values (k = 16, rho = 0.5, k_max = 64) are benchmark settings only,
not published values (APC's are unknown). One measured call = forward and the backward of ``Σ ŷ ⊙ W`` (fixed
random W) into the probabilities. Scores, K and gradients are asserted equal (1e-6) before timing.

Time: median wall-clock over ``--repeats`` runs after one warm-up run. Peak memory: each (method, case) runs in
a fresh subprocess; the number is the rise of the peak resident set size during the first call over the
resident set size just before it (``VmHWM − VmRSS``, ``benchmarks/_memory.py``).

Usage::

    python benchmarks/bench_adaptive_k_pooling.py [--quick] [--repeats 5] [--threads 1]
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
from einops import rearrange  # noqa: E402

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_vitpcm_pooling import reference_adaptive_k  # noqa: E402
from wsseg.layers import adaptive_k_pooling  # noqa: E402

B, G, C = 16, 24, 21
CASES = {
    "max": ("max", {}),
    "fixed k=16": ("fixed", dict(k=16)),
    "ratio_to_max ρ=0.5": ("ratio_to_max", dict(rho=0.5)),
    "ratio_to_max ρ=0.5 k_max=64": ("ratio_to_max", dict(rho=0.5, k_max=64)),
    "ratio_consecutive ρ=0.5": ("ratio_consecutive", dict(rho=0.5)),
    "ratio_consecutive ρ=0.5 k_max=64": ("ratio_consecutive", dict(rho=0.5, k_max=64)),
}
METHODS = ("wsseg", "reference loop")


def make_inputs(batch: int = B, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid = (torch.randn(batch, C, G, G, generator=g) * 3.0).softmax(dim=1)
    tokens = rearrange(grid, "b c h w -> b (h w) c").contiguous()
    weight = torch.randn(batch, C, generator=g)
    return grid, tokens, weight


def run(method: str, case: str, grid, tokens, weight):
    """One forward + backward; returns (scores, K, grad in token layout)."""
    mode, kw = CASES[case]
    if method == "wsseg":
        x = grid.detach().clone().requires_grad_()
        out = adaptive_k_pooling(x, k_mode=mode, return_k=True, **kw)
        scores, k = out.scores, out.k
        (scores * weight).sum().backward()
        return scores.detach(), k, rearrange(x.grad, "b c h w -> b (h w) c")
    x = tokens.detach().clone().requires_grad_()
    scores, k, _ = reference_adaptive_k(x, mode, **kw)
    (scores * weight).sum().backward()
    return scores.detach(), k, x.grad


def worker(method: str, case: str, batch: int, repeats: int) -> dict:
    grid, tokens, weight = make_inputs(batch)
    mib = peak_rss_increase_mib(lambda: run(method, case, grid, tokens, weight))   # also the warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(method, case, grid, tokens, weight)
        times.append(time.perf_counter() - t0)
    return {"time_s": statistics.median(times), "peak_mib": float("nan") if mib is None else mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 2, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "CASE", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        method, case, batch = args.worker[0], args.worker[1], int(args.worker[2])
        print(json.dumps(worker(method, case, batch, args.repeats)))
        return

    batch = 2 if args.quick else B
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, B={batch}, N={G * G}, C={C}, float32, "
          f"forward + backward, median of {repeats} after a warm-up\n")
    print("| mode | wsseg [ms] | reference loop [ms] | speed-up | wsseg peak RSS [MiB] | reference peak RSS [MiB] |")
    print("| --- | --- | --- | --- | --- | --- |")
    grid, tokens, weight = make_inputs(batch)
    for case in CASES:
        ours, ref = run("wsseg", case, grid, tokens, weight), run("reference loop", case, grid, tokens, weight)
        torch.testing.assert_close(ours[0], ref[0], rtol=0, atol=1e-6)
        assert torch.equal(ours[1], ref[1]), f"{case}: K differs"
        torch.testing.assert_close(ours[2], ref[2], rtol=0, atol=1e-6)
        res = {}
        for method in METHODS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                  "--threads", str(args.threads), "--worker", method, case, str(batch)],
                                 capture_output=True, text=True, check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        a, r = res["wsseg"], res["reference loop"]
        print(f"| {case} | {a['time_s'] * 1e3:.2f} | {r['time_s'] * 1e3:.1f} | {r['time_s'] / a['time_s']:.0f}× | "
              f"{a['peak_mib']:.1f} | {r['peak_mib']:.1f} |")


if __name__ == "__main__":
    main()
