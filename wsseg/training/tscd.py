"""TSCD's training recipe and its per-iteration loss composition, in one readable place (``tscd.md`` §7)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.image import denormalize
from ..utils.stride import fit_to_stride  # re-exported: its documented path was wsseg.training
from .distributed import unwrap_model
from .method import TrainingMethod, check_training_batch, zero_weighted
from .recipe import RecipeMixin

__all__ = ["TSCDMethod", "TSCDRecipe", "TSCDTrainingStep", "fit_to_stride", "tscd_training_step"]

_RECIPES = ("tscd", "cam")
_TEACHER_MODES = ("train", "eval")
_CAM_PHASE_PASSES = ("official", "skip")
_DENORMALIZE = ("truncate_uint8", "float")


@dataclass
class TSCDRecipe(RecipeMixin):
    """Every hyperparameter of the TSCD training recipe, with the official values as defaults.

    Official values: ``scripts/dist_train_voc.py``, ``configs/voc_attn_reg.yaml``,
    ``utils/optimizer.py`` of the TSCD code (``tscd.md`` §7.3). Iterations are counted from 0 as in the
    official loop; the scheduler is stepped once per iteration.

    ``recipe="cam"`` is the classification-only baseline with the same backbone, data and schedule:
    only :math:`L_{cls}` is ever computed, and its pseudo label is the plain CAM thresholded at
    ``cam_eval_threshold`` (0.45).

    **Schedule scaling rule** (:meth:`scaled`): for short runs the classification-only phase and the
    warm-up keep their official fractions of the run, ``cam_iters = round(0.1 * iters)`` and
    ``warmup_iters = round(0.075 * iters)``, unless set explicitly.

    Attributes:
        recipe: ``"tscd"`` (full TSCD) or ``"cam"`` (classification-only baseline).
        crop_size: training crop (512 = the intended value the authors' launcher passes; 320 is what the
            shipped launcher actually runs because of a missing line continuation — set 320 to reproduce).
        scale_range: random rescale range of the training images.
        batch_size: images per iteration (official 2 per GPU × 2 GPUs = 4).
        iters: total iterations (VOC 20,000).
        cam_iters: iterations ``step <= cam_iters`` train only :math:`L_{cls}` (official 2,000).
        warmup_iters, warmup_ratio, poly_power, rebase_after_warmup: :class:`~wsseg.optim.PolyWarmupLR`.
        lr: base (encoder) learning rate 6e-5; ``head_lr_mult`` (10) for classifier, affinity conv and
            decoder; ``encoder_norm_lr_mult`` (0: encoder norms frozen).
        weight_decay, betas, adam_eps: AdamW.
        cam_scales, cam_flip: multi-scale CAM teacher (1, 0.5, 1.5) + h-flip. As in the official loop,
            scale 1 always runs first and other 1.0 entries are skipped (:func:`~wsseg.layers.ordered_scales`).
        cam_eval_threshold: background threshold of the CAM diagnostic / the ``cam`` recipe label (0.45).
        high, low: background thresholds of the training pseudo label (0.55 / 0.35).
        pseudo_down_scale: VARM runs at 1/2 of the crop.
        varm_num_iter: VARM iterations (10).
        aff_radius: affinity window radius in tokens (8).
        scd_scale: second-view scale for SCD (0.3, ``align_corners=True``).
        scd_num_samples: S, samples per side (40 → 1,600 points per view).
        scd_mask_absent_classes: option (off): multiply the SCD teacher CAM by the image labels.
        w_cls, w_seg, w_reg, w_aff, w_scd: loss weights 1 / 0.1 / 0.01 / 0.1 / 0.1. A zero weight skips
            the term (and, for ``w_scd``, the second view); the parameters it would reach still get an
            exact zero gradient unless ``skip_zero_weighted_terms``.
        skip_zero_weighted_terms: option (off). The official code computes the terms that are inactive
            (all but :math:`L_{cls}` for ``step <= cam_iters``) and multiplies them by 0, so the decoder and
            the affinity head receive **zero** gradients, not none: AdamW still applies weight decay to them
            and advances their step counters (bias correction). Faithful default: those terms are not
            computed, but the outputs they would use are added to the loss times 0, which gives the same
            exact zero gradients. ``True`` skips them entirely (no gradient: AdamW leaves the parameters
            untouched, a different trajectory, ``common.md`` §11.2).
        seg_fg_alpha: foreground weight of :class:`~wsseg.losses.BalancedSegmentationLoss` (0.5).
        energy_sigma_rgb, energy_sigma_xy, energy_scale, energy_weight, energy_gradient: the
            :class:`~wsseg.losses.DenseEnergyLoss` (15, 100, 0.5, 1e-7, ``"official"``).
        energy_backend: ``"permutohedral"`` (official lattice filter, default) or ``"dense"`` (the exact
            Gaussian the lattice approximates; ≈1.8× the official loss and O(N²) cost).
        energy_chunk_size: query-chunk size of the dense backend.
        denormalize: image de-normalisation for VARM, ``"truncate_uint8"`` (official) or ``"float"``.
        teacher_mode: network mode during the teacher CAM passes, ``"train"`` (official: drop-path active,
            BN statistics updated) or ``"eval"``.
        cam_phase_passes: what runs besides :math:`L_{cls}` in the classification-only phase
            (``step <= cam_iters``). ``"official"`` (default): as the official loop, the teacher CAM passes
            of the crop, the 0.3× view's forward and its CAM passes and the SCD point draws all run (7 extra
            network passes in train mode: the decoder's BatchNorm statistics get 8 updates per iteration
            instead of 1, drop-path and SCD draw the official random numbers), without gradients, their
            results multiplied by 0; so the random stream and BN statistics at ``cam_iters`` are those of an
            official run with the same seed. ``"skip"``: the cheaper behaviour of earlier wsseg: only the
            crop's forward runs (1 BN update, 1/6 of the drop-path draws, no SCD draws): same gradients,
            another random stream from iteration 0 on. Costs: ``docs/methods/tscd.rst``.
        seed: random seed (official 1).
    """

    recipe: str = "tscd"
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    batch_size: int = 4
    iters: int = 20000
    cam_iters: int = 2000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    rebase_after_warmup: bool = False
    lr: float = 6e-5
    head_lr_mult: float = 10.0
    encoder_norm_lr_mult: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    cam_flip: bool = True
    cam_eval_threshold: float = 0.45
    high: float = 0.55
    low: float = 0.35
    pseudo_down_scale: int = 2
    varm_num_iter: int = 10
    aff_radius: int = 8
    scd_scale: float = 0.3
    scd_num_samples: int = 40
    scd_mask_absent_classes: bool = False
    w_cls: float = 1.0
    w_seg: float = 0.1
    w_reg: float = 0.01
    w_aff: float = 0.1
    w_scd: float = 0.1
    seg_fg_alpha: float = 0.5
    energy_sigma_rgb: float = 15.0
    energy_sigma_xy: float = 100.0
    energy_scale: float = 0.5
    energy_weight: float = 1e-7
    energy_gradient: str = "official"
    energy_backend: str = "permutohedral"
    energy_chunk_size: int = 4096
    denormalize: str = "truncate_uint8"
    teacher_mode: str = "train"
    cam_phase_passes: str = "official"
    skip_zero_weighted_terms: bool = False
    seed: int = 1
    _pinned: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Check every field; raises ValueError naming the field."""
        if self.recipe not in _RECIPES:
            raise ValueError(f"recipe: expected one of {_RECIPES}, got {self.recipe!r}")
        if self.teacher_mode not in _TEACHER_MODES:
            raise ValueError(f"teacher_mode: expected one of {_TEACHER_MODES}, got {self.teacher_mode!r}")
        if self.cam_phase_passes not in _CAM_PHASE_PASSES:
            raise ValueError(f"cam_phase_passes: expected one of {_CAM_PHASE_PASSES}, got {self.cam_phase_passes!r}")
        if self.denormalize not in _DENORMALIZE:
            raise ValueError(f"denormalize: expected one of {_DENORMALIZE}, got {self.denormalize!r}")
        for name in ("crop_size", "batch_size", "iters", "pseudo_down_scale", "scd_num_samples",
                     "energy_chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        for name in ("cam_iters", "warmup_iters", "varm_num_iter", "aff_radius"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {getattr(self, name)}")
        for name in ("lr", "head_lr_mult", "encoder_norm_lr_mult", "weight_decay", "w_cls", "w_seg", "w_reg",
                     "w_aff", "w_scd"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative float, got {getattr(self, name)}")
        if not 0.0 < self.scd_scale <= 1.0:
            raise ValueError(f"scd_scale: expected a scale in (0, 1], got {self.scd_scale}")
        if self.energy_backend not in ("permutohedral", "dense"):
            raise ValueError(f"energy_backend: expected 'permutohedral' or 'dense', got {self.energy_backend!r}")
        if not 0.0 < self.energy_scale <= 1.0:
            raise ValueError(f"energy_scale: expected a scale in (0, 1], got {self.energy_scale}")
        if not self.low <= self.high:
            raise ValueError(f"low: expected low <= high, got low={self.low}, high={self.high}")
        if len(self.cam_scales) == 0 or any(s <= 0 for s in self.cam_scales):
            raise ValueError(f"cam_scales: expected positive scales, got {self.cam_scales}")

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def preset(cls, name: str = "tscd", **overrides: Any) -> TSCDRecipe:
        """The official recipe (``"tscd"``), the classification-only baseline (``"cam"``) or the
        launcher-bug variant (``"tscd_crop320"``: crop 320, what the shipped launcher runs)."""
        if name == "tscd_crop320":
            return cls(recipe="tscd", crop_size=320, **overrides)
        if name not in _RECIPES:
            raise ValueError(f"name: expected one of {_RECIPES + ('tscd_crop320',)}, got {name!r}")
        return cls(recipe=name, **overrides)

    def scaled(self, iters: int) -> TSCDRecipe:
        """A copy for a run of ``iters`` iterations keeping the official schedule fractions.

        ``cam_iters = round(0.1 * iters)`` (2,000 / 20,000) and ``warmup_iters = round(0.075 * iters)``
        (1,500 / 20,000), unless those fields were set explicitly (via :meth:`replace` /
        :meth:`from_overrides`, or to a non-official value in the constructor).

        Example:
            >>> r = TSCDRecipe().scaled(400)
            >>> r.iters, r.cam_iters, r.warmup_iters
            (400, 40, 30)
            >>> TSCDRecipe.from_overrides(["cam_iters=5"]).scaled(400).cam_iters
            5
        """
        return self._scale_schedule(iters, {"cam_iters": 0.1, "warmup_iters": 0.075})


# ---------------------------------------------------------------------- helpers
def _fit_fn(model: nn.Module):
    """The model's ``fit_input`` (TSCDNet) or the identity."""
    return getattr(model, "fit_input", None) or (lambda x: x)


class _TeacherMode:
    """Context manager putting ``model`` in eval mode for ``mode="eval"`` and restoring it afterwards."""

    def __init__(self, model: nn.Module, mode: str) -> None:
        self.model, self.mode, self.was_training = model, mode, model.training

    def __enter__(self):
        if self.mode == "eval":
            self.model.eval()
        return self

    def __exit__(self, *exc):
        self.model.train(self.was_training)
        return False


def _upsample(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------- the training step
class TSCDTrainingStep:
    r"""One TSCD training iteration: every loss term and how they are combined (``tscd.md`` §7.2).

    With :math:`x` the normalised crop (B,3,H,W), :math:`y` the image labels and ``valid`` the real-image
    part of the padded crop, at iteration :math:`n` (counted from 0):

    1. forward **with gradients**: :math:`(\text{cls}, \text{seg}, \cdot, \hat A) = f(x)`;
       :math:`L_{cls} = \mathrm{MultiLabelSoftMargin}(\text{cls}, y)`.
       If :math:`n \le` ``cam_iters``: :math:`L = w_{cls} L_{cls} + 0 \cdot (\sum \text{seg} + \sum \hat A)`
       and stop. The official code computes every other term and multiplies it by 0; the zero-weighted
       sum gives the parameters those terms reach (decoder, affinity head) the same **exact zero
       gradients** without computing the terms, so AdamW's weight decay and step counters behave as
       officially (``skip_zero_weighted_terms=True``: plain :math:`L = w_{cls} L_{cls}`, no gradient).
       With ``cam_phase_passes="official"`` (default) the passes of steps 2-4 still run as officially,
       without gradients (the teacher CAMs of :math:`x` and :math:`x'`, the forward of :math:`x'`, the SCD
       point draws), and :math:`0 \cdot L_{SCD}` is added: the decoder's BatchNorm statistics get the
       official 8 updates per iteration and drop-path / SCD consume the official random numbers; VARM, the
       affinity, segmentation and energy terms (deterministic, no network pass) are not computed.
       ``"skip"``: only the forward of :math:`x` runs. NaN: a NaN/inf in seg, :math:`\hat A` (or, by
       default, :math:`L_{SCD}`) makes the loss NaN as officially (0·NaN = NaN); a NaN that only a skipped
       term would produce does not. ``recipe="cam"``: :math:`L = w_{cls} L_{cls}` always (baseline, no
       zero term).
    2. teacher :math:`M = \mathrm{MultiScaleCAM}(x)` (no grad; network in train mode, faithful).
    3. :math:`x' = \mathrm{resize}_{0.3}(x)` (bilinear, ``align_corners=True``); second forward **with
       gradients** → seg'; teacher :math:`M' = \mathrm{MultiScaleCAM}(x')`.
    4. :math:`P = \mathrm{up}(\text{seg})`, :math:`P' = \mathrm{up}(\text{seg}')` (bilinear,
       ``align_corners=True``); :math:`L_{SCD} = \mathrm{SCD}(M, M', P, P')`.
    5. :math:`Y = \mathrm{VARM\ pseudo\ label}(M, y, \mathrm{denorm}_{uint8}(x), \text{valid})`;
       :math:`L_{aff} = \mathrm{AffinityLoss}(\hat A, \mathrm{AffinityLabel}(Y))`;
       :math:`L_{seg} = \mathrm{BalancedSeg}(P, Y)`; :math:`L_{reg} = \mathrm{DenseEnergy}(\mathrm{softmax}(P),
       255\,\mathrm{denorm}(x), \text{valid}, Y)`.
    6. :math:`L = w_{cls}L_{cls} + w_{seg}L_{seg} + w_{reg}L_{reg} + w_{aff}L_{aff} + w_{SCD}L_{SCD}`
       (1, 0.1, 0.01, 0.1, 0.1).

    The official "equivariant regularisation" :math:`0.1\,L_{er}` is **not implemented**: both its
    operands are no-grad CAMs, so it has no effect on training (it only shifts the logged total; it also
    drops the aeroplane channel by an index bug). A term with weight 0 is skipped (``w_scd=0`` also skips
    the second view); as in the classification-only phase, the parameters that only it would reach get an
    exact zero gradient unless ``skip_zero_weighted_terms=True``.

    Inputs whose size is set by a scale factor (the 0.3× view and the CAM scales) are resized to the
    backbone's constraints with :func:`fit_to_stride` (ViT: multiples of the patch size; MiT: a minimum
    size) and the outputs resized back; a no-op for MiT at the official crop.

    Args:
        recipe: the :class:`TSCDRecipe` (hyperparameters only).

    Shape:
        - batch["image"]: :math:`(B, 3, H, W)` normalised; batch["label"]: :math:`(B, K)`;
          batch["valid"]: :math:`(B, H, W)` bool (optional, default all True).
        - returns ``(loss, logs)``: a scalar tensor with grad and a dict of floats (each term, the
          total, the pseudo label's ignore and foreground fractions).

    Raises:
        ValueError: for a batch that is not a dict with ``image`` and ``label``, or whose shapes disagree.
        TypeError: for a non-floating-point image or a wrongly typed ``valid`` mask.

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("tscd", backbone="mit_b0", num_classes=2, decoder_dim=8)
        >>> step = TSCDTrainingStep(TSCDRecipe(cam_iters=0, crop_size=64, varm_num_iter=1))
        >>> batch = {"image": torch.randn(1, 3, 64, 64), "label": torch.tensor([[1.0, 0.0]])}
        >>> loss, logs = step(net, batch, step=1)
        >>> sorted(k for k in logs if k.startswith("loss_"))
        ['loss_aff', 'loss_cls', 'loss_reg', 'loss_scd', 'loss_seg']

    Source:
        TSCD, Xu et al., "Self Correspondence Distillation for End-to-End Weakly-Supervised Semantic
        Segmentation", AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        SCD-AAAI2023/scripts/dist_train_voc.py (on AFA's github.com/rulixiang/afa,
        scripts/dist_train_voc.py).
    """

    def __init__(self, recipe: TSCDRecipe | None = None) -> None:
        from ..losses import (
            AffinityLoss,
            BalancedSegmentationLoss,
            DenseEnergyLoss,
            SelfCorrespondenceDistillation,
        )

        self.recipe = recipe if recipe is not None else TSCDRecipe()
        if not isinstance(self.recipe, TSCDRecipe):
            raise TypeError(f"recipe: expected a TSCDRecipe, got {type(recipe).__name__}")
        r = self.recipe
        self.seg_loss = BalancedSegmentationLoss(fg_alpha=r.seg_fg_alpha, align_corners=True)
        self.aff_loss = AffinityLoss()
        self.energy_loss = DenseEnergyLoss(sigma_rgb=r.energy_sigma_rgb, sigma_xy=r.energy_sigma_xy,
                                           scale_factor=r.energy_scale, weight=r.energy_weight,
                                           gradient=r.energy_gradient, backend=r.energy_backend,
                                           chunk_size=r.energy_chunk_size)
        self.scd_loss = SelfCorrespondenceDistillation(num_samples=r.scd_num_samples,
                                                       mask_absent_classes=r.scd_mask_absent_classes)

    # -------------------------------------------------------------- pieces
    def teacher_cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """Multi-scale + flip, min–max normalised CAM (no grad) of ``images`` at their own resolution."""
        from ..layers import multi_scale_cam

        model = unwrap_model(model)
        fit = _fit_fn(model)

        def cam_fn(x: Tensor) -> Tensor:
            return model.cam(fit(x))

        with _TeacherMode(model, self.recipe.teacher_mode), torch.no_grad():
            return multi_scale_cam(cam_fn, images, scales=self.recipe.cam_scales, flip=self.recipe.cam_flip)

    def pseudo_label_from_cam(self, cam: Tensor, images: Tensor, labels: Tensor,
                              valid: Tensor | None = None) -> Tensor:
        """The recipe's training target from a normalised CAM: VARM dual-threshold label (``tscd``) or
        ``cam_to_label`` at ``cam_eval_threshold`` (``cam``)."""
        from ..pseudo import cam_to_label, varm_pseudo_label

        r = self.recipe
        labels = labels.to(cam.dtype)
        if r.recipe == "cam":
            return cam_to_label(cam, labels, valid, bkg_thre=r.cam_eval_threshold)
        img01 = denormalize(images.float(), mode=r.denormalize)
        return varm_pseudo_label(cam, labels, img01, valid, high=r.high, low=r.low,
                                 down_scale=r.pseudo_down_scale, num_iter=r.varm_num_iter)

    @torch.no_grad()
    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor,
                     valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(cam, pseudo_label)`` that the current model would train on for ``images``."""
        cam = self.teacher_cam(model, images)
        return cam, self.pseudo_label_from_cam(cam, images, labels, valid)

    def _view_pair_scd(self, model: nn.Module, core: nn.Module, x: Tensor, y: Tensor, seg: Tensor,
                       return_cam: bool = False):
        """Steps 2-4 in the official order: teacher CAM of ``x``; if ``w_scd > 0``: the 0.3× view's forward, its
        teacher CAM and :math:`L_{SCD}` (``None`` otherwise). ``seg`` is the crop's segmentation (upsampled
        here if needed). Returns ``l_scd`` or ``(cam, l_scd)``."""
        r = self.recipe
        cam = self.teacher_cam(model, x)
        l_scd = None
        if r.w_scd > 0:
            seg = _upsample(seg, x.shape[-2:])
            x2 = F.interpolate(x, scale_factor=r.scd_scale, mode="bilinear", align_corners=True)
            out2 = model(_fit_fn(core)(x2))
            cam2 = self.teacher_cam(model, x2)
            seg2 = _upsample(out2.seg, x2.shape[-2:])
            l_scd = self.scd_loss(cam, cam2, seg, seg2, labels=y if r.scd_mask_absent_classes else None)
        return (cam, l_scd) if return_cam else l_scd

    # -------------------------------------------------------------- the step
    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step`` on ``batch`` (see the class description for the terms)."""
        r = self.recipe
        x, y, valid = check_training_batch(batch, model, step)
        core = unwrap_model(model)  # DDP / compiled wrappers: attributes live on the plain module

        # 1. forward with gradients + classification loss
        out = model(x)
        l_cls = F.multilabel_soft_margin_loss(out.cls, y)
        logs: dict[str, float] = {"loss_cls": float(l_cls.detach())}
        loss = r.w_cls * l_cls
        if r.recipe == "cam":
            logs["loss"] = float(loss.detach())
            return loss, logs
        if step <= r.cam_iters:
            if not r.skip_zero_weighted_terms:
                loss = loss + zero_weighted(out.seg, out.aff)
            if r.cam_phase_passes == "official":
                # the official loop's passes and random draws; results unused (weight 0, no gradient)
                with torch.no_grad():
                    l_scd = self._view_pair_scd(model, core, x, y, out.seg)
                if l_scd is not None and not r.skip_zero_weighted_terms:
                    loss = loss + 0.0 * l_scd
            logs["loss"] = float(loss.detach())
            return loss, logs

        H, W = x.shape[-2:]
        # 2.-4. teacher CAM of the crop (no grad), second view and SCD
        seg = _upsample(out.seg, (H, W))
        cam, l_scd = self._view_pair_scd(model, core, x, y, seg, return_cam=True)
        if l_scd is not None:
            loss = loss + r.w_scd * l_scd
            logs["loss_scd"] = float(l_scd.detach())

        # 5. pseudo label and the losses it supervises
        pseudo = self.pseudo_label_from_cam(cam, x, y, valid)
        if r.w_aff > 0:
            from ..pseudo import affinity_label

            grid = _token_grid(core, out.aff, x)
            aff_target = affinity_label(pseudo, stride=core.stride, radius=r.aff_radius, grid_size=grid)
            l_aff = self.aff_loss(out.aff, aff_target)
            loss = loss + r.w_aff * l_aff
            logs["loss_aff"] = float(l_aff.detach())
        if r.w_seg > 0:
            l_seg = self.seg_loss(seg, pseudo)
            loss = loss + r.w_seg * l_seg
            logs["loss_seg"] = float(l_seg.detach())
        if r.w_reg > 0:
            img255 = denormalize(x.float(), mode="float") * 255.0
            v = valid if valid is not None else torch.ones_like(pseudo, dtype=torch.bool)
            l_reg = self.energy_loss(torch.softmax(seg.float(), dim=1), img255, v, pseudo)
            loss = loss + r.w_reg * l_reg
            logs["loss_reg"] = float(l_reg.detach())
        if not r.skip_zero_weighted_terms:
            # outputs that no computed term used: exact zero gradients, as the official 0-weighted terms
            unused = [out.seg] if max(r.w_seg, r.w_reg, r.w_scd) == 0 else []
            unused += [out.aff] if r.w_aff == 0 else []
            if unused:
                loss = loss + zero_weighted(*unused)

        logs["loss"] = float(loss.detach())
        logs["pseudo_ignore_frac"] = float((pseudo == 255).float().mean())
        logs["pseudo_fg_frac"] = float(((pseudo > 0) & (pseudo != 255)).float().mean())
        return loss, logs

    def __repr__(self) -> str:
        return f"TSCDTrainingStep(recipe={self.recipe.recipe!r}, cam_iters={self.recipe.cam_iters})"


def _token_grid(model: nn.Module, aff: Tensor, x: Tensor) -> tuple[int, int]:
    """Token grid (h, w) of the affinity map; checks it against N."""
    n = aff.shape[-1]
    s = int(model.stride)
    h, w = x.shape[-2] // s, x.shape[-1] // s
    if h * w != n:
        # MiT's padded strided convs give ceil-like sizes: (n - 1) // s + 1 per conv
        enc = getattr(model, "encoder", None)
        hh, ww = x.shape[-2:]
        for st in getattr(enc, "strides", ()):
            hh, ww = (hh - 1) // st + 1, (ww - 1) // st + 1
        h, w = hh, ww
    if h * w != n:
        raise ValueError(f"batch['image']: cannot infer the {n}-token grid of the affinity map for input "
                         f"{tuple(x.shape[-2:])} and stride {s}; use crops that are multiples of the stride")
    return h, w


def tscd_training_step(model: nn.Module, batch: Mapping[str, Tensor], step: int,
                       recipe: TSCDRecipe | None = None) -> tuple[Tensor, dict[str, float]]:
    """Functional form of :class:`TSCDTrainingStep`: ``(loss, logs)`` for one TSCD iteration.

    Builds the loss modules from ``recipe`` on every call (cheap: they are parameter-free); prefer the
    class in a loop.

    Example:
        >>> from wsseg import create_model
        >>> net = create_model("tscd", backbone="mit_b0", num_classes=2, decoder_dim=8)
        >>> batch = {"image": torch.randn(2, 3, 64, 64), "label": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
        >>> loss, logs = tscd_training_step(net, batch, step=0)   # step <= cam_iters: only L_cls is computed
        >>> sorted(logs)
        ['loss', 'loss_cls']

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        SCD-AAAI2023/scripts/dist_train_voc.py.
    """
    return TSCDTrainingStep(recipe)(model, batch, step)


class TSCDMethod(TrainingMethod):
    """TSCD on the shared training engine: :class:`TSCDTrainingStep` plus the model builder and inference.

    ``recipe.recipe == "cam"`` gives the classification-only CAM baseline (same model, data and schedule).
    DDP runs with ``find_unused_parameters=True`` as the official launcher does (the second view's
    classification and affinity outputs are unused; with ``skip_zero_weighted_terms=True`` everything but
    the encoder and the classifier receives no gradient during the classification-only phase).

    Args:
        recipe: a :class:`TSCDRecipe` (default: the official one).

    Example:
        >>> m = TSCDMethod(TSCDRecipe(crop_size=64, iters=4, cam_iters=0))
        >>> net = m.build_model(2, backbone="mit_b0", decoder_dim=8)
        >>> batch = {"image": torch.randn(1, 3, 64, 64), "label": torch.tensor([[1.0, 0.0]])}
        >>> loss, logs = m.training_step(net, batch, step=0)
        >>> m.pseudo_label(net, batch["image"], batch["label"]).shape
        torch.Size([1, 64, 64])

    Source:
        TSCD, Xu et al. AAAI 2023; github.com/Rongtao-Xu/RepresentationLearning,
        SCD-AAAI2023/scripts/dist_train_voc.py.
    """

    name = "tscd"
    find_unused_parameters = True
    log_keys = ("loss", "loss_cls", "loss_seg", "loss_reg", "loss_aff", "loss_scd", "pseudo_ignore_frac",
                "pseudo_fg_frac")

    def __init__(self, recipe: TSCDRecipe | None = None) -> None:
        recipe = TSCDRecipe() if recipe is None else recipe
        if not isinstance(recipe, TSCDRecipe):
            raise TypeError(f"recipe: expected a TSCDRecipe, got {type(recipe).__name__}")
        super().__init__(recipe)
        self.step_fn = TSCDTrainingStep(recipe)

    @property
    def trains_segmentation(self) -> bool:
        """False for ``recipe="cam"`` (classification only: the decoder is never trained)."""
        return self.recipe.recipe != "cam"

    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """``create_model("tscd", num_classes=..., **kwargs)`` (``backbone``, ``weights``, ``decoder_dim``)."""
        from ..models import create_model

        return create_model("tscd", num_classes=num_classes, **kwargs)

    def training_step(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """One TSCD iteration (:class:`TSCDTrainingStep`)."""
        return self.step_fn(model, batch, step)

    def cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """The multi-scale + flip teacher CAM (:meth:`TSCDTrainingStep.teacher_cam`)."""
        return self.step_fn.teacher_cam(model, images)

    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                     cam: Tensor | None = None) -> Tensor:
        """VARM dual-threshold label (``tscd``) or the CAM at ``cam_eval_threshold`` (``cam``)."""
        cam = self.cam(model, images) if cam is None else cam
        return self.step_fn.pseudo_label_from_cam(cam, images, labels, valid)
