"""DeepLab-LargeFOV-style segmentation head (two dilated 3×3 convs + 1×1 classifier), CoSA / ToCo decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["LargeFOVHead", "large_fov_head"]


def _check_weight(w: object, name: str, kernel: int) -> Tensor:
    check_tensor(w, name, ndim=4, dims="(C_out, C_in, k, k)", dtype="float")
    if tuple(w.shape[-2:]) != (kernel, kernel):
        raise ValueError(f"{name}: expected a {kernel}x{kernel} kernel (C_out, C_in, {kernel}, {kernel}), "
                         f"got shape {tuple(w.shape)}")
    return w


def large_fov_head(feat: Tensor, weight1: Tensor, weight2: Tensor, weight3: Tensor,
                   bias1: Tensor | None = None, bias2: Tensor | None = None, bias3: Tensor | None = None, *,
                   dilation: int = 5) -> Tensor:
    r"""Functional LargeFOV head: dilated 3×3 conv → ReLU → dilated 3×3 conv → ReLU → 1×1 conv.

    .. math::
        Y = W_3 * \mathrm{ReLU}\big(W_2 *_d \mathrm{ReLU}(W_1 *_d F + b_1) + b_2\big) + b_3

    where :math:`*_d` is a 3×3 convolution with dilation :math:`d` and zero padding :math:`d` (the
    spatial size is kept). The receptive field of one output pixel is :math:`(4d + 1)^2` input pixels
    (41×41 for the official :math:`d = 5`). The official head has no biases (pass ``None``).

    Args:
        feat: feature map :math:`F` (e.g. ViT patch tokens at stride 16).
        weight1: first dilated conv weight, (C_h, D, 3, 3).
        weight2: second dilated conv weight, (C_h, C_h, 3, 3).
        weight3: classifier weight, (C, C_h, 1, 1).
        bias1, bias2, bias3: optional biases (official: none).
        dilation: dilation (and padding) :math:`d` of the two 3×3 convs (official 5).

    Shape:
        - feat: :math:`(B, D, h, w)`.
        - output: :math:`(B, C, h, w)`.

    Raises:
        TypeError: if a tensor is not floating point.
        ValueError: on wrong ranks, kernel sizes, channel counts or a non-positive ``dilation``.

    Example:
        >>> w1, w2, w3 = torch.randn(4, 8, 3, 3), torch.randn(4, 4, 3, 3), torch.randn(3, 4, 1, 1)
        >>> large_fov_head(torch.randn(2, 8, 7, 9), w1, w2, w3).shape
        torch.Size([2, 3, 7, 9])

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, models/decoder/conv_head.py (``LargeFOV``),
        itself from ToCo (Ru et al. CVPR 2023); DeepLab-LargeFOV, Chen et al. ICLR 2015.
    """
    check_tensor(feat, "feat", ndim=4, dims="(B, D, h, w)", dtype="float")
    _check_weight(weight1, "weight1", 3)
    _check_weight(weight2, "weight2", 3)
    _check_weight(weight3, "weight3", 1)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation: expected a positive int, got {dilation!r}")
    for name, w, cin in (("weight1", weight1, feat.shape[1]), ("weight2", weight2, weight1.shape[0]),
                         ("weight3", weight3, weight2.shape[0])):
        if w.shape[1] != cin:
            raise ValueError(f"{name}: expected {cin} input channels, got shape {tuple(w.shape)}")
    x = F.relu(F.conv2d(feat, weight1, bias1, padding=dilation, dilation=dilation))
    x = F.relu(F.conv2d(x, weight2, bias2, padding=dilation, dilation=dilation))
    return F.conv2d(x, weight3, bias3)


class LargeFOVHead(nn.Module):
    r"""DeepLab-LargeFOV-style segmentation head of CoSA (and ToCo).

    conv3×3 (D → C_h, dilation :math:`d`, padding :math:`d`) → ReLU → conv3×3 (C_h → C_h, dilation
    :math:`d`, padding :math:`d`) → ReLU → conv1×1 (C_h → C), see :func:`large_fov_head`:

    .. math::
        Y = W_3 * \mathrm{ReLU}\big(W_2 *_d \mathrm{ReLU}(W_1 *_d F)\big)

    The output keeps the input's spatial size (stride 16 for a ViT-B/16 at 448 → 28×28). The
    official head's ``_init_weights`` is never called, so the PyTorch **default initialisation** is
    kept (weights :math:`\mathcal U(\pm 1/\sqrt{\text{fan\_in}})`); it has **no biases**
    (``bias=False``). The attribute names ``conv6``, ``conv7``, ``conv8`` follow the official module so
    that official checkpoints load by key.

    Args:
        in_channels: D, channels of the input feature map (768 for ViT-B).
        hidden_channels: C_h, width of the two dilated convolutions (official 512).
        num_classes: C, output channels (K + 1 with background, 21 for VOC).
        dilation: :math:`d` (official 5).
        bias: add biases to the three convolutions (official ``False``).

    Shape:
        - feat: :math:`(B, D, h, w)`.
        - output: :math:`(B, C, h, w)`.

    Raises:
        ValueError: on non-positive sizes or ``dilation``; in ``forward`` if ``feat`` is not
            :math:`(B, D, h, w)` with D = ``in_channels``.
        TypeError: in ``forward`` if ``feat`` is not a floating-point tensor.

    Example:
        >>> head = LargeFOVHead(in_channels=8, hidden_channels=4, num_classes=3)
        >>> head(torch.randn(2, 8, 7, 9)).shape
        torch.Size([2, 3, 7, 9])

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, models/decoder/conv_head.py (``LargeFOV``),
        models/__init__.py (``VITNetwork``); ToCo, Ru et al. CVPR 2023.
    """

    def __init__(self, in_channels: int = 768, hidden_channels: int = 512, num_classes: int = 21,
                 dilation: int = 5, bias: bool = False) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("hidden_channels", hidden_channels),
                        ("num_classes", num_classes), ("dilation", dilation)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.num_classes = num_classes
        self.dilation = dilation
        self.bias = bool(bias)
        self.conv6 = nn.Conv2d(in_channels, hidden_channels, 3, padding=dilation, dilation=dilation, bias=bias)
        self.conv7 = nn.Conv2d(hidden_channels, hidden_channels, 3, padding=dilation, dilation=dilation,
                               bias=bias)
        self.conv8 = nn.Conv2d(hidden_channels, num_classes, 1, bias=bias)

    def forward(self, feat: Tensor) -> Tensor:
        """Segmentation logits ``(B, num_classes, h, w)`` of the feature map ``feat (B, D, h, w)``."""
        check_tensor(feat, "feat", ndim=4, dims="(B, D, h, w)", dtype="float")
        if feat.shape[1] != self.in_channels:
            raise ValueError(f"feat: expected {self.in_channels} channels (B, {self.in_channels}, h, w), "
                             f"got shape {tuple(feat.shape)}")
        return large_fov_head(feat, self.conv6.weight, self.conv7.weight, self.conv8.weight,
                              self.conv6.bias, self.conv7.bias, self.conv8.bias, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
                f"num_classes={self.num_classes}, dilation={self.dilation}, bias={self.bias}")
