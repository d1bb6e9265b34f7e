"""Common output type and helpers shared by every backbone in :mod:`wsseg.backbones`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

__all__ = ["BackboneOutput", "split_norm_parameters"]

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.RMSNorm,
)


@dataclass
class BackboneOutput:
    """What every backbone's ``forward`` returns: multi-level feature maps and attention logits.

    Args:
        features: feature maps, shallow to deep, each ``(B, C_i, h_i, w_i)`` with
            ``C_i = out_channels[i]`` and ``h_i = H / out_strides[i]``.
        attn_logits: pre-softmax, **unscaled** attention logits :math:`q k^\\top` over patch tokens
            only (class / register tokens removed), one ``(B, heads, N, N)`` tensor per selected
            block, ``N = h * w`` of the block's token grid. Empty when no block was selected.

    Shape:
        - features[i]: :math:`(B, C_i, h_i, w_i)`
        - attn_logits[j]: :math:`(B, \\text{heads}, N, N)`

    Example:
        >>> out = wsseg.backbones.BackboneOutput(features=[torch.zeros(1, 8, 4, 4)])
        >>> out.features[-1].shape, out.attn_logits
        (torch.Size([1, 8, 4, 4]), [])
    """

    features: list[Tensor]
    attn_logits: list[Tensor] = field(default_factory=list)


def split_norm_parameters(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split a module's trainable parameters into normalisation-layer parameters and the rest.

    A parameter counts as a norm parameter when it belongs directly to a normalisation layer
    (LayerNorm, GroupNorm, BatchNorm / SyncBatchNorm / InstanceNorm, RMSNorm). For the MiT encoder
    this is exactly the set the official TSCD / AFA code selects with ``"norm" in name``
    (patch-embed norms, block ``norm1``/``norm2``, spatial-reduction ``attn.norm`` and the stage
    norms ``norm1`` … ``norm4``); TSCD trains that group with learning rate 0 and no weight decay.

    Args:
        module: any module.

    Returns:
        ``(norm_params, other_params)``: two lists, disjoint, covering every parameter with
        ``requires_grad=True`` exactly once, in ``named_parameters`` order.

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
        >>> norm, other = wsseg.backbones.split_norm_parameters(m)
        >>> len(norm), len(other)
        (2, 2)
    """
    norm_ids: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, _NORM_TYPES):
            norm_ids.update(id(p) for p in sub.parameters(recurse=False))
    norm: list[nn.Parameter] = []
    other: list[nn.Parameter] = []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (norm if id(p) in norm_ids else other).append(p)
    return norm, other
