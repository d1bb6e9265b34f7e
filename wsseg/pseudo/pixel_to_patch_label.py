"""Shrink a pixel label map to a token / patch grid (for patch-level losses such as PatchContrastLoss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["PixelToPatchLabel", "pixel_to_patch_label"]

_MODES = ("majority", "nearest")


def _pair(value: object, name: str) -> tuple[int, int]:
    vals = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        a, b = vals  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a positive int or a pair of positive ints, got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (a, b)):
        raise ValueError(f"{name}: expected a positive int or a pair of positive ints, got {value!r}")
    return int(a), int(b)


def _check_hparams(patch_size: object, grid_size: object, mode: str, max_ignore: float) -> None:
    if (patch_size is None) == (grid_size is None):
        raise ValueError(f"patch_size/grid_size: give exactly one of them, got patch_size={patch_size!r}, "
                         f"grid_size={grid_size!r}")
    if patch_size is not None:
        _pair(patch_size, "patch_size")
    else:
        _pair(grid_size, "grid_size")
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    if isinstance(max_ignore, bool) or not isinstance(max_ignore, (int, float)) or not 0.0 <= max_ignore <= 1.0:
        raise ValueError(f"max_ignore: expected a number in [0, 1], got {max_ignore!r}")


def pixel_to_patch_label(label: Tensor, *, patch_size: int | tuple[int, int] | None = None,
                         grid_size: tuple[int, int] | None = None, mode: str = "majority",
                         max_ignore: float = 0.5, ignore_index: int = 255) -> Tensor:
    r"""Shrink a pixel label map :math:`(B, H, W)` to one label per patch / token :math:`(B, h, w)`.

    Patch :math:`(i, j)` covers the pixels :math:`P_{ij}` of rows :math:`[i p_h, (i+1) p_h)` and columns
    :math:`[j p_w, (j+1) p_w)` (:math:`p_h = H/h`, :math:`p_w = W/w`). With :math:`n_{ij}(c)` the number of
    its pixels labelled :math:`c` and :math:`n_{ij}(\varnothing)` the number of ignored ones:

    * ``"majority"`` (default): the most frequent class **among the non-ignored pixels**; the patch is
      ignored when too much of it is ignored:

      .. math::
          Y_{ij} = \begin{cases} \text{ignore} & n_{ij}(\varnothing) > \rho\, p_h p_w
                   \ \text{or}\ n_{ij}(\varnothing) = p_h p_w \\
                   \arg\max_{c} n_{ij}(c) & \text{otherwise} \end{cases}

      with :math:`\rho` = ``max_ignore`` (0.5: a patch more than half ignored is ignored; 0: any ignored
      pixel ignores the patch; 1: only fully ignored patches are). Ties go to the **lowest** class index
      (background 0 before any class). Requires :math:`H, W` divisible by the grid.
    * ``"nearest"``: ``F.interpolate(label, (h, w), mode="nearest")``, i.e. the pixel at row
      :math:`\lfloor i H / h \rfloor`, column :math:`\lfloor j W / w \rfloor` (the **top-left** pixel of
      each patch when the grid divides the image); an ignored pixel gives an ignored patch. The rule of the
      official AFA / TSCD affinity labels (:func:`~wsseg.pseudo.affinity_label`); any grid size works.

    Relation to APC / ViT-PCM: APC (``wsseg/training/apc.py``) builds its patch labels at the token grid
    directly, as the argmax of :func:`~wsseg.pseudo.merge_class_labels` of the model's own patch
    probabilities, so no pixel label is shrunk there. Use this function when
    your patch-level loss (:class:`~wsseg.losses.PatchContrastLoss`) should follow a **pixel** pseudo label
    instead, e.g. the one of :func:`~wsseg.pseudo.raw_cam_pseudo_label`; ``"majority"`` is the pixel-label
    counterpart of APC's per-patch argmax, and the ignored patches form no pair in the loss (its
    ``ignore_index``). Vectorised: one ``scatter_add`` over (image, patch, class) counts, no loop.

    Args:
        label: integer label map, values in :math:`\{0, 1, \dots\} \cup \{\text{ignore}\}`.
        patch_size: pixels per patch :math:`p` or :math:`(p_h, p_w)`; the grid is
            :math:`(\lfloor H/p_h \rfloor, \lfloor W/p_w \rfloor)`. Give this **or** ``grid_size``.
        grid_size: the token grid :math:`(h, w)` (e.g. the backbone's output size).
        mode: ``"majority"`` or ``"nearest"``.
        max_ignore: :math:`\rho \in [0, 1]`, largest ignored fraction a ``"majority"`` patch may have.
        ignore_index: label value of ignored pixels (kept as the ignored patch value).

    Shape:
        - label: :math:`(B, H, W)`, integer dtype.
        - output: :math:`(B, h, w)`, int64.

    Raises:
        TypeError: if ``label`` is not an integer tensor.
        ValueError: if ``label`` is not 3-D or has a negative value other than ``ignore_index``; if not
            exactly one of ``patch_size`` / ``grid_size`` is given or one is not positive; on an empty grid,
            a grid that does not divide :math:`H \times W` in ``"majority"`` mode, an unknown ``mode`` or
            ``max_ignore`` outside [0, 1].

    Example:
        >>> y = torch.tensor([[[1, 1, 2, 255],
        ...                    [1, 0, 2, 255],
        ...                    [0, 0, 3, 3],
        ...                    [0, 2, 3, 0]]])
        >>> pixel_to_patch_label(y, patch_size=2)[0].tolist()      # 2 of 4 ignored = 0.5: not > 0.5
        [[1, 2], [0, 3]]
        >>> pixel_to_patch_label(y, patch_size=2, max_ignore=0.25)[0].tolist()
        [[1, 255], [0, 3]]
        >>> pixel_to_patch_label(y, patch_size=2, mode="nearest")[0].tolist()   # top-left pixels
        [[1, 2], [0, 3]]

    Source:
        Written for wsseg (no official counterpart). ``"nearest"`` is the label downsampling of AFA, Ru et
        al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``cams_to_affinity_label``).
    """
    _check_hparams(patch_size, grid_size, mode, max_ignore)
    check_tensor(label, "label", ndim=3, dims="(B, H, W)", dtype="int")
    B, H, W = label.shape
    if patch_size is not None:
        ph, pw = _pair(patch_size, "patch_size")
        h, w = H // ph, W // pw
    else:
        h, w = _pair(grid_size, "grid_size")
    if h < 1 or w < 1:
        raise ValueError(f"label: spatial size {(H, W)} gives an empty patch grid {(h, w)}")
    ignored = label == ignore_index
    if label.numel() and bool((label.masked_fill(ignored, 0) < 0).any()):
        raise ValueError(f"label: expected values >= 0 or ignore_index={ignore_index}, got "
                         f"min {int(label.masked_fill(ignored, 0).min())}")
    if mode == "nearest":
        return F.interpolate(label[:, None].to(torch.float64), size=(h, w), mode="nearest")[:, 0].long()
    if H % h or W % w:
        raise ValueError(f"label: majority mode needs the grid {(h, w)} to divide the label size {(H, W)} "
                         f"(crop the label or use mode='nearest')")
    ph, pw = H // h, W // w
    blocks = rearrange(label.long(), "b (h p) (w q) -> b h w (p q)", p=ph, q=pw)
    ign = rearrange(ignored, "b (h p) (w q) -> b h w (p q)", p=ph, q=pw)
    num_classes = int(blocks.masked_fill(ign, -1).max()) + 1 if blocks.numel() else 0
    num_classes = max(num_classes, 1)
    idx = blocks.masked_fill(ign, num_classes)                         # ignored pixels -> extra bin
    counts = torch.zeros(B, h, w, num_classes + 1, dtype=torch.long, device=label.device)
    counts.scatter_add_(3, idx, torch.ones_like(idx))
    n_ign = counts[..., num_classes]
    out = counts[..., :num_classes].argmax(dim=-1)                     # first maximum: lowest class on ties
    drop = (n_ign.double() > max_ignore * (ph * pw)) | (n_ign == ph * pw)
    return out.masked_fill_(drop, ignore_index)


class PixelToPatchLabel(nn.Module):
    r"""Module form of :func:`pixel_to_patch_label`: pixel labels → one label per patch / token.

    .. math::
        Y_{ij} = \arg\max_c n_{ij}(c) \quad\text{or ignore if}\quad n_{ij}(\varnothing) > \rho\,p_h p_w

    (``"majority"``; ``"nearest"`` samples the pixel :math:`(\lfloor iH/h \rfloor, \lfloor jW/w \rfloor)`.)

    Args:
        patch_size: pixels per patch (int or pair); give this or ``grid_size``.
        grid_size: the token grid :math:`(h, w)`.
        mode: ``"majority"`` (default) or ``"nearest"``.
        max_ignore: largest ignored fraction of a ``"majority"`` patch (0.5).
        ignore_index: ignored label value.

    Shape:
        - label: :math:`(B, H, W)` integer; output: :math:`(B, h, w)`, int64.

    Raises:
        ValueError: on invalid hyperparameters (and see :func:`pixel_to_patch_label`).

    Example:
        >>> to_patches = PixelToPatchLabel(patch_size=16)
        >>> to_patches(torch.zeros(2, 64, 96, dtype=torch.long)).shape
        torch.Size([2, 4, 6])

    Source:
        Written for wsseg; ``"nearest"`` as AFA's ``cams_to_affinity_label`` (github.com/rulixiang/afa).
    """

    def __init__(self, patch_size: int | tuple[int, int] | None = None, grid_size: tuple[int, int] | None = None,
                 mode: str = "majority", max_ignore: float = 0.5, ignore_index: int = 255) -> None:
        super().__init__()
        _check_hparams(patch_size, grid_size, mode, max_ignore)
        self.patch_size = patch_size
        self.grid_size = grid_size
        self.mode = mode
        self.max_ignore = max_ignore
        self.ignore_index = ignore_index

    def forward(self, label: Tensor) -> Tensor:
        """Patch labels ``(B, h, w)``; see :func:`pixel_to_patch_label`."""
        return pixel_to_patch_label(label, patch_size=self.patch_size, grid_size=self.grid_size, mode=self.mode,
                                    max_ignore=self.max_ignore, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, grid_size={self.grid_size}, mode={self.mode!r}, "
                f"max_ignore={self.max_ignore}, ignore_index={self.ignore_index}")
