"""wsseg.utils.fit_to_stride: sizes by hand, identity, errors."""

from __future__ import annotations

import pytest
import torch

from wsseg.utils import fit_to_stride


@pytest.mark.parametrize("size, multiple, min_size, expected", [
    ((67, 70), 14, 1, (70, 70)),     # 67/14 = 4.79 → 5·14; 70 already a multiple
    ((67, 70), 16, 1, (64, 64)),     # 4.19 → 4·16, 4.375 → 4·16
    ((5, 5), 14, 1, (14, 14)),       # at least one patch
    ((21, 35), 14, 1, (28, 28)),     # 1.5 → 2 and 2.5 → 2: Python's round, half to even
    ((67, 70), 1, 80, (80, 80)),     # min_size only
    ((5, 30), 14, 30, (42, 42)),     # 14 → raised by whole multiples to 42; 30/14 → 28 → 42
])
def test_sizes_by_hand(size, multiple, min_size, expected):
    assert fit_to_stride(torch.zeros(2, 3, *size), multiple, min_size).shape == (2, 3, *expected)


def test_identity_when_sizes_qualify():
    y = torch.randn(1, 2, 28, 42)
    assert fit_to_stride(y, 14) is y


def test_constant_image_stays_constant():
    x = torch.full((1, 1, 67, 70), 0.25)
    assert torch.allclose(fit_to_stride(x, 14), torch.full((1, 1, 70, 70), 0.25))


def test_errors():
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        fit_to_stride(torch.zeros(3, 8, 8), 4)
    with pytest.raises(TypeError, match="x:"):
        fit_to_stride(torch.zeros(1, 3, 8, 8, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="multiple: expected a positive int, got 0"):
        fit_to_stride(torch.zeros(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="min_size: expected a positive int, got 2.5"):
        fit_to_stride(torch.zeros(1, 3, 8, 8), 4, 2.5)
