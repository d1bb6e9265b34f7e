"""Shared neighbour machinery of the parameter-free refiners (PAR, PAMR, VARM).

Private module. All three refiners look at the same 48 neighbours of every pixel: the 8 non-centre
positions of a 3×3 stencil dilated by each ``d`` in ``dilations``, read with replicate padding (a read
outside the image is clamped to the nearest border pixel). They differ only in how the per-pixel kernel
``W (B, 1, K, h, w)`` over those ``K = 8·len(dilations)`` neighbours is computed; the propagation
``Q ← Σ_k N_k(Q) ⊙ W_k`` is identical and lives here.

Neighbour order. Within each dilation ``d`` (in the order given) the 8 offsets ``(row, col)`` are
``(-d,-d), (-d,0), (-d,d), (d,-d), (d,0), (d,d), (0,-d), (0,d)``: the top row, the bottom row, then
left and right. This differs from the official one-hot convolution order (row-major 3×3 stencil), which
does not matter because every kernel is a function of the neighbour *set* (softmax and standard
deviation over ``k`` are permutation-equivariant / invariant); it lets the top and bottom rows be read
as one strided view of the padded tensor.

Implementation. The input is replicate-padded once by ``max(dilations)``; for each dilation two strided
views (no copy) expose the 6 top/bottom and the 2 left/right neighbours of every pixel. Gathering and
propagation therefore loop over the dilations only, never over neighbours, pixels or batch items.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from wsseg.utils.validation import check_tensor

__all__: list[str] = []

# Unit offsets (row, col) of one dilation, in the canonical order described in the module docstring.
STENCIL: tuple[tuple[int, int], ...] = ((-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 0), (1, 1), (0, -1), (0, 1))


# ---------------------------------------------------------------------------------------------------
# hyperparameter and input checks
# ---------------------------------------------------------------------------------------------------
def check_dilations(dilations: object) -> tuple[int, ...]:
    """Return ``dilations`` as a tuple of positive ints, or raise ``ValueError``/``TypeError``."""
    if isinstance(dilations, int | Tensor) or not isinstance(dilations, Sequence):
        raise TypeError(f"dilations: expected a sequence of positive ints, got {type(dilations).__name__}")
    out = tuple(dilations)
    if len(out) == 0:
        raise ValueError("dilations: expected at least one dilation, got an empty sequence")
    for d in out:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"dilations: expected positive ints, got {out!r}")
        if d < 1:
            raise ValueError(f"dilations: expected positive ints, got {out!r}")
    return out


def check_num_iter(num_iter: object) -> int:
    """Return ``num_iter`` if it is a non-negative int, else raise."""
    if isinstance(num_iter, bool) or not isinstance(num_iter, int):
        raise TypeError(f"num_iter: expected a non-negative int, got {num_iter!r}")
    if num_iter < 0:
        raise ValueError(f"num_iter: expected a non-negative int, got {num_iter!r}")
    return num_iter


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> float:
    """Return ``value`` as float if it is a positive (or non-negative) finite number, else raise.

    Raises ``TypeError`` for a non-number, ``ValueError`` for a non-finite or out-of-range number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a finite number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a number {bound}, got {value!r}")
    return float(value)


def check_refiner_inputs(image: object, probs: object) -> None:
    """Validate ``image (B, 3, h, w)`` and ``probs (B, C', h', w')`` (both floating point)."""
    check_tensor(image, "image", ndim=4, dims="(B, 3, h, w)", dtype="float")
    check_tensor(probs, "probs", ndim=4, dims="(B, C', h', w')", dtype="float")
    assert isinstance(image, Tensor) and isinstance(probs, Tensor)
    if image.shape[1] != 3:
        raise ValueError(f"image: expected 3 colour channels (B, 3, h, w), got shape {tuple(image.shape)}")
    if probs.shape[0] != image.shape[0]:
        raise ValueError(
            f"probs: expected batch size {image.shape[0]} (that of image), got shape {tuple(probs.shape)}"
        )
    if probs.device != image.device:
        raise ValueError(f"probs: expected device {image.device} (that of image), got {probs.device}")
    if min(image.shape[-2:]) < 1 or min(probs.shape[-2:]) < 1:
        raise ValueError(
            f"image/probs: expected non-empty spatial sizes, got image {tuple(image.shape)} "
            f"and probs {tuple(probs.shape)}"
        )


def no_autocast(device: torch.device):
    """Context manager disabling autocast on ``device`` (a no-op where autocast is unsupported)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic device types
        return contextlib.nullcontext()


def prepare_inputs(image: Tensor, probs: Tensor) -> tuple[Tensor, Tensor]:
    """Cast both inputs to the compute dtype and resize ``probs`` to the image size.

    The compute dtype is float32, or float64 if either input is float64 (half / bfloat16 inputs are
    promoted so that the kernel and the iterated sums are not computed in low precision). ``probs`` is
    resized bilinearly with ``align_corners=True`` (as in the official code); when it already has the
    image size this is the identity and is skipped.
    """
    dtype = torch.promote_types(torch.promote_types(image.dtype, probs.dtype), torch.float32)
    image = image.detach().to(dtype)
    probs = probs.detach().to(dtype)
    if probs.shape[-2:] != image.shape[-2:]:
        probs = F.interpolate(probs, size=image.shape[-2:], mode="bilinear", align_corners=True)
    return image, probs


# ---------------------------------------------------------------------------------------------------
# offsets, padding, gathering
# ---------------------------------------------------------------------------------------------------
def neighbor_offsets(dilations: Sequence[int]) -> list[tuple[int, int]]:
    """The ``8·len(dilations)`` offsets ``(row, col)`` in the canonical neighbour order."""
    return [(dy * d, dx * d) for d in dilations for dy, dx in STENCIL]


def positional_distances(dilations: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Euclidean length of every offset: ``d`` (axial) or ``d·√2`` (diagonal). Shape ``(K,)``."""
    dist = [d * (math.sqrt(2.0) if dy != 0 and dx != 0 else 1.0) for d in dilations for dy, dx in STENCIL]
    return torch.tensor(dist, dtype=torch.float64, device=device).to(dtype)


def replicate_pad_(dst: Tensor, x: Tensor, pad: int) -> Tensor:
    """Write ``x (B, C, h, w)`` replicate-padded by ``pad`` on every side into ``dst`` (in place).

    ``dst`` must have shape ``(B, C, h + 2·pad, w + 2·pad)``. Unlike ``F.pad(mode="replicate")`` this
    reuses a pre-allocated buffer and accepts any ``pad`` (also larger than the image).
    """
    h, w = x.shape[-2:]
    dst[:, :, pad:pad + h, pad:pad + w].copy_(x)
    if pad > 0:
        dst[:, :, :pad, pad:pad + w].copy_(x[:, :, :1, :])
        dst[:, :, pad + h:, pad:pad + w].copy_(x[:, :, -1:, :])
        dst[:, :, :, :pad].copy_(dst[:, :, :, pad:pad + 1])
        dst[:, :, :, pad + w:].copy_(dst[:, :, :, pad + w - 1:pad + w])
    return dst


def replicate_pad(x: Tensor, pad: int) -> Tensor:
    """Replicate-pad ``x (B, C, h, w)`` by ``pad`` on every side (new tensor)."""
    b, c, h, w = x.shape
    return replicate_pad_(x.new_empty(b, c, h + 2 * pad, w + 2 * pad), x, pad)


def _stencil_views(xp: Tensor, d: int, pad: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Strided views of the dilation-``d`` neighbours of a padded tensor (no copy).

    Returns ``rows (B, C, 2, 3, h, w)`` (top then bottom row, columns left/centre/right) and
    ``sides (B, C, 2, h, w)`` (left, right), i.e. the canonical order of one dilation.
    """
    b, c = xp.shape[:2]
    s_b, s_c, s_h, s_w = xp.stride()
    base = xp.storage_offset()
    rows = xp.as_strided((b, c, 2, 3, h, w), (s_b, s_c, 2 * d * s_h, d * s_w, s_h, s_w),
                         base + (pad - d) * s_h + (pad - d) * s_w)
    sides = xp.as_strided((b, c, 2, h, w), (s_b, s_c, 2 * d * s_w, s_h, s_w), base + pad * s_h + (pad - d) * s_w)
    return rows, sides


def gather_padded(xp: Tensor, dilations: Sequence[int], pad: int, size: tuple[int, int]) -> Tensor:
    """Neighbours of every pixel read from an already padded tensor.

    Args:
        xp: ``(B, C, h + 2·pad, w + 2·pad)``, replicate-padded, ``pad >= max(dilations)``.
        dilations: the dilations.
        pad: the padding of ``xp``.
        size: ``(h, w)``.

    Returns:
        ``(B, C, K, h, w)`` with ``K = 8·len(dilations)`` in the canonical order.
    """
    h, w = size
    b, c = xp.shape[:2]
    out = xp.new_empty(b, c, 8 * len(dilations), h, w)
    for i, d in enumerate(dilations):
        rows, sides = _stencil_views(xp, d, pad, h, w)
        out[:, :, 8 * i:8 * i + 6].view(b, c, 2, 3, h, w).copy_(rows)
        out[:, :, 8 * i + 6:8 * i + 8].copy_(sides)
    return out


def gather_neighbors(x: Tensor, dilations: Sequence[int]) -> Tensor:
    """The ``K = 8·len(dilations)`` replicate-padded dilated neighbours of ``x (B, C, h, w)``.

    Returns ``(B, C, K, h, w)``, ``out[:, :, k, i, j] = x[:, :, clamp(i + dy_k), clamp(j + dx_k)]`` with
    ``(dy_k, dx_k) = neighbor_offsets(dilations)[k]``.
    """
    pad = max(dilations)
    return gather_padded(replicate_pad(x, pad), dilations, pad, tuple(x.shape[-2:]))


def local_std(neighbors: Tensor, *, center: Tensor | None = None, center_count: int = 0,
              unbiased: bool = True, chunk: int = 8) -> Tensor:
    """Standard deviation over the neighbour dimension (dim 2), optionally with the centre pixel.

    Two-pass (mean, then sum of squared deviations), numerically like ``torch.std`` but several times
    faster for a reduction over a non-innermost dimension: the squared deviations are accumulated in
    blocks of ``chunk`` neighbours through one reused buffer.

    Args:
        neighbors: ``(B, C, K, h, w)``.
        center: ``(B, C, h, w)``; if given it is counted ``center_count`` times as extra samples
            (PAMR counts the centre once per dilation: 48 + 6 = 54 samples).
        center_count: how many times the centre is counted.
        unbiased: Bessel-corrected (divide by ``n - 1``) if True, else divide by ``n``.
        chunk: neighbours per block.

    Returns:
        ``(B, C, 1, h, w)``.
    """
    b, c, k, h, w = neighbors.shape
    extra = center_count if center is not None else 0
    count = k + extra
    mean = neighbors.sum(dim=2, keepdim=True)
    if extra:
        mean.add_(center.unsqueeze(2), alpha=extra)
    mean.div_(count)
    sq = torch.zeros_like(mean)
    block = neighbors.new_empty(b, c, min(chunk, k), h, w)
    for start in range(0, k, chunk):
        part = neighbors[:, :, start:start + chunk]
        tmp = block[:, :, :part.shape[2]]
        torch.sub(part, mean, out=tmp)
        sq.add_(tmp.square_().sum(dim=2, keepdim=True))
    if extra:
        sq.add_((center.unsqueeze(2) - mean).square_(), alpha=extra)
    return sq.div_(count - 1 if unbiased else count).sqrt_()


# ---------------------------------------------------------------------------------------------------
# propagation
# ---------------------------------------------------------------------------------------------------
def propagate(q: Tensor, kernel: Tensor, dilations: Sequence[int], num_iter: int) -> Tensor:
    """Iterate ``Q ← Σ_k N_k(Q) ⊙ W_k`` ``num_iter`` times with a fixed kernel.

    Args:
        q: ``(B, C, h, w)`` maps (every channel uses the same kernel).
        kernel: ``(B, 1, K, h, w)`` weights in the canonical neighbour order.
        dilations: the dilations (``K = 8·len(dilations)``).
        num_iter: number of iterations ``T >= 0``.

    Returns:
        ``(B, C, h, w)``, a new tensor (``q`` is not modified).

    Each iteration pads ``Q`` into a reused buffer and, per dilation, multiplies two strided views by the
    kernel slice into a reused ``(B, C, 8, h, w)`` buffer and sums it: no per-iteration allocation of the
    ``(B, C, K, h, w)`` neighbour tensor.
    """
    b, c, h, w = q.shape
    out = q.clone()
    if num_iter == 0 or out.numel() == 0:
        return out
    pad = max(dilations)
    padded = q.new_empty(b, c, h + 2 * pad, w + 2 * pad)
    products = q.new_empty(b, c, 8, h, w)
    partial = q.new_empty(b, c, h, w)
    kernel = kernel.to(q.dtype)
    for _ in range(num_iter):
        replicate_pad_(padded, out, pad)
        for i, d in enumerate(dilations):
            rows, sides = _stencil_views(padded, d, pad, h, w)
            torch.mul(rows, kernel[:, :, 8 * i:8 * i + 6].view(b, 1, 2, 3, h, w),
                      out=products[:, :, :6].view(b, c, 2, 3, h, w))
            torch.mul(sides, kernel[:, :, 8 * i + 6:8 * i + 8], out=products[:, :, 6:])
            if i == 0:
                torch.sum(products, dim=2, out=out)
            else:
                torch.sum(products, dim=2, out=partial)
                out.add_(partial)
    return out


def check_bool(value: object, name: str) -> bool:
    """Check a boolean hyperparameter; TypeError naming ``name`` otherwise."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def refine_with_kernel(image: Tensor, probs: Tensor, dilations: Sequence[int], num_iter: int,
                       kernel_fn) -> Tensor:
    """The body shared by PAR, PAMR and VARM: resize ``probs`` to the image, build the kernel once with
    ``kernel_fn(image_float) -> (B, 1, K, H, W)``-like tensor, iterate ``num_iter`` propagation steps.

    Runs without gradient and autocast, in float32 (float64 if an input is float64); the result is cast
    back to ``probs.dtype``. Inputs must already be validated with :func:`check_refiner_inputs`.
    """
    with torch.no_grad(), no_autocast(image.device):
        img, q = prepare_inputs(image, probs)
        out = propagate(q, kernel_fn(img), dilations, num_iter)
    return out.to(probs.dtype)
