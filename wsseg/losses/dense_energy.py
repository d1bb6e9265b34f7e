"""Dense CRF ("regularized") energy loss: permutohedral lattice or exact dense Gaussian (``common.md`` §7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.permutohedral import PermutohedralLattice
from ..utils.validation import check_reduction, check_same_spatial, check_shape, check_tensor, empty_loss

__all__ = ["DenseEnergyLoss", "dense_energy_loss"]

_GRADIENTS = ("official", "autograd")
_BACKENDS = ("permutohedral", "dense")


def _check_hparams(sigma_rgb: float, sigma_xy: float, scale_factor: float, gradient: str, backend: str,
                   chunk_size: int, reduction: str) -> None:
    for name, value in (("sigma_rgb", sigma_rgb), ("sigma_xy", sigma_xy), ("scale_factor", scale_factor)):
        if not value > 0:
            raise ValueError(f"{name}: expected a positive float, got {value!r}")
    if gradient not in _GRADIENTS:
        raise ValueError(f"gradient: expected one of {_GRADIENTS}, got {gradient!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    check_reduction(reduction)


def _lattice_features(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """Features (B, N, 5) float32 of ``bilateralfilter.cpp``: (x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb).

    Uncentred (the lattice is not translation invariant), float32 true divisions as in the reference.
    """
    b, _, h, w = image.shape
    f32 = torch.float32
    sxy = torch.tensor(sigma_xy, dtype=f32, device=image.device)
    srgb = torch.tensor(sigma_rgb, dtype=f32, device=image.device)
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=f32),
                            torch.arange(w, device=image.device, dtype=f32), indexing="ij")
    pos = torch.stack([xs / sxy, ys / sxy], dim=0).unsqueeze(0).expand(b, -1, -1, -1)
    feats = torch.cat([pos, image.to(f32) / srgb], dim=1).flatten(2)
    return feats.transpose(1, 2).contiguous()


def _bilateral_features(image: Tensor, sigma_rgb: float, sigma_xy: float) -> Tensor:
    """Features (B, N, 5) = (x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb), centred per image."""
    b, _, h, w = image.shape
    ys = torch.arange(h, device=image.device, dtype=image.dtype)
    xs = torch.arange(w, device=image.device, dtype=image.dtype)
    pos = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0) / sigma_xy  # (2, h, w): x then y
    feats = torch.cat([pos.unsqueeze(0).expand(b, -1, -1, -1), image / sigma_rgb], dim=1).flatten(2)
    feats = feats.transpose(1, 2)  # (B, N, 5)
    # Centring leaves distances unchanged and reduces cancellation in |f_p|^2 + |f_q|^2 - 2 f_p.f_q.
    return feats - feats.mean(dim=1, keepdim=True)


def _dense_filter(feats: Tensor, x: Tensor, chunk_size: int) -> Tensor:
    """[W x](p) = sum_q exp(-|f_p - f_q|^2 / 2) x(q), exact, chunked over query pixels p.

    feats (B, N, D), x (B, C, N) -> (B, C, N). Peak extra memory ~ B * chunk_size * N elements.
    """
    n = feats.shape[1]
    sq = feats.square().sum(dim=2)  # (B, N)
    feats_t = feats.transpose(1, 2)  # (B, D, N)
    x_t = x.transpose(1, 2)  # (B, N, C)
    out = torch.empty_like(x)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        # -1/2 |f_p - f_q|^2 for the chunk of queries p against every q: (B, n_chunk, N)
        kernel = torch.baddbmm(sq[:, start:stop, None], feats[:, start:stop], feats_t, alpha=-2.0)
        kernel.add_(sq[:, None, :]).clamp_(min=0.0).mul_(-0.5).exp_()
        out[:, :, start:stop] = torch.bmm(kernel, x_t).transpose(1, 2)
    return out


class _DenseFilter(torch.autograd.Function):
    """Linear map x -> W x; W is symmetric, so the backward is W applied to the incoming gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, feats: Tensor, chunk_size: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(feats)
        ctx.chunk_size = chunk_size
        return _dense_filter(feats, x, chunk_size)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (feats,) = ctx.saved_tensors
        return _dense_filter(feats, grad_out.contiguous(), ctx.chunk_size), None, None


class _OfficialEnergy(torch.autograd.Function):
    """Per-image energies -w * sum S' * g * W S' with the official (rloss) backward rule.

    ``filter_fn`` maps (B, C, N) -> (B, C, N) (the dense Gaussian or the lattice filter).
    backward: dL/dS = -2 * w * grad_b * (g * W S') * valid, the gate g being treated as a constant.
    """

    @staticmethod
    def forward(ctx, probs: Tensor, valid: Tensor, gate: Tensor, filter_fn, weight: float) -> Tensor:  # type: ignore[override]
        s = probs * valid  # S' = S * valid, (B, C, N)
        gated = gate * filter_fn(s)  # g * W S'
        ctx.save_for_backward(gated, valid)
        ctx.weight = weight
        return -weight * (s * gated).sum(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        gated, valid = ctx.saved_tensors
        grad = -2.0 * ctx.weight * grad_out[:, None, None] * gated * valid
        return grad, None, None, None, None


def dense_energy_loss(
    probs: Tensor,
    image: Tensor,
    valid: Tensor,
    pseudo_label: Tensor,
    *,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 0.5,
    weight: float = 1e-7,
    gradient: str = "official",
    backend: str = "permutohedral",
    chunk_size: int = 4096,
    ignore_index: int = 255,
    reduction: str = "mean",
) -> Tensor:
    r"""Gated dense-CRF energy of the segmentation probabilities (Tang et al.'s rloss, as used by AFA/TSCD).

    Everything is first downscaled by ``scale_factor`` (image nearest, probabilities bilinear with
    ``align_corners=False``, valid nearest, pseudo label nearest, sizes :math:`\lfloor s H\rfloor \times
    \lfloor s W\rfloor`). With :math:`S' = S \odot \mathrm{valid}`, the gate
    :math:`g(p) = \max(0, \mathrm{valid}(p) - \max_c S_c(p))`, set to 1 wherever the pseudo label is
    ``ignore_index``, and a bilateral filter :math:`W` over position and colour (nominally the Gaussian)

    .. math::

        W(p,q) \approx \exp\Big(-\frac{\lVert \mathbf{x}_p-\mathbf{x}_q\rVert^2}{2\sigma_{xy}'^2}
                          -\frac{\lVert \mathbf{I}_p-\mathbf{I}_q\rVert^2}{2\sigma_{rgb}^2}\Big),
        \qquad \sigma_{xy}' = s\,\sigma_{xy}

    (self-term included, pixel coordinates of the downscaled grid, RGB in 0-255), the loss is

    .. math::

        L = -\frac{w}{B}\sum_b\sum_c\sum_p S'_c(p)\,g(p)\,[W S'_c](p),
        \qquad [W S'_c](p) = \sum_q W(p,q)\,S'_c(q).

    It is negative. Two backends compute :math:`W S'`:

    * ``"permutohedral"`` (default, faithful): the permutohedral lattice of the official ``bilateralfilter``
      extension, reimplemented in PyTorch (:class:`wsseg.layers.PermutohedralLattice`, features
      ``(x/σ', y/σ', r/σ_rgb, g/σ_rgb, b/σ_rgb)`` as in ``bilateralfilter.cpp``). It is **not** the exact
      Gaussian: it is unnormalised and its response is flatter and smaller (on natural-image-like inputs the
      exact Gaussian gives about 1.8× the loss). :math:`O(B N C)` time and memory linear in :math:`N`.
    * ``"dense"``: the exact Gaussian above, chunked over the query pixels: :math:`O(B N^2 C)` time for
      :math:`N` downscaled pixels and about ``B * chunk_size * N`` floats of extra memory.

    **Official gradient quirk** (``gradient="official"``, default): the official layer's backward is
    :math:`\partial L/\partial S = -2\,(w/B)\,(g \odot W S') \odot \mathrm{valid}`, with the gate treated
    as a constant. This is not the exact gradient, which is
    :math:`-(w/B)\,[g \odot W S' + W^\top(g \odot S')]\odot\mathrm{valid}` plus the gate's dependence on
    :math:`S` (the lattice filter is not exactly symmetric, the dense Gaussian is); ``gradient="autograd"``
    gives that exact gradient. In both cases the gradient then flows
    through the bilinear downscaling to ``probs``; nothing flows to ``image``, ``valid`` or ``pseudo_label``.

    Args:
        probs: segmentation probabilities (softmax of the upsampled logits), channel 0 = background.
        image: the image, de-normalised to 0-255 RGB (not checked).
        valid: real-image region of the crop (bool, or integer 0/1).
        pseudo_label: (pseudo) label map; only ``ignore_index`` matters (gate = 1 there).
        sigma_rgb: colour bandwidth (0-255 units).
        sigma_xy: spatial bandwidth in **full-resolution** pixels; multiplied by ``scale_factor``.
        scale_factor: downscaling factor s (official 0.5); 1.0 disables the resizing.
        weight: w, the layer's internal weight (official 1e-7; the total-loss weight comes on top).
        gradient: ``"official"`` (custom backward above) or ``"autograd"`` (exact gradient).
        backend: ``"permutohedral"`` (the official lattice filter, pure PyTorch) or ``"dense"`` (exact
            Gaussian, quadratic cost).
        chunk_size: ``"dense"`` only: query pixels per chunk (memory/speed trade-off; no effect on the value).
        ignore_index: label value marking unlabelled pixels.
        reduction: ``"mean"`` = the official value (mean over the batch of the per-image energies),
            ``"sum"`` = their sum, ``"none"`` = the per-image energies :math:`(B,)`.

    Returns:
        Scalar (``"mean"``/``"sum"``) or :math:`(B,)` tensor, **weighted inside** by ``weight`` (rloss's
        internal weight, official 1e-7; the methods multiply by their ``w_reg`` on top). An empty batch
        gives 0 with a graph (an empty :math:`(0,)` tensor for ``"none"``).

    Shape:
        - probs: :math:`(B, C, H, W)`, C = K+1.
        - image: :math:`(B, 3, H, W)`.
        - valid: :math:`(B, H, W)`.
        - pseudo_label: :math:`(B, H, W)` integer.
        - output: scalar, or :math:`(B,)` for ``reduction="none"``.

    Raises:
        TypeError: on wrong dtypes (``probs``/``image`` floating point, ``valid`` bool/integer,
            ``pseudo_label`` integer).
        ValueError: on wrong ranks or shapes, invalid sigmas/``scale_factor``/``chunk_size``, an unknown
            ``gradient``, ``backend`` or ``reduction``.

    Example:
        >>> import torch
        >>> from wsseg.losses import dense_energy_loss
        >>> logits = torch.randn(2, 21, 16, 16, requires_grad=True)
        >>> image = torch.rand(2, 3, 16, 16) * 255
        >>> valid = torch.ones(2, 16, 16, dtype=torch.bool)
        >>> label = torch.randint(0, 21, (2, 16, 16))
        >>> loss = dense_energy_loss(logits.softmax(1), image, valid, label)
        >>> bool(loss < 0)
        True
        >>> loss.backward()
        >>> exact = dense_energy_loss(logits.softmax(1), image, valid, label, backend="dense")

    Source:
        rloss, Tang et al. ECCV 2018 (github.com/meng-tang/rloss, ``DenseCRFLoss``); AFA, Ru et al.
        CVPR 2022, github.com/rulixiang/afa ``utils/losses.py`` (``DenseEnergyLoss``); TSCD, Xu et al.
        AAAI 2023, github.com/Rongtao-Xu/RepresentationLearning ``SCD-AAAI2023`` (``utils/losses.py``,
        ``wrapper/bilateralfilter/bilateralfilter.cpp`` and ``permutohedral.cpp``); CoSA
        ``utils/seg_helper.py``; the lattice: Adams et al. Eurographics 2010.
    """
    _check_hparams(sigma_rgb, sigma_xy, scale_factor, gradient, backend, chunk_size, reduction)
    check_tensor(probs, "probs", ndim=4, dims="(B, C, H, W)", dtype="float")
    b, _, h, w = probs.shape
    check_tensor(image, "image", ndim=4, dims="(B, 3, H, W)", dtype="float")
    check_shape(image, "image", (b, 3, h, w), "(B, 3, H, W) with B, H, W of probs")
    check_tensor(valid, "valid", ndim=3, dims="(B, H, W)", dtype="bool_or_int")
    check_shape(valid, "valid", (b, h, w), "(B, H, W) with B, H, W of probs")
    check_tensor(pseudo_label, "pseudo_label", ndim=3, dims="(B, H, W)", dtype="int")
    check_shape(pseudo_label, "pseudo_label", (b, h, w), "(B, H, W) with B, H, W of probs")
    check_same_spatial(probs, "probs", image, "image")
    if b == 0:  # empty batch: 0 with a graph (the lattice needs at least one image)
        return empty_loss(probs, reduction, (0,))

    dtype = torch.promote_types(probs.dtype, torch.float32)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        probs = probs.to(dtype)
        image = image.detach().to(dtype)
        valid_f = (valid != 0).to(dtype)[:, None]
        label_f = pseudo_label.to(dtype)[:, None]
        if scale_factor != 1.0:
            resize = {"scale_factor": scale_factor, "recompute_scale_factor": True}
            image = F.interpolate(image, mode="nearest", **resize)
            probs = F.interpolate(probs, mode="bilinear", align_corners=False, **resize)
            valid_f = F.interpolate(valid_f, mode="nearest", **resize)
            label_f = F.interpolate(label_f, mode="nearest", **resize)
        unlabeled = (label_f == ignore_index).flatten(2)  # (B, 1, N)
        if backend == "permutohedral":
            # σ_xy is passed to the lattice as float32, like the float argument of the C++ extension
            lattice = PermutohedralLattice(_lattice_features(image, sigma_rgb, sigma_xy * scale_factor))
            filter_fn = lattice.filter
        else:
            feats = _bilateral_features(image, sigma_rgb, sigma_xy * scale_factor)

            def filter_fn(x: Tensor) -> Tensor:
                return _DenseFilter.apply(x, feats, chunk_size)
        s = probs.flatten(2)  # (B, C, N)
        v = valid_f.flatten(2)  # (B, 1, N)

        if gradient == "official":
            with torch.no_grad():
                gate = torch.where(unlabeled, 1.0, (v - s.amax(dim=1, keepdim=True)).clamp(min=0.0))
            energy = _OfficialEnergy.apply(s, v, gate, filter_fn, weight)
        else:
            gate = torch.where(unlabeled, 1.0, (v - s.amax(dim=1, keepdim=True)).clamp(min=0.0))
            s_valid = s * v
            energy = -weight * (s_valid * gate * filter_fn(s_valid)).sum(dim=(1, 2))

    if reduction == "mean":
        return energy.mean()
    if reduction == "sum":
        return energy.sum()
    return energy


class DenseEnergyLoss(nn.Module):
    r"""Module form of :func:`dense_energy_loss` (the gated dense-CRF energy, negative), weighted inside by ``weight``.

    ``weight`` (official 1e-7, shown by ``repr``) is rloss's internal weight, applied inside as in the official
    module; the methods' ``w_reg`` multiplies on top (``docs/conventions.rst``).

    The filter :math:`W` is the official permutohedral lattice by default (``backend="dense"``: the exact
    Gaussian it approximates).

    .. math::

        L = -\frac{w}{B}\sum_{b,c,p} S'_c(p)\,g(p)\,\sum_q W(p,q)\,S'_c(q)

    Args:
        sigma_rgb: colour bandwidth (0-255 units).
        sigma_xy: spatial bandwidth at full resolution (multiplied by ``scale_factor``).
        scale_factor: downscaling applied to every input first (official 0.5).
        weight: internal weight w (official 1e-7).
        gradient: ``"official"`` (rloss backward, gate constant) or ``"autograd"`` (exact).
        backend: ``"permutohedral"`` (official lattice filter, default) or ``"dense"`` (exact Gaussian).
        chunk_size: query pixels per chunk (``"dense"`` only).
        ignore_index: unlabelled value of the pseudo label.
        reduction: ``"mean"`` (official), ``"sum"`` or ``"none"`` (per-image energies).

    Shape:
        - probs :math:`(B, C, H, W)`, image :math:`(B, 3, H, W)` 0-255 RGB, valid :math:`(B, H, W)`,
          pseudo_label :math:`(B, H, W)`.
        - output: scalar, or :math:`(B,)` for ``reduction="none"``.

    Raises:
        ValueError: invalid hyperparameters (here) or inputs (see :func:`dense_energy_loss`).

    Example:
        >>> import torch
        >>> from wsseg.losses import DenseEnergyLoss
        >>> loss_fn = DenseEnergyLoss()  # permutohedral lattice, as the official code
        >>> probs = torch.randn(1, 3, 12, 12).softmax(1)
        >>> image = torch.rand(1, 3, 12, 12) * 255
        >>> valid = torch.ones(1, 12, 12, dtype=torch.bool)
        >>> loss = loss_fn(probs, image, valid, torch.zeros(1, 12, 12, dtype=torch.long))
        >>> loss.shape
        torch.Size([])

    Source:
        rloss, Tang et al. ECCV 2018; AFA ``utils/losses.py`` (``DenseEnergyLoss``,
        ``DenseEnergyLossFunction``); CoSA ``utils/seg_helper.py``.
    """

    def __init__(self, sigma_rgb: float = 15.0, sigma_xy: float = 100.0, scale_factor: float = 0.5,
                 weight: float = 1e-7, gradient: str = "official", backend: str = "permutohedral",
                 chunk_size: int = 4096, ignore_index: int = 255, reduction: str = "mean") -> None:
        super().__init__()
        _check_hparams(sigma_rgb, sigma_xy, scale_factor, gradient, backend, chunk_size, reduction)
        self.sigma_rgb = sigma_rgb
        self.sigma_xy = sigma_xy
        self.scale_factor = scale_factor
        self.weight = weight
        self.gradient = gradient
        self.backend = backend
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, probs: Tensor, image: Tensor, valid: Tensor, pseudo_label: Tensor) -> Tensor:
        """Compute the loss; see :func:`dense_energy_loss`."""
        return dense_energy_loss(
            probs, image, valid, pseudo_label, sigma_rgb=self.sigma_rgb, sigma_xy=self.sigma_xy,
            scale_factor=self.scale_factor, weight=self.weight, gradient=self.gradient, backend=self.backend,
            chunk_size=self.chunk_size, ignore_index=self.ignore_index, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"sigma_rgb={self.sigma_rgb}, sigma_xy={self.sigma_xy}, scale_factor={self.scale_factor}, "
                f"weight={self.weight}, gradient={self.gradient!r}, backend={self.backend!r}, "
                f"chunk_size={self.chunk_size}, ignore_index={self.ignore_index}, reduction={self.reduction!r}")
