"""Shared plumbing of the per-iteration benchmarks (``bench_*_iteration.py``): check, time, tabulate.

Each benchmark re-writes its method's training step with a timer around every phase (``phased(timings)``),
checks it against the library step on the same inputs and RNG state, times it over ``repeats`` iterations
after that check, runs every case in its own subprocess (so the peak-RSS numbers do not mix) and prints one
Markdown table.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

Timings = dict[str, list[float]]


def ticker(timings: Timings) -> Callable[[str, float], float]:
    """``tick(name, t0)``: record the time since ``t0`` under ``name`` and return a new start time."""
    def tick(name: str, t0: float) -> float:
        timings.setdefault(name, []).append(time.perf_counter() - t0)
        return time.perf_counter()
    return tick


def measure(phased: Callable[[Timings], torch.Tensor], reference: Callable[[], torch.Tensor], repeats: int,
            reset: Callable[[], None]) -> dict[str, Any]:
    """Check ``phased`` against ``reference`` (same RNG state, losses ``allclose``), then time it.

    ``reset()`` runs after every call, outside the timed region (zero the gradients, restore state).
    Returns the median total, the median of every phase, the rise of the peak RSS over the RSS before the
    first call (MB) and the thread count.
    """
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = torch.get_rng_state()
    ref = reference().detach()
    reset()
    torch.set_rng_state(state)
    got = phased({})
    reset()
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (float(got), float(ref))
    timings: Timings = {}
    totals = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        phased(timings)
        totals.append(time.perf_counter() - t0)
        reset()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"total": statistics.median(totals), "phases": {k: statistics.median(v) for k, v in timings.items()},
            "peak_rss_delta_mb": max(peak - rss0, 0) / 1024.0, "threads": torch.get_num_threads()}


def run_cases(script: str, cases: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """Run ``python script *case`` for every case in a fresh subprocess; the last stdout line is its JSON row."""
    rows = []
    for case in cases:
        res = subprocess.run([sys.executable, os.path.abspath(script), *case], check=True, capture_output=True,
                             text=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return rows


def print_phase_table(title: str, rows: Sequence[dict[str, Any]], phases: Sequence[str],
                      column: Callable[[dict[str, Any]], str]) -> None:
    """One Markdown table: a row per phase (seconds and share of the total), the total and the peak RSS."""
    print(title + "\n")
    print("| phase | " + " | ".join(column(r) for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for ph in phases:
        cells = [f"{r['phases'][ph]:.3f} ({100 * r['phases'][ph] / r['total']:.0f}%)" for r in rows]
        print(f"| {ph} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{r['total']:.3f}**" for r in rows) + " |")
    print("| peak RSS increase (MB) | " + " | ".join(f"{r['peak_rss_delta_mb']:.0f}" for r in rows) + " |")
