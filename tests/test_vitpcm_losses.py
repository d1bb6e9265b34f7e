"""Tests for ViT-PCM's merge_class_labels, pooled BCE, 2×2 mosaic and equivariance loss (apc.md §2.3-§2.5,
§2.7), against the NumPy transcription of the official TensorFlow / tf.keras 2.9 semantics in
``tests/reference/official_vitpcm_losses.py`` and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tests.reference.official_vitpcm_losses import (
    official_cce_loss,
    official_extract_nonoverlapping_patches,
    official_keras_binary_crossentropy,
    official_keras_categorical_crossentropy,
    official_mce_loss,
    official_merge_class_labels,
    official_merged_batch,
)
from wsseg.layers import Mosaic2x2, Unmosaic2x2, mosaic_2x2, unmosaic_2x2
from wsseg.losses import EquivarianceLoss, PooledBCELoss, equivariance_loss, pooled_bce
from wsseg.pseudo import MergeClassLabels, merge_class_labels
from wsseg.pseudo.merge_class_labels import divide_no_nan

ATOL = 1e-6


def _cl(x: torch.Tensor) -> np.ndarray:
    """channels-first torch (B, C, h, w) -> channels-last numpy (B, h, w, C)."""
    return rearrange(x, "b c h w -> b h w c").numpy()


def _cf(x: np.ndarray) -> torch.Tensor:
    return rearrange(torch.from_numpy(np.ascontiguousarray(x)), "b h w c -> b c h w")


def _probs(B, C, h, w, g, dtype=torch.float32, sharp=3.0):
    return torch.softmax(sharp * torch.randn(B, C, h, w, generator=g, dtype=torch.float64), dim=1).to(dtype)


def _labels(B, C, g):
    labels = (torch.rand(B, C, generator=g) < 0.3).float()
    labels[:, 0] = 1
    return labels


# ================================================================ merge_class_labels (§2.4)
def test_merge_hand_values():
    # C = 3, a 1x2 grid; labels {0, 2}: class 1 dropped, c0 -> [1, 1/3], c2 -> [0.4, 1], then / per-patch sum
    p = torch.tensor([[0.6, 0.2], [0.2, 0.3], [0.2, 0.5]]).view(1, 3, 1, 2)
    out = merge_class_labels(p, torch.tensor([[1, 0, 1]]))
    expected = torch.tensor([[1 / 1.4, 0.25], [0.0, 0.0], [0.4 / 1.4, 0.75]]).view(1, 3, 1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 6, 5, 7), (2, 21, 24, 24)])
def test_merge_equals_official(shape):
    B, C, h, w = shape
    g = torch.Generator().manual_seed(C)
    probs = _probs(B, C, h, w, g)
    labels = _labels(B, C, g)
    labels[-1] = 0  # an image without any label -> all zeros
    probs[0, :, 0, 0] = 0  # a patch with zero probability everywhere -> sum 0 -> zeros
    ref = official_merge_class_labels(_cl(probs), labels.numpy())
    out = merge_class_labels(probs, labels)
    assert out.dtype == probs.dtype and out.shape == probs.shape
    torch.testing.assert_close(out, _cf(ref), rtol=0, atol=ATOL)
    assert torch.isfinite(out).all()
    assert (out[-1] == 0).all() and (out[0, :, 0, 0] == 0).all()
    sums = out[:-1].sum(1)
    sums[0, 0, 0] = 1
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)


def test_merge_token_layout_and_label_dtypes():
    g = torch.Generator().manual_seed(1)
    probs = _probs(2, 5, 4, 4, g)
    labels = _labels(2, 5, g)
    ref = merge_class_labels(probs, labels)
    tokens = rearrange(probs, "b c h w -> b (h w) c")
    out_tok = merge_class_labels(tokens, labels)
    assert out_tok.shape == (2, 16, 5)
    torch.testing.assert_close(rearrange(out_tok, "b (h w) c -> b c h w", h=4), ref, rtol=0, atol=1e-7)
    for lab in (labels.bool(), labels.long(), labels.double()):
        torch.testing.assert_close(merge_class_labels(probs, lab), ref, rtol=0, atol=0)


def test_merge_invariances():
    g = torch.Generator().manual_seed(2)
    probs = _probs(2, 6, 5, 5, g, dtype=torch.float64)
    labels = _labels(2, 6, g)
    ref = merge_class_labels(probs, labels)
    # a positive per-(image, class) rescaling is cancelled by the max division
    scale = 0.1 + torch.rand(2, 6, 1, 1, generator=g, dtype=torch.float64) * 5
    torch.testing.assert_close(merge_class_labels(probs * scale, labels), ref, rtol=1e-12, atol=1e-12)
    # any positive label value acts as "present"
    torch.testing.assert_close(merge_class_labels(probs, labels * 3.0), ref, rtol=1e-12, atol=1e-12)
    # class permutation equivariance
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(merge_class_labels(probs[:, perm], labels[:, perm]), ref[:, perm], rtol=0,
                               atol=1e-12)
    # every present class peaks where the ratio to the other present classes is largest; absent classes are 0
    assert (ref * (1 - labels)[:, :, None, None] == 0).all()


def test_merge_gradcheck_and_no_nan_gradient():
    g = torch.Generator().manual_seed(3)
    probs = _probs(2, 4, 3, 3, g, dtype=torch.float64).requires_grad_(True)
    labels = torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: merge_class_labels(p, labels), (probs,))
    # divide_no_nan: zero gradient (not NaN) where the denominators are 0
    p = _probs(1, 3, 2, 2, g).requires_grad_(True)
    merge_class_labels(p, torch.zeros(1, 3)).sum().backward()
    assert torch.equal(p.grad, torch.zeros_like(p))


def test_divide_no_nan():
    num = torch.tensor([1.0, float("nan"), float("inf"), -2.0], requires_grad=True)
    den = torch.tensor([2.0, 0.0, 0.0, 4.0], requires_grad=True)
    out = divide_no_nan(num, den)
    assert torch.equal(out, torch.tensor([0.5, 0.0, 0.0, -0.5]))
    out.sum().backward()
    assert torch.equal(num.grad, torch.tensor([0.5, 0.0, 0.0, 0.25]))
    assert torch.equal(den.grad, torch.tensor([-0.25, 0.0, 0.0, 0.125]))


def test_merge_errors_and_module():
    p = torch.rand(2, 4, 3, 3)
    with pytest.raises(ValueError, match="probs"):
        merge_class_labels(torch.rand(2, 4), torch.ones(2, 4))
    with pytest.raises(TypeError, match="probs"):
        merge_class_labels(p.long(), torch.ones(2, 4))
    with pytest.raises(ValueError, match="labels"):
        merge_class_labels(p, torch.ones(2, 3))  # labels must include the background entry
    with pytest.raises(ValueError, match="labels"):
        merge_class_labels(rearrange(p, "b c h w -> b (h w) c"), torch.ones(2, 9))
    with pytest.raises(TypeError, match="labels"):
        merge_class_labels(p, [[1, 1, 1, 1]] * 2)
    y = torch.ones(2, 4)
    assert torch.equal(MergeClassLabels()(p, y), merge_class_labels(p, y))


# ================================================================ pooled BCE (§2.5, L_mce)
def test_pooled_bce_hand_values():
    # float64 so that 1 - 1e-7 is exact: p = 0.5 (y=1), p = 1 (y=0, clipped), p = 0 (y=0, clipped), p = 0 (y=1)
    pooled = torch.tensor([[0.5, 1.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    terms = [-math.log(0.5 + 1e-7), -math.log(1 - (1 - 1e-7) + 1e-7), -math.log(1 - 1e-7 + 1e-7),
             -math.log(1e-7 + 1e-7)]
    none = pooled_bce(pooled, labels, reduction="none")
    torch.testing.assert_close(none, torch.tensor([terms], dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled_bce(pooled, labels), torch.tensor(sum(terms) / 4, dtype=torch.float64))
    # a present class scored 0 costs -log(2 eps) ~ 15.4, not torch's clamped 100
    assert abs(float(none[0, 3]) - 15.4249) < 1e-4
    assert float(F.binary_cross_entropy(pooled[:, 3], labels[:, 3])) == 100.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_bce_equals_official(dtype):
    g = torch.Generator().manual_seed(4)
    B, C = 6, 21
    pooled = _probs(B, C, 24, 24, g, dtype=dtype).amax(dim=(2, 3))
    pooled[0, :4] = torch.tensor([0.0, 1.0, 1e-9, 1 - 1e-9], dtype=dtype)  # at and beyond the clip bounds
    labels = _labels(B, C, g).to(dtype)
    labels[1, :3] = torch.tensor([0.3, 0.7, 0.5], dtype=dtype)  # soft labels, as Keras allows
    per_sample = official_keras_binary_crossentropy(labels.numpy(), pooled.numpy())
    none = pooled_bce(pooled, labels, reduction="none")
    assert none.shape == (B, C) and none.dtype == dtype
    torch.testing.assert_close(none.mean(1), torch.from_numpy(per_sample), rtol=1e-6, atol=ATOL)
    mean = pooled_bce(pooled, labels)
    torch.testing.assert_close(mean, torch.tensor(official_mce_loss(labels.numpy(), pooled.numpy())),
                               rtol=1e-6, atol=ATOL)
    torch.testing.assert_close(pooled_bce(pooled, labels, reduction="sum"), none.sum())


def test_pooled_bce_gradients():
    g = torch.Generator().manual_seed(5)
    pooled = (0.05 + 0.9 * torch.rand(3, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    labels = (torch.rand(3, 5, generator=g) < 0.5).double()
    assert torch.autograd.gradcheck(lambda p: pooled_bce(p, labels), (pooled,))
    # as tf.clip_by_value: no gradient beyond the clip bounds, hand gradient inside
    p = torch.tensor([[0.0, 1.0, 0.25]], requires_grad=True)
    pooled_bce(p, torch.tensor([[1.0, 0.0, 1.0]]), reduction="sum").backward()
    torch.testing.assert_close(p.grad, torch.tensor([[0.0, 0.0, -1 / (0.25 + 1e-7)]]))


def test_pooled_bce_half_precision_and_module():
    g = torch.Generator().manual_seed(6)
    pooled = torch.rand(4, 8, generator=g)
    labels = (torch.rand(4, 8, generator=g) < 0.5).float()
    out = pooled_bce(pooled.half(), labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, pooled_bce(pooled.half().float(), labels))
    loss_fn = PooledBCELoss(eps=1e-6, reduction="none")
    assert "eps=1e-06" in repr(loss_fn) and "reduction='none'" in repr(loss_fn)
    assert torch.equal(loss_fn(pooled, labels), pooled_bce(pooled, labels, eps=1e-6, reduction="none"))
    assert torch.equal(PooledBCELoss()(pooled, labels), pooled_bce(pooled, labels))


def test_pooled_bce_errors():
    pooled, labels = torch.rand(2, 5), torch.ones(2, 5)
    with pytest.raises(ValueError, match="pooled"):
        pooled_bce(pooled[None], labels)
    with pytest.raises(TypeError, match="pooled"):
        pooled_bce(labels.long(), labels)
    with pytest.raises(ValueError, match="labels"):
        pooled_bce(pooled, torch.ones(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        pooled_bce(pooled, labels, reduction="batchmean")
    for bad in (-1e-7, 0.5):
        with pytest.raises(ValueError, match="eps"):
            pooled_bce(pooled, labels, eps=bad)
        with pytest.raises(ValueError, match="eps"):
            PooledBCELoss(eps=bad)
    with pytest.raises(TypeError, match="eps"):
        PooledBCELoss(eps="1e-7")
    with pytest.raises(ValueError, match="reduction"):
        PooledBCELoss(reduction="avg")


# ================================================================ 2x2 mosaic (§2.5)
def test_mosaic_tile_order_hand_made():
    x = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 2, 3, 3)  # image k filled with k
    m = mosaic_2x2(x)
    assert m.shape == (2, 2, 6, 6)
    for n in range(2):
        tiles = [[m[n, :, :3, :3], m[n, :, :3, 3:]], [m[n, :, 3:, :3], m[n, :, 3:, 3:]]]
        # row-major: top-left 4n, top-right 4n+1, bottom-left 4n+2, bottom-right 4n+3
        for i in range(2):
            for j in range(2):
                assert (tiles[i][j] == 4 * n + 2 * i + j).all()
    # non-square tiles keep their orientation
    y = torch.arange(4 * 2 * 3.0).view(4, 1, 2, 3)
    my = mosaic_2x2(y)
    assert torch.equal(my[0, 0, :2, 3:], y[1, 0]) and torch.equal(my[0, 0, 2:, :3], y[2, 0])


def test_mosaic_equals_official():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(8, 3, 32, 32, generator=g)
    ref = official_merged_batch(_cl(x))
    assert torch.equal(mosaic_2x2(x), _cf(ref))
    pred = torch.rand(2, 21, 24, 24, generator=g)
    ref_split = official_extract_nonoverlapping_patches(_cl(pred), size=12)
    assert torch.equal(unmosaic_2x2(pred), _cf(ref_split))


def test_mosaic_round_trip_and_gradient():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(12, 4, 6, 6, generator=g, requires_grad=True)
    assert torch.equal(unmosaic_2x2(mosaic_2x2(x)), x)
    m = torch.randn(3, 4, 10, 8, generator=g)
    assert torch.equal(mosaic_2x2(unmosaic_2x2(m)), m)
    grad = torch.randn(3, 4, 12, 12, generator=g)
    mosaic_2x2(x).backward(grad)
    assert torch.equal(x.grad, unmosaic_2x2(grad))
    assert torch.equal(Mosaic2x2()(x), mosaic_2x2(x)) and torch.equal(Unmosaic2x2()(m), unmosaic_2x2(m))


def test_mosaic_unmosaic_with_patch_local_model():
    """For a model that acts on each 16x16 patch alone, split(model(mosaic(x))) == model(x)."""
    g = torch.Generator().manual_seed(9)
    weight = torch.randn(5, 3, 1, 1, generator=g)

    def model(images):  # (B, 3, 16g, 16g) -> (B, 5, g, g) patch softmax
        return torch.softmax(F.conv2d(F.avg_pool2d(images, 16), weight), dim=1)

    x2 = torch.rand(8, 3, 64, 64, generator=g)
    torch.testing.assert_close(unmosaic_2x2(model(mosaic_2x2(x2))), model(x2), rtol=0, atol=1e-6)


def test_mosaic_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        mosaic_2x2(torch.rand(6, 3, 8, 8))
    with pytest.raises(ValueError, match="x"):
        mosaic_2x2(torch.rand(4, 8, 8))
    with pytest.raises(TypeError, match="x"):
        mosaic_2x2(np.zeros((4, 3, 8, 8)))
    with pytest.raises(ValueError, match="even"):
        unmosaic_2x2(torch.rand(1, 3, 7, 8))
    with pytest.raises(ValueError, match="pred"):
        unmosaic_2x2(torch.rand(3, 8, 8))
    with pytest.raises(ValueError):  # the official scatter fails on a batch not divisible by 4 as well
        official_merged_batch(np.zeros((6, 8, 8, 3), dtype=np.float32))


# ================================================================ equivariance loss (§2.5, L_et)
def test_equivariance_hand_values():
    pred = torch.tensor([[0.4, 0.6, 1.0], [0.0, 0.5, 0.5]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    target = torch.tensor([[0.25, 0.0, 0.75], [1.0, 0.0, 0.0]], dtype=torch.float64).T.reshape(1, 3, 1, 2)
    # patch 0: pred renormalised to [0.2, 0.3, 0.5]; patch 1: target on a class predicted 0 -> clip to 1e-7
    expected = torch.tensor([[[-(0.25 * math.log(0.2) + 0.75 * math.log(0.5)), -math.log(1e-7)]]],
                            dtype=torch.float64)
    torch.testing.assert_close(equivariance_loss(pred, target, reduction="none"), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(equivariance_loss(pred, target), expected.mean())
    torch.testing.assert_close(equivariance_loss(pred, target, reduction="sum"), expected.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equivariance_equals_official(dtype):
    g = torch.Generator().manual_seed(10)
    B, C = 4, 21
    pred = _probs(B, C, 12, 12, g, dtype=dtype)
    pred[0] = pred[0] * (0.5 + torch.rand(1, 12, 12, generator=g, dtype=dtype))  # not normalised per patch
    pred[1, 3] = 0  # a class predicted 0 where the target may be positive -> clipped
    labels = _labels(B, C, g)
    labels[1, 3] = 1
    target = merge_class_labels(_probs(B, C, 12, 12, g, dtype=dtype), labels)
    target[2, :, :2] = 0  # all-zero target patches still count in the mean
    ref_patch = official_keras_categorical_crossentropy(_cl(target), _cl(pred))
    none = equivariance_loss(pred, target, reduction="none")
    assert none.shape == (B, 12, 12) and none.dtype == dtype
    torch.testing.assert_close(none, torch.from_numpy(ref_patch), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(equivariance_loss(pred, target),
                               torch.tensor(official_cce_loss(_cl(target), _cl(pred))), rtol=1e-6, atol=ATOL)


def test_equivariance_properties_and_gradients():
    g = torch.Generator().manual_seed(11)
    y = _probs(2, 5, 3, 3, g, dtype=torch.float64, sharp=1.0)  # no probability near the clip bounds
    q = _probs(2, 5, 3, 3, g, dtype=torch.float64, sharp=1.0)
    # Gibbs: cross-entropy is smallest at pred == target (the entropy)
    assert (equivariance_loss(q, y, reduction="none") >= equivariance_loss(y, y, reduction="none")).all()
    # renormalisation: invariant to a positive per-patch rescaling of pred
    s = 0.2 + 3 * torch.rand(2, 1, 3, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(equivariance_loss(q * s, y), equivariance_loss(q, y), rtol=1e-12, atol=1e-12)
    # gradcheck w.r.t. pred (away from the clip bounds)
    qq = q.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: equivariance_loss(p, y), (qq,))
    # the target is detached inside: no gradient reaches it
    pred = q.clone().requires_grad_(True)
    target = y.clone().requires_grad_(True)
    equivariance_loss(pred, target).backward()
    assert target.grad is None and pred.grad is not None and pred.grad.abs().sum() > 0


def test_equivariance_half_precision_module_and_errors():
    g = torch.Generator().manual_seed(12)
    p, t = _probs(2, 4, 3, 3, g), _probs(2, 4, 3, 3, g)
    out = equivariance_loss(p.bfloat16(), t)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, equivariance_loss(p.bfloat16().float(), t))
    loss_fn = EquivarianceLoss(eps=1e-6, reduction="sum")
    assert "eps=1e-06" in repr(loss_fn) and "reduction='sum'" in repr(loss_fn)
    assert torch.equal(loss_fn(p, t), equivariance_loss(p, t, eps=1e-6, reduction="sum"))
    assert torch.equal(EquivarianceLoss()(p, t), equivariance_loss(p, t))
    with pytest.raises(ValueError, match="target"):
        equivariance_loss(p, t[:, :3])
    with pytest.raises(ValueError, match="pred"):
        equivariance_loss(p[0], t[0])
    with pytest.raises(TypeError, match="target"):
        equivariance_loss(p, t.long())
    with pytest.raises(ValueError, match="reduction"):
        equivariance_loss(p, t, reduction="batchmean")
    with pytest.raises(ValueError, match="eps"):
        EquivarianceLoss(eps=0.7)
