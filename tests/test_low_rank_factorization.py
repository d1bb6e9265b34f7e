"""Tests of SLRNet's LowRankFactorization / em_factorize and PrototypeInit / class_prototypes.

References: ``tests/reference/official_slrnet_lowrank.py`` — the official module formulation (einsum,
(B, C, n) layout, cross-view concatenation of ``Net.forward``) and an explicit-loop transcription of the
spec equations (``slrnet.md`` §2).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_slrnet_lowrank import (
    OfficialFactorizationReconstruction,
    naive_factorization,
    naive_prototypes,
    official_cross_view,
    official_dictionary_init,
)
from wsseg.layers import (
    EMFactorization,
    LowRankFactorization,
    LowRankOutput,
    PrototypeInit,
    class_prototypes,
    em_factorize,
)


def _pair(d, *, num_iters=1, temperature=1.0, eps=1e-6, normalize_tokens=False, detach_init=True,
          dtype=torch.float64):
    """wsseg module and official module with identical weights."""
    ours = LowRankFactorization(d, num_iters=num_iters, temperature=temperature, eps=eps,
                                detach_init=detach_init, normalize_tokens=normalize_tokens).to(dtype)
    ref = OfficialFactorizationReconstruction(d, num_iters=num_iters, scale=1.0 / temperature, eps=eps,
                                              normalize_tokens=normalize_tokens).to(dtype)
    ref.load_state_dict(ours.state_dict())  # official parameter names
    return ours, ref


def _close(a, b, tol):
    scale = max(1.0, b.abs().max().item())
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def _views(B=2, d=16, sizes=((9, 7), (4, 3)), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, d, h, w, generator=g, dtype=dtype).relu() for h, w in sizes]


# ---------------------------------------------------------------------------------------------------
# against the official formulation (outputs and gradients)


@pytest.mark.parametrize("num_iters, temperature, normalize_tokens",
                         [(1, 1.0, False), (3, 1.0, False), (2, 0.5, False), (2, 1.0, True)])
def test_cross_view_matches_official_float64(num_iters, temperature, normalize_tokens):
    d, K = 16, 5
    ours, ref = _pair(d, num_iters=num_iters, temperature=temperature, normalize_tokens=normalize_tokens)
    maps = [m.requires_grad_() for m in _views(d=d)]
    maps_r = [m.detach().clone().requires_grad_() for m in maps]
    logits = torch.randn(2, K, 9, 7, dtype=torch.float64)
    d0 = class_prototypes(maps[0], logits)
    res = ours(maps, d0)
    outs_r, codes_r, dict_r = official_cross_view(ref, maps_r, official_dictionary_init(maps_r[0], logits).detach())
    for a, b in zip(res.out + res.codes, outs_r + codes_r, strict=True):
        _close(a, b, 1e-10)
    _close(res.dictionary, dict_r, 1e-10)

    # gradients into both views, W1 (weight, bias) and W2 (weight, bias) through all unrolled steps
    w = [torch.randn_like(o) for o in res.out] + [torch.randn_like(c) for c in res.codes]
    wd = torch.randn_like(res.dictionary)
    loss = sum((a * b).sum() for a, b in zip(res.out + res.codes, w, strict=True)) + (res.dictionary * wd).sum()
    loss_r = sum((a * b).sum() for a, b in zip(outs_r + codes_r, w, strict=True)) + (dict_r * wd).sum()
    loss.backward()
    loss_r.backward()
    for a, b in zip(maps, maps_r, strict=True):
        _close(a.grad, b.grad, 1e-10)
    for name, p in ours.named_parameters():
        _close(p.grad, dict(ref.named_parameters())[name].grad, 1e-10)


def test_matches_official_float32_realistic():
    """float32, d = 256, K = 21, two views (16² + 8² tokens): 1e-5 on outputs and gradients."""
    d, K, B = 256, 21, 2
    ours, ref = _pair(d, dtype=torch.float32)
    maps = [m.requires_grad_() for m in _views(B=B, d=d, sizes=((16, 16), (8, 8)), dtype=torch.float32)]
    maps_r = [m.detach().clone().requires_grad_() for m in maps]
    logits = torch.randn(B, K, 16, 16)
    res = ours(maps, class_prototypes(maps[0], logits))
    outs_r, codes_r, dict_r = official_cross_view(ref, maps_r, official_dictionary_init(maps_r[0], logits).detach())
    for a, b in zip(res.out + res.codes, outs_r + codes_r, strict=True):
        _close(a, b, 1e-5)
    _close(res.dictionary, dict_r, 1e-5)
    w = [torch.randn_like(o) for o in res.out]
    sum((a * b).sum() for a, b in zip(res.out, w, strict=True)).backward()
    sum((a * b).sum() for a, b in zip(outs_r, w, strict=True)).backward()
    for a, b in zip(maps, maps_r, strict=True):
        _close(a.grad, b.grad, 1e-5)
    for name, p in ours.named_parameters():
        _close(p.grad, dict(ref.named_parameters())[name].grad, 1e-5)


@pytest.mark.parametrize("num_iters, normalize_tokens", [(1, False), (2, False), (1, True)])
def test_matches_naive_loops(num_iters, normalize_tokens):
    B, N, K, d = 2, 6, 3, 4
    ours = LowRankFactorization(d, num_iters=num_iters, temperature=0.7, normalize_tokens=normalize_tokens)
    ours = ours.double()
    x = torch.randn(B, N, d, dtype=torch.float64)
    d0 = torch.randn(B, K, d, dtype=torch.float64)
    res = ours(x, d0)
    out_n, codes_n, dict_n = naive_factorization(
        x, d0, ours.transform1.weight, ours.transform1.bias, ours.transform2.weight, ours.transform2.bias,
        num_iters=num_iters, temperature=0.7, normalize_tokens=normalize_tokens)
    _close(res.out, out_n, 1e-12)
    _close(res.codes, codes_n, 1e-12)
    _close(res.dictionary, dict_n, 1e-12)


def test_detach_init_gradients():
    """Default: no gradient to init_dict (W1 still learns through the dictionary path); option: official
    module's gradient into the prototypes."""
    d, K = 8, 3
    x = torch.randn(2, 10, d, dtype=torch.float64)
    d0 = torch.randn(2, K, d, dtype=torch.float64, requires_grad=True)
    ours, ref = _pair(d, num_iters=2)
    ours(x, d0).out.sum().backward()
    assert d0.grad is None
    d0_r = d0.detach().clone()
    ref(x, d0_r)[0].sum().backward()
    _close(ours.transform1.weight.grad, ref.transform1.weight.grad, 1e-10)

    ours, ref = _pair(d, num_iters=2, detach_init=False)
    d0_r = d0.detach().clone().requires_grad_()
    ours(x, d0).out.sum().backward()
    ref(x, d0_r)[0].sum().backward()
    _close(d0.grad, d0_r.grad, 1e-10)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    d0 = torch.randn(2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: tuple(em_factorize(a, b, num_iters=2, temperature=0.5)),
                                    (x, d0))
    module = LowRankFactorization(3, num_iters=2, detach_init=False).double()
    assert torch.autograd.gradcheck(lambda a, b: tuple(module(a, b)), (x, d0))
    feats = torch.randn(1, 3, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    logits = torch.randn(1, 2, 2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, z: class_prototypes(f, z, detach=False), (feats, logits))


# ---------------------------------------------------------------------------------------------------
# properties


def test_codes_and_dictionary_properties():
    x = torch.randn(3, 40, 8) * 5
    res = em_factorize(x, torch.randn(3, 4, 8), num_iters=3)
    assert isinstance(res, EMFactorization)
    assert (res.codes >= 0).all()
    torch.testing.assert_close(res.codes.sum(dim=1), torch.ones(3, 40))
    torch.testing.assert_close(res.dictionary.norm(dim=-1), torch.ones(3, 4), atol=1e-5, rtol=0)
    assert (res.reconstruction >= 0).all()
    # reconstruction = ReLU(codes^T D)
    torch.testing.assert_close(res.reconstruction, torch.einsum("bkn,bkd->bnd", res.codes, res.dictionary).relu())


def test_hand_computed_one_token():
    """One token, two atoms, T = 1, eps = 0: both atoms become the normalised token, codes are the softmax
    of the initial cosines times the token norm."""
    x = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    d0 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    codes, dictionary, recon = em_factorize(x, d0, eps=0.0)
    z = torch.tensor([3.0, 4.0], dtype=torch.float64) / (1 + 1e-6 * torch.tensor([1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(codes[0, :, 0], z.softmax(0))
    unit = torch.tensor([0.6, 0.8], dtype=torch.float64) * 5 / (5 + 1e-6)
    torch.testing.assert_close(dictionary[0], torch.stack([unit, unit]))
    torch.testing.assert_close(recon[0, 0], unit)  # codes sum to 1


def test_token_permutation_equivariance():
    x = torch.randn(2, 30, 8, dtype=torch.float64)
    d0 = torch.randn(2, 4, 8, dtype=torch.float64)
    perm = torch.randperm(30)
    module = LowRankFactorization(8, num_iters=2).double()
    a, b = module(x, d0), module(x[:, perm], d0)
    torch.testing.assert_close(b.out, a.out[:, perm])
    torch.testing.assert_close(b.codes, a.codes[:, :, perm])
    torch.testing.assert_close(b.dictionary, a.dictionary)


def test_two_views_share_the_dictionary():
    d = 16
    module = LowRankFactorization(d)
    v1, v2 = _views(d=d, dtype=torch.float32)
    d0 = torch.randn(2, 5, d)
    res = module([v1, v2], d0)
    assert isinstance(res, LowRankOutput) and isinstance(res.out, tuple) and isinstance(res.codes, tuple)
    assert res.out[0].shape == v1.shape and res.out[1].shape == v2.shape
    assert res.codes[0].shape == (2, 5, 9, 7) and res.codes[1].shape == (2, 5, 4, 3)
    # one call on the concatenated tokens gives the same dictionary and the same per-token results
    tok = torch.cat([v1.flatten(2), v2.flatten(2)], dim=2).transpose(1, 2)
    joint = module(tok, d0)
    torch.testing.assert_close(res.dictionary, joint.dictionary)
    torch.testing.assert_close(res.out[1].flatten(2).transpose(1, 2), joint.out[:, 63:])
    torch.testing.assert_close(res.codes[0].flatten(2), joint.codes[:, :, :63])
    # the reconstruction of each view uses that shared dictionary (the view-1-only one differs)
    alone = module([v1], d0)
    assert not torch.allclose(alone.dictionary, res.dictionary)
    rec2 = torch.einsum("bkn,bkd->bnd", res.codes[1].flatten(2), res.dictionary).relu()
    expected = F.relu(v2.flatten(2).transpose(1, 2) + module.transform2(rec2))
    torch.testing.assert_close(res.out[1].flatten(2).transpose(1, 2), expected)


def test_class_equals_function():
    module = LowRankFactorization(8, num_iters=2, temperature=2.0, eps=1e-4)
    x, d0 = torch.randn(2, 20, 8), torch.randn(2, 3, 8)
    res = module(x, d0)
    fn = em_factorize(module.transform1(x), module.transform1(d0), num_iters=2, temperature=2.0, eps=1e-4)
    torch.testing.assert_close(res.codes, fn.codes)
    torch.testing.assert_close(res.dictionary, fn.dictionary)
    torch.testing.assert_close(res.out, F.relu(x + module.transform2(fn.reconstruction)))
    feats, logits = torch.randn(2, 8, 5, 4), torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(PrototypeInit(eps=1e-3)(feats, logits), class_prototypes(feats, logits, eps=1e-3))


def test_autocast_bf16_runs():
    module = LowRankFactorization(32, num_iters=2)
    v1, v2 = torch.randn(2, 32, 8, 8).relu(), torch.randn(2, 32, 4, 4).relu()
    logits = torch.randn(2, 5, 8, 8)
    ref = module([v1, v2], class_prototypes(v1, logits))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d0 = class_prototypes(v1, logits)
        res = module([v1, v2], d0)
        res.out[0].float().sum().backward()
    for a, b in zip(res.out, ref.out, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, atol=0.1, rtol=0.05)
    torch.testing.assert_close(res.codes[0].float().sum(dim=1), torch.ones(2, 8, 8), atol=2e-2, rtol=0)
    assert module.transform1.weight.grad is not None and torch.isfinite(module.transform1.weight.grad).all()


# ---------------------------------------------------------------------------------------------------
# prototypes


def test_prototypes_match_official_and_naive():
    feats = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    logits = torch.randn(2, 3, 5, 4, dtype=torch.float64) * 3
    protos = class_prototypes(feats, logits)
    _close(protos, official_dictionary_init(feats, logits).permute(0, 2, 1), 1e-12)
    _close(protos, naive_prototypes(feats, logits), 1e-12)


def test_prototypes_stop_gradients():
    feats = torch.randn(2, 6, 5, 4, requires_grad=True)
    logits = torch.randn(2, 3, 5, 4, requires_grad=True)
    protos = PrototypeInit()(feats, logits)
    assert not protos.requires_grad and protos.grad_fn is None
    # end to end: even with detach_init=False the gradient reaches the features only via the token path
    open_module = LowRankFactorization(6, detach_init=False)
    open_module([feats], protos).out[0].sum().backward()
    assert logits.grad is None
    g_tokens_only = feats.grad.clone()
    # with a graph-keeping initialisation (option) the prototype path adds a gradient ...
    feats.grad = None
    open_module([feats], class_prototypes(feats, logits, detach=False)).out[0].sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert not torch.allclose(feats.grad, g_tokens_only)
    # ... which the module's own stop-gradient (detach_init=True, default) removes again
    feats.grad, logits.grad = None, None
    closed = LowRankFactorization(6)
    closed.load_state_dict(open_module.state_dict())
    closed([feats], class_prototypes(feats, logits, detach=False)).out[0].sum().backward()
    assert logits.grad is None
    torch.testing.assert_close(feats.grad, g_tokens_only)


def test_prototypes_hand_computed():
    # 1 image, 2 pixels, 1 feature; logits push pixel 0 to class 0 and pixel 1 to class 1
    feats = torch.tensor([[[[2.0, 6.0]]]], dtype=torch.float64)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]], dtype=torch.float64)
    # R = [[1/2, 1/4], [1/2, 3/4]] -> class 0: (1 + 1.5) / 0.75, class 1: (1 + 4.5) / 1.25
    protos = class_prototypes(feats, logits, eps=0.0)
    torch.testing.assert_close(protos[0, :, 0], torch.tensor([2.5 / 0.75, 5.5 / 1.25], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------
# errors and repr


def test_errors():
    module = LowRankFactorization(8)
    d0 = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="x: expected"):
        module(torch.randn(2, 8), d0)
    with pytest.raises(ValueError, match="d = 8"):
        module(torch.randn(2, 5, 7), d0)
    with pytest.raises(ValueError, match="d = 8"):
        module([torch.randn(2, 7, 3, 3)], d0)
    with pytest.raises(TypeError, match="floating"):
        module(torch.ones(2, 5, 8, dtype=torch.long), d0)
    with pytest.raises(ValueError, match=r"x\[1\]: expected batch size 2"):
        module([torch.randn(2, 8, 3, 3), torch.randn(3, 8, 2, 2)], d0)
    with pytest.raises(ValueError, match="empty sequence"):
        module([], d0)
    with pytest.raises(TypeError, match="sequence of tensors"):
        module(3.0, d0)
    with pytest.raises(ValueError, match="init_dict: expected shape"):
        module(torch.randn(2, 5, 8), torch.randn(3, 3, 8))
    with pytest.raises(ValueError, match="init_dict: expected shape"):
        module(torch.randn(2, 5, 8), torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="at least one token"):
        module(torch.randn(2, 0, 8), d0)
    with pytest.raises(ValueError, match="num_iters"):
        LowRankFactorization(8, num_iters=0)
    with pytest.raises(TypeError, match="num_iters"):
        LowRankFactorization(8, num_iters=1.0)
    with pytest.raises(ValueError, match="temperature"):
        LowRankFactorization(8, temperature=0.0)
    with pytest.raises(TypeError, match="detach_init"):
        LowRankFactorization(8, detach_init=1)
    with pytest.raises(ValueError, match="dim"):
        LowRankFactorization(0)
    with pytest.raises(ValueError, match="dict_proj"):
        em_factorize(torch.randn(2, 5, 8), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="x_proj"):
        em_factorize(torch.randn(5, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="eps"):
        em_factorize(torch.randn(2, 5, 8), torch.randn(2, 3, 8), eps=-1.0)
    with pytest.raises(ValueError, match="logits: expected batch size"):
        class_prototypes(torch.randn(2, 4, 3, 3), torch.randn(1, 2, 3, 3))
    with pytest.raises(ValueError, match="spatial size"):
        class_prototypes(torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 4))
    with pytest.raises(ValueError, match="features"):
        class_prototypes(torch.randn(4, 3, 3), torch.randn(2, 2, 3, 3))
    with pytest.raises(TypeError, match="detach"):
        PrototypeInit(detach="yes")


def test_extra_repr_and_state_dict():
    module = LowRankFactorization(8, num_iters=2, temperature=0.5, normalize_tokens=True)
    text = repr(module)
    for item in ("dim=8", "num_iters=2", "temperature=0.5", "eps=1e-06", "detach_init=True",
                 "normalize_tokens=True"):
        assert item in text
    assert "eps=1e-06, detach=True" in repr(PrototypeInit())
    assert sorted(module.state_dict()) == ["transform1.bias", "transform1.weight", "transform2.bias",
                                           "transform2.weight"]


# ---------------------------------------------------------------------------------------------------
# memory layout: masks drawn after the factorisation land on the official elements


@pytest.mark.parametrize("sizes", [((9, 7), (4, 3)), ((6, 6),)])
def test_dropout_after_factorisation_draws_the_mask_of_a_contiguous_copy(sizes):
    ours, _ = _pair(16, dtype=torch.float32)
    views = _views(sizes=sizes, dtype=torch.float32)
    d0 = torch.randn(2, 5, 16)
    outs = ours(views if len(views) > 1 else views[0], d0).out
    outs = outs if isinstance(outs, tuple) else (outs,)
    for o in outs:
        assert torch.ones_like(o).is_contiguous()  # NCHW memory order, not channels-last
        torch.manual_seed(3)
        a = F.dropout(torch.ones_like(o), 0.3)
        torch.manual_seed(3)
        b = F.dropout(torch.ones_like(o.contiguous()), 0.3)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.manual_seed(4)
        a = F.dropout2d(F.conv2d(o, torch.ones(4, 16, 1, 1)), 0.5)  # a conv then a dropout, as last_conv
        torch.manual_seed(4)
        b = F.dropout2d(F.conv2d(o.contiguous(), torch.ones(4, 16, 1, 1)), 0.5)
        torch.testing.assert_close(a != 0, b != 0, rtol=0, atol=0)


def test_same_seed_same_masks_as_the_official_cross_view():
    ours, ref = _pair(16, dtype=torch.float32)
    views = _views(dtype=torch.float32)
    d0 = torch.randn(2, 5, 16)
    outs = ours(views, d0).out
    ref_outs, _, _ = official_cross_view(ref, views, d0.transpose(1, 2))
    for o, r in zip(outs, ref_outs, strict=True):
        torch.manual_seed(5)
        mo = F.dropout(torch.ones_like(o), 0.3)
        torch.manual_seed(5)
        mr = F.dropout(torch.ones_like(r), 0.3)
        torch.testing.assert_close(mo, mr, rtol=0, atol=0)


def test_token_views_stay_token_first():
    ours, _ = _pair(16, dtype=torch.float32)
    out = ours(torch.randn(2, 30, 16), torch.randn(2, 5, 16)).out
    assert out.is_contiguous() and out.shape == (2, 30, 16)


# ---------------------------------------------------------------------------------------------------
# dtypes


def test_dtype_mismatch_names_argument_expected_and_received():
    lrf = LowRankFactorization(16)
    x, d0 = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 16)
    with pytest.raises(TypeError, match=r"x: expected dtype torch.float32 .*got torch.float64"):
        lrf(x.double(), d0)
    with pytest.raises(TypeError, match=r"x\[0\]: expected dtype torch.float32 .*got torch.float16"):
        lrf([x.half(), x.half()], d0)
    with pytest.raises(TypeError, match=r"init_dict: expected dtype torch.float32 .*got torch.float64"):
        lrf(x, d0.double())


def test_float64_module_gradcheck_through_maps():
    lrf = LowRankFactorization(4, num_iters=2).double()
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    d0 = torch.randn(1, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: torch.cat([o.flatten() for o in lrf([a, b], d0).out]), (x, x2))


# ---------------------------------------------------------------------------------------------------
# the map path (hand-written backward, W1 never applied to the tokens) against the official formulation


@pytest.mark.parametrize("num_iters, temperature, used", [(1, 1.0, "all"), (3, 0.7, "all"), (2, 1.0, "codes"),
                                                          (1, 1.0, "dictionary"), (2, 0.5, "out")])
def test_map_path_matches_official_with_init_gradient(num_iters, temperature, used):
    """detach_init=False (gradient into the prototypes through W1), partial use of the outputs (the unused
    ones get no gradient), single-view and two-view calls, float64."""
    d, K = 12, 4
    ours, ref = _pair(d, num_iters=num_iters, temperature=temperature, detach_init=False)
    for sizes in (((7, 5), (3, 4)), ((6, 6),)):
        ours.zero_grad()
        ref.zero_grad()
        maps = [m.requires_grad_() for m in _views(d=d, sizes=sizes, seed=len(sizes))]
        maps_r = [m.detach().clone().requires_grad_() for m in maps]
        d0 = torch.randn(2, K, d, dtype=torch.float64, requires_grad=True)
        d0_r = d0.detach().clone().requires_grad_()
        res = ours(maps if len(maps) > 1 else maps[0], d0)
        outs = list(res.out) if len(maps) > 1 else [res.out]
        codes = list(res.codes) if len(maps) > 1 else [res.codes]
        outs_r, codes_r, dict_r = official_cross_view(ref, maps_r, d0_r.transpose(1, 2))
        for a, b in zip(outs + codes + [res.dictionary], outs_r + codes_r + [dict_r], strict=True):
            _close(a, b, 1e-10)
        g = torch.Generator().manual_seed(7)
        pick = {"all": (True, True, True), "out": (True, False, False), "codes": (False, True, False),
                "dictionary": (False, False, True)}[used]

        def loss_of(o, c, dct, pick=pick, g=g):
            g.manual_seed(7)
            total = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in o) if pick[0] else 0
            total = total + (sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in c)
                             if pick[1] else 0)
            return total + ((dct * torch.randn(dct.shape, generator=g, dtype=dct.dtype)).sum() if pick[2] else 0)

        loss_of(outs, codes, res.dictionary).backward()
        loss_of(outs_r, codes_r, dict_r).backward()
        for a, b in zip(maps + [d0], maps_r + [d0_r], strict=True):
            _close(a.grad, b.grad, 1e-10)
        for name, p in ours.named_parameters():
            ref_grad = dict(ref.named_parameters())[name].grad  # None: W2 does not reach the codes
            _close(p.grad, torch.zeros_like(p) if ref_grad is None else ref_grad, 1e-10)


def test_map_path_gradcheck_all_inputs_and_parameters():
    """float64 gradcheck of the hand-written backward w.r.t. both views, the prototypes and W1, b1, W2, b2."""
    lrf = LowRankFactorization(3, num_iters=2, temperature=0.5, detach_init=False).double()
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(1, 3, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    x2 = torch.randn(1, 3, 2, 1, dtype=torch.float64, generator=g).requires_grad_()
    d0 = torch.randn(1, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    names = [n for n, _ in lrf.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in lrf.named_parameters()]

    def fn(a, b, z, *ps):
        res = torch.func.functional_call(lrf, dict(zip(names, ps, strict=True)), ([a, b], z))
        return (*res.out, *res.codes, res.dictionary)

    assert torch.autograd.gradcheck(fn, (x1, x2, d0, *params))


def test_map_path_contiguous_outputs_any_input_layout():
    """Outputs are contiguous NCHW maps; channels-last inputs give the same values."""
    ours, _ = _pair(16, dtype=torch.float32)
    views = _views(dtype=torch.float32)
    d0 = torch.randn(2, 5, 16)
    res = ours(views, d0)
    res_cl = ours([v.contiguous(memory_format=torch.channels_last) for v in views], d0)
    assert all(o.is_contiguous() for o in res.out + res_cl.out)
    for a, b in zip(res.out + res.codes, res_cl.out + res_cl.codes, strict=True):
        torch.testing.assert_close(a, b)


def test_map_path_retained_graph_second_backward_is_equal():
    ours, _ = _pair(8, num_iters=2, detach_init=False)
    views = [v.requires_grad_() for v in _views(d=8)]
    d0 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    res = ours(views, d0)
    loss = sum(o.sum() for o in res.out) + (res.codes[0] ** 2).sum() + res.dictionary.sum()
    inputs = [*views, d0, *ours.parameters()]
    first = torch.autograd.grad(loss, inputs, retain_graph=True)
    second = torch.autograd.grad(loss, inputs)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
