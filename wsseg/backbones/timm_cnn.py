"""Any timm convolutional network as a backbone: feature maps of selected stages (``forward_intermediates``)."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

from torch import Tensor, nn

from ..utils.validation import check_tensor
from .base import BackboneOutput
from .weights import read_state_dict

__all__ = ["TimmCNNBackbone", "load_weights_by_order"]


def load_weights_by_order(model: nn.Module, path: str | PathLike) -> None:
    """Load a checkpoint into ``model``: by name when the keys match, else by **order** with equal shapes.

    The by-order rule maps a checkpoint of the same architecture written with other key names (e.g.
    torchvision's MobileNetV2 into timm's ``mobilenetv2_100``: the same tensors in the same order). Extra
    trailing checkpoint entries (a classifier the backbone does not have) are dropped. fp16 tensors are cast
    to the model's dtype.

    Raises:
        FileNotFoundError: if ``path`` does not exist (:func:`~wsseg.backbones.read_state_dict`).
        ValueError: naming the file, if the checkpoint has fewer tensors than the model or a shape differs.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    if set(sd) >= set(own):  # by name (extra checkpoint entries dropped)
        pairs = [(name, sd[name], name) for name in own]
    elif len(sd) < len(own):
        raise ValueError(f"weights: {path} has {len(sd)} tensors, the model needs {len(own)} (not the same "
                         f"architecture?)")
    else:  # by order
        pairs = [(k, v, name) for (k, v), name in zip(sd.items(), own, strict=False)]
    mapped = {}
    for key, value, name in pairs:
        target = own[name]
        if value.shape != target.shape:
            raise ValueError(f"weights: {path}: tensor {key!r} {tuple(value.shape)} does not match {name!r} "
                             f"{tuple(target.shape)}")
        mapped[name] = value.to(target.dtype) if value.is_floating_point() else value
    model.load_state_dict(mapped, strict=True)


class TimmCNNBackbone(nn.Module):
    """A timm convolutional network as a backbone: the outputs of selected stages, shallow to deep.

    Builds ``timm.create_model(model_name, pretrained=False, num_classes=0)`` (never downloads), optionally
    loads ``weights`` (:func:`load_weights_by_order`) and returns the feature maps of the stages in
    ``out_indices`` (indices into timm's ``feature_info``, negative allowed) through timm's public
    ``forward_intermediates``. Any input size works (stage ``i`` has ``ceil(H / stride_i)`` rows).

    Args:
        model_name: a timm CNN with ``forward_intermediates`` (e.g. ``"mobilenetv2_100"``, ``"resnet50"``,
            ``"test_efficientnet"``).
        weights: optional checkpoint path.
        out_indices: stages to return (default: the stride-4 stage and the last one).
        **timm_kwargs: further ``timm.create_model`` keyword arguments.

    Shape:
        - Input: :math:`(B, 3, H, W)`.
        - features[i]: :math:`(B, C_i, \\lceil H / s_i \\rceil, \\lceil W / s_i \\rceil)`.

    Raises:
        ValueError: for a model without ``forward_intermediates`` / ``feature_info``, bad ``out_indices``, or
            (in ``forward``) an input that is not ``(B, 3, H, W)``.

    Attributes:
        out_channels, out_strides: channels and stride of every returned map.

    Example:
        >>> net = wsseg.backbones.TimmCNNBackbone("test_efficientnet", out_indices=(1, -1))
        >>> [tuple(f.shape) for f in net(torch.randn(1, 3, 64, 64)).features]
        [(1, 24, 16, 16), (1, 64, 2, 2)]

    Source:
        timm (github.com/huggingface/pytorch-image-models), ``forward_intermediates`` of its CNN families.
    """

    def __init__(self, model_name: str, *, weights: str | PathLike | None = None, out_indices: Sequence[int] = (1, -1),
                 **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        kwargs = {**timm_kwargs, "pretrained": False, "num_classes": 0}
        self.model = timm.create_model(model_name, **kwargs)
        info = getattr(self.model, "feature_info", None)
        if not hasattr(self.model, "forward_intermediates") or not info:
            raise ValueError(f"model_name: '{model_name}' has no forward_intermediates / feature_info")
        n = len(info)
        idx = []
        for i in out_indices:
            if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
                raise ValueError(f"out_indices: expected stage indices in [{-n}, {n}), got {tuple(out_indices)}")
            idx.append(i % n)
        if not idx or idx != sorted(set(idx)):
            raise ValueError(f"out_indices: expected increasing, distinct stage indices, got {tuple(out_indices)}")
        self.model_name = model_name
        self.out_indices = tuple(idx)
        self.out_channels = [int(info[i]["num_chs"]) for i in idx]
        self.out_strides = [int(info[i]["reduction"]) for i in idx]
        if weights is not None:
            load_weights_by_order(self.model, weights)

    def forward(self, x: Tensor) -> BackboneOutput:
        """The selected stage outputs."""
        check_tensor(x, "x", ndim=4, dims="(B, 3, H, W)", dtype="float")
        if x.shape[1] != 3:
            raise ValueError(f"x: expected 3 channels (B, 3, H, W), got shape {tuple(x.shape)}")
        feats = self.model.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return BackboneOutput(features=list(feats), attn_logits=[])

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, out_indices={self.out_indices}"
