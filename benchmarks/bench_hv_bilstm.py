"""Benchmark: ViT-PCM's HVBiLSTM (forward + backward), batched vs a per-row loop of ``nn.LSTM`` calls.

Compares :class:`wsseg.layers.HVBiLSTM` — all rows of all images in one bidirectional ``nn.LSTM`` call and
all columns in another — with ``loop_hv_bilstm`` of ``tests/reference/official_vitpcm_lstm.py`` (one call
per row and per column of every image, the direct transcription of Keras' ``TimeDistributed`` over rows),
same weights, at the official sizes: 24×24 grid (384 px, ViT-B/16), D = 768, hidden 192, B = 4 and 16,
float32. Both run without dropout (``eval``); outputs and gradients are asserted equal (1e-4 relative)
before timing. A third row, ``wsseg train``, times the module in training mode with the official dropouts
(0.2 on the tokens, 0.2 per-step input dropout, which runs each LSTM on two masked copies, one per
direction): the cost of the faithful input dropout.

One measured call = forward and the backward of ``⟨out, G⟩`` (fixed random G) into the tokens and all
LSTM weights. Time: median wall-clock over ``--repeats`` runs after one warm-up run, the methods
interleaved in one process. Peak memory: each (method, case) runs in a fresh subprocess; the number is
the rise of the peak resident set size during the first call over the resident set size just before it
(``VmHWM − VmRSS``, ``benchmarks/_memory.py``); on CUDA ``torch.cuda.max_memory_allocated`` above the
allocation before it.

Usage::

    python benchmarks/bench_hv_bilstm.py [--quick] [--repeats 3] [--threads 1] [--device cpu|cuda]
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
from tests.reference.official_vitpcm_lstm import loop_hv_bilstm  # noqa: E402
from wsseg.layers import HVBiLSTM  # noqa: E402

D, HIDDEN, G = 768, 192, 24
METHODS = ("wsseg", "loop", "wsseg train")


def make_case(B: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, D, G, G, generator=g).to(device)
    grad_out = torch.randn(B, 4 * HIDDEN, G, G, generator=g).to(device)
    torch.manual_seed(seed)
    module = HVBiLSTM(D, HIDDEN).to(device)
    return tokens, grad_out, module


def run(method: str, case) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tokens, grad_out, module = case
    x = tokens.detach().requires_grad_()
    module.zero_grad(set_to_none=True)
    module.train(method == "wsseg train")
    out = loop_hv_bilstm(x, module.rows, module.cols) if method == "loop" else module(x)
    (out * grad_out).sum().backward()
    grads = [x.grad] + [p.grad for _, p in sorted(module.named_parameters())]
    return out.detach(), grads



def check_equal(case) -> None:
    a_out, a_grads = run("wsseg", case)
    b_out, b_grads = run("loop", case)
    for name, xs, ys in (("output", [a_out], [b_out]), ("gradients", a_grads, b_grads)):
        for x, y in zip(xs, ys, strict=True):
            scale = max(1.0, y.abs().max().item())
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, n=name: f"{n}: {m}")


def worker(method: str, B: int, device: str) -> dict:
    case = make_case(B, device)
    return {"peak_mib": peak_memory_mib(lambda: run(method, case), device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 4 only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.device)))
        return

    batches = (4,) if args.quick else (4, 16)
    repeats = 1 if args.quick else max(3, args.repeats)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, G={G}, D={D}, "
          f"hidden={HIDDEN}, float32, forward+backward, median of {repeats} (interleaved, after warm-up)\n")
    print("| B | method | time [ms] | speed-up vs loop | peak memory increase [MiB] |")
    print("| --- | --- | --- | --- | --- |")
    for B in batches:
        case = make_case(B, args.device)
        check_equal(case)
        times = interleaved_medians(METHODS, lambda m, c=case: run(m, c), repeats, args.device)
        del case
        mem = subprocess_peaks(os.path.abspath(__file__), METHODS, lambda m, b=B: (m, str(b)), args.threads,
                               extra=("--device", args.device))
        base = times["loop"]
        for m in METHODS:
            t = times[m]
            print(f"| {B} | {m} | {1000 * t:.1f} | {base / t:.2f}× | {mem[m]:.0f} |")


if __name__ == "__main__":
    main()
