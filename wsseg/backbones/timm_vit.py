"""Wrapper turning any timm ``VisionTransformer`` into a backbone with patch-token maps and attention logits."""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..utils.validation import check_tensor
from .base import BackboneOutput, split_norm_parameters
from .weights import load_weights

__all__ = ["TimmViTBackbone", "qk_logits", "resample_pos_embed"]

# positional-embedding resampling modes (TimmViTBackbone.pos_embed_interp, resample_pos_embed)
_POS_EMBED_INTERP: tuple[str, ...] = ("timm", "bicubic")


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


def resample_pos_embed(pos_embed: Tensor, new_size: Sequence[int], old_size: Sequence[int],
                       num_prefix_tokens: int = 1, mode: str = "bicubic") -> Tensor:
    r"""Resample a ViT's absolute positional embedding from its stored grid to another token grid.

    The first ``num_prefix_tokens`` entries (class / register tokens) are kept as they are; the grid part
    is reshaped to :math:`(1, C, h_0, w_0)`, resized to ``new_size`` and flattened back row-major. When
    ``new_size == old_size`` the input is returned unchanged (identity; plain bicubic at scale 1 is the
    identity too, its taps are exactly :math:`(0, 1, 0, 0)`). Resizing runs in float32 and the result is
    cast back to the input dtype (as timm does).

    * ``"bicubic"``: ``F.interpolate(mode="bicubic", align_corners=False)`` without antialiasing, the
      official CoSA ``prepare_tokens`` (and DINO / DINOv2's ``interpolate_pos_encoding`` kernel). Each
      output sample at source coordinate :math:`u = (i + \tfrac12)\,h_0/h - \tfrac12` is
      :math:`\sum_{k=-1}^{2} W(u - \lfloor u\rfloor - k)\, p_{\mathrm{clamp}(\lfloor u\rfloor + k)}`
      with the cubic-convolution kernel of Keys, :math:`a = -0.75`,

      .. math::

          W(t) = \begin{cases} (a+2)|t|^3 - (a+3)|t|^2 + 1, & |t| \le 1,\\
          a|t|^3 - 5a|t|^2 + 8a|t| - 4a, & 1 < |t| < 2,\\ 0, & \text{otherwise,}\end{cases}

      and border samples clamped to the edge (replicate padding).
    * ``"timm"``: timm's ``resample_abs_pos_embed`` (``antialias=True``): PyTorch's antialiased
      bicubic, the same formula with :math:`a = -0.5` (PIL's kernel), taps outside the grid dropped and
      the remaining weights renormalised to sum 1, and, when downsampling, the kernel stretched by the
      scale factor. When upsampling this is also TensorFlow 2's ``tf.image.resize(method="bicubic")``
      (Keys :math:`a = -0.5`, half-pixel centres, renormalised border taps).

    Args:
        pos_embed: the stored embedding, prefix entries first.
        new_size: target grid ``(h, w)``.
        old_size: stored grid ``(h0, w0)``.
        num_prefix_tokens: leading entries that are not grid positions (timm: ``0`` when the model has
            ``no_embed_class``, else its ``num_prefix_tokens``).
        mode: ``"bicubic"`` or ``"timm"``.

    Returns:
        the resampled embedding.

    Shape:
        - pos_embed: :math:`(1, P + h_0 w_0, C)`.
        - output: :math:`(1, P + h w, C)`.

    Raises:
        ValueError: for an unknown ``mode``, a ``pos_embed`` whose length is not
            ``num_prefix_tokens + h0 * w0`` or sizes that are not two positive ints.
        TypeError: if ``pos_embed`` is not a floating-point tensor.

    Example:
        >>> pe = torch.randn(1, 1 + 4 * 4, 8)
        >>> resample_pos_embed(pe, (8, 6), (4, 4)).shape
        torch.Size([1, 49, 8])
        >>> resample_pos_embed(pe, (4, 4), (4, 4)) is pe
        True

    Source:
        CoSA, github.com/youshyee/CoSA, models/vit/vit.py (``prepare_tokens``); timm
        ``timm/layers/pos_embed.py`` (``resample_abs_pos_embed``); Keys, "Cubic convolution interpolation
        for digital image processing", IEEE TASSP 1981.
    """
    if mode not in _POS_EMBED_INTERP:
        raise ValueError(f"mode: expected one of {_POS_EMBED_INTERP}, got {mode!r}")
    check_tensor(pos_embed, "pos_embed", ndim=3, dims="(1, P + h0*w0, C)", dtype="float")
    sizes = []
    for name, size in (("new_size", new_size), ("old_size", old_size)):
        size = tuple(size)
        if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
            raise ValueError(f"{name}: expected two positive ints (h, w), got {size}")
        sizes.append(size)
    new, old = sizes
    p = int(num_prefix_tokens)
    if pos_embed.shape[0] != 1 or pos_embed.shape[1] != p + old[0] * old[1]:
        raise ValueError(f"pos_embed: expected shape (1, {p} + {old[0]}*{old[1]}, C) for num_prefix_tokens={p} "
                         f"and old_size={old}, got {tuple(pos_embed.shape)}")
    if new == old:
        return pos_embed
    if mode == "timm":
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pos_embed, new_size=list(new), old_size=list(old), num_prefix_tokens=p)
    grid = rearrange(pos_embed[:, p:], "1 (h w) c -> 1 c h w", h=old[0], w=old[1]).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    grid = rearrange(grid, "1 c h w -> 1 (h w) c").to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :p], grid], dim=1)


def _pos_embed_with_backbone_resampling(model: nn.Module, x: Tensor) -> Tensor:
    """Replacement of a timm ``VisionTransformer._pos_embed`` (``dynamic_img_size=True``, NHWC patches) that
    resamples with :func:`resample_pos_embed` in ``model._wsseg_pos_embed_interp`` mode; otherwise the same
    steps as timm's method (prefix tokens, ``no_embed_class``, ``pos_drop``)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    to_cat = [t.expand(b, -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.pos_embed is None:
        return torch.cat(to_cat + [x], dim=1)
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos_embed = resample_pos_embed(model.pos_embed, (h, w), tuple(model.patch_embed.grid_size),
                                   num_prefix_tokens=prefix, mode=model._wsseg_pos_embed_interp)
    if model.no_embed_class:
        x = x + pos_embed
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
    else:
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        x = x + pos_embed
    return model.pos_drop(x)


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
        dynamic_img_size: accept any input size (multiple of the patch size), resampling the positional
            embedding to each token grid.
        pos_embed_interp: how the positional embedding is resampled when the token grid differs from
            the stored one (:func:`resample_pos_embed`): ``"timm"`` (default here; timm's antialiased
            bicubic, kernel :math:`a = -0.5`) or ``"bicubic"`` (plain ``F.interpolate`` bicubic,
            ``align_corners=False``, no antialias, :math:`a = -0.75`: the official CoSA kernel; needs a
            timm ``VisionTransformer`` and ``dynamic_img_size=True``). Prefix (class / register) entries
            are never resampled, and a grid equal to the stored one uses the stored embedding as is. The
            method builders pass their official kernel (``cosa``: ``"bicubic"``).
        **timm_kwargs: further ``timm.create_model`` keyword arguments.

    Shape:
        - Input: :math:`(B, 3, H, W)`, H and W multiples of the patch size ``p``.
        - features[i]: :math:`(B, C, H/p, W/p)` with :math:`C` = ``out_channels[i]``.
        - attn_logits[j]: :math:`(B, \\text{heads}, N, N)`, :math:`N = (H/p)(W/p)`.

    Raises:
        ImportError: timm cannot be imported.
        ValueError: bad ``out_indices`` / ``attn_indices``, non-square patches, an unknown
            ``pos_embed_interp`` (or ``"bicubic"`` without ``dynamic_img_size`` or on a model that is not a
            timm ``VisionTransformer``), or (in ``forward``) an
            input ``x`` that is not ``(B, in_chans, H, W)`` with sides multiple of the patch size.

    Attributes:
        model: the timm model.
        out_channels: embed dim per returned map.
        out_strides: patch size per returned map.
        attn_heads: attention heads of the blocks.
        patch_size: patch side in pixels.
        num_prefix_tokens: class + register tokens of the model.
        pos_embed_interp: the resampling mode (``"timm"`` or ``"bicubic"``).

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
                 dynamic_img_size: bool = True, pos_embed_interp: str = "timm", **timm_kwargs: Any) -> None:
        super().__init__()
        import timm

        if pos_embed_interp not in _POS_EMBED_INTERP:
            raise ValueError(f"pos_embed_interp: expected one of {_POS_EMBED_INTERP}, got {pos_embed_interp!r}")
        if pos_embed_interp != "timm" and not dynamic_img_size:
            raise ValueError(f"pos_embed_interp: {pos_embed_interp!r} resamples per input size and needs "
                             f"dynamic_img_size=True, got dynamic_img_size={dynamic_img_size!r}")

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
        self.pos_embed_interp = pos_embed_interp
        if pos_embed_interp != "timm":
            from timm.models.vision_transformer import VisionTransformer

            if not isinstance(self.model, VisionTransformer):
                raise ValueError(f"pos_embed_interp: {pos_embed_interp!r} is implemented for timm "
                                 f"VisionTransformer models, got {type(self.model).__name__} ('{model_name}'); "
                                 f"use pos_embed_interp='timm'")
            # timm's own _pos_embed resamples with antialias; this instance uses the chosen kernel instead
            self.model._wsseg_pos_embed_interp = pos_embed_interp
            self.model._pos_embed = types.MethodType(_pos_embed_with_backbone_resampling, self.model)
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
        self.grad_checkpointing = False
        for i in self.attn_indices:
            # a partial of a bound method (not a closure): copy.deepcopy re-binds it to the copy
            self.model.blocks[i].attn.register_forward_pre_hook(functools.partial(self._attn_hook, i),
                                                                with_kwargs=True)
        if weights is not None:
            self.load_weights(weights)

    def _attn_hook(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        if self._captured is not None:  # during our own forward
            self._captured[index] = qk_logits(module, x, self.num_prefix_tokens)
        elif (self.grad_checkpointing or getattr(self.model, "grad_checkpointing", False)) and torch.is_grad_enabled():
            # the recomputation of a checkpointed block in backward: the logits' own saved tensors must be
            # recomputed too (same operations in the same order as in the forward); the result is dropped
            qk_logits(module, x, self.num_prefix_tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of keeping its activations (gradient checkpointing).

        Uses timm's own switch (``model.set_grad_checkpointing``): timm's block loop then runs each block under
        ``torch.utils.checkpoint.checkpoint`` (non-reentrant, timm's default) in forward passes with
        gradients; passes under ``torch.no_grad`` run as before. The results are the same: the RNG state is
        restored for the recomputation, so drop-path and dropout draw the same masks, and the attention
        logits of ``attn_indices`` stay differentiable (their projections are recomputed with the block).
        Costs one more forward of the blocks per backward; saves their intermediate activations.

        Args:
            enable: switch it on (``True``) or off.

        Raises:
            ValueError: if the timm model has no ``set_grad_checkpointing``, or if attention logits are
                returned while timm is set to re-entrant checkpointing (``timm.layers.set_reentrant_ckpt``),
                which does not propagate gradients into values created inside a checkpointed block.

        Example:
            >>> vit = wsseg.backbones.TimmViTBackbone("test_vit", attn_indices=(-1,))
            >>> vit.set_grad_checkpointing()
            >>> vit(torch.randn(1, 3, 32, 32)).attn_logits[0].requires_grad
            True
        """
        setter = getattr(self.model, "set_grad_checkpointing", None)
        if setter is None:
            if enable:
                raise ValueError(f"grad_checkpointing: timm model '{self.model_name}' "
                                 f"({type(self.model).__name__}) has no set_grad_checkpointing")
            return
        if enable:
            self._check_non_reentrant()
        setter(bool(enable))
        self.grad_checkpointing = bool(enable)

    def _check_non_reentrant(self) -> None:
        from timm.layers import use_reentrant_ckpt

        if self.attn_indices and use_reentrant_ckpt():
            raise ValueError("grad_checkpointing: timm is set to re-entrant checkpointing "
                             "(timm.layers.set_reentrant_ckpt(True)), which gives no gradient to the attention "
                             f"logits of attn_indices={self.attn_indices}; call set_reentrant_ckpt(False)")

    def pos_embed_for_grid(self, height: int, width: int) -> Tensor | None:
        """The positional embedding added for a ``height`` × ``width`` token grid (prefix entries first),
        resampled with :attr:`pos_embed_interp`; ``None`` when the model has no absolute embedding.

        Shape:
            - output: :math:`(1, P + \\text{height}\\cdot\\text{width}, C)`, :math:`P` = 0 for
              ``no_embed_class`` models, else :attr:`num_prefix_tokens`.
        """
        m = self.model
        if getattr(m, "pos_embed", None) is None:
            return None
        prefix = 0 if getattr(m, "no_embed_class", False) else self.num_prefix_tokens
        return resample_pos_embed(m.pos_embed, (int(height), int(width)), tuple(m.patch_embed.grid_size),
                                  num_prefix_tokens=prefix, mode=self.pos_embed_interp)

    def load_weights(self, path: str | PathLike, strict: bool = True):
        """Load a timm-layout checkpoint into :attr:`model` (fp16 → model dtype); see :func:`load_weights`."""
        return load_weights(self.model, path, strict=strict)

    def split_norm_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(norm_params, other_params)`` of the ViT; see :func:`split_norm_parameters`."""
        return split_norm_parameters(self)

    def forward(self, x: Tensor, need_attn: bool = True) -> BackboneOutput:
        """Run the ViT; returns the selected block maps and attention logits (none with ``need_attn=False``,
        which saves their extra :math:`QK^\top` products in CAM-only passes)."""
        check_tensor(x, "x", ndim=4, dims="(B, C, H, W)", dtype="float")
        p = self.patch_size
        if x.shape[1] != self.in_chans or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"x: expected (B, {self.in_chans}, H, W) with H and W multiples of the patch size "
                             f"{p}, got shape {tuple(x.shape)}")
        last = len(self.model.blocks) - 1
        attn_indices = self.attn_indices if need_attn else ()
        take = sorted(set(self.out_indices) | set(attn_indices))
        if self.grad_checkpointing:
            if torch.is_grad_enabled():
                self._check_non_reentrant()
            # timm's loop checkpoints when its flag is set: only where there is a backward to save memory for
            self.model.grad_checkpointing = torch.is_grad_enabled()
        self._captured = {} if need_attn else None
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
                              attn_logits=[captured[i] for i in attn_indices])

    def extra_repr(self) -> str:
        return (f"model_name={self.model_name!r}, out_indices={self.out_indices}, "
                f"attn_indices={self.attn_indices}, drop_path_rate={self.drop_path_rate}, "
                f"dynamic_img_size={self.dynamic_img_size}, pos_embed_interp={self.pos_embed_interp!r}, "
                f"grad_checkpointing={self.grad_checkpointing}")
