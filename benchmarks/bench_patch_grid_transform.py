"""Benchmark: ViT-PCM's view-1 → view-2 patch-grid mapping, batched vs the official per-image loop.

Compares :func:`wsseg.layers.patch_grid_view1_to_view2` (per-image interpolation matrices with the flips
folded in, two ``bmm``) with ``tests/reference/official_vitpcm_views.py``'s ``reference_view1_to_view2``
(the official ``tf.map_fn`` formulation: a Python loop over images, undo T1, crop, ``F.interpolate``, T2),
at the official sizes (24×24 view-1 grid → 12×12, 30 % of the images cropped to 8×8 cells) for VOC
(C = 21, B = 16 and 64) and COCO (C = 81, B = 16).

Outputs are asserted equal (to float tolerance) before timing. Time: median wall-clock over ``--repeats``
runs after one warm-up run; the two methods are interleaved. Peak memory: each (method, case) runs in a
fresh subprocess; the number is the rise of the peak RSS during the first call over the RSS before it
(``benchmarks/_memory.py``).

Usage::

    python benchmarks/bench_patch_grid_transform.py [--quick] [--repeats 5] [--threads 1] [--device cpu]
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

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_vitpcm_views import reference_view1_to_view2  # noqa: E402
from wsseg.layers import patch_grid_view1_to_view2  # noqa: E402

METHODS = {"batched (wsseg)": patch_grid_view1_to_view2, "per-image loop": reference_view1_to_view2}


def make_inputs(B: int, C: int, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(B, C, 24, 24, generator=g).softmax(1).to(device)
    f1 = (torch.rand(B, 3, generator=g) < 0.5).to(device)
    f2 = (torch.rand(B, 3, generator=g) < 0.5).to(device)
    starts = torch.randint(0, 17, (B, 2), generator=g)
    boxes = torch.cat([starts, starts + 8], 1)
    boxes[torch.rand(B, generator=g) >= 0.3] = torch.tensor([0, 0, 24, 24])
    return probs, f1, f2, boxes.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def worker(method: str, B: int, C: int, repeats: int, device: str) -> dict:
    fn = METHODS[method]
    inputs = make_inputs(B, C, device)
    mib = peak_rss_increase_mib(lambda: fn(*inputs, out_size=12))
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn(*inputs, out_size=12)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return {"time_s": statistics.median(times), "peak_mib": float("nan") if mib is None else mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "B", "C"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.repeats,
                                args.device)))
        return

    cases = [(16, 21)] if args.quick else [(16, 21), (64, 21), (16, 81)]
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, "
          f"24×24 → 12×12, repeats {repeats}\n")
    print("| B | C | method | time [ms] | speed-up | peak RSS increase [MiB] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for B, C in cases:
        inputs = make_inputs(B, C, args.device)
        ref = reference_view1_to_view2(*inputs, out_size=12)
        out = patch_grid_view1_to_view2(*inputs, out_size=12)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        res: dict[str, list[float]] = {m: [] for m in METHODS}
        mem: dict[str, float] = {}
        for _ in range(3):  # interleave the candidates, several subprocesses each
            for method in METHODS:
                proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                       "--threads", str(args.threads), "--device", args.device,
                                       "--worker", method, str(B), str(C)], capture_output=True, text=True,
                                      check=True)
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                res[method].append(r["time_s"])
                mem[method] = r["peak_mib"]
        base = statistics.median(res["per-image loop"])
        for method, ts in res.items():
            t = statistics.median(ts)
            print(f"| {B} | {C} | {method} | {1e3 * t:.2f} | {base / t:.1f}× | {mem[method]:.1f} |")


if __name__ == "__main__":
    main()
