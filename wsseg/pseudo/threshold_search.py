"""CoSA's dynamic thresholds: a 1-D Gaussian mixture over a queue of CAM maxima (``cosa.md`` §4)."""

from __future__ import annotations

import contextlib
import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor, check_unit_range

__all__ = ["GMM1DResult", "ThresholdSearch", "gmm_1d"]

_INITS = ("min_median_max",)
_QUEUE_INITS = ("uniform", "empty")
_ON_EMPTY = ("keep", "raise")
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")
#: EM iterations between two convergence checks on devices where reading a value back to the host
#: blocks (every device except the CPU). Iterations after convergence inside such a block leave the
#: parameters unchanged (they are frozen with ``torch.where``), so the result does not depend on it.
_CHECK_EVERY_ASYNC = 5


class GMM1DResult(NamedTuple):
    """Result of :func:`gmm_1d`.

    Attributes:
        means: component means :math:`\\mu_c`, shape :math:`(C,)`.
        variances: component variances :math:`\\sigma_c^2` (``reg_covar`` included), shape :math:`(C,)`.
        weights: mixing weights :math:`\\pi_c` (sum 1), shape :math:`(C,)`.
        assignment: hard assignment :math:`\\arg\\max_c r_{ic}` of every value, shape :math:`(M,)`, int64.
        converged: 0-d bool tensor, whether EM stopped on ``tol`` before ``max_iter``.
        n_iter: 0-d int64 tensor, number of EM iterations run.
    """

    means: Tensor
    variances: Tensor
    weights: Tensor
    assignment: Tensor
    converged: Tensor
    n_iter: Tensor


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_em_args(n_components: int, max_iter: int, tol: float, reg_covar: float, init: str) -> None:
    if not _is_int(n_components) or n_components not in (2, 3):
        raise ValueError(f"n_components: expected 2 or 3, got {n_components!r}")
    if not _is_int(max_iter) or max_iter < 0:
        raise ValueError(f"max_iter: expected a non-negative int, got {max_iter!r}")
    if not _is_real(tol) or tol < 0:
        raise ValueError(f"tol: expected a finite float >= 0, got {tol!r}")
    if not _is_real(reg_covar) or reg_covar < 0:
        raise ValueError(f"reg_covar: expected a finite float >= 0, got {reg_covar!r}")
    if init not in _INITS:
        raise ValueError(f"init: expected one of {_INITS}, got {init!r}")


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _init_means(x: Tensor, n_components: int) -> Tensor:
    """{min, median, max} (or {min, max}); the median of an even count is the mean of the middle two."""
    M = x.numel()
    lo, hi = torch.aminmax(x)
    if n_components == 2:
        return torch.stack([lo, hi])
    mid_lo = torch.kthvalue(x, (M - 1) // 2 + 1).values
    mid = mid_lo if M % 2 else (mid_lo + torch.kthvalue(x, M // 2 + 1).values) / 2
    return torch.stack([lo, mid, hi])


def _weighted_log_prob(x: Tensor, means: Tensor, variances: Tensor, weights: Tensor) -> Tensor:
    """:math:`\\log \\pi_c + \\log \\mathcal N(x_i; \\mu_c, \\sigma_c^2)`, shape (C, M).

    Components are the leading axis: reductions over them are element-wise operations on C contiguous
    rows, reductions over the values are contiguous.
    """
    prec_chol = variances.rsqrt()
    const = prec_chol.log() + weights.log() - 0.5 * math.log(2 * math.pi)   # (C,)
    y = (x - means[:, None]).mul_(prec_chol[:, None])
    return y.square_().mul_(-0.5).add_(const[:, None])


def _em(x: Tensor, n_components: int, max_iter: int, tol: float, reg_covar: float,
        check_every: int | None = None) -> GMM1DResult:
    """EM on finite values ``x`` (M,) of the compute dtype; no argument checks.

    ``check_every``: iterations between convergence checks (host reads); default 1 on the CPU,
    ``_CHECK_EVERY_ASYNC`` elsewhere. The result does not depend on it.
    """
    C = n_components
    eps10 = 10 * torch.finfo(x.dtype).eps
    means = _init_means(x, C)
    variances = torch.ones(C, dtype=x.dtype, device=x.device)
    weights = torch.full((C,), 1.0 / C, dtype=x.dtype, device=x.device)
    prev_bound = torch.tensor(-math.inf, dtype=x.dtype, device=x.device)
    done = torch.zeros((), dtype=torch.bool, device=x.device)
    n_iter = torch.zeros((), dtype=torch.long, device=x.device)
    if check_every is None:
        check_every = 1 if x.device.type == "cpu" else _CHECK_EVERY_ASYNC
    for it in range(max_iter):
        # E-step with the current parameters; its mean log-likelihood is the bound of this iteration.
        # Log-sum-exp written out so that one exp serves both the bound and the responsibilities.
        wlp = _weighted_log_prob(x, means, variances, weights)          # (C, M)
        peak = wlp.amax(dim=0)                                            # (M,)
        resp = wlp.sub_(peak).exp_()                                      # (C, M), unnormalised
        total = resp.sum(dim=0)                                           # (M,)
        resp.div_(total)
        bound = (peak + total.log_()).mean()
        # M-step (scikit-learn's "full" covariance in 1-D)
        nk = resp.sum(dim=1) + eps10                                      # (C,)
        new_means = (resp @ x) / nk
        sq = (x - new_means[:, None]).square_()                          # (C, M)
        new_variances = sq.mul_(resp).sum(dim=1) / nk + reg_covar
        new_weights = nk / nk.sum()
        # parameters are frozen once converged, so a late convergence check gives the same result
        means = torch.where(done, means, new_means)
        variances = torch.where(done, variances, new_variances)
        weights = torch.where(done, weights, new_weights)
        n_iter = n_iter + (~done).long()
        done = done | ((bound - prev_bound).abs() < tol)
        prev_bound = torch.where(done, prev_bound, bound)
        if (it + 1) % check_every == 0 and bool(done):
            break
    # final E-step: the assignment is consistent with the returned parameters (scikit-learn's predict)
    assignment = _weighted_log_prob(x, means, variances, weights).argmax(dim=0)
    return GMM1DResult(means, variances, weights, assignment, done, n_iter)


def gmm_1d(values: Tensor, *, n_components: int = 3, max_iter: int = 100, tol: float = 1e-3,
           reg_covar: float = 1e-6, init: str = "min_median_max") -> GMM1DResult:
    r"""Fit a 1-D Gaussian mixture by EM (scikit-learn's ``GaussianMixture`` with CoSA's initialisation).

    Model :math:`p(x) = \sum_{c=1}^{C} \pi_c\, \mathcal N(x; \mu_c, \sigma_c^2)`, initialised as in the
    official call: :math:`\mu = (\min x, \operatorname{median} x, \max x)` (two components:
    :math:`(\min x, \max x)`), :math:`\pi_c = 1/C`, :math:`\sigma_c^2 = 1` (precision 1). Each iteration:

    .. math::
        r_{ic} &= \frac{\pi_c \mathcal N(x_i; \mu_c, \sigma_c^2)}
                       {\sum_{c'} \pi_{c'} \mathcal N(x_i; \mu_{c'}, \sigma_{c'}^2)},\qquad
        L = \frac{1}{M} \sum_i \log \sum_c \pi_c \mathcal N(x_i; \mu_c, \sigma_c^2), \\
        n_c &= \sum_i r_{ic} + 10\epsilon,\quad \mu_c = \frac{1}{n_c}\sum_i r_{ic} x_i,\quad
        \sigma_c^2 = \frac{1}{n_c}\sum_i r_{ic}(x_i - \mu_c)^2 + \text{reg\_covar},\quad
        \pi_c = \frac{n_c}{\sum_{c'} n_{c'}}

    where :math:`L` is evaluated with the parameters before the M-step. EM stops after the first
    iteration whose change :math:`|L_t - L_{t-1}|` is below ``tol`` (its M-step is kept) or after
    ``max_iter`` iterations; a final E-step gives the hard assignment :math:`\arg\max_c r_{ic}` (ties: the
    lowest index). This is scikit-learn's EM (``n_init=1``, ``covariance_type="full"``) step for step,
    so the results agree to rounding; scikit-learn's k-means pre-initialisation is skipped because the
    official call overrides everything it computes.

    Note (faithful behaviour): with the official initial variance 1 on values in [0, 1] and
    ``tol=1e-3``, EM typically stops after about 3 iterations, before the components have moved to the
    clusters (three clusters at 0.1 / 0.5 / 0.9 give means ≈ 0.45 / 0.50 / 0.55, see the example);
    the hard assignment, which is what the thresholds use, still separates well-separated clusters.

    Runs on the device of ``values``, vectorised over points and components (the only Python loop is
    over EM iterations), in float64 (float32 on MPS) under ``torch.no_grad()``. Off the CPU the
    convergence test reads one value back every 5 iterations instead of every iteration; parameters are
    frozen once converged, so the result is the same. Values must be finite (not checked: that would
    need a device synchronisation).

    Args:
        values: the samples :math:`x` (any float dtype).
        n_components: :math:`C \in \{2, 3\}`.
        max_iter: maximum number of EM iterations (0: the initial parameters and their assignment).
        tol: convergence threshold on the change of the mean log-likelihood.
        reg_covar: added to every variance (:math:`\ge 0`).
        init: ``"min_median_max"`` (the official initialisation; the only one).

    Returns:
        :class:`GMM1DResult` ``(means, variances, weights, assignment, converged, n_iter)``; the
        parameters are in the compute dtype (float64 except on MPS), in scikit-learn's component order
        (EM can reorder components relative to their initial means).

    Shape:
        - values: :math:`(M,)`, :math:`M \ge \max(2, C)`.
        - means, variances, weights: :math:`(C,)`; assignment: :math:`(M,)` int64; converged, n_iter: 0-d.

    Raises:
        TypeError: if ``values`` is not a floating-point tensor.
        ValueError: if ``values`` is not 1-D or has fewer than :math:`\max(2, C)` entries, or on a bad
            ``n_components`` / ``max_iter`` / ``tol`` / ``reg_covar`` / ``init``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([0.1 + 0.02 * torch.randn(300, generator=g),
        ...                0.5 + 0.02 * torch.randn(300, generator=g),
        ...                0.9 + 0.02 * torch.randn(300, generator=g)])
        >>> res = gmm_1d(x)
        >>> res.assignment.bincount().tolist(), bool(res.converged), int(res.n_iter)
        ([300, 300, 300], True, 3)
        >>> [round(m, 2) for m in res.means.tolist()]  # stopped early (see the note)
        [0.45, 0.5, 0.55]
        >>> round(x[res.assignment == 0].max().item(), 2), round(x[res.assignment == 2].min().item(), 2)
        (0.17, 0.84)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``rungmm``);
        scikit-learn ``sklearn.mixture.GaussianMixture`` (EM and convergence rule).
    """
    check_tensor(values, "values", ndim=1, dims="(M,)", dtype="float")
    _check_em_args(n_components, max_iter, tol, reg_covar, init)
    need = max(2, n_components)
    if values.numel() < need:
        raise ValueError(f"values: expected at least {need} entries for n_components={n_components}, "
                         f"got {values.numel()}")
    with torch.no_grad(), _no_autocast(values.device):
        x = values.detach().to(_compute_dtype(values.device))
        return _em(x, n_components, max_iter, float(tol), float(reg_covar))


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class ThresholdSearch(nn.Module):
    r"""CoSA's dynamic dual threshold: a GMM over a FIFO queue of CAM maxima, smoothed by an EMA.

    Every training call (``forward`` in ``train()`` mode):

    1. **statistic** — the label-validated normalised CAM is resized to ``stat_size``:math:`^2`
       (bilinear, ``align_corners=False``, *then* the max over classes):
       :math:`s_b = \max_k \mathrm{down}(\hat M_b)_k \in [0, 1]^{S^2}`;
    2. **queue** — the :math:`B` rows :math:`s_b` are written into a ring buffer of
       :math:`Q = B \cdot \text{queue\_ratio}` rows (oldest rows overwritten first);
    3. **fit** (every ``update_every`` calls, the first call included) — the queue is flattened, values
       :math:`\le` ``filter_thre`` are dropped and :func:`gmm_1d` is fitted (:math:`C` components,
       official initialisation). With hard assignments :math:`a_i`,

       .. math::
           \tau_{lo}^{new} = \max\{x_i : a_i = 0\},\qquad \tau_{hi}^{new} = \min\{x_i : a_i = C-1\}

       (``sort_components=True``: components are first renumbered by increasing mean);
    4. **EMA** — :math:`\tau \leftarrow d\,\tau + (1-d)\,\tau^{new}` for both thresholds
       (:math:`d` = ``ema_decay``), starting from ``init_low`` / ``init_high``.

    In ``eval()`` mode nothing is updated and the current thresholds are returned. Output: ``(low, high)``
    for the dual-threshold pseudo label (:func:`~wsseg.pseudo.dual_threshold_pseudo_label`).

    **Return type**: ``(low, high)`` are **0-d float64 tensors** on the module's device (copies), not Python
    floats: returning floats would force a device-to-host copy on every call. Convert them with ``float()``
    when a Python number is needed (``dual_threshold_pseudo_label(cam, labels, high=float(high),
    low=float(low))``, logging); the read is then one synchronisation.

    **The statistic grid** (``stat_size`` :math:`S`): every image contributes the :math:`S^2` values of its
    CAM maximum over classes, taken on an :math:`S \times S` resize of the CAM, so the queue holds
    :math:`Q S^2` samples of "how strongly the most likely class fires at a location". :math:`S` sets the
    spatial sampling only: neighbouring values are strongly correlated, so a grid about as fine as the CAM's
    own feature grid (crop size / network stride) captures the distribution; a larger :math:`S` makes each
    fit slower (EM over :math:`Q S^2` values) without adding information, a much smaller one under-samples
    small objects. CoSA's value 28 is its 448 crop over its ViT patch size 16.

    **Starting thresholds for another model**: ``init_low`` / ``init_high`` are where the EMA starts, and
    with ``ema_decay=0.99`` they dominate for the first few hundred calls. For a CAM that is ReLU'd and
    divided by its per-class maximum (the input this module expects) a safe start is the pair used with
    such CAMs by ToCo/CoSA, ``init_low=0.25, init_high=0.7`` (AFA/TSCD's fixed pair 0.35/0.55 is a narrower
    alternative). To start from your own model's values, run it in ``train()`` mode with
    ``queue_init="empty"``, ``ema_decay=0.0`` and ``sort_components=True`` on ``queue_ratio`` batches of
    its (already trained) CAMs and use the ``low``/``high`` it reports as ``init_low``/``init_high``.

    Faithful defaults (official code, ``usegmm=True``, disabled in the published CoSA runs):
    ``queue_init="uniform"`` (the queue starts as :math:`U[0,1)` noise, so the first ``queue_ratio``
    fits see partly noise), ``sort_components=False`` (relies on EM keeping the initial component
    order, which it can invert), official preset ``init_low=0.2``/``0.25``, ``init_high=0.7``, one
    instance per CAM (main, aux), per process. Options: ``queue_init="empty"`` (fit only real rows),
    ``sort_components=True`` (recommended), ``on_empty``: when component 0 or :math:`C-1` gets no value
    (or fewer than :math:`\max(2, C)` values survive the filter), ``"keep"`` (default, a documented
    deviation) keeps **both** previous thresholds for this step, ``"raise"`` raises ``RuntimeError``
    as the official code crashes. With ``n_components=2`` the high threshold is the smallest value of
    component 1 [assumed; the official 2-component branch returns only the low threshold].

    State (buffers, all in ``state_dict``): ``queue`` :math:`(Q, S^2)` float32, ``ptr`` (next row to
    write), ``count`` (rows written, capped at :math:`Q`; used by ``queue_init="empty"``), ``low``,
    ``high`` (float64, the EMA is computed in double precision as the official Python floats) and
    ``step`` (training calls so far). **Queue allocation**: :math:`Q` needs the batch size; give
    ``batch_size`` to allocate at construction, otherwise the queue is allocated lazily at the first
    training call from that call's :math:`B` (before that ``queue`` has 0 rows).
    ``load_state_dict`` adopts the stored number of rows, so a fresh module resumes a saved one exactly
    (bit-identical thresholds for the same inputs). ``queue_init="uniform"`` draws the initial queue
    from the global **CPU** torch generator (``torch.rand``, float32; the official code uses NumPy's
    float64 ``np.random.random``) at allocation, then moves it to the module's device. Later batches
    may have any size :math:`B \le Q`.

    The queue and the fit live on the module's device (its buffers; move it with ``.to()``): the
    statistic is computed on ``cam``'s device and moved there. Keep the module outside a
    ``DistributedDataParallel``-wrapped model (its buffer broadcast would overwrite every rank's queue
    with rank 0's): the official queues and thresholds are per process. Each fit synchronises with
    the host (dropping filtered values gives a data-dependent size; EM convergence checks, see
    :func:`gmm_1d`). Runs under ``torch.no_grad()`` with autocast disabled.

    Args:
        init_low: initial :math:`\tau_{lo}` (official ``low_thre``; CoSA VOC preset 0.2).
        init_high: initial :math:`\tau_{hi}` (official ``high_thre``).
        n_components: GMM components :math:`C \in \{2, 3\}`.
        queue_ratio: queue rows per batch item (official ``queue_update_ratio``).
        stat_size: side :math:`S` of the grid the CAM is resized to before its per-location class maximum
            is queued (:math:`S^2` values per image; CoSA: 28, see "The statistic grid" above).
        filter_thre: values :math:`\le` this are dropped before the fit (official ``gmmfilter_thre``).
        ema_decay: :math:`d` in [0, 1] (official ``gmmemadecay``).
        update_every: refit every this many training calls (official 1).
        queue_init: ``"uniform"`` (official) or ``"empty"``.
        sort_components: renumber components by increasing mean before reading the thresholds.
        on_empty: ``"keep"`` or ``"raise"`` (see above).
        max_iter: EM iterations at most (scikit-learn default 100).
        tol: EM convergence threshold on the mean log-likelihood change (scikit-learn default 1e-3).
        reg_covar: variance regulariser (scikit-learn default 1e-6).
        batch_size: allocate the queue (:math:`Q` = ``batch_size * queue_ratio`` rows) at construction;
            ``None``: at the first training call.

    Shape:
        - cam: :math:`(B, K, H, W)`, normalised CAM in [0, 1] with absent classes zeroed.
        - output: ``(low, high)``, two 0-d float64 tensors on the module's device (copies; ``float()`` them
          for Python numbers).

    Raises:
        ValueError: on bad hyperparameters (at construction), a ``cam`` that is not 4-D or has
            :math:`B > Q` or an empty dimension; in training mode, a ``cam`` with NaN/inf or values outside
            [0, 1] (tolerance 0.01), which would otherwise be stored in the queue and corrupt every later fit
            (one ``aminmax`` on the :math:`B S^2` statistic, one synchronisation).
        TypeError: if ``cam`` is not a floating-point tensor.
        RuntimeError: with ``on_empty="raise"``, when a fit leaves component 0 or :math:`C-1` empty or
            fewer than :math:`\max(2, C)` values survive the filter.

    Example:
        >>> search = ThresholdSearch(init_low=0.25, init_high=0.7, queue_ratio=4, queue_init="empty",
        ...                          sort_components=True)
        >>> cam = torch.rand(2, 20, 56, 56) * (torch.rand(2, 20, 1, 1) > 0.8)
        >>> low, high = search(cam)
        >>> tuple(search.queue.shape), int(search.step), bool(0 <= low <= high <= 1)
        ((8, 784), 1, True)
        >>> _ = search.eval(); torch.equal(search(cam)[0], low)  # eval: thresholds frozen
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py (``usegmm`` branch),
        utils/seg_helper.py (``rungmm``, ``DynamicQueue``), utils/torch_helper.py (``EMAtracker``).
    """

    queue: Tensor
    ptr: Tensor
    count: Tensor
    low: Tensor
    high: Tensor
    step: Tensor

    def __init__(self, init_low: float = 0.25, init_high: float = 0.7, n_components: int = 3,
                 queue_ratio: int = 100, stat_size: int = 28, filter_thre: float = 0.05,
                 ema_decay: float = 0.99, update_every: int = 1, queue_init: str = "uniform",
                 sort_components: bool = False, on_empty: str = "keep", max_iter: int = 100,
                 tol: float = 1e-3, reg_covar: float = 1e-6, batch_size: int | None = None) -> None:
        super().__init__()
        for name, v in (("init_low", init_low), ("init_high", init_high), ("filter_thre", filter_thre)):
            if not _is_real(v):
                raise ValueError(f"{name}: expected a finite float, got {v!r}")
        if init_low > init_high:
            raise ValueError(f"init_low: expected init_low <= init_high, got {init_low} > {init_high}")
        for name, v in (("queue_ratio", queue_ratio), ("stat_size", stat_size),
                        ("update_every", update_every)):
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        if not _is_real(ema_decay) or not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay: expected a float in [0, 1], got {ema_decay!r}")
        if queue_init not in _QUEUE_INITS:
            raise ValueError(f"queue_init: expected one of {_QUEUE_INITS}, got {queue_init!r}")
        if on_empty not in _ON_EMPTY:
            raise ValueError(f"on_empty: expected one of {_ON_EMPTY}, got {on_empty!r}")
        if not isinstance(sort_components, bool):
            raise ValueError(f"sort_components: expected a bool, got {sort_components!r}")
        _check_em_args(n_components, max_iter, tol, reg_covar, "min_median_max")
        self.init_low = float(init_low)
        self.init_high = float(init_high)
        self.n_components = n_components
        self.queue_ratio = queue_ratio
        self.stat_size = stat_size
        self.filter_thre = float(filter_thre)
        self.ema_decay = float(ema_decay)
        self.update_every = update_every
        self.queue_init = queue_init
        self.sort_components = sort_components
        self.on_empty = on_empty
        self.max_iter = max_iter
        self.tol = float(tol)
        self.reg_covar = float(reg_covar)
        self.batch_size = batch_size
        self.register_buffer("queue", torch.zeros(0, stat_size * stat_size))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("low", torch.tensor(self.init_low, dtype=torch.float64))
        self.register_buffer("high", torch.tensor(self.init_high, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._calls = 0  # host mirror of ``step`` (no device read per call)
        if batch_size is not None:
            self._allocate(batch_size * queue_ratio)

    def extra_repr(self) -> str:
        return (f"init_low={self.init_low}, init_high={self.init_high}, n_components={self.n_components}, "
                f"queue_ratio={self.queue_ratio}, stat_size={self.stat_size}, "
                f"filter_thre={self.filter_thre}, ema_decay={self.ema_decay}, "
                f"update_every={self.update_every}, queue_init={self.queue_init!r}, "
                f"sort_components={self.sort_components}, on_empty={self.on_empty!r}, "
                f"max_iter={self.max_iter}, tol={self.tol}, reg_covar={self.reg_covar}, "
                f"batch_size={self.batch_size}")

    def _allocate(self, rows: int) -> None:
        shape = (rows, self.stat_size * self.stat_size)
        device = self.low.device
        dtype = self.queue.dtype
        if self.queue_init == "uniform":  # global CPU generator: the same draws on every device
            self.queue = torch.rand(shape).to(device=device, dtype=dtype)
        else:
            self.queue = torch.zeros(shape, device=device, dtype=dtype)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # adopt the stored queue length (a fresh module may not have allocated its queue yet)
        stored = state_dict.get(prefix + "queue")
        if (isinstance(stored, Tensor) and stored.dim() == 2 and stored.shape[1] == self.queue.shape[1]
                and stored.shape[0] != self.queue.shape[0]):
            self.queue = torch.empty(stored.shape, dtype=self.queue.dtype, device=self.queue.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._calls = int(self.step)

    def _statistic(self, cam: Tensor) -> Tensor:
        """(B, S²): bilinear resize to S×S (align_corners=False), then the max over classes."""
        S = self.stat_size
        small = F.interpolate(cam.detach().float(), size=(S, S), mode="bilinear", align_corners=False)
        return small.amax(dim=1).flatten(1)

    def _fail(self, reason: str) -> None:
        if self.on_empty == "raise":
            raise RuntimeError(f"ThresholdSearch: {reason} (the official code crashes here; "
                               "use on_empty='keep' to keep the previous thresholds)")

    def _update(self) -> None:
        C = self.n_components
        values = self.queue.to(_compute_dtype(self.queue.device))
        keep = values > self.filter_thre
        if self.queue_init == "empty":
            rows = torch.arange(values.shape[0], device=values.device)
            keep &= (rows < self.count)[:, None]
        x = values[keep]                                                  # data-dependent size: one sync
        if x.numel() < max(2, C):
            self._fail(f"only {x.numel()} queue values above filter_thre={self.filter_thre}, "
                       f"need {max(2, C)}")
            return
        res = _em(x, C, self.max_iter, self.tol, self.reg_covar)
        if self.sort_components:
            order = torch.argsort(res.means)
            first, last = order[0], order[-1]
        else:
            first, last = 0, C - 1
        low_new = torch.where(res.assignment == first, x, -math.inf).amax()
        high_new = torch.where(res.assignment == last, x, math.inf).amin()
        ok = torch.isfinite(low_new) & torch.isfinite(high_new)
        if self.on_empty == "raise" and not bool(ok):
            self._fail("a GMM component is empty (component 0 or the last one got no value)")
        d = self.ema_decay
        self.low.copy_(torch.where(ok, self.low * d + low_new.to(self.low.dtype) * (1 - d), self.low))
        self.high.copy_(torch.where(ok, self.high * d + high_new.to(self.high.dtype) * (1 - d), self.high))

    @torch.no_grad()
    def forward(self, cam: Tensor) -> tuple[Tensor, Tensor]:
        """Training: enqueue the statistic of ``cam``, refit if due, EMA-update; eval: no update.

        Args:
            cam: normalised, label-validated CAM :math:`(B, K, H, W)` in [0, 1].

        Returns:
            ``(low, high)``: copies of the current thresholds, 0-d float64 on the module's device.
        """
        check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
        if min(cam.shape) < 1:
            raise ValueError(f"cam: expected non-empty dimensions (B, K, H, W), got {tuple(cam.shape)}")
        if not self.training:
            return self.low.clone(), self.high.clone()
        B = cam.shape[0]
        if self.queue.shape[0] == 0:
            self._allocate(B * self.queue_ratio)
        Q = self.queue.shape[0]
        if B > Q:
            raise ValueError(f"cam: batch size {B} exceeds the queue length {Q} "
                             f"(allocated for batch size {Q // self.queue_ratio})")
        with _no_autocast(cam.device):
            stat = self._statistic(cam)
        # the statistic is stored: reject NaN / an unnormalised CAM before it enters the queue (a bilinear
        # resize and a max keep the range of cam; what is checked is exactly what would be stored)
        check_unit_range(stat, "cam", "a normalised CAM: ReLU, then divided by its per-class maximum; its "
                         "values are queued")
        stat = stat.to(device=self.queue.device, dtype=self.queue.dtype)
        rows = (self.ptr + torch.arange(B, device=self.queue.device)) % Q
        self.queue.index_copy_(0, rows, stat)
        self.ptr.copy_((self.ptr + B) % Q)
        self.count.copy_((self.count + B).clamp(max=Q))
        if self._calls % self.update_every == 0:
            with _no_autocast(self.queue.device):
                self._update()
        self._calls += 1
        self.step.add_(1)
        return self.low.clone(), self.high.clone()
