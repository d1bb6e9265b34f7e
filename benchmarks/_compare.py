"""Timing and memory protocol shared by the "ours vs the official formulation" benchmark scripts.

* :func:`interleaved_medians`: one warm-up call per method, then ``repeats`` rounds in which every method
  runs once (interleaved, so that a slow phase of the machine hits all methods alike); the median
  wall-clock time per method, synchronising CUDA around each call.
* :func:`subprocess_peaks`: each method's peak memory from a fresh subprocess of the calling script
  (``--worker ...``, which must print a JSON line with ``peak_mib`` last), so that earlier cases do not
  raise the baseline (see ``benchmarks/_memory.py``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing elsewhere."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleaved_medians(methods: Sequence[str], call: Callable[[str], object], repeats: int,
                        device: str = "cpu") -> dict[str, float]:
    """Median seconds of ``call(method)`` per method: a warm-up call each, then ``repeats`` interleaved rounds."""
    for m in methods:
        call(m)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(repeats):
        for m in methods:
            sync(device)
            t0 = time.perf_counter()
            call(m)
            sync(device)
            times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(ts) for m, ts in times.items()}


def subprocess_peaks(script: str, methods: Sequence[str], worker_args: Callable[[str], Sequence[str]],
                     threads: int, extra: Sequence[str] = ()) -> dict[str, float]:
    """Peak memory (MiB) per method, each measured by ``script --threads T *extra --worker *worker_args(m)``."""
    peaks = {}
    for m in methods:
        cmd = [sys.executable, script, "--threads", str(threads), *extra, "--worker", *worker_args(m)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        peaks[m] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    return peaks
