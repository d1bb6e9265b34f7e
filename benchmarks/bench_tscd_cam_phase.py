"""Benchmark: one TSCD iteration in the classification-only phase, ``cam_phase_passes="official"`` vs ``"skip"``.

``"official"`` (the default) runs the official loop's passes during the phase (teacher CAMs of the crop
and of the 0.3× view, the 0.3× view's forward, the SCD point draws: 7 extra network passes, no gradients)
so that the random stream and the decoder's BatchNorm statistics follow an official run; ``"skip"`` runs
only the crop's forward. For scale, ``after`` is a full iteration after the phase. One measured call = :class:`wsseg.training.TSCDTrainingStep` at a step inside the
phase, the backward and an AdamW step (the official parameter groups), in train mode.

Time: median wall-clock seconds over ``--repeats`` rounds after one warm-up call each, the two modes
interleaved in one process (``benchmarks/_compare.py``).

Cases: the synthetic main job's size (MiT-B0, crop 96, batch 4, decoder 64, K = 3) and a larger one
(MiT-B1, crop 320 = what the shipped launcher runs, batch 2, decoder 256, K = 20).

Usage::

    python benchmarks/bench_tscd_cam_phase.py [--quick] [--repeats 5] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks._compare import interleaved_medians  # noqa: E402
from wsseg import create_model  # noqa: E402
from wsseg.training import TSCDRecipe, TSCDTrainingStep  # noqa: E402

MODES = ("official", "skip", "after")  # "after": a full iteration after the phase, for scale
CASES = {
    "synthetic main job (MiT-B0, crop 96, B 4)": dict(backbone="mit_b0", crop=96, batch=4, decoder_dim=64, k=3),
    "larger (MiT-B1, crop 320, B 2)": dict(backbone="mit_b1", crop=320, batch=2, decoder_dim=256, k=20),
}


def make_iteration(case: dict, mode: str, device: str):
    torch.manual_seed(0)
    net = create_model("tscd", backbone=case["backbone"], num_classes=case["k"],
                       decoder_dim=case["decoder_dim"]).to(device).train()
    opt = torch.optim.AdamW(net.param_groups(6e-5), lr=6e-5)
    passes = "official" if mode == "after" else mode
    step = TSCDTrainingStep(TSCDRecipe(crop_size=case["crop"], cam_iters=10, cam_phase_passes=passes))
    at = 20 if mode == "after" else 5
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(case["batch"], case["k"])
    labels[:, 0] = 1.0
    batch = {"image": torch.randn(case["batch"], 3, case["crop"], case["crop"], generator=g).to(device),
             "label": labels.to(device)}

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = step(net, batch, step=at)
        loss.backward()
        opt.step()

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="only the synthetic case, 3 repeats")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, case in CASES.items():
        if args.quick and "larger" in name:
            continue
        runs = {m: make_iteration(case, m, args.device) for m in MODES}
        med = interleaved_medians(MODES, lambda m, runs=runs: runs[m](), 3 if args.quick else args.repeats, args.device)
        results[name] = med
        print(f"{name}: in the phase official {med['official']:.3f} s/it, skip {med['skip']:.3f} s/it "
              f"(x{med['official'] / med['skip']:.2f}); after the phase {med['after']:.3f} s/it", flush=True)
    print(json.dumps({"torch": torch.__version__, "threads": args.threads, "device": args.device,
                      "seconds_per_iteration": results}))


if __name__ == "__main__":
    main()
