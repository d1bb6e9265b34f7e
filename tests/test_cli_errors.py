"""Bad flags of the training scripts (``wsseg.training.cli``) fail up front with a message naming the flag, what it
expects and what it got; zero values are rejected instead of silently becoming the defaults."""

from __future__ import annotations

import pytest

from wsseg.training.cli import (
    METHODS,
    TSCD_CLI,
    backbone_kind,
    build_parser,
    main,
    make_recipe,
    non_negative_int,
    positive_int,
)

SMALL = ["--synthetic-images", "4", "--synthetic-size", "32", "--batch-size", "2", "--iters", "1",
         "--no-progress", "--threads", "1", "--num-vis", "0"]

POSITIVE = ["--train-long-side", "--synthetic-images", "--synthetic-size", "--synthetic-classes", "--decoder-dim",
            "--iters", "--crop", "--batch-size", "--stop-at", "--threads", "--eval-long-side", "--max-eval-images"]
NON_NEGATIVE = ["--seed", "--ckpt-every", "--eval-every", "--num-workers", "--num-vis"]


def _parse_error(capsys, argv, spec=TSCD_CLI) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser(spec).parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def _main_error(capsys, spec, argv) -> str:
    """The message of a SystemExit raised by ``main``: parser errors go to stderr, set-up errors are the exit text."""
    with pytest.raises(SystemExit) as exc:
        main(spec, argv)
    err = capsys.readouterr().err
    return err if exc.value.code == 2 else str(exc.value.code)


@pytest.mark.parametrize("flag", POSITIVE)
@pytest.mark.parametrize("value", ["0", "-4"])
def test_positive_flags_reject_zero_and_negatives(capsys, flag, value):
    err = _parse_error(capsys, [flag, value])
    assert f"argument {flag}: expected a positive integer (>= 1), got {value}" in err
    assert len(err.strip().splitlines()) == 2          # the error and a pointer to --help, no 20-line usage


@pytest.mark.parametrize("flag", NON_NEGATIVE)
def test_non_negative_flags(capsys, flag):
    assert getattr(build_parser(TSCD_CLI).parse_args([flag, "0"]), flag[2:].replace("-", "_")) == 0
    err = _parse_error(capsys, [flag, "-1"])
    assert f"argument {flag}: expected a non-negative integer (>= 0), got -1" in err


def test_non_integers_are_named(capsys):
    err = _parse_error(capsys, ["--crop", "1.5"])
    assert "argument --crop: expected a positive integer (>= 1), got '1.5'" in err
    with pytest.raises(Exception, match="positive integer"):
        positive_int("x")
    assert non_negative_int("3") == 3


def test_explicit_values_are_used_not_the_defaults():
    # make_recipe took `args.crop or default` before: a falsy value fell back silently; now only None does
    args = build_parser(TSCD_CLI).parse_args(["--crop", "64", "--batch-size", "2", "--iters", "7"])
    recipe = make_recipe(TSCD_CLI, args)
    assert (recipe.crop_size, recipe.batch_size, recipe.iters) == (64, 2, 7)
    args.crop = args.batch_size = 0   # what a direct caller could pass; no longer replaced by 96 / 4
    with pytest.raises(ValueError):
        make_recipe(TSCD_CLI, args)
    defaults = make_recipe(TSCD_CLI, build_parser(TSCD_CLI).parse_args([]))
    assert (defaults.crop_size, defaults.batch_size, defaults.iters) == (96, 4, 300)   # synthetic defaults


def test_eval_presets_are_checked_when_parsing(capsys):
    err = _parse_error(capsys, ["--eval-msc", "big"])
    assert "argument --eval-msc: invalid choice: 'big'" in err and "tscd" in err
    err = _parse_error(capsys, ["--eval-crf", "nope"])
    assert "argument --eval-crf: invalid choice: 'nope'" in err


def test_eval_crf_without_pydensecrf_fails_before_training(capsys, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_crf(name, *args, **kwargs):
        if name.startswith("pydensecrf"):
            raise ImportError("no pydensecrf")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_crf)
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--eval-crf", "tscd", "--out", str(tmp_path / "r")])
    assert "--eval-crf tscd: needs the optional package pydensecrf" in err
    assert not (tmp_path / "r").exists()


def test_eval_long_side_fails_before_training(capsys, tmp_path):
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--eval-long-side", "-10", "--out", str(tmp_path / "r")])
    assert "argument --eval-long-side: expected a positive integer (>= 1), got -10" in err
    assert not (tmp_path / "r").exists()


def test_stop_at_beyond_iters(capsys, tmp_path):
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--stop-at", "5", "--out", str(tmp_path / "r")])
    assert "--stop-at: expected at most --iters 1, got 5" in err


def test_backbone_kind():
    assert [backbone_kind(n) for n in ("mit_b0", "mit_b9", "resnet38d", "resnet38d_w16", "resnet38d_wx", "test_vit",
                                       "vit_small_patch14_dinov2", "resnet18", "efficientnet_b0", "nope")] == \
        ["mit", None, "resnet38d", "resnet38d", None, "vit", "vit", "cnn", "cnn", None]


@pytest.mark.parametrize("method, backbone, what", [
    ("cosa", "resnet18", "a timm CNN"),
    ("vitpcm", "resnet18", "a timm CNN"),
    ("apc", "resnet18", "a timm CNN"),
    ("cosa", "mit_b1", "a MiT"),
    ("tscd", "resnet38d", "a WideResNet-38"),
    ("slrnet", "mit_b0", "a MiT"),
    ("tscd", "no_such_net", "not a MiT, WideResNet-38 or timm model name"),
])
def test_backbone_of_the_wrong_kind_is_one_line(capsys, tmp_path, method, backbone, what):
    err = _main_error(capsys, METHODS[method], [*SMALL, "--backbone", backbone, "--out", str(tmp_path / "r")])
    first = err.strip().splitlines()[0]
    assert f"error: --backbone: {method} accepts " in first and f"got {backbone!r} ({what})" in first
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    assert ("timm ViT name" in first) and (("MiT name" in first) == (method == "tscd"))
    assert not (tmp_path / "r").exists()


def test_crop_against_the_backbone(capsys, tmp_path):
    # MiT-B0 in TSCD: stride 16, smallest input side 29 (stage-1 grid >= its spatial-reduction ratio 8)
    out = ["--out", str(tmp_path / "r")]
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--crop", "8", *out])
    assert "--crop: expected a multiple of the stride 16 of --backbone mit_b0 (e.g. 16), got 8" in err
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--crop", "40", *out])
    assert "(e.g. 32 or 48), got 40" in err
    err = _main_error(capsys, TSCD_CLI, [*SMALL, "--crop", "16", *out])
    assert "--crop: expected at least 32 for --backbone mit_b0 (its smallest input side is 29), got 16" in err
    # ViT-PCM's recipe checks the crop against its patch size: the message names the flag
    err = _main_error(capsys, METHODS["vitpcm"], [*SMALL, "--crop", "8", "--batch-size", "4", *out])
    assert err.startswith("error: --crop (crop_size): expected a multiple of patch_size=16, got 8")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag, value, expected", [("--synthetic-classes", "9", "expected an int in 1..8, got 9"),
                                                   ("--synthetic-size", "8", "expected an int >= 16, got 8")])
def test_synthetic_set_limits_name_the_flag(capsys, tmp_path, flag, value, expected):
    err = _main_error(capsys, TSCD_CLI, [*SMALL, flag, value, "--out", str(tmp_path / "r")])
    assert err == f"error: {flag}: {expected}"
