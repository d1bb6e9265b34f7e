"""pixel_to_patch_label / PixelToPatchLabel against hand-built labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsseg.losses import PatchContrastLoss
from wsseg.pseudo import PixelToPatchLabel, pixel_to_patch_label

I = 255  # noqa: E741


def _label():
    # 4 x 6 pixels, patches of 2 x 2 -> a 2 x 3 grid. Patch contents (row-major):
    # (0,0) 1 1 1 0 -> 1        (0,1) 2 I 2 I -> 2 (half ignored)   (0,2) I I I 3 -> 3 of 4 ignored
    # (1,0) 0 2 2 0 -> tie 0/2  (1,1) 3 3 3 0 -> 3                  (1,2) I I I I -> all ignored
    return torch.tensor([[[1, 1, 2, I, I, I],
                          [1, 0, 2, I, I, 3],
                          [0, 2, 3, 3, I, I],
                          [2, 0, 3, 0, I, I]]])


def test_majority_default_rule():
    out = pixel_to_patch_label(_label(), patch_size=2)
    # tie (0,0 twice; 2 twice) -> lowest class 0; half ignored (2/4 = 0.5, not > 0.5) keeps the majority
    assert out.tolist() == [[[1, 2, I], [0, 3, I]]]
    assert out.dtype == torch.int64


@pytest.mark.parametrize("max_ignore, expected", [
    (0.0, [[1, I, I], [0, 3, I]]),      # any ignored pixel ignores the patch
    (0.49, [[1, I, I], [0, 3, I]]),
    (0.75, [[1, 2, 3], [0, 3, I]]),     # 3/4 ignored is not > 0.75: the one non-ignored pixel decides
    (1.0, [[1, 2, 3], [0, 3, I]]),      # only a fully ignored patch is ignored
])
def test_majority_max_ignore(max_ignore, expected):
    assert pixel_to_patch_label(_label(), patch_size=2, max_ignore=max_ignore).tolist() == [expected]


def test_nearest_is_top_left_pixel_and_matches_interpolate():
    y = _label()
    out = pixel_to_patch_label(y, patch_size=2, mode="nearest")
    assert out.tolist() == [[[1, 2, I], [0, 3, I]]]
    # a grid that does not divide the image: F.interpolate's floor(i * H / h) rule (AFA's affinity label)
    g = torch.Generator().manual_seed(0)
    big = torch.randint(0, 5, (2, 30, 45), generator=g)
    big[:, ::7] = I
    ref = F.interpolate(big[:, None].float(), size=(4, 6), mode="nearest")[:, 0].long()
    assert torch.equal(pixel_to_patch_label(big, grid_size=(4, 6), mode="nearest"), ref)


def test_grid_size_equals_patch_size_and_rectangular_patches():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (3, 12, 20), generator=g)
    assert torch.equal(pixel_to_patch_label(y, patch_size=4), pixel_to_patch_label(y, grid_size=(3, 5)))
    # (p_h, p_w) = (3, 2): patch (0, 0) = rows 0-2, cols 0-1
    y = torch.zeros(1, 6, 4, dtype=torch.long)
    y[0, 0:3, 0:2] = torch.tensor([[5, 5], [1, 5], [1, 1]])   # 5 three times, 1 three times -> tie -> 1
    y[0, 3:6, 2:4] = 7
    assert pixel_to_patch_label(y, patch_size=(3, 2)).tolist() == [[[1, 0], [0, 7]]]


def test_majority_against_a_direct_count():
    # independent reference: Python counting per patch on a random map (small)
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (2, 8, 8), generator=g)
    y[torch.rand(2, 8, 8, generator=g) < 0.3] = I
    out = pixel_to_patch_label(y, patch_size=4, max_ignore=0.4)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                vals = y[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].flatten().tolist()
                kept = [v for v in vals if v != I]
                if len(vals) - len(kept) > 0.4 * 16 or not kept:
                    want = I
                else:
                    counts = {c: kept.count(c) for c in set(kept)}
                    want = min(c for c, n in counts.items() if n == max(counts.values()))
                assert out[b, i, j].item() == want


def test_all_ignored_and_other_ignore_index():
    y = torch.full((1, 4, 4), I)
    assert pixel_to_patch_label(y, patch_size=2, max_ignore=1.0).tolist() == [[[I, I], [I, I]]]
    y = torch.tensor([[[-1, -1], [2, -1]]])
    assert pixel_to_patch_label(y, patch_size=2, ignore_index=-1, max_ignore=1.0).tolist() == [[[2]]]
    assert pixel_to_patch_label(y, patch_size=2, ignore_index=-1).tolist() == [[[-1]]]


def test_feeds_patch_contrast_loss():
    emb = torch.randn(2, 8, 3, 3, requires_grad=True)
    patch = PixelToPatchLabel(grid_size=(3, 3))(torch.randint(0, 3, (2, 48, 48)))
    loss = PatchContrastLoss()(emb, patch)
    loss.backward()
    assert torch.isfinite(loss) and emb.grad is not None


def test_errors():
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        pixel_to_patch_label(y)
    with pytest.raises(ValueError, match="exactly one"):
        pixel_to_patch_label(y, patch_size=2, grid_size=(4, 4))
    with pytest.raises(ValueError, match="divide"):
        pixel_to_patch_label(y, grid_size=(3, 3))
    with pytest.raises(ValueError, match="empty"):
        pixel_to_patch_label(y, patch_size=16)
    with pytest.raises(ValueError, match="mode"):
        pixel_to_patch_label(y, patch_size=2, mode="bilinear")
    with pytest.raises(ValueError, match="max_ignore"):
        pixel_to_patch_label(y, patch_size=2, max_ignore=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        pixel_to_patch_label(y, patch_size=0)
    with pytest.raises(TypeError, match="label"):
        pixel_to_patch_label(y.float(), patch_size=2)
    with pytest.raises(ValueError, match="label"):
        pixel_to_patch_label(y[0], patch_size=2)
    with pytest.raises(ValueError, match=">= 0"):
        pixel_to_patch_label(y - 3, patch_size=2)
    with pytest.raises(ValueError, match="max_ignore"):
        PixelToPatchLabel(patch_size=2, max_ignore=-0.1)


def test_module_repr():
    m = PixelToPatchLabel(patch_size=14, mode="nearest")
    assert "patch_size=14" in repr(m) and "'nearest'" in repr(m)
