"""SLRNet's feature decoder: DeepLab ASPP on the deepest map, fused with a 1×1 stride-4 skip (→ F)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["ASPP", "ASPPDecoder"]


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return value


def _check_prob(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {value}")
    return float(value)


def _check_bn(momentum: object, eps: object) -> tuple[float, float]:
    for v, n in ((momentum, "bn_momentum"), (eps, "bn_eps")):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{n}: expected a float, got {type(v).__name__}")
    if not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"bn_momentum: expected a value in [0, 1], got {momentum}")
    if not float(eps) > 0.0:
        raise ValueError(f"bn_eps: expected a positive float, got {eps}")
    return float(momentum), float(eps)


def _init_conv_bn(module: nn.Module) -> None:
    """Official init of new layers: Kaiming-normal conv weights (PyTorch defaults: fan-in, gain √2),
    BatchNorm weight 1 / bias 0 (conv biases keep PyTorch's default init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.BatchNorm2d) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _ConvBNReLU(nn.Sequential):
    """conv (no bias) + BatchNorm + ReLU; indices 0/1/2 as the official ``nn.Sequential`` blocks."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int, momentum: float, eps: float) -> None:
        pad = 0 if kernel_size == 1 else dilation
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout, eps=eps, momentum=momentum), nn.ReLU())


class ASPP(nn.Module):
    r"""Atrous spatial pyramid pooling (DeepLabv3) as configured by SLRNet / 1-Stage-WSeg.

    One 1×1 branch, one 3×3 branch per further dilation and an image-pooling branch, each conv (no
    bias) + BatchNorm + ReLU with ``out_channels`` channels; the pooled branch is broadcast back to the
    map size (the official bilinear ``align_corners=True`` upsampling of a 1×1 map is a broadcast); the
    ``len(dilations) + 1`` maps are concatenated, projected by a 1×1 conv + BN + ReLU and passed through
    element-wise ``Dropout(dropout)``:

    .. math::
        A = \mathrm{Drop}\Big(\mathrm{ReLU}\big(\mathrm{BN}(W_p\,[b_{1}(X); b_{r_2}(X); \dots; b_{r_n}(X);
            \mathrm{bcast}(b_{\mathrm{pool}}(\bar X))])\big)\Big)

    **Frozen statistics** (``freeze_bn_stats=True``, official): SLRNet keeps every BatchNorm of the ASPP
    in eval mode, also while the model trains (``_fix_running_stats(self.aspp, fix_params=False)``); the
    affine parameters are trained. The running statistics therefore stay at their initial values
    (mean 0, variance 1) unless a checkpoint is loaded, i.e. each BN acts as
    :math:`\gamma x / \sqrt{1 + \epsilon} + \beta`. :meth:`train` enforces this (also right after
    construction); ``False`` gives ordinary batch statistics.

    Submodule names follow the official state-dict layout (``aspp1`` … ``aspp4`` with ``atrous_conv``
    and ``bn``, ``global_avg_pool.{1,2}``, ``conv1``, ``bn1``), so an official checkpoint loads by prefix.

    Args:
        in_channels: channels of the input map (WideResNet-38 conv6: 4096).
        out_channels: width of every branch and of the output (256).
        dilations: dilation of each conv branch; the first branch is the 1×1 conv (its dilation has no
            effect), the others 3×3 with ``padding = dilation`` (official output stride 8:
            ``(1, 12, 24, 36)``; output stride 16 would be ``(1, 6, 12, 18)``).
        dropout: element-wise dropout probability on the output (0.5).
        bn_momentum: BatchNorm momentum (official ``_BatchNorm``: 0.05).
        bn_eps: BatchNorm epsilon (1e-5).
        freeze_bn_stats: keep the BN layers in eval mode during training (official: True).

    Shape:
        - input: :math:`(B, C_{in}, h, w)`
        - output: :math:`(B, C_{out}, h, w)`

    Raises:
        TypeError / ValueError: on invalid hyperparameters, or (``forward``) a non-float / non-4-D input or
            a wrong channel count.

    Example:
        >>> aspp = wsseg.layers.ASPP(32, 8, dilations=(1, 2, 3, 4))
        >>> aspp(torch.rand(2, 32, 9, 9)).shape
        torch.Size([2, 8, 9, 9])

    Source:
        Chen et al., "Rethinking Atrous Convolution", 2017 (DeepLabv3); SLRNet, Pan et al. IJCV 2022,
        github.com/DesertsP/SLRNet ``models/mods/aspp.py`` (``ASPP``) and ``models/single_stage.py``
        (BN momentum 0.05, frozen ASPP statistics).
    """

    def __init__(self, in_channels: int = 4096, out_channels: int = 256,
                 dilations: Sequence[int] = (1, 12, 24, 36), dropout: float = 0.5, bn_momentum: float = 0.05,
                 bn_eps: float = 1e-5, freeze_bn_stats: bool = True) -> None:
        super().__init__()
        self.in_channels = _check_int(in_channels, "in_channels")
        self.out_channels = _check_int(out_channels, "out_channels")
        if isinstance(dilations, (str, bytes)) or not isinstance(dilations, Sequence) or len(dilations) == 0:
            raise ValueError(f"dilations: expected a non-empty sequence of positive ints, got {dilations!r}")
        self.dilations = tuple(_check_int(d, f"dilations[{i}]") for i, d in enumerate(dilations))
        self.dropout_p = _check_prob(dropout, "dropout")
        self.bn_momentum, self.bn_eps = _check_bn(bn_momentum, bn_eps)
        if not isinstance(freeze_bn_stats, bool):
            raise TypeError(f"freeze_bn_stats: expected a bool, got {type(freeze_bn_stats).__name__}")
        self.freeze_bn_stats = freeze_bn_stats
        m, e, c = self.bn_momentum, self.bn_eps, self.out_channels
        for i, d in enumerate(self.dilations):
            self.add_module(f"aspp{i + 1}", _Branch(self.in_channels, c, 1 if i == 0 else 3, d, m, e))
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), *_ConvBNReLU(self.in_channels, c, 1, 1, m, e))
        self.conv1 = nn.Conv2d((len(self.dilations) + 1) * c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c, eps=e, momentum=m)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(self.dropout_p)
        self.reset_parameters()
        self.train(self.training)

    def reset_parameters(self) -> None:
        """Official init: Kaiming-normal convs, BN weight 1 / bias 0, running statistics reset."""
        _init_conv_bn(self)
        for mod in self.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()

    def train(self, mode: bool = True) -> ASPP:
        """Set the mode; with ``freeze_bn_stats`` the BN layers stay in eval mode (official)."""
        super().train(mode)
        if self.freeze_bn_stats:
            for mod in self.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        """ASPP output ``(B, out_channels, h, w)`` of ``x (B, in_channels, h, w)``."""
        check_tensor(x, "x", ndim=4, dims="(B, C, h, w)", dtype="float")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"x: expected {self.in_channels} channels (in_channels), got shape {tuple(x.shape)}")
        branches = [getattr(self, f"aspp{i + 1}")(x) for i in range(len(self.dilations))]
        pooled = self.global_avg_pool(x)
        branches.append(pooled.expand(-1, -1, x.shape[-2], x.shape[-1]))
        y = self.relu(self.bn1(self.conv1(torch.cat(branches, dim=1))))
        return self.dropout(y)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, dilations={self.dilations}, "
                f"dropout={self.dropout_p}, bn_momentum={self.bn_momentum}, bn_eps={self.bn_eps}, "
                f"freeze_bn_stats={self.freeze_bn_stats}")


class _Branch(nn.Module):
    """One ASPP conv branch with the official attribute names ``atrous_conv`` / ``bn`` / ``relu``."""

    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.atrous_conv, self.bn, self.relu = _ConvBNReLU(cin, cout, kernel_size, dilation, momentum, eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.atrous_conv(x)))


class ASPPDecoder(nn.Module):
    r"""SLRNet's feature decoder: ASPP on the deepest map, upsampled and fused with a stride-4 skip → F.

    DeepLabv3+-style: :class:`ASPP` on the deep map :math:`X_d` (WideResNet-38 conv6, 4096 channels,
    stride 8), bilinear upsampling (``align_corners=True``) to the skip map :math:`X_s` (conv3, 256
    channels, stride 4), concatenation with a 1×1 projection of the skip (48 channels) and a 3×3 conv:

    .. math::
        F = \mathrm{ReLU}\Big(\mathrm{BN}\big(W_{3\times3} * [\,\mathrm{up}(\mathrm{ASPP}(X_d));\;
            \mathrm{ReLU}(\mathrm{BN}(W_{1\times1} X_s))\,]\big)\Big)

    giving :math:`F` (B×256×81×81 for a 321 crop), the features SLRNet factorises
    (:class:`~wsseg.layers.LowRankFactorization`) and feeds to its heads. Channel widths, dilations,
    dropout and initialisation are the official ones: Kaiming-normal conv weights (fan-in, gain √2), BN
    weight 1 / bias 0, BN momentum 0.05 and eps 1e-5. Only the ASPP's BN statistics are frozen
    (``freeze_aspp_bn_stats``, see :class:`ASPP`); the two fusion BNs train normally. Plain
    :class:`torch.nn.BatchNorm2d` (convert with :func:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`
    for DDP). No bias in any conv.

    Submodule names follow the official checkpoint (``aspp``, ``fc8_skip``, ``fc8_x``).

    Args:
        in_channels: channels of the deep map (4096).
        skip_channels: channels of the skip map (256).
        out_channels: width of the ASPP and of F (256).
        skip_out_channels: width of the skip projection (48; the fusion conv sees 256 + 48 = 304).
        aspp_dilations: ASPP dilations, see :class:`ASPP` (``(1, 12, 24, 36)``).
        aspp_dropout: dropout at the ASPP output (0.5).
        bn_momentum: BatchNorm momentum of every new BN (0.05).
        bn_eps: BatchNorm epsilon (1e-5).
        freeze_aspp_bn_stats: keep the ASPP's BNs in eval mode while training (official True).

    Shape:
        - features: a sequence of maps ordered shallow → deep (as
          :attr:`wsseg.backbones.BackboneOutput.features`); ``features[0]`` is the skip
          :math:`(B, C_s, H_s, W_s)`, ``features[-1]`` the deep map :math:`(B, C_{in}, h, w)`;
          maps in between are ignored.
        - output: :math:`(B, C_{out}, H_s, W_s)`.

    Raises:
        TypeError: if ``features`` is not a list/tuple of floating-point tensors.
        ValueError: on invalid hyperparameters, fewer than two maps, wrong channel counts or different
            batch sizes.

    Example:
        >>> dec = wsseg.layers.ASPPDecoder(in_channels=32, skip_channels=16, out_channels=8,
        ...                                skip_out_channels=4)
        >>> skip, deep = torch.rand(2, 16, 11, 11), torch.rand(2, 32, 6, 6)
        >>> dec([skip, deep]).shape
        torch.Size([2, 8, 11, 11])

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py``
        (``Net.backbone_forward``), ``models/single_stage.py`` (``fc8_skip``, ``fc8_x``, ``init_weights``),
        ``models/mods/aspp.py``; built on 1-Stage-WSeg (Araslanov & Roth, CVPR 2020).
    """

    def __init__(self, in_channels: int = 4096, skip_channels: int = 256, out_channels: int = 256,
                 skip_out_channels: int = 48, aspp_dilations: Sequence[int] = (1, 12, 24, 36),
                 aspp_dropout: float = 0.5, bn_momentum: float = 0.05, bn_eps: float = 1e-5,
                 freeze_aspp_bn_stats: bool = True) -> None:
        super().__init__()
        self.skip_channels = _check_int(skip_channels, "skip_channels")
        self.skip_out_channels = _check_int(skip_out_channels, "skip_out_channels")
        self.aspp = ASPP(in_channels, out_channels, aspp_dilations, aspp_dropout, bn_momentum, bn_eps,
                         freeze_aspp_bn_stats)
        m, e = self.aspp.bn_momentum, self.aspp.bn_eps
        self.fc8_skip = _ConvBNReLU(self.skip_channels, self.skip_out_channels, 1, 1, m, e)
        self.fc8_x = _ConvBNReLU(self.aspp.out_channels + self.skip_out_channels, self.aspp.out_channels, 3, 1, m, e)
        self.reset_parameters()

    @property
    def in_channels(self) -> int:
        return self.aspp.in_channels

    @property
    def out_channels(self) -> int:
        return self.aspp.out_channels

    def reset_parameters(self) -> None:
        """Official init (Kaiming-normal convs, BN 1 / 0, running statistics reset)."""
        self.aspp.reset_parameters()
        for block in (self.fc8_skip, self.fc8_x):
            _init_conv_bn(block)
            block[1].reset_running_stats()

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """F ``(B, out_channels, H_s, W_s)`` from ``[skip, ..., deep]``."""
        if isinstance(features, Tensor) or not isinstance(features, (list, tuple)):
            raise TypeError(f"features: expected a list/tuple of tensors [skip, ..., deep], "
                            f"got {type(features).__name__}")
        if len(features) < 2:
            raise ValueError(f"features: expected at least two maps [skip, ..., deep], got {len(features)}")
        skip, deep = features[0], features[-1]
        check_tensor(skip, "features[0]", ndim=4, dims="(B, C_s, H_s, W_s)", dtype="float")
        check_tensor(deep, "features[-1]", ndim=4, dims="(B, C_in, h, w)", dtype="float")
        if skip.shape[1] != self.skip_channels:
            raise ValueError(f"features[0]: expected {self.skip_channels} channels (skip_channels), "
                             f"got shape {tuple(skip.shape)}")
        if deep.shape[1] != self.in_channels:
            raise ValueError(f"features[-1]: expected {self.in_channels} channels (in_channels), "
                             f"got shape {tuple(deep.shape)}")
        if skip.shape[0] != deep.shape[0]:
            raise ValueError(f"features[-1]: batch size {deep.shape[0]} differs from features[0] ({skip.shape[0]})")
        x = self.aspp(deep)
        s = self.fc8_skip(skip)
        x = F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=True)
        return self.fc8_x(torch.cat([x, s], dim=1))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, skip_channels={self.skip_channels}, "
                f"out_channels={self.out_channels}, skip_out_channels={self.skip_out_channels}")
