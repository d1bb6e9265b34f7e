"""Benchmark: CoSA's CPL builder and SwappedAssignmentLoss vs the official per-image formulation.

(a) **CPL builder** — :func:`wsseg.pseudo.dual_threshold_pseudo_label` without refiner (``high=0.7, low=0.2,
    down_scale=2``) on a label-validated normalised CAM, vs ``official_cam2mask``
    (``tests/reference/official_cosa_losses.py``: CoSA's ``cam2mask`` with crop boxes and a float label map,
    per-image loop) and AFA's formulation (``tests/reference/official_pseudo_label.py``). B = 4, crop 448,
    K = 20 (VOC) and K = 80 (COCO), 2-3 classes present per image.
(b) **SwappedAssignmentLoss** forward + backward — :class:`wsseg.losses.SwappedAssignmentLoss` (main and aux
    CPL, SPL computed inside) vs ``official_swapped_assignment`` (the ``main.py`` loss block: upsampling,
    two ``seg_loss`` calls with two cross-entropies each, full-resolution SPL, ``cam_loss``). B = 4, student
    segmentation and CAM 28×28, pseudo labels 448², K = 20.

Outputs are checked first: (a) labels exactly equal; (b) losses and gradients equal to 1e-5. Time: every
(method, case) runs in a fresh subprocess with one warm-up call, then ``--repeats`` timed calls; the
subprocesses of the methods are interleaved over ``--rounds`` rounds and the median of all timed calls is
reported. Peak memory: rise of the process's peak RSS during the first (warm-up) call over the RSS just before
it (``benchmarks/_memory.py``), from the first round.

Usage::

    python benchmarks/bench_cosa_losses.py [--quick] [--repeats 3] [--rounds 2] [--threads 1]
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

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_cosa_losses import official_cam2mask, official_swapped_assignment  # noqa: E402
from tests.reference.official_pseudo_label import reference_dual_threshold_pseudo_label  # noqa: E402
from wsseg.losses import SwappedAssignmentLoss  # noqa: E402
from wsseg.pseudo import dual_threshold_pseudo_label  # noqa: E402
from wsseg.utils.box import box_to_mask  # noqa: E402


# ---------------------------------------------------------------- (a) CPL builder
def make_cpl_inputs(B: int, crop: int, K: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cam = F.interpolate(torch.rand(B, K, crop // 16, crop // 16, generator=g), size=(crop, crop),
                        mode="bilinear", align_corners=False)
    cam = cam - cam.amin((2, 3), keepdim=True)
    cam = cam / (cam.amax((2, 3), keepdim=True) + 1e-5)
    labels = torch.zeros(B, K)
    for b in range(B):
        labels[b, torch.randperm(K, generator=g)[:2 + b % 2]] = 1          # 2-3 classes present
    cam = cam * labels[:, :, None, None]                                  # label validation (cam_validation)
    boxes = torch.tensor([[0, crop, 0, crop - crop // 8]] * B)             # right 1/8 of the crop is padding
    return cam, labels, boxes, box_to_mask(boxes, crop, crop)


CPL_METHODS = {
    "official cam2mask loop": lambda cam, labels, boxes, valid: official_cam2mask(cam, labels, boxes, 0.7, 0.2),
    "AFA-formulation loop": lambda cam, labels, boxes, valid: reference_dual_threshold_pseudo_label(
        cam, labels, valid=valid, high=0.7, low=0.2),
    "wsseg dual_threshold_pseudo_label": lambda cam, labels, boxes, valid: dual_threshold_pseudo_label(
        cam, labels, valid=valid, high=0.7, low=0.2, down_scale=2),
}


# ---------------------------------------------------------------- (b) loss forward + backward
def make_loss_inputs(B: int, crop: int, K: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    grid = crop // 16                                                     # ViT-B/16 feature grid
    seg = torch.randn(B, K + 1, grid, grid, generator=g).requires_grad_(True)
    cam = (2 * torch.randn(B, K, grid, grid, generator=g)).requires_grad_(True)
    cpl = torch.randint(0, K + 1, (B, crop, crop), generator=g)
    cpl[:, :, crop - crop // 8:] = 255
    aux = torch.randint(0, K + 1, (B, crop, crop), generator=g)
    teacher = 3 * torch.randn(B, K + 1, crop, crop, generator=g)
    labels = torch.zeros(B, K)
    for b in range(B):
        labels[b, torch.randperm(K, generator=g)[:2 + b % 2]] = 1
    return seg, cam, cpl, aux, teacher, labels


_SA = SwappedAssignmentLoss()


def _loss_official(seg, cam, cpl, aux, teacher, labels):
    loss = official_swapped_assignment(seg, cam, cpl, aux, teacher, labels)[2]
    loss.backward()
    return loss


def _loss_wsseg(seg, cam, cpl, aux, teacher, labels):
    loss = _SA(seg, cam, cpl, teacher, labels, aux)
    loss.backward()
    return loss


LOSS_METHODS = {"official formulation": _loss_official, "wsseg SwappedAssignmentLoss": _loss_wsseg}


# ---------------------------------------------------------------- workers and driver
def worker(kind: str, method: str, B: int, crop: int, K: int, repeats: int) -> dict:
    if kind == "cpl":
        inputs = make_cpl_inputs(B, crop, K)
        fn = CPL_METHODS[method]

        def call():
            return fn(*inputs)
    else:
        inputs = make_loss_inputs(B, crop, K)
        fn = LOSS_METHODS[method]

        def call():
            for t in inputs[:2]:
                t.grad = None
            return fn(*inputs)
    mib = peak_rss_increase_mib(call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_mib": float("nan") if mib is None else mib}


def check_cpl(B: int, crop: int, K: int) -> None:
    inputs = make_cpl_inputs(B, crop, K)
    ref = CPL_METHODS["official cam2mask loop"](*inputs).long()
    for method, fn in CPL_METHODS.items():
        out = fn(*inputs)
        assert torch.equal(out.long(), ref), f"{method}: labels differ in {(out.long() != ref).sum().item()} pixels"


def check_loss(B: int, crop: int, K: int) -> None:
    results = {}
    for method, fn in LOSS_METHODS.items():
        inputs = make_loss_inputs(B, crop, K)
        loss = fn(*inputs)
        results[method] = (loss.detach(), inputs[0].grad, inputs[1].grad)
    ref, new = results.values()
    for a, b, name in zip(ref, new, ("loss", "d seg_logits", "d cam_logits"), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def run_case(kind: str, methods, B: int, crop: int, K: int, repeats: int, rounds: int, threads: int) -> dict:
    res = {m: {"times": [], "peak_mib": None} for m in methods}
    for _ in range(rounds):
        for method in methods:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                  "--threads", str(threads), "--worker", kind, method, str(B), str(crop), str(K)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[method]["times"] += r["times"]
            if res[method]["peak_mib"] is None:
                res[method]["peak_mib"] = r["peak_mib"]
    return {m: {"time_s": statistics.median(r["times"]), "peak_mib": r["peak_mib"]} for m, r in res.items()}


def print_table(title: str, rows: list[tuple[str, dict]], base: str) -> None:
    print(f"\n{title}\n")
    print("| case | method | time [s] | speed-up vs official | peak RSS increase [MiB] |")
    print("| --- | --- | --- | --- | --- |")
    for case, res in rows:
        t0 = res[base]["time_s"]
        for method, r in res.items():
            print(f"| {case} | {method} | {r['time_s']:.3f} | {t0 / r['time_s']:.2f}× | {r['peak_mib']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, 1 repeat, 1 round")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved subprocess rounds per method")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--worker", nargs=5, metavar=("KIND", "METHOD", "B", "CROP", "K"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        kind, method, B, crop, K = args.worker
        print(json.dumps(worker(kind, method, int(B), int(crop), int(K), args.repeats)))
        return

    repeats = 1 if args.quick else args.repeats
    rounds = 1 if args.quick else args.rounds
    threads = torch.get_num_threads()
    cpl_cases = [(2, 112, 20)] if args.quick else [(4, 448, 20), (4, 448, 80)]
    loss_cases = [(2, 112, 20)] if args.quick else [(4, 448, 20)]
    print(f"torch {torch.__version__}, threads {threads}, repeats {repeats} x rounds {rounds} (median), "
          "2-3 classes present per image")

    rows = []
    for B, crop, K in cpl_cases:
        check_cpl(B, crop, K)
        rows.append((f"B={B}, {crop}², K={K}",
                     run_case("cpl", list(CPL_METHODS), B, crop, K, repeats, rounds, threads)))
    print_table("(a) CPL builder (high 0.7, low 0.2, down_scale 2, no refiner); labels asserted equal",
                rows, "official cam2mask loop")

    rows = []
    for B, crop, K in loss_cases:
        check_loss(B, crop, K)
        rows.append((f"B={B}, {crop // 16}²→{crop}², K={K}",
                     run_case("loss", list(LOSS_METHODS), B, crop, K, repeats, rounds, threads)))
    print_table("(b) SwappedAssignmentLoss forward + backward (main + aux CPL, SPL inside); loss and gradients "
                "asserted equal to 1e-5", rows, "official formulation")


if __name__ == "__main__":
    main()
