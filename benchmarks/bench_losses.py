"""Benchmark: SCD loss and dense energy loss vs straightforward reference formulations (CPU).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_losses.py [--quick] [--repeats N] [--only scd|energy]

For each case the script first asserts (in-process) that the library and the reference agree
(loss value and input gradient, ``allclose``), then measures each implementation in a fresh subprocess:
time = median over ``--repeats`` runs of forward + backward (after one warm-up), peak memory = the
process's peak RSS during the warm-up and the timed runs (Linux ``VmHWM``, reset through
``/proc/self/clear_refs`` once the inputs are built; fallback ``ru_maxrss``) minus the RSS at that point,
i.e. the extra memory of one forward + backward. Prints a Markdown table.

* SCD: ``wsseg.losses.self_correspondence_distillation`` vs ``tests.reference.official_scd`` (the official
  two-step formulation), S = 40, K = 20 (teacher) / 21 (student), views 512x512 and 153x153 (0.3x), fixed grids.
* Dense energy: chunked exact dense filter (``chunk_size=4096``) vs ``tests.reference.naive_energy``,
  which materialises the (B, N, N, 3) colour differences and differentiates with autograd; C = 21, B = 2,
  default sigmas and 0.5 downscale. The library is timed with ``gradient="autograd"`` (same maths as the
  reference; values and gradients asserted equal) and with the default ``gradient="official"`` (value
  asserted equal; its backward is the cheaper official rule). Cases where the naive reference would not
  fit in memory are timed for the library only.
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
from tests.reference.naive_energy import naive_energy  # noqa: E402
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
    if impl == "library":
        return dense_energy_loss(probs, image, valid, label, gradient="official")
    if impl == "library_autograd":
        return dense_energy_loss(probs, image, valid, label, gradient="autograd")
    return naive_energy(probs, image, valid, label)



def _build(kind: str, params: dict):
    return _scd_inputs(**params) if kind == "scd" else _energy_inputs(**params)


def _check(kind: str, params: dict) -> None:
    inputs, wrt = _build(kind, params)
    ref = _run(kind, "reference", inputs)
    (ref_grad,) = torch.autograd.grad(ref, wrt)
    impls = ("library",) if kind == "scd" else ("library", "library_autograd")
    rtol = 1e-5 if kind == "scd" else 1e-4
    for impl in impls:
        val = _run(kind, impl, inputs)
        (grad,) = torch.autograd.grad(val, wrt)
        assert torch.allclose(val, ref, rtol=rtol, atol=1e-7), (kind, impl, params, val.item(), ref.item())
        if impl != "library" or kind == "scd":  # the official energy gradient is not the exact one
            atol = 1e-4 * ref_grad.abs().max().item()
            assert torch.allclose(grad, ref_grad, rtol=1e-3, atol=atol), (kind, impl, params)


def _worker(spec: dict) -> dict:
    kind, impl, params, repeats = spec["kind"], spec["impl"], spec["params"], spec["repeats"]
    inputs, wrt = _build(kind, params)
    times: list[float] = []
    losses: list[float] = []

    def run_all() -> None:
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            loss = _run(kind, impl, inputs)
            torch.autograd.grad(loss, wrt)
            if i > 0:
                times.append(time.perf_counter() - t0)
            losses.append(loss.item())

    mib = peak_rss_increase_mib(run_all)
    return {"ms": 1000 * statistics.median(times), "mb": float("nan") if mib is None else mib, "loss": losses[-1]}


def _measure(kind: str, impl: str, params: dict, repeats: int) -> dict:
    spec = json.dumps({"kind": kind, "impl": impl, "params": params, "repeats": repeats})
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", spec], check=True,
                         capture_output=True, text=True, env=os.environ.copy())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("scd", "energy"), help="run only one loss")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return

    repeats = 1 if args.quick else args.repeats
    if args.quick:
        cases = [
            ("scd", "SCD B=2, S=40, views 128²/38²", {"b": 2, "h1": 128, "h2": 38}, True),
            ("energy", "Energy B=2, C=21, 64² in (32² after 0.5x)", {"b": 2, "h": 64}, True),
        ]
    else:
        cases = [(("scd", f"SCD B={b}, S=40, K=20, views 512²/153²", {"b": b, "h1": 512, "h2": 153}, True))
                 for b in (2, 3, 4)]
        cases += [
            ("energy", "Energy B=2, C=21, 128² in (64² after 0.5x)", {"b": 2, "h": 128}, True),
            ("energy", "Energy B=2, C=21, 256² in (128² after 0.5x)", {"b": 2, "h": 256}, False),
        ]

    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={repeats} (median), "
          "time = forward + backward, memory = peak RSS increase in a fresh process\n")
    print("| case | library ms | reference ms | speed-up | library peak MB | reference peak MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, name, params, with_ref in cases:
        if args.only and kind != args.only:
            continue
        if with_ref:
            _check(kind, params)
        ref = _measure(kind, "reference", params, repeats) if with_ref else None
        impls = [("library", "")] if kind == "scd" else [("library_autograd", ", gradient=autograd"),
                                                           ("library", ", gradient=official")]
        for impl, suffix in impls:
            lib = _measure(kind, impl, params, repeats)
            if ref is not None:
                print(f"| {name}{suffix} | {lib['ms']:.1f} | {ref['ms']:.1f} | {ref['ms'] / lib['ms']:.2f}x | "
                      f"{lib['mb']:.0f} | {ref['mb']:.0f} |", flush=True)
            else:
                print(f"| {name}{suffix} | {lib['ms']:.1f} | n/a (naive too large) | – | {lib['mb']:.0f} | – |",
                      flush=True)


if __name__ == "__main__":
    main()
