"""CoSA's swapped-assignment loss: CAM pseudo label -> segmentation, segmentation pseudo label -> CAM.

``cosa.md`` §3: :math:`L_{c2s}` trains the student's segmentation head on the teacher's CAM pseudo labels
(CPL, main and auxiliary), :math:`L_{s2c}` trains the student's CAM on the teacher's soft segmentation pseudo
label (SPL).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..pseudo.seg_pseudo_label import _check_spl_params, _spl
from ..utils.validation import (
    check_class_target,
    check_labels,
    check_reduction,
    check_shape,
    check_tensor,
    empty_loss,
)
from .balanced_segmentation import _balanced

__all__ = [
    "SwappedAssignmentLoss",
    "SwappedAssignmentTerms",
    "cam_to_seg_loss",
    "seg_to_cam_loss",
    "swapped_assignment_loss",
]

_LOW = (torch.float16, torch.bfloat16)


class SwappedAssignmentTerms(NamedTuple):
    """Terms of :func:`swapped_assignment_loss` (``return_terms=True``).

    Attributes:
        c2s: :math:`L_{c2s}`, **unweighted** (scalar; ``(B, H, W)`` map for ``reduction="none"``).
        s2c: :math:`L_{s2c}`, **unweighted** (scalar; ``(B, h, w)`` map on the CAM grid for ``"none"``).
        total: ``weight_c2s * c2s + weight_s2c * s2c`` (scalar); ``None`` for ``reduction="none"``, whose two
            maps live on different grids.
    """

    c2s: Tensor
    s2c: Tensor
    total: Tensor | None


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _LOW else x


def _check_unit(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value!r}")


def _check_loss_weight(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")


def _check_c2s_inputs(seg_logits: Tensor, cpl: Tensor, cpl_aux: Tensor | None, weight: Tensor | None,
                      ignore_index: int) -> tuple[Tensor, Tensor | None]:
    """Check the c2s inputs; return ``cpl``, ``cpl_aux`` as int64 (values checked against K+1)."""
    check_tensor(seg_logits, "seg_logits", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_tensor(cpl, "cpl", ndim=3, dims="(B, H, W)", dtype="int")
    if cpl.shape[0] != seg_logits.shape[0]:
        raise ValueError(f"cpl: expected batch size {seg_logits.shape[0]} (that of seg_logits), got {cpl.shape[0]}")
    if cpl_aux is not None:
        check_tensor(cpl_aux, "cpl_aux", ndim=3, dims="(B, H, W)", dtype="int")
        check_shape(cpl_aux, "cpl_aux", tuple(cpl.shape), "(B, H, W) = cpl.shape")
    if weight is not None:
        check_tensor(weight, "weight", ndim=3, dims="(B, H, W)", dtype="float")
        check_shape(weight, "weight", tuple(cpl.shape), "(B, H, W) = cpl.shape")
    C = seg_logits.shape[1]
    cpl = check_class_target(cpl, "cpl", C, ignore_index)
    if cpl_aux is not None:
        cpl_aux = check_class_target(cpl_aux, "cpl_aux", C, ignore_index)
    return cpl, cpl_aux


def _check_cam(cam_logits: Tensor, batch: int, num_classes: int) -> None:
    check_tensor(cam_logits, "cam_logits", ndim=4, dims="(B, K, h, w)", dtype="float")
    check_shape(cam_logits, "cam_logits", (batch, num_classes, None, None), f"(B, K, h, w) with B={batch}, "
                f"K={num_classes}")


def _c2s(seg_logits: Tensor, cpl: Tensor, cpl_aux: Tensor | None, weight: Tensor | None, fg_alpha: float,
         aux_alpha: float, eps: float, ignore_index: int, reduction: str) -> Tensor:
    with torch.autocast(device_type=seg_logits.device.type, enabled=False):
        x = _upcast(seg_logits)
        if x.shape[-2:] != cpl.shape[-2:]:  # official: bilinear, align_corners=False (main.py)
            x = F.interpolate(x, size=cpl.shape[-2:], mode="bilinear", align_corners=False)
        main = _balanced(x, cpl, weight, fg_alpha, eps, False, ignore_index, reduction)  # cpl: checked int64
        if cpl_aux is None or aux_alpha == 0:
            return main
        aux = _balanced(x, cpl_aux, weight, fg_alpha, eps, False, ignore_index, reduction)
        return (1.0 - aux_alpha) * main + aux_alpha * aux


def _s2c(cam_logits: Tensor, q_fg: Tensor, relu_cam: bool, reduction: str) -> Tensor:
    """BCE-with-logits of (ReLU) CAM logits against the foreground SPL already on the CAM grid."""
    with torch.autocast(device_type=cam_logits.device.type, enabled=False):
        z = _upcast(cam_logits)
        z = F.relu(z) if relu_cam else z
        q = q_fg.to(z.dtype)
        if reduction == "mean":  # mean over (B h w) of the class mean = mean over all (B K h w) terms
            return F.binary_cross_entropy_with_logits(z, q, reduction="mean")
        per_pixel = F.binary_cross_entropy_with_logits(z, q, reduction="none").mean(dim=1)   # (B, h, w)
        return per_pixel if reduction == "none" else per_pixel.sum()


def _bilinear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    r"""Source indices and weights of a bilinear resize ``n_in -> n_out`` with ``align_corners=False``.

    PyTorch's rule (``area_pixel_compute_source_index``): :math:`s = \max((i + 0.5)\,n_{in}/n_{out} - 0.5, 0)`,
    :math:`i_0 = \lfloor s \rfloor`, :math:`i_1 = \min(i_0 + 1, n_{in} - 1)`, :math:`\lambda = s - i_0`.
    Returns ``(idx (2 n_out,) = [i_0, i_1], w0 (n_out,), w1 (n_out,))``, weights in float32.
    """
    scale = torch.tensor(float(n_in), dtype=torch.float32) / n_out   # float32 quotient, as PyTorch's kernel
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    lam = (src - i0).clamp_(0, 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return torch.cat([i0, i1]).to(device), (1 - lam).to(device), lam.to(device)


def _spl_on_grid(teacher_seg_logits: Tensor, labels: Tensor, temperature: float, mask_mode: str,
                 size: tuple[int, int]) -> Tensor:
    r"""Foreground SPL bilinearly resized to ``size``, computed only at the pixels the resize reads.

    The softmax acts per pixel, so the SPL is evaluated on the :math:`2h \times 2w` source pixels of the
    bilinear taps only (at 448² -> 28² that is 1/64 of the pixels) and combined with the bilinear weights:
    equal to ``F.interpolate(seg_pseudo_label(...)[:, 1:], size)`` up to float rounding.
    """
    H, W = teacher_seg_logits.shape[-2:]
    h, w = size
    with torch.no_grad():
        rows, wh0, wh1 = _bilinear_taps(H, h, teacher_seg_logits.device)
        cols, ww0, ww1 = _bilinear_taps(W, w, teacher_seg_logits.device)
        sub = teacher_seg_logits.detach().index_select(2, rows).index_select(3, cols)   # (B, K+1, 2h, 2w)
        q = _spl(sub, labels, temperature, mask_mode)[:, 1:]
        wh0, wh1 = wh0.to(q.dtype)[:, None], wh1.to(q.dtype)[:, None]
        ww0, ww1 = ww0.to(q.dtype), ww1.to(q.dtype)
        top = q[..., :h, :w] * ww0 + q[..., :h, w:] * ww1
        bottom = q[..., h:, :w] * ww0 + q[..., h:, w:] * ww1
        return top * wh0 + bottom * wh1


def cam_to_seg_loss(seg_logits: Tensor, cpl: Tensor, cpl_aux: Tensor | None = None, weight: Tensor | None = None,
                    *, fg_alpha: float = 0.5, aux_alpha: float = 0.5, eps: float = 1e-6, ignore_index: int = 255,
                    reduction: str = "mean") -> Tensor:
    r"""CoSA's :math:`L_{c2s}`: balanced cross-entropy of the student segmentation on the CAM pseudo labels.

    The student logits :math:`P` are upsampled bilinearly (``align_corners=False``, as in the official
    ``main.py``) to the pseudo-label size and scored with
    :func:`~wsseg.losses.balanced_segmentation_loss` on the main CPL :math:`Y` and the auxiliary CPL
    :math:`Y_{aux}` (both from the teacher, e.g. :func:`~wsseg.pseudo.dual_threshold_pseudo_label`):

    .. math::

        L_{seg}(Y) = (1-\alpha)\,\frac{\sum_{Y=0} w\,\mathrm{CE}}{\#\{Y=0\}+\varepsilon}
                   + \alpha\,\frac{\sum_{Y\notin\{0,\mathrm{ignore}\}} w\,\mathrm{CE}}
                                  {\#\{Y\notin\{0,\mathrm{ignore}\}\}+\varepsilon},

    .. math::

        L_{c2s} = (1-\beta)\,L_{seg}(Y) + \beta\,L_{seg}(Y_{aux}),

    with sums and counts over the whole batch. ``cpl_aux=None`` means :math:`\beta = 0`
    (``aux_cam2seg=False``). The optional per-pixel ``weight`` (experimental RAW hook; not used by the
    released code) multiplies the cross-entropy of both terms; normalisation stays the pixel counts.
    The cross-entropy is evaluated in float32 (autocast disabled; half inputs are promoted).

    Args:
        seg_logits: student segmentation logits (channel 0 = background), at any resolution.
        cpl: main CAM pseudo label, values in :math:`\{0..K\} \cup \{\text{ignore}\}`, any integer dtype.
        cpl_aux: auxiliary CAM pseudo label or ``None``.
        weight: optional non-negative per-pixel weight at the label resolution.
        fg_alpha: :math:`\alpha` (``segfg_alpha``, 0.5).
        aux_alpha: :math:`\beta` (``aux_cam2seg_alpha``, 0.5), in [0, 1].
        eps: :math:`\varepsilon` added to both pixel counts (1e-6 in CoSA).
        ignore_index: ignored label value.
        reduction: ``"mean"`` = the official normalisation above; ``"sum"`` = :math:`(1-\beta)\sum w\,CE(Y)
            + \beta\sum w\,CE(Y_{aux})` over non-ignored pixels; ``"none"`` = that mix as a per-pixel map.

    Returns:
        Scalar, or a :math:`(B, H, W)` map for ``reduction="none"`` (unweighted). An empty batch gives 0 with
        a graph (an empty map for ``"none"``).

    Shape:
        - seg_logits: :math:`(B, K+1, h, w)`.
        - cpl, cpl_aux: :math:`(B, H, W)`, integer.
        - weight: :math:`(B, H, W)`, floating point.

    Raises:
        TypeError: on a non-float ``seg_logits``/``weight`` or a non-integer ``cpl``/``cpl_aux``.
        ValueError: on wrong ranks or shapes, a ``cpl``/``cpl_aux`` value outside :math:`[0, K+1)` other
            than ``ignore_index``, ``fg_alpha``/``aux_alpha`` outside [0, 1], a negative ``eps`` or an
            unknown ``reduction``.

    Example:
        >>> seg = torch.zeros(1, 3, 2, 2)                 # uniform prediction: CE = log 3 everywhere
        >>> cpl = torch.tensor([[[0, 1], [2, 255]]])
        >>> loss = cam_to_seg_loss(seg, cpl, cpl.clone(), eps=0.0)
        >>> bool(torch.isclose(loss, torch.tensor(3.0).log()))
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py (``seg_loss``, ``aux_cam2seg``),
        utils/seg_helper.py (``seg_loss``, ``seg_weightloss``).
    """
    cpl, cpl_aux = _check_c2s_inputs(seg_logits, cpl, cpl_aux, weight, ignore_index)
    _check_unit(aux_alpha, "aux_alpha")
    _check_unit(fg_alpha, "fg_alpha")
    if not eps >= 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")
    check_reduction(reduction)
    if seg_logits.shape[0] == 0:
        return empty_loss(seg_logits, reduction, tuple(cpl.shape))
    return _c2s(seg_logits, cpl, cpl_aux, weight, fg_alpha, aux_alpha, eps, ignore_index, reduction)


def seg_to_cam_loss(cam_logits: Tensor, spl: Tensor, *, relu_cam: bool = True, reduction: str = "mean") -> Tensor:
    r"""CoSA's :math:`L_{s2c}`: multilabel soft-margin loss of the (ReLU) student CAM on the foreground SPL.

    :math:`Q_{fg} = Q_{1:}` (background dropped) is bilinearly resized (``align_corners=False``, as the
    official ``cam_loss``) to the CAM grid :math:`h \times w`; with :math:`z = \mathrm{ReLU}(M)` (or
    :math:`M` for ``relu_cam=False``) and
    :math:`\mathrm{BCE}(z, q) = -q\log\sigma(z) - (1-q)\log(1-\sigma(z))`:

    .. math::

        L_{s2c} = \frac{1}{B h w} \sum_{b, p} \frac{1}{K} \sum_{c=1}^{K}
                  \mathrm{BCE}\big(z_{b,c}(p),\ Q_{fg, b, c}(p)\big),

    i.e. ``F.multilabel_soft_margin_loss`` on the flattened :math:`(Bhw) \times K` matrices. Because of the
    ReLU, :math:`\sigma(z) \ge 1/2`: a class with target 0 costs at least :math:`\log 2` and gets **zero
    gradient** once its logit is :math:`\le 0`, so the loss plateaus near 0.69 (official log: 0.6923).
    Evaluated in float32 (autocast disabled; half inputs are promoted).

    Args:
        cam_logits: the student's raw main CAM :math:`M` (no ReLU inside the model).
        spl: soft segmentation pseudo label :math:`Q` (:func:`~wsseg.pseudo.seg_pseudo_label`), channel 0 =
            background; detached by the caller (it is a target).
        relu_cam: apply the official ReLU before the sigmoid (default); ``False`` is the plain BCE.
        reduction: ``"mean"`` (official), ``"sum"`` (sum over pixels of the class-mean), or ``"none"``
            (per-pixel class-mean, :math:`(B, h, w)`).

    Returns:
        Scalar, or a :math:`(B, h, w)` map for ``reduction="none"`` (unweighted). An empty batch gives 0 with
        a graph (an empty map for ``"none"``).

    Shape:
        - cam_logits: :math:`(B, K, h, w)`.
        - spl: :math:`(B, K+1, H, W)` (any :math:`H, W`; resized to :math:`h \times w`).

    Raises:
        TypeError: on non-float inputs.
        ValueError: on wrong ranks, a batch or class-count mismatch, or an unknown ``reduction``.

    Example:
        >>> cam = -torch.ones(1, 2, 4, 4)                  # non-positive logits: ReLU -> 0, sigma = 1/2
        >>> spl = torch.zeros(1, 3, 16, 16); spl[:, 0] = 1  # background everywhere
        >>> bool(torch.isclose(seg_to_cam_loss(cam, spl), torch.tensor(2.0).log()))
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``cam_loss``, v1).
    """
    check_tensor(spl, "spl", ndim=4, dims="(B, K+1, H, W)", dtype="float")
    B, C = spl.shape[:2]
    _check_cam(cam_logits, B, C - 1)
    check_reduction(reduction)
    if B == 0:
        return empty_loss(cam_logits, reduction, (0, *cam_logits.shape[-2:]))
    with torch.autocast(device_type=spl.device.type, enabled=False):
        q = _upcast(spl.detach()[:, 1:])
        if q.shape[-2:] != cam_logits.shape[-2:]:
            q = F.interpolate(q, size=cam_logits.shape[-2:], mode="bilinear", align_corners=False)
    return _s2c(cam_logits, q, relu_cam, reduction)


def _check_swapped(weight_c2s: float, weight_s2c: float, aux_alpha: float, seg_temperature: float,
                   spl_mask_mode: str, reduction: str, return_terms: bool) -> None:
    _check_loss_weight(weight_c2s, "weight_c2s")
    _check_loss_weight(weight_s2c, "weight_s2c")
    _check_unit(aux_alpha, "aux_alpha")
    _check_spl_params(seg_temperature, spl_mask_mode)
    check_reduction(reduction)
    if reduction == "none" and not return_terms:
        raise ValueError("reduction: 'none' gives L_c2s and L_s2c as maps on different grids, which cannot be "
                         "summed; pass return_terms=True (total is then None) or use 'mean'/'sum'")


def swapped_assignment_loss(seg_logits: Tensor, cam_logits: Tensor, cpl: Tensor, teacher_seg_logits: Tensor,
                            labels: Tensor, cpl_aux: Tensor | None = None, weight: Tensor | None = None, *,
                            fg_alpha: float = 0.5, aux_alpha: float = 0.5, seg_temperature: float = 0.01,
                            spl_mask_mode: str = "before_softmax", relu_cam: bool = True,
                            weight_c2s: float = 0.1, weight_s2c: float = 0.05, eps: float = 1e-6,
                            ignore_index: int = 255, reduction: str = "mean",
                            return_terms: bool = False) -> Tensor | SwappedAssignmentTerms:
    r"""CoSA's swapped-assignment loss, weighted inside: ``0.1 * L_c2s + 0.05 * L_s2c`` by default.

    The two CoSA loss weights are applied inside (defaults = the official ``seg_weight`` 0.1 and
    ``cam_weight`` 0.05); pass ``weight_c2s=1.0, weight_s2c=1.0`` for the plain sum, or
    ``return_terms=True`` for the unweighted terms. Single-term losses such as
    :class:`~wsseg.losses.BalancedSegmentationLoss` return their term unweighted (``docs/conventions.rst``).
    CPL -> student segmentation plus SPL -> student CAM:

    .. math::

        L_{SA} = \lambda_{c2s}\, L_{c2s}\big(P;\ Y, Y_{aux}\big)
               + \lambda_{s2c}\, L_{s2c}\big(M;\ Q\big),\qquad
        Q = \operatorname{SPL}_T\big(\tilde S, y\big),

    with :math:`L_{c2s}` of :func:`cam_to_seg_loss` (student logits :math:`P` upsampled bilinearly to the
    CPL size), :math:`L_{s2c}` of :func:`seg_to_cam_loss` and the soft pseudo label :math:`Q` of
    :func:`~wsseg.pseudo.seg_pseudo_label`, computed here under ``torch.no_grad()`` from the teacher's
    segmentation logits :math:`\tilde S`. Defaults: :math:`\lambda_{c2s} = 0.1` (``seg_weight``),
    :math:`\lambda_{s2c} = 0.05` (``cam_weight``); the official warm-up (weights 0 for the first
    iterations) is the training loop's business.

    Implementation: because the SPL acts per pixel and its resize to the CAM grid is bilinear, :math:`Q` is
    evaluated only at the :math:`2h \times 2w` pixels the resize reads (1/64 of the pixels at 448² -> 28²)
    instead of the full :math:`H \times W` map; equal to the official order up to float rounding.

    Args:
        seg_logits: student segmentation logits :math:`P` (strong view).
        cam_logits: student raw main CAM :math:`M` (strong view).
        cpl: teacher main CAM pseudo label :math:`Y` (weak view).
        teacher_seg_logits: teacher segmentation logits :math:`\tilde S` (CoSA: sum of 6 multi-scale,
            flipped logit maps), at the CPL size.
        labels: image labels, every entry exactly 0 or 1 (no background entry; NaN, -1 or 2 raise).
        cpl_aux: teacher auxiliary CAM pseudo label :math:`Y_{aux}` or ``None`` (:math:`\beta = 0`).
        weight: optional per-pixel CPL weight (experimental RAW hook).
        fg_alpha: :math:`\alpha` of the balanced CE (0.5).
        aux_alpha: :math:`\beta`, weight of the auxiliary CPL term (0.5).
        seg_temperature: SPL temperature :math:`T` (0.01).
        spl_mask_mode: ``"before_softmax"`` (official) or ``"after_softmax"``.
        relu_cam: ReLU on the CAM before the sigmoid (official).
        weight_c2s: :math:`\lambda_{c2s}`.
        weight_s2c: :math:`\lambda_{s2c}`.
        eps: :math:`\varepsilon` of the balanced CE (1e-6).
        ignore_index: ignored CPL value.
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (per term, see :func:`cam_to_seg_loss`
            and :func:`seg_to_cam_loss`; ``"none"`` requires ``return_terms=True``).
        return_terms: return :class:`SwappedAssignmentTerms` ``(c2s, s2c, total)`` with the **unweighted**
            terms instead of the scalar total.

    Returns:
        The scalar :math:`L_{SA}`, or :class:`SwappedAssignmentTerms`. An empty batch (:math:`B = 0`) gives
        zero terms that keep the graph (``pred.sum() * 0``; empty maps for ``"none"``). NaN in the logits
        propagates.

    Shape:
        - seg_logits: :math:`(B, K+1, h, w)`; cam_logits: :math:`(B, K, h', w')`.
        - cpl, cpl_aux: :math:`(B, H, W)`, any integer dtype; weight: :math:`(B, H, W)` float.
        - teacher_seg_logits: :math:`(B, K+1, H, W)`; labels: :math:`(B, K)`.

    Raises:
        TypeError: on wrong dtypes (float logits and weight, integer pseudo labels).
        ValueError: on wrong ranks or shapes, ``labels`` not all 0/1, a ``cpl``/``cpl_aux`` value outside
            :math:`[0, K+1)` other than ``ignore_index``, out-of-range hyperparameters, an unknown
            ``spl_mask_mode`` or ``reduction``, or ``reduction="none"`` without ``return_terms=True``.

    Example:
        >>> B, K = 2, 20
        >>> seg, cam = torch.randn(B, K + 1, 7, 7, requires_grad=True), torch.randn(B, K, 7, 7, requires_grad=True)
        >>> cpl = torch.randint(0, K + 1, (B, 112, 112)); teacher = torch.randn(B, K + 1, 112, 112)
        >>> labels = torch.ones(B, K)
        >>> terms = swapped_assignment_loss(seg, cam, cpl, teacher, labels, cpl.clone(), return_terms=True)
        >>> bool(torch.isclose(terms.total, 0.1 * terms.c2s + 0.05 * terms.s2c))
        True
        >>> terms.total.backward()

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py (lines 120-233),
        utils/seg_helper.py (``seg_loss``, ``seg_refine_by_label``, ``cam_loss``).
    """
    cpl, cpl_aux = _check_c2s_inputs(seg_logits, cpl, cpl_aux, weight, ignore_index)
    B, C = seg_logits.shape[:2]
    _check_cam(cam_logits, B, C - 1)
    check_tensor(teacher_seg_logits, "teacher_seg_logits", ndim=4, dims="(B, K+1, H, W)", dtype="float")
    check_shape(teacher_seg_logits, "teacher_seg_logits", (B, C, *cpl.shape[-2:]),
                f"(B, K+1, H, W) with B={B}, K+1={C} and (H, W) = cpl size")
    check_labels(labels, "labels", B, C - 1)
    _check_swapped(weight_c2s, weight_s2c, aux_alpha, seg_temperature, spl_mask_mode, reduction, return_terms)
    _check_unit(fg_alpha, "fg_alpha")
    if not eps >= 0:
        raise ValueError(f"eps: expected a non-negative value, got {eps}")

    if B == 0:  # empty batch: zero terms that keep the graph (a mean over nothing would be NaN)
        c2s = empty_loss(seg_logits, reduction, tuple(cpl.shape))
        s2c = empty_loss(cam_logits, reduction, (0, *cam_logits.shape[-2:]))
        total = None if reduction == "none" else weight_c2s * c2s + weight_s2c * s2c
        return SwappedAssignmentTerms(c2s, s2c, total) if return_terms else total
    c2s = _c2s(seg_logits, cpl, cpl_aux, weight, fg_alpha, aux_alpha, eps, ignore_index, reduction)
    q_fg = _spl_on_grid(teacher_seg_logits, labels, seg_temperature, spl_mask_mode, tuple(cam_logits.shape[-2:]))
    s2c = _s2c(cam_logits, q_fg, relu_cam, reduction)
    total = None if reduction == "none" else weight_c2s * c2s + weight_s2c * s2c
    if return_terms:
        return SwappedAssignmentTerms(c2s, s2c, total)
    return total


class SwappedAssignmentLoss(nn.Module):
    r"""CoSA's swapped-assignment loss, weighted inside: ``0.1 * L_c2s + 0.05 * L_s2c`` by default.

    Module form of :func:`swapped_assignment_loss`. The loss weights are constructor hyperparameters
    (defaults = the official ``seg_weight`` 0.1 and ``cam_weight`` 0.05, shown by ``repr``); use
    ``SwappedAssignmentLoss(weight_c2s=1.0, weight_s2c=1.0)`` or ``return_terms=True`` for unweighted
    terms. :class:`~wsseg.losses.BalancedSegmentationLoss`, a single term, has no weight inside
    (``docs/conventions.rst``).

    .. math::

        L_{SA} = \lambda_{c2s}\big[(1-\beta) L_{seg}(P; Y) + \beta L_{seg}(P; Y_{aux})\big]
               + \lambda_{s2c}\,\frac{1}{Bhw}\sum_{b,p}\frac1K\sum_c
                 \mathrm{BCE}\big(\mathrm{ReLU}(M_c(p)),\ \operatorname{down}(Q)_c(p)\big)

    with the CAM pseudo labels :math:`Y, Y_{aux}` and the teacher's soft segmentation pseudo label
    :math:`Q = \operatorname{softmax}(\tilde S'/T)` (absent classes masked), computed inside without gradient.

    Args:
        fg_alpha: :math:`\alpha` of the balanced CE (``segfg_alpha``, 0.5).
        aux_alpha: :math:`\beta` (``aux_cam2seg_alpha``, 0.5).
        seg_temperature: SPL temperature :math:`T` (``seg_softmaxtemp``, 0.01).
        spl_mask_mode: ``"before_softmax"`` (official) or ``"after_softmax"``.
        relu_cam: ReLU before the sigmoid in :math:`L_{s2c}` (official); ``False`` = plain BCE.
        weight_c2s: :math:`\lambda_{c2s}` (``seg_weight``, 0.1).
        weight_s2c: :math:`\lambda_{s2c}` (``cam_weight``, 0.05).
        eps: :math:`\varepsilon` of the balanced CE (1e-6).
        ignore_index: ignored CPL value.
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (needs ``return_terms=True``).
        return_terms: return :class:`SwappedAssignmentTerms` (unweighted ``c2s``, ``s2c`` and ``total``).

    Shape:
        - seg_logits: :math:`(B, K+1, h, w)`; cam_logits: :math:`(B, K, h', w')`.
        - cpl, cpl_aux: :math:`(B, H, W)`; teacher_seg_logits: :math:`(B, K+1, H, W)`; labels: :math:`(B, K)`;
          weight: :math:`(B, H, W)`.
        - output: scalar (or :class:`SwappedAssignmentTerms`).

    Raises:
        ValueError: on out-of-range hyperparameters; on labels that are not 0/1 or a CPL value outside
            :math:`[0, K+1)` other than ``ignore_index`` (see :func:`swapped_assignment_loss`).

    Example:
        >>> loss_fn = SwappedAssignmentLoss()
        >>> B, K = 2, 20
        >>> seg, cam = torch.randn(B, K + 1, 7, 7), torch.randn(B, K, 7, 7)
        >>> cpl = torch.randint(0, K + 1, (B, 112, 112))
        >>> loss_fn(seg, cam, cpl, torch.randn(B, K + 1, 112, 112), torch.ones(B, K), cpl).shape
        torch.Size([])

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, main.py, utils/seg_helper.py
        (``seg_loss``, ``seg_refine_by_label``, ``cam_loss``).
    """

    def __init__(self, fg_alpha: float = 0.5, aux_alpha: float = 0.5, seg_temperature: float = 0.01,
                 spl_mask_mode: str = "before_softmax", relu_cam: bool = True, weight_c2s: float = 0.1,
                 weight_s2c: float = 0.05, eps: float = 1e-6, ignore_index: int = 255, reduction: str = "mean",
                 return_terms: bool = False) -> None:
        super().__init__()
        _check_unit(fg_alpha, "fg_alpha")
        if not eps >= 0:
            raise ValueError(f"eps: expected a non-negative value, got {eps}")
        _check_swapped(weight_c2s, weight_s2c, aux_alpha, seg_temperature, spl_mask_mode, reduction, return_terms)
        self.fg_alpha = fg_alpha
        self.aux_alpha = aux_alpha
        self.seg_temperature = seg_temperature
        self.spl_mask_mode = spl_mask_mode
        self.relu_cam = relu_cam
        self.weight_c2s = weight_c2s
        self.weight_s2c = weight_s2c
        self.eps = eps
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.return_terms = return_terms

    def forward(self, seg_logits: Tensor, cam_logits: Tensor, cpl: Tensor, teacher_seg_logits: Tensor,
                labels: Tensor, cpl_aux: Tensor | None = None,
                weight: Tensor | None = None) -> Tensor | SwappedAssignmentTerms:
        """Loss (or terms); see :func:`swapped_assignment_loss`."""
        return swapped_assignment_loss(
            seg_logits, cam_logits, cpl, teacher_seg_logits, labels, cpl_aux, weight, fg_alpha=self.fg_alpha,
            aux_alpha=self.aux_alpha, seg_temperature=self.seg_temperature, spl_mask_mode=self.spl_mask_mode,
            relu_cam=self.relu_cam, weight_c2s=self.weight_c2s, weight_s2c=self.weight_s2c, eps=self.eps,
            ignore_index=self.ignore_index, reduction=self.reduction, return_terms=self.return_terms,
        )

    def extra_repr(self) -> str:
        return (f"fg_alpha={self.fg_alpha}, aux_alpha={self.aux_alpha}, seg_temperature={self.seg_temperature}, "
                f"spl_mask_mode={self.spl_mask_mode!r}, relu_cam={self.relu_cam}, weight_c2s={self.weight_c2s}, "
                f"weight_s2c={self.weight_s2c}, eps={self.eps}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}, return_terms={self.return_terms}")
