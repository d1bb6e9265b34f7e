"""Wrapper turning any timm ``VisionTransformer`` into a backbone with patch-token maps and attention logits."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

from torch import Tensor, nn

from ..utils.validation import check_tensor
from .base import BackboneOutput, split_norm_parameters
from .weights import load_weights

__all__ = ["TimmViTBackbone", "qk_logits"]


def qk_logits(attn: nn.Module, x: Tensor, num_prefix_tokens: int = 0) -> Tensor:
    """Unscaled pre-softmax attention logits :math:`q k^\\top` of a timm ``Attention`` module.

    Recomputes queries and keys with the module's fused ``qkv`` projection (and its ``q_norm`` /
    ``k_norm`` when present) from the block's normalised input ``x``, then drops the prefix
    (class / register) tokens on both axes:

    .. math::

        L_h = (\\mathrm{qnorm}(x W_q^h + b_q^h))\\,(\\mathrm{knorm}(x W_k^h + b_k^h))^\\top,
        \\qquad \\mathrm{attn}_h = \\mathrm{softmax}(L_h \\cdot \\mathrm{scale}).

    Args:
        attn: a timm ``Attention`` (attributes ``qkv``, ``num_heads``, optional ``q_norm``/``k_norm``).
        x: the attention module's input tokens (after the block's ``norm1``).
        num_prefix_tokens: leading non-patch tokens to drop.

    Returns:
        logits over patch tokens, in the dtype of the projection (autocast-aware).

    Shape:
        - x: :math:`(B, T, C)` with :math:`T = \\text{num_prefix_tokens} + N`
        - output: :math:`(B, \\text{heads}, N, N)`

    Example:
        >>> attn = torch.nn.Module(); attn.qkv = torch.nn.Linear(8, 24); attn.num_heads = 2
        >>> wsseg.backbones.qk_logits(attn, torch.randn(1, 5, 8), num_prefix_tokens=1).shape
        torch.Size([1, 2, 4, 4])

    Source:
        timm ``timm/layers/attention.py`` (``Attention.forward``), github.com/huggingface/pytorch-image-models.
    """
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    q_norm = getattr(attn, "q_norm", None)
    k_norm = getattr(attn, "k_norm", None)
    if q_norm is not None:
        q = q_norm(q)
    if k_norm is not None:
        k = k_norm(k)
    q, k = q[:, :, num_prefix_tokens:], k[:, :, num_prefix_tokens:]
    return q @ k.transpose(-2, -1)


def _normalize_indices(indices: Sequence[int], depth: int, name: str) -> tuple[int, ...]:
    try:
        items = tuple(indices)
    except TypeError as e:
        raise TypeError(f"{name}: expected a sequence of ints, got {type(indices).__name__}") from e
    out = []
    for i in items:
        if isinstance(i, bool) or not isinstance(i, int) or not -depth <= i < depth:
            raise ValueError(f"{name}: expected block indices in [{-depth}, {depth}) for a {depth}-block "
                             f"model, got {items}")
        out.append(i % depth)
    return tuple(out)


class TimmViTBackbone(nn.Module):
    """A timm Vision Transformer as a backbone: patch-token feature maps plus attention logits.

    Builds ``timm.create_model(model_name, pretrained=False, num_classes=0, dynamic_img_size=...)``
    (never downloads), optionally loads ``weights`` with :func:`load_weights` (strict, fp16 → fp32),
    and runs it through timm's public ``forward_intermediates``. For every block in ``out_indices`` the
    block's output patch tokens (class / register tokens dropped) are reshaped to a
    ``(B, C, H/p, W/p)`` map. **Choice:** the last block's map is taken *after* the model's final
    norm (it equals timm's ``forward_features`` patch tokens); earlier blocks are the raw residual
    stream (timm's ``norm=False``). For every block in ``attn_indices`` the unscaled pre-softmax
    logits over patch tokens are captured by a forward pre-hook on ``block.attn``
    (:func:`qk_logits`), which leaves the model's own computation untouched:

    .. math::

        L = q k^\\top,\\qquad \\mathrm{attn} = \\mathrm{softmax}(L / \\sqrt{d}).

    Note that timm's attention (and so the block output) also attends to the prefix tokens; the
    returned logits are the patch-to-patch sub-block of the full map.

    Args:
        model_name: any timm ``VisionTransformer`` name (e.g. ``"vit_small_patch14_dinov2"``,
            ``"vit_base_patch16_224"``, ``"test_vit"``).
        weights: optional checkpoint path in timm key layout (``.pth``/``.pt``/``.safetensors``).
        out_indices: blocks whose outputs are returned (negative allowed, ``-1`` = last).
        attn_indices: blocks whose attention logits are returned (negative allowed).
        drop_path_rate: stochastic-depth rate passed to timm.
        img_size: ``img_size`` passed to timm (sets the stored positional-embedding grid); ``None``
            keeps the model's default.
        dynamic_img_size: let timm resample the positional embedding to each input size.
        **timm_kwargs: further ``timm.create_model`` keyword arguments.

    Shape:
        - Input: :math:`(B, 3, H, W)`, H and W multiples of the patch size ``p``.
        - features[i]: :math:`(B, C, H/p, W/p)` with :math:`C` = ``out_channels[i]``.
        - attn_logits[j]: :math:`(B, \\text{heads}, N, N)`, :math:`N = (H/p)(W/p)`.

    Raises:
        ImportError: timm cannot be imported.
        ValueError: bad ``out_indices`` / ``attn_indices``, non-square patches, or (in ``forward``) an
            input ``x`` that is not ``(B, in_chans, H, W)`` with sides multiple of the patch size.

    Attributes:
        model: the timm model.
        out_channels: embed dim per returned map.
        out_strides: patch size per returned map.
        attn_heads: attention heads of the blocks.
        patch_size: patch side in pixels.
        num_prefix_tokens: class + register tokens of the model.

    Example:
        >>> vit = wsseg.backbones.TimmViTBackbone("test_vit", attn_indices=(-1,))
        >>> out = vit(torch.randn(1, 3, 32, 48))
        >>> out.features[0].shape, out.attn_logits[0].shape
        (torch.Size([1, 64, 2, 3]), torch.Size([1, 2, 6, 6]))

    Source:
        timm (github.com/huggingface/pytorch-image-models, timm/models/vision_transformer.py);
        DINOv2, Oquab et al. TMLR 2024 (github.com/facebookresearch/dinov2).
    """

    def __init__(self, model_name: str = "vit_small_patch14_dinov2", *, weights: str | PathLike | None = None,
                 out_indices: Sequence[int] = (-1,), attn_indices: Sequence[int] = (),
                 drop_path_rate: float = 0.0, img_size: int | tuple[int, int] | None = None,
                 dynamic_img_size: bool = True, **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        kwargs = dict(pretrained=False, num_classes=0, dynamic_img_size=dynamic_img_size,
                      drop_path_rate=drop_path_rate)
        if img_size is not None:
            kwargs["img_size"] = img_size
        kwargs.update(timm_kwargs)
        kwargs["pretrained"] = False  # never download
        self.model = timm.create_model(model_name, **kwargs)
        for attr in ("blocks", "patch_embed", "forward_intermediates", "num_prefix_tokens"):
            if not hasattr(self.model, attr):
                raise ValueError(f"model_name: '{model_name}' is not a timm VisionTransformer-like model "
                                 f"(missing attribute '{attr}')")
        self.model_name = model_name
        self.drop_path_rate = float(drop_path_rate)
        self.dynamic_img_size = bool(dynamic_img_size)
        depth = len(self.model.blocks)
        self.out_indices = _normalize_indices(out_indices, depth, "out_indices")
        if not self.out_indices:
            raise ValueError("out_indices: expected at least one block index, got ()")
        self.attn_indices = _normalize_indices(attn_indices, depth, "attn_indices")
        ps = tuple(self.model.patch_embed.patch_size)
        if ps[0] != ps[1]:
            raise ValueError(f"model_name: only square patches are supported, got patch_size {ps}")
        self.patch_size: int = int(ps[0])
        self.num_prefix_tokens: int = int(self.model.num_prefix_tokens)
        self.in_chans: int = int(self.model.patch_embed.proj.in_channels)
        dim = int(self.model.num_features)
        self.out_channels: list[int] = [dim] * len(self.out_indices)
        self.out_strides: list[int] = [self.patch_size] * len(self.out_indices)
        self.attn_heads: int = int(self.model.blocks[self.attn_indices[-1] if self.attn_indices else -1]
                                   .attn.num_heads)
        self._captured: dict[int, Tensor] | None = None
        for i in self.attn_indices:
            self.model.blocks[i].attn.register_forward_pre_hook(self._make_hook(i), with_kwargs=True)
        if weights is not None:
            self.load_weights(weights)

    def _make_hook(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._captured is not None:  # only during our own forward (not checkpoint re-runs)
                x = args[0] if args else kwargs["x"]
                self._captured[index] = qk_logits(module, x, self.num_prefix_tokens)
        return hook

    def load_weights(self, path: str | PathLike, strict: bool = True):
        """Load a timm-layout checkpoint into :attr:`model` (fp16 → model dtype); see :func:`load_weights`."""
        return load_weights(self.model, path, strict=strict)

    def split_norm_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(norm_params, other_params)`` of the ViT; see :func:`split_norm_parameters`."""
        return split_norm_parameters(self)

    def forward(self, x: Tensor) -> BackboneOutput:
        """Run the ViT; returns the selected block maps and attention logits."""
        check_tensor(x, "x", ndim=4, dims="(B, C, H, W)", dtype="float")
        p = self.patch_size
        if x.shape[1] != self.in_chans or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"x: expected (B, {self.in_chans}, H, W) with H and W multiples of the patch size "
                             f"{p}, got shape {tuple(x.shape)}")
        last = len(self.model.blocks) - 1
        take = sorted(set(self.out_indices) | set(self.attn_indices))
        self._captured = {}
        try:
            final, inter = self.model.forward_intermediates(
                x, indices=take, norm=False, stop_early=True, output_fmt="NCHW")
            captured = self._captured
        finally:
            self._captured = None
        maps = dict(zip(take, inter, strict=True))
        if last in self.out_indices:
            b, h, w = x.shape[0], x.shape[-2] // p, x.shape[-1] // p
            tokens = final[:, self.num_prefix_tokens:]
            maps[last] = tokens.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        return BackboneOutput(features=[maps[i] for i in self.out_indices],
                              attn_logits=[captured[i] for i in self.attn_indices])

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, out_indices={self.out_indices}, "
                f"attn_indices={self.attn_indices}, drop_path_rate={self.drop_path_rate}, "
                f"dynamic_img_size={self.dynamic_img_size}")
