"""1-Stage-WSeg's segmentation head as used by SLRNet: global cue injection + stochastic gate + classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

from .aspp_decoder import _check_bn, _check_int, _check_prob
from .slrnet_aux_head import prepend_background

__all__ = ["GCIHead", "GlobalCueInjection", "StochasticGate", "stochastic_gate"]


def _check_pair(deep: object, shallow: object, same_channels: bool = True) -> None:
    check_tensor(deep, "deep", ndim=4, dims="(B, C, h, w)", dtype="float")
    check_tensor(shallow, "shallow", ndim=4, dims="(B, C, h, w)", dtype="float")
    if same_channels and shallow.shape != deep.shape:
        raise ValueError(f"shallow: expected the shape of deep {tuple(deep.shape)}, got {tuple(shallow.shape)}")
    if shallow.shape[0] != deep.shape[0] or shallow.shape[-2:] != deep.shape[-2:]:
        raise ValueError(f"shallow: expected batch size and spatial size of deep {tuple(deep.shape)}, "
                         f"got shape {tuple(shallow.shape)}")


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a float, got {type(alpha).__name__}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1), got {alpha}")
    return float(alpha)


def stochastic_gate(deep: Tensor, shallow: Tensor, *, alpha: float = 0.3, training: bool = False,
                    generator: torch.Generator | None = None) -> Tensor:
    r"""Stochastic gate (SG) of 1-Stage-WSeg: mix deep and shallow features.

    Training (``training=True``): an element-wise Bernoulli mask :math:`m \sim \mathcal B(1 - \alpha)`
    selects the (shifted and rescaled) deep features or the shallow ones; evaluation: a fixed convex mix.

    .. math::
        \text{train: } x = m \odot \frac{d - \alpha s}{1 - \alpha} + (1 - m) \odot s, \qquad
        \text{eval: } x = (1 - \alpha)\, d + \alpha\, s

    Note the official asymmetry: in training :math:`\mathbb E[x] = d` (the deep features alone), at test
    time the mix :math:`(1-\alpha) d + \alpha s`. As officially, the mask is drawn by
    ``(1 - α) · dropout(ones, α)`` (so its non-zero value is :math:`(1-\alpha)/(1-\alpha)` in floating
    point); with ``generator=None`` this uses :func:`torch.nn.functional.dropout` on
    ``torch.ones_like(deep)`` and torch's global RNG, as the official code; with a :class:`torch.Generator`
    the Bernoulli draw uses that generator (on CPU the same numbers as the global RNG with the same seed).
    ``alpha = 0`` returns ``deep`` and draws nothing.

    **What "same seed, same mask" needs.** The mask takes the memory layout of ``deep`` and torch fills it
    in memory order, so the same seed gives the official mask bit for bit (CPU and CUDA) only when
    ``deep`` is laid out as the official one: NCHW-ordered, as the output maps of
    :class:`~wsseg.layers.LowRankFactorization` are. On a channels-last ``deep`` the same random numbers
    land on other elements (the same distribution, another mask).

    Args:
        deep: deep features :math:`d` (SLRNet: the factorised features).
        shallow: shallow features :math:`s` (the GCI output), same shape.
        alpha: probability of selecting the shallow features, in [0, 1) (official 0.3).
        training: stochastic (True) or deterministic (False) behaviour.
        generator: optional RNG for the mask (training only).

    Returns:
        The gated features, shape and dtype of ``deep``; differentiable w.r.t. both inputs.

    Shape:
        - deep, shallow: :math:`(B, C, h, w)`
        - output: :math:`(B, C, h, w)`

    Raises:
        TypeError: if an input is not a floating-point tensor or ``alpha`` not a number.
        ValueError: if the shapes differ or ``alpha`` is outside [0, 1).

    Example:
        >>> d, s = torch.ones(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
        >>> wsseg.layers.stochastic_gate(d, s, alpha=0.3)[0, 0, 0, 0].item()  # eval: 0.7 d + 0.3 s
        0.699999988079071
        >>> g = torch.Generator().manual_seed(0)
        >>> x = wsseg.layers.stochastic_gate(d, s, alpha=0.3, training=True, generator=g)
        >>> sorted({round(v, 4) for v in x.flatten().tolist()})  # d / 0.7 or s
        [0.0, 1.4286]

    Source:
        Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020
        (github.com/visinf/1-stage-wseg ``models/mods/sg.py``), as copied in github.com/DesertsP/SLRNet
        ``models/mods/sg.py`` (``StochasticGate``; SLRNet calls it with ``alpha_rate=0.3``).
    """
    _check_pair(deep, shallow)
    alpha = _check_alpha(alpha)
    if not isinstance(training, bool):
        raise TypeError(f"training: expected a bool, got {type(training).__name__}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")
    if not training:
        return (1 - alpha) * deep + alpha * shallow
    if alpha == 0.0:
        return deep
    if generator is None:
        keep = F.dropout(torch.ones_like(deep), alpha)
    else:
        keep = torch.empty_like(deep).bernoulli_(1 - alpha, generator=generator).div_(1 - alpha)
    mask = (1 - alpha) * keep
    deep = (deep - alpha * shallow) / max(1e-8, 1 - alpha)
    return mask * deep + (1 - mask) * shallow


class StochasticGate(nn.Module):
    r"""Module form of :func:`stochastic_gate`: stochastic in ``train()`` mode, deterministic in ``eval()``.

    Parameter-free; the training mask uses torch's global RNG (seed with :func:`torch.manual_seed`).

    Args:
        alpha: probability of selecting the shallow features (official 0.3).

    Shape:
        - deep, shallow: :math:`(B, C, h, w)`
        - output: :math:`(B, C, h, w)`

    Raises:
        ValueError: if ``alpha`` is outside [0, 1); see :func:`stochastic_gate` for the input checks.

    Example:
        >>> sg = wsseg.layers.StochasticGate(0.3).eval()
        >>> sg(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)).flatten().tolist()
        [0.699999988079071, 0.699999988079071, 0.699999988079071, 0.699999988079071]

    Source:
        1-Stage-WSeg (Araslanov & Roth, CVPR 2020); github.com/DesertsP/SLRNet ``models/mods/sg.py``.
    """

    def __init__(self, alpha: float = 0.3) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        """Gated features; stochastic in training mode."""
        return stochastic_gate(deep, shallow, alpha=self.alpha, training=self.training)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class GlobalCueInjection(nn.Module):
    r"""Global cue injection (GCI): AdaIN of the shallow features with a global code of the deep ones.

    The deep map is projected (1×1 conv + BN + ReLU) to :math:`2C` channels and max-pooled over all
    positions; the first :math:`C` entries are :math:`\gamma`, the last :math:`C` are :math:`\beta`. The
    shallow map is projected (1×1 conv + **non-affine** BN) to :math:`C` channels, modulated and passed
    through a last 1×1 conv + BN + ReLU:

    .. math::
        [\gamma; \beta] = \max_{p}\, \mathrm{ReLU}(\mathrm{BN}(W_d\, d))_{:,p}, \qquad
        g = \mathrm{ReLU}\Big(\mathrm{BN}\big(W_c\,\mathrm{ReLU}\big((1 + \gamma)\odot \mathrm{BN}_0(W_s\, s)
            + \beta\big)\big)\Big)

    The global max sends its gradient to one position per channel (``Tensor.max``, as officially). The
    two maps may have different spatial sizes; the output has the size of ``shallow``. Convs have no
    bias; init as officially (Kaiming-normal, BN 1 / 0, momentum 0.05, eps 1e-5). Submodule names follow
    the official checkpoint (``fc_deep``, ``fc_skip``, ``fc_cls``; SLRNet's ``shallow_mask``).

    Args:
        channels: :math:`C`, width of the output and of :math:`\gamma, \beta` (256).
        deep_channels: channels of ``deep`` (256: SLRNet's factorised features F).
        shallow_channels: channels of ``shallow`` (256: WideResNet-38 conv3).
        bn_momentum: BatchNorm momentum (0.05).
        bn_eps: BatchNorm epsilon (1e-5).

    Shape:
        - deep: :math:`(B, C_d, h_d, w_d)`
        - shallow: :math:`(B, C_s, h, w)`
        - output: :math:`(B, C, h, w)`

    Raises:
        TypeError / ValueError: on invalid hyperparameters, or (``forward``) non-float / non-4-D inputs,
            wrong channel counts or different batch sizes.

    Example:
        >>> gci = wsseg.layers.GlobalCueInjection(8, deep_channels=4, shallow_channels=6).eval()
        >>> gci(torch.rand(2, 4, 3, 3), torch.rand(2, 6, 5, 5)).shape
        torch.Size([2, 8, 5, 5])

    Source:
        1-Stage-WSeg (Araslanov & Roth, CVPR 2020); github.com/DesertsP/SLRNet ``models/mods/gci.py``
        (``GCI``; official argument order ``forward(shallow, deep)``).
    """

    def __init__(self, channels: int = 256, deep_channels: int = 256, shallow_channels: int = 256,
                 bn_momentum: float = 0.05, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = _check_int(channels, "channels")
        self.deep_channels = _check_int(deep_channels, "deep_channels")
        self.shallow_channels = _check_int(shallow_channels, "shallow_channels")
        self.bn_momentum, self.bn_eps = _check_bn(bn_momentum, bn_eps)
        c, m, e = self.channels, self.bn_momentum, self.bn_eps
        self.fc_deep = nn.Sequential(nn.Conv2d(self.deep_channels, 2 * c, 1, bias=False),
                                     nn.BatchNorm2d(2 * c, eps=e, momentum=m), nn.ReLU())
        self.fc_skip = nn.Sequential(nn.Conv2d(self.shallow_channels, c, 1, bias=False),
                                     nn.BatchNorm2d(c, eps=e, momentum=m, affine=False))
        self.fc_cls = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c, eps=e, momentum=m), nn.ReLU())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Kaiming-normal convs, affine BN weight 1 / bias 0, running statistics reset."""
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_parameters()  # running stats and (if affine) weight 1 / bias 0

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        """Modulated shallow features ``(B, channels, h, w)``."""
        check_tensor(deep, "deep", ndim=4, dims="(B, C_d, h_d, w_d)", dtype="float")
        check_tensor(shallow, "shallow", ndim=4, dims="(B, C_s, h, w)", dtype="float")
        if shallow.shape[0] != deep.shape[0]:
            raise ValueError(f"shallow: batch size {shallow.shape[0]} differs from deep ({deep.shape[0]})")
        return self._forward(deep, shallow)

    def _forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        if deep.shape[1] != self.deep_channels:
            raise ValueError(f"deep: expected {self.deep_channels} channels (deep_channels), got shape "
                             f"{tuple(deep.shape)}")
        if shallow.shape[1] != self.shallow_channels:
            raise ValueError(f"shallow: expected {self.shallow_channels} channels (shallow_channels), got shape "
                             f"{tuple(shallow.shape)}")
        attrs = self.fc_deep(deep).flatten(2).max(dim=-1)[0]            # (B, 2C)
        gamma, beta = attrs[:, : self.channels, None, None], attrs[:, self.channels :, None, None]
        x = F.relu(self.fc_skip(shallow) * (gamma + 1) + beta)
        return self.fc_cls(x)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, deep_channels={self.deep_channels}, "
                f"shallow_channels={self.shallow_channels}, bn_momentum={self.bn_momentum}, bn_eps={self.bn_eps}")


class GCIHead(nn.Module):
    r"""SLRNet's (1-Stage-WSeg's) segmentation head: GCI, stochastic gate, conv stack, constant background.

    With :math:`d` the deep features (SLRNet: the low-rank reconstructed F, 256 channels) and :math:`s`
    the shallow ones (WideResNet-38 conv3, 256 channels, same size):

    .. math::
        g = \mathrm{GCI}(d, s), \quad x = \mathrm{SG}_\alpha(d, g), \quad
        z = W_3\,\mathrm{Drop}_{0.1}\big(\mathrm{CBR}_2(\mathrm{Drop}_{0.5}(\mathrm{CBR}_1(x)))\big) + b_3,
        \quad \text{logits} = [\,1;\; z\,]

    where CBR is a 3×3 conv (no bias) + BN + ReLU, the dropouts are element-wise ``nn.Dropout``,
    :math:`W_3` a 1×1 conv to the ``K`` foreground classes and the constant background logit ``bg_logit``
    (1) is prepended (:func:`prepend_background`); the masks are the softmax over the ``K + 1`` channels.
    The gate is stochastic in ``train()`` mode (torch's global RNG) and deterministic in ``eval()``, see
    :func:`stochastic_gate`. Init as officially: Kaiming-normal conv weights (fan-in, gain √2), BN weight
    1 / bias 0 (momentum 0.05, eps 1e-5), the classifier bias PyTorch's default. Official submodule
    names ``shallow_mask`` / ``sg`` / ``last_conv`` map to ``gci`` / ``gate`` / ``last_conv`` here.

    Args:
        num_classes: foreground classes ``K`` (VOC 20); the output has ``K + 1`` channels.
        channels: width of the deep features and of the head (256).
        shallow_channels: channels of the shallow map (256).
        alpha: stochastic-gate rate (official 0.3, passed explicitly by SLRNet).
        dropouts: the two dropout probabilities of the conv stack ((0.5, 0.1)).
        bg_logit: the constant background logit (1.0).
        bn_momentum: BatchNorm momentum (0.05).
        bn_eps: BatchNorm epsilon (1e-5).

    Shape:
        - deep: :math:`(B, C, h, w)`
        - shallow: :math:`(B, C_s, h, w)`
        - output: :math:`(B, K + 1, h, w)`, background at channel 0

    Raises:
        TypeError / ValueError: on invalid hyperparameters, or (``forward``) non-float / non-4-D inputs,
            wrong channel counts, different batch or spatial sizes.

    Example:
        >>> head = wsseg.layers.GCIHead(num_classes=4, channels=8, shallow_channels=6).eval()
        >>> logits = head(torch.rand(2, 8, 5, 5), torch.rand(2, 6, 5, 5))
        >>> logits.shape
        torch.Size([2, 5, 5, 5])
        >>> bool((logits[:, 0] == 1).all())
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py``
        (``Net.segmentation_forward``), ``models/single_stage.py`` (``last_conv``, ``init_weights``),
        ``models/mods/gci.py``, ``models/mods/sg.py``; 1-Stage-WSeg, Araslanov & Roth CVPR 2020.
    """

    def __init__(self, num_classes: int = 20, channels: int = 256, shallow_channels: int = 256,
                 alpha: float = 0.3, dropouts: Sequence[float] = (0.5, 0.1), bg_logit: float = 1.0,
                 bn_momentum: float = 0.05, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.num_classes = _check_int(num_classes, "num_classes")
        if isinstance(dropouts, (str, bytes)) or not isinstance(dropouts, Sequence) or len(dropouts) != 2:
            raise ValueError(f"dropouts: expected two probabilities, got {dropouts!r}")
        self.dropouts = tuple(_check_prob(p, f"dropouts[{i}]") for i, p in enumerate(dropouts))
        if isinstance(bg_logit, bool) or not isinstance(bg_logit, (int, float)):
            raise TypeError(f"bg_logit: expected a float, got {type(bg_logit).__name__}")
        self.bg_logit = float(bg_logit)
        self.gci = GlobalCueInjection(channels, channels, shallow_channels, bn_momentum, bn_eps)
        self.gate = StochasticGate(alpha)
        c, m, e = self.gci.channels, self.gci.bn_momentum, self.gci.bn_eps
        self.last_conv = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, eps=e, momentum=m), nn.ReLU(),
            nn.Dropout(self.dropouts[0]),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c, eps=e, momentum=m), nn.ReLU(),
            nn.Dropout(self.dropouts[1]),
            nn.Conv2d(c, self.num_classes, 1),
        )
        self.reset_parameters()

    @property
    def channels(self) -> int:
        return self.gci.channels

    @property
    def shallow_channels(self) -> int:
        return self.gci.shallow_channels

    @property
    def alpha(self) -> float:
        return self.gate.alpha

    def reset_parameters(self) -> None:
        """Official init (Kaiming-normal conv weights, BN 1 / 0, default classifier bias)."""
        self.gci.reset_parameters()
        self.last_conv[-1].reset_parameters()
        for mod in self.last_conv:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight)
            elif isinstance(mod, nn.BatchNorm2d):
                mod.reset_parameters()

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        """Logits ``(B, K + 1, h, w)`` with the constant background logit at channel 0."""
        _check_pair(deep, shallow, same_channels=False)
        if deep.shape[1] != self.channels:
            raise ValueError(f"deep: expected {self.channels} channels (channels), got shape {tuple(deep.shape)}")
        g = self.gci._forward(deep, shallow)
        x = self.gate(deep, g)
        return prepend_background(self.last_conv(x), "constant", self.bg_logit)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, channels={self.channels}, shallow_channels={self.shallow_channels}, "
                f"alpha={self.alpha}, dropouts={self.dropouts}, bg_logit={self.bg_logit}")
