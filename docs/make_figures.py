#!/usr/bin/env python
"""Make the documentation's figures: one PNG per method from its synthetic main job.

Each example script writes ``OUT/vis/*.png`` panels (image | CAM | pseudo label | prediction | ground truth)
at the end of its run. This script runs (``--run``) or reuses the synthetic main job of every method, stacks
the first ``--panels`` panels of each run under a caption with the run's metrics and writes
``docs/_static/figures/<method>.png`` (palette PNG, checked to stay under ``--max-kb``). It also prints the
wall time and the mIoUs of every run, the figures of the README methods table::

    # run the five jobs one after the other (1 thread each) into /tmp/wsseg_<method>, then make the figures
    python docs/make_figures.py --run --runs "/tmp/wsseg_{method}"

    # only collect runs made before (e.g. by the same commands by hand)
    python docs/make_figures.py --runs "runs/{method}"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "_static" / "figures"

#: The synthetic main job of each method: the commands of the README methods table (APC with the settings
#: the README gives for its required options).
JOBS: dict[str, list[str]] = {
    "tscd": ["examples/train_scd.py"],
    "cosa": ["examples/train_cosa.py"],
    "slrnet": ["examples/train_slrnet.py"],
    "vitpcm": ["examples/train_apc.py"],
    "apc": ["examples/train_apc.py", "--method", "apc", "--decoder-dim", "64", "--set", "k_mode=ratio_to_max",
            "rho=0.5", "w_pcl=0.1", "w_seg=1", "seg_start_iters=100"],
}
TITLES = {"tscd": "TSCD", "cosa": "CoSA", "slrnet": "SLRNet", "vitpcm": "ViT-PCM", "apc": "APC (experimental)"}


def run_job(method: str, out: Path, threads: int) -> float:
    """Run ``method``'s synthetic main job into ``out``; returns the process wall time in seconds."""
    cmd = [sys.executable, *JOBS[method], "--out", str(out), "--no-progress", "--threads", str(threads)]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return time.perf_counter() - t0


def caption(method: str, metrics: dict) -> str:
    def pct(key: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else f"{100 * v:.1f}"

    return (f"{TITLES[method]}: synthetic shapes, {metrics.get('iters', '?')} iterations. mIoU: CAM {pct('cam_miou')}, "
            f"pseudo label {pct('pseudo_label_miou')}, segmentation {pct('seg_miou')}")


def make_figure(method: str, run_dir: Path, panels: int, max_kb: int) -> Path:
    """Stack the first ``panels`` panels of ``run_dir/vis`` under a caption; write ``FIGURES/<method>.png``."""
    files = sorted((run_dir / "vis").glob("*.png"))[:panels]
    if not files:
        raise SystemExit(f"error: {run_dir / 'vis'}: no panels (run the job first, or pass --run)")
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    tiles = [Image.open(f).convert("RGB") for f in files]
    text = caption(method, metrics)
    top = 16
    width = max(max(t.width for t in tiles), 6 * len(text) + 4)
    height = top + sum(t.height for t in tiles) + 4 * (len(tiles) - 1)
    fig = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(fig).text((2, 2), text, fill=(0, 0, 0))
    y = top
    for t in tiles:
        fig.paste(t, (0, y))
        y += t.height + 4
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{method}.png"
    fig.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    kb = path.stat().st_size / 1024
    if kb > max_kb:
        raise SystemExit(f"error: {path}: {kb:.0f} kB, over --max-kb {max_kb}; use fewer --panels")
    print(f"{path}: {fig.width}x{fig.height}, {kb:.0f} kB")
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/figures/{method}",
                   help="run folder of each method, with {method} in it (default runs/figures/{method})")
    p.add_argument("--run", action="store_true", help="train each method's synthetic main job first (one at a time)")
    p.add_argument("--methods", nargs="+", choices=sorted(JOBS), default=list(JOBS))
    p.add_argument("--threads", type=int, default=1, help="threads per job (default 1)")
    p.add_argument("--panels", type=int, default=2, help="panels per figure (default 2)")
    p.add_argument("--max-kb", type=int, default=150, help="largest figure size in kB (default 150)")
    args = p.parse_args(argv)
    if "{method}" not in args.runs:
        p.error(f"--runs: expected a pattern containing {{method}}, got {args.runs!r}")
    rows = []
    for method in args.methods:
        run_dir = Path(args.runs.format(method=method))
        wall = run_job(method, run_dir, args.threads) if args.run else None
        make_figure(method, run_dir, args.panels, args.max_kb)
        m = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
        rows.append((method, wall, m.get("wall_time_s"), m.get("cam_miou"), m.get("pseudo_label_miou"),
                     m.get("seg_miou")))
    print("\n| method | process wall time (s) | engine wall_time_s | CAM | pseudo label | seg |")
    print("|---|---|---|---|---|---|")
    for method, wall, eng, cam, pl, seg in rows:
        def f(v, scale=1.0, nd=1):
            return "n/a" if v is None else f"{scale * v:.{nd}f}"
        print(f"| {method} | {f(wall)} | {f(eng)} | {f(cam, 100, 2)} | {f(pl, 100, 2)} | {f(seg, 100, 2)} |")


if __name__ == "__main__":
    main()
