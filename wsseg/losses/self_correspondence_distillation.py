"""Self Correspondence Distillation (SCD) loss of TSCD (``tscd.md`` §3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import check_labels, check_reduction, check_shape, check_tensor, empty_loss

__all__ = ["SelfCorrespondenceDistillation", "self_correspondence_distillation"]


def _check_hparams(num_samples: int, stabilize_max: float | None, eps: float, reduction: str) -> None:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    if stabilize_max is not None and not stabilize_max > 0:
        raise ValueError(f"stabilize_max: expected None or a positive float, got {stabilize_max!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive float, got {eps!r}")
    check_reduction(reduction)


def _sample_points(x: Tensor, grid: Tensor) -> Tensor:
    """Sample ``x`` (B,D,H,W) at ``grid`` (B,S,S,2) -> (B,D,S*S) with the official axis permutation.

    The official ``sample`` passes ``grid.permute(0, 2, 1, 3)`` to ``grid_sample``, so output position
    ``(i, j)`` (flattened to ``i*S + j``) holds the point ``grid[:, j, i]``.
    """
    out = F.grid_sample(x, grid.permute(0, 2, 1, 3), mode="bilinear", padding_mode="border", align_corners=True)
    return out.flatten(2)


def _normalized_correlation(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Cosine similarities of every column of ``a`` (B,D,N) with every column of ``b`` (B,D,M)."""
    a = F.normalize(a, dim=1, eps=eps)
    b = F.normalize(b, dim=1, eps=eps)
    return torch.bmm(a.transpose(1, 2), b)  # (B, N, M)


class _ClampedAgreement(torch.autograd.Function):
    """Fused ``scale * sum(-clamp(G, low, high) * F)`` with ``F`` constant.

    Saves only ``G`` and ``F`` (which exist anyway) and computes ``dL/dG = -scale * F * 1[low <= G <= high]``
    in one pass in the backward (torch's clamp convention at the boundaries), instead of keeping the
    clamp/multiply/negate/mean chain of autograd nodes and their B*S^4 intermediates.
    """

    @staticmethod
    def forward(ctx, g: Tensor, f: Tensor, low: float | None, high: float | None,  # type: ignore[override]
                scale: float) -> Tensor:
        ctx.save_for_backward(g, f)
        ctx.low, ctx.high, ctx.scale = low, high, scale
        clamped = g.clamp(min=low, max=high) if (low is not None or high is not None) else g.clone()
        return clamped.mul_(f).sum().mul_(-scale)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        g, f = ctx.saved_tensors
        grad = f * (grad_out * -ctx.scale)
        if ctx.low is not None:
            grad.masked_fill_(g < ctx.low, 0.0)
        if ctx.high is not None:
            grad.masked_fill_(g > ctx.high, 0.0)
        return grad, None, None, None, None


def self_correspondence_distillation(
    teacher_1: Tensor,
    teacher_2: Tensor,
    student_1: Tensor,
    student_2: Tensor,
    grid_1: Tensor | None = None,
    grid_2: Tensor | None = None,
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    num_samples: int = 40,
    pointwise_center: bool = True,
    zero_clamp: bool = True,
    shift: float = 0.0,
    stabilize_max: float | None = None,
    mask_absent_classes: bool = False,
    eps: float = 1e-10,
    reduction: str = "mean",
) -> Tensor:
    r"""Distil the cross-view correspondence of the (frozen) CAMs into the segmentation predictions.

    TSCD's SCD loss: STEGO's positive inter-view correlation loss with the CAMs of two views (the crop
    and its 0.3x resize) as the teacher features and the segmentation logits of the same two views as
    the student features. :math:`S \times S` points are sampled per view and per image (bilinear
    ``grid_sample``, ``align_corners=True``, border padding) at ``grid_1`` in view 1 and ``grid_2`` in
    view 2, giving teacher vectors :math:`m_a, m'_c` and student vectors :math:`p_a, p'_c`,
    :math:`a, c \in \{1, \dots, S^2\}`. With :math:`n(z) = z / \max(\lVert z\rVert_2, \epsilon)` over channels:

    .. math::

        F_{bac} = \langle n(m_a), n(m'_c)\rangle,\qquad
        \tilde F_{bac} = F_{bac} - \frac{1}{S^2}\sum_{c'} F_{bac'} + \operatorname{mean}_{b,a,c} F,

    .. math::

        G_{bac} = \langle n(p_a), n(p'_c)\rangle,\qquad
        L = \operatorname{mean}_{b,a,c}\big[-\operatorname{clamp}(G_{bac}, 0, g_{max})\,
            (\tilde F_{bac} - \mathrm{shift})\big].

    The teacher side is under stop-gradient (detached inside, computed without a graph): gradients reach
    only the two students. Where :math:`0 < G < g_{max}`,
    :math:`\partial L/\partial G = -(\tilde F - \mathrm{shift})/(B S^4)`; elsewhere it is 0
    (pairs with :math:`\tilde F > 0` are pulled together, pairs with :math:`\tilde F < 0` pushed apart until
    their cosine reaches 0).

    Sampling points: when ``grid_1``/``grid_2`` are ``None`` they are drawn, in this order (first
    ``grid_1``, then ``grid_2``), as ``2 * torch.rand((B, S, S, 2), generator=generator,
    device=teacher_1.device) - 1`` in float32 (the official draw, made reproducible through
    ``generator``), then cast to the compute dtype. The grid's last axis is (x, y) in :math:`[-1, 1]`
    as for :func:`torch.nn.functional.grid_sample`; the range is **not** checked, points outside are
    clamped to the border by ``padding_mode="border"``.

    Official-code quirks, kept by default:

    * **Grid permutation**: like the official ``sample`` helper, the grid is passed to ``grid_sample`` as
      ``grid.permute(0, 2, 1, 3)``, so sample index :math:`a = iS + j` (and the rows/columns of the
      ``reduction="none"`` output) correspond to the point ``grid[b, j, i]``. Harmless for i.i.d. points.
    * **The teacher uses all K CAM channels**, including classes absent from the image (absent-class
      noise enters :math:`F`); ``mask_absent_classes=True`` multiplies the teacher channels by the
      image-level labels first (not in the official code).
    * Near-zero teacher vectors are normalised with :math:`\epsilon = 10^{-10}` (their direction is noise;
      exactly-zero vectors give :math:`F = 0`).

    Args:
        teacher_1: CAM of view 1 (the crop), non-negative, used under stop-gradient.
        teacher_2: CAM of view 2 (the resized crop), same K as ``teacher_1``.
        student_1: segmentation logits of view 1 (raw, no softmax).
        student_2: segmentation logits of view 2, same C as ``student_1``.
        grid_1: sampling points of view 1, or ``None`` to draw them.
        grid_2: sampling points of view 2, or ``None`` to draw them.
        labels: image-level labels, required only when ``mask_absent_classes=True``.
        generator: random generator for the drawn grids (must live on the inputs' device).
        num_samples: S, points per side of the sampling grid (TSCD/STEGO ``feature_samples`` = 40).
        pointwise_center: apply the pointwise centring of :math:`F` (official: on).
        zero_clamp: clamp :math:`G` at 0 from below (official: on); off = no lower clamp.
        shift: STEGO shift :math:`b` subtracted from :math:`\tilde F` (TSCD: 0).
        stabilize_max: optional upper clamp :math:`g_{max}` of :math:`G` (STEGO ``stabilize``: 0.8;
            TSCD: off = ``None``).
        mask_absent_classes: multiply the teacher channels by ``labels`` (wsseg option, default off).
        eps: :math:`\epsilon` of the channel normalisation.
        reduction: ``"mean"`` (official, over :math:`B S^4` entries), ``"sum"`` or ``"none"``.

    Returns:
        Scalar loss, or the per-pair terms :math:`(B, S^2, S^2)` for ``reduction="none"``. Unweighted (TSCD
        multiplies by its ``w_scd``). An empty batch (:math:`B = 0`) gives 0 with a graph
        (``(student_1.sum() + student_2.sum()) * 0``; an empty :math:`(0, S^2, S^2)` tensor for ``"none"``).
        NaN in the inputs propagates.

    Shape:
        - teacher_1: :math:`(B, K, H, W)`; teacher_2: :math:`(B, K, H', W')`.
        - student_1: :math:`(B, C, H_s, W_s)`; student_2: :math:`(B, C, H_s', W_s')` (C = K+1 in TSCD; the
          teacher and student of one view are sampled at the same normalised points, so their spatial
          sizes may differ).
        - grid_1, grid_2: :math:`(B, S, S, 2)` floating point in :math:`[-1, 1]`.
        - labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B, S^2, S^2)`.

    Raises:
        TypeError: if a map or grid is not floating point.
        ValueError: on wrong ranks, batch mismatches, a channel mismatch between the two teacher views or
            the two student views, a grid not of shape ``(B, num_samples, num_samples, 2)``, missing or
            mis-shaped ``labels`` with ``mask_absent_classes=True``, or invalid hyperparameters.

    Example:
        >>> import torch
        >>> from wsseg.losses import self_correspondence_distillation
        >>> g = torch.Generator().manual_seed(0)
        >>> cam1, cam2 = torch.rand(2, 20, 64, 64), torch.rand(2, 20, 19, 19)
        >>> seg1 = torch.randn(2, 21, 64, 64, requires_grad=True)
        >>> seg2 = torch.randn(2, 21, 19, 19, requires_grad=True)
        >>> loss = self_correspondence_distillation(cam1, cam2, seg1, seg2,
        ...                                         generator=g, num_samples=8)
        >>> loss.backward()
        >>> loss.shape, seg1.grad.shape
        (torch.Size([]), torch.Size([2, 21, 64, 64]))

    Source:
        TSCD, Xu et al. AAAI 2023, github.com/Rongtao-Xu/RepresentationLearning
        ``SCD-AAAI2023/utils/corrloss.py`` (``ContrastiveCorrelationLoss``, the ``pos_intra_loss`` term
        of ``scripts/dist_train_voc.py``); derived from STEGO, Hamilton et al. ICLR 2022,
        github.com/mhamilton723/STEGO ``src/modules.py`` (``ContrastiveCorrelationLoss.helper``).
    """
    _check_hparams(num_samples, stabilize_max, eps, reduction)
    check_tensor(teacher_1, "teacher_1", ndim=4, dims="(B, K, H, W)", dtype="float")
    batch, k = teacher_1.shape[:2]
    check_tensor(teacher_2, "teacher_2", ndim=4, dims="(B, K, H', W')", dtype="float")
    check_shape(teacher_2, "teacher_2", (batch, k, None, None), "(B, K, H', W') with B, K of teacher_1")
    check_tensor(student_1, "student_1", ndim=4, dims="(B, C, H, W)", dtype="float")
    c = student_1.shape[1]
    check_shape(student_1, "student_1", (batch, None, None, None), "(B, C, H, W) with B of teacher_1")
    check_tensor(student_2, "student_2", ndim=4, dims="(B, C, H', W')", dtype="float")
    check_shape(student_2, "student_2", (batch, c, None, None), "(B, C, H', W') with B, C of student_1")
    grid_shape = (batch, num_samples, num_samples, 2)
    for name, grid in (("grid_1", grid_1), ("grid_2", grid_2)):
        if grid is not None:
            check_tensor(grid, name, ndim=4, dims="(B, S, S, 2)", dtype="float")
            check_shape(grid, name, grid_shape, "(B, S, S, 2) with S = num_samples")
    if mask_absent_classes:
        if labels is None:
            raise ValueError("labels: required (B, K) image-level labels when mask_absent_classes=True, got None")
        check_labels(labels, "labels", batch, k)
    if batch == 0:  # empty batch: 0 with a graph (the mean over B S^4 = 0 entries is undefined)
        s2 = num_samples * num_samples
        return empty_loss(student_1.sum() + student_2.sum(), reduction, (0, s2, s2))

    device = teacher_1.device
    dtype = torch.promote_types(torch.promote_types(student_1.dtype, student_2.dtype), torch.float32)
    if grid_1 is None:
        grid_1 = torch.rand(grid_shape, generator=generator, device=device) * 2 - 1
    if grid_2 is None:
        grid_2 = torch.rand(grid_shape, generator=generator, device=device) * 2 - 1
    grid_1 = grid_1.to(dtype)
    grid_2 = grid_2.to(dtype)

    # Correlations and means are sensitive reductions: evaluate everything in >= float32.
    with torch.autocast(device_type=device.type, enabled=False):
        with torch.no_grad():
            m1 = teacher_1.detach().to(dtype)
            m2 = teacher_2.detach().to(dtype)
            if mask_absent_classes:
                y = labels.detach().to(device=device, dtype=dtype)[:, :, None, None]  # type: ignore[union-attr]
                m1, m2 = m1 * y, m2 * y
            f = _normalized_correlation(_sample_points(m1, grid_1), _sample_points(m2, grid_2), eps)
            if pointwise_center:
                # Closed form of the official two-step centring: subtract the mean over the target points,
                # then add back the global mean of the uncentred correlation.
                global_mean = f.mean()
                f.sub_(f.mean(dim=2, keepdim=True)).add_(global_mean)
            if shift != 0.0:
                f.sub_(shift)

        g = _normalized_correlation(
            _sample_points(student_1.to(dtype), grid_1), _sample_points(student_2.to(dtype), grid_2), eps
        )
        low = 0.0 if zero_clamp else None
        if reduction != "none":
            scale = 1.0 / f.numel() if reduction == "mean" else 1.0
            return _ClampedAgreement.apply(g, f, low, stabilize_max, scale)
        if low is not None or stabilize_max is not None:
            g = g.clamp(min=low, max=stabilize_max)
        return -(g * f)


class SelfCorrespondenceDistillation(nn.Module):
    r"""Module form of :func:`self_correspondence_distillation` (TSCD's SCD loss).

    .. math::

        L = \operatorname{mean}_{b,a,c}\big[-\max(G_{bac}, 0)\,\tilde F_{bac}\big]

    with :math:`\tilde F` the pointwise-centred cosine correspondence of the sampled teacher (CAM) vectors
    of the two views (stop-gradient) and :math:`G` that of the sampled student (segmentation logit)
    vectors; see :func:`self_correspondence_distillation` for the sampling convention and quirks.

    Args:
        num_samples: S, the sampling grid is S x S per view and image (official 40).
        pointwise_center: pointwise centring of the teacher correspondence (official on).
        zero_clamp: clamp the student correspondence at 0 (official on).
        shift: STEGO shift subtracted from the centred teacher correspondence (official 0).
        stabilize_max: optional upper clamp of the student correspondence (STEGO 0.8; official ``None``).
        mask_absent_classes: zero the teacher channels of absent classes (requires ``labels``; default off).
        eps: normalisation epsilon (official 1e-10).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (-> :math:`(B, S^2, S^2)`).

    Shape:
        - teacher_1 :math:`(B, K, H, W)`, teacher_2 :math:`(B, K, H', W')`, student_1 :math:`(B, C, H, W)`,
          student_2 :math:`(B, C, H', W')`, grid_1/grid_2 :math:`(B, S, S, 2)`, labels :math:`(B, K)`.
        - output: scalar, or :math:`(B, S^2, S^2)` for ``reduction="none"``.

    Raises:
        ValueError: on invalid hyperparameters here, and see :func:`self_correspondence_distillation`.

    Example:
        >>> import torch
        >>> from wsseg.losses import SelfCorrespondenceDistillation
        >>> scd = SelfCorrespondenceDistillation(num_samples=8)
        >>> g = torch.Generator().manual_seed(0)
        >>> loss = scd(torch.rand(1, 20, 32, 32), torch.rand(1, 20, 10, 10),
        ...            torch.randn(1, 21, 32, 32), torch.randn(1, 21, 10, 10), generator=g)
        >>> loss.shape
        torch.Size([])

    Source:
        TSCD, Xu et al. AAAI 2023, github.com/Rongtao-Xu/RepresentationLearning
        ``SCD-AAAI2023/utils/corrloss.py``; STEGO, Hamilton et al. ICLR 2022, github.com/mhamilton723/STEGO
        ``src/modules.py``.
    """

    def __init__(self, num_samples: int = 40, pointwise_center: bool = True, zero_clamp: bool = True,
                 shift: float = 0.0, stabilize_max: float | None = None, mask_absent_classes: bool = False,
                 eps: float = 1e-10, reduction: str = "mean") -> None:
        super().__init__()
        _check_hparams(num_samples, stabilize_max, eps, reduction)
        self.num_samples = num_samples
        self.pointwise_center = pointwise_center
        self.zero_clamp = zero_clamp
        self.shift = shift
        self.stabilize_max = stabilize_max
        self.mask_absent_classes = mask_absent_classes
        self.eps = eps
        self.reduction = reduction

    def forward(self, teacher_1: Tensor, teacher_2: Tensor, student_1: Tensor, student_2: Tensor,
                grid_1: Tensor | None = None, grid_2: Tensor | None = None, labels: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """Compute the loss; see :func:`self_correspondence_distillation`."""
        return self_correspondence_distillation(
            teacher_1, teacher_2, student_1, student_2, grid_1, grid_2, labels, generator,
            num_samples=self.num_samples, pointwise_center=self.pointwise_center, zero_clamp=self.zero_clamp,
            shift=self.shift, stabilize_max=self.stabilize_max, mask_absent_classes=self.mask_absent_classes,
            eps=self.eps, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"num_samples={self.num_samples}, pointwise_center={self.pointwise_center}, "
                f"zero_clamp={self.zero_clamp}, shift={self.shift}, stabilize_max={self.stabilize_max}, "
                f"mask_absent_classes={self.mask_absent_classes}, eps={self.eps}, reduction={self.reduction!r}")
