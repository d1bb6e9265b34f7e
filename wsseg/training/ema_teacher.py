"""Exponential-moving-average teacher (CoSA's assignment network): in-place EMA update and a small builder."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .distributed import unwrap_model

__all__ = ["EMATeacher", "ema_update_"]

_INIT = ("independent", "copy")


def _matched(teacher: nn.Module, student: nn.Module, kind: str) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """Teacher and student tensors (parameters or buffers) paired by name; raises on the first mismatch."""
    if kind == "parameter":
        t_items, s_items = list(teacher.named_parameters()), dict(student.named_parameters())
    else:
        t_items, s_items = list(teacher.named_buffers()), dict(student.named_buffers())
    t_names = {n for n, _ in t_items}
    for name, _ in t_items:
        if name not in s_items:
            raise ValueError(f"student: has no {kind} {name!r} that the teacher has (teacher and student must "
                             f"have the same {kind} names)")
    for name in s_items:
        if name not in t_names:
            raise ValueError(f"teacher: has no {kind} {name!r} that the student has (teacher and student must "
                             f"have the same {kind} names)")
    ts, ss, names = [], [], []
    for name, t in t_items:
        s = s_items[name]
        if t.shape != s.shape:
            raise ValueError(f"student: {kind} {name!r} has shape {tuple(s.shape)}, the teacher's has "
                             f"{tuple(t.shape)}")
        if t.device != s.device or t.dtype != s.dtype:
            raise ValueError(f"student: {kind} {name!r} is {s.dtype} on {s.device}, the teacher's is "
                             f"{t.dtype} on {t.device}")
        ts.append(t)
        ss.append(s)
        names.append(name)
    return ts, ss, names


def _check_momentum(momentum: float) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum: expected a float in [0, 1], got {momentum!r}")
    return float(momentum)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, *, momentum: float = 0.9994, buffers: bool = False) -> None:
    r"""In-place exponential moving average of the student's parameters into the teacher's.

    .. math::
        \theta_T \leftarrow m\,\theta_T + (1 - m)\,\theta_S

    applied to **every** parameter (frozen ones included, as the official loop over ``parameters()``),
    matched by name, with two fused multi-tensor operations (``torch._foreach_mul_`` /
    ``torch._foreach_add_``) under ``torch.no_grad()``. After :math:`n` updates from a student sequence
    :math:`\theta_S(0..n-1)`: :math:`\theta_T(n) = m^n \theta_T(0) + (1-m)\sum_i m^{n-1-i}\theta_S(i)`.
    No warm-up, no bias correction. With ``buffers=True`` floating-point buffers are averaged the same
    way and the others (e.g. BatchNorm's ``num_batches_tracked``) copied; by default buffers are left
    alone (the CoSA network has none). ``student`` (and ``teacher``) may be wrapped in
    ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile``; they are unwrapped with
    :func:`~wsseg.training.unwrap_model`.

    Args:
        teacher: the EMA model, updated in place.
        student: the trained model.
        momentum: :math:`m \in [0, 1]` (CoSA 0.9994; 1 keeps the teacher, 0 copies the student).
        buffers: also update buffers.

    Raises:
        ValueError: if ``momentum`` is outside [0, 1], or the two models' parameter (buffer) names,
            shapes, dtypes or devices differ (the message names the first mismatch).

    Example:
        >>> t, s = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
        >>> _ = t.weight.data.fill_(1.0); _ = s.weight.data.fill_(0.0)
        >>> ema_update_(t, s, momentum=0.75)
        >>> t.weight.tolist()
        [[0.75, 0.75]]

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py (assignment-network update after
        ``optimizer.step()``); mean teacher, Tarvainen & Valpola, NeurIPS 2017.
    """
    m = _check_momentum(momentum)
    teacher, student = unwrap_model(teacher), unwrap_model(student)
    ts, ss, _ = _matched(teacher, student, "parameter")
    if ts:
        torch._foreach_mul_(ts, m)
        torch._foreach_add_(ts, ss, alpha=1.0 - m)
    if buffers:
        tb, sb, _ = _matched(teacher, student, "buffer")
        fl = [(t, s) for t, s in zip(tb, sb, strict=True) if t.is_floating_point()]
        if fl:
            tf, sf = [t for t, _ in fl], [s for _, s in fl]
            torch._foreach_mul_(tf, m)
            torch._foreach_add_(tf, sf, alpha=1.0 - m)
        for t, s in zip(tb, sb, strict=True):
            if not t.is_floating_point():
                t.copy_(s)


class EMATeacher:
    r"""Builds and updates an EMA teacher (CoSA's assignment network, AN) for a student (online network).

    Not an ``nn.Module``: it only holds the hyperparameters. :meth:`build` creates the teacher,
    :meth:`step` (call it after every optimiser step, from iteration 0) applies :func:`ema_update_`:

    .. math::
        \theta_T \leftarrow m\,\theta_T + (1 - m)\,\theta_S

    Initialisation: ``"independent"`` (faithful) builds the teacher with ``factory()``, a second fresh
    model — the same pretrained encoder but **its own randomly initialised heads** (the official code
    calls ``build_model`` twice); ``"copy"`` deep-copies the student (a documented deviation). In both
    cases all teacher parameters get ``requires_grad=False`` (it never receives gradients and must not
    be wrapped in DDP; every rank updates its own copy from the synchronised student). The teacher is
    returned in **train mode**, as in the official code (its pseudo-label passes run in train mode;
    with CoSA's ViT — no dropout, no drop-path, no BatchNorm — the mode makes no difference; call
    ``teacher.eval()`` yourself if your model has stochastic layers).

    Args:
        momentum: :math:`m` (CoSA 0.9994 for VOC and COCO; half-life ≈ 1,155 steps).
        buffers: also average floating buffers / copy the others (see :func:`ema_update_`).
        init: ``"independent"`` (faithful) or ``"copy"``.

    Raises:
        ValueError: on ``momentum`` outside [0, 1] or an unknown ``init``.

    Example:
        >>> ema = EMATeacher(momentum=0.9, init="copy")
        >>> student = torch.nn.Linear(3, 2)
        >>> teacher = ema.build(student)
        >>> teacher.weight.requires_grad, torch.equal(teacher.weight, student.weight)
        (False, True)
        >>> _ = student.weight.data.add_(1.0)
        >>> ema.step(teacher, student)
        >>> torch.allclose(teacher.weight, student.weight - 0.9)
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py (``model_AN = build_model(args)``,
        the EMA loop after ``optimizer.step()``), args.py (``momentum=0.9994``).
    """

    def __init__(self, momentum: float = 0.9994, buffers: bool = False, init: str = "independent") -> None:
        self.momentum = _check_momentum(momentum)
        if init not in _INIT:
            raise ValueError(f"init: expected one of {_INIT}, got {init!r}")
        self.buffers = bool(buffers)
        self.init = init

    def build(self, student: nn.Module, factory: Callable[[], nn.Module] | None = None) -> nn.Module:
        """Create the teacher for ``student`` (wrappers are unwrapped).

        ``"independent"``: ``factory()`` must return a freshly built model with the student's parameter
        names (e.g. ``lambda: wsseg.create_model("cosa", weights=path)``); it is moved to the student's
        device. ``"copy"``: ``copy.deepcopy`` of the student (gradients dropped). The teacher's parameters
        get ``requires_grad=False`` and it is put in train mode.

        Raises:
            ValueError: ``init="independent"`` without a callable ``factory``, or a factory model whose
                parameter names / shapes differ from the student's.
            TypeError: if ``factory()`` does not return an ``nn.Module``.
        """
        core = unwrap_model(student)
        if self.init == "copy":
            teacher = copy.deepcopy(core)
        else:
            if factory is None or not callable(factory):
                raise ValueError("factory: init='independent' needs a callable returning a freshly built model "
                                 f"(pretrained encoder, new heads), got {factory!r}")
            teacher = factory()
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"factory: expected it to return an nn.Module, got {type(teacher).__name__}")
            teacher = unwrap_model(teacher)
            first = next(iter(core.parameters()), None)
            if first is not None:
                teacher = teacher.to(first.device)
        for p in teacher.parameters():
            p.requires_grad_(False)
            p.grad = None
        teacher.train()
        _matched(teacher, core, "parameter")  # fail early on a factory that builds another architecture
        return teacher

    def step(self, teacher: nn.Module, student: nn.Module) -> None:
        """One EMA update of ``teacher`` from ``student`` (:func:`ema_update_`); call after each optimiser step."""
        ema_update_(teacher, student, momentum=self.momentum, buffers=self.buffers)

    def __repr__(self) -> str:
        return f"EMATeacher(momentum={self.momentum}, buffers={self.buffers}, init={self.init!r})"
