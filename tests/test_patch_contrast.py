"""Tests for the EXPERIMENTAL wsseg.losses.PatchContrastLoss (APC's patch contrast, formula assumed, apc.md §4)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.reference.official_vitpcm_contrast import dense_patch_contrast, loop_patch_contrast
from wsseg.losses import PatchContrastLoss, patch_contrast_loss

FORMS = [("margin", {"margin": 0.0}), ("margin", {"margin": 0.2}), ("infonce", {"temperature": 0.5})]


def _case(seed=0, b=3, n=7, d=4, classes=3, dtype=torch.float64, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(b, n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (b, n), generator=g)
    labels[torch.rand(b, n, generator=g) < ignore_frac] = 255
    conf = torch.rand(b, n, generator=g, dtype=dtype)
    return emb, labels, conf


def _ref(emb, labels, keep, form, kw, scope):
    return loop_patch_contrast(emb, labels, keep, form=form, scope=scope, **kw)


# ----------------------------------------------------------------------------- values vs the loop reference


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_loop_reference_with_ignore(form, kw, scope, seed):
    emb, labels, _ = _case(seed)
    keep = labels != 255
    expected = _ref(emb, labels, keep, form, kw, scope)
    if scope == "image":
        out = patch_contrast_loss(emb, labels, form=form, scope=scope, reduction="none", **kw)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(patch_contrast_loss(emb, labels, form=form, **kw), expected.mean(),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(patch_contrast_loss(emb, labels, form=form, reduction="sum", **kw),
                                   expected.sum(), rtol=1e-12, atol=1e-12)
    else:
        for reduction in ("mean", "sum"):
            out = patch_contrast_loss(emb, labels, form=form, scope=scope, reduction=reduction, **kw)
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_confidence_filter_matches_reference(form, kw, scope):
    emb, labels, conf = _case(3, n=9)
    keep = (labels != 255) & (conf >= 0.35)
    expected = _ref(emb, labels, keep, form, kw, scope)
    reduction = "none" if scope == "image" else "mean"
    out = patch_contrast_loss(emb, labels, conf, form=form, scope=scope, min_confidence=0.35,
                              reduction=reduction, **kw)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # the filter really changes the value (otherwise this test could not fail)
    unfiltered = patch_contrast_loss(emb, labels, form=form, scope=scope, reduction=reduction, **kw)
    assert not torch.allclose(out, unfiltered)


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_custom_ignore_index_and_4d_layout(form, kw, scope):
    emb, labels, _ = _case(4, n=12)
    labels[labels == 255] = -1
    keep = labels != -1
    expected = _ref(emb, labels, keep, form, kw, scope)
    emb4 = emb.reshape(3, 3, 4, emb.shape[-1]).permute(0, 3, 1, 2)            # (B, D, h, w), N = h*w row-major
    reduction = "none" if scope == "image" else "mean"
    out = patch_contrast_loss(emb4, labels.reshape(3, 3, 4), form=form, scope=scope, ignore_index=-1,
                              reduction=reduction, **kw)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_dense_reference_equals_loop_reference():
    """The benchmark's baseline (dense (B·N)² matrix + masks) is the same loss as the loop transcription."""
    emb, labels, conf = _case(5, n=8)
    keep = (labels != 255) & (conf > 0.2)
    for form, kw in FORMS:
        for scope in ("image", "batch"):
            torch.testing.assert_close(dense_patch_contrast(emb, labels, keep, form=form, scope=scope, **kw),
                                       _ref(emb, labels, keep, form, kw, scope), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- empty sets


def test_empty_sets_contribute_zero():
    emb = torch.randn(4, 3, 5, dtype=torch.float64)
    labels = torch.tensor([[1, 1, 1],          # no negatives: only the positive part
                           [0, 1, 2],          # no positives: only the negative part; no InfoNCE anchor
                           [255, 255, 255],    # nothing kept
                           [4, 255, 255]])     # a single kept patch
    out = patch_contrast_loss(emb, labels, margin=-1.0, reduction="none")   # m = -1: negatives all count
    e = torch.nn.functional.normalize(emb, dim=-1)
    s0 = e[0] @ e[0].T
    pos0 = (1 - s0[~torch.eye(3, dtype=torch.bool)]).mean()
    s1 = e[1] @ e[1].T
    neg1 = (s1[~torch.eye(3, dtype=torch.bool)] + 1).mean()
    torch.testing.assert_close(out, torch.stack([pos0, neg1, torch.zeros((), dtype=torch.float64),
                                                 torch.zeros((), dtype=torch.float64)]))
    info = patch_contrast_loss(emb, labels, form="infonce", temperature=0.3, reduction="none")
    assert info[0] > 0 and torch.all(info[1:] == 0)
    # the empty images still count in the mean (documented), and a fully ignored batch gives 0 with a gradient
    torch.testing.assert_close(patch_contrast_loss(emb, labels, margin=-1.0), out.mean())
    x = emb.clone().requires_grad_()
    for scope in ("image", "batch"):
        loss = patch_contrast_loss(x, torch.full((4, 3), 255), scope=scope)
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, x)
        assert torch.all(g == 0)


# ----------------------------------------------------------------------------- hand-computed values


def test_hand_computed_orthogonal_classes():
    # two classes on orthogonal axes, arbitrary positive scales: every positive cosine is 1, every negative 0
    emb = torch.tensor([[[3.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 7.0, 0.0]]])
    labels = torch.tensor([[2, 2, 5, 5]])
    assert patch_contrast_loss(emb, labels).item() == 0.0
    # margin -0.5: each of the 8 ordered negative pairs costs 0.5
    assert patch_contrast_loss(emb, labels, margin=-0.5).item() == pytest.approx(0.5)
    # InfoNCE, t = 1: anchor i has one positive (cos 1) and two negatives (cos 0): -log(e / (e + 2))
    info = patch_contrast_loss(emb, labels, form="infonce", temperature=1.0)
    assert info.item() == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)


def test_hand_computed_antiparallel_and_collinear():
    # class 0: (1, 0) and (0, 1) -> cos 0 -> positive cost 1; class 1: (-1, 0) -> negatives cos -1 and 0
    emb = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 0, 1]])
    # positives: 2 ordered pairs of cost 1 -> 1; negatives: cos (-1, 0, -1, 0) with m = -0.5 -> (0, .5, 0, .5)
    assert patch_contrast_loss(emb, labels, margin=-0.5).item() == pytest.approx(1.0 + 0.25)
    # InfoNCE t = 0.5: anchor 0: -log(e^0 / (e^0 + e^-2)); anchor 1: -log(e^0 / (e^0 + e^0)) = log 2
    expected = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    info = patch_contrast_loss(emb, labels, form="infonce", temperature=0.5)
    assert info.item() == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_gradient_matches_reference(form, kw, scope):
    emb, labels, _ = _case(6)
    x = emb.clone().requires_grad_()
    xr = emb.clone().requires_grad_()
    (g,) = torch.autograd.grad(patch_contrast_loss(x, labels, form=form, scope=scope, **kw), x)
    ref = _ref(xr, labels, labels != 255, form, kw, scope)
    (gr,) = torch.autograd.grad(ref.mean() if scope == "image" else ref, xr)
    torch.testing.assert_close(g, gr, rtol=1e-10, atol=1e-12)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_gradcheck_float64(form, kw, scope):
    emb, labels, _ = _case(7, b=2, n=5, d=3)
    x = emb.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda e: patch_contrast_loss(e, labels, form=form, scope=scope, **kw),
                                    (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_chunked_equals_unchunked_with_gradients(form, kw, scope):
    """Row chunks with activation checkpointing (tiny chunk_pairs) give the same values and gradients."""
    emb, labels, _ = _case(8, b=3, n=10)
    reduction = "none" if scope == "image" else "mean"
    outs, grads = [], []
    for chunk_pairs in (10**6, 7, 1):        # one chunk; several rows per chunk; one row per chunk
        x = emb.clone().requires_grad_()
        out = patch_contrast_loss(x, labels, form=form, scope=scope, reduction=reduction,
                                  chunk_pairs=chunk_pairs, **kw)
        (g,) = torch.autograd.grad(out.sum(), x)
        outs.append(out)
        grads.append(g)
    for out, g in zip(outs[1:], grads[1:], strict=True):
        torch.testing.assert_close(out, outs[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=1e-12)


def test_labels_and_confidence_receive_no_gradient():
    emb, labels, conf = _case(9)
    x = emb.clone().requires_grad_()
    c = conf.clone().requires_grad_()
    loss = patch_contrast_loss(x, labels, c, min_confidence=0.3)
    gx, gc = torch.autograd.grad(loss, (x, c), allow_unused=True)
    assert gc is None and gx is not None
    assert not labels.requires_grad


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_invariances(form, kw, scope):
    emb, labels, _ = _case(10)
    reduction = "none" if scope == "image" else "mean"
    base = patch_contrast_loss(emb, labels, form=form, scope=scope, reduction=reduction, **kw)
    # a positive rescaling of every patch (per-patch factors) leaves the cosines unchanged
    scale = torch.rand(emb.shape[:2], dtype=emb.dtype)[..., None] * 10 + 0.1
    torch.testing.assert_close(patch_contrast_loss(emb * scale, labels, form=form, scope=scope,
                                                   reduction=reduction, **kw), base, rtol=1e-12, atol=1e-12)
    # permuting the patches of each image, and relabelling the classes, changes nothing
    perm = torch.randperm(emb.shape[1])
    relabel = torch.where(labels == 255, labels, 10 - labels)
    torch.testing.assert_close(patch_contrast_loss(emb[:, perm], relabel[:, perm], form=form, scope=scope,
                                                   reduction=reduction, **kw), base, rtol=1e-12, atol=1e-12)
    # a common rotation of the embedding space changes nothing
    q, _ = torch.linalg.qr(torch.randn(emb.shape[-1], emb.shape[-1], dtype=emb.dtype))
    torch.testing.assert_close(patch_contrast_loss(emb @ q, labels, form=form, scope=scope,
                                                   reduction=reduction, **kw), base, rtol=1e-10, atol=1e-12)


def test_batch_scope_pairs_across_images():
    # image 0 holds only class 0, image 1 only class 1: no negatives within an image, all of them across
    emb = torch.tensor([[[1.0, 0.2], [1.0, 0.1]], [[0.9, 0.3], [1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[0, 0], [1, 1]])
    per_image = patch_contrast_loss(emb, labels, reduction="none")
    batch = patch_contrast_loss(emb, labels, scope="batch")
    e = torch.nn.functional.normalize(emb.reshape(4, 2), dim=-1)
    s = e @ e.T
    pos = torch.tensor([(1 - s[0, 1]) * 2, (1 - s[2, 3]) * 2]).sum() / 4
    neg = torch.relu(s[:2, 2:]).sum() * 2 / 8
    torch.testing.assert_close(batch, pos + neg)
    torch.testing.assert_close(per_image, torch.stack([1 - s[0, 1], 1 - s[2, 3]]))


# ----------------------------------------------------------------------------- module, errors, dtypes


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope, reduction", [("image", "none"), ("image", "mean"), ("image", "sum"),
                                              ("batch", "mean")])
def test_class_equals_function(form, kw, scope, reduction):
    emb, labels, conf = _case(11)
    module = PatchContrastLoss(form=form, scope=scope, min_confidence=0.1, reduction=reduction, **kw)
    torch.testing.assert_close(module(emb, labels, conf),
                               patch_contrast_loss(emb, labels, conf, form=form, scope=scope, min_confidence=0.1,
                                                   reduction=reduction, **kw), rtol=0, atol=0)
    text = repr(module)
    assert f"form={form!r}" in text and f"scope={scope!r}" in text and "min_confidence=0.1" in text
    assert ("temperature=0.5" in text) == (form == "infonce")


def test_errors():
    emb, labels, conf = _case(12)
    with pytest.raises(ValueError, match="temperature"):
        patch_contrast_loss(emb, labels, form="infonce")
    with pytest.raises(ValueError, match="temperature"):
        PatchContrastLoss(form="infonce")
    with pytest.raises(ValueError, match="temperature"):
        PatchContrastLoss(form="infonce", temperature=0.0)
    with pytest.raises(ValueError, match="form"):
        PatchContrastLoss(form="triplet")
    with pytest.raises(ValueError, match="scope"):
        patch_contrast_loss(emb, labels, scope="dataset")
    with pytest.raises(ValueError, match="reduction"):
        PatchContrastLoss(scope="batch", reduction="none")
    with pytest.raises(ValueError, match="reduction"):
        patch_contrast_loss(emb, labels, reduction="avg")
    with pytest.raises(ValueError, match="margin"):
        patch_contrast_loss(emb, labels, margin=float("nan"))
    with pytest.raises(ValueError, match="max_batch_tokens=20"):
        patch_contrast_loss(emb, labels, scope="batch", max_batch_tokens=20)         # B·N = 21
    patch_contrast_loss(emb, labels, scope="image", max_batch_tokens=20)           # not used by image scope
    with pytest.raises(ValueError, match="confidence: required"):
        patch_contrast_loss(emb, labels, min_confidence=0.5)
    with pytest.raises(ValueError, match="min_confidence is None"):
        patch_contrast_loss(emb, labels, conf)
    with pytest.raises(ValueError, match=r"confidence: expected shape \(3, 7\)"):
        patch_contrast_loss(emb, labels, conf[:, :5], min_confidence=0.5)
    with pytest.raises(ValueError, match=r"patch_labels: expected shape \(3, 7\)"):
        patch_contrast_loss(emb, labels[:, :6])
    with pytest.raises(ValueError, match=r"patch_labels: expected shape \(3, 2, 2\)"):
        patch_contrast_loss(torch.randn(3, 5, 2, 2), labels)
    with pytest.raises(ValueError, match="embeddings"):
        patch_contrast_loss(emb[0], labels)
    with pytest.raises(TypeError, match="patch_labels"):
        patch_contrast_loss(emb, labels.double())
    with pytest.raises(TypeError, match="embeddings"):
        patch_contrast_loss(emb.long(), labels)
    with pytest.raises(TypeError, match="confidence"):
        patch_contrast_loss(emb, labels, labels, min_confidence=0.5)


def test_float32_close_to_float64_and_dtype():
    emb, labels, _ = _case(13, b=2, n=40, d=16)
    for form, kw in FORMS:
        out32 = patch_contrast_loss(emb.float(), labels, form=form, **kw)
        out64 = patch_contrast_loss(emb, labels, form=form, **kw)
        assert out32.dtype == torch.float32 and out64.dtype == torch.float64
        torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form, kw", FORMS)
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_bf16_autocast_runs(form, kw, scope):
    emb, labels, _ = _case(14, b=2, n=24, d=16, dtype=torch.float32)
    x = emb.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = patch_contrast_loss(x, labels, form=form, scope=scope, **kw)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    out.backward()
    assert torch.isfinite(x.grad).all()
    ref = patch_contrast_loss(emb, labels, form=form, scope=scope, **kw)
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)
    # half-precision inputs (no autocast) are computed in float32
    out_bf16 = patch_contrast_loss(emb.bfloat16(), labels, form=form, scope=scope, **kw)
    assert out_bf16.dtype == torch.float32
    torch.testing.assert_close(out_bf16, ref, rtol=0.05, atol=0.02)
