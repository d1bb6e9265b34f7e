"""Learnable affinity head on transformer attention logits (``common.md`` §5.1)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_shape, check_tensor

__all__ = ["AffinityFromAttention", "affinity_from_attention"]


def affinity_from_attention(attn_logits: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                            symmetrize: bool = False) -> Tensor:
    r"""Predict a token affinity matrix from stacked attention logits with a 1×1 convolution.

    The attention maps of several heads/blocks are treated as channels of an :math:`N \times N` image;
    a 1×1 convolution mixes them and a sigmoid gives the affinity

    .. math::
        \hat A = \sigma\Big(\sum_c w_c\, S_c + b\Big),\qquad
        S = L \ \text{or}\ S = L + L^\top \ (\texttt{symmetrize})

    where :math:`L` are the pre-softmax, unscaled logits :math:`q k^\top`.

    Args:
        attn_logits: stacked attention logits (e.g. ``torch.cat(attn[-2:], dim=1)``, 2 blocks × 8 heads
            = 16 channels for MiT-B1).
        weight: 1×1 convolution weight.
        bias: convolution bias or ``None``.
        symmetrize: add the transpose before the convolution (AFA: ``True``; TSCD: ``False``).

    Shape:
        - attn_logits: :math:`(B, C, N, N)`.
        - weight: :math:`(1, C, 1, 1)`; bias: :math:`(1,)`.
        - output: :math:`(B, N, N)` in :math:`(0, 1)`.

    Raises:
        TypeError: if ``attn_logits`` or ``weight`` is not a floating-point tensor.
        ValueError: if ``attn_logits`` is not :math:`(B, C, N, N)` or ``weight`` is not :math:`(1, C, 1, 1)`.

    Example:
        >>> logits, weight = torch.randn(2, 4, 9, 9), torch.ones(1, 4, 1, 1)
        >>> a = affinity_from_attention(logits, weight, symmetrize=True)
        >>> tuple(a.shape), torch.allclose(a, a.transpose(1, 2))
        ((2, 9, 9), True)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, wetr/model_attn_aff.py (``attn_proj``);
        TSCD, Xu et al. AAAI 2023; SCD-AAAI2023/network/TSCD_model.py (no symmetrisation).
    """
    check_tensor(attn_logits, "attn_logits", ndim=4, dims="(B, C, N, N)", dtype="float")
    B, C, N, N2 = attn_logits.shape
    if N != N2:
        raise ValueError(f"attn_logits: expected square maps (B, C, N, N), got {tuple(attn_logits.shape)}")
    check_tensor(weight, "weight", ndim=4, dims="(1, C, 1, 1)", dtype="float")
    check_shape(weight, "weight", (1, C, 1, 1), "(1, C, 1, 1)")
    x = attn_logits + attn_logits.transpose(-1, -2) if symmetrize else attn_logits
    return torch.sigmoid(F.conv2d(x, weight, bias))[:, 0]


class AffinityFromAttention(nn.Module):
    r"""Learnable affinity head: 1×1 convolution (with bias) over attention logits, then sigmoid.

    .. math::
        \hat A = \sigma\Big(\sum_c w_c\, S_c + b\Big) \in (0, 1)^{B \times N \times N},\qquad
        S = L \ \text{or}\ L + L^\top

    Initialisation as in AFA: Kaiming-normal weight (``a=√5``, ``mode="fan_out"``), PyTorch's default
    bias initialisation. Trained with 10× the base learning rate in AFA/TSCD.

    Args:
        in_channels: number of stacked attention maps (MiT-B1 stage 4, last two blocks: 2×8 = 16).
        symmetrize: add the transpose of the logits before the convolution (AFA ``True``, TSCD ``False``).

    Shape:
        - attn_logits: :math:`(B, C_{in}, N, N)`, pre-softmax unscaled :math:`q k^\top`.
        - output: :math:`(B, N, N)` in :math:`(0, 1)`.

    Raises:
        ValueError: if ``in_channels`` is not positive or the input has the wrong shape.

    Example:
        >>> head = AffinityFromAttention(in_channels=16)
        >>> head(torch.randn(2, 16, 64, 64)).shape
        torch.Size([2, 64, 64])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, wetr/model_attn_aff.py;
        TSCD, Xu et al. AAAI 2023; SCD-AAAI2023/network/TSCD_model.py.
    """

    def __init__(self, in_channels: int = 16, symmetrize: bool = False) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels: expected a positive int, got {in_channels}")
        self.in_channels = in_channels
        self.symmetrize = bool(symmetrize)
        self.proj = nn.Conv2d(in_channels, 1, kernel_size=1, bias=True)
        nn.init.kaiming_normal_(self.proj.weight, a=math.sqrt(5), mode="fan_out")

    def forward(self, attn_logits: Tensor) -> Tensor:
        """Affinity ``(B, N, N)`` in (0, 1)."""
        return affinity_from_attention(attn_logits, self.proj.weight, self.proj.bias, symmetrize=self.symmetrize)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, symmetrize={self.symmetrize}"
