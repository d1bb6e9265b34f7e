"""Key layout of the official CoSA network and its mapping onto :class:`~wsseg.models.CoSANet` (data only).

The official network is ``VITNetwork`` of github.com/youshyee/CoSA, ``models/__init__.py``: attributes
``encoder`` (``models/vit/vit.py``, ``VisionTransformer`` built by ``vit_base_patch16_224``: ``cls_token``,
``pos_embed`` (1, 1 + 14·14, D) stored for 224 pixels, ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm`` and the ImageNet ``head`` (1000 × D), which
``VITNetwork.forward`` never calls), ``decoder`` (``models/decoder/conv_head.py``, ``LargeFOV``: bias-free
``conv6``, ``conv7``, ``conv8``), ``classifier`` and ``aux_classifier`` (bias-free 1×1 convs D → K). The
encoder names are timm's, so they map one to one onto ``encoder.model.*`` of
:class:`~wsseg.backbones.TimmViTBackbone`. Checkpoints are written by ``utils/torch_helper.py``
(``save_best``) as ``{"s_or_t", "model": state_dict, "epoch", "args": argparse.Namespace, "result"}``.

The auxiliary-CAM block (``--aux_layer``) is not in the tensors: it is read from the container's
``args`` when present (``run_voc.sh`` passes −4; the shipped VOC log was produced with −3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor

__all__ = [
    "COSA_OFFICIAL_RENAMES",
    "COSA_OFFICIAL_DUPLICATES",
    "COSA_OFFICIAL_DROPPED",
    "COSA_OFFICIAL_SIGNATURE",
    "COSA_OFFICIAL_CONTAINER",
    "COSA_VIT_BY_SHAPE",
    "cosa_config_from_official",
    "cosa_config_from_args",
]

#: ``(official prefix, wsseg prefix)``, first match wins (the dropped head is matched before).
COSA_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.", "encoder.model."),            # timm names: cls_token, pos_embed, patch_embed.proj, blocks.i.*, norm
    ("classifier.", "classifier."),            # main CAM classifier, 1x1 conv D -> K, no bias
    ("aux_classifier.", "aux_classifier."),    # auxiliary CAM classifier (block aux_layer), 1x1 conv D -> K
    ("decoder.conv6.", "decoder.conv6."),      # LargeFOV: 3x3 dilated D -> 512, no bias
    ("decoder.conv7.", "decoder.conv7."),      # 3x3 dilated 512 -> 512, no bias
    ("decoder.conv8.", "decoder.conv8."),      # 1x1 512 -> K + 1, no bias
)

#: ``(alias prefix, canonical official prefix)``: CoSA registers every tensor once.
COSA_OFFICIAL_DUPLICATES: tuple[tuple[str, str], ...] = ()

#: ``(key or prefix, reason)``: official tensors wsseg does not keep.
COSA_OFFICIAL_DROPPED: tuple[tuple[str, str], ...] = (
    ("encoder.head.", "the ViT's ImageNet classification head (1000 x D), built by VisionTransformer but never "
                      "called by VITNetwork.forward"),
)

#: Keys that identify an official CoSA state dict.
COSA_OFFICIAL_SIGNATURE: tuple[str, ...] = ("aux_classifier.weight", "encoder.pos_embed", "decoder.conv6.weight")

#: What the official code writes.
COSA_OFFICIAL_CONTAINER = ("{'model': state_dict, 'args': argparse.Namespace, 'epoch': ..., 's_or_t': ..., "
                           "'result': ...} written by save_best (utils/torch_helper.py)")

#: timm ViT names by ``(embed dim, depth, patch size, MLP hidden width)`` (the number of heads is not stored
#: in the tensors). CoSA releases ViT-B/16; ``test_vit`` is timm's tiny test model.
COSA_VIT_BY_SHAPE: dict[tuple[int, int, int, int], str] = {
    (768, 12, 16, 3072): "vit_base_patch16_224",
    (384, 12, 16, 1536): "vit_small_patch16_224",
    (192, 12, 16, 768): "vit_tiny_patch16_224",
    (1024, 24, 16, 4096): "vit_large_patch16_224",
    (64, 6, 16, 192): "test_vit",
}


def cosa_config_from_official(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Builder arguments of :func:`wsseg.models.cosa` read off an official (bare) CoSA state dict.

    ``num_classes`` from ``classifier.weight`` (K = the official ``num_classes - 1``), ``hidden_channels``
    from ``decoder.conv6.weight``, ``img_size`` from the stored positional grid (14 × 14 patches of 16 →
    224) and ``backbone`` from :data:`COSA_VIT_BY_SHAPE` (``None`` when the shape is not listed;
    ``backbone_shape`` describes it).

    Raises:
        ValueError: if the positional grid is not square.
    """
    patch = int(state["encoder.patch_embed.proj.weight"].shape[-1])
    dim = int(state["encoder.patch_embed.proj.weight"].shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    hidden = int(state["encoder.blocks.0.mlp.fc1.weight"].shape[0])
    tokens = int(state["encoder.pos_embed"].shape[1]) - 1
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"state_dict: encoder.pos_embed holds {tokens} patch positions, not a square grid")
    return {"backbone": COSA_VIT_BY_SHAPE.get((dim, depth, patch, hidden)),
            "backbone_shape": f"ViT embed dim {dim}, {depth} blocks, patch {patch}, MLP width {hidden}", "num_classes": int(state["classifier.weight"].shape[0]),
            "hidden_channels": int(state["decoder.conv6.weight"].shape[0]), "img_size": side * patch}


def cosa_config_from_args(args: object) -> dict[str, Any]:
    """Builder arguments stored only in the container's ``args`` (an ``argparse.Namespace``).

    ``aux_layer`` (``--aux_layer``, the block of the auxiliary CAM) and ``pooling`` (``--isgap``: ``"gap"``
    if true, else ``"gmp"``). Missing or ill-typed fields are skipped.
    """
    out: dict[str, Any] = {}
    aux = getattr(args, "aux_layer", None)
    if isinstance(aux, int) and not isinstance(aux, bool):
        out["aux_layer"] = aux
    isgap = getattr(args, "isgap", None)
    if isinstance(isgap, bool):
        out["pooling"] = "gap" if isgap else "gmp"
    return out
