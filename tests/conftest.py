"""Shared test fixtures.

Tests that need the real data / weights in ``../shared`` read its location from the environment
variable ``WSSEG_SHARED`` (set by ``.ci/run``) and are skipped with a clear reason when it is unset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def _shared_dir() -> Path | None:
    value = os.environ.get("WSSEG_SHARED")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ``shared/`` folder (data, weights, specs); skips the test when ``WSSEG_SHARED`` is unset."""
    path = _shared_dir()
    if path is None:
        pytest.skip("WSSEG_SHARED is not set (or not a folder): real data/weights tests skipped; "
                    "run via `bash .ci/run` or export WSSEG_SHARED=/path/to/shared")
    return path


@pytest.fixture(scope="session")
def coco128_dir(shared_dir: Path) -> Path:
    """``shared/data/coco128`` (skips when absent)."""
    path = shared_dir / "data" / "coco128"
    if not (path / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found under {path}")
    return path


@pytest.fixture(scope="session")
def ccp_voc_dir(shared_dir: Path) -> Path:
    """``shared/data/ccp_voc`` (Clothing Co-Parsing in VOC layout, 53 classes; skips when absent)."""
    path = shared_dir / "data" / "ccp_voc"
    if not (path / "class_names.txt").is_file():
        pytest.skip(f"ccp_voc not found under {path}")
    return path


@pytest.fixture(scope="session")
def dinov2_weights(shared_dir: Path) -> Path:
    """Path of the ViT-S/14 DINOv2-derived fp16 state dict (skips when absent)."""
    path = shared_dir / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
    if not path.is_file():
        pytest.skip(f"weights not found: {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
