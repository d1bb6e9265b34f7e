"""Tests for wsseg.losses.self_correspondence_distillation (tscd.md §3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_scd import official_scd
from wsseg.losses import SelfCorrespondenceDistillation, self_correspondence_distillation


def _inputs(b=2, k=5, s=6, h1=12, h2=7, dtype=torch.float32, grad=True):
    t1 = torch.rand(b, k, h1, h1, dtype=dtype)
    t2 = torch.rand(b, k, h2, h2 + 1, dtype=dtype)
    s1 = torch.randn(b, k + 1, h1, h1, dtype=dtype, requires_grad=grad)
    s2 = torch.randn(b, k + 1, h2, h2 + 1, dtype=dtype, requires_grad=grad)
    g1 = torch.rand(b, s, s, 2, dtype=dtype) * 2 - 1
    g2 = torch.rand(b, s, s, 2, dtype=dtype) * 2 - 1
    return t1, t2, s1, s2, g1, g2


@pytest.mark.parametrize("options", [
    {},
    {"pointwise_center": False},
    {"zero_clamp": False},
    {"shift": 0.2},
    {"stabilize_max": 0.8},
])
def test_matches_official_reference(options):
    t1, t2, s1, s2, g1, g2 = _inputs()
    ref_kw = {"pointwise": options.get("pointwise_center", True), "zero_clamp": options.get("zero_clamp", True),
              "shift": options.get("shift", 0.0), "stabilize": "stabilize_max" in options}
    ref = official_scd(t1, t2, s1, s2, g1, g2, **ref_kw)
    got = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6, **options)
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)
    # element-wise, including the official axis permutation of the grid
    terms = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6, reduction="none", **options)
    ref_terms = official_scd(t1, t2, s1, s2, g1, g2, reduce=False, **ref_kw).reshape(2, 36, 36)
    assert terms.shape == (2, 36, 36)
    assert torch.allclose(terms, ref_terms, atol=1e-5, rtol=1e-5)
    assert torch.allclose(self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6,
                                                           reduction="sum", **options), terms.sum(), rtol=1e-5)
    # gradients wrt both students agree too
    ga = torch.autograd.grad(got, (s1, s2))
    gb = torch.autograd.grad(ref, (s1, s2))
    for x, y in zip(ga, gb, strict=True):
        assert torch.allclose(x, y, atol=1e-7, rtol=1e-4)


def test_grid_permutation_convention():
    # a teacher whose only non-zero "feature" depends on the position: sample index a = i*S + j is grid[:, j, i]
    b, s = 1, 3
    g1 = torch.rand(b, s, s, 2) * 2 - 1
    x = torch.linspace(-1, 1, 9)
    student = torch.stack([x.view(1, 9).expand(9, 9), torch.ones(9, 9)]).unsqueeze(0)  # channel 0 = x coordinate
    # with one-point second view at a fixed location, G[a, c] = cos(angle of (x_a, 1) with (x_c, 1))
    g2 = torch.zeros(b, s, s, 2)
    t = torch.ones(b, 1, 9, 9)
    terms = self_correspondence_distillation(t, t, student, student, g1, g2, num_samples=s,
                                             pointwise_center=False, reduction="none")
    # F = 1 everywhere; second view sampled at x = 0 -> (0, 1): G[a, c] = 1 / sqrt(x_a^2 + 1)
    x_perm = g1[0, :, :, 0].t().reshape(-1)       # official permutation
    expected = -(1 / torch.sqrt(x_perm**2 + 1))[:, None].expand(9, 9)
    assert torch.allclose(terms[0], expected, atol=1e-5)
    x_plain = g1[0, :, :, 0].reshape(-1)
    assert not torch.allclose(terms[0], -(1 / torch.sqrt(x_plain**2 + 1))[:, None].expand(9, 9), atol=1e-3)


def test_centring_closed_form_and_no_clamp_value():
    # zero_clamp off and a constant student correlation of 1 expose F~ directly: L = -mean(F~) = -mean(F)
    t1, t2, _, _, g1, g2 = _inputs(grad=False)
    ones_1 = torch.ones(2, 3, 12, 12)
    ones_2 = torch.ones(2, 3, 7, 8)
    terms = self_correspondence_distillation(t1, t2, ones_1, ones_2, g1, g2, num_samples=6, reduction="none")
    # closed form from the spec
    m = F.grid_sample(t1, g1.transpose(1, 2), align_corners=True, padding_mode="border").flatten(2)
    m2 = F.grid_sample(t2, g2.transpose(1, 2), align_corners=True, padding_mode="border").flatten(2)
    m = m / m.norm(dim=1, keepdim=True)
    m2 = m2 / m2.norm(dim=1, keepdim=True)
    f = torch.einsum("bka,bkc->bac", m, m2)
    f_tilde = f - f.mean(dim=2, keepdim=True) + f.mean()
    assert torch.allclose(terms, -f_tilde, atol=1e-6)
    # each row of F~ has the same mean (the global mean of F), the defining property of the centring
    assert torch.allclose(f_tilde.mean(dim=2), f.mean().expand(2, 36), atol=1e-6)


def test_gradient_reaches_only_students():
    t1, t2, s1, s2, g1, g2 = _inputs()
    t1.requires_grad_(True)
    t2.requires_grad_(True)
    loss = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6)
    loss.backward()
    assert t1.grad is None and t2.grad is None
    assert s1.grad is not None and s1.grad.abs().sum() > 0
    assert s2.grad is not None and s2.grad.abs().sum() > 0


def test_zero_clamp_gradient_rule():
    # dL/dG = -F~/(B S^4) where G > 0, else 0: compare with a surrogate whose dL/dG is exactly that
    torch.manual_seed(3)
    b, s = 2, 3
    t1, t2, s1, s2, g1, g2 = _inputs(b=b, k=3, s=s, h1=6, h2=5, dtype=torch.float64)
    loss = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=s)
    grads = torch.autograd.grad(loss, (s1, s2))

    def sampled(x, g):
        return F.normalize(F.grid_sample(x, g, align_corners=True, padding_mode="border").flatten(2), dim=1)

    f = torch.einsum("bka,bkc->bac", sampled(t1, g1), sampled(t2, g2))
    f_tilde = f - f.mean(dim=2, keepdim=True) + f.mean()
    g = torch.einsum("bka,bkc->bac", sampled(s1, g1), sampled(s2, g2))
    assert (g < 0).any() and (g > 0).any()
    coef = -f_tilde / (b * s**4) * (g > 0)
    surrogate = (coef.detach() * g).sum()
    expected = torch.autograd.grad(surrogate, (s1, s2))
    for x, y in zip(grads, expected, strict=True):
        assert torch.allclose(x, y, atol=1e-12)
    # without the clamp the rule has no indicator, and the gradient differs
    loss_nc = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=s, zero_clamp=False)
    grads_nc = torch.autograd.grad(loss_nc, (s1, s2))
    g = torch.einsum("bka,bkc->bac", sampled(s1, g1), sampled(s2, g2))
    expected_nc = torch.autograd.grad(((-f_tilde / (b * s**4)).detach() * g).sum(), (s1, s2))
    for x, y in zip(grads_nc, expected_nc, strict=True):
        assert torch.allclose(x, y, atol=1e-12)
    assert not torch.allclose(grads_nc[0], grads[0])


def test_gradcheck_students():
    t1, t2, s1, s2, g1, g2 = _inputs(b=1, k=2, s=3, h1=4, h2=3, dtype=torch.float64)

    def fn(a, c):
        return self_correspondence_distillation(t1, t2, a, c, g1, g2, num_samples=3)

    assert torch.autograd.gradcheck(fn, (s1, s2))


def test_generator_reproducible_and_documented_draw():
    t1, t2, s1, s2, _, _ = _inputs()
    a = self_correspondence_distillation(t1, t2, s1, s2, generator=torch.Generator().manual_seed(7), num_samples=6)
    b = self_correspondence_distillation(t1, t2, s1, s2, generator=torch.Generator().manual_seed(7), num_samples=6)
    c = self_correspondence_distillation(t1, t2, s1, s2, generator=torch.Generator().manual_seed(8), num_samples=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    gen = torch.Generator().manual_seed(7)
    g1 = torch.rand((2, 6, 6, 2), generator=gen) * 2 - 1
    g2 = torch.rand((2, 6, 6, 2), generator=gen) * 2 - 1
    assert torch.equal(a, self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6))


def test_mask_absent_classes():
    t1, t2, s1, s2, g1, g2 = _inputs(k=4)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    masked = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, labels, num_samples=6,
                                              mask_absent_classes=True)
    y = labels[:, :, None, None]
    manual = self_correspondence_distillation(t1 * y, t2 * y, s1, s2, g1, g2, num_samples=6)
    plain = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, labels, num_samples=6)
    assert torch.allclose(masked, manual)
    assert not torch.allclose(masked, plain)
    # labels are ignored when the option is off
    assert torch.equal(plain, self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6))


def test_class_equals_function_and_repr():
    t1, t2, s1, s2, g1, g2 = _inputs()
    for red in ("mean", "sum", "none"):
        mod = SelfCorrespondenceDistillation(num_samples=6, shift=0.1, reduction=red)
        fun = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6, shift=0.1, reduction=red)
        assert torch.equal(mod(t1, t2, s1, s2, g1, g2), fun)
    assert "num_samples=40" in repr(SelfCorrespondenceDistillation())


def test_default_shape_and_sign():
    # identical views and identical teacher/student geometry: positive F~ pairs dominate -> negative loss
    t = torch.rand(2, 20, 16, 16)
    loss = self_correspondence_distillation(t, t, t, t, generator=torch.Generator().manual_seed(0))
    assert loss.shape == () and loss.item() < 0


def test_validation_errors():
    t1, t2, s1, s2, g1, g2 = _inputs()
    kw = {"num_samples": 6}
    with pytest.raises(ValueError, match="teacher_1"):
        self_correspondence_distillation(t1[0], t2, s1, s2, g1, g2, **kw)
    with pytest.raises(TypeError, match="teacher_1"):
        self_correspondence_distillation(t1.long(), t2, s1, s2, g1, g2, **kw)
    with pytest.raises(ValueError, match="teacher_2"):
        self_correspondence_distillation(t1, t2[:, :3], s1, s2, g1, g2, **kw)       # channel mismatch
    with pytest.raises(ValueError, match="teacher_2"):
        self_correspondence_distillation(t1, t2[:1], s1, s2, g1, g2, **kw)
    with pytest.raises(ValueError, match="student_1"):
        self_correspondence_distillation(t1, t2, s1[:1], s2, g1, g2, **kw)          # batch mismatch
    with pytest.raises(ValueError, match="student_2"):
        self_correspondence_distillation(t1, t2, s1, s2[:, :2], g1, g2, **kw)
    with pytest.raises(ValueError, match="grid_1"):
        self_correspondence_distillation(t1, t2, s1, s2, g1[:, :5], g2, **kw)
    with pytest.raises(ValueError, match="grid_2"):
        self_correspondence_distillation(t1, t2, s1, s2, g1, g2.reshape(2, 36, 2), **kw)
    with pytest.raises(ValueError, match="grid_1"):
        self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=5)
    with pytest.raises(TypeError, match="grid_1"):
        self_correspondence_distillation(t1, t2, s1, s2, g1.long(), g2, **kw)
    with pytest.raises(ValueError, match="labels"):
        self_correspondence_distillation(t1, t2, s1, s2, g1, g2, mask_absent_classes=True, **kw)
    with pytest.raises(ValueError, match="labels"):
        self_correspondence_distillation(t1, t2, s1, s2, g1, g2, torch.ones(2, 3), mask_absent_classes=True, **kw)
    with pytest.raises(ValueError, match="num_samples"):
        SelfCorrespondenceDistillation(num_samples=0)
    with pytest.raises(ValueError, match="stabilize_max"):
        SelfCorrespondenceDistillation(stabilize_max=-1.0)
    with pytest.raises(ValueError, match="eps"):
        SelfCorrespondenceDistillation(eps=0.0)
    with pytest.raises(ValueError, match="reduction"):
        self_correspondence_distillation(t1, t2, s1, s2, g1, g2, reduction="avg", **kw)


def test_bf16_autocast_computes_in_float32():
    t1, t2, s1, s2, g1, g2 = _inputs()
    ref = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = self_correspondence_distillation(t1, t2, s1, s2, g1, g2, num_samples=6)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, atol=1e-6)
