"""Mix Transformer (MiT), the hierarchical SegFormer encoder, returning stage maps and attention logits."""

from __future__ import annotations

import math
from collections.abc import Sequence
from os import PathLike

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

from ..utils.validation import check_tensor
from .base import BackboneOutput, split_norm_parameters
from .weights import load_weights

__all__ = ["MixTransformer", "mit_b0", "mit_b1", "mit_b2", "MIT_CONFIGS"]

#: Per-variant architecture of the SegFormer encoders (dims, heads, depths, spatial-reduction ratios).
MIT_CONFIGS: dict[str, dict[str, tuple[int, ...]]] = {
    "mit_b0": dict(embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2),
                   sr_ratios=(8, 4, 2, 1)),
    "mit_b1": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(2, 2, 2, 2),
                   sr_ratios=(8, 4, 2, 1)),
    "mit_b2": dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), depths=(3, 4, 6, 3),
                   sr_ratios=(8, 4, 2, 1)),
}

_BLOCK_EPS = 1e-6  # LayerNorm eps inside the blocks and of the stage norms (official norm_layer)


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``p``, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def _token_grid(x: Tensor, h: int, w: int) -> Tensor:
    """Tokens ``(B, h*w, C)`` as a ``(B, C, h, w)`` map **without a copy** (a channels-last view).

    A convolution of a channels-last input returns a channels-last output, whose ``flatten(2).transpose(1, 2)``
    is again a contiguous token sequence: the token <-> grid round trips around the depthwise, the
    spatial-reduction and the patch-embedding convolutions copy nothing (the official code's
    ``transpose(1, 2).view(B, C, H, W)`` / ``permute(...).contiguous()`` copy every map twice).
    """
    return rearrange(x, "b (h w) c -> b c h w", h=h, w=w)


class _DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return _drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.4f}"


class _OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: conv (kernel k, stride s, padding k//2) then LayerNorm (eps 1e-5)."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class _EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from an sr×sr strided-conv reduced token grid."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"num_heads: {num_heads} must divide the embedding dim {dim}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def qkv(self, x: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``(B, heads, h*w, d)`` and keys/values ``(B, heads, N_k, d)`` for tokens ``x``."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.sr(_token_grid(x, h, w)).flatten(2).transpose(1, 2)
            x = self.norm(x)
        k, v = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor, h: int, w: int, need_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        b, n, c = x.shape
        q, k, v = self.qkv(x, h, w)
        logits = None
        if need_logits:
            raw = q @ k.transpose(-2, -1)  # (B, heads, N_q, N_k), unscaled
            attn = self.attn_drop((raw * self.scale).softmax(dim=-1))
            out = attn @ v
            logits = raw
            if self.sr_ratio > 1:
                # average-pool the query axis on its (h, w) grid so that the map is N_k x N_k
                grid = raw.reshape(b, self.num_heads, h, w, raw.shape[-1])
                grid = F.avg_pool3d(grid, kernel_size=(self.sr_ratio, self.sr_ratio, 1),
                                    stride=(self.sr_ratio, self.sr_ratio, 1))
                logits = grid.reshape(b, self.num_heads, -1, raw.shape[-1])
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0,
                                                 scale=self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))
        return out, logits

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"


class _DWConv(nn.Module):
    """3×3 depthwise convolution applied to a token sequence laid out on its (h, w) grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return self.dwconv(_token_grid(x, h, w)).flatten(2).transpose(1, 2)


class _MixFFN(nn.Module):
    """Mix-FFN: fc1 → depthwise 3×3 conv → GELU → fc2 (dropout after the activation and fc2)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x), h, w)))
        return self.drop(self.fc2(x))


class _MiTBlock(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MixFFN(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.attn = _EfficientSelfAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, drop)
        self.drop_path = _DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.mlp = _MixFFN(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, h: int, w: int, need_logits: bool = False) -> tuple[Tensor, Tensor | None]:
        a, logits = self.attn(self.norm1(x), h, w, need_logits)
        x = x + self.drop_path(a)
        x = x + self.drop_path(self.mlp(self.norm2(x), h, w))
        return x, logits


def _init_weights(m: nn.Module) -> None:
    """Official SegFormer initialisation: trunc-normal(0.02) linears, fan-out normal convs, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _drop_head(key: str) -> str | None:
    return None if key.startswith("head.") else key


def _as_tuple4(value: Sequence[int] | Sequence[float], name: str) -> tuple:
    t = tuple(value)
    if len(t) != 4:
        raise ValueError(f"{name}: expected 4 values (one per stage), got {t}")
    return t


class MixTransformer(nn.Module):
    """Mix Transformer (MiT) encoder of SegFormer with four stages and attention-logit outputs.

    Each stage ``i`` embeds its input with an overlapping strided convolution (7×7, stride
    ``strides[0]`` for stage 1; 3×3, stride ``strides[i]`` after) followed by LayerNorm, then runs
    ``depths[i]`` pre-norm blocks of efficient self-attention and Mix-FFN, and ends with a stage
    LayerNorm (``norm1`` .. ``norm4``). Efficient self-attention computes keys/values from the token
    grid reduced by an ``sr × sr`` strided conv + LayerNorm (``sr = sr_ratios[i]``):

    .. math::

        L &= q k^\\top \\in \\mathbb{R}^{N_q \\times N_k},\\qquad
        \\mathrm{Attn}(x) = \\mathrm{softmax}(L / \\sqrt{d})\\, v, \\\\
        \\mathrm{MixFFN}(x) &= \\mathrm{fc}_2(\\mathrm{GELU}(\\mathrm{DWConv}_{3\\times3}(\\mathrm{fc}_1(x)))).

    For the blocks in ``attn_indices`` the unscaled logits :math:`L` are returned; when ``sr > 1``
    the query axis is average-pooled by ``sr × sr`` on its grid so the map is square
    (:math:`N_k \\times N_k`), as in the official AFA/TSCD code (under autocast this pooling runs, and
    returns, in float32). Blocks not selected use fused
    scaled-dot-product attention (same result up to floating-point rounding).

    Faithful defaults (SegFormer ``mit_b*``): qkv bias, MLP ratio 4, LayerNorm eps 1e-6 in blocks and
    stage norms (1e-5 in patch embeds and the spatial-reduction norm, as in the official code),
    drop-path rising linearly from 0 to ``drop_path_rate`` over all blocks, dropout 0, official
    weight initialisation. Parameter names follow the official checkpoint layout
    (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``attn.kv``, ``attn.sr``,
    ``attn.norm``, ``mlp.fc1``, ``mlp.dwconv.dwconv``, ``mlp.fc2``, ``norm1`` .. ``norm4``), so
    SegFormer ImageNet checkpoints load strictly via ``weights=`` (their ``head.*`` keys are dropped).

    Args:
        embed_dims: channels of the four stages.
        num_heads: attention heads per stage.
        depths: blocks per stage.
        sr_ratios: spatial-reduction ratio of keys/values per stage.
        strides: patch-embedding strides; SegFormer ``(4, 2, 2, 2)`` (stage strides 4, 8, 16, 32);
            TSCD uses ``(4, 2, 2, 1)`` (stage strides 4, 8, 16, 16).
        mlp_ratio: Mix-FFN hidden width / dim.
        in_chans: input channels.
        qkv_bias: bias in the ``q`` and ``kv`` projections.
        drop_rate: dropout after the MLP activation, the MLP output and the attention projection.
        attn_drop_rate: dropout on the attention probabilities.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over all blocks).
        attn_indices: blocks whose attention logits are returned, indexing the flat list of all
            ``sum(depths)`` blocks (negative allowed); default ``(-2, -1)`` = the last two blocks of
            stage 4 (for TSCD / AFA affinity).
        weights: optional checkpoint path loaded strictly with :func:`load_weights` (``head.*``
            keys dropped).

    Shape:
        - Input: :math:`(B, \\text{in_chans}, H, W)`, float, ImageNet-normalised.
        - features[i]: :math:`(B, \\text{embed_dims}[i], H_i, W_i)`, :math:`H_i \\approx H /
          \\text{out_strides}[i]` (each conv of stride s with padding k//2 maps n to
          :math:`\\lfloor (n - 1)/s \\rfloor + 1`).
        - attn_logits[j]: :math:`(B, \\text{heads}, N_k, N_k)`, :math:`N_k = \\lfloor H_i/sr
          \\rfloor \\lfloor W_i/sr \\rfloor` of the block's stage (for stage 4, sr = 1:
          :math:`N = H_4 W_4`).

    Raises:
        ValueError: bad configuration (lengths, ``attn_indices`` out of range) or, in ``forward``, an
            input ``x`` of the wrong shape or too small for the spatial reductions.

    Attributes:
        out_channels: ``list(embed_dims)``.
        out_strides: cumulative products of ``strides``.
        attn_heads: heads of the (last) selected attention block's stage.

    Example:
        >>> enc = wsseg.backbones.mit_b0(strides=(4, 2, 2, 1))
        >>> out = enc(torch.randn(1, 3, 64, 64))
        >>> [tuple(f.shape[1:]) for f in out.features]
        [(32, 16, 16), (64, 8, 8), (160, 4, 4), (256, 4, 4)]
        >>> out.attn_logits[-1].shape  # last two blocks of stage 4: (B, 8, 16, 16)
        torch.Size([1, 8, 16, 16])

    Source:
        SegFormer, Xie et al. NeurIPS 2021; github.com/NVlabs/SegFormer,
        mmseg/models/backbones/mix_transformer.py. Attention logits and strides as in AFA
        (github.com/rulixiang/afa, wetr/mix_transformer.py) and TSCD (AAAI 2023).
    """

    def __init__(self, embed_dims: Sequence[int] = (64, 128, 320, 512), num_heads: Sequence[int] = (1, 2, 5, 8),
                 depths: Sequence[int] = (2, 2, 2, 2), sr_ratios: Sequence[int] = (8, 4, 2, 1), *,
                 strides: Sequence[int] = (4, 2, 2, 2), mlp_ratio: float = 4.0, in_chans: int = 3,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, attn_indices: Sequence[int] = (-2, -1),
                 weights: str | PathLike | None = None) -> None:
        super().__init__()
        self.embed_dims = tuple(int(d) for d in _as_tuple4(embed_dims, "embed_dims"))
        self.num_heads = tuple(int(h) for h in _as_tuple4(num_heads, "num_heads"))
        self.depths = tuple(int(d) for d in _as_tuple4(depths, "depths"))
        self.sr_ratios = tuple(int(s) for s in _as_tuple4(sr_ratios, "sr_ratios"))
        self.strides = tuple(int(s) for s in _as_tuple4(strides, "strides"))
        if any(s < 1 for s in self.strides):
            raise ValueError(f"strides: expected positive integers, got {self.strides}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths: expected positive integers, got {self.depths}")
        self.drop_path_rate = float(drop_path_rate)
        self.in_chans = int(in_chans)

        total = sum(self.depths)
        idx = []
        for i in attn_indices:
            if not isinstance(i, int) or not -total <= i < total:
                raise ValueError(f"attn_indices: expected block indices in [{-total}, {total}), "
                                 f"got {tuple(attn_indices)}")
            idx.append(i % total)
        self.attn_indices = tuple(idx)
        self._block_stage = [s for s, d in enumerate(self.depths) for _ in range(d)]

        dpr = torch.linspace(0, self.drop_path_rate, total).tolist()
        cur = 0
        prev = self.in_chans
        for s in range(4):
            k = 7 if s == 0 else 3
            self.add_module(f"patch_embed{s + 1}",
                            _OverlapPatchEmbed(prev, self.embed_dims[s], k, self.strides[s]))
            self.add_module(f"block{s + 1}", nn.ModuleList([
                _MiTBlock(self.embed_dims[s], self.num_heads[s], self.sr_ratios[s], mlp_ratio, qkv_bias,
                          drop_rate, attn_drop_rate, dpr[cur + j]) for j in range(self.depths[s])]))
            self.add_module(f"norm{s + 1}", nn.LayerNorm(self.embed_dims[s], eps=_BLOCK_EPS))
            cur += self.depths[s]
            prev = self.embed_dims[s]
        self.apply(_init_weights)

        self.out_channels: list[int] = list(self.embed_dims)
        self.out_strides: list[int] = [math.prod(self.strides[: s + 1]) for s in range(4)]
        last = self._block_stage[self.attn_indices[-1]] if self.attn_indices else 3
        self.attn_heads: int = self.num_heads[last]
        self.grad_checkpointing = False
        if weights is not None:
            self.load_weights(weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of keeping its activations (gradient checkpointing).

        When enabled, each block runs under ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`` in
        forward passes with gradients (passes under ``torch.no_grad`` are unchanged). Only the block inputs
        are kept; the block is run again during ``backward``. The results are the same: the RNG state is
        restored for the recomputation (``preserve_rng_state``), so drop-path and dropout draw the same
        masks, and the returned attention logits stay differentiable. Costs one more forward of the blocks
        per backward; saves their intermediate activations (attention maps, MLP hidden states).

        Args:
            enable: switch it on (``True``) or off.

        Example:
            >>> enc = wsseg.backbones.mit_b0(strides=(4, 2, 2, 1))
            >>> enc.set_grad_checkpointing()
            >>> enc(torch.randn(1, 3, 64, 64)).attn_logits[-1].requires_grad
            True
        """
        self.grad_checkpointing = bool(enable)

    def load_weights(self, path: str | PathLike, strict: bool = True):
        """Load a SegFormer/MiT checkpoint (``head.*`` classification keys dropped); see :func:`load_weights`."""
        return load_weights(self, path, strict=strict, key_map=_drop_head)

    def split_norm_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(norm_params, other_params)`` of the encoder; see :func:`split_norm_parameters`."""
        return split_norm_parameters(self)

    def _check_input(self, x: Tensor) -> None:
        check_tensor(x, "x", ndim=4, dims="(B, C, H, W)", dtype="float")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"x: expected {self.in_chans} channels (B, {self.in_chans}, H, W), "
                             f"got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        for s in range(4):
            h, w = (h - 1) // self.strides[s] + 1, (w - 1) // self.strides[s] + 1
            if min(h, w) < self.sr_ratios[s]:
                raise ValueError(f"x: spatial size {tuple(x.shape[-2:])} too small: stage {s + 1} grid "
                                 f"{h}x{w} is smaller than its spatial-reduction ratio {self.sr_ratios[s]}")

    def forward(self, x: Tensor, need_attn: bool = True) -> BackboneOutput:
        """Run the encoder; returns the four stage maps and the selected attention logits.

        ``need_attn=False`` skips the attention logits (``attn_logits`` is then empty): every block uses
        the fused attention kernel, as the CAM-only passes need (same features up to float rounding).
        """
        self._check_input(x)
        features: list[Tensor] = []
        wanted = set(self.attn_indices) if need_attn else set()
        order: dict[int, Tensor] = {}
        cur = 0
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for s in range(4):
            tokens, h, w = getattr(self, f"patch_embed{s + 1}")(x)
            for blk in getattr(self, f"block{s + 1}"):
                if ckpt:
                    tokens, lg = torch.utils.checkpoint.checkpoint(blk, tokens, h, w, cur in wanted,
                                                                   use_reentrant=False)
                else:
                    tokens, lg = blk(tokens, h, w, need_logits=cur in wanted)
                if lg is not None:
                    order[cur] = lg
                cur += 1
            tokens = getattr(self, f"norm{s + 1}")(tokens)
            x = _token_grid(tokens, h, w)
            features.append(x)
        logits = [order[i] for i in self.attn_indices] if need_attn else []
        return BackboneOutput(features=features, attn_logits=logits)

    def extra_repr(self) -> str:
        return (f"embed_dims={self.embed_dims}, num_heads={self.num_heads}, depths={self.depths}, "
                f"sr_ratios={self.sr_ratios}, strides={self.strides}, drop_path_rate={self.drop_path_rate}, "
                f"attn_indices={self.attn_indices}, grad_checkpointing={self.grad_checkpointing}")


def _mit(variant: str, **kwargs) -> MixTransformer:
    cfg = dict(MIT_CONFIGS[variant])
    cfg.update(kwargs)
    return MixTransformer(**cfg)


def mit_b0(*, strides: Sequence[int] = (4, 2, 2, 2), weights: str | PathLike | None = None,
           drop_path_rate: float = 0.1, attn_indices: Sequence[int] = (-2, -1), **kwargs) -> MixTransformer:
    """MiT-B0 (dims 32/64/160/256, heads 1/2/5/8, depths 2/2/2/2, sr 8/4/2/1); see :class:`MixTransformer`.

    Example:
        >>> wsseg.backbones.mit_b0().out_channels
        [32, 64, 160, 256]
    """
    return _mit("mit_b0", strides=strides, weights=weights, drop_path_rate=drop_path_rate,
                attn_indices=attn_indices, **kwargs)


def mit_b1(*, strides: Sequence[int] = (4, 2, 2, 2), weights: str | PathLike | None = None,
           drop_path_rate: float = 0.1, attn_indices: Sequence[int] = (-2, -1), **kwargs) -> MixTransformer:
    """MiT-B1 (dims 64/128/320/512, heads 1/2/5/8, depths 2/2/2/2, sr 8/4/2/1); see :class:`MixTransformer`.

    TSCD uses ``mit_b1(strides=(4, 2, 2, 1), weights="mit_b1.pth")``.

    Example:
        >>> wsseg.backbones.mit_b1(strides=(4, 2, 2, 1)).out_strides
        [4, 8, 16, 16]
    """
    return _mit("mit_b1", strides=strides, weights=weights, drop_path_rate=drop_path_rate,
                attn_indices=attn_indices, **kwargs)


def mit_b2(*, strides: Sequence[int] = (4, 2, 2, 2), weights: str | PathLike | None = None,
           drop_path_rate: float = 0.1, attn_indices: Sequence[int] = (-2, -1), **kwargs) -> MixTransformer:
    """MiT-B2 (dims 64/128/320/512, heads 1/2/5/8, depths 3/4/6/3, sr 8/4/2/1); see :class:`MixTransformer`.

    Example:
        >>> sum(wsseg.backbones.mit_b2().depths)
        16
    """
    return _mit("mit_b2", strides=strides, weights=weights, drop_path_rate=drop_path_rate,
                attn_indices=attn_indices, **kwargs)
