"""Benchmark: ViT-PCM's label merge, pooled BCE, 2×2 mosaic and equivariance loss vs the official formulation.

Compares the vectorised :mod:`wsseg` functions — :func:`wsseg.pseudo.merge_class_labels`,
:func:`wsseg.losses.pooled_bce`, :func:`wsseg.layers.mosaic_2x2` + :func:`wsseg.layers.unmosaic_2x2` and
:func:`wsseg.losses.equivariance_loss` — with the NumPy transcription of the official TensorFlow code in
``tests/reference/official_vitpcm_losses.py`` (channels-last, per-image / per-class / per-patch loops,
tf.keras 2.9 semantics) at ViT-PCM's training sizes: C = 21 classes (VOC), patch grid 24×24 for the merge,
second views of 192×192 (mosaic 384×384, prediction 24×24 split into 12×12 grids), B = 16 (one replica) and
B = 64 (the global batch of 4 GPUs), float32, forward only (the official targets are stop-gradient).

Outputs are asserted equal (exactly for the mosaic, 1e-5 otherwise) before timing. Time: median
wall-clock over ``--repeats`` runs after one warm-up run, the two methods interleaved in one process.
Peak memory: each (component, method, B) runs in a fresh subprocess; the number is the rise of the peak
resident set size during the first call over the resident set size just before it (``VmHWM − VmRSS``,
``benchmarks/_memory.py``).

Usage::

    python benchmarks/bench_vitpcm_losses.py [--quick] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from benchmarks._compare import interleaved_medians, subprocess_peaks  # noqa: E402
from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_vitpcm_losses import (  # noqa: E402
    official_cce_loss,
    official_extract_nonoverlapping_patches,
    official_mce_loss,
    official_merge_class_labels,
    official_merged_batch,
)
from wsseg.layers import mosaic_2x2, unmosaic_2x2  # noqa: E402
from wsseg.losses import equivariance_loss, pooled_bce  # noqa: E402
from wsseg.pseudo import merge_class_labels  # noqa: E402

C, GRID, SCALE, PATCH = 21, 24, 192, 16
METHODS = ("wsseg", "official")
COMPONENTS = ("merge_class_labels", "pooled_bce", "mosaic+unmosaic", "equivariance_loss")


def _cl(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(rearrange(x, "b c h w -> b h w c").numpy())


def make_case(component: str, B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(B, C, generator=g) < 0.15).float()
    labels[:, 0] = 1
    probs = torch.softmax(3 * torch.randn(B, C, GRID, GRID, generator=g), dim=1)
    case: dict = {"labels": labels, "labels_np": labels.numpy()}
    if component == "merge_class_labels":
        case.update(probs=probs, probs_np=_cl(probs))
    elif component == "pooled_bce":
        pooled = probs.amax(dim=(2, 3))
        case.update(pooled=pooled, pooled_np=pooled.numpy())
    elif component == "mosaic+unmosaic":
        views = torch.rand(B, 3, SCALE, SCALE, generator=g)
        pred = torch.softmax(torch.randn(B // 4, C, 2 * SCALE // PATCH, 2 * SCALE // PATCH, generator=g), dim=1)
        case.update(views=views, views_np=_cl(views), pred=pred, pred_np=_cl(pred))
    else:
        g12 = SCALE // PATCH
        pred = torch.softmax(torch.randn(B, C, g12, g12, generator=g), dim=1)
        target = merge_class_labels(torch.softmax(3 * torch.randn(B, C, g12, g12, generator=g), dim=1), labels)
        case.update(pred=pred, target=target, pred_np=_cl(pred), target_np=_cl(target))
    return case


def run(component: str, method: str, case: dict):
    ours = method == "wsseg"
    if component == "merge_class_labels":
        if ours:
            return merge_class_labels(case["probs"], case["labels"])
        return official_merge_class_labels(case["probs_np"], case["labels_np"])
    if component == "pooled_bce":
        if ours:
            return pooled_bce(case["pooled"], case["labels"])
        return official_mce_loss(case["labels_np"], case["pooled_np"])
    if component == "mosaic+unmosaic":
        if ours:
            return mosaic_2x2(case["views"]), unmosaic_2x2(case["pred"])
        return (official_merged_batch(case["views_np"]),
                official_extract_nonoverlapping_patches(case["pred_np"], size=SCALE // PATCH))
    if ours:
        return equivariance_loss(case["pred"], case["target"])
    return official_cce_loss(case["target_np"], case["pred_np"])


def check_equal(component: str, case: dict) -> None:
    ours, ref = run(component, "wsseg", case), run(component, "official", case)
    if component == "mosaic+unmosaic":
        assert np.array_equal(_cl(ours[0]), ref[0]), "mosaic differs"
        assert np.array_equal(_cl(ours[1]), ref[1]), "unmosaic differs"
    elif component == "merge_class_labels":
        np.testing.assert_allclose(_cl(ours), ref, rtol=0, atol=1e-5)
    else:
        np.testing.assert_allclose(float(ours), float(ref), rtol=1e-5, atol=1e-5)


def worker(component: str, method: str, B: int) -> dict:
    case = make_case(component, B)
    mib = peak_rss_increase_mib(lambda: run(component, method, case))
    return {"peak_mib": float("nan") if mib is None else mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 16 only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--worker", nargs=3, metavar=("COMPONENT", "METHOD", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return

    batches = (16,) if args.quick else (16, 64)
    repeats = 1 if args.quick else max(3, args.repeats)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}, C={C}, "
          f"merge grid {GRID}², views {SCALE}² (mosaic {2 * SCALE}², prediction {2 * SCALE // PATCH}² -> "
          f"{SCALE // PATCH}²), float32, forward, median of {repeats} (interleaved, after warm-up)\n")
    print("| component | B | method | time [ms] | speed-up vs official | peak RSS increase [MiB] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for component in COMPONENTS:
        for B in batches:
            case = make_case(component, B)
            check_equal(component, case)
            times = interleaved_medians(METHODS, lambda m, c=case, k=component: run(k, m, c), repeats)
            del case
            mem = subprocess_peaks(os.path.abspath(__file__), METHODS, lambda m, k=component, b=B: (k, m, str(b)),
                                   args.threads)
            base = times["official"]
            for m in METHODS:
                t = times[m]
                print(f"| {component} | {B} | {m} | {1000 * t:.2f} | {base / t:.1f}× | {mem[m]:.1f} |")


if __name__ == "__main__":
    main()
