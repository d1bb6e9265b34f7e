"""Constant learning rate during a warm-up, then cosine annealing (SLRNet's schedule)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosineLR", "warmup_cosine_multiplier"]


def _check(warmup_iters: object, t_max: object, eta_min: object) -> None:
    if isinstance(warmup_iters, bool) or not isinstance(warmup_iters, int) or warmup_iters < 0:
        raise ValueError(f"warmup_iters: expected a non-negative int, got {warmup_iters!r}")
    if isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1:
        raise ValueError(f"t_max: expected a positive int, got {t_max!r}")
    if not isinstance(eta_min, (int, float)) or isinstance(eta_min, bool) or float(eta_min) < 0:
        raise ValueError(f"eta_min: expected a non-negative float, got {eta_min!r}")


def warmup_cosine_multiplier(step: int, *, warmup_iters: int, t_max: int) -> float:
    r"""Learning-rate multiplier :math:`m(t)` of the constant-then-cosine schedule (with :math:`\eta_{min}=0`).

    With :math:`W` = ``warmup_iters`` and :math:`T` = ``t_max``:

    .. math::
        m(t) = \begin{cases} 1 & t < W \\
        \tfrac12\big(1 + \cos(\pi\,(t - W) / T)\big) & t \ge W \end{cases}

    i.e. PyTorch's :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` (closed form) started at step
    :math:`W`. Past :math:`W + T` the cosine continues (rises again), as torch's closed form does; SLRNet
    stops before (after 24 of 25 cosine epochs, :math:`m \approx 0.0039`).

    Args:
        step: iteration index :math:`t \ge 0` (the first optimiser step is 0).
        warmup_iters: :math:`W` (0 = no constant phase).
        t_max: :math:`T`, the cosine half-period in steps.

    Returns:
        The multiplier, a float in ``[0, 1]``.

    Raises:
        ValueError: if ``step < 0`` or an option is out of range (the message names it).

    Example:
        >>> from wsseg.optim import warmup_cosine_multiplier
        >>> ipe = 661                                       # SLRNet VOC: iterations per epoch
        >>> warmup_cosine_multiplier(6 * ipe - 1, warmup_iters=6 * ipe, t_max=25 * ipe)
        1.0
        >>> round(warmup_cosine_multiplier(30 * ipe - 1, warmup_iters=6 * ipe, t_max=25 * ipe), 3)
        0.004

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, tools/train_voc_wss.py (constant lr for
        the ``pretrain_epochs``, then ``CosineAnnealingLR`` stepped per iteration).
    """
    _check(warmup_iters, t_max, 0.0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: expected a non-negative int, got {step!r}")
    if step < warmup_iters:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_iters) / t_max))


class WarmupCosineLR(LRScheduler):
    r"""Torch LR scheduler: constant lr for ``warmup_iters`` steps, then cosine annealing over ``t_max`` steps.

    .. math::
        \eta_g(t) = \eta_{min} + (\eta_g - \eta_{min})\, m(t)

    with :math:`m` from :func:`warmup_cosine_multiplier` and :math:`\eta_g` each parameter group's own
    base lr (SLRNet's four groups keep their 1 / 2 / 10 / 20 ratio while :math:`\eta_{min} = 0`). Call
    ``scheduler.step()`` after every ``optimizer.step()``; ``t`` is the number of calls so far.

    SLRNet VOC: ``warmup_iters = 6 * iters_per_epoch`` (the constant epochs 0–5), ``t_max =
    25 * iters_per_epoch`` (``T_max = (30 - 5)`` epochs), training stops after 30 epochs, i.e. 24 cosine
    epochs, where the lr is ≈ 0.4 % of the base.

    Args:
        optimizer: wrapped optimiser.
        warmup_iters: steps at the base lr (≥ 0).
        t_max: cosine half-period in steps (≥ 1).
        eta_min: final lr :math:`\eta_{min}` (≥ 0; official 0).
        last_epoch: index of the last step when resuming (``-1``: fresh start), as in torch schedulers.

    Shape:
        Not applicable (acts on the optimiser's parameter groups).

    Raises:
        ValueError: if an option is out of range.

    Example:
        >>> import torch
        >>> from wsseg.optim import WarmupCosineLR
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
        >>> sched = WarmupCosineLR(opt, warmup_iters=2, t_max=4)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 8)); opt.step(); sched.step()
        >>> lrs
        [0.0005, 0.0005, 0.0005, 0.00042678, 0.00025, 7.322e-05]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, tools/train_voc_wss.py.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int, t_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        _check(warmup_iters, t_max, eta_min)
        self.warmup_iters = warmup_iters
        self.t_max = t_max
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int | None = None) -> float:
        """:math:`m(t)` at ``step`` (default: the current step)."""
        return warmup_cosine_multiplier(self.last_epoch if step is None else step, warmup_iters=self.warmup_iters,
                                        t_max=self.t_max)

    def get_lr(self) -> list[float]:
        """Learning rate of each group at the current step."""
        m = self.multiplier()
        return [self.eta_min + (base - self.eta_min) * m for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(warmup_iters={self.warmup_iters}, t_max={self.t_max}, eta_min={self.eta_min})"
