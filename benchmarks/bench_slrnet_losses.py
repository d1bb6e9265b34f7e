"""Benchmark: SLRNet's consistency losses, nGWP pooling and gated class-balanced CE vs the official formulation.

All cases run forward + backward at the official sizes (crop 321: view-1 maps 81×81, view-2 maps 40×40,
K + 1 = 21 channels / atoms, pseudo labels 321×321), B = 2 and 4:

(a) **consistency** — ``inverse_view`` of the view-2 probabilities and codes to 81×81, then
    :class:`wsseg.losses.MaskConsistencyLoss` + :class:`wsseg.losses.CodeConsistencyLoss` (weights 4, 4),
    vs the official ``inverse_transform`` + ``reg_loss`` + ``code_reg_loss`` (``max_onehot`` by index-put)
    of ``tests/reference/official_slrnet_losses.py``. The leaves are the four probability / code maps
    (softmax outputs made once, outside the timing: the heads' softmax is the same on both sides and is
    not part of these components); gradients are checked with respect to them.
(b) **nGWP** — softmax + :class:`wsseg.layers.NGWPPooling` + multilabel soft margin, for the main head
    (background logit 1), vs the official ``classifier_forward``.
(c) **gated CE** — :class:`wsseg.losses.GatedClassBalancedCE` on a ``(B, 321, 321)`` label map vs the
    official ``balanced_mask_loss_ce`` on the one-hot float pseudo label ``(B, 21, 321, 321)`` that
    ``pseudo_gtmask`` produces (each method gets its native input; the conversion is not timed).

Outputs are checked first: losses and gradients equal to 1e-5. Time: every (method, case) runs in a fresh
subprocess with one warm-up call, then ``--repeats`` timed calls; the subprocesses of the methods are
interleaved over ``--rounds`` rounds and the median of all timed calls is reported. With ``--interleaved``
both methods are timed in this one process instead, call by call alternately (one warm-up each, then
``repeats × rounds`` rounds, ``benchmarks/_compare.py``): on a machine shared with other jobs this exposes both
methods to the same load and heap state. Peak memory (either way): rise of a fresh subprocess's peak RSS during
its first (warm-up) call over the RSS just before it (``benchmarks/_memory.py``).

Usage::

    python benchmarks/bench_slrnet_losses.py [--quick] [--repeats 5] [--rounds 2] [--threads 1]
        [--kinds consistency ngwp ce]
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

from benchmarks._compare import interleaved_medians  # noqa: E402
from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_slrnet_losses import (  # noqa: E402
    label_map_to_onehot,
    official_affine_transform,
    official_balanced_mask_loss_ce,
    official_classifier_forward,
    official_code_reg_loss,
    official_mask_reg_loss,
)
from wsseg.layers import NGWPPooling, inverse_view  # noqa: E402
from wsseg.losses import CodeConsistencyLoss, GatedClassBalancedCE, MaskConsistencyLoss  # noqa: E402

K1 = 21                       # K + 1 channels (VOC), also the number of atoms
H1, H2, CROP = 81, 40, 321    # view-1 / view-2 feature grids, crop


def make_inputs(kind: str, B: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(B, K1 - 1)
    for b in range(B):
        labels[b, torch.randperm(K1 - 1, generator=g)[:1 + b % 3]] = 1            # 1-3 classes present
    if kind == "consistency":
        return {"probs1": (2 * torch.randn(B, K1, H1, H1, generator=g)).softmax(1),
                "probs2": (2 * torch.randn(B, K1, H2, H2, generator=g)).softmax(1),
                "codes1": (3 * torch.randn(B, K1, H1, H1, generator=g)).softmax(1),
                "codes2": (3 * torch.randn(B, K1, H2, H2, generator=g)).softmax(1), "labels": labels}
    if kind == "ngwp":
        return {"fg": 3 * torch.randn(B, K1 - 1, H1, H1, generator=g), "labels": labels}
    target = torch.zeros(B, CROP, CROP, dtype=torch.long)
    for b in range(B):
        classes = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(labels[b])[:, 0] + 1])
        coarse = classes[torch.randint(0, len(classes), (11, 11), generator=g)]
        target[b] = F.interpolate(coarse[None, None].float(), size=(CROP, CROP), mode="nearest")[0, 0].long()
    target[torch.rand(B, CROP, CROP, generator=g) < 0.15] = 255                    # ambiguous / ignored
    return {"logits": 2 * torch.randn(B, K1, H1, H1, generator=g), "target": target,
            "onehot": label_map_to_onehot(target, K1), "labels": labels}


_MASK, _CODE, _NGWP, _CE = MaskConsistencyLoss(), CodeConsistencyLoss(), NGWPPooling(), GatedClassBalancedCE()


def _leaves(inp: dict, names) -> list:
    return [inp[n].clone().requires_grad_(True) for n in names]


def run_consistency(method: str, inp: dict):
    # leaves: the probabilities and codes themselves (the heads' softmax is common to both sides, not timed)
    p1, p2, c1, c2 = _leaves(inp, ("probs1", "probs2", "codes1", "codes2"))
    if method == "official":
        _, inv = official_affine_transform(torch.empty(1, 1, CROP, CROP), 0.5)
        loss = 4 * official_mask_reg_loss(p1, inv(p2, (H1, H1)), inp["labels"]) \
            + 4 * official_code_reg_loss(c1, inv(c2, (H1, H1)))
    else:
        loss = 4 * _MASK(p1, inverse_view(p2, p1), inp["labels"]) + 4 * _CODE(c1, inverse_view(c2, c1))
    loss.backward()
    return loss.detach(), [p1.grad, p2.grad, c1.grad, c2.grad]


def run_ngwp(method: str, inp: dict):
    (fg,) = _leaves(inp, ("fg",))
    logits = torch.cat([torch.ones_like(fg[:, :1]), fg], 1)
    probs = logits.softmax(1)
    scores = official_classifier_forward(logits, probs) if method == "official" else _NGWP(logits, probs)
    loss = F.multilabel_soft_margin_loss(scores, inp["labels"])
    loss.backward()
    return loss.detach(), [fg.grad]


def run_ce(method: str, inp: dict):
    (x,) = _leaves(inp, ("logits",))
    if method == "official":
        loss = official_balanced_mask_loss_ce(x, inp["onehot"], inp["labels"]).mean()
    else:
        loss = _CE(x, inp["target"], inp["labels"])
    loss.backward()
    return loss.detach(), [x.grad]


KINDS = {"consistency": run_consistency, "ngwp": run_ngwp, "ce": run_ce}
METHODS = ("official", "wsseg")
TITLES = {"consistency": "(a) inverse_view + mask + code consistency (4 + 4), forward + backward",
          "ngwp": "(b) softmax + nGWP + multilabel soft margin, forward + backward",
          "ce": "(c) gated class-balanced CE 81² → 321², forward + backward"}


def worker(kind: str, method: str, B: int, repeats: int) -> dict:
    inp = make_inputs(kind, B)
    fn = KINDS[kind]

    def call():
        return fn(method, inp)

    mib = peak_rss_increase_mib(call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak_mib": float("nan") if mib is None else mib}


def check(kind: str, B: int) -> None:
    inp = make_inputs(kind, B)
    (ref_loss, ref_grads), (loss, grads) = (KINDS[kind](m, inp) for m in METHODS)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-5)
    for i, (a, b) in enumerate(zip(ref_grads, grads, strict=True)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=lambda m, i=i: f"{kind} grad {i}: {m}")
    assert float(loss) != 0.0, f"{kind}: degenerate zero loss"


def run_case(kind: str, B: int, repeats: int, rounds: int, threads: int, interleaved: bool = False) -> dict:
    res = {m: {"times": [], "peak_mib": None} for m in METHODS}
    if interleaved:
        inp = make_inputs(kind, B)
        medians = interleaved_medians(METHODS, lambda m: KINDS[kind](m, inp), repeats * rounds)
        rounds = 1  # the subprocesses below only measure the peak memory
    for _ in range(rounds):
        for method in METHODS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                  "--threads", str(threads), "--worker", kind, method, str(B)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[method]["times"] += r["times"]
            if res[method]["peak_mib"] is None:
                res[method]["peak_mib"] = r["peak_mib"]
    if interleaved:
        return {m: {"time_ms": 1e3 * medians[m], "peak_mib": r["peak_mib"]} for m, r in res.items()}
    return {m: {"time_ms": 1e3 * statistics.median(r["times"]), "peak_mib": r["peak_mib"]} for m, r in res.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B = 2 only, 1 round")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved subprocess rounds per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--interleaved", action="store_true",
                        help="time both methods alternately in this process (memory still per subprocess)")
    parser.add_argument("--kinds", nargs="+", choices=tuple(KINDS), default=tuple(KINDS),
                        help="cases to run (default: all)")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "METHOD", "B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        kind, method, B = args.worker
        print(json.dumps(worker(kind, method, int(B), args.repeats)))
        return

    batches = (2,) if args.quick else (2, 4)
    rounds = 1 if args.quick else args.rounds
    print(f"torch {torch.__version__}, threads {args.threads}, repeats {args.repeats} x rounds {rounds} (median, "
          f"{'interleaved in one process' if args.interleaved else 'one subprocess per method and round'}); "
          "losses and gradients asserted equal to 1e-5 first\n")
    print("| component | B | official [ms] | wsseg [ms] | speed-up | official peak [MiB] | wsseg peak [MiB] |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind in args.kinds:
        for B in batches:
            check(kind, B)
            r = run_case(kind, B, args.repeats, rounds, args.threads, args.interleaved)
            o, w = r["official"], r["wsseg"]
            print(f"| {TITLES[kind]} | {B} | {o['time_ms']:.1f} | {w['time_ms']:.1f} | "
                  f"{o['time_ms'] / w['time_ms']:.2f}× | {o['peak_mib']:.1f} | {w['peak_mib']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
