"""Token-pair affinity labels from a pseudo label (``common.md`` §5.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["AffinityLabel", "affinity_label", "radius_window"]


def radius_window(height: int, width: int, radius: int, *, device: torch.device | str | None = None) -> Tensor:
    r"""Square neighbourhood window on a token grid: pairs at most ``radius`` apart in rows and columns.

    .. math::
        W_{ij} = [\,|r_i - r_j| \le r\,] \wedge [\,|c_i - c_j| \le r\,],\qquad
        r_i = \lfloor i / w \rfloor,\ c_i = i \bmod w

    Built from token coordinates in :math:`O(N^2)` tensor operations (the official code fills the same
    mask with a Python loop).

    Args:
        height, width: token grid size :math:`(h, w)`, :math:`N = hw` (row-major flattening).
        radius: window radius :math:`r` in tokens (AFA/TSCD 8).
        device: device of the result.

    Shape:
        - output: :math:`(N, N)`, bool, symmetric.

    Raises:
        ValueError: if the grid size is not positive or ``radius`` is negative.

    Example:
        >>> radius_window(1, 4, 1).int().tolist()
        [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, scripts/dist_train_voc.py (``get_mask_by_radius``).
    """
    if height < 1 or width < 1:
        raise ValueError(f"height/width: expected a positive token grid size, got {(height, width)}")
    if radius < 0:
        raise ValueError(f"radius: expected a non-negative int, got {radius}")
    idx = torch.arange(height * width, device=device)
    r, c = idx // width, idx % width
    return ((r[:, None] - r[None, :]).abs() <= radius) & ((c[:, None] - c[None, :]).abs() <= radius)


def _check_common(stride: int, radius: int, ignore_index: int) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: expected a positive int, got {stride!r}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius: expected a non-negative int, got {radius!r}")
    if not 2 <= ignore_index <= 255:
        raise ValueError(f"ignore_index: expected an int in [2, 255] (stored in uint8 next to 0/1), got {ignore_index}")


def affinity_label(label: Tensor, *, stride: int = 16, radius: int = 8, ignore_index: int = 255,
                   grid_size: tuple[int, int] | None = None) -> Tensor:
    r"""Pairwise affinity target on the token grid from a dense pseudo label.

    The label is downsampled with nearest-neighbour interpolation to the token grid and flattened to
    :math:`N = hw` tokens; a pair is positive when both tokens carry the same label:

    .. math::
        A^*_{ij} = \begin{cases}
            \text{ignore} & Y_i = \text{ignore} \vee Y_j = \text{ignore} \vee
                            |r_i - r_j| > r \vee |c_i - c_j| > r \\
            [Y_i = Y_j] & \text{otherwise} \end{cases}

    **Token grid.** By default :math:`(h, w) = (\lfloor H/\text{stride} \rfloor, \lfloor W/\text{stride}
    \rfloor)` as in the official code (``F.interpolate(..., size=[h // 16, w // 16], mode="nearest")``);
    this matches the backbone's token grid for crops that are multiples of the stride. ``stride`` is a
    hyperparameter: 16 for MiT with a stride-16 last stage (AFA/TSCD), 14 for ViT-S/14, ViT-B/14 backbones (e.g.
    DINOv2), 16 for ViT-B/16. For other crops pass the backbone's grid explicitly with ``grid_size``
    (e.g. MiT pads, giving :math:`\lceil H/16 \rceil`).

    Args:
        label: pseudo label with values in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`.
        stride: backbone output stride (pixels per token).
        radius: window radius in tokens (AFA/TSCD 8); pairs farther apart are ignored.
        ignore_index: ignore value of the input and of the output (must fit uint8).
        grid_size: token grid :math:`(h, w)`; overrides the ``stride`` rule.

    Shape:
        - label: :math:`(B, H, W)`, integer.
        - output: :math:`(B, N, N)`, uint8 in :math:`\{0, 1, \text{ignore}\}`, :math:`N = hw`.

    Raises:
        TypeError: if ``label`` is not an integer tensor.
        ValueError: if ``label`` is not 3-D, the token grid is empty, or a hyperparameter is invalid.

    Example:
        >>> y = torch.tensor([[[0, 0, 1, 1],
        ...                    [0, 0, 1, 1],
        ...                    [255, 255, 1, 1],
        ...                    [255, 255, 1, 1]]])
        >>> affinity_label(y, stride=2, radius=1)[0].tolist()
        [[1, 0, 255, 0], [0, 1, 255, 1], [255, 255, 255, 255], [0, 1, 255, 1]]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``cams_to_affinity_label``),
        scripts/dist_train_voc.py (``get_mask_by_radius``); TSCD, Xu et al. AAAI 2023 (same code).
    """
    check_tensor(label, "label", ndim=3, dims="(B, H, W)", dtype="int")
    _check_common(stride, radius, ignore_index)
    B, H, W = label.shape
    h, w = (H // stride, W // stride) if grid_size is None else (int(grid_size[0]), int(grid_size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"label: spatial size {(H, W)} gives an empty token grid {(h, w)} (stride={stride})")
    with torch.no_grad():
        small = F.interpolate(label[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        y = small.flatten(1)                                                  # (B, N)
        out = (y[:, :, None] == y[:, None, :]).to(torch.uint8)
        bad = (y == ignore_index)
        bad = bad[:, :, None] | bad[:, None, :]
        bad |= ~radius_window(h, w, radius, device=label.device)[None]
        out[bad] = ignore_index
    return out


class AffinityLabel(nn.Module):
    r"""Module form of :func:`affinity_label`.

    .. math::
        A^*_{ij} = [Y_i = Y_j] \text{ inside the radius window, ignore elsewhere or on ignored tokens}

    Args:
        stride: backbone output stride (16 for MiT/ViT-B/16, 14 for ViT-S/14, ViT-B/14); the token grid is
            :math:`(\lfloor H/\text{stride} \rfloor, \lfloor W/\text{stride} \rfloor)`.
        radius: window radius in tokens (AFA/TSCD 8).
        ignore_index: ignore value of input and output.

    Shape:
        - label: :math:`(B, H, W)`; output: :math:`(B, N, N)` uint8.

    Raises:
        ValueError: on invalid hyperparameters.

    Example:
        >>> AffinityLabel(stride=16)(torch.zeros(2, 64, 64, dtype=torch.long)).shape
        torch.Size([2, 16, 16])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``cams_to_affinity_label``).
    """

    def __init__(self, stride: int = 16, radius: int = 8, ignore_index: int = 255) -> None:
        super().__init__()
        _check_common(stride, radius, ignore_index)
        self.stride = stride
        self.radius = radius
        self.ignore_index = ignore_index

    def forward(self, label: Tensor) -> Tensor:
        """Affinity target ``(B, N, N)``; see :func:`affinity_label`."""
        return affinity_label(label, stride=self.stride, radius=self.radius, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, radius={self.radius}, ignore_index={self.ignore_index}"
