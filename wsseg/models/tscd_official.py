"""Key layout of the official TSCD network and its mapping onto :class:`~wsseg.models.TSCDNet` (data only).

The official network is ``TSCD`` of github.com/Rongtao-Xu/RepresentationLearning,
``SCD-AAAI2023/network/TSCD_model.py`` (AFA's ``wetr/model_attn_aff.py`` with TSCD's changes): attributes
``encoder`` (``mix_transformer.mit_b1``, SegFormer parameter names), ``decoder`` (``segformer_head.SegFormerHead``:
``linear_c1`` .. ``linear_c4`` each an ``MLP`` with a ``proj`` linear, ``linear_fuse`` an mmcv ``ConvModule``
whose parts are ``conv`` (no bias) and ``bn`` (SyncBN), ``linear_pred``), ``attn_proj`` (1×1 conv 16 → 1 with
bias) and ``classifier`` (1×1 conv 512 → K, no bias). ``Dropout2d`` modules hold no tensors. The training
script saves ``model.state_dict()`` of the ``DistributedDataParallel`` wrapper, so every key of the file
starts with ``module.``.

The tables are read by :func:`wsseg.models.convert_official_state_dict`; rules are tried in order and
the first matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = [
    "TSCD_OFFICIAL_RENAMES",
    "TSCD_OFFICIAL_DUPLICATES",
    "TSCD_OFFICIAL_DROPPED",
    "TSCD_OFFICIAL_SIGNATURE",
    "TSCD_OFFICIAL_CONTAINER",
    "tscd_config_from_official",
]

#: ``(official prefix, wsseg prefix)``: the official key ``official prefix + rest`` becomes
#: ``wsseg prefix + rest``.
TSCD_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder."),                            # MiT: patch_embed1.proj, block1.0.attn.q/kv/sr, norm1 ...
    ("classifier.", "classifier."),                      # CAM classifier, 1x1 conv C4 -> K, no bias
    ("decoder.linear_c1.proj.", "decoder.proj.0."),      # per-stage linear embeddings (MLP.proj)
    ("decoder.linear_c2.proj.", "decoder.proj.1."),
    ("decoder.linear_c3.proj.", "decoder.proj.2."),
    ("decoder.linear_c4.proj.", "decoder.proj.3."),
    ("decoder.linear_fuse.conv.", "decoder.fuse.0."),    # mmcv ConvModule: 1x1 conv 4E -> E, no bias ...
    ("decoder.linear_fuse.bn.", "decoder.fuse.1."),      # ... + SyncBN (weight, bias, running stats, counter)
    ("decoder.linear_pred.", "decoder.pred."),           # 1x1 conv E -> K + 1
    ("attn_proj.", "affinity.proj."),                    # affinity head, 1x1 conv 2 * heads -> 1
)

#: ``(alias prefix, canonical official prefix)``: names under which the official module registers a
#: tensor a second time. TSCD has none.
TSCD_OFFICIAL_DUPLICATES: tuple[tuple[str, str], ...] = ()

#: ``(key or prefix, reason)``: official tensors wsseg does not keep. TSCD has none.
TSCD_OFFICIAL_DROPPED: tuple[tuple[str, str], ...] = ()

#: Keys that identify an official TSCD state dict (after removing ``module.``).
TSCD_OFFICIAL_SIGNATURE: tuple[str, ...] = ("attn_proj.weight", "decoder.linear_fuse.conv.weight",
                                            "encoder.patch_embed1.proj.weight")

#: What the official training script writes.
TSCD_OFFICIAL_CONTAINER = ("torch.save(model.state_dict()) of the DistributedDataParallel-wrapped TSCD: a flat "
                           "{name: tensor} dict whose keys start with 'module.'")


def tscd_config_from_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Builder arguments of :func:`wsseg.models.tscd` read off an official (bare) TSCD state dict.

    ``num_classes`` from ``classifier.weight`` (K, the official code's ``num_classes - 1``),
    ``decoder_dim`` from ``decoder.linear_fuse.conv.weight`` and the MiT variant (``backbone``) from the
    stage widths (``encoder.norm{i}.weight``) and block counts, matched against
    :data:`wsseg.backbones.MIT_CONFIGS` (``None`` when none matches; ``backbone_shape`` describes what
    was found). The patch-embedding strides are not stored; the builder's default (4, 2, 2, 1) is TSCD's.
    """
    from ..backbones.mix_transformer import MIT_CONFIGS

    dims = tuple(int(state[f"encoder.norm{s}.weight"].shape[0]) for s in range(1, 5))
    depths = tuple(len({k.split(".")[2] for k in state if k.startswith(f"encoder.block{s}.")}) for s in range(1, 5))
    variant = next((name for name, cfg in MIT_CONFIGS.items()
                    if tuple(cfg["embed_dims"]) == dims and tuple(cfg["depths"]) == depths), None)
    return {"backbone": variant, "backbone_shape": f"MiT stage widths {dims}, depths {depths}", "num_classes": int(state["classifier.weight"].shape[0]),
            "decoder_dim": int(state["decoder.linear_fuse.conv.weight"].shape[0])}
