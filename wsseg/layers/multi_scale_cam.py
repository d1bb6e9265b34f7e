"""Multi-scale, flip-fused, min–max normalised class activation maps (``common.md`` §1)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_labels, check_tensor

__all__ = [
    "MultiScaleCAM",
    "fuse_multi_scale_cams",
    "minmax_normalize",
    "multi_scale_cam",
    "multi_scale_inputs",
    "ordered_scales",
]

_FLIP_FUSE = ("max", "sum", "mean")
_NORMALIZE = ("minmax", None)
_SCALE_ORDER = ("unit_first", "as_given")
_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that disables autocast on ``device`` (a no-op for device types without autocast)."""
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _float_dtype(x: Tensor) -> torch.dtype:
    """At least float32 (bf16/fp16 are promoted, float64 is kept)."""
    return torch.promote_types(x.dtype, torch.float32)


def minmax_normalize(cam: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Min–max normalise every (image, class) map over its spatial positions.

    The normalisation that turns the summed multi-scale CAM into the [0, 1) score used by the
    pseudo-label builders. Every channel is normalised, including classes absent from the image.

    .. math::
        \hat M_{bk} = \frac{M_{bk} - \min_{hw} M_{bk}}
                           {\max_{hw}\left(M_{bk} - \min_{hw} M_{bk}\right) + \epsilon}

    A constant map becomes 0. The computation runs in (at least) float32, so bf16/fp16 inputs return
    float32.

    Args:
        cam: maps to normalise.
        eps: added to the denominator; makes the maximum :math:`m/(m+\epsilon) < 1`.

    Shape:
        - cam: :math:`(B, K, H, W)`.
        - output: :math:`(B, K, H, W)`, values in :math:`[0, 1)`.

    Raises:
        TypeError: if ``cam`` is not a floating-point tensor.
        ValueError: if ``cam`` is not 4-D or ``eps`` is not positive.

    Example:
        >>> cam = torch.tensor([[[[1.0, 3.0], [5.0, 9.0]]]])
        >>> minmax_normalize(cam, eps=0.0).flatten().tolist()
        [0.0, 0.25, 0.5, 1.0]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``).
    """
    check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
    if eps < 0:
        raise ValueError(f"eps: expected a non-negative float, got {eps}")
    x = cam.to(_float_dtype(cam))
    x = x - x.amin(dim=(-2, -1), keepdim=True)
    return x / (x.amax(dim=(-2, -1), keepdim=True) + eps)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(s) for s in scales)
    except TypeError as err:
        raise TypeError(f"scales: expected a sequence of floats, got {type(scales).__name__}") from err
    if len(out) == 0 or any(s <= 0 for s in out):
        raise ValueError(f"scales: expected a non-empty sequence of positive floats, got {scales!r}")
    return out


def ordered_scales(scales: Sequence[float] = (1.0, 0.5, 1.5),
                   scale_order: str = "unit_first") -> tuple[float, ...]:
    r"""The scales a multi-scale CAM pass actually runs, in order.

    ``"unit_first"`` (AFA / TSCD ``multi_scale_cam``, the default): scale 1 always runs **first**, even
    when ``scales`` omits it, followed by every other scale in list order; any 1.0 in the list is
    skipped. ``"as_given"``: the list literally (CoSA's ``multi_scale_camseg``, which requires a 1.0 in
    the list). Both agree for the official ``(1.0, 0.5, 1.5)``; the order matters for the sum's rounding
    and, with train-mode passes, for drop-path randomness and BatchNorm statistics.

    .. math::
        \mathcal S_{\text{unit\_first}} = (1) \,\Vert\, (s \in \text{scales} : s \ne 1)

    Args:
        scales: resize factors (positive).
        scale_order: ``"unit_first"`` or ``"as_given"``.

    Shape:
        - output: tuple of floats.

    Raises:
        TypeError: if ``scales`` is not a sequence of numbers.
        ValueError: on empty / non-positive ``scales`` or an unknown ``scale_order``.

    Example:
        >>> ordered_scales((0.5, 1.5))
        (1.0, 0.5, 1.5)
        >>> ordered_scales((0.5, 1.0, 1.5, 1.0)), ordered_scales((0.5, 1.5), "as_given")
        ((1.0, 0.5, 1.5), (0.5, 1.5))

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``: one
        pass on the input, then ``for s in scales: if s != 1.0``); TSCD (identical copy); CoSA,
        github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``: the list as given).
    """
    scales = _check_scales(scales)
    if scale_order not in _SCALE_ORDER:
        raise ValueError(f"scale_order: expected one of {_SCALE_ORDER}, got {scale_order!r}")
    if scale_order == "as_given":
        return scales
    return (1.0,) + tuple(s for s in scales if s != 1.0)


def multi_scale_inputs(images: Tensor, scales: Sequence[float] = (1.0, 0.5, 1.5), *,
                       flip: bool = True, scale_order: str = "unit_first") -> list[Tensor]:
    r"""Build the network inputs of a multi-scale (+ horizontal flip) CAM pass.

    For every scale :math:`s` of :func:`ordered_scales` (``scales`` and ``scale_order``) the batch is
    resized bilinearly (``align_corners=False``) to :math:`(\lfloor sH \rfloor, \lfloor sW \rfloor)`
    (scale 1 keeps the tensor unchanged) and, when ``flip`` is set, concatenated with its horizontal flip
    along the batch axis.

    Args:
        images: image batch (any normalisation).
        scales: resize factors, one network pass each.
        flip: append the horizontally flipped copy (batch ``2B``).
        scale_order: ``"unit_first"`` (official AFA/TSCD: scale 1 first and always, other 1.0 entries
            skipped) or ``"as_given"`` (see :func:`ordered_scales`).

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - output: list of :math:`(2B, 3, \lfloor sH \rfloor, \lfloor sW \rfloor)` tensors
          (:math:`B` rows when ``flip=False``), one per scale of :func:`ordered_scales`.

    Raises:
        TypeError: if ``images`` is not a floating-point tensor.
        ValueError: if ``images`` is not 4-D, ``scales`` is empty / non-positive or ``scale_order`` unknown.

    Example:
        >>> xs = multi_scale_inputs(torch.rand(2, 3, 32, 48), (1.0, 0.5))
        >>> [tuple(x.shape) for x in xs]
        [(4, 3, 32, 48), (4, 3, 16, 24)]
        >>> [tuple(x.shape) for x in multi_scale_inputs(torch.rand(1, 3, 32, 48), (0.5,), flip=False)]
        [(1, 3, 32, 48), (1, 3, 16, 24)]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``).
    """
    check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)", dtype="float")
    scales = ordered_scales(scales, scale_order)
    H, W = images.shape[-2:]
    out = []
    for s in scales:
        if s == 1.0:
            x = images
        else:
            size = (int(s * H), int(s * W))
            if min(size) < 1:
                raise ValueError(f"scales: scale {s} gives an empty image for input size {(H, W)}")
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        out.append(torch.cat([x, x.flip(-1)], dim=0) if flip else x)
    return out


def fuse_multi_scale_cams(cams: Sequence[Tensor], size: tuple[int, int], labels: Tensor | None = None, *,
                          flip: bool = True, flip_fuse: str = "max", normalize: str | None = "minmax",
                          eps: float = 1e-5) -> Tensor:
    r"""Fuse the raw CAMs of a multi-scale (+ flip) pass into one map per image and class.

    Each CAM is upsampled bilinearly (``align_corners=False``) to ``size``; with ``flip`` the second
    half of the batch is flipped back and fused with the first half (element-wise max in the official
    code); a ReLU follows; the scales are summed; finally every (image, class) map is min–max
    normalised (:func:`minmax_normalize`) and, when ``labels`` are given, multiplied by the image
    label (CoSA's "label validation" :math:`\hat M \odot y`).

    .. math::
        c_s &= \mathrm{ReLU}\big(\mathrm{fuse}(\mathrm{up}(M(x_s)),\
              \mathrm{hflip}(\mathrm{up}(M(\mathrm{hflip}\,x_s))))\big), \\
        \tilde M &= \sum_s c_s, \qquad \hat M = \mathrm{minmax}(\tilde M)\,[\odot\, y]

    Computation runs in float32 with autocast disabled, so bf16 CAMs give a float32 result.

    Args:
        cams: raw CAMs, one per scale (e.g. ``cam_fn(x)`` for ``x`` in :func:`multi_scale_inputs`).
        size: output size :math:`(H, W)`.
        labels: optional image labels; absent classes are zeroed after normalisation.
        flip: the batch of every CAM is ``2B`` = (original, flipped).
        flip_fuse: ``"max"`` (AFA/TSCD/CoSA CAM), ``"sum"`` (CoSA segmentation logits) or ``"mean"``.
        normalize: ``"minmax"`` (official) or ``None`` (return the summed map :math:`\tilde M`).
        eps: denominator term of the min–max normalisation.

    Shape:
        - cams: list of :math:`(2B, K, h_s, w_s)` (:math:`(B, K, h_s, w_s)` when ``flip=False``).
        - labels: :math:`(B, K)`.
        - output: :math:`(B, K, H, W)`, float32, in :math:`[0, 1)` with ``normalize="minmax"``.

    Raises:
        TypeError: if a CAM or ``labels`` is not a tensor of the right dtype.
        ValueError: on an empty list, inconsistent batch/class sizes, an odd batch with ``flip``,
            wrong ``labels`` shape, or unknown ``flip_fuse`` / ``normalize``.

    Example:
        >>> cams = [torch.randn(4, 3, 8, 8), torch.randn(4, 3, 4, 4)]
        >>> out = fuse_multi_scale_cams(cams, (16, 16))
        >>> tuple(out.shape), bool(out.min() >= 0), bool(out.max() < 1)
        ((2, 3, 16, 16), True, True)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``);
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``,
        ``cam_validation``).
    """
    if flip_fuse not in _FLIP_FUSE:
        raise ValueError(f"flip_fuse: expected one of {_FLIP_FUSE}, got {flip_fuse!r}")
    if normalize not in _NORMALIZE:
        raise ValueError(f"normalize: expected one of {_NORMALIZE}, got {normalize!r}")
    if isinstance(cams, Tensor) or not isinstance(cams, Sequence) or len(cams) == 0:
        raise ValueError(f"cams: expected a non-empty list of (2B, K, h, w) tensors, got {type(cams).__name__}")
    n, K = None, None
    for i, c in enumerate(cams):
        check_tensor(c, f"cams[{i}]", ndim=4, dims="(2B, K, h, w)", dtype="float")
        if n is None:
            n, K = c.shape[0], c.shape[1]
        elif c.shape[:2] != (n, K):
            raise ValueError(f"cams[{i}]: expected batch and class sizes {(n, K)} (those of cams[0]), "
                             f"got {tuple(c.shape[:2])}")
    if flip and n % 2:
        raise ValueError(f"cams: with flip=True the batch must be 2B (original + flipped), got odd size {n}")
    B = n // 2 if flip else n
    H, W = int(size[0]), int(size[1])
    if labels is not None:
        check_labels(labels, "labels", B, K)
    device = cams[0].device
    with torch.no_grad(), _no_autocast(device):
        total = None
        for c in cams:
            c = F.interpolate(c.detach().to(_float_dtype(c)), size=(H, W), mode="bilinear",
                              align_corners=False)
            if flip:
                a, b = c[:B], c[B:].flip(-1)
                if flip_fuse == "max":
                    c = torch.maximum(a, b)
                elif flip_fuse == "sum":
                    c = a + b
                else:
                    c = (a + b) * 0.5
            c = F.relu(c)
            total = c if total is None else total + c
        if normalize == "minmax":
            total = minmax_normalize(total, eps)
        if labels is not None:
            total = total * labels.to(total.dtype)[:, :, None, None]
    return total


def multi_scale_cam(cam_fn: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor | None = None, *,
                    scales: Sequence[float] = (1.0, 0.5, 1.5), flip: bool = True, flip_fuse: str = "max",
                    eps: float = 1e-5, scale_order: str = "unit_first") -> Tensor:
    r"""Multi-scale, flip-fused, min–max normalised CAM of a network (the pseudo-label teacher signal).

    Runs ``cam_fn`` once per scale on the batch concatenated with its horizontal flip (under
    ``torch.no_grad()``), then fuses with :func:`fuse_multi_scale_cams`:

    .. math::
        \hat M = \mathrm{minmax}_{hw}\Big(\sum_{s} \mathrm{ReLU}\big(\max(\mathrm{up}(M(x_s)),\
                 \mathrm{hflip}(\mathrm{up}(M(\mathrm{hflip}\,x_s))))\big)\Big)\ [\odot\, y]

    ``cam_fn`` is called as given: the train/eval mode of the network is the caller's choice (AFA/TSCD
    run these passes in train mode, so drop-path is active and BN statistics are updated). The scales
    run in the official AFA/TSCD order by default: scale 1 first and always, then the others in list
    order, any 1.0 in the list skipped (``scales=(0.5, 1.5)`` runs 1, 0.5, 1.5; :func:`ordered_scales`).

    Args:
        cam_fn: callable ``x (B', 3, h, w) -> raw CAM (B', K, h', w')`` (no ReLU, no normalisation).
        images: input batch.
        labels: optional image labels; when given, absent classes are zeroed (CoSA label validation).
        scales: resize factors (official ``[1.0, 0.5, 1.5]``).
        flip: add the horizontal-flip pass.
        flip_fuse: ``"max"`` (official), ``"sum"`` or ``"mean"``.
        eps: denominator term of the min–max normalisation.
        scale_order: ``"unit_first"`` (official AFA/TSCD) or ``"as_given"`` (the list literally).

    Shape:
        - images: :math:`(B, 3, H, W)`.
        - labels: :math:`(B, K)`.
        - output: :math:`(B, K, H, W)`, float32, detached, values in :math:`[0, 1)`.

    Raises:
        TypeError: if ``cam_fn`` is not callable or a tensor has the wrong dtype.
        ValueError: on wrong shapes or options (see :func:`fuse_multi_scale_cams`).

    Example:
        >>> conv = torch.nn.Conv2d(3, 4, 1, bias=False)
        >>> cam = multi_scale_cam(conv, torch.rand(2, 3, 16, 16))
        >>> tuple(cam.shape), cam.dtype
        ((2, 4, 16, 16), torch.float32)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``);
        TSCD, Xu et al. AAAI 2023 (identical copy); CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA,
        utils/seg_helper.py (``multi_scale_camseg``).
    """
    if not callable(cam_fn):
        raise TypeError(f"cam_fn: expected a callable x -> CAM, got {type(cam_fn).__name__}")
    inputs = multi_scale_inputs(images, scales, flip=flip, scale_order=scale_order)
    with torch.no_grad():
        cams = [cam_fn(x) for x in inputs]
    return fuse_multi_scale_cams(cams, tuple(images.shape[-2:]), labels, flip=flip, flip_fuse=flip_fuse,
                                 normalize="minmax", eps=eps)


class MultiScaleCAM(nn.Module):
    r"""Multi-scale, flip-fused, min–max normalised CAM, with the network pass left to the caller.

    Module form of :func:`multi_scale_cam` for training loops that run the network themselves (e.g. to
    also collect segmentation logits or attention from the same passes)::

        inputs = msc.make_inputs(images)             # list of (2B, 3, sH, sW)
        cams = [model(x, cam_only=True) for x in inputs]
        cam = msc(cams, images, labels)              # (B, K, H, W) in [0, 1)

    .. math::
        \hat M = \mathrm{minmax}_{hw}\Big(\sum_{s} \mathrm{ReLU}\big(\mathrm{fuse}(\mathrm{up}(M(x_s)),\
                 \mathrm{hflip}(\mathrm{up}(M(\mathrm{hflip}\,x_s))))\big)\Big)\ [\odot\, y]

    Args:
        scales: resize factors (official ``(1.0, 0.5, 1.5)``).
        flip: add the horizontal-flip pass (batch ``2B``).
        flip_fuse: ``"max"`` (AFA/TSCD/CoSA CAM), ``"sum"`` (CoSA segmentation logits) or ``"mean"``.
        normalize: ``"minmax"`` (official) or ``None``.
        eps: denominator term of the min–max normalisation.
        mask_by_labels: multiply the result by the image labels (CoSA ``cam_validation``); ``labels``
            are then required in :meth:`forward`. When ``False``, ``labels`` are ignored.
        scale_order: ``"unit_first"`` (official AFA/TSCD: scale 1 first and always, other 1.0 entries
            skipped) or ``"as_given"``; the passes actually run are ``self.run_scales``
            (:func:`ordered_scales`).

    Shape:
        - cams: list of :math:`(2B, K, h_s, w_s)`, one per entry of ``run_scales`` (bf16 accepted).
        - images: :math:`(B, 3, H, W)` (only its size is used).
        - labels: :math:`(B, K)`.
        - output: :math:`(B, K, H, W)`, float32, in :math:`[0, 1)` with ``normalize="minmax"``.

    Raises:
        ValueError: on unknown options or wrong input shapes; if ``mask_by_labels`` and no ``labels``.

    Example:
        >>> msc = MultiScaleCAM(scales=(1.0, 0.5))
        >>> images = torch.rand(2, 3, 16, 16)
        >>> conv = torch.nn.Conv2d(3, 5, 1)
        >>> cam = msc([conv(x) for x in msc.make_inputs(images)], images)
        >>> tuple(cam.shape)
        (2, 5, 16, 16)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``);
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``).
    """

    def __init__(self, scales: Sequence[float] = (1.0, 0.5, 1.5), flip: bool = True, flip_fuse: str = "max",
                 normalize: str | None = "minmax", eps: float = 1e-5, mask_by_labels: bool = False,
                 scale_order: str = "unit_first") -> None:
        super().__init__()
        if flip_fuse not in _FLIP_FUSE:
            raise ValueError(f"flip_fuse: expected one of {_FLIP_FUSE}, got {flip_fuse!r}")
        if normalize not in _NORMALIZE:
            raise ValueError(f"normalize: expected one of {_NORMALIZE}, got {normalize!r}")
        if eps < 0:
            raise ValueError(f"eps: expected a non-negative float, got {eps}")
        self.scales = _check_scales(scales)
        self.scale_order = scale_order
        self.run_scales = ordered_scales(self.scales, scale_order)
        self.flip = bool(flip)
        self.flip_fuse = flip_fuse
        self.normalize = normalize
        self.eps = float(eps)
        self.mask_by_labels = bool(mask_by_labels)

    def make_inputs(self, images: Tensor) -> list[Tensor]:
        """Network inputs, one per scale: ``(2B, 3, ⌊sH⌋, ⌊sW⌋)`` (see :func:`multi_scale_inputs`)."""
        return multi_scale_inputs(images, self.run_scales, flip=self.flip, scale_order="as_given")

    def forward(self, cams: Sequence[Tensor], images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Fuse the per-scale raw CAMs; ``images`` only gives the output size :math:`(H, W)`."""
        check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)")
        if not isinstance(cams, Sequence) or isinstance(cams, Tensor) or len(cams) != len(self.run_scales):
            got = len(cams) if isinstance(cams, Sequence) and not isinstance(cams, Tensor) else type(cams).__name__
            raise ValueError(f"cams: expected a list of {len(self.run_scales)} tensors (one per scale of "
                             f"run_scales={self.run_scales}), got {got}")
        if self.mask_by_labels and labels is None:
            raise ValueError("labels: required (B, K) tensor when mask_by_labels=True, got None")
        out = fuse_multi_scale_cams(cams, tuple(images.shape[-2:]), labels if self.mask_by_labels else None,
                                    flip=self.flip, flip_fuse=self.flip_fuse, normalize=self.normalize,
                                    eps=self.eps)
        if out.shape[0] != images.shape[0]:
            raise ValueError(f"images: expected batch size {out.shape[0]} (that of the fused CAMs), "
                             f"got {images.shape[0]}")
        return out

    def extra_repr(self) -> str:
        return (f"scales={self.scales}, scale_order={self.scale_order!r}, flip={self.flip}, "
                f"flip_fuse={self.flip_fuse!r}, normalize={self.normalize!r}, eps={self.eps}, "
                f"mask_by_labels={self.mask_by_labels}")
