"""ViT-PCM's patch classifier: dropout and a bias-free per-patch linear layer with an L2 kernel penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["PatchClassifier", "patch_classifier"]


def _check_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value!r}")
    return float(value)


def patch_classifier(feat: Tensor, weight: Tensor, *, dropout: float = 0.0, training: bool = False) -> Tensor:
    r"""Functional patch classifier: dropout, then a bias-free linear map of every patch's feature.

    .. math::
        L_{b,c,i,j} = \sum_d W_{c,d}\, \mathrm{Dropout}_p(F)_{b,d,i,j}

    (a 1×1 convolution without bias; Keras ``Dense(C, use_bias=False)`` on the channels-last grid). The
    logits include the background class when :math:`C = K + 1` (ViT-PCM); the per-patch softmax and the
    pooling are separate steps.

    Args:
        feat: patch features :math:`F` (e.g. the HV-BiLSTM output).
        weight: classifier weight :math:`W` (``C × D``, the transpose of the Keras ``(D, C)`` kernel).
        dropout: dropout rate :math:`p` in [0, 1) on :math:`F` (official 0.2).
        training: apply the dropout.

    Shape:
        - feat: :math:`(B, D, H, W)`.
        - weight: :math:`(C, D)`.
        - output: :math:`(B, C, H, W)` logits.

    Raises:
        TypeError: if ``feat`` or ``weight`` is not a floating-point tensor.
        ValueError: on wrong ranks, mismatched channels or a rate outside [0, 1).

    Example:
        >>> patch_classifier(torch.randn(2, 8, 4, 4), torch.randn(3, 8)).shape
        torch.Size([2, 3, 4, 4])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``PC``).
    """
    check_tensor(feat, "feat", ndim=4, dims="(B, D, H, W)", dtype="float")
    check_tensor(weight, "weight", ndim=2, dims="(C, D)", dtype="float")
    if weight.shape[1] != feat.shape[1]:
        raise ValueError(f"feat: expected {weight.shape[1]} channels (weight is {tuple(weight.shape)} = (C, D)), "
                         f"got shape {tuple(feat.shape)}")
    p = _check_rate(dropout, "dropout")
    x = F.dropout(feat, p, training=training) if p > 0.0 else feat
    return F.conv2d(x, weight[:, :, None, None])


class PatchClassifier(nn.Module):
    r"""ViT-PCM's patch classifier: dropout → bias-free linear layer per patch, with an L2 penalty.

    .. math::
        L = W \cdot \mathrm{Dropout}_p(F_{hv}) \ \text{(per patch)}, \qquad
        \mathcal L_{reg} = \lambda \sum_{c,d} W_{c,d}^2

    :math:`W \in \mathbb R^{C \times D}` has no bias and is initialised :math:`\mathcal N(0, \sigma^2)`
    with :math:`\sigma` = ``init_std`` (Keras ``RandomNormal(0, 0.05)``). :meth:`l2_penalty` returns
    :math:`\mathcal L_{reg}` (Keras ``L2(0.01)`` kernel regulariser, ViT-PCM's ``reg_loss``, added to the
    total loss with weight 1); it is not applied by ``forward``. The dropout is active in training mode only.
    The per-patch softmax over classes and the global max pooling are separate steps.

    Args:
        in_dim: D, feature channels (768 = 4·192 after the HV-BiLSTM).
        num_classes: C, classes **including background** (21 for VOC, 81 for COCO).
        dropout: dropout rate in [0, 1) on the features (official 0.2).
        init_std: standard deviation :math:`\sigma > 0` of the normal initialisation (official 0.05).
        l2: L2 coefficient :math:`\lambda \ge 0` of :meth:`l2_penalty` (official 0.01).

    Shape:
        - feat: :math:`(B, D, H, W)`.
        - output: :math:`(B, C, H, W)` logits.

    Raises:
        ValueError: on non-positive sizes, a rate outside [0, 1), ``init_std <= 0`` or ``l2 < 0``; in
            ``forward`` on a wrong rank or channel count.
        TypeError: in ``forward`` if ``feat`` is not a floating-point tensor.

    Example:
        >>> pc = PatchClassifier(in_dim=8, num_classes=3).eval()
        >>> pc(torch.randn(2, 8, 4, 4)).shape, pc.l2_penalty().shape
        (torch.Size([2, 3, 4, 4]), torch.Size([]))

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``PC``: ``Dense(...,
        kernel_initializer=RandomNormal(0.0, 0.05), kernel_regularizer=L2(0.01), use_bias=False)``;
        ``compute_reg_loss``).
    """

    def __init__(self, in_dim: int = 768, num_classes: int = 21, dropout: float = 0.2, init_std: float = 0.05,
                 l2: float = 0.01) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.dropout = _check_rate(dropout, "dropout")
        if isinstance(init_std, bool) or not isinstance(init_std, (int, float)) or not init_std > 0:
            raise ValueError(f"init_std: expected a positive float, got {init_std!r}")
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 >= 0:
            raise ValueError(f"l2: expected a float >= 0, got {l2!r}")
        self.in_dim = in_dim
        self.num_classes = num_classes
        self.init_std = float(init_std)
        self.l2 = float(l2)
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weight from :math:`\\mathcal N(0, \\sigma^2)`, :math:`\\sigma` = ``init_std``."""
        nn.init.normal_(self.weight, mean=0.0, std=self.init_std)

    def forward(self, feat: Tensor) -> Tensor:
        """Patch logits ``(B, num_classes, H, W)`` of the features ``feat (B, in_dim, H, W)``."""
        check_tensor(feat, "feat", ndim=4, dims="(B, D, H, W)", dtype="float")
        if feat.shape[1] != self.in_dim:
            raise ValueError(f"feat: expected {self.in_dim} channels (B, {self.in_dim}, H, W), "
                             f"got shape {tuple(feat.shape)}")
        return patch_classifier(feat, self.weight, dropout=self.dropout, training=self.training)

    def l2_penalty(self) -> Tensor:
        r"""The L2 kernel penalty :math:`\lambda \sum W^2` (a scalar, differentiable in the weight)."""
        return self.l2 * self.weight.square().sum()

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, num_classes={self.num_classes}, dropout={self.dropout}, "
                f"init_std={self.init_std}, l2={self.l2}")
