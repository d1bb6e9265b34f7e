"""One call from a network's raw CAM to a dual-threshold pseudo label (``common.md`` §1, §2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from wsseg.layers.multi_scale_cam import fuse_multi_scale_cams
from wsseg.utils.validation import check_shape, check_tensor

from .dual_threshold import DEFAULT_CHUNK_PIXELS, _check_chunk, _check_params, dual_threshold_pseudo_label

__all__ = ["RawCAMPseudoLabel", "RawCAMPseudoLabelOutput", "raw_cam_pseudo_label"]

#: Tolerance of the ``image`` range check: values in ``[-IMAGE_RANGE_TOL, 1 + IMAGE_RANGE_TOL]`` pass.
IMAGE_RANGE_TOL = 1e-3


class RawCAMPseudoLabelOutput(NamedTuple):
    """Result of :func:`raw_cam_pseudo_label` with ``return_cam=True``.

    Attributes:
        label: the pseudo label :math:`(B, H, W)`, int64 in :math:`\\{0, \\dots, K\\} \\cup \\{\\text{ignore}\\}`.
        cam: the normalised, label-masked CAM :math:`\\hat M \\odot y` the label was thresholded from,
            :math:`(B, K, H, W)`, float32, detached, in :math:`[0, 1)`.
    """

    label: Tensor
    cam: Tensor


def _as_list(cam: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(cam, Tensor):
        return [cam]
    if not isinstance(cam, Sequence) or len(cam) == 0:
        raise TypeError(f"cam: expected a (B, K, h, w) tensor or a non-empty list of them (one per scale), "
                        f"got {type(cam).__name__}")
    return list(cam)


def _check_image_range(image: Tensor) -> None:
    """ValueError unless ``image`` lies in [0, 1] (up to :data:`IMAGE_RANGE_TOL`); one device sync."""
    lo, hi = (float(v) for v in torch.aminmax(image.detach().float()))
    if lo >= -IMAGE_RANGE_TOL and hi <= 1.0 + IMAGE_RANGE_TOL:
        return
    if lo >= -IMAGE_RANGE_TOL and hi <= 255.0 + IMAGE_RANGE_TOL:
        hint = "it looks like a 0-255 image: pass image / 255"
    else:
        hint = ("it looks like a mean/std-normalised network input: pass wsseg.utils.denormalize(image) "
                "(TSCD: denormalize(image, mode='truncate_uint8'))")
    raise ValueError(f"image: expected a de-normalised RGB image in [0, 1] (the refiner's appearance kernel "
                     f"depends on the intensity scale), got values in [{lo:.4g}, {hi:.4g}]; {hint}")


def raw_cam_pseudo_label(cam: Tensor | Sequence[Tensor], labels: Tensor, image: Tensor | None = None,
                         valid: Tensor | None = None, *, size: tuple[int, int] | None = None, flip: bool = False,
                         high: float = 0.55, low: float = 0.35, down_scale: int = 2,
                         refiner: nn.Module | None = None, eps: float = 1e-5, ignore_index: int = 255,
                         chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS,
                         return_cam: bool = False) -> Tensor | RawCAMPseudoLabelOutput:
    r"""Turn the raw CAM of your network into a pseudo label in one call.

    The glue between a network's class-activation logits and the segmentation loss, in the order of the
    official AFA / TSCD / CoSA code. With :math:`M_s` the raw CAM of scale :math:`s` (one tensor = one
    scale), :math:`\mathrm{up}` the bilinear resize to the image size :math:`H \times W`
    (``align_corners=False``) and :math:`y` the image labels:

    .. math::
        \tilde M &= \sum_s \mathrm{ReLU}\big(\mathrm{up}(M_s)\big), \qquad
        \hat M_{bk} = \frac{\tilde M_{bk} - \min_{hw} \tilde M_{bk}}
                          {\max_{hw}(\tilde M_{bk} - \min_{hw} \tilde M_{bk}) + \epsilon}\ y_{bk}, \\
        Y &= \mathrm{DualThreshold}_{\tau_{hi}, \tau_{lo}, R}\big(\hat M, y, I\big)

    1. **upsample** every raw map to :math:`H \times W` (the pseudo label is always at image resolution);
    2. **ReLU** (after the upsampling, as the official code: for one map,
       :math:`\mathrm{up}(\mathrm{ReLU}\,M) \ne \mathrm{ReLU}(\mathrm{up}\,M)` near sign changes);
       with ``flip=True`` every batch is ``2B`` = (images, their horizontal flips) and the flipped half is
       flipped back and fused by an element-wise max before the ReLU; the scales are summed;
    3. per-(image, class) **min–max normalisation** to :math:`[0, 1)`;
    4. classes absent from the image are **zeroed** (CoSA's label validation; the thresholding ignores
       them anyway);
    5. **dual thresholds** and the optional **refiner** :math:`R` of
       :func:`~wsseg.pseudo.dual_threshold_pseudo_label`: class where a present class beats
       :math:`\tau_{hi}`, background where the background wins even against :math:`\tau_{lo}`,
       ``ignore_index`` in between and outside ``valid``.

    Steps 1–4 are :func:`~wsseg.layers.fuse_multi_scale_cams` (``flip_fuse="max"``,
    ``normalize="minmax"``), step 5 is :func:`~wsseg.pseudo.dual_threshold_pseudo_label`, so the result
    equals the pseudo label of :class:`~wsseg.training.TSCDTrainingStep` (VARM refiner, thresholds 0.55 /
    0.35, image ``denormalize(x, mode="truncate_uint8")``) and the CAM pseudo label of
    :class:`~wsseg.training.CoSATrainingStep` (no refiner, 0.7 / 0.2) given the same per-scale CAMs. Runs
    under ``torch.no_grad()`` (it is a target); everything is detached.

    Which refiner (all parameter-free, from :mod:`wsseg.layers`): ``None`` (CoSA),
    :class:`~wsseg.layers.PixelAdaptiveRefine` (AFA's PAR), :class:`~wsseg.layers.VariationAwareRefine`
    (TSCD's VARM), :class:`~wsseg.layers.PAMR` (SLRNet's; SLRNet itself uses relative thresholds, see
    :func:`~wsseg.pseudo.slrnet_pseudo_label`). Thresholds: the presets of
    :class:`~wsseg.pseudo.DualThresholdPseudoLabel`; for a model of your own, start from the AFA/TSCD pair
    0.55 / 0.35 and watch the ignored and foreground fractions of the label (or search them per batch with
    :class:`~wsseg.pseudo.ThresholdSearch`, which takes the normalised CAM returned with ``return_cam``).

    Args:
        cam: the **raw** CAM logits of the network (before any ReLU, sigmoid or normalisation), at any
            resolution: one tensor, or a list with one tensor per scale (e.g. the network applied to
            :func:`~wsseg.layers.multi_scale_inputs`). Detached inside.
        labels: image-level labels in {0, 1}, **without** a background entry.
        image: the de-normalised RGB image in **[0, 1]** (not the mean/std-normalised network input, not
            0–255); required with a ``refiner`` (checked: a value outside [0, 1] raises), otherwise only
            gives the output size.
        valid: real-image region of a padded crop; ``None`` means everything is valid.
        size: output size :math:`(H, W)` when no ``image`` is given (must equal the image size when both
            are given).
        flip: every CAM holds ``2B`` rows, the second half computed on horizontally flipped images.
        high: :math:`\tau_{hi}` (AFA/TSCD 0.55; CoSA 0.7).
        low: :math:`\tau_{lo}` (AFA/TSCD 0.35; CoSA 0.2 / 0.25), ``low <= high``.
        down_scale: internal downsampling of the thresholding / refinement (official 2).
        refiner: ``None`` or a parameter-free refiner module (see above).
        eps: :math:`\epsilon` of the min–max normalisation (official 1e-5).
        ignore_index: label value of ignored pixels.
        chunk_pixels: see :func:`~wsseg.pseudo.dual_threshold_pseudo_label` (memory only).
        return_cam: also return the normalised CAM :math:`\hat M \odot y`
            (:class:`RawCAMPseudoLabelOutput`).

    Returns:
        The pseudo label, or ``RawCAMPseudoLabelOutput(label, cam)`` with ``return_cam=True``.

    Shape:
        - cam: :math:`(B, K, h, w)`, or a list of :math:`(B, K, h_s, w_s)` (:math:`(2B, \dots)` with ``flip``).
        - labels: :math:`(B, K)`.
        - image: :math:`(B, 3, H, W)`, values in [0, 1].
        - valid: :math:`(B, H, W)`, bool.
        - output: :math:`(B, H, W)`, int64 in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`
          (0 = background, :math:`k` = class :math:`k - 1` of ``labels``).

    Raises:
        TypeError: if ``cam`` is not a tensor or a list of tensors, on non-float CAMs / image, a non-bool
            ``valid`` or a refiner that is not callable.
        ValueError: on wrong shapes (a CAM with :math:`K+1` channels, i.e. a background channel, is named as
            such), an odd batch with ``flip``, no ``image`` and no ``size``, an ``image`` whose size differs
            from ``size``, an ``image`` outside [0, 1] (the message says whether it looks 0–255 or
            mean/std-normalised), a ``refiner`` without ``image``, ``low > high`` or a bad ``down_scale``.

    Example:
        >>> raw = torch.tensor([[[[4.0, 1.0], [-2.0, 0.0]]]])       # (B=1, K=1, 2, 2) raw CAM logits
        >>> out = raw_cam_pseudo_label(raw, torch.ones(1, 1), size=(2, 2), down_scale=1, return_cam=True)
        >>> [round(v, 3) for v in out.cam.flatten().tolist()]       # ReLU, then min-max: 4/(4+1e-5), 0.25
        [1.0, 0.25, 0.0, 0.0]
        >>> out.label[0].tolist()                                     # > 0.55 class 1, < 0.35 background
        [[1, 0], [0, 0]]
        >>> raw_cam_pseudo_label(raw, torch.ones(1, 1), size=(8, 8)).shape   # always at image size
        torch.Size([1, 8, 8])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``multi_scale_cam``,
        ``refine_cams_with_bkg_v2``); TSCD, Xu et al. AAAI 2023 (same functions, VARM refiner); CoSA, Yang et
        al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``,
        ``cam_validation``, ``cam2mask``).
    """
    cams = _as_list(cam)
    for i, c in enumerate(cams):
        check_tensor(c, "cam" if len(cams) == 1 else f"cam[{i}]", ndim=4, dims="(B, K, h, w)", dtype="float")
    K = cams[0].shape[1]
    rows = cams[0].shape[0]
    if flip and rows % 2:
        raise ValueError(f"cam: with flip=True every CAM holds 2B rows (images, then their flips), got {rows}")
    B = rows // 2 if flip else rows
    check_tensor(labels, "labels", ndim=2, dims="(B, K)")
    if labels.shape[1] == K - 1 and labels.shape[0] == B:
        raise ValueError(f"cam: has {K} channels but labels have {K - 1} classes: the CAM seems to include a "
                         f"background channel; pass the {K - 1} foreground channels (cam[:, 1:]), the pseudo "
                         f"label adds its own background")
    check_shape(labels, "labels", (B, K), f"(B, K) with B={B}, K={K} (those of cam)")
    _check_params(high, low, down_scale)
    _check_chunk(chunk_pixels)
    if refiner is not None and not callable(refiner):
        raise TypeError(f"refiner: expected a callable module or None, got {type(refiner).__name__}")
    if image is not None:
        check_tensor(image, "image", ndim=4, dims="(B, 3, H, W)", dtype="float")
        check_shape(image, "image", (B, 3, None, None), "(B, 3, H, W)")
        img_size = (int(image.shape[-2]), int(image.shape[-1]))
        if size is not None and tuple(int(s) for s in size) != img_size:
            raise ValueError(f"size: expected the image size {img_size} (or None), got {tuple(size)}")
        size = img_size
        _check_image_range(image)
    elif refiner is not None:
        raise ValueError("image: required (B, 3, H, W) image in [0, 1] when a refiner is given, got None")
    if size is None:
        raise ValueError("size: the pseudo label is built at image resolution; pass image=(B, 3, H, W) or "
                         "size=(H, W), got neither")
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size: expected a positive (H, W), got {size}")
    norm = fuse_multi_scale_cams(cams, size, labels, flip=flip, flip_fuse="max", normalize="minmax", eps=eps)
    label = dual_threshold_pseudo_label(norm, labels, image if refiner is not None else None, valid, high=high,
                                        low=low, down_scale=down_scale, refiner=refiner,
                                        ignore_index=ignore_index, chunk_pixels=chunk_pixels)
    return RawCAMPseudoLabelOutput(label, norm) if return_cam else label


class RawCAMPseudoLabel(nn.Module):
    r"""Raw CAM → pseudo label in one call (module form of :func:`raw_cam_pseudo_label`).

    .. math::
        Y = \mathrm{DualThreshold}_{\tau_{hi}, \tau_{lo}, R}\Big(
            \mathrm{minmax}_{hw}\big(\textstyle\sum_s \mathrm{ReLU}(\mathrm{up}(M_s))\big) \odot y,\ y,\ I\Big)

    Upsample to the image size → ReLU → per-class min–max → absent classes zeroed → dual thresholds →
    optional refiner; the refiner is a parameter-free component treated as a hyperparameter.

    Args:
        high: :math:`\tau_{hi}` (AFA/TSCD 0.55).
        low: :math:`\tau_{lo}` (AFA/TSCD 0.35).
        down_scale: internal downsampling factor (2).
        refiner: ``None``, :class:`~wsseg.layers.PixelAdaptiveRefine`,
            :class:`~wsseg.layers.VariationAwareRefine` or :class:`~wsseg.layers.PAMR`.
        flip: the CAMs hold ``2B`` rows (images, then their horizontal flips), fused by max.
        eps: :math:`\epsilon` of the min–max normalisation.
        ignore_index: label value of ignored pixels.
        chunk_pixels: internal pixels per refiner call (memory only).

    Shape:
        - cam: :math:`(B, K, h, w)` raw logits, or a list of them; labels: :math:`(B, K)`;
          image: :math:`(B, 3, H, W)` in [0, 1]; valid: :math:`(B, H, W)` bool.
        - output: :math:`(B, H, W)`, int64 in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`.

    Raises:
        ValueError: if ``low > high``, ``down_scale`` is not a positive int or ``chunk_pixels`` is negative
            (and see the function).
        TypeError: if ``refiner`` is not callable.

    Example:
        >>> from wsseg.layers import PixelAdaptiveRefine
        >>> to_label = RawCAMPseudoLabel(refiner=PixelAdaptiveRefine(num_iter=2))
        >>> raw, image = torch.randn(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
        >>> labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        >>> y = to_label(raw, labels, image)
        >>> tuple(y.shape), set(y[1].unique().tolist()) <= {0, 2, 255}
        ((2, 32, 32), True)

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py; TSCD, Xu et al. AAAI 2023;
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py.
    """

    def __init__(self, high: float = 0.55, low: float = 0.35, down_scale: int = 2,
                 refiner: nn.Module | None = None, flip: bool = False, eps: float = 1e-5,
                 ignore_index: int = 255, chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS) -> None:
        super().__init__()
        _check_params(high, low, down_scale)
        _check_chunk(chunk_pixels)
        if refiner is not None and not callable(refiner):
            raise TypeError(f"refiner: expected a callable module or None, got {type(refiner).__name__}")
        if eps < 0:
            raise ValueError(f"eps: expected a non-negative float, got {eps}")
        self.high = high
        self.low = low
        self.down_scale = down_scale
        self.refiner = refiner
        self.flip = bool(flip)
        self.eps = float(eps)
        self.ignore_index = ignore_index
        self.chunk_pixels = chunk_pixels

    def forward(self, cam: Tensor | Sequence[Tensor], labels: Tensor, image: Tensor | None = None,
                valid: Tensor | None = None, size: tuple[int, int] | None = None) -> Tensor:
        """Pseudo label ``(B, H, W)``; see :func:`raw_cam_pseudo_label`."""
        return raw_cam_pseudo_label(cam, labels, image, valid, size=size, flip=self.flip, high=self.high,
                                    low=self.low, down_scale=self.down_scale, refiner=self.refiner, eps=self.eps,
                                    ignore_index=self.ignore_index, chunk_pixels=self.chunk_pixels)

    def extra_repr(self) -> str:
        return (f"high={self.high}, low={self.low}, down_scale={self.down_scale}, flip={self.flip}, "
                f"eps={self.eps}, ignore_index={self.ignore_index}, chunk_pixels={self.chunk_pixels}")
