"""Benchmark: SLRNet's LowRankFactorization (forward + backward) vs the official formulation.

Compares :class:`wsseg.layers.LowRankFactorization` — its map path: a hand-written backward, W1 folded
into the K atoms instead of applied to the N tokens (the M-step weights sum to 1 over the tokens), the views
read in place without concatenation, the three token-gradient terms accumulated in place — with
``tests/reference/official_slrnet_lowrank.py``
(the official ``FactorizationReconstruction`` formulation and the cross-view concatenation of
``Net.forward``), same weights, at the official sizes: view 1 81×81 and view 2 40×40 tokens (crop 321,
0.5× second view), d = 256, K = 21 atoms, T = 1, B = 2 and 4, float32.

One measured call = the cross-view pass on both feature maps (concatenation, factorisation, split back
to per-view maps and codes) and the backward of ``Σ ⟨out_v, G_v⟩ + Σ ⟨codes_v, H_v⟩`` (fixed random G, H)
into both views and the four parameters. Outputs and gradients are asserted equal (1e-5) before timing.

Time: median wall-clock over ``--repeats`` runs after one warm-up run, the two methods interleaved in one
process. Peak memory: each (method, case) runs in a fresh subprocess; the number is the rise of the peak
resident set size during the first call over the resident set size just before it (``VmHWM − VmRSS``,
``benchmarks/_memory.py``); on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before it.

Usage::

    python benchmarks/bench_low_rank.py [--quick] [--repeats 5] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks._compare import interleaved_medians, subprocess_peaks  # noqa: E402
from benchmarks._memory import peak_memory_mib  # noqa: E402
from tests.reference.official_slrnet_lowrank import (  # noqa: E402
    OfficialFactorizationReconstruction,
    official_cross_view,
    official_dictionary_init,
)
from wsseg.layers import LowRankFactorization, class_prototypes  # noqa: E402

D, K = 256, 21
SIZES = ((81, 81), (40, 40))
METHODS = ("wsseg", "official")


def make_case(B: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(B, D, h, w, generator=g).relu_().to(device) for h, w in SIZES]
    logits = torch.randn(B, K, *SIZES[0], generator=g).to(device)
    torch.manual_seed(seed)
    ours = LowRankFactorization(D).to(device)
    ref = OfficialFactorizationReconstruction(D).to(device)
    ref.load_state_dict(ours.state_dict())
    d0 = class_prototypes(maps[0], logits)
    d0_bck = official_dictionary_init(maps[0], logits).detach()
    gouts = [torch.randn(m.shape, generator=g).to(device) for m in maps]
    gcodes = [torch.randn(B, K, h, w, generator=g).to(device) for h, w in SIZES]
    return maps, d0, d0_bck, ours, ref, gouts, gcodes


def run(method: str, case) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, list]:
    maps, d0, d0_bck, ours, ref, gouts, gcodes = case
    views = [m.detach().requires_grad_() for m in maps]
    module = ours if method == "wsseg" else ref
    module.zero_grad(set_to_none=True)
    if method == "wsseg":
        res = ours(views, d0)
        outs, codes, dictionary = list(res.out), list(res.codes), res.dictionary
    else:
        outs, codes, dictionary = official_cross_view(ref, views, d0_bck)
    loss = sum((o * g).sum() for o, g in zip(outs, gouts, strict=True))
    loss = loss + sum((c * g).sum() for c, g in zip(codes, gcodes, strict=True))
    loss.backward()
    grads = [v.grad for v in views] + [p.grad for _, p in sorted(module.named_parameters())]
    return outs + codes, grads, dictionary, views



def check_equal(case) -> None:
    a_vals, a_grads, a_dict, _ = run("wsseg", case)
    b_vals, b_grads, b_dict, _ = run("official", case)
    for name, xs, ys in (("outputs/codes", a_vals, b_vals), ("gradients", a_grads, b_grads),
                         ("dictionary", [a_dict], [b_dict])):
        for x, y in zip(xs, ys, strict=True):
            scale = max(1.0, y.abs().max().item())
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5 * scale, msg=lambda m, n=name: f"{n}: {m}")


def worker(method: str, B: int, device: str) -> dict:
    case = make_case(B, device)
    return {"peak_mib": peak_memory_mib(lambda: run(method, case), device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 2 only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.device)))
        return

    batches = (2,) if args.quick else (2, 4)
    repeats = 1 if args.quick else max(3, args.repeats)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, d={D}, K={K}, "
          f"T=1, tokens 81²+40² = {sum(h * w for h, w in SIZES)}, float32, forward+backward, "
          f"median of {repeats} (interleaved, after warm-up)\n")
    print("| B | method | time [ms] | speed-up vs official | peak memory increase [MiB] |")
    print("| --- | --- | --- | --- | --- |")
    for B in batches:
        case = make_case(B, args.device)
        check_equal(case)
        times = interleaved_medians(METHODS, lambda m, c=case: run(m, c), repeats, args.device)
        del case
        mem = subprocess_peaks(os.path.abspath(__file__), METHODS, lambda m, b=B: (m, str(b)), args.threads,
                               extra=("--device", args.device))
        base = times["official"]
        for m in METHODS:
            t = times[m]
            print(f"| {B} | {m} | {1000 * t:.1f} | {base / t:.2f}× | {mem[m]:.0f} |")


if __name__ == "__main__":
    main()
