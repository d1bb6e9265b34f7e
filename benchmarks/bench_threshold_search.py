"""Benchmark: one CoSA ThresholdSearch update step, torch-native GMM vs the official scikit-learn fit.

One training call = statistic of the batch (bilinear resize of the (B, 20, 448, 448) label-validated CAM
to 28², max over classes) → enqueue B rows → flatten the queue of B·100 rows × 784, drop values ≤ 0.05,
fit a 3-component 1-D GMM (official initialisation) → thresholds → EMA. Compared:

* ``wsseg`` — :class:`wsseg.pseudo.ThresholdSearch` (EM in float64 with torch, vectorised over values
  and components);
* ``official (sklearn)`` — ``tests/reference/official_cosa_threshold.py``: NumPy float64 queue and
  ``sklearn.mixture.GaussianMixture`` with the official ``means_init``/``weights_init``/
  ``precisions_init`` (scikit-learn still runs its k-means pre-initialisation, whose result the official
  call overrides — that cost is part of the official step).

Cases: B = 2 (queue 156,800 values) and B = 4 (313,600), with the queue either as at the start of
training (uniform noise, the official initialisation) or filled with realistic CAM maxima (bimodal
synthetic CAMs). Both methods start from the same queue and get the same batch; the raw thresholds of
the first step (``ema_decay=0``) are compared.

Time: median wall-clock over ``--repeats`` runs (state restored before each), 1 CPU thread for torch,
NumPy/BLAS and OpenMP (threadpoolctl when available and ``OMP_NUM_THREADS=1`` for the workers). Peak
memory: each (method, case) runs in a fresh subprocess; the number is the increase of the peak resident
set size during the first call over the resident set size just before it (``benchmarks/_memory.py``).

Usage::

    python benchmarks/bench_threshold_search.py [--quick] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks._memory import peak_rss_increase_mib  # noqa: E402
from tests.reference.official_cosa_threshold import OfficialThresholdSearch  # noqa: E402
from wsseg.pseudo import ThresholdSearch  # noqa: E402

RATIO, STAT, K, CROP = 100, 28, 20, 448


def synthetic_cam(n: int, size: int, seed: int) -> torch.Tensor:
    """Label-validated normalised CAMs (n, K, size, size) whose per-pixel maxima are bimodal.

    One present class per image carries smooth blobs (sharp sigmoid of a smooth random field): ≈ 0.1–0.2
    on the background, ≈ 0.85–0.95 on objects, as in the paper's confidence histograms; two more present
    classes stay weak; absent classes are zero.
    """
    g = torch.Generator().manual_seed(seed)

    def smooth(channels: int, cells: int) -> torch.Tensor:
        return F.interpolate(torch.rand(n, channels, cells, cells, generator=g), size=(size, size),
                             mode="bilinear", align_corners=False)

    blob = torch.sigmoid(20 * (smooth(1, 4) - 0.55))
    main = 0.12 + 0.78 * blob + 0.08 * (smooth(1, size // 8) - 0.5)
    cam = 0.6 * main * smooth(K, size // 16)
    cls = torch.randint(0, K, (n, 1, 1, 1), generator=g)
    cam.scatter_(1, cls.expand(-1, 1, size, size), main.clamp(0, 1))
    present = torch.zeros(n, K, 1, 1)
    present.scatter_(1, cls, 1.0)
    present[:, :2] = 1.0
    return cam * present


def make_state(B: int, queue_kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    Q = B * RATIO
    if queue_kind == "uniform":
        queue = torch.rand(Q, STAT * STAT, generator=torch.Generator().manual_seed(0))
    else:  # rows as they are written: the statistic of CAM batches (resize to 28² is the identity here)
        queue = synthetic_cam(Q, STAT, seed=1).amax(dim=1).flatten(1)
    return queue, synthetic_cam(B, CROP, seed=2)


class Wsseg:
    def __init__(self, B: int, queue: torch.Tensor) -> None:
        self.module = ThresholdSearch(ema_decay=0.0, queue_ratio=RATIO, stat_size=STAT, batch_size=B)
        self.module.queue.copy_(queue)
        self.state = copy.deepcopy(self.module.state_dict())

    def reset(self) -> None:
        self.module.load_state_dict(self.state)

    def __call__(self, cam: torch.Tensor) -> tuple[float, float]:
        low, high = self.module(cam)
        return low.item(), high.item()


class Official:
    def __init__(self, B: int, queue: torch.Tensor) -> None:
        self.B, self.queue = B, queue.double().numpy()
        self.reset()

    def reset(self) -> None:
        self.ref = OfficialThresholdSearch(self.B, queue_ratio=RATIO, stat_size=STAT, ema_decay=0.0,
                                           queue=self.queue)

    def __call__(self, cam: torch.Tensor) -> tuple[float, float]:
        return self.ref(cam)


METHODS = {"wsseg": Wsseg, "official (sklearn)": Official}


def _one_thread():
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:
        return contextlib.nullcontext()


def worker(method: str, B: int, queue_kind: str, repeats: int) -> dict:
    with _one_thread():
        queue, cam = make_state(B, queue_kind)
        runner = METHODS[method](B, queue)
        out: list = []
        mib = peak_rss_increase_mib(lambda: out.append(runner(cam)))
        times = []
        for _ in range(repeats):
            runner.reset()
            t0 = time.perf_counter()
            runner(cam)
            times.append(time.perf_counter() - t0)
    res = {"time_s": statistics.median(times), "peak_mib": float("nan") if mib is None else mib,
           "low": out[0][0], "high": out[0][1]}
    if method == "wsseg":  # EM iterations, for the table
        from wsseg.pseudo import gmm_1d

        runner.reset()
        runner(cam)
        x = runner.module.queue.double().flatten()
        x = x[x > 0.05]
        res["values"] = int(x.numel())
        res["n_iter"] = int(gmm_1d(x).n_iter)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B=2 only, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "B", "QUEUE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        method, B, queue_kind = args.worker[0], int(args.worker[1]), args.worker[2]
        print(json.dumps(worker(method, B, queue_kind, args.repeats)))
        return

    cases = [(2, "uniform"), (2, "filled")] if args.quick else [(b, q) for b in (2, 4)
                                                              for q in ("uniform", "filled")]
    repeats = 1 if args.quick else args.repeats
    import sklearn

    print(f"torch {torch.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}, "
          f"1 thread, repeats {repeats} (median), CAM ({K} classes, {CROP}²) → statistic {STAT}², "
          f"queue B×{RATIO} rows\n")
    print("| B | queue | values fitted | EM iter. | method | time [ms] | speed-up | peak RSS increase [MiB] "
          "| τ_lo | τ_hi |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for B, queue_kind in cases:
        res = {}
        for method in METHODS:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--repeats", str(repeats),
                                  "--worker", method, str(B), queue_kind], capture_output=True, text=True,
                                 check=True, env=env)
            res[method] = json.loads(out.stdout.strip().splitlines()[-1])
        base = res["official (sklearn)"]["time_s"]
        ours = res["wsseg"]
        for method, r in res.items():
            print(f"| {B} | {queue_kind} | {ours['values']:,} | {ours['n_iter']} | {method} | "
                  f"{1e3 * r['time_s']:.1f} | {base / r['time_s']:.2f}× | {r['peak_mib']:.0f} | "
                  f"{r['low']:.6f} | {r['high']:.6f} |")
        d_lo = abs(ours["low"] - res["official (sklearn)"]["low"])
        d_hi = abs(ours["high"] - res["official (sklearn)"]["high"])
        print(f"|  |  |  |  | \\|Δ\\| |  |  |  | {d_lo:.1e} | {d_hi:.1e} |")


if __name__ == "__main__":
    main()
