"""Tests for wsseg.pseudo.seg_pseudo_label (CoSA's soft segmentation pseudo label, cosa.md §3.4)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.reference.official_cosa_losses import official_seg_refine_by_label
from wsseg.pseudo import SegPseudoLabel, seg_pseudo_label


def _inputs(B=3, K=20, H=12, W=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K + 1, H, W, generator=g) * 0.05       # small: T = 0.01 still leaves soft values
    labels = (torch.rand(B, K, generator=g) < 0.3).float()
    labels[0] = 0                                                   # an image without any foreground label
    return logits, labels


# ---------------------------------------------------------------- official formulation
@pytest.mark.parametrize("mode", ["before_softmax", "after_softmax"])
@pytest.mark.parametrize("temperature", [0.01, 1.0])
def test_matches_official(mode, temperature):
    logits, labels = _inputs()
    ref = official_seg_refine_by_label(logits, labels, temperature, after_softmax=mode == "after_softmax")
    q = seg_pseudo_label(logits, labels, temperature=temperature, mask_mode=mode)
    assert q.dtype == torch.float32 and q.shape == logits.shape
    torch.testing.assert_close(q, ref, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- hand-computed values and properties
def test_hand_values_both_modes():
    logits = torch.tensor([0.0, 0.05, 0.02]).view(1, 3, 1, 1)      # bkg, class 1 (absent), class 2
    labels = torch.tensor([[0.0, 1.0]])
    e = math.exp(2.0)
    before = seg_pseudo_label(logits, labels).flatten().tolist()   # softmax([0, 2]) over {bkg, class 2}
    assert before == pytest.approx([1 / (1 + e), 0.0, e / (1 + e)], abs=1e-6)
    e5 = math.exp(5.0)                                             # softmax([0, 5, 2]) then x [1, 0, 1]
    after = seg_pseudo_label(logits, labels, mask_mode="after_softmax").flatten().tolist()
    z = 1 + e5 + e
    assert after == pytest.approx([1 / z, 0.0, e / z], abs=1e-6)
    assert sum(after) < 0.1                                        # not renormalised (official)


def test_one_hot_for_summed_six_logit_maps():
    # CoSA's teacher logits: a sum of 6 maps (3 scales x flip) of a head with a clear per-pixel winner
    g = torch.Generator().manual_seed(1)
    B, K, H, W = 2, 20, 16, 16
    winner = torch.randint(0, K + 1, (B, H, W), generator=g)
    maps = [torch.nn.functional.one_hot(winner, K + 1).permute(0, 3, 1, 2).float() * 2.0
            + 0.3 * torch.randn(B, K + 1, H, W, generator=g) for _ in range(6)]
    logits = torch.stack(maps).sum(0)
    labels = torch.ones(B, K)
    q = seg_pseudo_label(logits, labels, temperature=0.01)
    onehot = torch.nn.functional.one_hot(logits.argmax(1), K + 1).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(q, onehot, rtol=0, atol=1e-6)
    # removing a class moves its pixels to the best present channel; the absent channel is exactly 0
    labels[:, 4] = 0
    q2 = seg_pseudo_label(logits, labels, temperature=0.01)
    assert torch.all(q2[:, 5] == 0)
    masked = logits.clone()
    masked[:, 5] = -1e5
    assert torch.equal(q2.argmax(1), masked.argmax(1))      # (no margin between the remaining classes there)
    keep = winner != 5
    torch.testing.assert_close(q2.permute(0, 2, 3, 1)[keep], onehot.permute(0, 2, 3, 1)[keep], rtol=0, atol=1e-6)


def test_background_always_kept_and_distribution():
    logits, labels = _inputs()
    q = seg_pseudo_label(logits, labels)
    torch.testing.assert_close(q.sum(1), torch.ones_like(q[:, 0]), rtol=0, atol=1e-5)
    assert torch.all(q[0, 1:] == 0) and torch.allclose(q[0, 0], torch.ones_like(q[0, 0]))  # no label: bkg
    absent = torch.cat([torch.zeros(3, 1, dtype=torch.bool), labels == 0], 1)
    assert torch.all(q.permute(0, 2, 3, 1)[absent[:, None, None].expand(-1, 12, 10, -1)] == 0)
    qa = seg_pseudo_label(logits, labels, mask_mode="after_softmax")
    assert torch.all(qa.sum(1) <= 1 + 1e-6) and torch.all(qa[0, 1:] == 0)


def test_no_grad_detached_autocast_and_dtypes():
    logits, labels = _inputs()
    logits.requires_grad_(True)
    q = seg_pseudo_label(logits, labels)
    assert not q.requires_grad
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qa = seg_pseudo_label(logits, labels)
    assert qa.dtype == torch.float32 and torch.equal(qa, q)
    qh = seg_pseudo_label(logits.detach().to(torch.bfloat16), labels)
    assert qh.dtype == torch.float32
    q64 = seg_pseudo_label(logits.detach().double(), labels.long())      # integer labels accepted
    assert q64.dtype == torch.float64
    torch.testing.assert_close(q64.float(), q, rtol=0, atol=1e-6)


def test_module_equals_function():
    logits, labels = _inputs()
    for mode in ("before_softmax", "after_softmax"):
        m = SegPseudoLabel(temperature=0.5, mask_mode=mode)
        assert torch.equal(m(logits, labels), seg_pseudo_label(logits, labels, temperature=0.5, mask_mode=mode))
    assert "temperature=0.5" in repr(m) and "after_softmax" in repr(m)


def test_errors():
    logits, labels = _inputs()
    with pytest.raises(ValueError, match="labels"):
        seg_pseudo_label(logits, labels[:, :-1])                     # K mismatch
    with pytest.raises(ValueError, match="teacher_seg_logits"):
        seg_pseudo_label(logits[0], labels)                          # rank
    with pytest.raises(TypeError, match="teacher_seg_logits"):
        seg_pseudo_label(logits.long(), labels)                      # dtype
    with pytest.raises(ValueError, match="mask_mode"):
        seg_pseudo_label(logits, labels, mask_mode="renormalise")
    for t in (0.0, -1.0, True):
        with pytest.raises(ValueError, match="temperature"):
            seg_pseudo_label(logits, labels, temperature=t)
    with pytest.raises(ValueError, match="mask_mode"):
        SegPseudoLabel(mask_mode="x")
    with pytest.raises(ValueError, match="temperature"):
        SegPseudoLabel(temperature=0)
