"""SLRNet's / 1-Stage-WSeg's class-balanced cross-entropy with the per-image "all classes present" gate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import apply_reduction, check_labels, check_reduction, check_tensor

__all__ = ["GatedClassBalancedCE", "gated_class_balanced_ce"]


def gated_class_balanced_ce(logits: Tensor, target: Tensor, labels: Tensor, *, gate: bool = True,
                            ignore_index: int = 255, reduction: str = "mean") -> Tensor:
    r"""Per-image class-balanced cross-entropy on a pseudo label, gated on the pseudo label's class count.

    The logits are upsampled bilinearly (``align_corners=True``) to the label size :math:`H \times W`. For
    image :math:`b` let :math:`N_k` be the number of pixels labelled :math:`k` and :math:`N = \sum_k N_k`
    the labelled (non-ignored) pixels; each class is weighted by :math:`w_k = (N - N_k) / (1 + N)`, and

    .. math::

        \ell_b = g_b \cdot \frac{1}{HW} \sum_{n:\,Y_n \ne \mathrm{ignore}} w_{Y_n}\,
            \mathrm{CE}\bigl(\bar L_{:,n}, Y_n\bigr),
        \qquad g_b = \Bigl[\#\{k : N_k > 0\} = 1 + \textstyle\sum_k y_{b,k}\Bigr].

    Ignored pixels contribute 0 but are counted in :math:`HW`. The gate :math:`g_b` (official) keeps an
    image only if its pseudo label holds exactly as many distinct classes as the image labels plus
    background. SLRNet's pseudo labels only contain background and image-label classes, so this drops
    exactly the images whose pseudo label misses a class; for other label maps it is, as in the official
    code, a count comparison (a label map that swaps a missing class for an absent one passes).
    Half-precision logits are evaluated in float32.

    Args:
        logits: the :math:`K+1`-way segmentation logits (channel 0 = background).
        target: the (pseudo) label map, values in :math:`\{0..K\} \cup \{\text{ignore\_index}\}`.
        labels: multi-hot image-level labels (foreground classes).
        gate: apply the gate :math:`g_b` (official) or not (:math:`g_b = 1`).
        ignore_index: the label value that is ignored.
        reduction: ``"mean"`` = the batch average of :math:`\ell_b` (official, gated images count as 0),
            ``"sum"``, or ``"none"`` for the per-image :math:`\ell_b` (gated images are 0).

    Returns:
        A scalar, or :math:`(B,)` for ``reduction="none"``.

    Shape:
        - logits: :math:`(B, K+1, h, w)`.
        - target: :math:`(B, H, W)` integer.
        - labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B,)`.

    Raises:
        TypeError: if ``logits`` is not floating point or ``target`` is not an integer tensor.
        ValueError: on wrong ranks, a batch mismatch, ``labels`` not :math:`(B, K)`, ``target`` values
            outside :math:`\{0..K\} \cup \{\text{ignore\_index}\}` or an unknown ``reduction``.

    Example:
        >>> logits = torch.zeros(2, 3, 2, 2)                         # uniform: CE = log 3 everywhere
        >>> target = torch.tensor([[[0, 0], [0, 1]], [[0, 0], [0, 0]]])
        >>> labels = torch.tensor([[1, 0], [1, 0]])                  # image 2 misses class 1: gated
        >>> loss = gated_class_balanced_ce(logits, target, labels, reduction="none")
        >>> torch.allclose(loss, torch.tensor([(3 * 1 / 5 + 3 / 5) / 4, 0.0]) * torch.tensor(3.0).log())
        True

    Source:
        1-Stage-WSeg, Araslanov & Roth CVPR 2020; SLRNet, Pan et al. IJCV 2022, github.com/DesertsP/SLRNet,
        ``models/single_stage.py`` (``balanced_mask_loss_ce``).
    """
    check_tensor(logits, "logits", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_tensor(target, "target", ndim=3, dims="(B, H, W)", dtype="int")
    B, C = logits.shape[:2]
    if target.shape[0] != B:
        raise ValueError(f"target: expected batch size {B} (that of logits), got {target.shape[0]}")
    if C < 2:
        raise ValueError(f"logits: expected at least 2 channels (background + foreground), got {C}")
    check_labels(labels, "labels", B, C - 1)
    check_reduction(reduction)
    valid = target != ignore_index
    if bool((valid & ((target < 0) | (target >= C))).any()):
        raise ValueError(f"target: expected values in [0, {C - 1}] or ignore_index={ignore_index}, got "
                         f"values in [{int(target.min())}, {int(target.max())}]")

    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)
    ce = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none").flatten(1)

    # per-image class counts N_k over the labelled pixels and class weights w_k = (N - N_k) / (1 + N)
    idx = torch.where(valid, target.long(), 0).flatten(1)                                  # (B, HW)
    counts = torch.zeros(B, C, dtype=torch.long, device=target.device)
    counts.scatter_add_(1, idx, valid.flatten(1).long())
    counts_f = counts.to(ce.dtype)
    total = counts_f.sum(-1, keepdim=True)
    class_weight = (total - counts_f) / (1.0 + total)                                       # (B, C)
    pixel_weight = class_weight.gather(1, idx) * valid.flatten(1)                          # 0 where ignored
    loss = (pixel_weight * ce).mean(-1)                                                    # (B,)

    if gate:
        present = (counts > 0).sum(-1)
        expected = labels.to(ce.dtype).sum(-1) + 1.0
        loss = loss * (present.to(ce.dtype) == expected).to(ce.dtype)
    return apply_reduction(loss, reduction)


class GatedClassBalancedCE(nn.Module):
    r"""Module form of :func:`gated_class_balanced_ce` (SLRNet's segmentation loss on the PAMR pseudo labels).

    .. math::

        \ell_b = g_b \cdot \frac{1}{HW} \sum_{n:\,Y_n \ne \mathrm{ignore}} \frac{N - N_{Y_n}}{1 + N}\,
            \mathrm{CE}\bigl(\bar L_{:,n}, Y_n\bigr)

    Args:
        gate: drop images whose pseudo label does not hold exactly (#image labels + 1) classes (official).
        ignore_index: ignored label value.
        reduction: ``"mean"`` (official batch average), ``"sum"`` or ``"none"`` (per image, :math:`(B,)`).

    Shape:
        - logits: :math:`(B, K+1, h, w)`; target: :math:`(B, H, W)`; labels: :math:`(B, K)`.
        - output: scalar, or :math:`(B,)` for ``reduction="none"``.

    Raises:
        ValueError: see :func:`gated_class_balanced_ce`.

    Example:
        >>> loss_fn = GatedClassBalancedCE()
        >>> target = torch.zeros(2, 321, 321, dtype=torch.long)
        >>> target[:, 100:200, 100:200] = 5
        >>> labels = torch.zeros(2, 20)
        >>> labels[:, 4] = 1
        >>> loss_fn(torch.randn(2, 21, 81, 81), target, labels).shape
        torch.Size([])

    Source:
        SLRNet, github.com/DesertsP/SLRNet, ``models/single_stage.py`` (``balanced_mask_loss_ce``).
    """

    def __init__(self, gate: bool = True, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        self.gate = gate
        self.ignore_index = ignore_index
        self.reduction = check_reduction(reduction)

    def forward(self, logits: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        """Compute the loss; see :func:`gated_class_balanced_ce`."""
        return gated_class_balanced_ce(logits, target, labels, gate=self.gate, ignore_index=self.ignore_index,
                                       reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"gate={self.gate}, ignore_index={self.ignore_index}, reduction={self.reduction!r}"
