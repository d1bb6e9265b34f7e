#!/usr/bin/env python
"""Time per TSCD iteration on the training engine: one process vs ``torchrun`` with N processes (Markdown).

Each configuration trains the built-in synthetic set (MiT-B0, crop 96) for ``--iters`` iterations with the
same **global** batch, every process pinned to ``--threads`` threads, and reads rank 0's per-iteration
``time_s`` from ``log.csv`` (it includes the DDP gradient all-reduce). Reported: the median over the
iterations after ``cam_iters`` (the full TSCD step; the classification-only steps are reported
separately), and the whole run's wall time. The configurations run one after the other, never side by
side. On a machine with C cores, N processes × T threads should satisfy N·T ≤ C.

    python benchmarks/bench_engine.py [--iters 40] [--batch 4] [--nproc 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(nproc: int, args) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench_engine_{nproc}_"))
    cmd = ["examples/train_scd.py", "--iters", str(args.iters), "--batch-size", str(args.batch), "--threads",
           str(args.threads), "--no-progress", "--num-vis", "0", "--max-eval-images", "1", "--out", str(out),
           "--ckpt-every", "0", "--set", f"cam_iters={args.cam_iters}"]
    if nproc == 1:
        full = [sys.executable, *cmd]
    else:
        full = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                f"--master_port={_free_port()}", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    t0 = time.perf_counter()
    res = subprocess.run(full, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(res.stdout[-2000:] + res.stderr[-3000:])
    rows = list(csv.DictReader(open(out / "log.csv")))
    cls = [float(r["time_s"]) for r in rows if int(r["step"]) <= args.cam_iters]
    tscd = [float(r["time_s"]) for r in rows if int(r["step"]) > args.cam_iters]
    return {"nproc": nproc, "cls": statistics.median(cls), "tscd": statistics.median(tscd), "wall": wall}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--cam-iters", type=int, default=10)
    p.add_argument("--batch", type=int, default=4, help="global batch")
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="threads per process")
    args = p.parse_args()
    results = [run(n, args) for n in args.nproc]
    print(f"| processes × threads | global batch | s/iter classification-only | s/iter full TSCD | "
          f"wall ({args.iters} iterations + start-up) |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['nproc']} × {args.threads} | {args.batch} | {r['cls']:.3f} | {r['tscd']:.3f} | {r['wall']:.0f} s |")


if __name__ == "__main__":
    main()
