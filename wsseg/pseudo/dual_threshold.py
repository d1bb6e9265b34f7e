"""Refined dual-threshold pseudo-label builder (``common.md`` §2.2, ``tscd.md`` §5, ``cosa.md`` §3.2)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import (
    check_labels,
    check_same_spatial,
    check_shape,
    check_tensor,
    check_unit_range,
)

__all__ = ["DEFAULT_CHUNK_PIXELS", "DualThresholdPseudoLabel", "dual_threshold_pseudo_label",
           "varm_pseudo_label"]

#: Internal-resolution pixels per refiner call of the pseudo-label builders (images are grouped into chunks
#: of at most ``max(1, DEFAULT_CHUNK_PIXELS // (h w))``; see ``docs/benchmarks.rst``).
DEFAULT_CHUNK_PIXELS = 16384

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type in _AUTOCAST_DEVICES:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _check_chunk(chunk_pixels: int | None) -> None:
    if chunk_pixels is not None and (isinstance(chunk_pixels, bool) or not isinstance(chunk_pixels, int)
                                     or chunk_pixels < 0):
        raise ValueError(f"chunk_pixels: expected a non-negative int or None, got {chunk_pixels!r}")


def _check_params(high: float, low: float, down_scale: int) -> None:
    if low > high:
        raise ValueError(f"low: expected low <= high, got low={low}, high={high}")
    if isinstance(down_scale, bool) or not isinstance(down_scale, int) or down_scale < 1:
        raise ValueError(f"down_scale: expected a positive int, got {down_scale!r}")


_NORMALISED = ("a normalised CAM: ReLU, upsample to the image size, then divide each class by its maximum, "
               "e.g. cam / cam.amax(dim=(2, 3), keepdim=True).clamp_min(1e-5)")


def _check_cam_channels(cam: Tensor, labels: object) -> None:
    """Blame a CAM/labels class-count mismatch on the right argument (a background channel in the CAM)."""
    if isinstance(labels, Tensor) and labels.dim() == 2 and labels.shape[1] != cam.shape[1]:
        K, Kl = cam.shape[1], labels.shape[1]
        hint = (" It looks like the CAM includes a background channel: pass only the K foreground channels "
                "(e.g. cam[:, 1:]); the background is the threshold, added inside."
                if K == Kl + 1 else "")
        raise ValueError(f"cam: has {K} channels but labels has {Kl} classes; expected cam (B, K, H, W) with the "
                         f"same K foreground classes as labels (B, K).{hint}")


def dual_threshold_pseudo_label(cam: Tensor, labels: Tensor, image: Tensor | None = None,
                                valid: Tensor | None = None, *, high: float = 0.55, low: float = 0.35,
                                down_scale: int = 2, refiner: nn.Module | None = None,
                                ignore_index: int = 255,
                                chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS) -> Tensor:
    r"""Build a pseudo label from a normalised CAM with a high and a low background score.

    For each threshold :math:`\tau \in \{\tau_{hi}, \tau_{lo}\}` a constant background channel is
    prepended, :math:`Z_\tau = [\tau\mathbb 1, \hat M]`, the maps (and the image) are downsampled by
    ``down_scale`` (bilinear, ``align_corners=False``), the channels of classes absent from the image
    are dropped, a softmax over the kept channels gives a soft distribution, the optional ``refiner``
    propagates it along image structure, the result is upsampled to :math:`H \times W` (bilinear,
    ``align_corners=False``) and the argmax gives :math:`Y_\tau` (``ignore`` outside ``valid``). Merge:

    .. math::
        Y = \begin{cases} Y_{hi} & Y_{hi} \ne 0 \\ 0 & Y_{hi} = 0 \wedge Y_{lo} = 0 \\
            \text{ignore} & \text{otherwise} \end{cases}

    so a pixel is a foreground class if that class beats the high background score, background only if
    background wins even against the low score, ignored otherwise. Without a refiner this is, up to
    interpolation: class :math:`\arg\max_k \hat M_k` where :math:`\max_k \hat M_k > \tau_{hi}`,
    background where :math:`\max_k \hat M_k < \tau_{lo}`.

    Implementation: the present channels of every image are gathered into a dense block of width
    :math:`K'_{max} = 1 + \max_b \sum_k y_{bk}` (padding channels get probability 0 through a
    :math:`-\infty` logit) and both thresholds are stacked along the channel axis, so every image needs
    **one** refiner call for both thresholds (the official loop builds the refiner's image kernel twice
    per image). Everything after the channel selection (gather, downsampling, softmax, refiner,
    upsampling, argmax, merge) runs on chunks of images of at most ``chunk_pixels`` internal pixels (at
    least one image): one chunk for small inputs, one image per chunk at realistic crops, where a
    whole-batch refiner call is slower (its kernel and neighbour buffers leave the CPU caches) and needs
    more memory than the official loop (``docs/benchmarks.rst``). This equals the official per-image loop
    because the refiners act on every channel independently with the same image kernel and a zero
    channel stays zero; padding channels are masked again before the argmax (VARM can produce slightly
    negative scores).

    Without a refiner (CoSA) a dedicated branch is used: the softmax and the upsampling run on groups of
    images with the same number of kept channels (a loop over the distinct counts, not over images), so
    every resize has the official channel count and therefore PyTorch's official CPU kernel and rounding
    (the CPU bilinear kernel is chosen by channel count and output size); the channel argmax — a strided
    reduction over a few channels, the dominant cost of the official loop on CPU — is replaced by a
    running comparison with the same first-index tie rule, and only "background wins" is tested at the low
    threshold. The output is bit-identical to the official loop on CPU, also on tie-prone (quantised)
    CAMs, and about 8x (:math:`K = 20`) / 16x (:math:`K = 80`) faster than it on one CPU thread at
    :math:`B = 4`, 448² (``benchmarks/bench_cosa_losses.py``). (The refiner path above equals the loop on
    continuous inputs, but its whole-batch resizes can round differently from the per-image ones, which can
    flip exact ties.) Runs under ``torch.no_grad()`` in float32 with autocast disabled.

    Input range: the CAM must be normalised to [0, 1] (ReLU, then each class divided by its maximum), because it
    competes with the constant background scores :math:`\tau`; an unnormalised CAM (raw logits, values in the
    tens) would silently give (almost) no background, a CAM of tiny values all background. It is therefore
    checked: values outside :math:`[-0.01, 1.01]` or NaN raise a ValueError (one ``aminmax``, one device
    synchronisation).

    Args:
        cam: normalised CAM :math:`\hat M` in [0, 1], the :math:`K` **foreground** channels only (no
            background channel: the background score is the threshold).
        labels: image-level labels, every entry 0 or 1 (no background entry).
        image: image in [0, 1] (de-normalised RGB), required when ``refiner`` is given; ignored otherwise.
        valid: real-image region of a padded crop; ``None`` means everything is valid.
        high: high background score :math:`\tau_{hi}`.
        low: low background score :math:`\tau_{lo}` (``low <= high``).
        down_scale: internal downsampling factor; internal size :math:`(\lfloor H/d \rfloor,
            \lfloor W/d \rfloor)`.
        refiner: parameter-free refiner ``refiner(image (B,3,h,w), probs (B,C',h',w')) -> (B,C',h,w)``
            (:class:`~wsseg.layers.PixelAdaptiveRefine`, :class:`~wsseg.layers.VariationAwareRefine`,
            :class:`~wsseg.layers.PAMR`) or ``None``.
        ignore_index: label value of ignored pixels.
        chunk_pixels: internal pixels :math:`n\,h\,w` per refiner call (images per call
            :math:`n = \max(1, \lfloor \text{chunk\_pixels} / (h w) \rfloor)`); ``None`` or 0: the
            whole batch in one call. The result does not depend on it.

    Shape:
        - cam: :math:`(B, K, H, W)`.
        - labels: :math:`(B, K)`.
        - image: :math:`(B, 3, H, W)`.
        - valid: :math:`(B, H, W)`, bool.
        - output: :math:`(B, H, W)`, int64 in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`.

    Raises:
        TypeError: on a wrong dtype (``cam``/``image`` float, ``valid`` bool).
        ValueError: on wrong shapes; a ``cam`` whose channel count differs from the labels' :math:`K` (with
            a hint when it has :math:`K+1` channels, i.e. includes a background channel); a ``cam`` with NaN
            or values outside [0, 1] (tolerance 0.01); labels that are not 0/1; ``low > high``, a
            non-positive ``down_scale`` or one too large for the input, a negative ``chunk_pixels``, or a
            ``refiner`` without ``image``.

    Example:
        >>> cam = torch.tensor([[[[0.9, 0.9], [0.45, 0.1]], [[0.2, 0.2], [0.3, 0.8]]]])
        >>> labels = torch.tensor([[1.0, 0.0]])  # class 2 is absent: its 0.8 is ignored
        >>> dual_threshold_pseudo_label(cam, labels, down_scale=1)[0].tolist()
        [[1, 1], [255, 0]]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py
        (``refine_cams_with_bkg_v2``, ``_refine_cams``); TSCD, Xu et al. AAAI 2023 (VARM refiner);
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``cam2mask``, no refiner).
    """
    check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
    B, K, H, W = cam.shape
    _check_cam_channels(cam, labels)
    check_labels(labels, "labels", B, K)
    _check_params(high, low, down_scale)
    check_unit_range(cam, "cam", _NORMALISED)
    _check_chunk(chunk_pixels)
    h, w = H // down_scale, W // down_scale
    if h < 1 or w < 1:
        raise ValueError(f"down_scale: {down_scale} is too large for the input size {(H, W)}")
    if refiner is not None:
        if image is None:
            raise ValueError("image: required (B, 3, H, W) image in [0, 1] when a refiner is given, got None")
        check_tensor(image, "image", ndim=4, dims="(B, 3, H, W)", dtype="float")
        check_shape(image, "image", (B, 3, None, None), "(B, 3, H, W)")
        check_same_spatial(cam, "cam", image, "image")
    if valid is not None:
        check_tensor(valid, "valid", ndim=3, dims="(B, H, W)", dtype="bool")
        check_shape(valid, "valid", (B, H, W), "(B, H, W)")

    with torch.no_grad(), _no_autocast(cam.device):
        cam = cam.detach().float()
        # channel selection, vectorised: kept channels (background + present classes) first, in
        # ascending class order (stable sort), padded to the largest count in the batch.
        keep = torch.cat([torch.ones_like(labels[:, :1], dtype=torch.bool), labels.detach() > 0], dim=1)
        n_keep = int(keep.sum(dim=1).max())
        order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :n_keep]  # (B, K')
        step = max(1, int(chunk_pixels) // (h * w)) if chunk_pixels else B
        out = torch.empty(B, H, W, dtype=torch.long, device=cam.device)
        if refiner is None:
            _no_refiner(cam, keep, order, out, step, (h, w), (high, low), ignore_index)
            if valid is not None:
                out[~valid] = ignore_index
            return out
        kept = keep.gather(1, order)                                                          # (B, K')
        fg_idx = (order[:, 1:] - 1).clamp(min=0)                                              # channel 0 = bkg
        pad = ~kept[:, None, :, None, None]                                                   # (B, 1, K', 1, 1)
        # the two constant background planes, resized once (bilinear acts on every channel independently,
        # so this equals resizing [tau 1, M] per image)
        bkg = cam.new_tensor([high, low])[None, :, None, None].expand(1, 2, H, W)
        z_bg = F.interpolate(bkg, size=(h, w), mode="bilinear", align_corners=False)[:, :, None]  # (1,2,1,h,w)
        # everything else runs on chunks of images: the refiner's working set (its kernel and neighbour
        # buffers, O(48 h w) per image) and the full-resolution maps stay cache- and memory-friendly;
        # every image still gets one refiner call for both thresholds.
        for start in range(0, B, step):
            sl = slice(start, start + step)
            b = min(step, B - start)
            # (b, 2, K', h, w): [tau_hi | present classes], [tau_lo | present classes]
            z = torch.empty(b, 2, n_keep, h, w, dtype=cam.dtype, device=cam.device)
            z[:, :, :1] = z_bg
            if n_keep > 1:
                cam_k = cam[sl].gather(1, fg_idx[sl, :, None, None].expand(-1, -1, H, W))  # (b, K'-1, H, W)
                z[:, :, 1:] = F.interpolate(cam_k, size=(h, w), mode="bilinear", align_corners=False)[:, None]
                del cam_k
            probs = z.masked_fill_(pad[sl], float("-inf")).softmax(dim=2).view(b, 2 * n_keep, h, w)
            del z
            if refiner is not None:
                img = F.interpolate(image[sl].detach().float(), size=(h, w), mode="bilinear",
                                    align_corners=False)
                probs = refiner(img, probs)
                del img
            p = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)
            del probs
            p = p.view(b, 2, n_keep, H, W).masked_fill_(pad[sl], float("-inf"))
            arg = p.argmax(dim=2)                                                       # (b, 2, H, W)
            del p
            # kept channel 0 is the background: Y_hi if it is a class, else 0 where Y_lo is background too
            y_hi = order[sl].gather(1, arg[:, 0].flatten(1)).view(b, H, W)
            bg_hi, bg_lo = arg[:, 0] == 0, arg[:, 1] == 0
            out[sl] = y_hi.masked_fill_(bg_hi, ignore_index).masked_fill_(bg_hi & bg_lo, 0)
        if valid is not None:
            out[~valid] = ignore_index
    return out


def _cpu_channels_last_kernel(x: Tensor, channels: int, out_size: tuple[int, int]) -> bool:
    """Whether PyTorch's CPU bilinear kernel takes its channels-last branch for a contiguous NCHW input.

    ``aten/src/ATen/native/cpu/UpSampleKernel.cpp`` (``upsample_bilinear2d_kernel_impl_float``): the
    channels-last kernel is used when ``H_out + W_out <= 128``, or with one thread and exactly 3 channels;
    otherwise the generic kernel. The generic kernel computes every output element with the same arithmetic
    whatever the tensor shape; the channels-last kernel's rounding depends on the channel count (vector lanes
    vs scalar tail). Other devices use one per-element kernel.
    """
    if x.device.type != "cpu":
        return False
    return sum(out_size) <= 128 or (torch.get_num_threads() == 1 and channels == 3)


def _no_refiner(cam: Tensor, keep: Tensor, order: Tensor, out: Tensor, step: int, small: tuple[int, int],
                thresholds: tuple[float, float], ignore_index: int) -> None:
    r"""No-refiner branch of :func:`dual_threshold_pseudo_label`, written into ``out``; bit-identical to the loop.

    * Scores: the same floating-point values as the official per-image loop. Downsampling runs on the present
      channels only when PyTorch's generic (shape-independent) kernel serves the official
      :math:`(B, K+1)` call (a 3-channel gather is padded to 4 to stay on that kernel); otherwise (small
      outputs, :math:`K+1 = 3` with one thread) the official :math:`[\tau, \hat M]` tensors are resized
      as they are. Softmax and upsampling run on groups of images with the same number :math:`K'_b` of kept
      channels (a loop over the distinct counts, at most :math:`K+1`, not over images), so every call has the
      official channel count and hence the official kernel and rounding.
    * Argmax: the channel argmax (a strided reduction over a few channels that dominates the official loop's
      run time on CPU) is replaced by a running comparison over the kept channels with PyTorch's first-index
      tie rule (a channel replaces the best only if strictly larger); at the low threshold only
      "background wins", :math:`p_0 \ge \max_{k \ge 1} p_k`, is needed.
    """
    B, _, H, W = cam.shape
    h, w = small
    counts = keep.sum(dim=1)                                          # K'_b = 1 + number of present classes
    n_max = int(counts.max())
    if n_max == 1:                                  # no foreground class anywhere: background (inside valid)
        out.zero_()
        return
    fg_idx = (order[:, 1:n_max] - 1).clamp(min=0)                     # (B, K'-1) present classes, ascending
    if not _cpu_channels_last_kernel(cam, cam.shape[1] + 1, small):
        # generic kernel for the official (B, K+1) call: resize the present channels and the two constant planes
        n_fg = fg_idx.shape[1]
        gather_idx = fg_idx if not _cpu_channels_last_kernel(cam, n_fg, small) else \
            torch.cat([fg_idx, fg_idx[:, :1]], dim=1)
        fg_small = F.interpolate(cam.gather(1, gather_idx[:, :, None, None].expand(-1, -1, H, W)), size=small,
                                 mode="bilinear", align_corners=False)[:, :n_fg]
        planes = cam.new_tensor(thresholds)[None, :, None, None].expand(1, 2, H, W).contiguous()
        bg_small = F.interpolate(planes, size=small, mode="bilinear", align_corners=False)  # (1, 2, h, w)

        def scores(idx: Tensor, n: int) -> Tensor:                   # (m, 2, n, h, w)
            z = torch.empty(idx.numel(), 2, n, h, w, dtype=cam.dtype, device=cam.device)
            z[:, :, 0] = bg_small
            z[:, :, 1:] = fg_small[idx, None, :n - 1]
            return z
    else:
        # official tensors [tau 1, M] resized whole (small inputs only: same kernel, same lanes)
        full = [F.interpolate(torch.cat([torch.full_like(cam[:, :1], t), cam], dim=1), size=small,
                              mode="bilinear", align_corners=False) for t in thresholds]

        def scores(idx: Tensor, n: int) -> Tensor:                   # (m, 2, n, h, w)
            sel = order[idx, :n, None, None].expand(-1, -1, h, w)
            return torch.stack([z[idx].gather(1, sel) for z in full], dim=1)

    for n in torch.unique(counts).tolist():
        members = torch.nonzero(counts == n)[:, 0]
        if n == 1:
            out[members] = 0
            continue
        for start in range(0, members.numel(), step):
            idx = members[start:start + step]
            m = idx.numel()
            probs = scores(idx, n).softmax(dim=2).view(2 * m, n, h, w)
            p = F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False).view(m, 2, n, H, W)
            del probs
            # high threshold: first argmax over the kept channels (position in the kept list)
            best = p[:, 0, 0].clone()
            arg = torch.zeros(m, H, W, dtype=torch.uint8 if n <= 256 else torch.long, device=cam.device)
            for c in range(1, n):
                pc = p[:, 0, c]
                arg.masked_fill_(pc > best, c)
                torch.maximum(best, pc, out=best)
            # low threshold: the background wins iff p_0 >= every other kept score (index 0 wins ties)
            fg_lo = p[:, 1, 1].clone()
            for c in range(2, n):
                torch.maximum(fg_lo, p[:, 1, c], out=fg_lo)
            bg_lo = p[:, 1, 0] >= fg_lo
            del p, best, fg_lo
            # class where the high threshold picks one, 0 where it picks the background (order[:, 0] = 0);
            # background at the high threshold -> ignore, unless background at the low threshold too
            y = order[idx].gather(1, arg.flatten(1).long()).view(m, H, W)
            out[idx] = y.masked_fill_((arg == 0) & ~bg_lo, ignore_index)


class DualThresholdPseudoLabel(nn.Module):
    r"""Dual-threshold pseudo-label builder with an optional refiner (module form).

    Module form of :func:`dual_threshold_pseudo_label`; the refiner is a parameter-free component
    treated as a hyperparameter.

    .. math::
        Y_\tau &= \arg\max\ \mathrm{up}\big(R(\mathrm{softmax}_{\{0\}\cup\{k: y_k=1\}}
                 (\mathrm{down}[\tau\mathbb 1, \hat M]))\big), \\
        Y &= \begin{cases} Y_{hi} & Y_{hi} \ne 0 \\ 0 & Y_{hi} = Y_{lo} = 0 \\
            \text{ignore} & \text{otherwise} \end{cases}

    Presets (``common.md`` §2.2):

    =========================  ============  ============================  ===================  =============
    preset                     ``high``      ``low``                       ``refiner``          source
    =========================  ============  ============================  ===================  =============
    AFA                        0.55          0.35                          PAR                  code
    TSCD                       0.55          0.35                          VARM                 code
    CoSA VOC main CAM          0.7           **0.2** (code default 0.25)   none                 code, log
    CoSA VOC/COCO aux CAM      0.7           0.25                          none                 code
    CoSA COCO main CAM         0.65          0.25                          none                 code
    =========================  ============  ============================  ===================  =============

    All presets use ``down_scale=2``. CoSA applies it to the label-validated CAM
    (:class:`~wsseg.layers.MultiScaleCAM` with ``mask_by_labels=True``), which gives the same labels
    because absent channels are dropped here anyway.

    Args:
        high: high background score :math:`\tau_{hi}`.
        low: low background score :math:`\tau_{lo}`.
        down_scale: internal downsampling factor.
        refiner: parameter-free refiner module or ``None``.
        ignore_index: label value of ignored pixels.
        chunk_pixels: internal pixels per refiner call (see :func:`dual_threshold_pseudo_label`).

    Shape:
        - cam: :math:`(B, K, H, W)` in [0, 1]; labels: :math:`(B, K)`;
          image: :math:`(B, 3, H, W)` in [0, 1] (needed with a refiner); valid: :math:`(B, H, W)` bool.
        - output: :math:`(B, H, W)`, int64 in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`.

    Raises:
        ValueError: if ``low > high``, ``down_scale`` is not a positive int or ``chunk_pixels`` is negative
            (and see the function).

    Example:
        >>> builder = DualThresholdPseudoLabel(high=0.7, low=0.25)  # CoSA VOC aux preset
        >>> cam = torch.rand(2, 20, 16, 16)
        >>> labels = torch.zeros(2, 20); labels[:, 3] = 1
        >>> y = builder(cam, labels)
        >>> tuple(y.shape), sorted(set(y.unique().tolist()) - {0, 4, 255})
        ((2, 16, 16), [])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``refine_cams_with_bkg_v2``);
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023;
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, utils/seg_helper.py (``cam2mask``).
    """

    def __init__(self, high: float = 0.55, low: float = 0.35, down_scale: int = 2,
                 refiner: nn.Module | None = None, ignore_index: int = 255,
                 chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS) -> None:
        super().__init__()
        _check_params(high, low, down_scale)
        _check_chunk(chunk_pixels)
        if refiner is not None and not callable(refiner):
            raise TypeError(f"refiner: expected a callable module or None, got {type(refiner).__name__}")
        self.high = high
        self.low = low
        self.down_scale = down_scale
        self.refiner = refiner
        self.ignore_index = ignore_index
        self.chunk_pixels = chunk_pixels

    def forward(self, cam: Tensor, labels: Tensor, image: Tensor | None = None,
                valid: Tensor | None = None) -> Tensor:
        """Pseudo label ``(B, H, W)``; see :func:`dual_threshold_pseudo_label`."""
        return dual_threshold_pseudo_label(cam, labels, image, valid, high=self.high, low=self.low,
                                           down_scale=self.down_scale, refiner=self.refiner,
                                           ignore_index=self.ignore_index, chunk_pixels=self.chunk_pixels)

    def extra_repr(self) -> str:
        return (f"high={self.high}, low={self.low}, down_scale={self.down_scale}, "
                f"ignore_index={self.ignore_index}, chunk_pixels={self.chunk_pixels}")


def varm_pseudo_label(cam: Tensor, labels: Tensor, image: Tensor, valid: Tensor | None = None, *,
                      high: float = 0.55, low: float = 0.35, down_scale: int = 2, ignore_index: int = 255,
                      chunk_pixels: int | None = DEFAULT_CHUNK_PIXELS, **varm_kwargs: Any) -> Tensor:
    r"""TSCD's pseudo label: the dual-threshold builder with the variation-aware refiner (VARM).

    Equivalent to ``dual_threshold_pseudo_label(cam, labels, image, valid, high=0.55, low=0.35,
    down_scale=2, refiner=VariationAwareRefine(**varm_kwargs))``:

    .. math::
        Y_\tau = \arg\max\ \mathrm{up}\big(\mathrm{VARM}(I_{1/2},
                 \mathrm{softmax}_{\{0\}\cup\{k: y_k=1\}}(\mathrm{down}[\tau\mathbb 1, \hat M]))\big)

    merged as in :func:`dual_threshold_pseudo_label`.

    Args:
        cam: normalised CAM :math:`\hat M` in [0, 1].
        labels: image-level labels in {0, 1}.
        image: de-normalised image in [0, 1]; TSCD uses
            ``wsseg.utils.denormalize(x, mode="truncate_uint8")`` (VARM's variation term depends on the
            intensity scale).
        valid: real-image region of a padded crop.
        high, low, down_scale, ignore_index, chunk_pixels: as in :func:`dual_threshold_pseudo_label`.
        **varm_kwargs: forwarded to :class:`~wsseg.layers.VariationAwareRefine` (e.g. ``num_iter``).

    Shape:
        - cam: :math:`(B, K, H, W)`; labels: :math:`(B, K)`; image: :math:`(B, 3, H, W)`;
          valid: :math:`(B, H, W)`.
        - output: :math:`(B, H, W)`, int64.

    Raises:
        ValueError: as :func:`dual_threshold_pseudo_label` (``image`` is required).
        TypeError: as :func:`dual_threshold_pseudo_label`.

    Example:
        >>> cam, image = torch.rand(1, 20, 32, 32), torch.rand(1, 3, 32, 32)
        >>> labels = torch.zeros(1, 20); labels[0, 14] = 1
        >>> varm_pseudo_label(cam, labels, image, num_iter=2).shape
        torch.Size([1, 32, 32])

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning, SCD-AAAI2023
        (``refine_cams_with_bkg_v2`` with ``network/VARM.py``); AFA, Ru et al. CVPR 2022;
        github.com/rulixiang/afa, utils/camutils.py.
    """
    from wsseg.layers.variation_aware_refine import VariationAwareRefine

    if image is None:
        raise ValueError("image: required (B, 3, H, W) image in [0, 1] for the VARM builder, got None")
    return dual_threshold_pseudo_label(cam, labels, image, valid, high=high, low=low, down_scale=down_scale,
                                       refiner=VariationAwareRefine(**varm_kwargs), ignore_index=ignore_index,
                                       chunk_pixels=chunk_pixels)
