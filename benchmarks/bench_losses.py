"""Benchmark: SCD loss and dense energy loss vs straightforward reference formulations (CPU).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_losses.py [--quick] [--repeats N] [--only scd|energy]
        [--dense-max 256]

For each case the script first asserts (in-process) that the library and the reference agree
(loss value and input gradient, ``allclose``), then measures each implementation in a fresh subprocess:
time = median over ``--repeats`` runs of forward + backward (after one warm-up), peak memory = the
process's peak RSS during the warm-up and the timed runs (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` once the inputs are built; fallback ``ru_maxrss``) minus the RSS at that point,
i.e. the extra memory of one forward + backward. Prints a Markdown table.

* SCD: ``wsseg.losses.self_correspondence_distillation`` vs ``tests.reference.official_scd`` (the official
  two-step formulation), S = 40, K = 20 (teacher) / 21 (student), views 512x512 and 153x153 (0.3x), fixed grids.
* Dense energy: the default permutohedral-lattice backend against the exact dense backend
  (``backend="dense"``, ``chunk_size=4096``), C = 21, B = 2, default sigmas and 0.5 downscale, inputs 128²,
  256², 512² (64², 128², 256² internal), with the default ``gradient="official"`` and with
  ``gradient="autograd"``. Before timing, the lattice is checked against the plain-loop transcription of the
  official C++ (``tests.reference.official_permutohedral``, loss and official gradient) and the dense
  backend against ``tests.reference.naive_energy`` (loss and exact gradient) at 64² internal. Dense cases
  above ``--dense-max`` internal pixels per side are skipped; at 256² internal the dense backend is timed
  once, without warm-up, and only with the official gradient (a run takes minutes; autograd ~3× more).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.naive_energy import downscale, naive_energy  # noqa: E402
from tests.reference.official_permutohedral import official_energy  # noqa: E402
from tests.reference.official_scd import official_scd  # noqa: E402
from wsseg.losses import dense_energy_loss, self_correspondence_distillation  # noqa: E402


def _scd_inputs(b: int, h1: int, h2: int, s: int = 40, k: int = 20):
    g = torch.Generator().manual_seed(0)
    t1 = torch.rand(b, k, h1, h1, generator=g)
    t2 = torch.rand(b, k, h2, h2, generator=g)
    s1 = torch.randn(b, k + 1, h1, h1, generator=g).requires_grad_(True)
    s2 = torch.randn(b, k + 1, h2, h2, generator=g).requires_grad_(True)
    g1 = torch.rand(b, s, s, 2, generator=g) * 2 - 1
    g2 = torch.rand(b, s, s, 2, generator=g) * 2 - 1
    return (t1, t2, s1, s2, g1, g2), (s1,)


def _energy_inputs(b: int, h: int, c: int = 21):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, c, h // 4, h // 4, generator=g)
    probs = torch.nn.functional.interpolate(logits * 3, size=(h, h), mode="bilinear").softmax(1)
    probs.requires_grad_(True)
    image = (torch.rand(b, 3, h // 8, h // 8, generator=g) * 255)
    image = torch.nn.functional.interpolate(image, size=(h, h), mode="nearest")
    image = (image + torch.randn(b, 3, h, h, generator=g) * 10).clamp(0, 255)
    valid = torch.ones(b, h, h, dtype=torch.bool)
    valid[:, -h // 8:] = False
    label = torch.randint(0, c, (b, h, h), generator=g)
    label[:, : h // 4, : h // 4] = 255
    return (probs, image, valid, label), (probs,)


def _run(kind: str, impl: str, inputs):
    if kind == "scd":
        t1, t2, s1, s2, g1, g2 = inputs
        if impl == "library":
            return self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=g1.shape[1])
        return official_scd(t1, t2, s1, s2, g1, g2)
    probs, image, valid, label = inputs
    if impl == "reference":
        return naive_energy(probs, image, valid, label)
    backend, gradient = impl.split("/")  # e.g. "permutohedral/official"
    return dense_energy_loss(probs, image, valid, label, backend=backend, gradient=gradient)


def _build(kind: str, params: dict):
    return _scd_inputs(**params) if kind == "scd" else _energy_inputs(**params)


def _check(kind: str, params: dict) -> None:
    inputs, wrt = _build(kind, params)
    ref = _run(kind, "reference", inputs)
    (ref_grad,) = torch.autograd.grad(ref, wrt)
    impls = ("library",) if kind == "scd" else ("dense/official", "dense/autograd")
    rtol = 1e-5 if kind == "scd" else 1e-4
    for impl in impls:
        val = _run(kind, impl, inputs)
        (grad,) = torch.autograd.grad(val, wrt)
        assert torch.allclose(val, ref, rtol=rtol, atol=1e-7), (kind, impl, params, val.item(), ref.item())
        if impl != "dense/official":  # the official energy gradient is not the exact one
            atol = 1e-4 * ref_grad.abs().max().item()
            assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=atol), (kind, impl, params)
    if kind == "energy":  # the lattice against the loop transcription of the official C++
        probs, image, valid, label = inputs
        ref, ref_grad_low = official_energy(probs, image, valid, label)
        p_low = downscale(probs, image, valid, label, 0.5)[0]
        (ref_grad,) = torch.autograd.grad((ref_grad_low * p_low).sum(), probs)
        val = _run(kind, "permutohedral/official", inputs)
        (grad,) = torch.autograd.grad(val, wrt)
        assert abs(val.item() - ref.item()) <= 1e-4 * abs(ref.item()), (val.item(), ref.item())
        assert (grad - ref_grad).norm() <= 1e-4 * ref_grad.norm()


def _worker(spec: dict) -> dict:
    kind, impl, params, repeats = spec["kind"], spec["impl"], spec["params"], spec["repeats"]
    warmup = spec.get("warmup", True)
    inputs, wrt = _build(kind, params)
    times: list[float] = []
    losses: list[float] = []

    def run_all() -> None:
        for i in range(repeats + int(warmup)):
            t0 = time.perf_counter()
            loss = _run(kind, impl, inputs)
            torch.autograd.grad(loss, wrt)
            if i > 0 or not warmup:
                times.append(time.perf_counter() - t0)
            losses.append(loss.item())

    mib = peak_rss_increase_mib(run_all)
    return {"ms": 1000 * statistics.median(times), "mb": float("nan") if mib is None else mib, "loss": losses[-1]}


def _measure(kind: str, impl: str, params: dict, repeats: int, warmup: bool = True) -> dict:
    spec = json.dumps({"kind": kind, "impl": impl, "params": params, "repeats": repeats, "warmup": warmup})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], check=True,
                         capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def _energy_table(sizes: list[int], repeats: int, dense_max: int) -> None:
    print("| case | permutohedral ms | dense ms | speed-up | permutohedral peak MB | dense peak MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for h in sizes:
        params = {"b": 2, "h": h}
        for gradient in ("official", "autograd"):
            lat = _measure("energy", f"permutohedral/{gradient}", params, repeats)
            name = f"B=2, C=21, {h}² in ({h // 2}² after 0.5×), gradient={gradient}"
            slow = h // 2 >= 256
            if h // 2 > dense_max or (slow and gradient == "autograd"):
                print(f"| {name} | {lat['ms']:.1f} | not run | – | {lat['mb']:.0f} | – |", flush=True)
                continue
            den = _measure("energy", f"dense/{gradient}", params, 1 if slow else repeats, warmup=not slow)
            print(f"| {name} | {lat['ms']:.1f} | {den['ms']:.0f}{' (1 run)' if slow else ''} | "
                  f"{den['ms'] / lat['ms']:.0f}× | {lat['mb']:.0f} | {den['mb']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("scd", "energy"), help="run only one loss")
    parser.add_argument("--dense-max", type=int, default=256,
                        help="largest internal side for which the exact dense energy backend is timed")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={repeats} (median), "
          "time = forward + backward, memory = peak RSS increase in a fresh process\n")
    if args.only != "energy":
        scd_params = [{"b": 2, "h1": 128, "h2": 38}] if args.quick else \
            [{"b": b, "h1": 512, "h2": 153} for b in (2, 3, 4)]
        print("| case | library ms | reference ms | speed-up | library peak MB | reference peak MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for params in scd_params:
            name = f"SCD B={params['b']}, S=40, K=20, views {params['h1']}²/{params['h2']}²"
            _check("scd", params)
            ref = _measure("scd", "reference", params, repeats)
            lib = _measure("scd", "library", params, repeats)
            print(f"| {name} | {lib['ms']:.1f} | {ref['ms']:.1f} | {ref['ms'] / lib['ms']:.2f}x | "
                  f"{lib['mb']:.0f} | {ref['mb']:.0f} |", flush=True)
        print()
    if args.only != "scd":
        _check("energy", {"b": 2, "h": 128})
        _energy_table([128] if args.quick else [128, 256, 512], repeats, args.dense_max)


if __name__ == "__main__":
    main()
