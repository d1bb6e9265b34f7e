"""CoSA's soft segmentation pseudo label (SPL) from the teacher's segmentation logits (``cosa.md`` §3.4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import check_labels, check_tensor

__all__ = ["SPL_MASK_MODES", "SegPseudoLabel", "seg_pseudo_label"]

#: Where the image labels mask the absent classes: before the softmax (official default) or after it.
SPL_MASK_MODES = ("before_softmax", "after_softmax")

#: Logit given to absent classes in ``"before_softmax"`` mode (official value, divided by T like the others).
_ABSENT_LOGIT = -1e5


def _check_spl_params(temperature: float, mask_mode: str) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if mask_mode not in SPL_MASK_MODES:
        raise ValueError(f"mask_mode: expected one of {SPL_MASK_MODES}, got {mask_mode!r}")


def _spl(logits: Tensor, labels: Tensor, temperature: float, mask_mode: str) -> Tensor:
    """Unchecked core of :func:`seg_pseudo_label` on any spatial layout ``(B, K+1, ...)``; no grad, >= float32."""
    with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        lab = labels.detach().to(x.dtype)
        extra = (1,) * (x.dim() - 2)
        if mask_mode == "before_softmax":
            absent = torch.cat([torch.zeros_like(lab[:, :1], dtype=torch.bool), lab == 0], dim=1)
            return x.masked_fill(absent.view(*absent.shape, *extra), _ABSENT_LOGIT).div_(temperature).softmax(dim=1)
        keep = torch.cat([torch.ones_like(lab[:, :1]), lab], dim=1)
        return (x / temperature).softmax(dim=1).mul_(keep.view(*keep.shape, *extra))


def seg_pseudo_label(teacher_seg_logits: Tensor, labels: Tensor, *, temperature: float = 0.01,
                     mask_mode: str = "before_softmax") -> Tensor:
    r"""Soft segmentation pseudo label (SPL) of CoSA: a sharpened, label-masked softmax of teacher logits.

    With :math:`\tilde S` the teacher's segmentation logits (in CoSA the sum of 6 multi-scale, flipped logit
    maps, channel 0 = background), :math:`y` the image labels and :math:`T` the temperature:

    .. math::

        \text{before\_softmax:}\quad Q = \operatorname{softmax}_c\!\big(\tilde S'/T\big),\qquad
        \tilde S'_c = \begin{cases} \tilde S_c & c = 0 \text{ or } y_c = 1 \\ -10^5 & y_c = 0 \end{cases}

    .. math::

        \text{after\_softmax:}\quad Q_c = [1, y]_c\,\operatorname{softmax}_c\!\big(\tilde S/T\big)
        \quad\text{(not renormalised)}.

    The background is always kept. With :math:`T = 0.01` and summed logits :math:`Q` is practically one-hot.
    In ``"before_softmax"`` mode (official default) the absent classes get exactly 0 and :math:`Q` sums to
    1; in ``"after_softmax"`` mode the mass of absent classes is dropped, so :math:`\sum_c Q_c \le 1` (the
    official code does not renormalise). The masked value :math:`-10^5` is divided by :math:`T` like the
    other logits, as in the official code. Computed under ``torch.no_grad()`` with autocast disabled, in
    float32 (half / bfloat16 inputs are promoted; float64 stays float64).

    Args:
        teacher_seg_logits: teacher segmentation logits :math:`\tilde S` (any real values).
        labels: image-level labels in {0, 1}, no background entry; a class is absent where the label is 0.
        temperature: softmax temperature :math:`T > 0` (``seg_softmaxtemp``, 0.01 in CoSA).
        mask_mode: ``"before_softmax"`` (official default, ``after_softmax=False``) or ``"after_softmax"``.

    Returns:
        The soft pseudo label :math:`Q`, detached.

    Shape:
        - teacher_seg_logits: :math:`(B, K+1, H, W)`.
        - labels: :math:`(B, K)`.
        - output: :math:`(B, K+1, H, W)`, values in [0, 1].

    Raises:
        TypeError: if ``teacher_seg_logits`` is not floating point or ``labels`` not a tensor.
        ValueError: on a wrong rank, ``labels`` not ``(B, K)``, a non-positive ``temperature`` or an unknown
            ``mask_mode``.

    Example:
        >>> logits = torch.tensor([[0.0, 0.05, 0.02]])[..., None, None]  # (1, 3, 1, 1): bkg, class 1, class 2
        >>> labels = torch.tensor([[0.0, 1.0]])                          # class 1 absent
        >>> q = seg_pseudo_label(logits, labels, temperature=0.01)
        >>> [round(v, 4) for v in q.flatten().tolist()]                  # softmax([0, 2]) over {bkg, class 2}
        [0.1192, 0.0, 0.8808]

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``seg_refine_by_label``),
        main.py (``seg_softmaxtemp``, ``after_softmax``).
    """
    check_tensor(teacher_seg_logits, "teacher_seg_logits", ndim=4, dims="(B, K+1, H, W)", dtype="float")
    B, C = teacher_seg_logits.shape[:2]
    if C < 1:
        raise ValueError(f"teacher_seg_logits: expected at least the background channel, got shape "
                         f"{tuple(teacher_seg_logits.shape)}")
    check_labels(labels, "labels", B, C - 1)
    _check_spl_params(temperature, mask_mode)
    return _spl(teacher_seg_logits, labels, temperature, mask_mode)


class SegPseudoLabel(nn.Module):
    r"""Module form of :func:`seg_pseudo_label` (CoSA's soft segmentation pseudo label).

    .. math::

        Q = \operatorname{softmax}_c\big(\tilde S'/T\big), \quad \tilde S'_c = -10^5 \text{ for absent classes}

    (``mask_mode="before_softmax"``), or :math:`Q = [1, y] \odot \operatorname{softmax}(\tilde S/T)`
    (``"after_softmax"``, not renormalised).

    Args:
        temperature: softmax temperature :math:`T > 0` (0.01 in CoSA).
        mask_mode: ``"before_softmax"`` (official default) or ``"after_softmax"``.

    Shape:
        - teacher_seg_logits: :math:`(B, K+1, H, W)`; labels: :math:`(B, K)`.
        - output: :math:`(B, K+1, H, W)`, detached.

    Raises:
        ValueError: on a non-positive ``temperature`` or an unknown ``mask_mode`` (and see the function).

    Example:
        >>> spl = SegPseudoLabel(temperature=0.01)
        >>> q = spl(torch.randn(2, 21, 8, 8), torch.ones(2, 20))
        >>> tuple(q.shape), bool(torch.allclose(q.sum(1), torch.ones(2, 8, 8)))
        ((2, 21, 8, 8), True)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``seg_refine_by_label``).
    """

    def __init__(self, temperature: float = 0.01, mask_mode: str = "before_softmax") -> None:
        super().__init__()
        _check_spl_params(temperature, mask_mode)
        self.temperature = temperature
        self.mask_mode = mask_mode

    def forward(self, teacher_seg_logits: Tensor, labels: Tensor) -> Tensor:
        """Soft pseudo label ``(B, K+1, H, W)``; see :func:`seg_pseudo_label`."""
        return seg_pseudo_label(teacher_seg_logits, labels, temperature=self.temperature,
                                mask_mode=self.mask_mode)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, mask_mode={self.mask_mode!r}"
