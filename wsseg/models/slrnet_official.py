"""Key layout of the official SLRNet network and its mapping onto :class:`~wsseg.models.SLRNet` (data only).

The official network is ``Net`` of github.com/DesertsP/SLRNet, ``models/slrnet.py``, built on
``SingleStageNet`` (``models/single_stage.py``). Its ``state_dict()`` holds:

* ``backbone.*``: ``ResNet38`` (``models/backbones/resnet38d.py``), names ``conv1a``, ``b2`` .. ``b7``, ``bn7``,
  **plus** ``backbone.fixed_layers.{0..3}.*``: an ``nn.ModuleList([conv1a, b2, b2_1, b2_2])`` that registers
  the first four modules a second time;
* ``aspp.*`` (``models/mods/aspp.py``), ``fc8_skip.{0,1}``, ``fc8_x.{0,1}``, ``shallow_mask.*`` (``GCI``),
  ``last_conv.{0,1,4,5,8}``, ``factorization_reconstruction.transform{1,2}``, ``aux_head.{0,1,4}``;
* ``newly_added.{0,1,3,4,5,6,8}.*``: an ``nn.ModuleList`` registering ``aspp``, ``shallow_mask``,
  ``fc8_skip``, ``fc8_x``, ``last_conv``, ``factorization_reconstruction`` and ``aux_head`` a second time
  (indices 2 and 7, the stochastic gate and the dictionary initialisation, hold no tensors);
* ``_aff.aff_x.kernel``, ``_aff.aff_m.kernel``, ``_aff.aff_std.kernel``: the constant shift kernels of PAMR
  (``models/mods/pamr.py``), registered as buffers.

Every BatchNorm carries ``num_batches_tracked``. The training script (``tools/train_voc_wss.py``) writes
``{"state_dict": model.module.state_dict(), "epoch": i, "optimizer": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = [
    "SLRNET_OFFICIAL_RENAMES",
    "SLRNET_OFFICIAL_DUPLICATES",
    "SLRNET_OFFICIAL_DROPPED",
    "SLRNET_OFFICIAL_SIGNATURE",
    "SLRNET_OFFICIAL_CONTAINER",
    "slrnet_config_from_official",
]

#: ``(official prefix, wsseg prefix)``, first match wins (duplicates and constants are matched before).
SLRNET_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("backbone.", "backbone."),                             # WideResNet-38, official names kept
    ("aspp.", "decoder.aspp."),                             # ASPP: aspp1..4, global_avg_pool.{1,2}, conv1, bn1
    ("fc8_skip.", "decoder.fc8_skip."),                     # skip projection conv3 -> 48 (conv, BN)
    ("fc8_x.", "decoder.fc8_x."),                           # fusion 3x3 conv (conv, BN)
    ("aux_head.0.", "aux_head.conv."),                      # aux head: 3x3 conv,
    ("aux_head.1.", "aux_head.bn."),                        #   BN (ReLU, Dropout hold nothing),
    ("aux_head.4.", "aux_head.classifier."),                #   1x1 classifier d -> K (bias)
    ("factorization_reconstruction.", "factorization."),    # transform1, transform2
    ("shallow_mask.", "seg_head.gci."),                     # GCI: fc_deep, fc_skip (BN affine=False), fc_cls
    ("last_conv.", "seg_head.last_conv."),                  # same nn.Sequential indices 0, 1, 4, 5, 8
)

#: ``(alias prefix, canonical official prefix)``: second names of the same tensors. They are checked to be
#: identical to the canonical tensor, then dropped.
SLRNET_OFFICIAL_DUPLICATES: tuple[tuple[str, str], ...] = (
    ("backbone.fixed_layers.0.", "backbone.conv1a."),
    ("backbone.fixed_layers.1.", "backbone.b2."),
    ("backbone.fixed_layers.2.", "backbone.b2_1."),
    ("backbone.fixed_layers.3.", "backbone.b2_2."),
    ("newly_added.0.", "aspp."),
    ("newly_added.1.", "shallow_mask."),
    ("newly_added.3.", "fc8_skip."),
    ("newly_added.4.", "fc8_x."),
    ("newly_added.5.", "last_conv."),
    ("newly_added.6.", "factorization_reconstruction."),
    ("newly_added.8.", "aux_head."),
)

#: ``(key or prefix, reason)``: official tensors wsseg does not keep.
SLRNET_OFFICIAL_DROPPED: tuple[tuple[str, str], ...] = (
    ("_aff.aff_x.kernel", "PAMR constant shift kernel (8, 1, 3, 3); wsseg's PAMR builds its stencil itself"),
    ("_aff.aff_m.kernel", "PAMR constant copy kernel (8, 1, 3, 3); wsseg's PAMR builds its stencil itself"),
    ("_aff.aff_std.kernel", "PAMR constant std kernel (9, 1, 3, 3); wsseg's PAMR builds its stencil itself"),
)

#: Keys that identify an official SLRNet state dict.
SLRNET_OFFICIAL_SIGNATURE: tuple[str, ...] = ("factorization_reconstruction.transform1.weight",
                                              "backbone.conv1a.weight", "last_conv.8.weight")

#: What the official training script writes.
SLRNET_OFFICIAL_CONTAINER = ("{'state_dict': model.module.state_dict(), 'epoch': ..., 'optimizer': ...} written by "
                             "tools/train_voc_wss.py")


def slrnet_config_from_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Builder arguments of :func:`wsseg.models.slrnet` read off an official (bare) SLRNet state dict.

    ``num_classes`` from ``last_conv.8.weight`` (K = the official ``num_classes - 1``), ``feature_dim``
    from ``aspp.conv1.weight`` (256) and the backbone width from ``backbone.conv1a.weight`` (64 channels:
    ``"resnet38d"``; 64/n: ``"resnet38d_w<n>"``).

    Raises:
        ValueError: if the width of ``conv1a`` does not divide 64.
    """
    width = int(state["backbone.conv1a.weight"].shape[0])
    if width < 1 or 64 % width:
        raise ValueError(f"state_dict: backbone.conv1a has {width} output channels; expected 64 (or a divisor of 64)")
    divisor = 64 // width
    return {"backbone": "resnet38d" if divisor == 1 else f"resnet38d_w{divisor}",
            "num_classes": int(state["last_conv.8.weight"].shape[0]),
            "feature_dim": int(state["aspp.conv1.weight"].shape[0])}
