"""``examples/own_model.py`` (the "Your own model" guide): it trains, and every arrow has the documented shape."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "own_model.py"


@pytest.fixture(scope="module")
def own_model():
    spec = importlib.util.spec_from_file_location("own_model_example", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_both_models_train(own_model):
    threads = torch.get_num_threads()
    try:
        hist = own_model.main(["--iters", "16", "--cam-iters", "6", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert set(hist) == {"cnn", "vit"}
    for kind, h in hist.items():
        assert len(h["loss"]) == 16 and all(math.isfinite(v) for v in h["loss"]), kind
        first, last = sum(h["cls"][:4]) / 4, sum(h["cls"][-4:]) / 4
        assert last < first, (kind, h["cls"])         # the classification loss goes down
        # before iteration 6 the loss is the classification loss alone; after, the (non-negative) pseudo-label
        # terms are added
        assert h["loss"][:6] == h["cls"][:6], kind
        assert all(t >= c for t, c in zip(h["loss"][6:], h["cls"][6:], strict=True)), kind
        assert any(t > c for t, c in zip(h["loss"][6:], h["cls"][6:], strict=True)), kind


@pytest.mark.parametrize("flags", [
    ["--model", "vit", "--pool", "topk", "--seg-loss", "swapped", "--teacher", "ema", "--refiner", "varm"],
    ["--model", "cnn", "--refiner", "none", "--high", "0.7", "--low", "0.25"],
    ["--model", "cnn", "--refiner", "pamr", "--seg-loss", "swapped"],
])
def test_switches_and_walkthrough_shapes(own_model, flags, capsys):
    threads = torch.get_num_threads()
    try:
        hist = own_model.main(["--iters", "3", "--cam-iters", "1", "--threads", "1", "--walkthrough", *flags])
    finally:
        torch.set_num_threads(threads)
    assert all(math.isfinite(v) for h in hist.values() for v in h["loss"])
    out = capsys.readouterr().out
    grid = "(4, 4, 4)" if "vit" in flags else "(4, 8, 8)"          # ViT patch 16, CNN stride 8, 64 px images
    expected = {
        "out.cam": f"(4, 3, {grid[4:]}",
        "out.seg": f"(4, 4, {grid[4:]}",
        "scores": "(4, 3)",
        "cam01": "(4, 3, 64, 64)",
        "pseudo": "(4, 64, 64)",
        "patch": grid,
    }
    for name, shape in expected.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert shape in line, line
    lo, hi = map(float, re.search(r"\[([-\d.e]+), ([-\d.e]+)\]", next(
        ln for ln in out.splitlines() if ln.startswith("image01"))).groups())
    assert 0.0 <= lo <= hi <= 1.0
    cam = next(ln for ln in out.splitlines() if ln.startswith("cam01"))
    assert "[0, " in cam
    if "--pool" in flags:                                             # probabilities in [0, 1]
        lo, hi = map(float, re.search(r"\[([-\d.e]+), ([-\d.e]+)\]", next(
            ln for ln in out.splitlines() if ln.startswith("scores"))).groups())
        assert 0.0 <= lo <= hi <= 1.0


def test_bad_flags(own_model):
    with pytest.raises(SystemExit):
        own_model.parse_args(["--size", "40"])
    with pytest.raises(SystemExit):
        own_model.parse_args(["--iters", "0"])


def test_quickstart_component_snippet_runs():
    """The quickstart's "Use the components in your own loop" block runs as written (no undefined names)."""
    text = (ROOT / "docs" / "quickstart.rst").read_text()
    section = text.split("Use the components in your own loop", 1)[1]
    block = section.split(".. code-block:: python", 1)[1].split("\n\n:doc:", 1)[0]
    code = "\n".join(line[4:] for line in block.splitlines())
    namespace: dict = {}
    exec(compile(code, "quickstart.rst", "exec"), namespace)  # noqa: S102
    assert namespace["pseudo"].shape == (2, 64, 64)
    assert namespace["encoder"].weight.grad is not None
