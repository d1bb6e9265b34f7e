"""CoSA's teacher pass: multi-scale + flip fusion of the teacher's CAMs, aux CAMs and segmentation logits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_labels, check_tensor

from .multi_scale_cam import (
    _float_dtype,
    _no_autocast,
    fuse_multi_scale_cams,
    multi_scale_inputs,
    ordered_scales,
)

__all__ = ["CoSATeacherInference", "CoSATeacherOutput", "cosa_teacher_cam", "cosa_teacher_inference"]


class CoSATeacherOutput(NamedTuple):
    """Fused teacher signals of :class:`CoSATeacherInference` (all float32, detached, at the image size).

    Attributes:
        cam: label-validated min–max normalised main CAM :math:`\\hat M \\odot y` (B, K, H, W) in [0, 1).
        cam_aux: label-validated normalised aux CAM :math:`\\hat M_{aux} \\odot y` (B, K, H, W) in [0, 1).
        seg_logits: summed segmentation logits :math:`\\tilde S` (B, K+1, H, W), **not** label-masked
            (the soft pseudo label masks them, ``cosa.md`` §3.4).
    """

    cam: Tensor
    cam_aux: Tensor
    seg_logits: Tensor


def _check_list(x: object, name: str, n: int, dims: str) -> list[Tensor]:
    if isinstance(x, Tensor) or not isinstance(x, Sequence) or len(x) != n:
        got = len(x) if isinstance(x, Sequence) and not isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a list of {n} tensors {dims} (one per scale), got {got}")
    for i, t in enumerate(x):
        check_tensor(t, f"{name}[{i}]", ndim=4, dims=dims, dtype="float")
    return list(x)


class CoSATeacherInference(nn.Module):
    r"""Fusion of CoSA's multi-scale, flip-augmented teacher passes into CAMs and segmentation logits.

    The teacher forward is the caller's: :meth:`make_inputs` gives one ``(2B, 3, ⌊sH⌋, ⌊sW⌋)`` batch per
    scale (image, then its horizontal flip; scales in the official order, i.e. as given), the caller
    runs the teacher on each and passes the raw per-scale outputs to :meth:`forward`. With
    :math:`\mathrm{up}` = bilinear resize to :math:`H \times W` (``align_corners=False``) and
    :math:`x_s^{f}` = the flipped copy:

    .. math::
        c_s &= \mathrm{ReLU}\big(\max(\mathrm{up}(M(x_s)),\ \mathrm{hflip}(\mathrm{up}(M(x_s^{f}))))\big),
        \qquad \hat M = \mathrm{minmax}_{hw}\Big(\sum_s c_s\Big) \odot y, \\
        \hat M_{aux} &= \mathrm{minmax}_{hw}\big(c^{aux}_{s_{last}}\big) \odot y \quad
        (\texttt{aux\_cam\_all\_scales=True}: \textstyle\sum_s c^{aux}_s), \\
        \tilde S &= \sum_s \big[\mathrm{up}(S(x_s)) + \mathrm{hflip}(\mathrm{up}(S(x_s^{f})))\big],

    with :math:`\mathrm{minmax}` the per-(image, class) min–max normalisation
    :math:`(v - \min v)/(\max(v - \min v) + \epsilon)` (:func:`~wsseg.layers.minmax_normalize`) and
    :math:`y` the image labels ("label validation"). The CAM part is
    :func:`~wsseg.layers.fuse_multi_scale_cams` (upsample → flip max → ReLU → sum → min–max → ⊙ y).
    **Faithful quirk**: the official loop re-assigns the aux-CAM list instead of appending to it, so
    :math:`\hat M_{aux}` comes from the **last** scale only (1.5 for the official scales);
    ``aux_cam_all_scales=True`` sums all scales. The segmentation logits are upsampled to
    :math:`H \times W` **before** the flip sum and the scale sum (a sum of 2·len(scales) logit maps, no
    softmax, no label masking).

    Args:
        scales: resize factors, in order (official ``(1.0, 0.5, 1.5)``); a 1.0 uses the image unchanged.
        aux_cam_all_scales: ``False`` (faithful: last scale only) or ``True`` (bug fixed).
        eps: denominator term of the min–max normalisation (official 1e-5).

    Shape:
        - images: :math:`(B, 3, H, W)` (only the size and batch are used by :meth:`forward`).
        - cams, cams_aux: lists of :math:`(2B, K, h_s, w_s)`; segs: lists of :math:`(2B, K+1, h_s, w_s)`.
        - labels: :math:`(B, K)` in {0, 1}.
        - output: :class:`CoSATeacherOutput` with :math:`(B, K, H, W)`, :math:`(B, K, H, W)`,
          :math:`(B, K+1, H, W)`, float32, detached.

    Raises:
        ValueError: on empty / non-positive ``scales``, negative ``eps``, lists of the wrong length,
            inconsistent batch / class sizes or wrong ``labels`` shape.
        TypeError: if an output or ``labels`` is not a tensor of the right dtype.

    Example:
        >>> fuse = CoSATeacherInference()
        >>> images, labels = torch.rand(2, 3, 32, 32), torch.tensor([[1, 0, 0], [0, 1, 1]])
        >>> inputs = fuse.make_inputs(images)
        >>> [tuple(x.shape[-2:]) for x in inputs]
        [(32, 32), (16, 16), (48, 48)]
        >>> cams = [torch.randn(4, 3, x.shape[-2] // 4, x.shape[-1] // 4) for x in inputs]
        >>> segs = [torch.randn(4, 4, x.shape[-2] // 4, x.shape[-1] // 4) for x in inputs]
        >>> out = fuse(cams, cams, segs, images, labels)
        >>> tuple(out.cam.shape), tuple(out.seg_logits.shape), out.cam[0, 1:].abs().sum().item()
        ((2, 3, 32, 32), (2, 4, 32, 32), 0.0)

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``,
        ``cam_validation``), main.py (teacher pass on the weak view).
    """

    def __init__(self, scales: Sequence[float] = (1.0, 0.5, 1.5), aux_cam_all_scales: bool = False,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.scales = ordered_scales(scales, "as_given")
        if not isinstance(aux_cam_all_scales, bool):
            raise TypeError(f"aux_cam_all_scales: expected a bool, got {type(aux_cam_all_scales).__name__}")
        if eps < 0:
            raise ValueError(f"eps: expected a non-negative float, got {eps}")
        self.aux_cam_all_scales = aux_cam_all_scales
        self.eps = float(eps)

    def make_inputs(self, images: Tensor) -> list[Tensor]:
        """Teacher inputs, one per scale in order: ``(2B, 3, ⌊sH⌋, ⌊sW⌋)`` = image then its h-flip."""
        return multi_scale_inputs(images, self.scales, flip=True, scale_order="as_given")

    def fuse_cam(self, cams: Sequence[Tensor], images: Tensor, labels: Tensor) -> Tensor:
        r"""Only :math:`\hat M` from the raw per-scale CAMs ``(2B, K, h_s, w_s)`` (checked like :meth:`forward`)."""
        check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)")
        cams = _check_list(cams, "cams", len(self.scales), "(2B, K, h, w)")
        B, K = images.shape[0], cams[0].shape[1]
        for i, t in enumerate(cams):
            if t.shape[:2] != (2 * B, K):
                raise ValueError(f"cams[{i}]: expected batch and channels {(2 * B, K)} (2B = image + flip for "
                                 f"B={B}, K channels with K={K}), got shape {tuple(t.shape)}")
        check_labels(labels, "labels", B, K)
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return fuse_multi_scale_cams(cams, size, labels, flip=True, flip_fuse="max", normalize="minmax", eps=self.eps)

    def forward(self, cams: Sequence[Tensor], cams_aux: Sequence[Tensor], segs: Sequence[Tensor], images: Tensor,
                labels: Tensor) -> CoSATeacherOutput:
        """Fuse the raw per-scale teacher outputs (see the class docstring for the equations)."""
        cam = self.fuse_cam(cams, images, labels)
        n = len(self.scales)
        cams_aux = _check_list(cams_aux, "cams_aux", n, "(2B, K, h, w)")
        segs = _check_list(segs, "segs", n, "(2B, K+1, h, w)")
        B, K = cam.shape[:2]
        for name, lst, c in (("cams_aux", cams_aux, K), ("segs", segs, K + 1)):
            for i, t in enumerate(lst):
                if t.shape[:2] != (2 * B, c):
                    raise ValueError(f"{name}[{i}]: expected batch and channels {(2 * B, c)} (2B = image + "
                                     f"flip for B={B}, {'K+1' if name == 'segs' else 'K'} channels with "
                                     f"K={K}), got shape {tuple(t.shape)}")
        size = (int(images.shape[-2]), int(images.shape[-1]))
        aux_list = cams_aux if self.aux_cam_all_scales else cams_aux[-1:]
        cam_aux = fuse_multi_scale_cams(aux_list, size, labels, flip=True, flip_fuse="max", normalize="minmax",
                                        eps=self.eps)
        with torch.no_grad(), _no_autocast(segs[0].device):
            seg = None
            for s in segs:
                s = F.interpolate(s.detach().to(_float_dtype(s)), size=size, mode="bilinear", align_corners=False)
                s = s[:B] + s[B:].flip(-1)
                seg = s if seg is None else seg + s
        return CoSATeacherOutput(cam=cam, cam_aux=cam_aux, seg_logits=seg)

    def extra_repr(self) -> str:
        return f"scales={self.scales}, aux_cam_all_scales={self.aux_cam_all_scales}, eps={self.eps}"


def cosa_teacher_inference(model: nn.Module, images: Tensor, labels: Tensor, *,
                           scales: Sequence[float] = (1.0, 0.5, 1.5), aux_cam_all_scales: bool = False,
                           eps: float = 1e-5) -> CoSATeacherOutput:
    r"""Run CoSA's teacher on every scale (+ flip) and fuse the outputs (:class:`CoSATeacherInference`).

    One forward per scale on the ``2B`` batch (image + h-flip) under ``torch.no_grad()``. When a scaled
    size is not a multiple of the patch size, the input is passed through ``model.fit_input`` (resized
    to the nearest multiples); the fusion's bilinear upsampling to :math:`H \times W` then maps every
    output back to the image grid. The model's train/eval mode is left as it is (the official teacher
    stays in train mode, which makes no difference for a CoSA ViT without dropout / drop-path).

    .. math::
        (\hat M, \hat M_{aux}, \tilde S) = \mathrm{fuse}\big(\{\,\mathrm{model}([x_s; \mathrm{hflip}\,x_s])
        \,\}_{s \in \text{scales}}\big)

    Args:
        model: a :class:`~wsseg.models.CoSANet` (or any module whose output has ``cam``, ``cam_aux`` and
            ``seg`` fields), typically the EMA teacher.
        images: the weak view, ImageNet-normalised.
        labels: image labels.
        scales, aux_cam_all_scales, eps: see :class:`CoSATeacherInference`.

    Shape:
        - images: :math:`(B, 3, H, W)`; labels: :math:`(B, K)`.
        - output: :class:`CoSATeacherOutput`.

    Raises:
        TypeError: if ``model`` is not callable or its output lacks ``cam`` / ``cam_aux`` / ``seg``.
        ValueError: see :class:`CoSATeacherInference`.

    Example:
        >>> net = wsseg.create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=8)
        >>> out = cosa_teacher_inference(net, torch.rand(1, 3, 32, 32), torch.tensor([[1, 0, 1]]))
        >>> tuple(out.cam.shape), tuple(out.seg_logits.shape)
        ((1, 3, 32, 32), (1, 4, 32, 32))

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``).
    """
    if not callable(model):
        raise TypeError(f"model: expected a callable CoSA network, got {type(model).__name__}")
    fuse = CoSATeacherInference(scales, aux_cam_all_scales=aux_cam_all_scales, eps=eps)
    inputs = fuse.make_inputs(images)
    fit = getattr(model, "fit_input", None)
    cams, cams_aux, segs = [], [], []
    with torch.no_grad():
        for x in inputs:
            out = model(fit(x) if fit is not None else x)
            if not all(hasattr(out, a) for a in ("cam", "cam_aux", "seg")):
                raise TypeError(f"model: expected an output with fields cam, cam_aux and seg (CoSAOutput), "
                                f"got {type(out).__name__}")
            cams.append(out.cam)
            cams_aux.append(out.cam_aux)
            segs.append(out.seg)
    return fuse(cams, cams_aux, segs, images, labels)


def cosa_teacher_cam(model: nn.Module, images: Tensor, labels: Tensor, *, scales: Sequence[float] = (1.0, 0.5, 1.5),
                     eps: float = 1e-5) -> Tensor:
    r"""Only the main CAM :math:`\hat M` of :func:`cosa_teacher_inference`, from CAM-only network passes.

    The same scales, flips, inputs and fusion as :func:`cosa_teacher_inference`, but each pass calls
    ``model.cam`` (:meth:`wsseg.models.CoSANet.cam`: encoder + classifier, no decoder, no aux CAM), so the
    segmentation head and the upsampling of its logits, which a caller reading only :math:`\hat M` discards,
    are not computed. The result equals ``cosa_teacher_inference(model, images, labels, ...).cam`` (same
    operations on the same inputs). Used by the evaluation (CAM mIoU, pseudo label) of
    :class:`~wsseg.training.CoSAMethod`.

    .. math::
        \hat M = \mathrm{minmax}\Big(\sum_s \mathrm{ReLU}\big(\max(\mathrm{up}(M(x_s)),\
        \mathrm{hflip}(\mathrm{up}(M(x_s^{f}))))\big)\Big) \odot y

    Args:
        model: a network with ``cam(x) -> (N, K, h, w)`` raw CAMs (:class:`~wsseg.models.CoSANet`).
        images: the weak view, ImageNet-normalised.
        labels: image labels (all ones to keep every class).
        scales, eps: see :class:`CoSATeacherInference`.

    Shape:
        - images: :math:`(B, 3, H, W)`; labels: :math:`(B, K)`.
        - output: :math:`(B, K, H, W)`, float32, in [0, 1), detached.

    Raises:
        TypeError: if ``model`` has no ``cam`` method.
        ValueError: see :class:`CoSATeacherInference`.

    Example:
        >>> net = wsseg.create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=8).eval()
        >>> x, y = torch.rand(1, 3, 32, 32), torch.tensor([[1, 0, 1]])
        >>> torch.equal(cosa_teacher_cam(net, x, y), cosa_teacher_inference(net, x, y).cam)
        True

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``multi_scale_camseg``),
        the CAM part.
    """
    cam_fn = getattr(model, "cam", None)
    if not callable(cam_fn):
        raise TypeError(f"model: expected a network with a cam(x) method (CoSANet), got {type(model).__name__}")
    fuse = CoSATeacherInference(scales, eps=eps)
    check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)")
    fit = getattr(model, "fit_input", None)
    with torch.no_grad():
        cams = [cam_fn(fit(x) if fit is not None else x) for x in fuse.make_inputs(images)]
    return fuse.fuse_cam(cams, images, labels)
