"""Adaptive-K pooling of patch class probabilities (APC), generalising ViT-PCM's global max pooling."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from ..utils.validation import check_tensor

__all__ = ["K_MODES", "AdaptiveKOutput", "AdaptiveKPooling", "adaptive_k_pooling"]

#: The selection rules accepted by ``k_mode``.
K_MODES = ("max", "fixed", "ratio_to_max", "ratio_consecutive")
_ADAPTIVE = ("ratio_to_max", "ratio_consecutive")


class AdaptiveKOutput(NamedTuple):
    """What :func:`adaptive_k_pooling` returns with ``return_k=True`` (a plain tuple ``(scores, k, mask)``).

    Attributes:
        scores: the pooled image-level scores :math:`\\hat y`, shape :math:`(B, C)`.
        k: the number of averaged patches :math:`K_{b,c}`, ``torch.long``, shape :math:`(B, C)`, detached.
        mask: ``torch.bool``, ``True`` at the patches whose scores were averaged, **in the layout of the
            input**: :math:`(B, N, C)` for an input :math:`(B, N, C)`, :math:`(B, C, h, w)` for an input
            :math:`(B, C, h, w)`. For the top-K modes ``mask.sum`` over the patches equals ``k``; in
            ``"max"`` mode it marks every patch attaining the maximum (with ties more than one), which are
            the patches receiving gradient.
    """

    scores: Tensor
    k: Tensor
    mask: Tensor


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check_hparams(k_mode: str, k: int | None, rho: float | None, k_min: int, k_max: int | None) -> None:
    """Checks that do not depend on the number of patches."""
    if k_mode not in K_MODES:
        raise ValueError(f"k_mode: expected one of {K_MODES}, got {k_mode!r}")
    if k_mode == "fixed":
        if k is None:
            raise ValueError("k: required with k_mode='fixed' (no published default; APC/TKP's K is unknown)")
        if not _is_int(k) or k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    elif k is not None:
        raise ValueError(f"k: only used with k_mode='fixed', got k={k!r} with k_mode={k_mode!r}")
    if k_mode in _ADAPTIVE:
        if rho is None:
            raise ValueError(f"rho: required with k_mode={k_mode!r} (experimental rule, no published default)")
        if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not 0.0 < rho <= 1.0:
            raise ValueError(f"rho: expected a number in (0, 1], got {rho!r}")
        if not _is_int(k_min) or k_min < 1:
            raise ValueError(f"k_min: expected an integer >= 1, got {k_min!r}")
        if k_max is not None:
            if not _is_int(k_max):
                raise ValueError(f"k_max: expected an integer or None, got {k_max!r}")
            if k_max < k_min:
                raise ValueError(f"k_max: expected k_max >= k_min = {k_min}, got {k_max}")
    else:
        if rho is not None:
            raise ValueError(f"rho: only used with k_mode in {_ADAPTIVE}, got rho={rho!r} with k_mode={k_mode!r}")
        if k_min != 1 or k_max is not None:
            raise ValueError(f"k_min, k_max: only used with k_mode in {_ADAPTIVE}, got k_min={k_min!r}, "
                             f"k_max={k_max!r} with k_mode={k_mode!r}")


def adaptive_k_pooling(probs: Tensor, *, k_mode: str = "max", k: int | None = None, rho: float | None = None,
                       k_min: int = 1, k_max: int | None = None,
                       return_k: bool = False) -> Tensor | AdaptiveKOutput:
    r"""Image-level class scores as the mean of each class's :math:`K` highest patch scores.

    Let :math:`P_{b,(1),c} \ge P_{b,(2),c} \ge \dots \ge P_{b,(N),c}` be the sorted patch probabilities of
    class :math:`c` in image :math:`b` (ViT-PCM's per-patch softmax over :math:`C = K+1` classes,
    background included). The pooled score is

    .. math::

        \hat y_{b,c} = \frac{1}{K_{b,c}} \sum_{k=1}^{K_{b,c}} P_{b,(k),c},

    where the number of patches :math:`K_{b,c}` depends on ``k_mode``:

    * ``"max"`` (default, ViT-PCM): :math:`K = 1`, i.e. :math:`\hat y_{b,c} = \max_i P_{b,i,c}`, computed
      with ``amax`` exactly as ViT-PCM's ``GlobalMaxPooling2D``: tied maxima share the gradient equally
      (TensorFlow's ``reduce_max`` gradient does the same).
    * ``"fixed"``: :math:`K = k` for every image and class (the top-K pooling of TKP-PCL, APC's
      predecessor; its value of :math:`k` is not known, so ``k`` is required).
    * ``"ratio_to_max"`` — **experimental, [assumed]** reading of APC's "K chosen by the ratio of
      prediction scores": the patches scoring at least :math:`\rho` times the maximum,

      .. math:: K_{b,c} = \operatorname{clip}\big(|\{i : P_{b,i,c} \ge \rho\, P_{b,(1),c}\}|,\
                K_{\min}, K_{\max}\big).

    * ``"ratio_consecutive"`` — **experimental, [assumed]** alternative reading: grow :math:`K` while
      the consecutive ratio stays at least :math:`\rho`,

      .. math:: K_{b,c} = \operatorname{clip}\Big(\min\big(\{k < N : P_{b,(k+1),c} < \rho\, P_{b,(k),c}
                \text{ or } P_{b,(k),c} = 0\} \cup \{N\}\big),\ K_{\min}, K_{\max}\Big),

      with the ratio :math:`P_{(k+1)} / P_{(k)}` computed by division and a ratio with
      :math:`P_{(k)} = 0` counted as below :math:`\rho` [assumed] (so an all-zero column gets
      :math:`K = K_{\min}`).

    APC's exact rule and its :math:`\rho`, :math:`K_{\min}`, :math:`K_{\max}` are not public (spec
    ``apc.md`` §3, §6); the adaptive modes therefore have no numeric default for ``rho``.

    :math:`K` is an integer computed under ``torch.no_grad``; the gradient flows only into the selected
    patch scores (:math:`1/K_{b,c}` each). Implementation, without loops over images or classes:
    ``"fixed"`` and ``"ratio_consecutive"`` take one ``torch.topk`` (at ``k``, resp. :math:`K_{\max}`) and
    mask the ranks beyond :math:`K_{b,c}`; with ``k_max=None`` (:math:`K_{\max} = N`) that top-k is a full
    sort. ``"ratio_to_max"`` needs no sort: where the count is not clipped the selected patches are exactly
    :math:`\{i : P_{b,i,c} \ge \rho P_{b,(1),c}\}` (a masked sum); clipped columns use one ``topk`` at
    :math:`K_{\max}` if :math:`K_{\max} < N`, else at :math:`K_{\min}`. Time :math:`O(BCN)` plus the
    top-k, memory :math:`O(BCN)` booleans plus :math:`O(BCK_{\max})`.

    Ties: the score does not depend on which of several equal values ``torch.topk`` selects, but the
    gradient and the returned mask go to the selected ones, and which ones is unspecified (it may differ
    between CPU and CUDA). This concerns ``"fixed"``, ``"ratio_consecutive"`` and the clipped columns of
    ``"ratio_to_max"`` (its unclipped columns select every patch at or above the threshold, ties
    included); ``"max"`` mode has no such ambiguity (see above).

    Input scores and output range: the output is the mean of some of the input scores, so it lies in the
    range of the inputs: :math:`[0, 1]` for probabilities (a per-patch softmax with a background channel
    as in ViT-PCM, or a per-class **sigmoid** of a multi-label CAM without background channel, see the
    example of :class:`AdaptiveKPooling`). ``"max"`` and ``"fixed"`` accept any real scores (e.g. logits:
    then the output is a logit, not in [0, 1]). The ratio rules compare scores with :math:`\rho` times a
    maximum, which is meaningful only for non-negative scores: they raise a ValueError on a negative input
    (one ``amin``, one device synchronisation); non-negative unbounded scores (a ReLU'd CAM) are accepted and
    give outputs in their own range. Half-precision inputs (``float16``, ``bfloat16``, e.g. under
    autocast) are evaluated in and returned as ``float32``.

    Args:
        probs: patch class probabilities, :math:`(B, N, C)` (tokens, the official channels-last layout)
            or :math:`(B, C, h, w)` (a grid, channels first; :math:`N = hw`), values in :math:`[0, 1]`:
            ViT-PCM's per-patch softmax over :math:`K+1` channels (background included), or the per-class
            sigmoid of a multi-label CAM over :math:`K` channels. Must be non-negative in the ratio modes.
        k_mode: ``"max"``, ``"fixed"``, ``"ratio_to_max"`` or ``"ratio_consecutive"``.
        k: the number of patches for ``"fixed"`` (required there, an integer in :math:`[1, N]`); must be
            ``None`` otherwise.
        rho: the ratio :math:`\rho \in (0, 1]` of the adaptive modes (required there); must be ``None``
            otherwise. :math:`\rho = 1` keeps only the values equal to the maximum (``"ratio_to_max"``) or
            the leading run of equal values (``"ratio_consecutive"``).
        k_min: :math:`K_{\min} \ge 1` of the adaptive modes (must stay 1 in the other modes).
        k_max: :math:`K_{\max} \in [K_{\min}, N]` of the adaptive modes; ``None`` means :math:`N` (must
            stay ``None`` in the other modes).
        return_k: also return :math:`K` and the selection mask (:class:`AdaptiveKOutput`).

    Returns:
        The scores :math:`(B, C)`, in the range of the inputs (:math:`[0, 1]` for probabilities), or
        ``AdaptiveKOutput(scores, k, mask)`` with ``return_k=True``.

    Shape:
        - probs: :math:`(B, N, C)` or :math:`(B, C, h, w)`.
        - output: :math:`(B, C)`; ``k``: :math:`(B, C)`; ``mask``: the shape of ``probs``.

    Raises:
        TypeError: if ``probs`` is not a floating-point tensor.
        ValueError: if ``probs`` is not 3-D or 4-D or has no patch; on an unknown ``k_mode``; if a required
            hyperparameter is missing (``k`` for ``"fixed"``, ``rho`` for the adaptive modes) or one is
            given to a mode that does not use it; if ``k`` is not in :math:`[1, N]`, ``rho`` not in
            :math:`(0, 1]`, ``k_min`` < 1, ``k_max`` < ``k_min`` or ``k_min``/``k_max`` > :math:`N`; in the
            ratio modes, if ``probs`` has a negative value (e.g. raw logits).

    Example:
        >>> probs = torch.tensor([[[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.1, 0.9]]])  # (B=1, N=4, C=2)
        >>> adaptive_k_pooling(probs)                          # ViT-PCM: global max pooling
        tensor([[0.9000, 0.9000]])
        >>> adaptive_k_pooling(probs, k_mode="fixed", k=2)     # mean of the top 2
        tensor([[0.7500, 0.7000]])
        >>> out = adaptive_k_pooling(probs, k_mode="ratio_to_max", rho=0.6, return_k=True)
        >>> out.scores, out.k                                  # class 0: 0.9, 0.6 >= 0.54; class 1: 0.9 only
        (tensor([[0.7500, 0.9000]]), tensor([[2, 1]]))
        >>> adaptive_k_pooling(probs, k_mode="ratio_consecutive", rho=0.6, return_k=True).k  # .5/.9 < .6
        tensor([[3, 1]])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``GlobalMaxPooling2D``
        on the per-patch softmax, "pooled_preds"). Top-K pooling: TKP-PCL, Wu et al., arXiv 2310.09828.
        Adaptive modes: APC, Wu et al. 2024, arXiv 2407.10649 (formula assumed, see spec apc.md §3).
    """
    check_tensor(probs, "probs", ndim=(3, 4), dims="(B, N, C) or (B, C, h, w)", dtype="float")
    _check_hparams(k_mode, k, rho, k_min, k_max)
    if probs.dtype in (torch.float16, torch.bfloat16):
        probs = probs.float()
    grid = probs.dim() == 4
    # work on (B, C, N): a free view for the channels-first grid
    x = rearrange(probs, "b c h w -> b c (h w)") if grid else rearrange(probs, "b n c -> b c n")
    n = x.shape[-1]
    if n < 1:
        raise ValueError(f"probs: expected at least one patch, got shape {tuple(probs.shape)}")

    def to_input_layout(m: Tensor) -> Tensor:
        if grid:
            return rearrange(m, "b c (h w) -> b c h w", h=probs.shape[2], w=probs.shape[3])
        return rearrange(m, "b c n -> b n c")

    if k_mode == "max":
        scores = x.amax(dim=-1)
        if not return_k:
            return scores
        with torch.no_grad():
            kk = torch.ones(scores.shape, dtype=torch.long, device=scores.device)
            mask = x == scores.detach().unsqueeze(-1)
        return AdaptiveKOutput(scores, kk, to_input_layout(mask))

    if k_mode == "fixed":
        if k > n:  # type: ignore[operator]
            raise ValueError(f"k: expected an integer in [1, N = {n}], got {k}")
        values, index = x.topk(k, dim=-1)  # type: ignore[arg-type]
        scores = values.mean(dim=-1)
        if not return_k:
            return scores
        with torch.no_grad():
            kk = torch.full(scores.shape, k, dtype=torch.long, device=scores.device)  # type: ignore[arg-type]
            mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, index, True)
        return AdaptiveKOutput(scores, kk, to_input_layout(mask))

    kmax = n if k_max is None else k_max
    if k_min > n or kmax > n:
        raise ValueError(f"k_min, k_max: expected values <= N = {n}, got k_min={k_min}, k_max={k_max}")
    lowest = float(x.detach().amin())                          # one read-back (the ratio rules need it)
    if not lowest >= 0:
        raise ValueError(f"probs: k_mode={k_mode!r} compares scores with rho times their maximum and needs "
                         f"non-negative scores (probabilities: softmax, or sigmoid for a multi-label CAM), got a "
                         f"minimum of {lowest:.4g}; apply the softmax/sigmoid first, or use k_mode='max'/'fixed' "
                         "on logits")
    if k_mode == "ratio_to_max":
        return _ratio_to_max(x, rho, k_min, kmax, return_k, to_input_layout)  # type: ignore[arg-type]
    values, index = x.topk(kmax, dim=-1)                       # (B, C, K_max), sorted descending
    with torch.no_grad():                                      # "ratio_consecutive"
        prev, nxt = values[..., :-1], values[..., 1:]
        grow = (prev > 0) & (nxt / prev >= rho)                 # a ratio with P_(k) = 0 is below rho
        kk = grow.cummin(dim=-1).values.sum(dim=-1) + 1         # the first k whose ratio falls below rho
        kk = kk.clamp(k_min, kmax)
        selected = torch.arange(kmax, device=x.device) < kk.unsqueeze(-1)
    scores = (values * selected).sum(dim=-1) / kk
    if not return_k:
        return scores
    with torch.no_grad():
        mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, index, selected)
    return AdaptiveKOutput(scores, kk, to_input_layout(mask))


def _ratio_to_max(x: Tensor, rho: float, k_min: int, kmax: int, return_k: bool,
                  to_input_layout) -> Tensor | AdaptiveKOutput:
    """``"ratio_to_max"`` on (B, C, N) without a full sort.

    Where the count is not clipped, the selected patches are exactly {i : P_i >= rho P_(1)} (a masked sum);
    only clipped columns need ranks, and at most ``k_max`` (if < N) or ``k_min`` of them.
    """
    n = x.shape[-1]
    with torch.no_grad():
        above = x >= rho * x.amax(dim=-1, keepdim=True)         # {i : P_i >= rho * P_(1)}
        count = above.sum(dim=-1)
        kk = count.clamp(k_min, kmax)
        clipped = kk != count
    budget = kmax if kmax < n else k_min                       # enough ranks for every clipped column
    values, index = x.topk(budget, dim=-1)
    with torch.no_grad():
        ranked = torch.arange(budget, device=x.device) < kk.unsqueeze(-1)
    scores = torch.where(clipped, (values * ranked).sum(dim=-1), (x * above).sum(dim=-1)) / kk
    if not return_k:
        return scores
    with torch.no_grad():
        top = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, index, ranked)
        mask = torch.where(clipped.unsqueeze(-1), top, above)
    return AdaptiveKOutput(scores, kk, to_input_layout(mask))


class AdaptiveKPooling(nn.Module):
    r"""Module form of :func:`adaptive_k_pooling`: patch probabilities → image-level class scores.

    .. math::

        \hat y_{b,c} = \frac{1}{K_{b,c}} \sum_{k=1}^{K_{b,c}} P_{b,(k),c}

    ``AdaptiveKPooling()`` (``k_mode="max"``, :math:`K = 1`) is exactly ViT-PCM's global max pooling, the
    faithful default. ``"fixed"`` (TKP top-K) requires ``k``; ``"ratio_to_max"`` and
    ``"ratio_consecutive"`` are **experimental, [assumed]** readings of APC's Adaptive-K rule (APC's formula
    is not public) and require ``rho``. See :func:`adaptive_k_pooling` for the rules, ties and gradients.

    Args:
        k_mode: ``"max"`` | ``"fixed"`` | ``"ratio_to_max"`` | ``"ratio_consecutive"``.
        k: :math:`K` of ``"fixed"`` (required there; checked against :math:`N` at call time).
        rho: :math:`\rho \in (0, 1]` of the adaptive modes (required there).
        k_min: :math:`K_{\min} \ge 1` of the adaptive modes.
        k_max: :math:`K_{\max}` of the adaptive modes; ``None`` means :math:`N`.
        return_k: return ``AdaptiveKOutput(scores, k, mask)`` instead of the scores.

    Shape:
        - probs: :math:`(B, N, C)` or :math:`(B, C, h, w)`.
        - output: :math:`(B, C)` (``k`` :math:`(B, C)` long, ``mask`` the shape of ``probs``, bool).

    Raises:
        ValueError: on invalid hyperparameters (at construction) or inputs (at call); see
            :func:`adaptive_k_pooling`.

    Two uses:

    * **ViT-PCM / APC** (softmax with a background channel): ``probs`` is the per-patch softmax over
      :math:`K+1` channels; the pooled scores are fitted with ViT-PCM's loss on the :math:`K+1` entries.
    * **A sigmoid multi-label CAM** (a CNN/ViT CAM head without background, :math:`K` channels): pool
      ``torch.sigmoid(cam_logits)`` and train with :func:`torch.nn.functional.binary_cross_entropy` on the
      :math:`(B, K)` image labels. The scores are probabilities in [0, 1]. With ``k_mode="max"`` pooling the
      logits and using ``binary_cross_entropy_with_logits`` gives the same loss (the sigmoid is monotone) and
      is numerically safer; the top-K means do not commute with the sigmoid, so pool the probabilities there.

    Example:
        >>> pool = AdaptiveKPooling("ratio_to_max", rho=0.5, k_max=16)
        >>> probs = torch.rand(2, 21, 24, 24).softmax(dim=1)     # (B, C, G, G) per-patch softmax
        >>> pool(probs).shape
        torch.Size([2, 21])
        >>> torch.equal(AdaptiveKPooling()(probs), probs.amax(dim=(2, 3)))
        True

        Sigmoid multi-label CAM, :math:`K = 3` classes, no background channel:

        >>> import torch.nn.functional as F
        >>> cam_logits = torch.randn(2, 3, 14, 14, requires_grad=True)   # (B, K, h, w) from your CAM head
        >>> labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> scores = AdaptiveKPooling("fixed", k=4)(torch.sigmoid(cam_logits))   # (B, K) in [0, 1]
        >>> loss = F.binary_cross_entropy(scores, labels)
        >>> loss.backward(); bool(0 <= scores.min() and scores.max() <= 1)
        True
        >>> AdaptiveKPooling("ratio_to_max", rho=0.5)(cam_logits)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: probs: k_mode='ratio_to_max' compares scores with rho times their maximum and needs non-negative ...

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``GlobalMaxPooling2D``).
        APC, Wu et al. 2024, arXiv 2407.10649 (formula assumed, see spec apc.md §3).
    """

    def __init__(self, k_mode: str = "max", k: int | None = None, rho: float | None = None, k_min: int = 1,
                 k_max: int | None = None, return_k: bool = False) -> None:
        super().__init__()
        _check_hparams(k_mode, k, rho, k_min, k_max)
        self.k_mode = k_mode
        self.k = k
        self.rho = rho
        self.k_min = k_min
        self.k_max = k_max
        self.return_k = return_k

    def forward(self, probs: Tensor) -> Tensor | AdaptiveKOutput:
        """Pool ``probs``; see :func:`adaptive_k_pooling`."""
        return adaptive_k_pooling(probs, k_mode=self.k_mode, k=self.k, rho=self.rho, k_min=self.k_min,
                                  k_max=self.k_max, return_k=self.return_k)

    def extra_repr(self) -> str:
        return (f"k_mode={self.k_mode!r}, k={self.k}, rho={self.rho}, k_min={self.k_min}, k_max={self.k_max}, "
                f"return_k={self.return_k}")
