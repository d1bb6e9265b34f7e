"""Affinity propagation of CAMs with a background score ("ref cams", ``common.md`` §5.4)."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_labels, check_tensor

__all__ = ["AffinityPropagation", "affinity_propagation", "token_grid_size"]

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def token_grid_size(height: int, width: int, stride: int, num_tokens: int) -> tuple[int, int]:
    r"""Token grid :math:`(h, w)` of an image of size :math:`(H, W)` with :math:`N` tokens.

    Tries :math:`(\lceil H/s \rceil, \lceil W/s \rceil)` (MiT/SegFormer overlapping patch embedding with
    padding; AFA's ``get_down_size``) then :math:`(\lfloor H/s \rfloor, \lfloor W/s \rfloor)` (ViT patch
    embedding); both coincide when :math:`H, W` are multiples of :math:`s`.

    Raises:
        ValueError: if neither grid has ``num_tokens`` tokens.

    Example:
        >>> token_grid_size(500, 375, 16, 32 * 24), token_grid_size(518, 518, 14, 37 * 37)
        ((32, 24), (37, 37))
    """
    ceil = (-(-height // stride), -(-width // stride))
    floor = (height // stride, width // stride)
    for h, w in (ceil, floor):
        if h * w == num_tokens and h > 0 and w > 0:
            return h, w
    raise ValueError(f"aff: N={num_tokens} tokens match neither the ceil grid {ceil} nor the floor grid "
                     f"{floor} of an image of size {(height, width)} with stride {stride}")


def _check_params(stride: int, radius: int | None, power: float, col_eps: float) -> None:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride: expected a positive int, got {stride!r}")
    if radius is not None and (isinstance(radius, bool) or not isinstance(radius, int) or radius < 0):
        raise ValueError(f"radius: expected a non-negative int or None, got {radius!r}")
    if power <= 0:
        raise ValueError(f"power: expected a positive float, got {power}")
    if col_eps < 0:
        raise ValueError(f"col_eps: expected a non-negative float, got {col_eps}")


def affinity_propagation(cam: Tensor, aff: Tensor, labels: Tensor, *, stride: int = 16, radius: int | None = 8,
                         power: float = 2.0, col_eps: float = 0.1, bkg_score: float = 0.35) -> Tensor:
    r"""Propagate a CAM (with a constant background score) once along a predicted token affinity.

    The CAM is resized to the token grid (bilinear, ``align_corners=False``), a constant background
    channel is prepended and a softmax is taken over {background} ∪ present classes (absent classes get
    probability 0). The affinity is restricted to the radius window, raised to ``power`` and normalised
    per column; one propagation step follows and the scores are upsampled back to :math:`(H, W)`:

    .. math::
        \tilde A_{ij} &= \frac{(\hat A_{ij} W_{ij})^{p}}{\sum_i (\hat A_{ij} W_{ij})^{p} + \epsilon}, \\
        P &= \mathrm{softmax}_{\{0\}\cup\{k: y_k=1\}}\big([\beta\mathbb 1, \mathrm{down}(\hat M)]\big),\qquad
        P'_{:,j} = \sum_i P_{:,i}\, \tilde A_{ij}

    with window :math:`W` (:func:`wsseg.pseudo.radius_window`), :math:`p` = ``power`` (2),
    :math:`\epsilon` = ``col_eps`` (0.1) and :math:`\beta` = ``bkg_score`` (0.35). The argmax of the
    output over channels is the propagated label. Absent classes score exactly 0. Runs under
    ``torch.no_grad()`` in float32 (the official code detaches the affinity).

    The token grid is inferred from ``N`` with :func:`token_grid_size` (ceil grid for MiT, floor grid
    for ViT).

    Args:
        cam: normalised CAM :math:`\hat M` in [0, 1] at image resolution.
        aff: predicted affinity :math:`\hat A` in [0, 1] (:class:`AffinityFromAttention`).
        labels: image-level labels in {0, 1}.
        stride: backbone output stride (pixels per token).
        radius: window radius in tokens (AFA 8); ``None`` disables the window.
        power: element-wise power of the affinity.
        col_eps: added to every column sum before normalising.
        bkg_score: constant background score :math:`\beta`.

    Shape:
        - cam: :math:`(B, K, H, W)`.
        - aff: :math:`(B, N, N)`, :math:`N = hw`.
        - labels: :math:`(B, K)`.
        - output: :math:`(B, K+1, H, W)` scores, channel 0 = background.

    Raises:
        TypeError: if ``cam``/``aff`` is not floating-point.
        ValueError: on wrong shapes, a token count that fits no grid, or invalid hyperparameters.

    Example:
        >>> cam = torch.rand(1, 20, 64, 64); labels = torch.zeros(1, 20); labels[0, 6] = 1
        >>> out = affinity_propagation(cam, torch.rand(1, 16, 16), labels)
        >>> tuple(out.shape), sorted(out.argmax(1).unique().tolist()) in ([0], [7], [0, 7])
        ((1, 21, 64, 64), True)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``propagte_aff_cam_with_bkg``),
        scripts/dist_train_voc.py (``validate``).
    """
    _check_params(stride, radius, power, col_eps)
    check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
    B, K, H, W = cam.shape
    check_tensor(aff, "aff", ndim=3, dims="(B, N, N)", dtype="float")
    if aff.shape[0] != B or aff.shape[1] != aff.shape[2]:
        raise ValueError(f"aff: expected shape ({B}, N, N), got {tuple(aff.shape)}")
    check_labels(labels, "labels", B, K)
    N = aff.shape[-1]
    h, w = token_grid_size(H, W, stride, N)
    with torch.no_grad(), _no_autocast(cam.device):
        a = aff.detach().float()
        if radius is not None:
            from wsseg.pseudo.affinity_label import radius_window

            a = a * radius_window(h, w, radius, device=a.device)[None].to(a.dtype)
        a = a.pow(power)
        a = a / (a.sum(dim=1, keepdim=True) + col_eps)
        small = F.interpolate(cam.detach().float(), size=(h, w), mode="bilinear", align_corners=False)
        z = torch.cat([small.new_full((B, 1, h, w), bkg_score), small], dim=1).flatten(2)   # (B, K+1, N)
        keep = torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels.detach() > 0], dim=1)
        p = z.masked_fill(~keep[:, :, None], float("-inf")).softmax(dim=1)
        out = torch.bmm(p, a).reshape(B, K + 1, h, w)
        out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
    return out


class AffinityPropagation(nn.Module):
    r"""Module form of :func:`affinity_propagation` (AFA's evaluation-time "ref cams").

    .. math::
        P' = \mathrm{softmax}_{\{0\}\cup y}\big([\beta\mathbb 1, \mathrm{down}(\hat M)]\big)\,
             \frac{(\hat A \odot W)^{p}}{\mathbf 1^\top (\hat A \odot W)^{p} + \epsilon}

    Args:
        stride: backbone output stride.
        radius: window radius in tokens (``None``: no window).
        power: affinity power (AFA 2).
        col_eps: column-normalisation term (AFA 0.1).
        bkg_score: background score (AFA 0.35).

    Shape:
        - cam: :math:`(B, K, H, W)`; aff: :math:`(B, N, N)`; labels: :math:`(B, K)`.
        - output: :math:`(B, K+1, H, W)`.

    Raises:
        ValueError: on invalid hyperparameters.

    Example:
        >>> prop = AffinityPropagation(stride=16)
        >>> prop(torch.rand(2, 3, 32, 32), torch.rand(2, 4, 4), torch.ones(2, 3)).shape
        torch.Size([2, 4, 32, 32])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``propagte_aff_cam_with_bkg``).
    """

    def __init__(self, stride: int = 16, radius: int | None = 8, power: float = 2.0, col_eps: float = 0.1,
                 bkg_score: float = 0.35) -> None:
        super().__init__()
        _check_params(stride, radius, power, col_eps)
        self.stride = stride
        self.radius = radius
        self.power = power
        self.col_eps = col_eps
        self.bkg_score = bkg_score

    def forward(self, cam: Tensor, aff: Tensor, labels: Tensor) -> Tensor:
        """Propagated scores ``(B, K+1, H, W)``; see :func:`affinity_propagation`."""
        return affinity_propagation(cam, aff, labels, stride=self.stride, radius=self.radius, power=self.power,
                                    col_eps=self.col_eps, bkg_score=self.bkg_score)

    def extra_repr(self) -> str:
        return (f"stride={self.stride}, radius={self.radius}, power={self.power}, col_eps={self.col_eps}, "
                f"bkg_score={self.bkg_score}")
