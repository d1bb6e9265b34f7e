"""SLRNet's cross-view code consistency ("reg2"): L1 between the max-masked low-rank codes of two views."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import apply_reduction, check_reduction, check_shape, check_tensor

__all__ = ["CodeConsistencyLoss", "code_consistency_loss", "max_mask"]


def max_mask(codes: Tensor, *, keep_ties: bool = True) -> Tensor:
    r"""Keep each token's maximal code entry (its value, not a one-hot 1) and zero the others.

    .. math::

        \mu(C)_{k,n} = C_{k,n}\,[C_{k,n} = \max_{k'} C_{k',n}]

    With ``keep_ties=True`` (official ``max_onehot``) every entry equal to the maximum is kept; with
    ``keep_ties=False`` only the first maximal atom (``argmax``). Gradients pass through the kept entries
    unchanged and are 0 elsewhere.

    Args:
        codes: per-token codes (SLRNet: the softmax assignment to the :math:`K` atoms, classes incl.
            background).
        keep_ties: keep all tied maxima (official) or only the first.

    Returns:
        The masked codes, same shape and dtype.

    Shape:
        - codes: :math:`(B, K, *)` (e.g. :math:`(B, K, h, w)`).
        - output: same as ``codes``.

    Raises:
        TypeError: if ``codes`` is not floating point.
        ValueError: if ``codes`` has fewer than 2 dimensions.

    Example:
        >>> c = torch.tensor([[0.4, 0.4, 0.2]]).view(1, 3, 1)
        >>> max_mask(c).flatten().tolist()
        [0.4000000059604645, 0.4000000059604645, 0.0]
        >>> max_mask(c, keep_ties=False).flatten().tolist()
        [0.4000000059604645, 0.0, 0.0]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``max_onehot``).
    """
    check_tensor(codes, "codes", dtype="float")
    if codes.dim() < 2:
        raise ValueError(f"codes: expected a tensor (B, K, *) with at least 2 dimensions, got {tuple(codes.shape)}")
    if keep_ties:
        keep = codes == codes.amax(dim=1, keepdim=True)
    else:
        keep = torch.zeros_like(codes, dtype=torch.bool).scatter_(1, codes.argmax(dim=1, keepdim=True), True)
    return codes.masked_fill(~keep, 0.0)


def code_consistency_loss(codes1: Tensor, codes2_inv: Tensor, *, keep_ties: bool = True,
                          reduction: str = "mean") -> Tensor:
    r"""L1 distance between the max-masked codes of two views (SLRNet's code consistency).

    With :math:`\mu` from :func:`max_mask` (values kept, ties kept), :math:`C^{(1)}` the view-1 codes and
    :math:`\mathrm{inv}(C^{(2)})` the view-2 codes on the view-1 grid (:func:`wsseg.layers.inverse_view`):

    .. math::

        L_{code} = \frac{1}{B\,K\,h\,w} \sum_{b,k,n}
            \bigl|\mu(C^{(1)})_{b,k,n} - \mu(\mathrm{inv}(C^{(2)}))_{b,k,n}\bigr|.

    Per token (without ties): if the two argmaxes agree the summand is the difference of the two maxima;
    if they disagree it is their sum, so both maxima are pushed down. Gradients reach both views.

    Args:
        codes1: view-1 codes.
        codes2_inv: view-2 codes mapped to the view-1 grid.
        keep_ties: see :func:`max_mask` (official: ``True``).
        reduction: ``"mean"`` (official, divides by :math:`BKhw`), ``"sum"`` or ``"none"`` (per-element
            map).

    Returns:
        A scalar, or a map shaped like ``codes1`` for ``reduction="none"``.

    Shape:
        - codes1, codes2_inv: :math:`(B, K, h, w)` (:math:`K` atoms; 21 on VOC).
        - output: scalar, or :math:`(B, K, h, w)`.

    Raises:
        TypeError: if the codes are not floating point.
        ValueError: on wrong ranks, mismatched shapes or an unknown ``reduction``.

    Example:
        >>> c1 = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1)
        >>> agree = torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)
        >>> disagree = torch.tensor([0.3, 0.6, 0.1]).view(1, 3, 1, 1)
        >>> round(float(code_consistency_loss(c1, agree, reduction="sum")), 4)      # 0.7 - 0.6
        0.1
        >>> round(float(code_consistency_loss(c1, disagree, reduction="sum")), 4)   # 0.7 + 0.6
        1.3

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``max_onehot``,
        ``code_reg_loss``).
    """
    check_tensor(codes1, "codes1", ndim=4, dims="(B, K, h, w)", dtype="float")
    check_tensor(codes2_inv, "codes2_inv", ndim=4, dims="(B, K, h, w)", dtype="float")
    check_shape(codes2_inv, "codes2_inv", tuple(codes1.shape), "(B, K, h, w) = codes1.shape")
    check_reduction(reduction)
    loss = (max_mask(codes1, keep_ties=keep_ties) - max_mask(codes2_inv, keep_ties=keep_ties)).abs()
    return apply_reduction(loss, reduction)


class CodeConsistencyLoss(nn.Module):
    r"""Module form of :func:`code_consistency_loss` (SLRNet's ``reg2``, weight 4 in the configs).

    .. math::

        L_{code} = \frac{1}{BKhw} \sum_{b,k,n} \bigl|\mu(C^{(1)})_{b,k,n} - \mu(\mathrm{inv}(C^{(2)}))_{b,k,n}\bigr|

    Args:
        keep_ties: keep all tied maxima in :func:`max_mask` (official) or only the first.
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"``.

    Shape:
        - codes1, codes2_inv: :math:`(B, K, h, w)`.
        - output: scalar, or :math:`(B, K, h, w)` for ``reduction="none"``.

    Raises:
        ValueError: see :func:`code_consistency_loss`.

    Example:
        >>> loss_fn = CodeConsistencyLoss()
        >>> c = torch.softmax(torch.randn(2, 21, 81, 81), dim=1)
        >>> float(loss_fn(c, c))
        0.0

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``.
    """

    def __init__(self, keep_ties: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        self.keep_ties = keep_ties
        self.reduction = check_reduction(reduction)

    def forward(self, codes1: Tensor, codes2_inv: Tensor) -> Tensor:
        """Compute the loss; see :func:`code_consistency_loss`."""
        return code_consistency_loss(codes1, codes2_inv, keep_ties=self.keep_ties, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"keep_ties={self.keep_ties}, reduction={self.reduction!r}"
