"""Smoke tests of ``examples/train_scd.py`` and ``examples/evaluate.py`` (run as subprocesses)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-images", "8", "--synthetic-size", "64", "--crop", "64", "--batch-size", "2",
        "--backbone", "test_vit", "--decoder-dim", "8", "--num-vis", "2", "--no-progress", "--threads", "1",
        "--set", "varm_num_iter=2", "--set", "scd_num_samples=8"]
METRIC_KEYS = {"cam_miou", "pseudo_label_miou", "pseudo_label_ignore_fraction", "seg_miou", "seg_miou_filtered",
               "iters", "config", "wall_time_s"}


def _run(args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def test_train_and_evaluate_smoke(tmp_path):
    out = tmp_path / "run"
    stdout = _run(["examples/train_scd.py", "--iters", "4", "--out", str(out), *TINY])
    assert "pseudo-label mIoU" in stdout and "GT-label-filtered" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    for k in ("cam_miou", "pseudo_label_miou", "seg_miou", "seg_miou_filtered", "pseudo_label_ignore_fraction"):
        assert 0.0 <= metrics[k] <= 1.0, k
    assert metrics["iters"] == 4
    assert metrics["config"]["recipe"]["cam_iters"] == 0      # round(10% of 4)
    assert metrics["config"]["recipe"]["varm_num_iter"] == 2  # --set override
    assert len(list((out / "vis").glob("*.png"))) == 2
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert rows[0]["loss_seg"] == "" and rows[1]["loss_seg"] != ""  # cls only while step <= cam_iters = 0
    assert (out / "checkpoint.pt").is_file()

    stdout = _run(["examples/evaluate.py", str(out / "checkpoint.pt"), "--single-scale", "--max-images", "2",
                   "--out", str(tmp_path / "eval.json"), "--no-progress"])
    assert "unfiltered" in stdout and "GT-label-filtered" in stdout
    res = json.loads((tmp_path / "eval.json").read_text())
    assert {"seg_miou", "seg_miou_filtered", "protocol"} <= set(res) and res["num_images"] == 2


@pytest.mark.slow
def test_resume_and_cam_recipe(tmp_path):
    out = tmp_path / "run"
    _run(["examples/train_scd.py", "--iters", "5", "--stop-at", "3", "--out", str(out), *TINY, "--ckpt-every", "1"])
    _run(["examples/train_scd.py", "--iters", "5", "--out", str(out), "--resume", *TINY])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == 3 and metrics["iters"] == 5
    # a longer schedule is a new run, not a resume (refused, with what to do instead)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "examples/train_scd.py", "--iters", "7", "--out", str(out), "--resume",
                          *TINY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "--iters: 5 -> 7" in res.stderr and "start a new run" in res.stderr
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4]
    cam_out = tmp_path / "cam"
    _run(["examples/train_scd.py", "--iters", "3", "--recipe", "cam", "--out", str(cam_out), *TINY])
    rows = list(csv.DictReader(open(cam_out / "log.csv")))
    assert all(r["loss_seg"] == "" for r in rows)             # classification only
    stdout = _run(["examples/evaluate.py", str(cam_out / "checkpoint.pt"), "--max-images", "1", "--crf",
                   "--no-progress"])
    assert "seg mIoU" in stdout and "trains no segmentation head" in stdout
    assert "seg_miou" not in json.loads((cam_out / "metrics.json").read_text())
