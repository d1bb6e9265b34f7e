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


class _MaxMaskL1(torch.autograd.Function):
    r"""``sum |max_mask(c1) - max_mask(c2)|`` without materialising the masked maps (reductions "mean"/"sum").

    Per token, with :math:`m_i` the maxima, :math:`S_i` the kept atoms, :math:`n_i = |S_i|` and
    :math:`n_{12} = |S_1 \cap S_2|`, the sum over the atoms is

    .. math::

        n_{12} |m_1 - m_2| + (n_1 - n_{12}) |m_1| + (n_2 - n_{12}) |m_2|,

    and each kept entry receives the gradient of its own term (``sign(m_1 - m_2)`` on the shared atoms,
    ``sign(m_i)`` on the others), exactly as autograd of the masked maps distributes it; the others get 0.
    The kept-entry masks are float (``sign(c - m) + 1``: 1 at the maxima, 0 elsewhere; vectorised, unlike
    boolean comparisons on CPU); the counts and the arithmetic are per token.
    """

    @staticmethod
    def forward(ctx, codes1, codes2, keep_ties, scale):  # noqa: ANN001, ANN205
        m1, m2 = codes1.amax(dim=1, keepdim=True), codes2.amax(dim=1, keepdim=True)
        keep1, keep2 = _keep_float(codes1, m1, keep_ties), _keep_float(codes2, m2, keep_ties)
        n1, n2 = keep1.sum(dim=1, keepdim=True), keep2.sum(dim=1, keepdim=True)
        n12 = keep2.mul_(keep1).sum(dim=1, keepdim=True)  # keep2's buffer now holds keep1 * keep2
        per_token = n12 * (m1 - m2).abs() + (n1 - n12) * m1.abs() + (n2 - n12) * m2.abs()
        ctx.scale, ctx.keep_ties = scale, keep_ties
        ctx.ties = keep_ties and bool(((n1 != 1) | (n2 != 1)).any())
        ctx.save_for_backward(codes1, codes2, m1, m2, n12)
        ctx.buffers = (keep1, keep2)  # intermediates, turned into the gradients by the first backward
        return per_token.sum() * scale

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        codes1, codes2, m1, m2, n12 = ctx.saved_tensors
        g = grad * ctx.scale
        s12, s1, s2 = (m1 - m2).sign() * g, m1.sign() * g, m2.sign() * g
        if ctx.buffers is not None:  # reuse the forward's buffers (once; a retained graph allocates anew)
            (keep1, buf), ctx.buffers = ctx.buffers, None
        else:
            keep1, buf = _keep_float(codes1, m1, ctx.keep_ties), None
        keep2 = _keep_float(codes2, m2, ctx.keep_ties, out=buf)
        if ctx.ties:  # shared atoms get sign(m1 - m2), the other kept atoms sign(m_i)
            both = keep1 * keep2
            return keep1.mul_(s1).add_(both * (s12 - s1)), keep2.mul_(s2).sub_(both.mul_(s12 + s2)), None, None
        agree = n12 > 0  # one kept atom per token and view: the same atom or not
        return keep1.mul_(torch.where(agree, s12, s1)), keep2.mul_(torch.where(agree, -s12, s2)), None, None


def _keep_float(codes: Tensor, top: Tensor, keep_ties: bool, out: Tensor | None = None) -> Tensor:
    """Float mask (1 kept, 0 not) of the entries :func:`max_mask` keeps, given the maxima ``top`` (B, 1, *)."""
    if keep_ties:  # codes <= top: sign(codes - top) + 1 is 1 exactly at the maxima, 0 elsewhere
        return torch.sub(codes, top, out=out).sign_().add_(1.0) if out is not None else \
            (codes - top).sign_().add_(1.0)
    mask = torch.zeros_like(codes) if out is None else out.zero_()
    return mask.scatter_(1, codes.argmax(dim=1, keepdim=True), 1.0)


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
    For ``"mean"`` / ``"sum"`` the masked maps are not formed: the value is computed per token from the
    maxima and the numbers of kept (and shared) atoms, and the gradient written onto the kept entries, the
    same values and gradients as the masked formulation (ties included).

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
    if reduction != "none" and codes1.numel():
        # fused: per-token maxima instead of the masked (B, K, h, w) maps; same value and gradients
        scale = 1.0 / codes1.numel() if reduction == "mean" else 1.0
        return _MaxMaskL1.apply(codes1, codes2_inv, bool(keep_ties), scale)
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
