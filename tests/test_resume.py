"""Resume and run folders: kills at chosen moments, refusals, verified checkpoints, --overwrite.

The kill tests run the training script in subprocesses that die with ``os._exit`` (no ``finally`` blocks,
no flush: what ``kill -9`` leaves) at a chosen point, resume them, and compare ``checkpoint.pt``,
``metrics.json`` and ``log.csv`` with an uninterrupted run. The fields allowed to differ are the ones the
engine documentation lists (written out here by hand, not taken from the code under test).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from wsseg.training import TSCDMethod, TSCDRecipe, load_checkpoint, read_checkpoint, save_checkpoint
from wsseg.training.cli import COSA_CLI, TSCD_CLI, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--synthetic-images", "4", "--synthetic-size", "32", "--crop", "32", "--batch-size", "2",
        "--backbone", "test_vit", "--decoder-dim", "8", "--num-vis", "0", "--no-progress", "--threads", "1",
        "--set", "varm_num_iter=1", "scd_num_samples=4", "cam_scales=1.0", "--max-eval-images", "2"]

# the documented fields that may differ between a killed-and-resumed run and the uninterrupted one when
# only --out and --resume differ (docs/engine.rst, "What a resume keeps")
VOLATILE_METRICS = {"resumed_from", "train_time_s", "eval_time_s", "wall_time_s", "torch_threads"}
VOLATILE_CONFIG = {"command": None, "engine": {"out_dir", "resume", "command"}, "args": {"out", "resume"}}

DRIVER = r'''
import os, sys
import torch
from wsseg.training import trainer as T
from wsseg.training.cli import TSCD_CLI, main

where, _, at = os.environ.get("WSSEG_TEST_KILL", "").partition(":")
at = int(at) if at else -1

if where == "eval":      # die inside the evaluation of step `at` (periodic, or the final one at iters)
    real_eval = T.evaluate_method
    def evaluate_method(*a, **k):
        res = real_eval(*a, **k)          # computed, never recorded
        if T._KILL_STEP == at:
            os._exit(137)
        return res
    T.evaluate_method = evaluate_method
    real = T.Trainer._evaluate
    def _evaluate(self, model, step, **kw):
        T._KILL_STEP = step
        return real(self, model, step, **kw)
    T.Trainer._evaluate = _evaluate
elif where == "ckpt":    # die while the checkpoint of step `at` is half written to its temporary file
    real_save = torch.save
    def save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        if isinstance(obj, dict) and obj.get("step") == at:
            f.flush()
            f.truncate(os.fstat(f.fileno()).st_size // 2)
            os._exit(137)
    torch.save = save
elif where == "row":     # die right after the log row of step `at` (between checkpoints)
    real_log = T.CSVLogger.log
    def log(self, row):
        real_log(self, row)
        if int(row["step"]) == at:
            os._exit(137)
    T.CSVLogger.log = log

main(TSCD_CLI, sys.argv[1:])
'''


def _driver(tmp_path: Path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def _run(driver: Path, args: list[str], kill: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               WSSEG_TEST_KILL=kill)
    return subprocess.run([sys.executable, str(driver), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _killed(driver: Path, args: list[str], kill: str) -> None:
    res = _run(driver, args, kill)
    assert res.returncode == 137, (kill, res.returncode, res.stdout[-2000:], res.stderr[-3000:])


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------------- comparison helpers
def _equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            _equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _equal(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, (where, a, b)


def _drop_volatile_config(config: dict) -> dict:
    config = dict(config)
    for key, fields in VOLATILE_CONFIG.items():
        if fields is None:
            config.pop(key, None)
        else:
            config[key] = {k: v for k, v in config[key].items() if k not in fields}
    return config


def _checkpoint_content(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt.pop("integrity")  # a hash over the content, volatile fields included
    extra = _drop_volatile_config(ckpt["extra"])
    extra["engine_state"] = {k: v for k, v in extra["engine_state"].items() if k != "train_time_s"}
    ckpt["extra"] = extra
    return ckpt


def _metrics_content(path: Path) -> str:
    m = json.loads(path.read_text())
    m = {k: v for k, v in m.items() if k not in VOLATILE_METRICS}
    m["config"] = _drop_volatile_config(m["config"])
    return json.dumps(m, sort_keys=True)  # NaN == NaN as text


def _log_rows(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(open(path, newline=""))]


def _rows_so_far(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()[1:]
    except OSError:
        return []


def _assert_same_run(full: Path, cut: Path) -> None:
    _equal(_checkpoint_content(full / "checkpoint.pt"), _checkpoint_content(cut / "checkpoint.pt"), "ckpt")
    assert _metrics_content(full / "metrics.json") == _metrics_content(cut / "metrics.json")
    assert _log_rows(full / "log.csv") == _log_rows(cut / "log.csv")


# ---------------------------------------------------------------------- kills
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    # 8 iterations, checkpoints after 3, 6, 8, evaluations after 2, 4, 6 (periodic) and 8 (final)
    common = [*TINY, "--iters", "8", "--ckpt-every", "3", "--eval-every", "2"]
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "full")])
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [e["step"] for e in full["periodic_evaluations"]] == [2, 4, 6]

    driver, cut = _driver(tmp_path), tmp_path / "cut"
    args = [*common, "--out", str(cut)]
    # 1: killed in the periodic evaluation of step 6, which comes before the checkpoint of step 6: rows 0-5
    #    logged, the evaluation of step 4 made but only in memory, the checkpoint of step 3 kept
    _killed(driver, args, "eval:6")
    assert read_checkpoint(cut / "checkpoint.pt")["step"] == 3
    assert len(_log_rows(cut / "log.csv")) == 6 and not (cut / "metrics.json").exists()
    # 2: resumed from 3, killed while writing the checkpoint of step 6 (a half-written temporary file)
    _killed(driver, [*args, "--resume"], "ckpt:6")
    assert (cut / "checkpoint.pt.tmp").is_file() and read_checkpoint(cut / "checkpoint.pt")["step"] == 3
    assert len(_log_rows(cut / "log.csv")) == 6   # rows 3-5 were cut and written again, not repeated
    # 3: resumed from 3 again, killed in the final evaluation: the last checkpoint exists, metrics.json not
    _killed(driver, [*args, "--resume"], "eval:8")
    assert read_checkpoint(cut / "checkpoint.pt")["step"] == 8 and not (cut / "metrics.json").exists()
    # 4: resuming the finished run runs the final evaluation again
    m = main(TSCD_CLI, [*args, "--resume"])
    assert m["resumed_from"] == 8
    _assert_same_run(tmp_path / "full", cut)
    # resuming it once more rewrites the same metrics.json
    main(TSCD_CLI, [*args, "--resume"])
    _assert_same_run(tmp_path / "full", cut)
    assert full["loss_first10"] == pytest.approx(np.mean([float(r["loss"]) for r in _log_rows(cut / "log.csv")]),
                                                 abs=1e-5)  # all 8 steps, not only those after a resume


@pytest.mark.slow
def test_randomly_killed_run_equals_the_uninterrupted_one(tmp_path):
    # SIGKILL at random moments (start-up, training, evaluation, checkpoint writing), resumed until done
    common = [*TINY, "--iters", "40", "--ckpt-every", "4", "--eval-every", "3"]
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "full")])
    driver, cut = _driver(tmp_path), tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    rng = random.Random(0)
    kills, resumes, seen = 0, 0, []
    for attempt in range(30):
        if (cut / "checkpoint.pt").is_file():
            flags = ["--resume"]
            resumes += 1
            seen.append(read_checkpoint(cut / "checkpoint.pt")["step"])
        elif any((cut / n).is_file() for n in ("log.csv", "metrics.json")):
            flags = ["--overwrite"]              # killed before its first checkpoint: start again
        else:
            flags = []
        proc = subprocess.Popen([sys.executable, str(driver), *common, "--out", str(cut), *flags], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if attempt < 14:
            # wait until the log has a random number of rows more than now (the stale rows a resume cuts
            # included; 0: kill during start-up), then a random instant more
            now = len(_rows_so_far(cut / "log.csv"))
            target = 0 if rng.random() < 0.15 else min(40, now + rng.randint(1, 6))
            while proc.poll() is None and len(_rows_so_far(cut / "log.csv")) < target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.1) if target else rng.uniform(0.5, 4.0))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=600)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, out[-2000:] + err[-3000:]
    print(f"{kills} kills, {resumes} resumes from steps {seen}")
    assert (cut / "metrics.json").is_file() and kills >= 3 and resumes >= 3
    _assert_same_run(tmp_path / "full", cut)


def test_log_is_cut_back_to_the_checkpoint_and_a_partial_last_line_dropped(tmp_path):
    out = tmp_path / "run"
    main(TSCD_CLI, [*TINY, "--iters", "4", "--stop-at", "2", "--out", str(out)])
    good = (out / "log.csv").read_bytes()
    assert good.count(b"\r\n") == 3                        # header + steps 0, 1
    # what a kill leaves: rows of steps past the checkpoint and a row cut in the middle
    (out / "log.csv").write_bytes(good + b"2,5e-05,0.1,0.7,0.7,,,,,,\r\n3,4e-05,0.1,0.6,0.6,,,,,,\r\n1")
    res = main(TSCD_CLI, [*TINY, "--iters", "4", "--stop-at", "3", "--out", str(out), "--resume"])
    assert res == {"stopped_at": 3}
    data = (out / "log.csv").read_bytes()
    assert data.startswith(good) and [int(r["step"]) for r in _log_rows(out / "log.csv")] == [0, 1, 2]
    assert b"0.7,0.7" not in data                          # the stale row of step 2 was replaced


# ---------------------------------------------------------------------- refusals on resume
@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("stopped") / "run"
    main(TSCD_CLI, [*TINY, "--iters", "4", "--stop-at", "2", "--out", str(out)])
    return out


@pytest.mark.parametrize(("change", "expected"), [
    (["--iters", "6"], r"--iters: 4 -> 6 \(the schedule.*start a new run with --iters 6"),
    (["--set", "lr=0.1"], r"lr \(--set lr=\.\.\.\): 6e-05 -> 0\.1"),
    (["--crop", "48"], r"--crop: 32 -> 48"),
    (["--batch-size", "4"], r"--batch-size: 2 -> 4"),
    (["--seed", "3"], r"--seed: 1 -> 3"),
    (["--recipe", "cam"], r"--recipe: 'tscd' -> 'cam'"),
    (["--amp", "bf16"], r"amp \(--amp\): 'none' -> 'bf16'"),
    (["--eval-msc", "tscd"], r"eval_inference \(--eval-msc\): None -> 'tscd'"),
    (["--decoder-dim", "16"], r"--decoder-dim: 8 -> 16"),
    (["--synthetic-classes", "4"], r"--synthetic-classes: 3 -> 4"),
])
def test_resume_with_another_configuration_is_refused(stopped_run, change, expected):
    before = read_checkpoint(stopped_run / "checkpoint.pt")["integrity"]["digest"]
    log_before = (stopped_run / "log.csv").read_bytes()
    with pytest.raises(SystemExit, match=r"(?s)another configuration.*" + expected + r".*A resume may change only"):
        main(TSCD_CLI, [*TINY, "--iters", "4", *change, "--out", str(stopped_run), "--resume"])
    # nothing was touched
    assert read_checkpoint(stopped_run / "checkpoint.pt")["integrity"]["digest"] == before
    assert (stopped_run / "log.csv").read_bytes() == log_before


def test_resume_lists_every_difference(stopped_run):
    with pytest.raises(SystemExit) as err:
        main(TSCD_CLI, [*TINY, "--iters", "4", "--set", "lr=0.1", "--seed", "2", "--out", str(stopped_run),
                        "--resume"])
    lines = [ln for ln in str(err.value).splitlines() if ln.startswith("  ")]
    assert len(lines) == 2 and lines[0].startswith("  lr (--set lr=...)") and lines[1] == "  --seed: 1 -> 2"
    assert "continue with --resume" not in str(err.value)


def test_resume_may_change_engine_flags(tmp_path):
    out = tmp_path / "run"
    main(TSCD_CLI, [*TINY, "--iters", "4", "--stop-at", "1", "--out", str(out)])
    res = main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(out), "--resume", "--stop-at", "3", "--eval-every",
                          "1", "--ckpt-every", "1", "--num-vis", "1", "--num-workers", "0"])
    assert res == {"stopped_at": 3}
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 3


def test_resume_stop_at_not_after_the_checkpoint_is_refused(stopped_run):
    with pytest.raises(SystemExit, match=r"stop_at: 2 is not after the checkpoint's step 2"):
        main(TSCD_CLI, [*TINY, "--iters", "4", "--stop-at", "2", "--out", str(stopped_run), "--resume"])


def test_checkpoint_of_another_method_is_named(tmp_path, stopped_run):
    cosa = tmp_path / "cosa"
    main(COSA_CLI, [*TINY[:-6], "--iters", "2", "--stop-at", "1", "--max-eval-images", "1", "--out", str(cosa)])
    with pytest.raises(SystemExit, match=r"cosa.*checkpoint\.pt is a checkpoint of method 'cosa', not 'tscd'"):
        main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(tmp_path / "new"), "--resume",
                        str(cosa / "checkpoint.pt")])
    net = TSCDMethod(TSCDRecipe(crop_size=32)).build_model(3, backbone="test_vit", decoder_dim=8)
    with pytest.raises(ValueError, match="a checkpoint of method 'cosa', expected 'tscd'"):
        load_checkpoint(cosa / "checkpoint.pt", net, method="tscd")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: the checkpoint does not fit this model .*missing"):
        load_checkpoint(cosa / "checkpoint.pt", net)           # no method given: the keys are summarised


# ---------------------------------------------------------------------- broken checkpoint files
def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize(("damage", "expected"), [
    ("empty", r"empty file \(0 bytes\), not a checkpoint"),
    ("truncated", r"cannot be read as a checkpoint \(.*\); the file is truncated, corrupted or not a torch"),
    ("text", r"cannot be read as a checkpoint"),
    ("weights", r"not a training checkpoint: expected a dict with 'model', 'step' and 'extra'.*--weights"),
    ("list", r"not a training checkpoint.*got a list"),
])
def test_unreadable_checkpoint_names_the_file(tmp_path, stopped_run, damage, expected):
    path = _copy(stopped_run / "checkpoint.pt", tmp_path / "bad" / "checkpoint.pt")
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        path.write_text("step,loss\n0,0.5\n")
    elif damage == "weights":
        torch.save(torch.load(path, weights_only=False)["model"], path)
    else:
        torch.save([1, 2], path)
    with pytest.raises(SystemExit, match=f"(?s)^error: .*{path.name}: {expected}") as err:
        main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(path.parent), "--resume"])
    assert str(path) in str(err.value) and "Traceback" not in str(err.value)
    assert "continue with --resume" not in str(err.value)


def test_flipped_bytes_are_detected(tmp_path, stopped_run):
    src = stopped_run / "checkpoint.pt"
    # 2,000 random bytes flipped anywhere: whatever the reader makes of it, the file is named
    path = _copy(src, tmp_path / "flip" / "checkpoint.pt")
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(len(data), size=2000, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{path}: (cannot be read|content hash mismatch|not a training)"):
        read_checkpoint(path)
    # one float of the model changed by one bit, the file otherwise valid: only the hash can tell
    ckpt = torch.load(src, weights_only=False)
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 10)
    w = ckpt["model"][key].clone()
    w.view(-1).view(torch.int32)[5] ^= 1
    ckpt["model"][key] = w
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=f"{path}: content hash mismatch .*corrupted after it was written"):
        read_checkpoint(path)
    with pytest.raises(SystemExit, match="content hash mismatch"):
        main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(path.parent), "--resume"])


def test_checkpoint_without_hash_loads_with_a_warning(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "old.pt"
    torch.save({"model": net.state_dict(), "optimizer": None, "scheduler": None, "step": 4, "rng": None,
                "extra": {}}, path)
    with pytest.warns(UserWarning, match="no content hash"):
        step, extra = load_checkpoint(path, torch.nn.Linear(3, 2))
    assert step == 4 and extra == {}


# ---------------------------------------------------------------------- non-finite state
def test_non_finite_state_is_never_written_and_never_loaded(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 2)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, net, opt, step=1)
    before = path.read_bytes()
    net[1].running_var[1] = float("inf")
    with pytest.raises(FloatingPointError, match=r"not written .* step 2: model\['1\.running_var'\] holds "
                                                 r"non-finite values: 1 of 2 values non-finite \(inf\)"):
        save_checkpoint(path, net, opt, step=2)
    assert path.read_bytes() == before and not path.with_name("ckpt.pt.tmp").exists()
    net[1].running_var.fill_(1.0)
    opt.state[net[0].weight]["exp_avg_sq"][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"optimizer state 'exp_avg_sq' of parameter '0\.weight'"):
        save_checkpoint(path, net, opt, step=2)
    # a non-finite checkpoint written anyway (an older version) is refused on load, named
    save_checkpoint(path, net, opt, step=2, check_finite=False)
    with pytest.raises(ValueError, match=r"ckpt\.pt: the training state is not finite: optimizer state "
                                         r"'exp_avg_sq' of parameter #0 holds 1 of 4 values non-finite \(nan\)"):
        load_checkpoint(path, net)


class _InfBufferAt(TSCDMethod):
    """Finite losses, but a decoder BatchNorm running_var becomes inf after the optimizer step of ``at``."""

    at = 1

    def after_optimizer_step(self, model, step):
        super().after_optimizer_step(model, step)
        if step == self.at:
            with torch.no_grad():
                model.decoder.fuse[1].running_var[0] = float("inf")


@pytest.mark.parametrize("ckpt_every", [1, 2])
def test_run_stops_instead_of_checkpointing_an_inf_buffer(tmp_path, monkeypatch, ckpt_every):
    from wsseg.training import cli

    monkeypatch.setattr(cli.TSCD_CLI, "method_cls", _InfBufferAt)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as err:
        main(TSCD_CLI, [*TINY, "--iters", "4", "--ckpt-every", str(ckpt_every), "--out", str(out)])
    msg = str(err.value)
    assert "checkpoint: not written" in msg and "model['decoder.fuse.1.running_var']" in msg and "inf" in msg
    if ckpt_every == 1:       # the step-1 checkpoint is intact (and finite): --resume is advised
        assert read_checkpoint(out / "checkpoint.pt")["step"] == 1
        assert "the last checkpoint" in msg and "(step 1) is intact and finite; continue with --resume" in msg
    else:                     # no checkpoint exists: no --resume advice
        assert not (out / "checkpoint.pt").exists()
        assert "--resume" not in msg and "no checkpoint was written; start the run again with --overwrite" in msg


# ---------------------------------------------------------------------- run folders
def test_new_run_into_a_run_folder_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    main(TSCD_CLI, [*TINY, "--iters", "2", "--out", str(out)])
    (out / "eval_tscd.json").write_text("{}")            # an evaluate.py report of this checkpoint
    before = {n: (out / n).read_bytes() for n in ("checkpoint.pt", "log.csv", "metrics.json")}
    with pytest.raises(SystemExit, match=r"out_dir: .*run already holds a run \(checkpoint\.pt, log\.csv, "
                                         r"metrics\.json\); continue it with --resume .* --overwrite") as err:
        main(TSCD_CLI, [*TINY, "--iters", "3", "--out", str(out)])
    assert "training stopped" not in str(err.value)
    assert {n: (out / n).read_bytes() for n in before} == before  # untouched
    m = main(TSCD_CLI, [*TINY, "--iters", "3", "--out", str(out), "--overwrite"])
    assert m["iters"] == 3 and json.loads((out / "metrics.json").read_text())["iters"] == 3
    assert len(_log_rows(out / "log.csv")) == 3 and not (out / "eval_tscd.json").exists()


def test_resume_without_checkpoint_says_how_to_start_again(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"resume: no checkpoint at .*checkpoint\.pt$"):
        main(TSCD_CLI, [*TINY, "--iters", "2", "--out", str(out), "--resume"])
    out.mkdir()
    (out / "log.csv").write_text("step,lr\n0,1e-5\n")    # killed before its first checkpoint
    with pytest.raises(SystemExit, match=r"stopped before its first checkpoint; start it again with --overwrite"):
        main(TSCD_CLI, [*TINY, "--iters", "2", "--out", str(out), "--resume"])


def test_resume_into_another_folder_copies_the_log(tmp_path, stopped_run):
    out = tmp_path / "continued"
    main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(out), "--resume", str(stopped_run / "checkpoint.pt")])
    assert [int(r["step"]) for r in _log_rows(out / "log.csv")] == [0, 1, 2, 3]
    assert (out / "log.csv").read_bytes().startswith((stopped_run / "log.csv").read_bytes())
    with pytest.raises(SystemExit, match=r"holds another run .* than the checkpoint"):
        main(TSCD_CLI, [*TINY, "--iters", "4", "--out", str(out), "--resume", str(stopped_run / "checkpoint.pt")])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, net, step=1)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, net, step=2)
    assert path.read_bytes() == before and not (tmp_path / "ckpt.pt.tmp").exists()
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1


class _RandomCAM(TSCDMethod):
    """An evaluation that draws from the global RNG (as a stochastic CAM would)."""

    def cam(self, model, images):
        torch.rand(3)
        np.random.rand(3)
        random.random()
        return super().cam(model, images)


def test_periodic_evaluation_leaves_the_random_streams_alone(tmp_path, monkeypatch):
    from wsseg.training import cli

    monkeypatch.setattr(cli.TSCD_CLI, "method_cls", _RandomCAM)
    common = [*TINY, "--iters", "4", "--set", "cam_iters=0"]   # TSCD's SCD sampling draws from torch's RNG
    main(TSCD_CLI, [*common, "--out", str(tmp_path / "plain")])
    main(TSCD_CLI, [*common, "--eval-every", "1", "--out", str(tmp_path / "evaluated")])
    a = read_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    b = read_checkpoint(tmp_path / "evaluated" / "checkpoint.pt")
    _equal(a["model"], b["model"], "model")
    _equal(a["rng"], b["rng"], "rng")


def test_resume_with_another_version_warns(tmp_path, monkeypatch):
    import wsseg

    out = tmp_path / "run"
    main(TSCD_CLI, [*TINY, "--iters", "3", "--stop-at", "1", "--out", str(out)])
    monkeypatch.setattr(wsseg, "__version__", "99.0")
    with pytest.warns(UserWarning, match=r"written with wsseg_version .*, this is 99\.0: the continuation may differ"):
        main(TSCD_CLI, [*TINY, "--iters", "3", "--stop-at", "2", "--out", str(out), "--resume"])
    assert read_checkpoint(out / "checkpoint.pt")["extra"]["wsseg_version"] == "99.0"


def test_another_number_of_processes_is_a_difference():
    from wsseg.training.trainer import _config_differences

    saved = {"method": "tscd", "recipe": {"lr": 1e-4}, "engine": {"amp": "none", "threads": 1}, "world_size": 2}
    now = {"method": "tscd", "recipe": {"lr": 1e-4}, "engine": {"amp": "none", "threads": 4}, "world_size": 1}
    assert _config_differences(saved, now) == ["number of processes (torchrun --nproc_per_node): 2 -> 1"]
