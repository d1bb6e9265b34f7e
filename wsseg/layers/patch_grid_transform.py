"""ViT-PCM's view geometry on a patch grid: crop → bilinear resize → flips / transpose, and its inverse.

ViT-PCM's equivariance loss compares the predictions on a second view of an image with the predictions on
the first view *moved into the second view's geometry on the patch grid*. These functions do that move as
batched tensor operations (no loop over images): crop, bilinear resize and the per-image flips /
transposes are folded into one pair of per-image interpolation matrices (the flips reverse their rows or
columns, selected with :func:`torch.where`), applied with two batched matrix products; pure flips (no crop, no resize) are
exact index permutations.
The image-side counterpart is :class:`wsseg.data.ViTPCMTwoViewTransform`, which records the flags and the
crop box that these functions take.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils.validation import check_shape, check_tensor

__all__ = ["PatchGridTransform", "patch_grid_transform", "patch_grid_view1_to_view2"]


def _check_flips(flips: object, name: str, batch: int) -> Tensor:
    check_tensor(flips, name, ndim=2, dims="(B, 3)", dtype="bool")
    return check_shape(flips, name, (batch, 3), "(B, 3) [lr, ud, transpose]")  # type: ignore[arg-type]


def _check_grid(probs: object) -> Tensor:
    check_tensor(probs, "probs", ndim=4, dims="(B, C, G, G)", dtype="float")
    if probs.shape[-1] != probs.shape[-2]:  # type: ignore[union-attr]
        raise ValueError(f"probs: expected a square grid (B, C, G, G), got shape {tuple(probs.shape)}")  # type: ignore[union-attr]
    return probs  # type: ignore[return-value]


def _check_out_size(out_size: object) -> int | None:
    if out_size is None:
        return None
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size <= 0:
        raise ValueError(f"out_size: expected None or a positive int, got {out_size!r}")
    return out_size


def _check_boxes(crop_boxes: object, batch: int, grid: int) -> Tensor:
    check_tensor(crop_boxes, "crop_boxes", ndim=2, dims="(B, 4)", dtype="int")
    boxes = check_shape(crop_boxes, "crop_boxes", (batch, 4), "(B, 4) [top, left, bottom, right]")  # type: ignore[arg-type]
    top, left, bottom, right = boxes.unbind(-1)
    bad = (top < 0) | (left < 0) | (bottom > grid) | (right > grid) | (bottom <= top) | (right <= left)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"crop_boxes: expected 0 <= top < bottom <= {grid} and 0 <= left < right <= {grid} "
                         f"(grid cells, half-open), got {boxes[i].tolist()} at index {i}")
    return boxes


def _interp_matrix(start: Tensor, length: Tensor, in_size: int, out_size: int, align_corners: bool,
                   dtype: torch.dtype) -> Tensor:
    """Rows of the 1-D bilinear interpolation ``[start, start + length) -> out_size``: ``(B, out_size, in_size)``.

    The source coordinate of output index ``i`` is ``i (L - 1) / (n - 1)`` (``align_corners=True``; 0 when
    ``n = 1``) or ``(i + 1/2) L / n - 1/2`` (half-pixel), clamped to the window ``[0, L - 1]`` so that
    samples never leave the crop (crop first, then resize).
    """
    cdtype = torch.float64 if dtype == torch.float64 else torch.float32
    i = torch.arange(out_size, device=start.device, dtype=cdtype)
    length_f = length.to(cdtype)[:, None]
    if align_corners:
        scale = (length_f - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(length_f)
        src = i * scale
    else:
        src = (i + 0.5) * (length_f / out_size) - 0.5
    src = torch.minimum(src.clamp_min(0), length_f - 1)
    lo = src.floor()
    w_hi = src - lo
    lo_i = lo.long()
    hi_i = torch.minimum(lo_i + 1, length[:, None] - 1)
    cols = torch.arange(in_size, device=start.device)
    lo_i, hi_i = lo_i + start[:, None], hi_i + start[:, None]
    mat = (1 - w_hi)[..., None] * (cols == lo_i[..., None]) + w_hi[..., None] * (cols == hi_i[..., None])
    return mat.to(dtype)


def _where(flag: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(flag.view(-1, 1, 1, 1), a, b)


def _apply_flips(x: Tensor, flips: Tensor) -> Tensor:
    x = _where(flips[:, 0], x.flip(-1), x)
    x = _where(flips[:, 1], x.flip(-2), x)
    return _where(flips[:, 2], x.transpose(-1, -2), x)


def _undo_flips(x: Tensor, flips: Tensor) -> Tensor:
    x = _where(flips[:, 2], x.transpose(-1, -2), x)
    x = _where(flips[:, 1], x.flip(-2), x)
    return _where(flips[:, 0], x.flip(-1), x)


def _reverse(m: Tensor, flag: Tensor, dim: int) -> Tensor:
    return torch.where(flag.view(-1, 1, 1), m.flip(dim), m)


def _resample(x: Tensor, flips_in: Tensor | None, boxes: Tensor | None, out_size: int, flips_out: Tensor | None,
              align_corners: bool) -> Tensor:
    """``T_out(resize(crop(T_in^{-1}(x))))`` as one product ``L x R^T`` per image, then an optional transpose.

    With :math:`A, B` the row / column interpolation matrices of the crop and :math:`J` the reversal
    permutation, :math:`T^{-1}_{in}` and :math:`T_{out}` are folded into them:
    :math:`A' = J^{ud_2} A J^{ud_1}`, :math:`B' = J^{lr_2} B J^{lr_1}`; a transposed input swaps the roles of
    :math:`A'` and :math:`B'`, and the output is transposed when exactly one of the two transposes is set.
    """
    b, g = x.shape[0], x.shape[-1]
    if boxes is None:
        start = torch.zeros(b, dtype=torch.long, device=x.device)
        top = left = start
        height = width = start + g
    else:
        boxes = boxes.to(device=x.device, dtype=torch.long)
        top, left, bottom, right = boxes.unbind(-1)
        height, width = bottom - top, right - left
    rows = _interp_matrix(top, height, g, out_size, align_corners, x.dtype)
    cols = _interp_matrix(left, width, g, out_size, align_corners, x.dtype)
    transpose = None
    if flips_in is not None:
        rows, cols = _reverse(rows, flips_in[:, 1], 2), _reverse(cols, flips_in[:, 0], 2)
    if flips_out is not None:
        rows, cols = _reverse(rows, flips_out[:, 1], 1), _reverse(cols, flips_out[:, 0], 1)
        transpose = flips_out[:, 2]
    if flips_in is not None:
        tr_in = flips_in[:, 2].view(-1, 1, 1)
        rows, cols = torch.where(tr_in, cols, rows), torch.where(tr_in, rows, cols)
        transpose = flips_in[:, 2] if transpose is None else transpose ^ flips_in[:, 2]
    c, n = x.shape[1], out_size
    # rows @ x @ cols^T per image as two batched matmuls over (B, G, C*G) / (B, n*C, G) views
    out = torch.bmm(rows, x.transpose(1, 2).reshape(b, g, c * g))
    out = torch.bmm(out.view(b, n * c, g), cols.transpose(1, 2)).view(b, n, c, n).transpose(1, 2)
    return out.contiguous() if transpose is None else _where(transpose, out.transpose(-1, -2), out)


def patch_grid_transform(probs: Tensor, flips: Tensor, crop_boxes: Tensor | None = None, *,
                         out_size: int | None = 12, inverse: bool = False, align_corners: bool = True) -> Tensor:
    r"""Apply (or undo) one ViT-PCM view transform to per-patch maps on a square patch grid.

    **Forward** (``inverse=False``), per image :math:`b`, in the official order — crop, resize, then left–right
    flip, up–down flip, transpose:

    .. math::

        Y_b = T_b\big(\operatorname{resize}_{n}(X_b[t:u,\ l:r])\big),\qquad
        T_b = \tau^{\,f^{\mathrm{tr}}_b} \circ \phi_{\mathrm{ud}}^{\,f^{\mathrm{ud}}_b}
              \circ \phi_{\mathrm{lr}}^{\,f^{\mathrm{lr}}_b}

    with :math:`(t, l, u, r)` the crop box in grid cells (the whole grid when ``crop_boxes`` is ``None``),
    :math:`\operatorname{resize}_n` the separable bilinear resize to :math:`n \times n`, :math:`\phi` the
    flips and :math:`\tau` the transpose, each applied when its flag is set. **Inverse**
    (``inverse=True``): :math:`Y_b = \operatorname{resize}_n(T_b^{-1}(X_b))`,
    :math:`T_b^{-1} = \phi_{\mathrm{lr}}^{f^{\mathrm{lr}}} \circ \phi_{\mathrm{ud}}^{f^{\mathrm{ud}}} \circ
    \tau^{f^{\mathrm{tr}}}` (the flips undone in reverse order); a crop cannot be undone, so
    ``crop_boxes`` must be ``None``.

    To map view-1 predictions into view-2 geometry (ViT-PCM's ``compute_cce_loss``) compose two calls —
    ``patch_grid_transform(patch_grid_transform(p1, flips1, None, out_size=None, inverse=True), flips2,
    boxes2, out_size=12)`` — or call :func:`patch_grid_view1_to_view2`.

    **Order of flips.** The official ``apply_affine_transform_invertible`` applies left–right flip, up–down
    flip, transpose, in this order, to images and to patch grids alike (so the spec's "[assumed]" order is in
    fact the official one); its inverse (``revert_affine_transform``, obtained through a gradient trick) is the
    reverse order used here. Without a crop (square grid, same matrix for rows and columns) flips and transpose
    commute with the bilinear resize, so resizing before or after them gives the same result.

    **Alignment rule** (``align_corners``). The official grid-side resize is TF-1
    ``tf.image.resize(..., align_corners=True)`` bilinear on the cropped grid (``affine_patch_level``: box
    and size divided by the patch size, e.g. an 8×8 crop → 12×12, or the whole 24×24 grid → 12×12), so
    ``align_corners=True`` (default) reproduces it exactly: source coordinate :math:`i (L-1)/(n-1)`. The
    image side, however, resizes *pixels* (128 → 192, or 384 → 192) with ``align_corners=True`` too, and
    pixel corners are not patch corners: measured on a position-encoding image, the official grid mapping is
    off the image geometry by up to ≈ 0.16 view-1 patch with a 128-px crop and ≈ 0.47 view-1 patch without
    crop (at the grid border). ``align_corners=False`` uses the half-pixel mapping
    :math:`(i + \tfrac12) L / n - \tfrac12` (clamped to the crop), which matches the image geometry to
    < 0.04 patch in the interior (up to ≈ 0.17 patch on the border cells of a crop, where the crop edge is
    clamped) — a documented deviation, not the official behaviour.

    When a crop or a resize is involved the result is a matrix product, so a non-finite value in an image's
    grid spreads to that image's whole output (pure flips only move values).

    Args:
        probs: per-patch maps (probabilities, logits or features) on a square grid, any floating dtype.
        flips: per-image flags ``[lr, ud, transpose]`` (``True`` = applied).
        crop_boxes: per-image crop ``(top, left, bottom, right)`` in grid cells of ``probs`` (half-open,
            integer; the official pixel box divided by the patch size), or ``None`` for no crop. A full box
            ``(0, 0, G, G)`` is the same as no crop.
        out_size: side :math:`n` of the output grid (default 12: 192-px view / 16-px patches), or ``None`` to
            keep the input side :math:`G`.
        inverse: undo the flips instead of applying crop, resize and flips (see above).
        align_corners: ``True`` (official) or ``False`` (half-pixel, consistent with the image side).

    Returns:
        The transformed maps, dtype and device of ``probs``; differentiable with respect to ``probs``.

    Shape:
        - probs: :math:`(B, C, G, G)`.
        - flips: :math:`(B, 3)` bool.
        - crop_boxes: :math:`(B, 4)` integer, or ``None``.
        - output: :math:`(B, C, n, n)` (:math:`n = G` when ``out_size`` is ``None``).

    Raises:
        TypeError: if ``probs`` is not floating-point, ``flips`` not bool or ``crop_boxes`` not integer.
        ValueError: on wrong shapes, a non-square grid, a box outside the grid or empty, a non-positive
            ``out_size``, or ``crop_boxes`` given with ``inverse=True``.

    Example:
        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> f = torch.tensor([[True, False, True]])
        >>> y = patch_grid_transform(x, f, torch.tensor([[0, 0, 2, 2]]), out_size=3)
        >>> y[0, 0]
        tensor([[1.0000, 3.0000, 5.0000],
                [0.5000, 2.5000, 4.5000],
                [0.0000, 2.0000, 4.0000]])
        >>> z = patch_grid_transform(patch_grid_transform(x, f, out_size=None), f, out_size=None, inverse=True)
        >>> torch.equal(z, x)
        True

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``utils.py`` (``affine_transform``,
        ``apply_affine_transform``, ``apply_affine_transform_invertible``, ``revert_affine_transform``,
        ``affine_patch_level``, ``resize``) and ``model.py`` (``compute_cce_loss``).
    """
    probs = _check_grid(probs)
    b, g = probs.shape[0], probs.shape[-1]
    flips = _check_flips(flips, "flips", b).to(probs.device)
    n = _check_out_size(out_size)
    n = g if n is None else n
    if inverse:
        if crop_boxes is not None:
            raise ValueError("crop_boxes: a crop cannot be inverted; expected None with inverse=True")
        if n == g:
            return _undo_flips(probs, flips)
        return _resample(probs, flips, None, n, None, align_corners)
    boxes = None if crop_boxes is None else _check_boxes(crop_boxes, b, g)
    if boxes is None and n == g:
        return _apply_flips(probs, flips)
    return _resample(probs, None, boxes, n, flips, align_corners)


def patch_grid_view1_to_view2(probs: Tensor, flips_view1: Tensor, flips_view2: Tensor,
                              crop_boxes: Tensor | None = None, *, out_size: int = 12,
                              align_corners: bool = True) -> Tensor:
    r"""Move view-1 patch maps into view-2 geometry: undo :math:`T_1`, crop, resize, apply :math:`T_2`.

    .. math::

        Y_b = T_{2,b}\big(\operatorname{resize}_n\big(T_{1,b}^{-1}(X_b)[t:u,\ l:r]\big)\big)

    This is ViT-PCM's target construction for the equivariance loss (``compute_cce_loss``:
    ``apply_affine_transform_batch(revert_affine_transform_batch(preds, affine), affine_t)`` at patch
    level), i.e. :func:`patch_grid_transform` with ``inverse=True`` and :math:`T_1`, then forward with
    :math:`T_2` and the crop box — computed as one matrix product per image (:math:`T_1^{-1}` and
    :math:`T_2` folded into the interpolation matrices). Apply ``merge_class_labels`` to the result to get the
    loss target.

    Args:
        probs: view-1 per-patch maps, in view-1 geometry (after :math:`T_1`).
        flips_view1, flips_view2: ``[lr, ud, transpose]`` flags of the two views (the ``"flips_view1"`` /
            ``"flips_view2"`` entries of :class:`wsseg.data.ViTPCMTwoViewTransform` samples).
        crop_boxes: view-2 crop ``(top, left, bottom, right)`` in view-1 grid cells, in the un-flipped frame
            (the ``"crop_box_view2"`` entry), or ``None`` for no crop.
        out_size: view-2 grid side :math:`n` (default 12).
        align_corners: see :func:`patch_grid_transform` (``True`` = official).

    Returns:
        The view-1 maps in view-2 geometry.

    Shape:
        - probs: :math:`(B, C, G, G)`; flips: :math:`(B, 3)` bool; crop_boxes: :math:`(B, 4)` integer or
          ``None``; output: :math:`(B, C, n, n)`.

    Raises:
        TypeError, ValueError: as :func:`patch_grid_transform`.

    Example:
        >>> p1 = torch.rand(2, 21, 24, 24)
        >>> f1, f2 = torch.rand(2, 3) < 0.5, torch.rand(2, 3) < 0.5
        >>> boxes = torch.tensor([[0, 0, 24, 24], [4, 8, 12, 16]])
        >>> patch_grid_view1_to_view2(p1, f1, f2, boxes).shape
        torch.Size([2, 21, 12, 12])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``model.py`` (``compute_cce_loss``)
        and ``utils.py`` (``revert_affine_transform_batch``, ``apply_affine_transform_batch``).
    """
    probs = _check_grid(probs)
    b, g = probs.shape[0], probs.shape[-1]
    f1 = _check_flips(flips_view1, "flips_view1", b).to(probs.device)
    f2 = _check_flips(flips_view2, "flips_view2", b).to(probs.device)
    n = _check_out_size(out_size)
    n = g if n is None else n
    boxes = None if crop_boxes is None else _check_boxes(crop_boxes, b, g)
    if boxes is None and n == g:
        return _apply_flips(_undo_flips(probs, f1), f2)
    return _resample(probs, f1, boxes, n, f2, align_corners)


class PatchGridTransform(nn.Module):
    r"""Module form of :func:`patch_grid_transform` (no parameters).

    Args:
        out_size: output grid side (default 12), or ``None`` to keep the input side.
        inverse: undo the flips instead of applying crop, resize and flips.
        align_corners: ``True`` (official TF ``align_corners=True``) or ``False`` (half-pixel).

    Shape:
        - probs: :math:`(B, C, G, G)`; flips: :math:`(B, 3)` bool; crop_boxes: :math:`(B, 4)` integer or
          ``None``; output: :math:`(B, C, n, n)`.

    Raises:
        ValueError: if ``out_size`` is not ``None`` or a positive int.

    Example:
        >>> m = PatchGridTransform(out_size=12)
        >>> m
        PatchGridTransform(out_size=12, inverse=False, align_corners=True)
        >>> m(torch.rand(4, 21, 24, 24), torch.zeros(4, 3, dtype=torch.bool)).shape
        torch.Size([4, 21, 12, 12])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, ``utils.py``
        (``apply_affine_transform``, ``revert_affine_transform``).
    """

    def __init__(self, out_size: int | None = 12, inverse: bool = False, align_corners: bool = True) -> None:
        super().__init__()
        self.out_size = _check_out_size(out_size)
        self.inverse = bool(inverse)
        self.align_corners = bool(align_corners)

    def forward(self, probs: Tensor, flips: Tensor, crop_boxes: Tensor | None = None) -> Tensor:
        return patch_grid_transform(probs, flips, crop_boxes, out_size=self.out_size, inverse=self.inverse,
                                    align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, inverse={self.inverse}, align_corners={self.align_corners}"
