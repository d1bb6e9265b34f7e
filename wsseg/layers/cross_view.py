"""SLRNet's second view of a batch (downscale, optional per-image flip) and its inverse mapping.

The two functions are batched tensor operations applied inside the model's forward pass (the official code
builds the second view from the normalised input batch on the GPU), not per-sample dataset transforms, so
they live in :mod:`wsseg.layers`.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.validation import check_shape, check_tensor

__all__ = ["inverse_view", "make_view"]


def _flip_mask(flip: bool | Tensor, batch: int, device: torch.device) -> bool | Tensor:
    """Validate ``flip``: a Python bool (all images) or a ``(B,)`` bool tensor (per image)."""
    if isinstance(flip, bool):
        return flip
    if not isinstance(flip, Tensor):
        raise TypeError(f"flip: expected a bool or a (B,) bool tensor, got {type(flip).__name__}")
    check_tensor(flip, "flip", ndim=1, dims="(B,)", dtype="bool")
    check_shape(flip, "flip", (batch,), "(B,)")
    return flip.to(device)


def _apply_flip(x: Tensor, flip: bool | Tensor) -> Tensor:
    if isinstance(flip, bool):
        return x.flip(-1) if flip else x
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


@lru_cache(maxsize=32)
def _resize_matrix(n_out: int, n_in: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(n_out, n_in) matrix of 1-D linear interpolation with ``align_corners=True``, with the weights of
    PyTorch's CPU/CUDA kernel (scale ``(n_in - 1) / (n_out - 1)`` and source positions in ``dtype``)."""
    scale = torch.tensor(float(n_in - 1), dtype=dtype) / (n_out - 1) if n_out > 1 else torch.tensor(0.0, dtype=dtype)
    src = scale * torch.arange(n_out, dtype=dtype)
    i0 = src.floor().long().clamp(max=n_in - 1)
    lam1 = (src - i0.to(dtype)).clamp(0.0, 1.0)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    mat = torch.zeros(n_out, n_in, dtype=dtype)
    rows = torch.arange(n_out)
    mat.index_put_((rows, i0), 1.0 - lam1, accumulate=True)
    mat.index_put_((rows, i1), lam1, accumulate=True)
    return mat.to(device)


class _ResizeAlignCorners(torch.autograd.Function):
    """Bilinear resize (``align_corners=True``): PyTorch's kernel forward, a separable-matrix backward.

    The backward :math:`A_h^\top G A_w` is two small matrix products instead of the scatter kernel of
    ``upsample_bilinear2d_backward`` (about twice as fast on CPU at SLRNet's sizes, same values to rounding).
    """

    @staticmethod
    def forward(ctx, x, size):  # noqa: ANN001, ANN205
        ctx.in_size = (x.shape[-2], x.shape[-1])
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (h_in, w_in), (B, C, h_out, w_out) = ctx.in_size, grad.shape
        mat_h = _resize_matrix(h_out, h_in, grad.dtype, grad.device)
        mat_w = _resize_matrix(w_out, w_in, grad.dtype, grad.device)
        flat = grad.reshape(B * C, h_out, w_out)
        # channel-images with an all-zero gradient (e.g. the classes absent from an image in the mask
        # consistency) are skipped: their input gradient is 0
        nonzero = (flat.amax(dim=(1, 2)) != 0) | (flat.amin(dim=(1, 2)) != 0)
        idx = nonzero.nonzero().squeeze(1) if 2 * int(nonzero.sum()) < B * C else None
        part = flat if idx is None else flat.index_select(0, idx)
        tmp = (part.reshape(-1, w_out) @ mat_w).view(-1, h_out, w_in)
        part = torch.matmul(mat_h.t(), tmp)
        if idx is None:
            return part.view(B, C, h_in, w_in), None
        out = part.new_zeros(B * C, h_in, w_in).index_copy_(0, idx, part)
        return out.view(B, C, h_in, w_in), None


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if (x.requires_grad and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled(x.device.type)):
        return _ResizeAlignCorners.apply(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def make_view(x: Tensor, *, scale: float = 0.5, flip: bool | Tensor = False) -> Tensor:
    r"""The second (downscaled, optionally flipped) view of a batch used by SLRNet's cross-view training.

    The batch is resized bilinearly with ``align_corners=True`` to

    .. math::

        (h_2, w_2) = (\lfloor s\,H \rfloor, \lfloor s\,W \rfloor)

    (the official ``int(H * scale_factor)``, e.g. 321 → 160 at :math:`s = 0.5`), then the selected images
    are flipped horizontally. Undo with :func:`inverse_view` and the same ``flip``.

    Args:
        x: the batch (images or any feature map).
        scale: the resize factor :math:`s > 0` (0.5 in the SLRNet configs; the code default is 0.3).
        flip: ``False`` (SLRNet default, ``use_flip`` off), ``True`` (flip every image) or a ``(B,)`` bool
            tensor selecting the images to flip (the official ``use_flip=True`` draws it per image with
            probability 0.5, e.g. ``torch.rand(B) < 0.5``; keep it for :func:`inverse_view`).

    Returns:
        The second view.

    Shape:
        - x: :math:`(B, C, H, W)`.
        - flip: bool, or :math:`(B,)` bool.
        - output: :math:`(B, C, \lfloor sH \rfloor, \lfloor sW \rfloor)`.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor or ``flip`` is neither a bool nor a bool tensor.
        ValueError: if ``x`` is not 4-D, ``flip`` is not ``(B,)``, ``scale`` is not positive or the view
            would be empty.

    Example:
        >>> x = torch.rand(2, 3, 321, 321)
        >>> make_view(x).shape
        torch.Size([2, 3, 160, 160])
        >>> x2 = make_view(x, scale=0.5, flip=torch.tensor([True, False]))
        >>> torch.equal(x2[1], make_view(x)[1]) and torch.equal(x2[0], make_view(x)[0].flip(-1))
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``affine_transform``)
        and ``models/mods/transforms.py`` (``resize_to``, ``random_hflip``).
    """
    check_tensor(x, "x", ndim=4, dims="(B, C, H, W)", dtype="float")
    if not scale > 0:
        raise ValueError(f"scale: expected a positive value, got {scale}")
    h2, w2 = int(x.shape[-2] * scale), int(x.shape[-1] * scale)
    if h2 < 1 or w2 < 1:
        raise ValueError(f"scale: a view of size ({h2}, {w2}) from {tuple(x.shape[-2:])} is empty, got {scale}")
    flip = _flip_mask(flip, x.shape[0], x.device)
    out = F.interpolate(x, size=(h2, w2), mode="bilinear", align_corners=True)
    return _apply_flip(out, flip)


def inverse_view(t: Tensor, size_like: Tensor | tuple[int, int], *, flip: bool | Tensor = False) -> Tensor:
    r"""Map a second-view output back onto the first view's grid (SLRNet's "inverse transform").

    The selected images are un-flipped, then the map is resized bilinearly with ``align_corners=True`` to the
    target size (SLRNet: the view-1 feature size, 81×81 for a 321 crop). Used on the view-2 codes,
    segmentation logits and probabilities.

    The forward is PyTorch's interpolation kernel; the backward (float32 / float64 outside autocast) is the
    separable adjoint :math:`A_h^\top G A_w` as two small matrix products with the kernel's own weights,
    skipping channel-images whose gradient is all zero (the absent classes of the mask consistency) —
    about twice as fast as ``upsample_bilinear2d_backward`` on CPU at SLRNet's sizes, equal to rounding.

    Args:
        t: a view-2 output (any channels).
        size_like: a tensor whose last two dimensions give the target size, or an ``(h, w)`` tuple.
        flip: the ``flip`` given to :func:`make_view`.

    Returns:
        ``t`` on the target grid.

    Shape:
        - t: :math:`(B, C, h_2, w_2)`.
        - size_like: :math:`(*, h, w)` or ``(h, w)``.
        - output: :math:`(B, C, h, w)`.

    Raises:
        TypeError: if ``t`` is not a floating-point tensor, or ``flip`` / ``size_like`` has a wrong type.
        ValueError: if ``t`` is not 4-D, ``flip`` is not ``(B,)`` or the target size is not positive.

    Example:
        >>> codes2 = torch.softmax(torch.randn(2, 21, 40, 40), dim=1)
        >>> inverse_view(codes2, (81, 81)).shape
        torch.Size([2, 21, 81, 81])
        >>> x = torch.rand(1, 1, 9, 9)                      # the flip round trip cancels
        >>> y = inverse_view(make_view(x, flip=True), x, flip=True)
        >>> torch.allclose(y, inverse_view(make_view(x), x), atol=1e-6)
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py`` (``affine_transform``,
        ``inverse_transform``).
    """
    check_tensor(t, "t", ndim=4, dims="(B, C, h2, w2)", dtype="float")
    if isinstance(size_like, Tensor):
        if size_like.dim() < 2:
            raise ValueError(f"size_like: expected a tensor with at least 2 dimensions, got {tuple(size_like.shape)}")
        size = (int(size_like.shape[-2]), int(size_like.shape[-1]))
    elif isinstance(size_like, (tuple, list)) and len(size_like) == 2 and all(isinstance(s, int) for s in size_like):
        size = (int(size_like[0]), int(size_like[1]))
    else:
        raise TypeError(f"size_like: expected a tensor or an (h, w) tuple of ints, got {size_like!r}")
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"size_like: expected a positive size, got {size}")
    flip = _flip_mask(flip, t.shape[0], t.device)
    return _resize(_apply_flip(t, flip), size)
