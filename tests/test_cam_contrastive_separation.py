"""Tests for the EXPERIMENTAL wsseg.losses.CAMContrastiveSeparation (assumed margin form, cosa.md §6)."""

from __future__ import annotations

import pytest
import torch

from wsseg.losses import CAMContrastiveSeparation, cam_contrastive_separation

EPS = 1e-5


def _reference(cam_logits, cpl, labels, margin, ignore_index=255):
    """The spec equations transcribed with per-image / per-class loops; returns the (B, K) terms and pairs."""
    b, k, h, w = cam_logits.shape
    big_h, big_w = cpl.shape[-2:]
    rows = [(i * big_h) // h for i in range(h)]  # nearest: source index floor(i * H / h)
    cols = [(j * big_w) // w for j in range(w)]
    terms = torch.zeros(b, k, dtype=cam_logits.dtype)
    pairs = []
    for n in range(b):
        y = cpl[n][rows][:, cols]
        present = [c for c in range(1, k + 1) if labels[n, c - 1] > 0]
        regions = {c: (y == c) for c in present}
        regions[0] = y == 0
        for c in present:
            m = torch.relu(cam_logits[n, c - 1])
            m = (m - m.min()) / ((m - m.min()).max() + EPS)
            r_c = regions[c]
            if r_c.sum() == 0:
                continue
            neg_region = torch.zeros_like(r_c)
            for c2, r in regions.items():
                if c2 != c:
                    neg_region |= r
            pos = m[r_c].mean()
            term = 1 - pos
            if neg_region.sum() > 0:
                term = term + torch.relu(m[neg_region].mean() - margin)
            terms[n, c - 1] = term
            pairs.append((n, c - 1))
    return terms, pairs


def _case(seed=0, b=3, k=4, h=5, w=6, big=(20, 24), dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    cam = torch.randn(b, k, h, w, generator=g, dtype=dtype)
    labels = (torch.rand(b, k, generator=g) > 0.4).to(dtype)
    cpl = torch.randint(0, k + 1, (b, *big), generator=g)
    cpl[torch.rand(b, *big, generator=g) < 0.15] = 255
    return cam, cpl, labels


def test_hand_computed_small_case():
    cam = torch.tensor([[[[3.0, 1.0], [-1.0, 0.0]],
                         [[0.0, 2.0], [4.0, 2.0]]]], dtype=torch.float64)
    # 4x4 CPL of constant 2x2 blocks; nearest to 2x2 gives [[1, 0], [2, 255]]
    cpl = torch.tensor([[1, 0], [2, 255]]).repeat_interleave(2, 0).repeat_interleave(2, 1)[None]
    labels = torch.ones(1, 2)
    d, e = 3 + EPS, 4 + EPS
    # class 1 (channel 0): pos = 3/d at (0,0); negatives {(0,1): 1/d, (1,0): 0}
    # class 2 (channel 1): pos = 4/e at (1,0); negatives {(0,0): 0, (0,1): 2/e}
    l1 = 1 - 3 / d + (1 / d) / 2
    l2 = 1 - 4 / e + (2 / e) / 2
    out = cam_contrastive_separation(cam, cpl, labels, margin=0.0, reduction="none")
    torch.testing.assert_close(out, torch.tensor([[l1, l2]], dtype=torch.float64))
    torch.testing.assert_close(cam_contrastive_separation(cam, cpl, labels, margin=0.0),
                               torch.tensor((l1 + l2) / 2, dtype=torch.float64))
    # margin 0.2: class 1's negative mean (~0.167) is tolerated, class 2's (~0.25) exceeds it by ~0.05
    out = cam_contrastive_separation(cam, cpl, labels, margin=0.2, reduction="none")
    torch.testing.assert_close(out, torch.tensor([[1 - 3 / d, 1 - 4 / e + 1 / e - 0.2]], dtype=torch.float64))


@pytest.mark.parametrize("seed, big", [(0, (20, 24)), (1, (13, 17)), (2, (5, 6))])
@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_matches_loop_reference(seed, big, margin):
    cam, cpl, labels = _case(seed, big=big)
    terms, pairs = _reference(cam, cpl, labels, margin)
    out = cam_contrastive_separation(cam, cpl, labels, margin=margin, reduction="none")
    torch.testing.assert_close(out, terms, rtol=1e-12, atol=1e-12)
    assert len(pairs) > 0
    torch.testing.assert_close(cam_contrastive_separation(cam, cpl, labels, margin=margin, reduction="sum"),
                               terms.sum())
    torch.testing.assert_close(cam_contrastive_separation(cam, cpl, labels, margin=margin),
                               terms.sum() / len(pairs))


def test_float32_matches_reference():
    cam, cpl, labels = _case(4, dtype=torch.float32)
    terms, _ = _reference(cam.double(), cpl, labels, 0.1)
    out = cam_contrastive_separation(cam, cpl, labels, margin=0.1, reduction="none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), terms, rtol=0, atol=1e-5)


def test_gradcheck_float64():
    cam, cpl, labels = _case(5, b=2, k=3, h=3, w=4, big=(6, 8))
    cam.requires_grad_(True)
    labels[:, 0] = 1
    for margin in (0.0, 0.2):
        assert torch.autograd.gradcheck(
            lambda x, m=margin: cam_contrastive_separation(x, cpl, labels, margin=m), (cam,))
        assert torch.autograd.gradcheck(
            lambda x, m=margin: cam_contrastive_separation(x, cpl, labels, margin=m, reduction="none"), (cam,))


def test_empty_regions():
    cam = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    cpl = torch.zeros(2, 4, 4, dtype=torch.long)
    cpl[0, :2] = 1           # image 0: class 1 on top, background below; class 2 present but has no pixel
    cpl[0, 3, 3] = 3         # ... and a pixel labelled with the ABSENT class 3: belongs to no region
    cpl[1] = 1               # image 1: every pixel is class 1 -> empty negative region
    cpl[1, 0, 0] = 255
    out = cam_contrastive_separation(cam, cpl, labels, margin=0.0, reduction="none")
    terms, pairs = _reference(cam, cpl, labels, 0.0)
    torch.testing.assert_close(out, terms)
    assert pairs == [(0, 0), (1, 0)]
    assert out[0, 1] == 0 and out[0, 2] == 0 and out[1, 1:].abs().sum() == 0
    # image 1: no negative term at all, only 1 - pos over the 15 non-ignored pixels
    m = torch.relu(cam[1, 0])
    m = (m - m.min()) / ((m - m.min()).max() + EPS)
    torch.testing.assert_close(out[1, 0], 1 - m.flatten()[1:].mean())
    # image 0, class 1: the absent-class pixel (3, 3) is not a negative
    m0 = torch.relu(cam[0, 0])
    m0 = (m0 - m0.min()) / ((m0 - m0.min()).max() + EPS)
    neg = torch.cat([m0[2:].flatten()[:-1]])
    torch.testing.assert_close(out[0, 0], 1 - m0[:2].mean() + neg.mean())
    # a negative margin makes a non-empty negative region always count, an empty one still gives 0
    out = cam_contrastive_separation(cam, cpl, labels, margin=-0.1, reduction="none")
    torch.testing.assert_close(out, _reference(cam, cpl, labels, -0.1)[0])
    torch.testing.assert_close(out[1, 0], 1 - m.flatten()[1:].mean())
    torch.testing.assert_close(out[0, 0], 1 - m0[:2].mean() + neg.mean() + 0.1)


def test_no_valid_pair_gives_differentiable_zero():
    cam = torch.randn(2, 3, 4, 4, requires_grad=True)
    cpl = torch.full((2, 8, 8), 255)
    loss = cam_contrastive_separation(cam, cpl, torch.ones(2, 3), margin=0.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(cam.grad, torch.zeros_like(cam))
    loss = cam_contrastive_separation(cam, torch.randint(0, 4, (2, 8, 8)), torch.zeros(2, 3), margin=0.0)
    assert loss.item() == 0.0


def test_ignore_index_and_same_resolution():
    cam, cpl, labels = _case(6, big=(5, 6))
    cpl2 = cpl.clone()
    cpl2[cpl2 == 255] = -1
    torch.testing.assert_close(cam_contrastive_separation(cam, cpl2, labels, margin=0.1, ignore_index=-1),
                               cam_contrastive_separation(cam, cpl, labels, margin=0.1))
    # ignore_index inside the label range: those pixels leave every region (255 is then an invalid class
    # value, rejected by the input policy, so it is relabelled 0 = ignored here)
    with pytest.raises(ValueError, match=r"cpl: expected class indices in \[0, 5\).*ignore_index=0, got values \[255\]"):
        cam_contrastive_separation(cam, cpl, labels, margin=0.1, ignore_index=0)
    out = cam_contrastive_separation(cam, torch.where(cpl == 255, 0, cpl), labels, margin=0.1, ignore_index=0,
                                     reduction="none")
    ref, _ = _reference(cam, torch.where(cpl == 0, 255, cpl), labels, 0.1)
    torch.testing.assert_close(out, ref)


def test_gradient_direction():
    cam, cpl, labels = _case(7, dtype=torch.float32)
    cam.requires_grad_(True)
    loss = cam_contrastive_separation(cam, cpl, labels, margin=0.0)
    loss.backward()
    with torch.no_grad():
        loss2 = cam_contrastive_separation(cam - 0.5 * cam.grad / cam.grad.norm(), cpl, labels, margin=0.0)
    assert loss2 < loss


def test_half_precision_returns_float32():
    cam, cpl, labels = _case(8, dtype=torch.float32)
    out = cam_contrastive_separation(cam.bfloat16(), cpl, labels, margin=0.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cam_contrastive_separation(cam, cpl, labels, margin=0.0), atol=2e-2, rtol=0)


def test_class_equals_function_and_repr():
    cam, cpl, labels = _case(9, dtype=torch.float32)
    for red in ("mean", "sum", "none"):
        mod = CAMContrastiveSeparation(margin=0.1, reduction=red)
        torch.testing.assert_close(mod(cam, cpl, labels),
                                   cam_contrastive_separation(cam, cpl, labels, margin=0.1, reduction=red),
                                   rtol=0, atol=0)
    assert repr(CAMContrastiveSeparation(margin=0.0)) == \
        "CAMContrastiveSeparation(margin=0.0, ignore_index=255, reduction='mean')"
    assert CAMContrastiveSeparation.__doc__.startswith("Experimental")
    assert cam_contrastive_separation.__doc__.startswith("Experimental")


def test_errors():
    cam, cpl, labels = _case(10, dtype=torch.float32)
    with pytest.raises(TypeError):
        CAMContrastiveSeparation()  # margin is required
    with pytest.raises(TypeError):
        cam_contrastive_separation(cam, cpl, labels)  # margin is required
    for bad in (float("nan"), float("inf"), None, "0"):
        with pytest.raises(ValueError, match="margin"):
            CAMContrastiveSeparation(margin=bad)
    with pytest.raises(ValueError, match="reduction"):
        CAMContrastiveSeparation(margin=0.0, reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        cam_contrastive_separation(cam, cpl, labels, margin=0.0, reduction="avg")
    with pytest.raises(TypeError, match="cam_logits"):
        cam_contrastive_separation(cam.long(), cpl, labels, margin=0.0)
    with pytest.raises(ValueError, match="cam_logits"):
        cam_contrastive_separation(cam[0], cpl, labels, margin=0.0)
    with pytest.raises(TypeError, match="cpl"):
        cam_contrastive_separation(cam, cpl.float(), labels, margin=0.0)
    with pytest.raises(ValueError, match="cpl"):
        cam_contrastive_separation(cam, cpl[:2], labels, margin=0.0)
    with pytest.raises(ValueError, match="cpl"):
        cam_contrastive_separation(cam, cpl[0], labels, margin=0.0)
    with pytest.raises(ValueError, match="labels"):
        cam_contrastive_separation(cam, cpl, labels[:, :2], margin=0.0)
    with pytest.raises(TypeError, match="labels"):
        cam_contrastive_separation(cam, cpl, labels.tolist(), margin=0.0)
