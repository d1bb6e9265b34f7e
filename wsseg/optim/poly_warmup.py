"""Poly learning-rate decay with linear warm-up (the ``PolyWarmupAdamW`` schedule of TSCD / CoSA)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolyWarmupLR", "poly_warmup_multiplier"]


def _check(max_iters, warmup_iters, warmup_ratio, power, min_mult, rebase_after_warmup) -> None:
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters: expected a positive int, got {max_iters!r}")
    if not isinstance(warmup_iters, int) or warmup_iters < 0:
        raise ValueError(f"warmup_iters: expected a non-negative int, got {warmup_iters!r}")
    if rebase_after_warmup and warmup_iters >= max_iters:
        raise ValueError(f"warmup_iters: expected < max_iters={max_iters} with rebase_after_warmup=True, "
                         f"got {warmup_iters}")
    if not 0.0 <= float(warmup_ratio) <= 1.0:
        raise ValueError(f"warmup_ratio: expected a value in [0, 1], got {warmup_ratio!r}")
    if float(power) < 0:
        raise ValueError(f"power: expected a non-negative value, got {power!r}")
    if not 0.0 <= float(min_mult) <= 1.0:
        raise ValueError(f"min_mult: expected a value in [0, 1], got {min_mult!r}")


def poly_warmup_multiplier(step: int, *, max_iters: int, warmup_iters: int = 1500, warmup_ratio: float = 1e-6,
                           power: float = 0.9, min_mult: float = 0.0, rebase_after_warmup: bool = False) -> float:
    r"""Learning-rate multiplier :math:`m(t)` of the poly schedule with linear warm-up.

    With :math:`W` = ``warmup_iters``, :math:`T` = ``max_iters``, :math:`r` = ``warmup_ratio``,
    :math:`p` = ``power``:

    .. math::
        m(t) = \begin{cases} 1 - (1 - t/W)(1 - r) & t < W \\
        \max\big((1 - t/T)_+^{\,p},\ m_{\min}\big) & t \ge W \text{ (official)} \\
        \max\big((1 - (t-W)/(T-W))_+^{\,p},\ m_{\min}\big) & t \ge W,\ \texttt{rebase_after_warmup}
        \end{cases}

    Official quirk (default): the decay is **not** re-based at the end of the warm-up, so the lr
    jumps down at :math:`t = W` (TSCD: from :math:`\approx 1` to :math:`0.925`; CoSA VOC: to
    :math:`0.958`). Whether :math:`t = W` belongs to the warm-up is not recorded; wsseg uses
    :math:`t < W`. Past :math:`T` the poly base is clamped at 0.

    Args:
        step: iteration index :math:`t \ge 0` (the first optimiser step is 0).
        max_iters: :math:`T`.
        warmup_iters: :math:`W` (0 disables the warm-up).
        warmup_ratio: :math:`r`, multiplier at :math:`t = 0`.
        power: :math:`p` (TSCD 1.0, CoSA 0.9).
        min_mult: lower bound :math:`m_{\min}` after the warm-up.
        rebase_after_warmup: decay over :math:`[W, T]` instead (continuous at :math:`W`; not official).

    Returns:
        The multiplier, a float in ``[0, 1]``.

    Raises:
        ValueError: if ``step < 0`` or an option is out of range (the message names it).

    Example:
        >>> from wsseg.optim import poly_warmup_multiplier
        >>> round(poly_warmup_multiplier(1500, max_iters=20000, power=1.0), 6)
        0.925
        >>> round(poly_warmup_multiplier(1500, max_iters=32000, power=0.9), 4)
        0.9577

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning, ``SCD-AAAI2023/utils/
        optimizer.py`` (``PolyWarmupAdamW``). CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA,
        ``utils/torch_helper.py``.
    """
    _check(max_iters, warmup_iters, warmup_ratio, power, min_mult, rebase_after_warmup)
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a non-negative int, got {step!r}")
    if step < warmup_iters:
        return 1.0 - (1.0 - step / warmup_iters) * (1.0 - float(warmup_ratio))
    if rebase_after_warmup:
        frac = (step - warmup_iters) / (max_iters - warmup_iters)
    else:
        frac = step / max_iters
    base = max(1.0 - frac, 0.0)
    return max(base ** float(power), float(min_mult))


class PolyWarmupLR(LRScheduler):
    r"""Torch LR scheduler applying :func:`poly_warmup_multiplier` to every parameter group's own base lr.

    ``lr_g(t) = base_lr_g · m(t)`` where ``t`` is the number of ``step()`` calls so far (construction
    sets ``t = 0``, so the first optimiser step runs at ``m(0) = warmup_ratio``). Call ``scheduler.step()``
    after every ``optimizer.step()``. Groups with different base lrs (e.g. a 10× decoder lr) keep their ratio.

    .. math::
        \eta_g(t) = \eta_g\, m(t)

    Presets (``common.md`` §10): TSCD ``max_iters=20000, warmup_iters=1500, power=1.0``; CoSA VOC
    ``max_iters=32000, warmup_iters=1500, power=0.9, min_mult=0``; CoSA COCO ``max_iters=60000``.

    Args:
        optimizer: wrapped optimiser.
        max_iters, warmup_iters, warmup_ratio, power, min_mult, rebase_after_warmup: see
            :func:`poly_warmup_multiplier`.
        last_epoch: index of the last step when resuming (``-1``: fresh start), as in torch schedulers.

    Shape:
        Not applicable (acts on the optimiser's parameter groups).

    Raises:
        ValueError: if an option is out of range.

    Example:
        >>> import torch
        >>> from wsseg.optim import PolyWarmupLR
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=6e-5)
        >>> sched = PolyWarmupLR(opt, max_iters=20000, warmup_iters=1500, power=1.0)
        >>> for _ in range(1500):
        ...     opt.step(); sched.step()
        >>> f"{opt.param_groups[0]['lr']:.3e}"
        '5.550e-05'

    Source:
        TSCD ``SCD-AAAI2023/utils/optimizer.py`` (``PolyWarmupAdamW``); CoSA ``utils/torch_helper.py``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int = 1500,
                 warmup_ratio: float = 1e-6, power: float = 0.9, min_mult: float = 0.0,
                 rebase_after_warmup: bool = False, last_epoch: int = -1):
        _check(max_iters, warmup_iters, warmup_ratio, power, min_mult, rebase_after_warmup)
        self.max_iters = max_iters
        self.warmup_iters = warmup_iters
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_mult = float(min_mult)
        self.rebase_after_warmup = bool(rebase_after_warmup)
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int | None = None) -> float:
        """The multiplier at ``step`` (default: the current step)."""
        return poly_warmup_multiplier(
            self.last_epoch if step is None else step, max_iters=self.max_iters,
            warmup_iters=self.warmup_iters, warmup_ratio=self.warmup_ratio, power=self.power,
            min_mult=self.min_mult, rebase_after_warmup=self.rebase_after_warmup)

    def get_lr(self) -> list[float]:
        """Learning rate of each group at the current step (``base_lr * m(t)``)."""
        m = self.multiplier()
        return [base * m for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_iters={self.max_iters}, warmup_iters={self.warmup_iters}, "
                f"warmup_ratio={self.warmup_ratio}, power={self.power}, min_mult={self.min_mult}, "
                f"rebase_after_warmup={self.rebase_after_warmup})")
