"""APC's training recipe and per-iteration composition (**experimental**, design [assumed]; ``apc.md`` §3–§5)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .method import TrainingMethod, zero_weighted
from .vitpcm import ViTPCMMethod, ViTPCMRecipe, ViTPCMTrainingStep

__all__ = ["APCMethod", "APCRecipe", "APCTrainingStep"]

#: Fields without a published value: :meth:`APCRecipe.check_required` insists on them.
_REQUIRED = ("k_mode", "w_pcl", "w_seg", "seg_start_iters")
_FORMS = ("margin", "infonce")
_SCOPES = ("image", "batch")


@dataclass
class APCRecipe(ViTPCMRecipe):
    """The APC recipe — **experimental**: ViT-PCM's recipe plus APC's pieces, none of whose values is published.

    APC (Wu et al. 2024) is known from its abstract only (``apc.md`` §1): Adaptive-K pooling replaces the max
    pooling, a patch contrastive loss sharpens the patch embeddings, and a decoder trained online makes the
    pipeline single-stage. Everything else is **[assumed]**: the composition is :class:`APCTrainingStep`; the
    ViT-PCM fields keep their official values; the fields below without a published value default to
    ``None`` and :meth:`check_required` (called by :class:`APCMethod`) raises until they are set
    (``--set k_mode=ratio_to_max rho=0.5 w_pcl=... w_seg=... seg_start_iters=...``). The fields below come in
    addition to :class:`ViTPCMRecipe`'s.

    Args:
        recipe: ``"apc"`` (VOC view-2 cropping) or ``"apc_coco"`` (no crop).
        k_mode: pooling rule — **required** (``"max"`` turns APC's pooling into ViT-PCM's); the adaptive
            modes also need ``rho`` (and optionally ``k_min`` / ``k_max``), ``"fixed"`` needs ``k``.
        pcl_form, pcl_margin, pcl_temperature, pcl_scope, pcl_min_confidence: the patch contrast
            (:class:`~wsseg.losses.PatchContrastLoss`; spec defaults: margin form, margin 0, image scope; the
            InfoNCE form requires the temperature).
        w_pcl: weight of the patch contrastive loss — **required**.
        w_seg: weight of the decoder's segmentation loss — **required**.
        seg_start_iters: first iteration with the segmentation loss — **required** (0: from the start).
        seg_min_confidence: optional ignore band: pseudo-label pixels whose merged probability is below it
            are ignored (``None``: no ignored pixel).
        seg_fg_alpha: foreground share of :class:`~wsseg.losses.BalancedSegmentationLoss` (0.5, its default).
    """

    recipe: str = "apc"
    k_mode: str | None = None  # type: ignore[assignment]
    pcl_form: str = "margin"
    pcl_margin: float = 0.0
    pcl_temperature: float | None = None
    pcl_scope: str = "image"
    pcl_min_confidence: float | None = None
    w_pcl: float | None = None
    w_seg: float | None = None
    seg_start_iters: int | None = None
    seg_min_confidence: float | None = None
    seg_fg_alpha: float = 0.5

    _presets = ("apc", "apc_coco")

    def validate(self) -> None:
        """Check every field that is set; raises ValueError naming the field (missing required fields are
        reported by :meth:`check_required`)."""
        k_mode = self.k_mode
        if k_mode is None:  # the parent requires a mode: check the rest with the neutral one
            object.__setattr__(self, "k_mode", "max")
        try:
            super().validate()
        finally:
            object.__setattr__(self, "k_mode", k_mode)
        if self.pcl_form not in _FORMS:
            raise ValueError(f"pcl_form: expected one of {_FORMS}, got {self.pcl_form!r}")
        if self.pcl_scope not in _SCOPES:
            raise ValueError(f"pcl_scope: expected one of {_SCOPES}, got {self.pcl_scope!r}")
        for name in ("pcl_margin", "w_pcl", "w_seg", "seg_fg_alpha"):
            v = getattr(self, name)
            if v is not None and not float(v) >= 0:
                raise ValueError(f"{name}: expected a non-negative float, got {v}")
        if self.pcl_temperature is not None and not float(self.pcl_temperature) > 0:
            raise ValueError(f"pcl_temperature: expected a positive float, got {self.pcl_temperature}")
        for name in ("pcl_min_confidence", "seg_min_confidence"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {v}")
        s = self.seg_start_iters
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ValueError(f"seg_start_iters: expected a non-negative int, got {s!r}")

    def check_required(self) -> None:
        """Raise if a value without a published default is still unset.

        Raises:
            ValueError: naming every missing field and how to set it.

        Example:
            >>> APCRecipe().check_required()
            Traceback (most recent call last):
            ...
            ValueError: APC has no published value for k_mode, w_pcl, w_seg, seg_start_iters: set them explicitly (e.g. --set k_mode=ratio_to_max rho=0.5 w_pcl=1 w_seg=1 seg_start_iters=0)
        """
        missing = [n for n in _REQUIRED if getattr(self, n) is None]
        if self.pcl_form == "infonce" and self.pcl_temperature is None:
            missing.append("pcl_temperature")
        if missing:
            raise ValueError(f"APC has no published value for {', '.join(missing)}: set them explicitly (e.g. --set "
                             f"k_mode=ratio_to_max rho=0.5 w_pcl=1 w_seg=1 seg_start_iters=0)")

    @classmethod
    def preset(cls, name: str = "apc", **overrides: Any):
        """``"apc"`` (ViT-PCM's VOC recipe underneath) or ``"apc_coco"`` (``crop_prob`` 0); required fields unset.

        Example:
            >>> APCRecipe.preset("apc_coco").crop_prob, APCRecipe.preset("apc").w_pcl is None
            (0.0, True)
        """
        if name not in cls._presets:
            raise ValueError(f"name: expected one of {cls._presets}, got {name!r}")
        if name == "apc_coco":
            return cls(**{"recipe": name, "crop_prob": 0.0, **overrides})
        return cls(**{"recipe": name, **overrides})


class APCTrainingStep(ViTPCMTrainingStep):
    r"""One APC iteration — **experimental, composition [assumed]** (``apc.md`` §5).

    ViT-PCM's terms (:class:`ViTPCMTrainingStep`, with the recipe's pooling), then, from the merged
    inference-mode patch probabilities :math:`M = \mathrm{merge}(P^{sg}, [1; y])` (detached):

    * :math:`L_{pcl}` = :class:`~wsseg.losses.PatchContrastLoss` on the HV-BiLSTM embeddings of the
      training pass, patch labels :math:`\arg\max_c M`, confidence :math:`\max_c M`;
    * from ``seg_start_iters``: :math:`L_{seg}` = :class:`~wsseg.losses.BalancedSegmentationLoss` of the
      decoder logits against :math:`\arg\max_c \mathrm{up}(M)` at the crop size (bilinear,
      ``align_corners=True``), pixels below ``seg_min_confidence`` ignored when it is set.

    .. math::
        L = L_{\text{ViT-PCM}} + w_{pcl} L_{pcl} + [\,t \ge t_{seg}\,]\; w_{seg} L_{seg}

    Args:
        recipe: an :class:`APCRecipe` with its required fields set.

    Raises:
        TypeError: if ``recipe`` is not an :class:`APCRecipe`.
        ValueError: if a required field is unset (:meth:`APCRecipe.check_required`).

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (abstract; composition assumed, spec apc.md §5).
    """

    recipe_cls = APCRecipe
    needs_target = True

    def __init__(self, recipe: APCRecipe) -> None:
        super().__init__(recipe)
        recipe.check_required()
        from ..losses import BalancedSegmentationLoss, PatchContrastLoss

        r = recipe
        self.pcl = PatchContrastLoss(form=r.pcl_form, margin=r.pcl_margin, temperature=r.pcl_temperature,
                                     scope=r.pcl_scope, min_confidence=r.pcl_min_confidence)
        self.seg_loss = BalancedSegmentationLoss(fg_alpha=r.seg_fg_alpha)

    @torch.no_grad()
    def seg_pseudo_label(self, merged: Tensor, size: tuple[int, int] | torch.Size, valid: Tensor | None) -> Tensor:
        """Decoder target ``(B, H, W)``: argmax of the upsampled merged probabilities (ignore band optional)."""
        up = F.interpolate(merged, size=tuple(size), mode="bilinear", align_corners=True)
        conf, pl = up.max(dim=1)
        t = self.recipe.seg_min_confidence
        if t is not None:
            pl = pl.masked_fill(conf < t, 255)
        if valid is not None:
            pl = pl.masked_fill(~valid.bool(), 255)
        return pl

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step``."""
        from ..pseudo import merge_class_labels

        r = self.recipe
        loss, logs, parts = self.forward_losses(model, batch, step)
        out, target = parts["out"], parts["target"]
        merged = merge_class_labels(target.patch_probs.float(), parts["y_bg"].float())
        conf, patch_labels = merged.max(dim=1)
        if r.w_pcl > 0:
            l_pcl = self.pcl(out.embeddings, patch_labels, conf if r.pcl_min_confidence is not None else None)
            loss = loss + r.w_pcl * l_pcl
            logs["loss_pcl"] = float(l_pcl.detach())
        if r.w_seg > 0 and step >= r.seg_start_iters:
            pl = self.seg_pseudo_label(merged, parts["x1"].shape[-2:], batch.get("valid"))
            l_seg = self.seg_loss(out.seg, pl)
            loss = loss + r.w_seg * l_seg
            logs["loss_seg"] = float(l_seg.detach())
            logs["pl_ignore_frac"] = float((pl == 255).float().mean())
        else:  # the decoder stays in the graph with exact zero gradients (DDP)
            loss = loss + zero_weighted(out.seg)
        logs["loss"] = float(loss.detach())
        return loss, logs


class APCMethod(ViTPCMMethod):
    """APC on the shared training engine — **experimental** (:class:`APCRecipe`, :class:`APCTrainingStep`).

    As :class:`ViTPCMMethod` (Adam, the two stages, the two-view transform; ``cam`` / ``pseudo_label`` from
    the PCM), with the decoder in the optimizer (``"decoder"`` group, at the new modules' stage lr: ``lr_stage_a``
    during the warm-up stage, then ``lr`` [assumed])
    and ``predict`` from the decoder (logits upsampled bilinearly).

    Args:
        recipe: an :class:`APCRecipe` with its required fields set.

    Raises:
        ValueError: if a required recipe field is unset.

    Example:
        >>> r = APCRecipe(crop_size=32, batch_size=4, hidden=4, num_unfrozen_blocks=1, k_mode="ratio_to_max",
        ...               rho=0.5, w_pcl=1.0, w_seg=1.0, seg_start_iters=0)
        >>> m = APCMethod(r)
        >>> net = m.build_model(2, backbone="test_vit", decoder_dim=8)
        >>> type(net).__name__, net.pooling.k_mode
        ('APCNet', 'ratio_to_max')

    Source:
        APC, Wu et al. 2024, arXiv 2407.10649 (design assumed, spec apc.md §5).
    """

    name = "apc"
    log_keys = ("loss", "loss_mce", "loss_reg", "loss_et", "loss_pcl", "loss_seg", "pl_ignore_frac")
    recipe_cls = APCRecipe
    step_cls = APCTrainingStep

    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """``create_model("apc", ...)`` with the recipe's settings; ``decoder_dim`` is required."""
        from ..models import create_model

        kw = dict(kwargs)
        for name, value in self._model_kwargs().items():
            kw.setdefault(name, value)
        return create_model(self.name, num_classes=num_classes, **kw)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Decoder logits ``(B, K+1, H, W)`` (bilinear, ``align_corners=False``)."""
        return TrainingMethod.predict(self, model, images)
