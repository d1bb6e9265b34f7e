"""EXPERIMENTAL: perplexity-based reliability weights for CAM pseudo labels (CoSA's RAW, assumed form)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.validation import check_shape, check_tensor

__all__ = ["PerplexityReliabilityWeight", "perplexity_reliability_weight"]


def _threshold(x: object, name: str, ref: Tensor) -> Tensor:
    if isinstance(x, Tensor):
        if x.dim() != 0:
            raise ValueError(f"{name}: expected a 0-d tensor or a float, got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name}: expected a floating-point 0-d tensor, got {x.dtype}")
        return x.detach().to(device=ref.device, dtype=ref.dtype)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        if not math.isfinite(x):
            raise ValueError(f"{name}: expected a finite value, got {x}")
        return torch.tensor(float(x), device=ref.device, dtype=ref.dtype)
    raise TypeError(f"{name}: expected a float or a 0-d tensor, got {type(x).__name__}")


def _check_hparams(temperature: float, beta: float) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0 \
            or not math.isfinite(temperature):
        raise ValueError(f"temperature: expected a positive finite float, got {temperature!r}")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0 or not math.isfinite(beta):
        raise ValueError(f"beta: expected a non-negative finite float, got {beta!r}")


def perplexity_reliability_weight(cam: Tensor, low: Tensor | float, high: Tensor | float,
                                  valid: Tensor | None = None, *, temperature: float, beta: float = 1.0,
                                  normalize: bool = False) -> Tensor:
    r"""Experimental: per-pixel reliability weights of a CAM pseudo label from a binary "perplexity".

    **Assumed formula — not the published method.** CoSA's paper (§3.2, "Reliability-based Adaptive
    Weighting", RAW) softens the CAM pseudo label (CPL) with weights derived from a "CAM perplexity" and the
    dynamic thresholds, but its exact definition is not available and **the released code has no RAW at
    all** (only an unused ``camweight_beta=1.0`` argument and an uncalled weighted loss), so **no official
    reference exists** and this module cannot be validated against one. This is the spec's placeholder
    (``cosa.md`` §5): the confidence of the pixel's decision relative to the midpoint of the two thresholds,
    turned into a perplexity.

    With :math:`m(p) = \max_c \hat M_c(p)` (the label-validated, min–max normalised teacher CAM),
    :math:`\tau = (\tau_{lo} + \tau_{hi})/2` and temperature :math:`t`:

    .. math::

        u(p) = \sigma\!\left(\frac{m(p) - \tau}{t}\right),\qquad
        H(p) = -u \log u - (1-u)\log(1-u),\qquad
        \mathrm{PP}(p) = e^{H(p)} \in [1, 2],

    .. math::

        w(p) = \mathrm{PP}(p)^{-\beta} = e^{-\beta H(p)} \in [2^{-\beta}, 1].

    With ``normalize=True`` the weights are divided by their mean over the valid pixels of the **whole
    batch** (the weighted segmentation loss sums over the batch), so that mean becomes 1 [assumed].
    Pixels outside ``valid`` get weight 0 (the CPL ignores them anyway). Because only the midpoint of the
    thresholds enters, swapping ``low`` and ``high`` changes nothing. The entropy is evaluated from the
    logit (no :math:`0 \log 0`), and the result is detached. Note: :math:`1/\mathrm{PP} \in [0.5, 1]`
    cannot reproduce the paper's figure axis (1/PP up to ≈ 9); this is a placeholder until the paper's
    definition is known.

    Args:
        cam: normalised, label-validated CAM :math:`\hat M` in [0, 1] (values are not checked).
        low, high: the current thresholds :math:`\tau_{lo}, \tau_{hi}` (floats or 0-d tensors, e.g. from a
            threshold search).
        valid: optional valid-pixel mask (the crop box); ``None`` = all pixels valid.
        temperature: :math:`t > 0` (required: no source gives a value).
        beta: exponent :math:`\beta \ge 0` (CoSA's unused ``camweight_beta`` = 1).
        normalize: rescale to mean 1 over the valid pixels of the batch.

    Returns:
        The detached weights, dtype of ``cam`` (at least float32).

    Shape:
        - cam: :math:`(B, K, H, W)`.
        - valid: :math:`(B, H, W)` bool.
        - output: :math:`(B, H, W)`, values in :math:`[2^{-\beta}, 1]` (before ``normalize``; 0 outside
          ``valid``).

    Raises:
        TypeError: if ``cam`` is not floating point, ``valid`` is not bool, or a threshold is neither a float
            nor a floating-point 0-d tensor.
        ValueError: if ``cam`` is not 4-D, ``valid`` has the wrong shape, a threshold tensor is not 0-d, or
            ``temperature``/``beta`` are out of range.

    Example:
        >>> cam = torch.tensor([0.45, 0.95, 0.0]).view(1, 1, 1, 3)       # at, far above, far below the midpoint
        >>> w = perplexity_reliability_weight(cam, 0.2, 0.7, temperature=0.02)
        >>> [round(v, 3) for v in w.flatten().tolist()]
        [0.5, 1.0, 1.0]

    Source:
        CoSA, Yang et al. ECCV 2024 (paper §3.2, RAW; not in the released code, github.com/youshyee/CoSA:
        ``args.py`` ``camweight_beta`` and ``utils/seg_helper.py`` ``seg_weightloss`` are unused hooks);
        formula assumed by ``cosa.md`` §5.
    """
    check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
    b, _, h, w = cam.shape
    if valid is not None:
        check_tensor(valid, "valid", ndim=3, dims="(B, H, W)", dtype="bool")
        check_shape(valid, "valid", (b, h, w), "(B, H, W)")
    _check_hparams(temperature, beta)
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")

    with torch.no_grad():
        x = cam.detach()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mid = 0.5 * (_threshold(low, "low", x) + _threshold(high, "high", x))
        z = (x.amax(dim=1) - mid) / temperature
        # Binary entropy of sigmoid(z), evaluated stably from the logit: BCE(z, sigmoid(z)).
        entropy = F.binary_cross_entropy_with_logits(z, torch.sigmoid(z), reduction="none")
        weight = torch.exp(-beta * entropy)
        if valid is not None:
            weight = weight * valid
        if normalize:
            count = weight.numel() if valid is None else valid.sum()
            mean = weight.sum() / torch.as_tensor(count, device=weight.device).clamp_min(1)
            weight = weight / torch.where(mean > 0, mean, torch.ones_like(mean))
    return weight


class PerplexityReliabilityWeight(nn.Module):
    r"""Experimental: module form of :func:`perplexity_reliability_weight` (CoSA's RAW, **assumed** formula).

    No official reference exists (the released CoSA code has no RAW); see the function for the assumption.

    .. math::

        w(p) = \exp\!\big(-\beta\, H_2\big(\sigma((\max_c \hat M_c(p) - \tfrac{\tau_{lo} + \tau_{hi}}{2})
        / t)\big)\big)

    with :math:`H_2` the binary entropy (natural log).

    Args:
        temperature: :math:`t > 0` (required, no source gives a value).
        beta: exponent :math:`\beta \ge 0` (default 1, CoSA's unused ``camweight_beta``).
        normalize: rescale to mean 1 over the valid pixels of the batch.

    Shape:
        - cam: :math:`(B, K, H, W)`; low, high: 0-d or floats; valid: :math:`(B, H, W)` bool or ``None``.
        - output: :math:`(B, H, W)`, detached.

    Raises:
        ValueError: if ``temperature`` or ``beta`` is out of range; see the function for the inputs.

    Example:
        >>> raw = PerplexityReliabilityWeight(temperature=0.1)
        >>> w = raw(torch.rand(2, 20, 8, 8), torch.tensor(0.2), torch.tensor(0.7))
        >>> w.shape, bool(((w >= 0.5) & (w <= 1.0)).all()), w.requires_grad
        (torch.Size([2, 8, 8]), True, False)

    Source:
        CoSA, Yang et al. ECCV 2024 (paper §3.2); not in github.com/youshyee/CoSA; ``cosa.md`` §5.
    """

    def __init__(self, temperature: float, beta: float = 1.0, normalize: bool = False) -> None:
        super().__init__()
        _check_hparams(temperature, beta)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.normalize = normalize

    def forward(self, cam: Tensor, low: Tensor | float, high: Tensor | float,
                valid: Tensor | None = None) -> Tensor:
        """Compute the weights; see :func:`perplexity_reliability_weight`."""
        return perplexity_reliability_weight(cam, low, high, valid, temperature=self.temperature,
                                             beta=self.beta, normalize=self.normalize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, beta={self.beta}, normalize={self.normalize}"
