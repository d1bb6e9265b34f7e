"""Tests of ``wsseg.utils.image``: normalisation and the official uint8 de-normalisation (``common.md`` §11.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.reference.official_denormalize import official_denormalize, official_normalize
from wsseg.data.transforms import Normalize
from wsseg.utils.image import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize


def _all_levels_official() -> torch.Tensor:
    """(1, 3, 1, 256): every grey level of every channel, normalised by the official arithmetic."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)   # (1, 256, 3)
    return torch.from_numpy(official_normalize(levels)).permute(2, 0, 1)[None]


def _all_levels_wsseg() -> torch.Tensor:
    """The same levels normalised by wsseg's data pipeline (``Normalize``)."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    return torch.from_numpy(Normalize()({"image": levels})["image"]).permute(2, 0, 1)[None]


@pytest.mark.parametrize("make", [_all_levels_official, _all_levels_wsseg])
def test_truncate_uint8_equals_official_arithmetic_on_all_levels(make):
    """All 256 levels x 3 channels, bit for bit against the transcribed official ``denormalize_img2``."""
    x = make()
    ours = denormalize(x, mode="truncate_uint8")
    ref = official_denormalize(x)
    assert torch.equal(ours, ref)
    # the official round trip loses one grey level on some (level, channel) cases: truncation, no rounding
    levels = torch.arange(256, dtype=torch.float32)
    lost = levels[None, None, None] - ref * 255
    assert set(lost.round().unique().tolist()) <= {0.0, 1.0}


def test_old_formula_would_differ():
    """(x std + mean) * 255 (the previous wsseg arithmetic) differs by one level on about a third of the
    768 cases (measured: 307 with the official input normalisation, 269 with wsseg's; almost all one
    level low), which the test above would catch."""
    m = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    s = torch.tensor(IMAGENET_STD)[None, :, None, None]
    for x in (_all_levels_official(), _all_levels_wsseg()):
        old = torch.trunc((x * s + m) * 255.0)
        diff = (official_denormalize(x) * 255).round() - old
        assert int((diff != 0).sum()) > 250
        assert int((diff == 1).sum()) > 0.95 * int((diff != 0).sum())
        assert set(diff.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_truncate_uint8_wraps_like_a_c_cast():
    # normalised values whose de-normalisation is -1.5 / 257.25 / 300: truncation, then modulo 256
    targets = torch.tensor([-1.5, 257.25, 300.0])
    x = ((targets / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]).view(1, 1, 1, 3).expand(1, 3, 1, 3).clone()
    out = denormalize(x, mode="truncate_uint8")[0, 0, 0] * 255
    torch.testing.assert_close(out, torch.tensor([255.0, 1.0, 44.0]), atol=1e-3, rtol=0)


def test_truncate_uint8_computes_in_float32_and_keeps_dtype():
    x = _all_levels_official()
    out = denormalize(x.double(), mode="truncate_uint8")
    assert out.dtype == torch.float64
    assert torch.equal(out.float(), official_denormalize(x))


def test_float_mode_inverts_normalize():
    x = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(denormalize(normalize(x)), x, atol=1e-6, rtol=0)
    # hand value: 0 normalised is the mean
    torch.testing.assert_close(denormalize(torch.zeros(1, 3, 1, 1))[0, :, 0, 0], torch.tensor(IMAGENET_MEAN))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(mode="round"), ValueError, "mode"),
    (dict(mean=(0.5, 0.5)), ValueError, "mean"),
])
def test_denormalize_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        denormalize(torch.zeros(1, 3, 2, 2), **kwargs)
    with pytest.raises(TypeError, match="x"):
        denormalize(torch.zeros(1, 3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        denormalize(torch.zeros(3, 2, 2))
