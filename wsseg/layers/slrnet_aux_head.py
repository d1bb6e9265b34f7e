"""SLRNet's auxiliary segmentation head, whose background logit is derived from the foreground (1 − max)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

from .aspp_decoder import _check_bn, _check_int, _check_prob

__all__ = ["SLRNetAuxHead", "prepend_background", "BACKGROUND_MODES"]

#: How :func:`prepend_background` builds the background logit.
BACKGROUND_MODES = ("constant", "one_minus_max")


def prepend_background(fg_logits: Tensor, mode: str = "constant", value: float = 1.0) -> Tensor:
    r"""Prepend a background logit (channel 0) to foreground logits.

    .. math::
        z_0 = \begin{cases} v & \texttt{mode="constant"} \quad\text{(main head, 1-Stage-WSeg)} \\
        v - \max_k z_k & \texttt{mode="one\_minus\_max"} \quad\text{(SLRNet's aux head)}\end{cases}
        \qquad \text{output} = [z_0; z_1; \dots; z_K]

    with :math:`v` = ``value`` (official 1 in both cases). The maximum is ``Tensor.max(dim=1)``, as
    officially: its gradient goes to a single maximal channel (PyTorch's returned index) — unlike
    ``amax``, which splits it among ties. The softmax over the ``K + 1`` channels gives the masks.

    Args:
        fg_logits: foreground logits, float.
        mode: ``"constant"`` or ``"one_minus_max"``.
        value: the constant :math:`v`.

    Returns:
        The logits with background, dtype and device of ``fg_logits``.

    Shape:
        - fg_logits: :math:`(B, K, h, w)` (any number of trailing dims ≥ 0 after ``K`` works as well)
        - output: :math:`(B, K + 1, h, w)`

    Raises:
        TypeError: if ``fg_logits`` is not a floating-point tensor or ``value`` is not a number.
        ValueError: if ``fg_logits`` has fewer than 2 dims or no channel, or ``mode`` is unknown.

    Example:
        >>> z = torch.tensor([[0.5, 2.0, -1.0]])[..., None, None]
        >>> wsseg.layers.prepend_background(z).flatten().tolist()
        [1.0, 0.5, 2.0, -1.0]
        >>> wsseg.layers.prepend_background(z, "one_minus_max").flatten().tolist()
        [-1.0, 0.5, 2.0, -1.0]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py``
        (``Net.segmentation_forward``: constant 1; ``Net.aux_forward``: ``1 - max``); 1-Stage-WSeg
        (Araslanov & Roth, CVPR 2020) ``models/single_stage.py``.
    """
    check_tensor(fg_logits, "fg_logits", dtype="float")
    if fg_logits.dim() < 2 or fg_logits.shape[1] == 0:
        raise ValueError(f"fg_logits: expected a tensor (B, K, ...) with K >= 1, got shape {tuple(fg_logits.shape)}")
    if mode not in BACKGROUND_MODES:
        raise ValueError(f"mode: expected one of {BACKGROUND_MODES}, got {mode!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"value: expected a float, got {type(value).__name__}")
    if mode == "constant":
        bg = torch.full_like(fg_logits[:, :1], float(value))
    else:
        bg = float(value) - fg_logits.max(dim=1, keepdim=True)[0]
    return torch.cat([bg, fg_logits], dim=1)


class SLRNetAuxHead(nn.Module):
    r"""SLRNet's auxiliary head on the decoder features F (before the low-rank factorisation).

    3×3 conv (no bias) + BatchNorm + ReLU + element-wise ``Dropout(dropout)`` + 1×1 conv (bias) to ``K``
    foreground logits, then the background logit :math:`1 - \max_k z_k` is prepended
    (:func:`prepend_background`, ``mode="one_minus_max"``):

    .. math::
        z = W_2\,\mathrm{Drop}\big(\mathrm{ReLU}(\mathrm{BN}(W_1 * F))\big) + b_2, \qquad
        \text{logits} = [\,1 - \max_k z_k;\; z\,]

    Its 21-way logits give the aux masks (softmax), the aux classification and segmentation losses
    (weight 0.4) and, detached, the class prototypes that initialise the dictionary
    (:class:`~wsseg.layers.PrototypeInit`). Init as officially: Kaiming-normal conv weights (fan-in,
    gain √2), BN weight 1 / bias 0, BN momentum 0.05, eps 1e-5, the last conv's bias PyTorch's default.

    Args:
        in_channels: channels of F (256).
        num_classes: foreground classes ``K`` (VOC 20); the output has ``K + 1`` channels.
        hidden_channels: width of the 3×3 conv (256).
        dropout: dropout probability (0.5, ``nn.Dropout``, element-wise).
        bn_momentum: BatchNorm momentum (0.05).
        bn_eps: BatchNorm epsilon (1e-5).

    Shape:
        - features: :math:`(B, C_{in}, h, w)`
        - output: :math:`(B, K + 1, h, w)`, background at channel 0

    Raises:
        TypeError / ValueError: on invalid hyperparameters, or (``forward``) a non-float / non-4-D input or
            a wrong channel count.

    Example:
        >>> head = wsseg.layers.SLRNetAuxHead(in_channels=16, num_classes=5, hidden_channels=8).eval()
        >>> logits = head(torch.rand(2, 16, 7, 7))
        >>> logits.shape
        torch.Size([2, 6, 7, 7])
        >>> torch.allclose(logits[:, 0], 1 - logits[:, 1:].amax(dim=1))
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py`` (``Net.aux_head``,
        ``Net.aux_forward``; init ``SingleStageNet.init_weights`` in ``models/single_stage.py``).
    """

    def __init__(self, in_channels: int = 256, num_classes: int = 20, hidden_channels: int = 256,
                 dropout: float = 0.5, bn_momentum: float = 0.05, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels")
        self.num_classes = _check_int(num_classes, "num_classes")
        self.hidden_channels = _check_int(hidden_channels, "hidden_channels")
        self.dropout_p = _check_prob(dropout, "dropout")
        self.bn_momentum, self.bn_eps = _check_bn(bn_momentum, bn_eps)
        self.conv = nn.Conv2d(self.in_channels, self.hidden_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(self.hidden_channels, eps=self.bn_eps, momentum=self.bn_momentum)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(self.dropout_p)
        self.classifier = nn.Conv2d(self.hidden_channels, self.num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Kaiming-normal conv weights, BN 1 / 0; the classifier bias keeps PyTorch's init."""
        nn.init.kaiming_normal_(self.conv.weight)
        self.classifier.reset_parameters()
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.reset_running_stats()

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, K + 1, h, w)`` (background ``1 - max`` first) of ``features (B, C_in, h, w)``."""
        check_tensor(features, "features", ndim=4, dims="(B, C, h, w)", dtype="float")
        if features.shape[1] != self.in_channels:
            raise ValueError(f"features: expected {self.in_channels} channels (in_channels), "
                             f"got shape {tuple(features.shape)}")
        z = self.classifier(self.dropout(self.relu(self.bn(self.conv(features)))))
        return prepend_background(z, "one_minus_max", 1.0)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"hidden_channels={self.hidden_channels}, dropout={self.dropout_p}, "
                f"bn_momentum={self.bn_momentum}, bn_eps={self.bn_eps}, background='one_minus_max'")
