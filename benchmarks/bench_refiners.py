"""Benchmark the parameter-free refiners (PAR, PAMR, VARM) against their official formulations.

Usage::

    python benchmarks/bench_refiners.py           # realistic sizes (several minutes on 2 cores)
    python benchmarks/bench_refiners.py --quick   # small configuration (seconds)

What is compared. For each refiner, wsseg's implementation (``wsseg.layers``) and a re-implementation
of the official formulation (``tests/reference/official_refiners.py``: per-dilation replicate padding +
dilated one-hot ``conv2d`` to gather the neighbours, ``torch.cat``, broadcast products and sums, as in
AFA ``wetr/PAR.py``, TSCD ``network/VARM.py`` and SLRNet ``models/mods/pamr.py``) are run on the same
random inputs: image ``(B, 3, H, W)`` in [0, 1], softmax probabilities ``(B, C, h, w)`` resized to
``H×W`` inside the refiner (realistic: probabilities at 1/4 of the image size, e.g. 64² → 256², the
half-crop resolution used by AFA/TSCD at crop 512). Default hyperparameters (6 dilations, T = 10).
Before timing, the outputs are asserted equal (``allclose``, ``atol=1e-5``).

How it is measured.

* Time: ``torch.set_num_threads(2)`` (default; ``--threads``), one warm-up call, then the median of
  ``--repeats`` (≥ 3) wall-clock measurements (``time.perf_counter``) of a full call.
* Peak memory: for every (refiner, implementation, configuration) a fresh Python subprocess builds
  the inputs, runs a tiny warm-up call, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``
  ← 5), reads the current RSS, runs one full call and reads the peak RSS (``VmHWM``); the reported value
  is the peak resident-set increase during the call (MiB). Where ``clear_refs`` is unavailable it falls
  back to the increase of ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. It includes allocator effects,
  so treat it as an upper bound of the extra memory the call needs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_refiners import official_pamr, official_par, official_varm  # noqa: E402
from wsseg.layers import pamr, pixel_adaptive_refine, variation_aware_refine  # noqa: E402

METHODS = {
    "PAR": (pixel_adaptive_refine, official_par),
    "PAMR": (pamr, official_pamr),
    "VARM": (variation_aware_refine, official_varm),
}

# (B, C, probs size, image size)
FULL_CONFIGS = [
    (2, 21, 64, 256),
    (4, 21, 64, 256),
    (2, 3, 64, 256),
    (4, 3, 64, 256),
    (2, 21, 32, 128),
    (4, 21, 32, 128),
]
QUICK_CONFIGS = [(2, 21, 16, 64), (2, 3, 32, 128)]


def make_inputs(batch: int, channels: int, probs_size: int, image_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, image_size, image_size, generator=gen)
    probs = torch.rand(batch, channels, probs_size, probs_size, generator=gen).softmax(dim=1)
    return image, probs


def call(method: str, impl: str, image: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    ours, official = METHODS[method]
    with torch.no_grad():
        return ours(image, probs) if impl == "wsseg" else official(image, probs)


def time_call(method: str, impl: str, image, probs, repeats: int) -> float:
    call(method, impl, image, probs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(method, impl, image, probs)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(method: str, impl: str, config, threads: int) -> float:
    """Peak-RSS increase (MiB) of one call, measured in a fresh subprocess."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory", json.dumps([method, impl, list(config)]),
           "--threads", str(threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _memory_child(spec: str) -> None:
    method, impl, config = json.loads(spec)
    image, probs = make_inputs(*config)
    tiny_image, tiny_probs = make_inputs(1, 2, 8, 16)
    call(method, impl, tiny_image, tiny_probs)  # load kernels / libraries
    mib = peak_rss_increase_mib(lambda: call(method, impl, image, probs))
    print(float("nan") if mib is None else mib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small configuration")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per case (>= 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--methods", default="PAR,PAMR,VARM", help="comma-separated subset")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._memory is not None:
        _memory_child(args._memory)
        return
    repeats = max(3, args.repeats)
    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    print(f"torch {torch.__version__}, threads={args.threads}, median of {repeats} runs after 1 warm-up; "
          "defaults: dilations (1,2,4,8,12,24), num_iter 10; memory = peak-RSS increase of one call in a "
          "fresh subprocess\n")
    print("| refiner | B | C | probs → image | official (s) | wsseg (s) | speed-up | official peak (MiB) "
          "| wsseg peak (MiB) | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in methods:
        for config in configs:
            batch, channels, probs_size, image_size = config
            image, probs = make_inputs(*config)
            ours = call(method, "wsseg", image, probs)
            ref = call(method, "official", image, probs)
            diff = (ours - ref).abs().max().item()
            assert torch.allclose(ours, ref, rtol=0, atol=1e-5), f"{method} {config}: max abs diff {diff:.2e}"
            del ours, ref
            t_ref = time_call(method, "official", image, probs, repeats)
            t_ours = time_call(method, "wsseg", image, probs, repeats)
            if args.no_memory:
                m_ref = m_ours = "-"
            else:
                m_ref = f"{peak_memory_mib(method, 'official', config, args.threads):.0f}"
                m_ours = f"{peak_memory_mib(method, 'wsseg', config, args.threads):.0f}"
            print(f"| {method} | {batch} | {channels} | {probs_size}² → {image_size}² | {t_ref:.3f} | "
                  f"{t_ours:.3f} | {t_ref / t_ours:.1f}× | {m_ref} | {m_ours} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
