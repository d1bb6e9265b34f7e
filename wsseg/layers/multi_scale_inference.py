"""Multi-scale + horizontal-flip test-time fusion of segmentation logits (AFA/TSCD, CoSA, SLRNet presets)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["MultiScaleInference", "multi_scale_inference", "MULTI_SCALE_INFERENCE_PRESETS"]

_SCALE_FUSE = ("sum", "max", "mean")
_FLIP_FUSE = ("sum", "mean")
_OUTPUTS = ("logits", "probs")

#: Official test-time settings (``common.md`` §9.3). ``resize_to``: an ``int`` resizes the long side,
#: a pair resizes to exactly that size (aspect ratio ignored).
MULTI_SCALE_INFERENCE_PRESETS: dict[str, dict] = {
    "afa": dict(scales=(1.0, 0.5, 0.75), flip=True, scale_fuse="max", flip_fuse="mean", resize_to=512,
                output="logits"),
    "tscd": dict(scales=(1.0, 0.5, 0.75), flip=True, scale_fuse="max", flip_fuse="mean", resize_to=512,
                 output="logits"),
    "cosa": dict(scales=(1.0, 0.5, 1.5, 0.75, 1.25), flip=True, scale_fuse="sum", flip_fuse="sum",
                 resize_to=(448, 448), output="logits"),
    "slrnet": dict(scales=(1.0, 1.5, 2.0, 0.5, 0.75), flip=True, scale_fuse="mean", flip_fuse="mean",
                   resize_to=None, output="probs"),
    # ViT-PCM (main.py test): one pass at a square 960 x 960 resize (60 x 60 patches at ViT-B/16), no flip
    "vitpcm": dict(scales=(1.0,), flip=False, scale_fuse="mean", flip_fuse="mean", resize_to=(960, 960),
                   output="probs"),
}


def _check_options(scales, flip, scale_fuse, flip_fuse, resize_to, output) -> tuple[float, ...]:
    if isinstance(scales, (int, float)):
        scales = (scales,)
    scales = tuple(float(s) for s in scales)
    if len(scales) == 0 or any(s <= 0 for s in scales):
        raise ValueError(f"scales: expected a non-empty sequence of positive floats, got {scales}")
    if not isinstance(flip, bool):
        raise TypeError(f"flip: expected a bool, got {type(flip).__name__}")
    if scale_fuse not in _SCALE_FUSE:
        raise ValueError(f"scale_fuse: expected one of {_SCALE_FUSE}, got {scale_fuse!r}")
    if flip_fuse not in _FLIP_FUSE:
        raise ValueError(f"flip_fuse: expected one of {_FLIP_FUSE}, got {flip_fuse!r}")
    if output not in _OUTPUTS:
        raise ValueError(f"output: expected one of {_OUTPUTS}, got {output!r}")
    if resize_to is not None:
        ok = (isinstance(resize_to, int) and resize_to > 0) or (
            isinstance(resize_to, (tuple, list)) and len(resize_to) == 2
            and all(isinstance(v, int) and v > 0 for v in resize_to))
        if not ok:
            raise ValueError(f"resize_to: expected None, a positive int (long side) or a pair (h, w) of "
                             f"positive ints, got {resize_to!r}")
    return scales


def _resize_input(images: Tensor, resize_to) -> Tensor:
    if resize_to is None:
        return images
    h, w = images.shape[-2:]
    if isinstance(resize_to, int):  # long side (AFA: int(h * ratio), int(w * ratio))
        ratio = resize_to / max(h, w)
        size = (int(h * ratio), int(w * ratio))
    else:
        size = (int(resize_to[0]), int(resize_to[1]))
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


def _make_inputs(images: Tensor, scales: tuple[float, ...], flip: bool, resize_to) -> list[Tensor]:
    check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)", dtype="float")
    x = _resize_input(images, resize_to)
    inputs = []
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        inputs.append(torch.cat([xs, xs.flip(-1)], dim=0) if flip else xs)
    return inputs


def _fuse(outputs: Sequence[Tensor], images: Tensor, scales: tuple[float, ...], flip: bool, scale_fuse: str,
          flip_fuse: str, output: str) -> Tensor:
    check_tensor(images, "images", ndim=4, dims="(B, 3, H, W)")
    if not isinstance(outputs, (list, tuple)) or len(outputs) != len(scales):
        got = len(outputs) if isinstance(outputs, (list, tuple)) else type(outputs).__name__
        raise ValueError(f"outputs: expected a list of {len(scales)} tensors (one per scale), got {got}")
    b = images.shape[0]
    nb = 2 * b if flip else b
    ref_size = None
    fused = []
    for i, o in enumerate(outputs):
        check_tensor(o, f"outputs[{i}]", ndim=4, dims="(B', C, h, w)", dtype="float")
        if o.shape[0] != nb:
            raise ValueError(f"outputs[{i}]: expected batch {nb} ({'2B: image then flipped' if flip else 'B'}), "
                             f"got shape {tuple(o.shape)}")
        if o.shape[1] != outputs[0].shape[1]:
            raise ValueError(f"outputs[{i}]: expected {outputs[0].shape[1]} channels like outputs[0], "
                             f"got shape {tuple(o.shape)}")
        o = o.float()
        if output == "probs":
            o = o.softmax(dim=1)
        if ref_size is None:
            ref_size = o.shape[-2:]
        elif o.shape[-2:] != ref_size:
            o = F.interpolate(o, size=ref_size, mode="bilinear", align_corners=False)
        if flip:
            o = o[:b] + o[b:].flip(-1)
            if flip_fuse == "mean":
                o = o / 2
        fused.append(o)
    stacked = torch.stack(fused, dim=0)
    if scale_fuse == "sum":
        out = stacked.sum(dim=0)
    elif scale_fuse == "mean":
        out = stacked.mean(dim=0)
    else:
        out = stacked.amax(dim=0)
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return out


def multi_scale_inference(logit_fn: Callable[[Tensor], Tensor], images: Tensor, *,
                          scales: Sequence[float] = (1.0,), flip: bool = True, scale_fuse: str = "sum",
                          flip_fuse: str = "sum", resize_to: int | tuple[int, int] | None = None,
                          output: str = "logits") -> Tensor:
    r"""Fuse segmentation logits over input scales and horizontal flips (test-time augmentation).

    The images are optionally resized (``resize_to``), then for every scale :math:`s` rescaled
    bilinearly (``scale_factor=s``, ``align_corners=False``) and, with ``flip``, concatenated with their
    horizontal mirror along the batch. ``logit_fn`` is called once per scale. With ``output="probs"`` a
    softmax is applied to every pass first. Each pass is resized to the output size of the **first**
    scale, the mirrored half is flipped back and fused over flips, then all scales are fused and the
    result is resized bilinearly to the input ``(H, W)``:

    .. math::
        Z &= \operatorname*{fuse}_{s}\Big( \operatorname*{fuse}_{f\in\{\mathrm{id},\,\mathrm{flip}\}}
        f^{-1}\big(\mathrm{resize}(g(f(x_s)))\big) \Big), \\
        g &= \texttt{logit_fn}\ \text{or}\ \operatorname{softmax}\circ\texttt{logit_fn}.

    ``scale_fuse="max"`` is applied at the first scale's output resolution (AFA fuses at the scale-1
    logit resolution before upsampling to the label size); ``"sum"``/``"mean"`` commute with the final
    bilinear resize. Presets (``MULTI_SCALE_INFERENCE_PRESETS``, :meth:`MultiScaleInference.from_preset`):

    ========  ==================  =============================  ===========  ==========  ========
    preset    resize_to           scales                         flip_fuse    scale_fuse  output
    ========  ==================  =============================  ===========  ==========  ========
    afa/tscd  long side 512       1, 0.5, 0.75                   mean         max         logits
    cosa      (448, 448)          1, 0.5, 1.5, 0.75, 1.25        sum          sum         logits
    slrnet    none recorded       1, 1.5, 2, 0.5, 0.75           mean         mean        probs
    vitpcm    (960, 960)          1 (no flip)                    mean         mean        probs
    ========  ==================  =============================  ===========  ==========  ========

    Args:
        logit_fn: callable ``x (B', 3, h, w) -> logits (B', C, h', w')``; run it under ``torch.no_grad()``
            and in eval mode yourself.
        images: normalised float images.
        scales: input scale factors; the first one defines the fusion resolution.
        flip: also run the horizontally flipped images.
        scale_fuse: ``"sum"`` (CoSA), ``"max"`` (AFA/TSCD) or ``"mean"`` (SLRNet) over scales.
        flip_fuse: ``"sum"`` (CoSA) or ``"mean"`` (AFA/TSCD, SLRNet) over the two flips.
        resize_to: ``None``; an ``int``: resize the long side to it (AFA: 512, sizes truncated with
            ``int``); or ``(h, w)``: resize to exactly that size, aspect ratio ignored (CoSA: 448×448).
        output: ``"logits"`` fuses raw logits; ``"probs"`` fuses per-pass softmax probabilities (SLRNet).

    Returns:
        float32 tensor ``(B, C, H, W)`` at the size of ``images`` (not softmax-normalised for
        ``"logits"``; for ``"probs"`` sums over channels equal 1 only with both fusions ``"mean"``).

    Shape:
        - images: ``(B, 3, H, W)``.
        - logit_fn output: ``(2B, C, h_s, w_s)`` with ``flip`` else ``(B, C, h_s, w_s)``.
        - output: ``(B, C, H, W)``.

    Raises:
        TypeError: if ``images`` or an output of ``logit_fn`` is not a float tensor, or ``flip`` not bool.
        ValueError: on a bad option (message names it) or an output of the wrong batch/channel size.

    Example:
        >>> import torch
        >>> from wsseg.layers import multi_scale_inference
        >>> head = torch.nn.Conv2d(3, 4, 1)
        >>> x = torch.randn(2, 3, 16, 16)
        >>> with torch.no_grad():
        ...     z = multi_scale_inference(head, x, scales=(1.0, 0.5),
        ...                               scale_fuse="max", flip_fuse="mean")
        >>> z.shape
        torch.Size([2, 4, 16, 16])

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, ``scripts/test_msc_flip.py`` (flip mean, max
        over {1, 0.5, 0.75}, long side 512). CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA,
        ``utils/seg_helper.py`` (``multi_scale_camsegv3``), ``evaluation_engine.py`` (448×448, sum).
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``tools/infer_voc.py``.
    """
    if not callable(logit_fn):
        raise TypeError(f"logit_fn: expected a callable, got {type(logit_fn).__name__}")
    scales = _check_options(scales, flip, scale_fuse, flip_fuse, resize_to, output)
    inputs = _make_inputs(images, scales, flip, resize_to)
    outputs = [logit_fn(x) for x in inputs]
    return _fuse(outputs, images, scales, flip, scale_fuse, flip_fuse, output)


class MultiScaleInference(nn.Module):
    r"""Fusion half of :func:`multi_scale_inference` as a module (the model is called by the user).

    :meth:`make_inputs` builds one batch per scale (image then its mirror when ``flip``); run your
    model on each, then :meth:`forward` fuses the list of outputs exactly like
    :func:`multi_scale_inference` (which equals ``forward([f(x) for x in make_inputs(images)], images)``).

    Args:
        scales, flip, scale_fuse, flip_fuse, resize_to, output: see :func:`multi_scale_inference`.

    Shape:
        - make_inputs: ``(B, 3, H, W)`` → list of ``(2B, 3, h_s, w_s)`` (``(B, ...)`` without flip).
        - forward: list of ``(2B, C, h_s, w_s)`` and images ``(B, 3, H, W)`` → ``(B, C, H, W)``.

    Raises:
        ValueError, TypeError: on bad options or inputs (see :func:`multi_scale_inference`).

    Example:
        >>> import torch
        >>> from wsseg.layers import MultiScaleInference
        >>> msi = MultiScaleInference.from_preset("cosa")
        >>> x = torch.randn(1, 3, 20, 30)
        >>> head = torch.nn.Conv2d(3, 2, 1)
        >>> with torch.no_grad():
        ...     outs = [head(t) for t in msi.make_inputs(x)]
        ...     z = msi(outs, x)
        >>> [tuple(t.shape) for t in msi.make_inputs(x)][:2], tuple(z.shape)
        ([(2, 3, 448, 448), (2, 3, 224, 224)], (1, 2, 20, 30))

    Source:
        AFA ``scripts/test_msc_flip.py``; CoSA ``utils/seg_helper.py``; SLRNet ``tools/infer_voc.py``
        (see :func:`multi_scale_inference`).
    """

    def __init__(self, scales: Sequence[float] = (1.0,), flip: bool = True, scale_fuse: str = "sum",
                 flip_fuse: str = "sum", resize_to: int | tuple[int, int] | None = None,
                 output: str = "logits"):
        super().__init__()
        self.scales = _check_options(scales, flip, scale_fuse, flip_fuse, resize_to, output)
        self.flip = flip
        self.scale_fuse = scale_fuse
        self.flip_fuse = flip_fuse
        self.resize_to = tuple(resize_to) if isinstance(resize_to, list) else resize_to
        self.output = output

    @classmethod
    def from_preset(cls, name: str) -> MultiScaleInference:
        """Official settings: ``"afa"``, ``"tscd"``, ``"cosa"``, ``"slrnet"`` or ``"vitpcm"`` (table above).

        Raises:
            ValueError: if ``name`` is not a known preset.
        """
        if name not in MULTI_SCALE_INFERENCE_PRESETS:
            raise ValueError(f"name: expected one of {tuple(MULTI_SCALE_INFERENCE_PRESETS)}, got {name!r}")
        return cls(**MULTI_SCALE_INFERENCE_PRESETS[name])

    def make_inputs(self, images: Tensor) -> list[Tensor]:
        """One input batch per scale, ``(2B, 3, h_s, w_s)`` (images then mirrors) or ``(B, ...)``."""
        return _make_inputs(images, self.scales, self.flip, self.resize_to)

    def forward(self, outputs: list[Tensor], images: Tensor) -> Tensor:
        """Fuse the per-scale model outputs into ``(B, C, H, W)`` at the size of ``images``."""
        return _fuse(outputs, images, self.scales, self.flip, self.scale_fuse, self.flip_fuse, self.output)

    def extra_repr(self) -> str:
        return (f"scales={self.scales}, flip={self.flip}, scale_fuse={self.scale_fuse!r}, "
                f"flip_fuse={self.flip_fuse!r}, resize_to={self.resize_to}, output={self.output!r}")
