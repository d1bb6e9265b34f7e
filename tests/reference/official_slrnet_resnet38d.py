"""Reference formulation of the official SLRNet WideResNet-38 (``resnet38d``), written for wsseg's tests.

Transcribed from the module definition in github.com/DesertsP/SLRNet, models/backbones/resnet38d.py
(``ResBlock``, ``ResBlock_bot``, ``ResNet38``), independently of :mod:`wsseg.backbones.resnet38d`:

* :data:`OFFICIAL_RES_BLOCKS` / :data:`OFFICIAL_BOT_BLOCKS` list the constructor calls of ``ResNet38``;
* :func:`official_checkpoint_shapes` gives every key of the mxnet-converted checkpoint (the layout
  produced by ``convert_mxnet_to_torch`` of psa / SEAM: conv weights, BN weight/bias/running stats, no
  ``num_batches_tracked``, no classifier) with its shape;
* :func:`official_num_params` counts the parameters of ``ResNet38`` (conv weights, BN affine);
* :func:`official_forward` evaluates ``forward_as_dict`` functionally from a state dict with
  ``F.conv2d`` / ``F.batch_norm`` (eval statistics, as ``FixedBatchNorm2d``; dropout is identity).

All widths can be divided by ``divisor`` to build the same layout at a tiny width.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "OFFICIAL_RES_BLOCKS",
    "OFFICIAL_BOT_BLOCKS",
    "OFFICIAL_FIXED_PREFIXES",
    "official_checkpoint_shapes",
    "official_num_params",
    "official_forward",
]

# ResBlock(in, mid, out, stride, first_dilation, dilation) as called in ResNet38.__init__
OFFICIAL_RES_BLOCKS = [
    ("b2", 64, 128, 128, 2, 1, 1), ("b2_1", 128, 128, 128, 1, 1, 1), ("b2_2", 128, 128, 128, 1, 1, 1),
    ("b3", 128, 256, 256, 2, 1, 1), ("b3_1", 256, 256, 256, 1, 1, 1), ("b3_2", 256, 256, 256, 1, 1, 1),
    ("b4", 256, 512, 512, 2, 1, 1)] + [(f"b4_{i}", 512, 512, 512, 1, 1, 1) for i in range(1, 6)] + [
    ("b5", 512, 512, 1024, 1, 1, 2), ("b5_1", 1024, 512, 1024, 1, 2, 2), ("b5_2", 1024, 512, 1024, 1, 2, 2),
]
# ResBlock_bot(in, out, stride, dilation, dropout)
OFFICIAL_BOT_BLOCKS = [("b6", 1024, 2048, 1, 4, 0.3), ("b7", 2048, 4096, 1, 4, 0.5)]
# ResNet38.fixed_layers = [conv1a, b2, b2_1, b2_2]
OFFICIAL_FIXED_PREFIXES = ("conv1a.", "b2.", "b2_1.", "b2_2.")

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}": (c,) for k in _BN_KEYS}


def official_checkpoint_shapes(divisor: int = 1) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the converted ImageNet checkpoint (all widths divided by ``divisor``)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1a.weight": (64 // divisor, 3, 3, 3)}
    for name, cin, mid, cout, stride, _, _ in OFFICIAL_RES_BLOCKS:
        i, m, o = cin // divisor, mid // divisor, cout // divisor
        shapes.update(_bn(f"{name}.bn_branch2a", i))
        shapes[f"{name}.conv_branch2a.weight"] = (m, i, 3, 3)
        shapes.update(_bn(f"{name}.bn_branch2b1", m))
        shapes[f"{name}.conv_branch2b1.weight"] = (o, m, 3, 3)
        if not (cin == cout and stride == 1):
            shapes[f"{name}.conv_branch1.weight"] = (o, i, 1, 1)
    for name, cin, cout, _, _, _ in OFFICIAL_BOT_BLOCKS:
        i, o = cin // divisor, cout // divisor
        shapes.update(_bn(f"{name}.bn_branch2a", i))
        shapes[f"{name}.conv_branch2a.weight"] = (o // 4, i, 1, 1)
        shapes.update(_bn(f"{name}.bn_branch2b1", o // 4))
        shapes[f"{name}.conv_branch2b1.weight"] = (o // 2, o // 4, 3, 3)
        shapes.update(_bn(f"{name}.bn_branch2b2", o // 2))
        shapes[f"{name}.conv_branch2b2.weight"] = (o, o // 2, 1, 1)
        shapes[f"{name}.conv_branch1.weight"] = (o, i, 1, 1)
    shapes.update(_bn("bn7", 4096 // divisor))
    return shapes


def official_num_params(divisor: int = 1) -> int:
    """Number of parameters (conv weights and BN weight/bias; running statistics excluded)."""
    return sum(math.prod(s) for k, s in official_checkpoint_shapes(divisor).items() if "running" not in k)


def _bn_apply(x: Tensor, state: dict[str, Tensor], prefix: str) -> Tensor:
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)


def official_forward(state: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """``forward_as_dict`` of the official ``ResNet38`` in eval mode, from a checkpoint-layout state dict."""
    out: dict[str, Tensor] = {}
    x = F.conv2d(x, state["conv1a.weight"], padding=1)
    out["conv1"] = x
    for name, cin, _, cout, stride, first_dil, dil in OFFICIAL_RES_BLOCKS:
        b2 = F.relu(_bn_apply(x, state, f"{name}.bn_branch2a"))
        if name == "b5":
            out["conv4"] = b2
        b1 = x if (cin == cout and stride == 1) else F.conv2d(b2, state[f"{name}.conv_branch1.weight"],
                                                            stride=stride)
        b2 = F.conv2d(b2, state[f"{name}.conv_branch2a.weight"], stride=stride, padding=first_dil,
                      dilation=first_dil)
        b2 = F.relu(_bn_apply(b2, state, f"{name}.bn_branch2b1"))
        b2 = F.conv2d(b2, state[f"{name}.conv_branch2b1.weight"], padding=dil, dilation=dil)
        x = b1 + b2
        if name == "b3_2":
            out["conv3"] = x
    for name, _, _, stride, dil, _ in OFFICIAL_BOT_BLOCKS:
        b2 = F.relu(_bn_apply(x, state, f"{name}.bn_branch2a"))
        if name == "b6":
            out["conv5"] = b2
        b1 = F.conv2d(b2, state[f"{name}.conv_branch1.weight"], stride=stride)
        b2 = F.conv2d(b2, state[f"{name}.conv_branch2a.weight"], stride=stride)
        b2 = F.relu(_bn_apply(b2, state, f"{name}.bn_branch2b1"))
        b2 = F.conv2d(b2, state[f"{name}.conv_branch2b1.weight"], padding=dil, dilation=dil)
        b2 = F.relu(_bn_apply(b2, state, f"{name}.bn_branch2b2"))
        b2 = F.conv2d(b2, state[f"{name}.conv_branch2b2.weight"])
        x = b1 + b2
    out["conv6"] = F.relu(_bn_apply(x, state, "bn7"))
    return out
