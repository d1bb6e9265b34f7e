"""SLRNet's cross-view low-rank factorisation (EM / soft-k-means with a softmax over atoms)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from wsseg.layers._neighbors import check_bool, check_positive
from wsseg.utils.validation import check_tensor

__all__ = ["EMFactorization", "LowRankFactorization", "LowRankOutput", "em_factorize"]

#: the constant of SLRNet's ``l2norm``: ``z / (1e-6 + ||z||)`` (hard-coded in the official code)
L2_EPS = 1e-6


class EMFactorization(NamedTuple):
    """Result of :func:`em_factorize`.

    Attributes:
        codes: soft assignment of every token to the atoms :math:`C` (B, K, N), sums to 1 over ``K``
            (codes of the last E-step).
        dictionary: the l2-normalised atoms :math:`D` (B, K, d) of the last M-step.
        reconstruction: :math:`\\hat X = \\mathrm{ReLU}(C^\\top D)` (B, N, d).
    """

    codes: Tensor
    dictionary: Tensor
    reconstruction: Tensor


class LowRankOutput(NamedTuple):
    """Result of :class:`LowRankFactorization`.

    For a single input tensor ``out`` and ``codes`` are tensors; for a sequence of views they are tuples
    with one entry per view, in the input order and layout. The ``dictionary`` is always one tensor, shared
    by all views.

    Attributes:
        out: :math:`Y = \\mathrm{ReLU}(X + W_2 \\hat X)` — (B, N, d) for tokens, (B, d, H, W) for a map.
        codes: :math:`C` — (B, K, N) for tokens, (B, K, H, W) for a map; sums to 1 over ``K``.
        dictionary: :math:`D` (B, K, d), l2-normalised atoms (shared across the views).
    """

    out: Tensor | tuple[Tensor, ...]
    codes: Tensor | tuple[Tensor, ...]
    dictionary: Tensor


def _l2norm(x: Tensor) -> Tensor:
    return x / (x.norm(dim=-1, keepdim=True) + L2_EPS)


def _check_num_iters(num_iters: object) -> int:
    if isinstance(num_iters, bool) or not isinstance(num_iters, int):
        raise TypeError(f"num_iters: expected an int >= 1, got {num_iters!r}")
    if num_iters < 1:
        raise ValueError(f"num_iters: expected an int >= 1, got {num_iters!r}")
    return num_iters


def _em(x: Tensor, dictionary: Tensor, num_iters: int, scale: float, eps: float,
        normalize_tokens: bool) -> EMFactorization:
    """Unchecked core of :func:`em_factorize` (steps 1b-3), full autograd through every step."""
    if normalize_tokens:
        x = _l2norm(x)
    dictionary = _l2norm(dictionary)
    codes_nk = x  # placeholder, always overwritten (num_iters >= 1)
    for _ in range(num_iters):
        # E-step in token-major layout (B, N, K): the softmax over the K atoms is a contiguous reduction
        logits = torch.bmm(x, dictionary.transpose(1, 2))
        if scale != 1.0:
            logits = logits * scale
        codes_nk = logits.softmax(dim=-1)
        # M-step: eps-smoothed responsibilities normalised over the tokens, then l2-normalised atoms
        weights = codes_nk + eps
        weights = weights / weights.sum(dim=1, keepdim=True)
        dictionary = _l2norm(torch.bmm(weights.transpose(1, 2), x))  # (B, K, d)
    reconstruction = torch.relu(torch.bmm(codes_nk, dictionary))  # (B, N, d)
    return EMFactorization(codes_nk.transpose(1, 2).contiguous(), dictionary, reconstruction)


def _l2norm_with_norm(x: Tensor) -> tuple[Tensor, Tensor]:
    norm = x.norm(dim=-1, keepdim=True)
    return x / (norm + L2_EPS), norm


def _l2norm_backward(x: Tensor, norm: Tensor, grad: Tensor) -> Tensor:
    """Vector-Jacobian product of ``x / (||x|| + eps)`` (last dimension)."""
    denom = norm + L2_EPS
    dot = (x * grad).sum(-1, keepdim=True)
    return grad / denom - x * (dot / (norm.clamp_min(torch.finfo(x.dtype).tiny) * denom * denom))


class _CrossViewMaps(torch.autograd.Function):
    r"""The factorisation of channel-first views with a hand-written backward (the fast path of the module).

    Same equations as :func:`_em` on :math:`X' = W_1 X + b_1` followed by the residual, but :math:`X'` is never
    formed: since the M-step weights sum to 1 over the tokens,

    .. math::

        \langle D_k, X'_n \rangle = (D W_1)_k \cdot X_n + D_k \cdot b_1, \qquad
        \textstyle\sum_n \hat C_{k,n} X'_n = W_1 \big(\sum_n \hat C_{k,n} X_n\big) + b_1,

    so the :math:`N \times d \times d` products of :math:`W_1` (forward, and the two of its backward) become
    :math:`K \times d \times d` ones. Every view stays in its ``(B, d, N_i)`` layout (no concatenation, no
    permute); each output map is written once, contiguous NCHW. The backward accumulates the three token
    gradients (residual, E-step, M-step) in place into one buffer per view, with the E- and M-step terms in a
    single ``2K``-deep product. Equal to the autograd of the official formulation to float rounding
    (``tests/test_low_rank_factorization.py``).

    ``forward(num_iters, scale, eps, init, w1, b1, w2, b2, *xs)`` with ``xs`` the views ``(B, d, N_i)``;
    returns ``(codes (B, K, N), dictionary (B, K, d), *outs (B, d, N_i))``.
    """

    @staticmethod
    def forward(ctx, num_iters, scale, eps, init, w1, b1, w2, b2, *xs):  # noqa: ANN001, ANN205
        batch, dim = xs[0].shape[:2]
        lengths = [x.shape[2] for x in xs]
        e0 = F.linear(init, w1, b1)
        dictionary, norm0 = _l2norm_with_norm(e0)
        saved = [e0, norm0]
        codes = e0  # placeholder, always overwritten (num_iters >= 1)
        for _ in range(num_iters):
            proj = torch.matmul(dictionary, w1)  # (B, K, d): <D_k, W1 x + b1> = (D W1)_k . x + D_k . b1
            bias = torch.matmul(dictionary, b1).unsqueeze(-1)  # (B, K, 1)
            if scale != 1.0:
                proj, bias = proj * scale, bias * scale
            codes = torch.cat([torch.baddbmm(bias, proj, x) for x in xs], dim=2).softmax(dim=1)  # (B, K, N)
            weights = codes + eps
            mass = weights.sum(dim=-1, keepdim=True)
            weights.div_(mass)
            pooled = None  # sum_n weights_kn x_n  (B, K, d)
            for x, w in zip(xs, weights.split(lengths, dim=2), strict=True):
                pooled = torch.bmm(w, x.transpose(1, 2)) if pooled is None else pooled.baddbmm_(w, x.transpose(1, 2))
            e = F.linear(pooled, w1, b1)  # the weights sum to 1 over n, so the bias passes through
            new_dictionary, norm = _l2norm_with_norm(e)
            saved += [dictionary, proj, codes, weights, mass, pooled, e, norm]
            dictionary = new_dictionary
        # token-major reconstruction (B, N, d): the backward's product W2^T G then writes token-major too,
        # the faster orientation of the BLAS for these shapes
        recon = torch.bmm(codes.transpose(1, 2), dictionary).relu_()
        w2e = w2.expand(batch, dim, dim)
        outs = [torch.add(x, b2[:, None]).baddbmm_(w2e, r.transpose(1, 2)).relu_()
                for x, r in zip(xs, recon.split(lengths, dim=1), strict=True)]
        ctx.num_iters, ctx.scale, ctx.lengths = num_iters, scale, lengths
        ctx.save_for_backward(init, w1, b1, w2, b2, recon, dictionary, *saved, *xs, *outs)
        return (codes, dictionary, *outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_codes, g_dict, *g_outs):  # noqa: ANN001, ANN205
        num_iters, scale, lengths = ctx.num_iters, ctx.scale, ctx.lengths
        nv = len(lengths)
        saved = ctx.saved_tensors
        init, w1, b1, w2, b2, recon, dictionary, e0, norm0 = saved[:9]
        steps = saved[9:9 + 8 * num_iters]
        xs = saved[9 + 8 * num_iters:9 + 8 * num_iters + nv]
        outs = saved[9 + 8 * num_iters + nv:]
        batch, dim = xs[0].shape[:2]
        codes = steps[8 * (num_iters - 1) + 2]
        g_codes = torch.zeros_like(codes) if g_codes is None else g_codes.clone()
        g_dict = torch.zeros_like(dictionary) if g_dict is None else g_dict.clone()
        g_w2, g_b2 = torch.zeros_like(w2), torch.zeros_like(b2)
        w2e = w2.expand(batch, dim, dim)
        g_codes_v = g_codes.split(lengths, dim=2)
        g_xs = []
        for v, (out, r, c) in enumerate(zip(outs, recon.split(lengths, dim=1), codes.split(lengths, dim=2),
                                            strict=True)):
            g_out = torch.zeros_like(out) if g_outs[v] is None else g_outs[v]
            g_y = torch.ops.aten.threshold_backward(g_out, out, 0)  # through the final ReLU
            g_b2 += g_y.sum(dim=(0, 2))
            g_w2 += torch.bmm(g_y, r).sum(dim=0)
            g_r = torch.bmm(g_y.transpose(1, 2), w2e)  # (B, N_i, d)
            torch.ops.aten.threshold_backward.grad_input(g_r, r, 0, grad_input=g_r)  # through ReLU(C^T D), in place
            g_dict.baddbmm_(c, g_r)
            g_codes_v[v].baddbmm_(dictionary, g_r.transpose(1, 2))
            g_xs.append(g_y)  # the residual's gradient; the E/M-step terms are added in place below
        g_w1, g_b1 = torch.zeros_like(w1), torch.zeros_like(b1)
        for t in range(num_iters - 1, -1, -1):
            prev_dict, proj, codes, weights, mass, pooled, e, norm = steps[8 * t:8 * t + 8]
            g_e = _l2norm_backward(e, norm, g_dict)
            g_w1 += torch.einsum("bkd,bke->de", g_e, pooled)
            g_b1 += g_e.sum(dim=(0, 1))
            g_pooled = torch.matmul(g_e, w1)  # (B, K, d)
            g_weights = torch.cat([torch.bmm(g_pooled, x) for x in xs], dim=2)  # (B, K, N)
            g_c = g_weights.sub_((g_weights * weights).sum(dim=-1, keepdim=True)).div_(mass)
            if t == num_iters - 1:
                g_c += g_codes
            g_logits = codes * (g_c - (g_c * codes).sum(dim=1, keepdim=True))  # softmax over K
            left = torch.cat([g_pooled.transpose(1, 2), proj.transpose(1, 2)], dim=2)  # (B, d, 2K)
            g_proj = None
            for v, (x, w, gl) in enumerate(zip(xs, weights.split(lengths, dim=2), g_logits.split(lengths, dim=2),
                                               strict=True)):
                gp = torch.bmm(gl, x.transpose(1, 2))
                g_proj = gp if g_proj is None else g_proj.add_(gp)
                g_xs[v].baddbmm_(left, torch.cat([w, gl], dim=1))  # M-step and E-step terms in one product
            g_bias = g_logits.sum(dim=2)  # (B, K)
            if scale != 1.0:
                g_proj, g_bias = g_proj * scale, g_bias * scale
            g_w1 += torch.einsum("bkd,bke->de", prev_dict, g_proj)
            g_b1 += torch.einsum("bkd,bk->d", prev_dict, g_bias)
            g_dict = torch.matmul(g_proj, w1.t()) + g_bias[:, :, None] * b1
        g_e0 = _l2norm_backward(e0, norm0, g_dict)
        g_w1 += torch.einsum("bkd,bke->de", g_e0, init)
        g_b1 += g_e0.sum(dim=(0, 1))
        g_init = torch.matmul(g_e0, w1) if ctx.needs_input_grad[3] else None
        return (None, None, None, g_init, g_w1, g_b1, g_w2, g_b2, *g_xs)


def em_factorize(x_proj: Tensor, dict_proj: Tensor, *, num_iters: int = 1, temperature: float = 1.0,
                 eps: float = 1e-6, normalize_tokens: bool = False) -> EMFactorization:
    r"""Factorise tokens with a dictionary by EM (soft k-means with a softmax over the atoms).

    The parameter-free core of :class:`LowRankFactorization` (SLRNet's "cross-view low-rank" step). With
    the (already projected) tokens :math:`X' \in \mathbb{R}^{N \times d}`, the initial atoms
    :math:`D \in \mathbb{R}^{K \times d}` and :math:`\operatorname{l2norm}(z) = z / (10^{-6} + \|z\|_2)`
    over ``d``:

    .. math::

        D &\leftarrow \operatorname{l2norm}(D), \\
        \text{repeat } T \text{ times:}\quad
        C_{k,n} &= \operatorname{softmax}_k\big(\langle D_k, X'_n\rangle / \tau\big), \qquad
        \hat C_{k,n} = \frac{C_{k,n} + \epsilon}{\sum_{n'} (C_{k,n'} + \epsilon)}, \qquad
        D_k \leftarrow \operatorname{l2norm}\Big(\sum_n \hat C_{k,n} X'_n\Big), \\
        \hat X_n &= \operatorname{ReLU}\Big(\sum_k C_{k,n} D_k\Big)
        \quad \text{(codes of the last E-step, atoms of the last M-step).}

    Not NMF: an EMANet-like attention alternation. Every token's code sums to 1 over the atoms. The
    tokens are **not** normalised by default (official), so the effective softmax temperature scales with
    the token norm; ``normalize_tokens=True`` l2-normalises them first (used in the E-step, the M-step and
    the reconstruction). Gradients flow through all ``T`` unrolled steps (no one-step / truncated
    gradient) into both inputs.

    Args:
        x_proj: the tokens :math:`X'` (SLRNet: :math:`W_1 X` of all views concatenated).
        dict_proj: the initial atoms (SLRNet: :math:`W_1 D_0`), normalised here.
        num_iters: number of E/M steps :math:`T \ge 1` (official 1).
        temperature: softmax temperature :math:`\tau > 0` (official 1; the logits are multiplied by
            ``1 / temperature`` as in the code).
        eps: smoothing :math:`\epsilon \ge 0` of the M-step responsibilities (official 1e-6).
        normalize_tokens: l2-normalise the tokens first (option; official ``False``).

    Returns:
        :class:`EMFactorization` ``(codes, dictionary, reconstruction)``.

    Shape:
        - x_proj: :math:`(B, N, d)`
        - dict_proj: :math:`(B, K, d)`
        - codes: :math:`(B, K, N)`; dictionary: :math:`(B, K, d)`; reconstruction: :math:`(B, N, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor, or a hyperparameter has the wrong type.
        ValueError: if an input is not 3-D, the batch sizes, feature sizes or devices differ, a size is
            zero, or a hyperparameter is out of range.

    Example:
        >>> x = torch.randn(2, 50, 16)
        >>> d0 = torch.randn(2, 4, 16)
        >>> codes, dictionary, recon = wsseg.layers.em_factorize(x, d0, num_iters=3)
        >>> codes.shape, dictionary.shape, recon.shape
        (torch.Size([2, 4, 50]), torch.Size([2, 4, 16]), torch.Size([2, 50, 16]))
        >>> torch.allclose(codes.sum(dim=1), torch.ones(2, 50))
        True
        >>> torch.allclose(dictionary.norm(dim=-1), torch.ones(2, 4), atol=1e-5)
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``
        (``FactorizationReconstruction.forward``, ``l2norm``).
    """
    check_tensor(x_proj, "x_proj", ndim=3, dims="(B, N, d)", dtype="float")
    check_tensor(dict_proj, "dict_proj", ndim=3, dims="(B, K, d)", dtype="float")
    B, N, d = x_proj.shape
    if dict_proj.shape[0] != B or dict_proj.shape[2] != d:
        raise ValueError(f"dict_proj: expected shape ({B}, K, {d}) (B and d of x_proj), "
                         f"got {tuple(dict_proj.shape)}")
    if N == 0 or dict_proj.shape[1] == 0 or d == 0:
        raise ValueError(f"x_proj, dict_proj: expected non-empty N, K and d, got shapes {tuple(x_proj.shape)} "
                         f"and {tuple(dict_proj.shape)}")
    if dict_proj.device != x_proj.device:
        raise ValueError(f"dict_proj: expected device {x_proj.device} (that of x_proj), got {dict_proj.device}")
    num_iters = _check_num_iters(num_iters)
    temperature = check_positive(temperature, "temperature")
    eps = check_positive(eps, "eps", allow_zero=True)
    normalize_tokens = check_bool(normalize_tokens, "normalize_tokens")
    return _em(x_proj, dict_proj, num_iters, 1.0 / temperature, eps, normalize_tokens)


class LowRankFactorization(nn.Module):
    r"""SLRNet's cross-view low-rank factorisation and reconstruction of dense features.

    Replaces the tokens of all views by a rank-:math:`\le K` reconstruction computed with **one dictionary
    shared across the views** (the tokens of the views are concatenated, so the M-step pools them), plus
    a residual. With :math:`W_1, W_2` token-wise linear layers :math:`d \to d` (with bias) and the
    initial dictionary :math:`D_0` (SLRNet: the aux-head class prototypes, :class:`PrototypeInit`):

    .. math::

        X' = W_1 X, \qquad (C, D, \hat X) = \operatorname{EM}_T\big(X',\, W_1 \operatorname{sg}(D_0)\big),
        \qquad Y = \operatorname{ReLU}\big(X + W_2 \hat X\big),

    where :math:`\operatorname{EM}_T` is :func:`em_factorize` (l2-normalised atoms, softmax over the atoms
    in the E-step, :math:`\epsilon`-smoothed M-step, :math:`\hat X = \operatorname{ReLU}(C^\top D)`) and
    :math:`\operatorname{sg}` is the stop-gradient of ``detach_init=True`` (SLRNet detaches :math:`D_0`;
    :math:`W_1` still receives the gradient of the dictionary path). Full back-propagation through the
    ``T`` unrolled steps into :math:`X`, :math:`W_1`, :math:`W_2`.

    ``forward(x, init_dict)`` takes either one tensor or a sequence of views. Each view is tokens
    ``(B, N_i, d)`` (3-D) or a feature map ``(B, d, H_i, W_i)`` (4-D, flattened row-major); the outputs
    come back per view in the same layout, codes as ``(B, K, N_i)`` or ``(B, K, H_i, W_i)``. SLRNet
    trains with two views (81×81 and the 0.5× view, 40×40) and tests single-view.

    **Memory layout.** When every view is a map, each output map is a contiguous NCHW tensor (the memory
    order of the official channel-first concatenation, not channels-last): ``torch.ones_like`` / dropout
    masks drawn on them afterwards (the stochastic gate, the segmentation head's dropouts) fill the same
    elements as the official run under the same seed. Token views ``(B, N, d)`` come back token-first.

    **Implementation (maps).** With map views and the official token handling (``normalize_tokens=False``,
    outside autocast) the module runs a fused path with a hand-written backward, equal to the formulation
    above to float rounding (outputs and gradients, tested against the official module): :math:`W_1` is
    never applied to the :math:`N` tokens — since the M-step weights sum to 1 over the tokens,
    :math:`\langle D_k, W_1 x_n + b_1\rangle = (D W_1)_k \cdot x_n + D_k \cdot b_1` and
    :math:`\sum_n \hat C_{k,n}(W_1 x_n + b_1) = W_1 \sum_n \hat C_{k,n} x_n + b_1`, so its three
    :math:`N \times d \times d` products (forward and backward) become :math:`K \times d \times d` ones;
    the views are read in place (no concatenation or permute of the features), each output map is written
    once, and the three token-gradient terms are accumulated in place. Token views, ``normalize_tokens=True``
    and autocast use the plain autograd formulation (:func:`em_factorize`). The fused path is differentiable
    once (no double backward through the module).

    **Dtypes.** Inputs must have the parameters' dtype (float32 by default; ``.double()`` the module for
    float64, e.g. :func:`torch.autograd.gradcheck`); under autocast both are cast by autocast.

    Initialisation as the official code: PyTorch's default :class:`torch.nn.Linear` initialisation (the
    official ``init_weights`` only re-initialises convolutions and BN). The parameter names
    ``transform1`` (:math:`W_1`) and ``transform2`` (:math:`W_2`) are the official ones, so the official
    state-dict entries load unchanged.

    Args:
        dim: the feature width ``d`` (SLRNet: 256).
        num_iters: number of E/M steps :math:`T \ge 1` (official 1; more steps unroll with full gradient).
        temperature: softmax temperature :math:`\tau > 0` (official 1).
        eps: M-step smoothing :math:`\epsilon` (official 1e-6).
        detach_init: stop the gradient to ``init_dict`` (official ``True``); ``False`` back-propagates
            into it.
        normalize_tokens: l2-normalise :math:`X'` before the EM steps (option; official ``False``, the
            normalisation is commented out in the code).

    Shape:
        - x: :math:`(B, N, d)` or :math:`(B, d, H, W)`, or a sequence of such views (same ``B``)
        - init_dict: :math:`(B, K, d)`
        - out: like ``x``; codes: :math:`(B, K, N)` / :math:`(B, K, H, W)` per view; dictionary:
          :math:`(B, K, d)`

    Raises:
        TypeError: if a hyperparameter has the wrong type, an input is not a floating-point tensor or not of
            the parameters' dtype (outside autocast), or ``x`` is neither a tensor nor a sequence of tensors.
        ValueError: if a hyperparameter is out of range, a view is not 3-D/4-D or has not ``dim``
            features, the views differ in batch size, dtype or device, ``init_dict`` is not
            ``(B, K, dim)``, or ``x`` is an empty sequence.

    Example:
        >>> lrf = wsseg.layers.LowRankFactorization(dim=16)
        >>> view1, view2 = torch.randn(2, 16, 9, 9), torch.randn(2, 16, 4, 4)
        >>> d0 = wsseg.layers.class_prototypes(view1, torch.randn(2, 5, 9, 9))
        >>> res = lrf([view1, view2], d0)
        >>> [o.shape for o in res.out]
        [torch.Size([2, 16, 9, 9]), torch.Size([2, 16, 4, 4])]
        >>> [c.shape for c in res.codes], res.dictionary.shape
        ([torch.Size([2, 5, 9, 9]), torch.Size([2, 5, 4, 4])], torch.Size([2, 5, 16]))
        >>> lrf(torch.randn(2, 30, 16), d0).out.shape  # single view of tokens
        torch.Size([2, 30, 16])

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``
        (``FactorizationReconstruction``, and ``Net.forward`` for the cross-view concatenation).
    """

    def __init__(self, dim: int = 256, num_iters: int = 1, temperature: float = 1.0, eps: float = 1e-6,
                 detach_init: bool = True, normalize_tokens: bool = False) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim: expected a positive int, got {dim!r}")
        if dim < 1:
            raise ValueError(f"dim: expected a positive int, got {dim!r}")
        self.dim = dim
        self.num_iters = _check_num_iters(num_iters)
        self.temperature = check_positive(temperature, "temperature")
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.detach_init = check_bool(detach_init, "detach_init")
        self.normalize_tokens = check_bool(normalize_tokens, "normalize_tokens")
        self.transform1 = nn.Linear(dim, dim)
        self.transform2 = nn.Linear(dim, dim)

    def _views(self, x: object) -> tuple[list[Tensor], list[tuple[int, ...] | None], bool]:
        """Views as token tensors (B, N_i, d), their map sizes (None for tokens), and whether x was one tensor."""
        single = isinstance(x, Tensor)
        if single:
            views = [x]
        elif isinstance(x, Sequence) and not isinstance(x, str):
            views = list(x)
            if not views:
                raise ValueError("x: expected a tensor or a non-empty sequence of views, got an empty sequence")
        else:
            raise TypeError(f"x: expected a tensor or a sequence of tensors, got {type(x).__name__}")
        tokens, sizes = [], []
        for i, v in enumerate(views):
            name = "x" if single else f"x[{i}]"
            check_tensor(v, name, ndim=(3, 4), dims="(B, N, d) or (B, d, H, W)", dtype="float")
            feat = v.shape[-1] if v.dim() == 3 else v.shape[1]
            if feat != self.dim:
                layout = "(B, N, d)" if v.dim() == 3 else "(B, d, H, W)"
                raise ValueError(f"{name}: expected d = {self.dim} features {layout}, got shape {tuple(v.shape)}")
            if i > 0:
                ref = views[0]
                if v.shape[0] != ref.shape[0] or v.dtype != ref.dtype or v.device != ref.device:
                    raise ValueError(
                        f"{name}: expected batch size {ref.shape[0]}, dtype {ref.dtype} and device {ref.device} "
                        f"(those of x[0]), got shape {tuple(v.shape)}, {v.dtype}, {v.device}")
            if v.dim() == 4:
                sizes.append(tuple(v.shape[-2:]))
                tokens.append(rearrange(v, "b d h w -> b (h w) d"))
            else:
                sizes.append(None)
                tokens.append(v)
            if tokens[-1].shape[1] == 0:
                raise ValueError(f"{name}: expected at least one token, got shape {tuple(v.shape)}")
        return tokens, sizes, single

    def _check_dtype(self, dtype: torch.dtype, name: str, device: torch.device) -> None:
        """Inputs must have the parameters' dtype (outside autocast, which casts both itself)."""
        expected = self.transform1.weight.dtype
        if dtype != expected and not torch.is_autocast_enabled(device.type):
            raise TypeError(f"{name}: expected dtype {expected} (that of the module's parameters; cast the module "
                            f"with .to({dtype}) or the input with .to({expected})), got {dtype}")

    def forward(self, x: Tensor | Sequence[Tensor], init_dict: Tensor) -> LowRankOutput:
        """Factorise the view(s) ``x`` with the dictionary initialised from ``init_dict (B, K, d)``."""
        tokens, sizes, single = self._views(x)
        batch = tokens[0].shape[0]
        check_tensor(init_dict, "init_dict", ndim=3, dims="(B, K, d)", dtype="float")
        if init_dict.shape[0] != batch or init_dict.shape[2] != self.dim or init_dict.shape[1] == 0:
            raise ValueError(f"init_dict: expected shape ({batch}, K, {self.dim}) with K >= 1, "
                             f"got {tuple(init_dict.shape)}")
        if init_dict.device != tokens[0].device:
            raise ValueError(f"init_dict: expected device {tokens[0].device} (that of x), got {init_dict.device}")
        self._check_dtype(tokens[0].dtype, "x" if single else "x[0]", tokens[0].device)
        self._check_dtype(init_dict.dtype, "init_dict", tokens[0].device)
        if self.detach_init:
            init_dict = init_dict.detach()

        if (all(s is not None for s in sizes) and not self.normalize_tokens
                and not torch.is_autocast_enabled(tokens[0].device.type)):
            return self._forward_maps(x if single else list(x), init_dict, sizes, single)

        idn = tokens[0] if len(tokens) == 1 else torch.cat(tokens, dim=1)  # (B, N1 + N2 + ..., d)
        codes, dictionary, recon = _em(self.transform1(idn), self.transform1(init_dict), self.num_iters,
                                       1.0 / self.temperature, self.eps, self.normalize_tokens)
        out = torch.add(idn, F.linear(recon, self.transform2.weight, self.transform2.bias)).relu_()

        lengths = [t.shape[1] for t in tokens]
        codes_v = codes.split(lengths, dim=2) if len(tokens) > 1 else (codes,)
        if all(s is not None for s in sizes):
            # maps: one channel-first copy (B, d, N1 + N2 + ...), split into NCHW-ordered views as the official
            # Net.forward lays them out (not channels-last): torch fills dropout / Bernoulli masks in memory
            # order, so the same seed then draws the official mask elements downstream (the stochastic gate,
            # the head's dropouts; convolutions keep the layout of their input)
            out = rearrange(out, "b n d -> b d n").contiguous()
            outs = out.split(lengths, dim=2) if len(tokens) > 1 else (out,)
            outs = tuple(rearrange(o, "b d (h w) -> b d h w", h=s[0], w=s[1]) for o, s in zip(outs, sizes, strict=True))
        else:
            outs = out.split(lengths, dim=1) if len(tokens) > 1 else (out,)
            outs = tuple(o if s is None else rearrange(o, "b (h w) d -> b d h w", h=s[0], w=s[1])
                         for o, s in zip(outs, sizes, strict=True))
        codes_v = tuple(c if s is None else rearrange(c, "b k (h w) -> b k h w", h=s[0], w=s[1])
                        for c, s in zip(codes_v, sizes, strict=True))
        if single:
            return LowRankOutput(outs[0], codes_v[0], dictionary)
        return LowRankOutput(outs, codes_v, dictionary)

    def _forward_maps(self, x: Tensor | list[Tensor], init_dict: Tensor, sizes: list, single: bool) -> LowRankOutput:
        """Maps only, official token handling: :class:`_CrossViewMaps` on the channel-first views."""
        views = [x] if single else x
        flat = [rearrange(v, "b d h w -> b d (h w)").contiguous() for v in views]
        codes, dictionary, *outs = _CrossViewMaps.apply(
            self.num_iters, 1.0 / self.temperature, self.eps, init_dict, self.transform1.weight,
            self.transform1.bias, self.transform2.weight, self.transform2.bias, *flat)
        codes_v = codes.split([f.shape[2] for f in flat], dim=2) if len(flat) > 1 else (codes,)
        outs = tuple(rearrange(o, "b d (h w) -> b d h w", h=s[0], w=s[1]) for o, s in zip(outs, sizes, strict=True))
        codes_v = tuple(rearrange(c, "b k (h w) -> b k h w", h=s[0], w=s[1]) for c, s in zip(codes_v, sizes, strict=True))
        if single:
            return LowRankOutput(outs[0], codes_v[0], dictionary)
        return LowRankOutput(outs, codes_v, dictionary)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_iters={self.num_iters}, temperature={self.temperature}, eps={self.eps}, "
                f"detach_init={self.detach_init}, normalize_tokens={self.normalize_tokens}")
