"""The dependency direction between wsseg's subpackages: training → models → backbones / layers → utils.

Read from the source with :mod:`ast` (every ``import`` statement, also those inside functions), since at run
time ``import wsseg`` loads every subpackage and a cycle would not show.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wsseg

ROOT = Path(wsseg.__file__).parent


def _imported_subpackages(path: Path) -> set[str]:
    """The wsseg subpackages (first name after ``wsseg.``) that the module at ``path`` imports."""
    rel = path.relative_to(ROOT).parts
    package = ["wsseg", *rel[:-1]]  # the package the module lives in (its __init__ included)
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                if node.module:
                    names = [".".join([*base, node.module])]
                else:  # from .. import x, y
                    names = [".".join([*base, a.name]) for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "wsseg" and len(parts) > 1:
                found.add(parts[1])
    return found


def _modules(subpackage: str) -> list[Path]:
    return sorted((ROOT / subpackage).rglob("*.py"))


def test_parser_resolves_relative_imports():
    # the helper itself: relative imports at several levels resolve to the right subpackage
    files = {p.name: p for p in _modules("models")}
    assert "backbones" in _imported_subpackages(files["tscd.py"])  # from .. import backbones as bb
    assert "utils" in _imported_subpackages(files["tscd.py"])  # from ..utils.stride import ...
    training = set().union(*(_imported_subpackages(p) for p in _modules("training")))
    assert {"models", "layers", "utils"} <= training  # the allowed direction is seen


@pytest.mark.parametrize("subpackage", ["models", "backbones", "layers", "losses", "pseudo", "utils", "metrics",
                                        "optim", "data"])
def test_no_subpackage_below_training_imports_training(subpackage):
    offenders = [str(p.relative_to(ROOT)) for p in _modules(subpackage) if "training" in _imported_subpackages(p)]
    assert offenders == [], f"wsseg.{subpackage} must not import wsseg.training: {offenders}"


@pytest.mark.parametrize("subpackage", ["backbones", "layers", "losses", "pseudo", "utils"])
def test_components_do_not_import_models(subpackage):
    offenders = [str(p.relative_to(ROOT)) for p in _modules(subpackage) if "models" in _imported_subpackages(p)]
    assert offenders == [], f"wsseg.{subpackage} must not import wsseg.models: {offenders}"


def test_utils_and_backbones_sit_at_the_bottom():
    for sub, allowed in (("utils", set()), ("backbones", {"utils"})):
        for p in _modules(sub):
            extra = _imported_subpackages(p) - {sub} - allowed
            assert not extra, f"{p.relative_to(ROOT)} imports {sorted(extra)}"


def test_fit_to_stride_lives_in_utils_and_is_re_exported():
    from wsseg.training import fit_to_stride as from_training
    from wsseg.utils import fit_to_stride

    assert from_training is fit_to_stride
    assert fit_to_stride.__module__ == "wsseg.utils.stride"
