"""Tests for wsseg.losses.dense_energy (common.md §7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.reference.naive_energy import bilateral_kernel, downscale, gate_map, naive_energy
from tests.reference.official_permutohedral import LoopLattice, bilateral_features, official_energy
from wsseg.losses import DenseEnergyLoss, dense_energy_loss


def _inputs(b=2, c=4, h=10, w=12, dtype=torch.float32, ignore=True):
    probs = torch.randn(b, c, h, w, dtype=dtype).softmax(1)
    # a piecewise-constant image with noise so that the colour term matters
    image = torch.rand(b, 3, 1, 1, dtype=dtype) * 255 + torch.randn(b, 3, h, w, dtype=dtype) * 20
    image[:, :, :, w // 2:] = 255 - image[:, :, :, w // 2:]
    valid = torch.ones(b, h, w, dtype=torch.bool)
    valid[0, -3:, :] = False
    label = torch.randint(0, c, (b, h, w))
    if ignore:
        label[:, :2, :3] = 255
    return probs, image, valid, label


SMALL = {"sigma_rgb": 30.0, "sigma_xy": 6.0}
DENSE = {"backend": "dense"}


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("sigmas", [SMALL, {}])
def test_matches_naive_full_matrix(scale, sigmas):
    probs, image, valid, label = _inputs()
    ref = naive_energy(probs.double(), image.double(), valid, label, scale_factor=scale, **sigmas)
    for gradient in ("official", "autograd"):
        got = dense_energy_loss(probs, image, valid, label, scale_factor=scale, gradient=gradient, **DENSE,
                                **sigmas)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), ref, rtol=1e-4, atol=0)


def test_downscale_sizes_follow_floor():
    probs, image, valid, label = _inputs(h=11, w=9)
    ref = naive_energy(probs, image, valid, label, **SMALL)
    got = dense_energy_loss(probs, image, valid, label, **DENSE, **SMALL)
    assert torch.allclose(got, ref, rtol=1e-4)


def test_official_gradient_is_spec_rule():
    # dL/dS = -2 w (g * W S') * valid / B, gate constant (scale 1 -> no resizing)
    probs, image, valid, label = _inputs(dtype=torch.float64)
    probs.requires_grad_(True)
    w = 1e-3
    loss = dense_energy_loss(probs, image, valid, label, scale_factor=1.0, weight=w, **DENSE, **SMALL)
    (grad,) = torch.autograd.grad(loss, probs)
    kernel = bilateral_kernel(image, SMALL["sigma_rgb"], SMALL["sigma_xy"])
    v = valid.double()
    with torch.no_grad():
        g = gate_map(probs, v, label).flatten(1)
        s = (probs * v[:, None]).flatten(2)
        ws = torch.einsum("bpq,bcq->bcp", kernel, s)
        expected = (-2 * w * g[:, None] * ws * v.flatten(1)[:, None] / probs.shape[0]).view_as(probs)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-15)
    # ... which is not the exact gradient
    (exact,) = torch.autograd.grad(naive_energy(probs, image, valid, label, scale_factor=1.0, weight=w, **SMALL),
                                   probs)
    assert not torch.allclose(grad, exact, rtol=1e-3)


def test_official_gradient_through_downscaling():
    probs, image, valid, label = _inputs(dtype=torch.float64)
    probs.requires_grad_(True)
    loss = dense_energy_loss(probs, image, valid, label, weight=1.0, **DENSE, **SMALL)
    (grad,) = torch.autograd.grad(loss, probs)
    p_low, i_low, v_low, l_low = downscale(probs, image, valid, label, 0.5)
    kernel = bilateral_kernel(i_low, SMALL["sigma_rgb"], SMALL["sigma_xy"] * 0.5)
    with torch.no_grad():
        g = gate_map(p_low, v_low, l_low).flatten(1)
        s = (p_low * v_low[:, None]).flatten(2)
        coef = -2 * g[:, None] * torch.einsum("bpq,bcq->bcp", kernel, s) * v_low.flatten(1)[:, None] / 2
    (expected,) = torch.autograd.grad((coef.view_as(p_low) * p_low).sum(), probs)
    assert torch.allclose(grad, expected, rtol=1e-10, atol=1e-14)


def test_autograd_gradient_is_exact():
    probs, image, valid, label = _inputs(dtype=torch.float64)
    probs.requires_grad_(True)
    got = torch.autograd.grad(dense_energy_loss(probs, image, valid, label, weight=1.0, gradient="autograd",
                                                chunk_size=7, **DENSE, **SMALL), probs)[0]
    ref = torch.autograd.grad(naive_energy(probs, image, valid, label, weight=1.0, **SMALL), probs)[0]
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["dense", "permutohedral"])
def test_gradcheck_autograd_mode(backend):
    probs, image, valid, label = _inputs(b=1, c=3, h=4, w=5, dtype=torch.float64)
    probs.requires_grad_(True)

    def fn(p):
        return dense_energy_loss(p, image, valid, label, scale_factor=1.0, weight=1.0, gradient="autograd",
                                 chunk_size=3, backend=backend, **SMALL)

    assert torch.autograd.gradcheck(fn, (probs,))


def test_negative_and_zero_when_confident():
    probs, image, valid, label = _inputs(ignore=False)
    assert dense_energy_loss(probs, image, valid, label).item() < 0
    # one-hot predictions on valid pixels: gate = 0 everywhere, energy 0 unless ignored pixels reopen the gate
    one_hot = F.one_hot(probs.argmax(1), probs.shape[1]).permute(0, 3, 1, 2).float()
    # (scale 1: the bilinear 0.5 downscale would blend neighbouring one-hot vectors)
    assert dense_energy_loss(one_hot, image, valid, label, scale_factor=1.0).item() == 0.0
    label[:, :4, :4] = 255
    assert dense_energy_loss(one_hot, image, valid, label, scale_factor=1.0).item() < 0


def test_invariant_to_class_permutation():
    probs, image, valid, label = _inputs(c=5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = dense_energy_loss(probs, image, valid, label, **SMALL)
    b = dense_energy_loss(probs[:, perm], image, valid, label, **SMALL)
    assert torch.allclose(a, b, rtol=1e-5)


def test_chunk_size_does_not_change_result():
    probs, image, valid, label = _inputs()
    probs.requires_grad_(True)
    for gradient in ("official", "autograd"):
        vals, grads = [], []
        for chunk in (1, 7, 4096):
            loss = dense_energy_loss(probs, image, valid, label, gradient=gradient, chunk_size=chunk, **DENSE,
                                     **SMALL)
            vals.append(loss)
            grads.append(torch.autograd.grad(loss, probs)[0])
        for v, g in zip(vals[1:], grads[1:], strict=True):
            assert torch.allclose(v, vals[0], rtol=1e-5)
            assert torch.allclose(g, grads[0], rtol=1e-4, atol=1e-14)


def test_reductions_and_weight():
    probs, image, valid, label = _inputs()
    per_image = dense_energy_loss(probs, image, valid, label, reduction="none", **DENSE, **SMALL)
    assert per_image.shape == (2,)
    for i in range(2):
        single = naive_energy(probs[i:i + 1].double(), image[i:i + 1].double(), valid[i:i + 1], label[i:i + 1],
                              **SMALL)
        assert torch.allclose(per_image[i].double(), single, rtol=1e-4)
    assert torch.allclose(dense_energy_loss(probs, image, valid, label, reduction="sum", **DENSE, **SMALL),
                          per_image.sum())
    mean = dense_energy_loss(probs, image, valid, label, **DENSE, **SMALL)
    assert torch.allclose(mean, per_image.mean())
    assert torch.allclose(dense_energy_loss(probs, image, valid, label, weight=3e-7, **DENSE, **SMALL), 3 * mean)
    lattice = dense_energy_loss(probs, image, valid, label, reduction="none", **SMALL)
    assert torch.allclose(dense_energy_loss(probs, image, valid, label, reduction="sum", **SMALL), lattice.sum())
    assert torch.allclose(dense_energy_loss(probs, image, valid, label, **SMALL), lattice.mean())


def test_bf16_autocast_and_int_valid():
    probs, image, valid, label = _inputs()
    ref = dense_energy_loss(probs, image, valid, label, **SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = dense_energy_loss(probs, image, valid.long(), label, **SMALL)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-5)


def test_class_equals_function_and_repr():
    probs, image, valid, label = _inputs()
    mod = DenseEnergyLoss(sigma_rgb=30.0, sigma_xy=6.0, gradient="autograd", chunk_size=11)
    fun = dense_energy_loss(probs, image, valid, label, sigma_rgb=30.0, sigma_xy=6.0, gradient="autograd",
                            chunk_size=11)
    assert torch.equal(mod(probs, image, valid, label), fun)
    assert "gradient='autograd'" in repr(mod)


def test_validation_errors():
    probs, image, valid, label = _inputs()
    with pytest.raises(ValueError, match="backend"):
        dense_energy_loss(probs, image, valid, label, backend="lattice")
    with pytest.raises(ValueError, match="backend"):
        DenseEnergyLoss(backend="lattice")
    with pytest.raises(ValueError, match="gradient"):
        DenseEnergyLoss(gradient="exact")
    with pytest.raises(ValueError, match="chunk_size"):
        DenseEnergyLoss(chunk_size=0)
    with pytest.raises(ValueError, match="sigma_xy"):
        DenseEnergyLoss(sigma_xy=0.0)
    with pytest.raises(ValueError, match="scale_factor"):
        dense_energy_loss(probs, image, valid, label, scale_factor=-0.5)
    with pytest.raises(ValueError, match="reduction"):
        dense_energy_loss(probs, image, valid, label, reduction="avg")
    with pytest.raises(ValueError, match="probs"):
        dense_energy_loss(probs[0], image, valid, label)
    with pytest.raises(TypeError, match="probs"):
        dense_energy_loss(probs.long(), image, valid, label)
    with pytest.raises(ValueError, match="image"):
        dense_energy_loss(probs, image[:, :2], valid, label)
    with pytest.raises(ValueError, match="image"):
        dense_energy_loss(probs, image[..., :5], valid, label)
    with pytest.raises(TypeError, match="image"):
        dense_energy_loss(probs, image.to(torch.uint8), valid, label)
    with pytest.raises(ValueError, match="valid"):
        dense_energy_loss(probs, image, valid[:1], label)
    with pytest.raises(TypeError, match="valid"):
        dense_energy_loss(probs, image, valid.float(), label)
    with pytest.raises(ValueError, match="pseudo_label"):
        dense_energy_loss(probs, image, valid, label[:, :5])
    with pytest.raises(TypeError, match="pseudo_label"):
        dense_energy_loss(probs, image, valid, label.float())


# ---- permutohedral backend (the official lattice) against the plain-loop transcription of the C++ ----


def _official_grad_through_downscale(probs, grad_low, scale):
    """Chain the official low-resolution gradient through the bilinear downscaling of probs."""
    p = probs.detach().clone().requires_grad_(True)
    p_low = downscale(p, torch.zeros_like(p[:, :3]), torch.ones_like(p[:, 0], dtype=torch.bool),
                      torch.zeros_like(p[:, 0], dtype=torch.long), scale)[0]
    (grad,) = torch.autograd.grad((grad_low.to(p_low.dtype) * p_low).sum(), p)
    return grad


@pytest.mark.parametrize("scale, h, w", [(1.0, 9, 11), (0.5, 12, 14), (0.5, 13, 10)])
@pytest.mark.parametrize("sigmas", [SMALL, {"sigma_rgb": 15.0, "sigma_xy": 100.0}])
def test_permutohedral_matches_official_reference(scale, h, w, sigmas):
    probs, image, valid, label = _inputs(c=5, h=h, w=w)
    probs.requires_grad_(True)
    ref, ref_grad_low = official_energy(probs, image, valid, label, scale_factor=scale, **sigmas)
    loss = dense_energy_loss(probs, image, valid, label, scale_factor=scale, **sigmas)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss.double(), ref, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(loss, probs)
    expected = _official_grad_through_downscale(probs, ref_grad_low, scale)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6 * expected.abs().max().item())
    module = DenseEnergyLoss(scale_factor=scale, **sigmas)
    assert module.backend == "permutohedral"
    assert torch.equal(module(probs, image, valid, label), loss)


def test_permutohedral_autograd_gradient_is_exact():
    # explicit lattice matrix K from the loop reference; E = -(w/B) sum S' g (K S'), differentiated by autograd
    probs, image, valid, label = _inputs(b=2, c=3, h=5, w=7, dtype=torch.float64)
    probs.requires_grad_(True)
    n = 35
    kernels = []
    for i in range(2):
        lattice = LoopLattice(bilateral_features(image[i].float().numpy(), SMALL["sigma_rgb"], SMALL["sigma_xy"]))
        kernels.append(torch.from_numpy(lattice.compute(np.eye(n, dtype=np.float32))).double())
    kernel = torch.stack(kernels)  # (B, N, N), K[p, q]
    v = valid.double()
    g = gate_map(probs, v, label).flatten(1)
    s = (probs * v[:, None]).flatten(2)
    ref = -(s * g[:, None] * torch.einsum("bpq,bcq->bcp", kernel, s)).sum() / 2
    got = dense_energy_loss(probs, image, valid, label, scale_factor=1.0, weight=1.0, gradient="autograd", **SMALL)
    assert torch.allclose(got, ref, rtol=1e-5)
    (g_got,) = torch.autograd.grad(got, probs)
    (g_ref,) = torch.autograd.grad(ref, probs)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-5, atol=1e-7 * g_ref.abs().max().item())


def test_lattice_is_weaker_than_the_exact_gaussian():
    # the official lattice approximates the Gaussian with a flatter, smaller response (spec: ~1.8x)
    probs, image, valid, label = _inputs(h=32, w=32, ignore=False)
    lattice = dense_energy_loss(probs, image, valid, label)
    exact = dense_energy_loss(probs, image, valid, label, backend="dense")
    assert 1.2 < (exact / lattice).item() < 3.0


@pytest.mark.slow
@pytest.mark.parametrize("size, c", [(128, 21), (192, 4), (320, 21)])
def test_permutohedral_parity_real_image_like(size, c):
    # 64², 96², 160² after the 0.5 downscale; smooth regions + edges; relative error of loss and gradient
    g = torch.Generator().manual_seed(size + c)
    logits = torch.randn(2, c, size // 16, size // 16, generator=g) * 3
    probs = F.interpolate(logits, size=(size, size), mode="bilinear").softmax(1).requires_grad_(True)
    image = F.interpolate(torch.rand(2, 3, 6, 6, generator=g) * 255, size=(size, size), mode="nearest")
    image = F.avg_pool2d(image, 5, 1, 2, count_include_pad=False) + torch.randn(2, 3, size, size, generator=g) * 4
    valid = torch.ones(2, size, size, dtype=torch.bool)
    valid[1, -size // 5:] = False
    label = torch.randint(0, c, (2, size, size), generator=g)
    label[:, : size // 4, : size // 4] = 255
    ref, ref_grad_low = official_energy(probs, image, valid, label)
    loss = dense_energy_loss(probs, image, valid, label)
    (grad,) = torch.autograd.grad(loss, probs)
    expected = _official_grad_through_downscale(probs, ref_grad_low, 0.5)
    assert abs(loss.item() - ref.item()) <= 1e-4 * abs(ref.item())
    assert (grad - expected).norm() <= 1e-4 * expected.norm()
