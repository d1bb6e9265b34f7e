"""WideResNet-38 (``resnet38d``) with output stride 8, frozen BatchNorm and the official weight-key layout."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import check_tensor
from .base import BackboneOutput, split_norm_parameters
from .weights import LoadReport, _resolve_key, read_state_dict

__all__ = ["ResNet38d", "resnet38d", "load_resnet38d_weights", "RESNET38D_FEATURES"]

#: Feature maps :class:`ResNet38d` can return: name -> (channels at full width, stride).
#: ``conv1``: output of ``conv1a``; ``conv3``: output of ``b3_2``; ``conv4``: BN+ReLU of the ``b4_5``
#: output (the pre-activation of ``b5``); ``conv5``: BN+ReLU of the ``b5_2`` output (pre-activation of
#: ``b6``); ``conv6``: ``ReLU(bn7(b7 output))``. SLRNet / 1-Stage-WSeg use ``conv3`` (decoder skip) and
#: ``conv6`` (ASPP input).
RESNET38D_FEATURES: dict[str, tuple[int, int]] = {
    "conv1": (64, 1), "conv3": (256, 4), "conv4": (512, 8), "conv5": (1024, 8), "conv6": (4096, 8),
}

# Official layout: (name, kind, in, mid, out, stride, first_dilation, dilation, stage); "bot" blocks
# (b6, b7) are bottlenecks whose widths derive from ``out`` (out/4 -> out/2 -> out).
_BLOCKS: tuple[tuple[str, str, int, int, int, int, int, int, int], ...] = (
    ("b2", "res", 64, 128, 128, 2, 1, 1, 2),
    ("b2_1", "res", 128, 128, 128, 1, 1, 1, 2),
    ("b2_2", "res", 128, 128, 128, 1, 1, 1, 2),
    ("b3", "res", 128, 256, 256, 2, 1, 1, 3),
    ("b3_1", "res", 256, 256, 256, 1, 1, 1, 3),
    ("b3_2", "res", 256, 256, 256, 1, 1, 1, 3),
    ("b4", "res", 256, 512, 512, 2, 1, 1, 4),
    ("b4_1", "res", 512, 512, 512, 1, 1, 1, 4),
    ("b4_2", "res", 512, 512, 512, 1, 1, 1, 4),
    ("b4_3", "res", 512, 512, 512, 1, 1, 1, 4),
    ("b4_4", "res", 512, 512, 512, 1, 1, 1, 4),
    ("b4_5", "res", 512, 512, 512, 1, 1, 1, 4),
    ("b5", "res", 512, 512, 1024, 1, 1, 2, 5),
    ("b5_1", "res", 1024, 512, 1024, 1, 2, 2, 5),
    ("b5_2", "res", 1024, 512, 1024, 1, 2, 2, 5),
    ("b6", "bot", 1024, 0, 2048, 1, 4, 4, 6),
    ("b7", "bot", 2048, 0, 4096, 1, 4, 4, 7),
)


class _FixedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (official ``FixedBatchNorm2d``)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, momentum=0.0, eps=self.eps)


class _ResBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU -> 3×3 conv (stride, first dilation) -> BN-ReLU -> 3×3 conv.

    The shortcut is the identity, or a strided 1×1 conv of the *activated* input when the shape changes.
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int, first_dilation: int, dilation: int,
                 norm: type[nn.BatchNorm2d]) -> None:
        super().__init__()
        self.same_shape = cin == cout and stride == 1
        self.bn_branch2a = norm(cin)
        self.conv_branch2a = nn.Conv2d(cin, mid, 3, stride, padding=first_dilation, dilation=first_dilation,
                                       bias=False)
        self.bn_branch2b1 = norm(mid)
        self.conv_branch2b1 = nn.Conv2d(mid, cout, 3, padding=dilation, dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(output, BN-ReLU(input))``."""
        act = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(act)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(act))))
        return shortcut + y, act


class _BottleneckBlock(nn.Module):
    """Pre-activation bottleneck: BN-ReLU -> 1×1 (out/4) -> BN-ReLU-Dropout2d -> 3×3 dilated (out/2)
    -> BN-ReLU-Dropout2d -> 1×1 (out); shortcut: 1×1 conv of the activated input."""

    def __init__(self, cin: int, cout: int, stride: int, dilation: int, dropout: float,
                 norm: type[nn.BatchNorm2d]) -> None:
        super().__init__()
        q, h = cout // 4, cout // 2
        self.bn_branch2a = norm(cin)
        self.conv_branch2a = nn.Conv2d(cin, q, 1, stride, bias=False)
        self.bn_branch2b1 = norm(q)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(q, h, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = norm(h)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(h, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(output, BN-ReLU(input))``."""
        act = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(act)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(act) + y, act


class ResNet38d(nn.Module):
    """WideResNet-38 ("ResNet-38d", model A1 of Wu et al.) with output stride 8, as used by SLRNet.

    Pre-activation residual network: ``conv1a`` (3×3, 64 channels, stride 1) followed by 17 blocks
    ``b2`` … ``b7`` and a final BN-ReLU ``bn7``. Each block computes :math:`a = \\mathrm{ReLU}(\\mathrm{BN}(x))`
    and

    .. math::

        y = s(x, a) + \\mathrm{conv}_{3\\times3}\\big(\\mathrm{ReLU}(\\mathrm{BN}(\\mathrm{conv}_{3\\times3}(a)))\\big),
        \\qquad s(x, a) = \\begin{cases} x & \\text{same shape} \\\\ \\mathrm{conv}_{1\\times1}(a) & \\text{else}
        \\end{cases}

    (``b6``, ``b7``: 1×1 → 3×3 → 1×1 bottlenecks of widths out/4, out/2, out with Dropout2d before the
    last two convs, 0.3 in ``b6`` and 0.5 in ``b7``, and a 1×1 conv shortcut). Stages and widths (full
    width, ``width_divisor=1``):

    ======  ============================  =====================================  ======
    stage   blocks                        channels in → (mid →) out              stride
    ======  ============================  =====================================  ======
    1       ``conv1a``                    3 → 64                                 1
    2       ``b2``, ``b2_1``, ``b2_2``    64 → 128 → 128                         2
    3       ``b3``, ``b3_1``, ``b3_2``    128 → 256 → 256                        4
    4       ``b4``, ``b4_1`` … ``b4_5``   256 → 512 → 512                        8
    5       ``b5``, ``b5_1``, ``b5_2``    512 → 512 → 1024, dilation 2           8
    6       ``b6`` (bottleneck)           1024 → 512 → 1024 → 2048, dilation 4   8
    7       ``b7`` (bottleneck), ``bn7``  2048 → 1024 → 2048 → 4096, dilation 4  8
    ======  ============================  =====================================  ======

    ``b5``'s first conv is undilated (dilation 1), its second and all of ``b5_1``/``b5_2`` use dilation 2.
    Stride-2 3×3 convs have padding 1, so a side of length ``n`` becomes :math:`\\lceil n/2 \\rceil`:
    for a 321×321 crop ``conv3`` is 81×81 and ``conv6`` 41×41.

    Faithful defaults (official SLRNet / 1-Stage-WSeg / SEAM code):

    * ``freeze_bn=True``: every BatchNorm normalises with its running statistics in train mode too
      (official ``FixedBatchNorm2d``) and its affine parameters have ``requires_grad=False``;
    * ``freeze_stages=2``: ``conv1a`` and the three ``b2`` blocks get ``requires_grad=False``
      (official ``fixed_layers``);
    * Dropout2d 0.3 in ``b6`` and 0.5 in ``b7`` (``drop_rates``), active in train mode.

    The freezing is re-applied by :meth:`train` (as officially), so ``model.train()`` after
    ``model.requires_grad_(True)`` freezes them again. With ``freeze_bn=False`` the BatchNorms are
    ordinary trainable :class:`torch.nn.BatchNorm2d` (deviation). Frozen stages are also kept in eval
    mode, which matters only with ``freeze_bn=False``.

    Module and parameter names follow the official layout (``conv1a.weight``,
    ``b2.bn_branch2a.running_mean``, ``b6.conv_branch2b2.weight``, ``bn7.bias``, ...), so the
    mxnet-converted ImageNet checkpoint loads strictly with :func:`load_resnet38d_weights`.
    Parameters are left at PyTorch's default initialisation (the official code always loads weights).

    Args:
        out_features: which feature maps ``forward`` returns, in this order; names from
            :data:`RESNET38D_FEATURES` (``conv1``, ``conv3``, ``conv4``, ``conv5``, ``conv6``). Default
            ``("conv3", "conv6")``: the decoder skip (stride 4) and the ASPP input (stride 8) of SLRNet.
        freeze_bn: frozen BatchNorm (running statistics, no gradient to the affine parameters).
        freeze_stages: number of leading stages (1 = ``conv1a``, 2 = ``b2`` blocks, ... 7 = ``b7`` +
            ``bn7``) whose parameters get no gradient; 0 freezes none.
        drop_rates: Dropout2d probabilities of ``b6`` and ``b7``, each in [0, 1).
        width_divisor: divides every channel width (1 = the official network); e.g. 16 gives a tiny
            variant with the same topology for fast tests. Must divide 64.

    Shape:
        - Input: :math:`(B, 3, H, W)`, float, ImageNet-normalised (mean/std on [0, 1] RGB).
        - features[i]: :math:`(B, C_i, \\lceil H/s_i \\rceil, \\lceil W/s_i \\rceil)` with
          :math:`C_i` = ``out_channels[i]``, :math:`s_i` = ``out_strides[i]`` (e.g. ``conv3``: 256, 4;
          ``conv6``: 4096, 8).

    Raises:
        ValueError: unknown / duplicate ``out_features``, ``freeze_stages`` outside [0, 7], a dropout
            rate outside [0, 1), a ``width_divisor`` that does not divide 64, or, in ``forward``, an
            input that is not ``(B, 3, H, W)``.
        TypeError: a non-float input.

    Attributes:
        out_channels: channels of the returned maps.
        out_strides: strides of the returned maps w.r.t. the input.

    Example:
        >>> net = wsseg.backbones.ResNet38d(width_divisor=16).eval()
        >>> out = net(torch.randn(1, 3, 65, 65))
        >>> [tuple(f.shape) for f in out.features], net.out_strides
        ([(1, 16, 17, 17), (1, 256, 9, 9)], [4, 8])

    Source:
        Wu, Shen, van den Hengel, "Wider or Deeper: Revisiting the ResNet Model for Visual Recognition",
        Pattern Recognition 2019 (github.com/itijyou/ademxapp, model A1). As used by SLRNet, Pan et al.
        IJCV 2022; github.com/DesertsP/SLRNet, models/backbones/resnet38d.py (``ResNet38``) and
        models/single_stage.py (frozen BN and ``fixed_layers``); same network in 1-Stage-WSeg
        (github.com/visinf/1-stage-wseg) and SEAM (github.com/YudeWang/SEAM, network/resnet38d.py).
    """

    def __init__(self, *, out_features: Sequence[str] = ("conv3", "conv6"), freeze_bn: bool = True,
                 freeze_stages: int = 2, drop_rates: Sequence[float] = (0.3, 0.5),
                 width_divisor: int = 1) -> None:
        super().__init__()
        feats = tuple(out_features)
        if not feats or len(set(feats)) != len(feats) or any(f not in RESNET38D_FEATURES for f in feats):
            raise ValueError(f"out_features: expected distinct names from {tuple(RESNET38D_FEATURES)}, "
                             f"got {feats}")
        if not isinstance(freeze_stages, int) or not 0 <= freeze_stages <= 7:
            raise ValueError(f"freeze_stages: expected an integer in [0, 7], got {freeze_stages!r}")
        rates = tuple(float(r) for r in drop_rates)
        if len(rates) != 2 or any(not 0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"drop_rates: expected two probabilities in [0, 1) (b6, b7), got {rates}")
        if not isinstance(width_divisor, int) or width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"width_divisor: expected a positive integer dividing 64, got {width_divisor!r}")
        self.out_features = feats
        self.freeze_bn = bool(freeze_bn)
        self.freeze_stages = freeze_stages
        self.drop_rates = rates
        self.width_divisor = width_divisor
        norm: type[nn.BatchNorm2d] = _FixedBatchNorm2d if self.freeze_bn else nn.BatchNorm2d
        d = width_divisor

        self.conv1a = nn.Conv2d(3, 64 // d, 3, padding=1, bias=False)
        self._stage_of: dict[str, int] = {"conv1a": 1, "bn7": 7}
        for name, kind, cin, mid, cout, stride, first_dil, dil, stage in _BLOCKS:
            if kind == "res":
                block: nn.Module = _ResBlock(cin // d, mid // d, cout // d, stride, first_dil, dil, norm)
            else:
                block = _BottleneckBlock(cin // d, cout // d, stride, dil, rates[int(name[1]) - 6], norm)
            self.add_module(name, block)
            self._stage_of[name] = stage
        self.bn7 = norm(4096 // d)

        self.out_channels: list[int] = [RESNET38D_FEATURES[f][0] // d for f in feats]
        self.out_strides: list[int] = [RESNET38D_FEATURES[f][1] for f in feats]
        self.train()  # applies the freezing (frozen stages in eval mode, requires_grad=False)

    def frozen_modules(self) -> list[nn.Module]:
        """The top-level modules of the first ``freeze_stages`` stages (official ``fixed_layers``)."""
        return [getattr(self, n) for n, s in self._stage_of.items() if s <= self.freeze_stages]

    def _apply_freezing(self) -> None:
        for m in self.frozen_modules():
            m.requires_grad_(False)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet38d:
        """Set train/eval mode, then re-apply the freezing (frozen stages stay in eval mode)."""
        super().train(mode)
        for m in self.frozen_modules():
            m.train(False)
        self._apply_freezing()
        return self

    def load_weights(self, path: str | PathLike, strict: bool = True) -> LoadReport:
        """Load an official-layout checkpoint; see :func:`load_resnet38d_weights`."""
        return load_resnet38d_weights(self, path, strict=strict)

    def split_norm_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(norm_params, other_params)`` among trainable parameters; see :func:`split_norm_parameters`."""
        return split_norm_parameters(self)

    def parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Trainable parameters split as the official optimiser does: ``(weights, biases)``.

        SLRNet trains backbone weights with lr ×1 and backbone biases with lr ×2 and no weight decay
        (spec §7). With the faithful defaults the bias group is empty: the convolutions have no bias
        and the BatchNorm affine parameters are frozen.

        Example:
            >>> w, b = wsseg.backbones.ResNet38d(width_divisor=16).parameter_groups()
            >>> len(w), len(b)  # conv weights of stages 3-7; no trainable bias
            (35, 0)
        """
        weights: list[nn.Parameter] = []
        biases: list[nn.Parameter] = []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (biases if name.endswith(".bias") else weights).append(p)
        return weights, biases

    def forward(self, x: Tensor) -> BackboneOutput:
        """Run the network; returns the maps named in ``out_features``, in that order."""
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        wanted = set(self.out_features)
        maps: dict[str, Tensor] = {}
        x = self.conv1a(x)
        maps["conv1"] = x
        for name, *_ in _BLOCKS:
            if wanted <= maps.keys():  # nothing deeper is needed
                break
            x, act = getattr(self, name)(x)
            if name == "b3_2":
                maps["conv3"] = x
            elif name == "b5":
                maps["conv4"] = act
            elif name == "b6":
                maps["conv5"] = act
        else:
            maps["conv6"] = F.relu(self.bn7(x))
        return BackboneOutput(features=[maps[f] for f in self.out_features])

    def extra_repr(self) -> str:
        return (f"out_features={self.out_features}, freeze_bn={self.freeze_bn}, "
                f"freeze_stages={self.freeze_stages}, drop_rates={self.drop_rates}, "
                f"width_divisor={self.width_divisor}")


def load_resnet38d_weights(model: ResNet38d, path: str | PathLike, *, strict: bool = True,
                           prefixes_to_strip: Sequence[str] = ("module.", "backbone.")) -> LoadReport:
    """Load WideResNet-38 weights in the official (mxnet-converted) key layout into ``model``.

    Accepts the ImageNet checkpoint converted from mxnet (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``
    → ``.pth``, as distributed for SEAM / 1-Stage-WSeg / SLRNet; keys such as ``conv1a.weight``,
    ``b2.bn_branch2a.running_mean``, ``b6.conv_branch2b2.weight``, ``bn7.bias``, no classifier) and
    the model's own ``state_dict``. A ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper and
    ``module.`` / ``backbone.`` key prefixes are removed (see :func:`wsseg.backbones.read_state_dict`).
    The BatchNorm ``num_batches_tracked`` counters are optional (the converted file has none; frozen
    BatchNorm never uses them) and are not reported when absent. Floating tensors are cast to the
    model's dtype.

    Unlike the official ``load_state_dict(..., strict=False)``, which silently skips keys that do not
    match, the default is strict.

    Args:
        model: the :class:`ResNet38d` to fill (in place); its ``width_divisor`` must match the file.
        path: ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` file.
        strict: raise on any missing or unexpected key; if False they are skipped and reported.
        prefixes_to_strip: wrapper prefixes removed from file keys that do not match as they are.

    Returns:
        :class:`~wsseg.backbones.LoadReport` ``(missing_keys, unexpected_keys)`` (both empty on a
        strict success; ``num_batches_tracked`` keys never listed as missing).

    Raises:
        TypeError: ``model`` is not a :class:`ResNet38d`.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown suffix, or the file holds no state dict.
        RuntimeError: ``strict=True`` and a key is missing or unexpected (the message names the file,
            the first mismatching key and the counts), or a tensor's shape differs from the model's
            (always; the message names the file, the key and both shapes).

    Example:
        >>> import tempfile, os
        >>> src = wsseg.backbones.resnet38d(width_divisor=16)
        >>> state = {k: v for k, v in src.state_dict().items() if "num_batches" not in k}
        >>> f = os.path.join(tempfile.mkdtemp(), "wr38.pth")
        >>> torch.save(state, f)
        >>> dst = wsseg.backbones.resnet38d(width_divisor=16)
        >>> wsseg.backbones.load_resnet38d_weights(dst, f)
        LoadReport(missing_keys=[], unexpected_keys=[])
        >>> torch.equal(dst.b7.conv_branch2b2.weight, src.b7.conv_branch2b2.weight)
        True

    Source:
        Key layout of ``convert_mxnet_to_torch`` in github.com/jiwoon-ahn/psa, network/resnet38d.py
        (reused by SEAM); loaded by github.com/DesertsP/SLRNet, models/backbones/resnet38d.py.
    """
    if not isinstance(model, ResNet38d):
        raise TypeError(f"model: expected a wsseg.backbones.ResNet38d, got {type(model).__name__}")
    raw = read_state_dict(path)
    expected = model.state_dict()
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        state[_resolve_key(key, expected, prefixes_to_strip)] = value
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        first = (f"first unexpected key '{unexpected[0]}'" if unexpected else
                 f"first missing key '{missing[0]}'")
        raise RuntimeError(
            f"path: '{path}' does not match the official WideResNet-38 key layout (strict=True): {first}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected key(s) "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}); expected keys such as "
            f"'conv1a.weight', 'b2.bn_branch2a.running_mean', 'bn7.weight'")
    for key, value in state.items():
        target = expected.get(key)
        if target is None:
            continue
        if value.shape != target.shape:
            raise RuntimeError(
                f"path: '{path}': tensor '{key}' has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)} (width_divisor={model.width_divisor})")
        if value.is_floating_point() and target.is_floating_point():
            state[key] = value.to(target.dtype)
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return LoadReport(missing, unexpected)


def resnet38d(weights: str | PathLike | None = None, **kwargs) -> ResNet38d:
    """Build a :class:`ResNet38d` (keyword arguments forwarded) and optionally load official weights.

    Args:
        weights: optional checkpoint in the official key layout, loaded strictly with
            :func:`load_resnet38d_weights` (e.g. the mxnet-converted
            ``ilsvrc-cls_rna-a1_cls1000_ep-0001.pth``).
        **kwargs: :class:`ResNet38d` arguments (``out_features``, ``freeze_bn``, ``freeze_stages``,
            ``drop_rates``, ``width_divisor``).

    Returns:
        the network (in train mode, as any new module).

    Example:
        >>> net = wsseg.backbones.resnet38d(width_divisor=16)
        >>> net.out_channels, net.out_strides
        ([16, 256], [4, 8])
    """
    model = ResNet38d(**kwargs)
    if weights is not None:
        load_resnet38d_weights(model, weights)
    return model
