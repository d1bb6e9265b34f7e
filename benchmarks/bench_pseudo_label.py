"""Benchmark: the dual-threshold pseudo-label builder vs the official per-image loop.

Compares :func:`wsseg.pseudo.dual_threshold_pseudo_label` — present channels gathered into a dense block,
both thresholds stacked on channels, so one refiner call per image instead of two — in two modes:

* ``whole batch`` (``chunk_pixels=None``): one refiner call for the whole batch;
* ``chunked`` (the default ``chunk_pixels=DEFAULT_CHUNK_PIXELS``): refiner, upsampling and argmax on chunks
  of images of at most that many internal pixels (one image per call at these crops);

with ``tests/reference/official_pseudo_label.py`` (AFA's ``refine_cams_with_bkg_v2`` formulation: a Python
loop over images and thresholds, one refiner call per image and threshold), with PAR (AFA) or VARM (TSCD)
as the refiner (6 dilations, 10 iterations) at realistic sizes: K = 20 classes, 3 present per image,
crops 224 and 512 (internal resolution 112² / 256²).

Outputs are asserted equal before timing. Time: median wall-clock over ``--repeats`` runs after one
warm-up run. Peak memory: each (method, case) runs in a fresh subprocess; the reported number is the
increase of the process's peak resident set size during the first call over the resident set size
measured just before it (after the inputs were built): the high-water mark ``VmHWM`` minus ``VmRSS``
from ``/proc/self/status`` (``benchmarks/_memory.py``) — i.e. the largest transient working set of the
call.

Usage::

    python benchmarks/bench_pseudo_label.py [--quick] [--repeats 3] [--threads 1] [--refiner varm]
"""

from __future__ import annotations

import argparse
import functools
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

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label  # noqa: E402
from wsseg.pseudo import dual_threshold_pseudo_label  # noqa: E402
from wsseg.pseudo.dual_threshold import DEFAULT_CHUNK_PIXELS  # noqa: E402


def make_refiner(name: str = "par"):
    if name == "varm":
        from wsseg.layers.variation_aware_refine import VariationAwareRefine

        return VariationAwareRefine(dilations=(1, 2, 4, 8, 12, 24), num_iter=10)
    from wsseg.layers.pixel_adaptive_refine import PixelAdaptiveRefine

    return PixelAdaptiveRefine(dilations=(1, 2, 4, 8, 12, 24), num_iter=10)


def make_inputs(B: int, crop: int, K: int = 20, present: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cam = F.interpolate(torch.rand(B, K, crop // 16, crop // 16, generator=g), size=(crop, crop),
                        mode="bilinear", align_corners=False)
    cam = cam - cam.amin((2, 3), keepdim=True)
    cam = cam / (cam.amax((2, 3), keepdim=True) + 1e-5)
    labels = torch.zeros(B, K)
    for b in range(B):
        labels[b, torch.randperm(K, generator=g)[:present]] = 1
    image = F.interpolate(torch.rand(B, 3, crop // 8, crop // 8, generator=g), size=(crop, crop),
                          mode="bilinear", align_corners=False)
    valid = torch.ones(B, crop, crop, dtype=torch.bool)
    valid[:, :, crop - crop // 8:] = False
    return cam, labels, image, valid


METHODS = {
    "whole batch": functools.partial(dual_threshold_pseudo_label, chunk_pixels=None),
    "chunked (default)": dual_threshold_pseudo_label,
    "reference loop": reference_dual_threshold_pseudo_label,
}


def worker(method: str, B: int, crop: int, repeats: int, refiner_name: str) -> dict:
    fn = METHODS[method]
    refiner = make_refiner(refiner_name)
    cam, labels, image, valid = make_inputs(B, crop)
    # warm-up call, also the memory measurement
    mib = peak_rss_increase_mib(lambda: fn(cam, labels, image, valid, refiner=refiner))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(cam, labels, image, valid, refiner=refiner)
        times.append(time.perf_counter() - t0)
    return {"time_s": statistics.median(times), "peak_mib": float("nan") if mib is None else mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--refiner", choices=("par", "varm"), default="par")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "B", "CROP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.worker:
        method, B, crop = args.worker[0], int(args.worker[1]), int(args.worker[2])
        print(json.dumps(worker(method, B, crop, args.repeats, args.refiner)))
        return

    cases = [(2, 224)] if args.quick else [(2, 224), (4, 224), (2, 512), (4, 512)]
    repeats = 1 if args.quick else args.repeats
    refiner = make_refiner(args.refiner)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, refiner {refiner!r}, "
          f"K=20, 3 classes present, repeats {repeats}, chunk_pixels {DEFAULT_CHUNK_PIXELS}\n")
    print("| B | crop (internal) | method | time [s] | speed-up | peak RSS increase [MiB] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for B, crop in cases:
        cam, labels, image, valid = make_inputs(B, crop)
        ref = reference_dual_threshold_pseudo_label(cam, labels, image, valid, refiner=refiner)
        for method, fn in METHODS.items():
            out = fn(cam, labels, image, valid, refiner=refiner)
            assert torch.equal(out, ref), f"{method}: outputs differ in {(out != ref).sum().item()} pixels"
        res = {}
        for method in METHODS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                  "--threads", str(torch.get_num_threads()), "--refiner", args.refiner,
                                  "--worker", method, str(B), str(crop)], capture_output=True, text=True,
                                 check=True)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        base = res["reference loop"]["time_s"]
        for method, r in res.items():
            print(f"| {B} | {crop} ({crop // 2}²) | {method} | {r['time_s']:.3f} | {base / r['time_s']:.2f}× | "
                  f"{r['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
