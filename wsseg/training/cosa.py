"""CoSA's training recipe and its per-iteration loss composition, in one readable place (``cosa.md`` §9)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.image import denormalize
from .distributed import unwrap_model
from .method import TrainingMethod, check_training_batch, zero_weighted
from .recipe import RecipeMixin

__all__ = ["CoSAMethod", "CoSARecipe", "CoSATrainingStep", "CoSAPseudoLabels"]

_RECIPES = ("cosa", "cam")
_PRESETS = ("cosa", "cosa_coco", "cam", "cosa_paper")
_TEACHER_INIT = ("independent", "copy")
_EVAL_NETWORKS = ("student", "teacher")


@dataclass
class CoSARecipe(RecipeMixin):
    """Every hyperparameter of the CoSA training recipe, with the released code's VOC values as defaults.

    Official values: ``main.py``, ``args.py``, ``run_voc.sh`` and the shipped VOC log of
    github.com/youshyee/CoSA (``cosa.md`` §9, §14). Iterations are counted from 0; the scheduler and the
    EMA teacher are stepped once per iteration.

    Presets (:meth:`preset`): ``"cosa"`` (VOC, the released recipe), ``"cosa_coco"`` (COCO: loss warm-up
    10,000, 60,000 iterations, batch 8, main thresholds 0.65 / 0.25), ``"cam"`` (the classification-only
    baseline: the same network, data and schedule with only :math:`L_{cls} + L_{cls}^{aux}`; its CAM and
    pseudo label come from the network itself, thresholded as CoSA's CPL) and ``"cosa_paper"`` (the
    released recipe plus the dynamic threshold, ``threshold_search=True``; the paper's RAW and
    contrastive-separation modules have no published formula and stay off, see
    :class:`~wsseg.pseudo.PerplexityReliabilityWeight`, :class:`~wsseg.losses.CAMContrastiveSeparation`).

    **Schedule scaling rule** (:meth:`scaled`): for short runs the loss warm-up and the LR warm-up keep
    their official fractions of the 32,000-iteration run (``loss_warmup_iters = round(0.1875 * iters)``,
    ``warmup_iters = round(0.046875 * iters)``) and the EMA momentum keeps the teacher's half-life at the
    same fraction of the run, :math:`m' = m^{32000 / \\text{iters}}` (0.9994 → 0.9531 for 400 iterations),
    unless those fields were set explicitly. At ``iters=32000`` nothing changes.

    Attributes:
        recipe: ``"cosa"`` or ``"cam"`` (classification-only baseline).
        crop_size, scale_range: training crop (448) and random rescale range (0.5, 2.0).
        hflip_p, blur_p, blur_radius, magnitude_range: :class:`~wsseg.data.WeakStrongTransform` (0.5,
            0.5, (0.1, 2.0), (1, 10)).
        batch_size: global batch (official 2 per GPU × 2 GPUs = 4).
        iters: total iterations (32,000: shipped VOC log and ``run_voc.sh``; the ``args.py`` default is
            40,000).
        loss_warmup_iters: iterations ``step <= loss_warmup_iters`` train only the two classification
            losses (6,000; COCO 10,000).
        warmup_iters, warmup_ratio, poly_power, rebase_after_warmup: the LR schedule
            (:class:`~wsseg.optim.PolyWarmupLR`): 1,500 warm-up steps hard-coded in the official code,
            independent of the loss warm-up; power 0.9; the poly decay is not re-based after the warm-up.
        lr, head_lr_mult, encoder_norm_lr_mult: encoder lr 6e-5; classifiers and decoder 10×; encoder
            norms are **trained** at the encoder lr (1.0), unlike TSCD.
        weight_decay, betas, adam_eps: AdamW (0.01, (0.9, 0.999), 1e-8), all four groups.
        aux_layer: block of the aux classifier's tokens (−3; ``run_voc.sh`` passes −4, the log used −3).
        freeze_pos_embed: the positional embedding gets no gradient (official).
        pseudo_scales: teacher scales (1.0, 0.5, 1.5), each with its h-flip.
        aux_cam_all_scales: ``False`` (faithful) = the aux teacher CAM comes from the last scale only (the
            official list-overwrite bug); ``True`` fuses all scales.
        high, low: CPL thresholds of the main CAM (0.7 / 0.2 in the shipped VOC log; ``args.py`` 0.25).
        high_aux, low_aux: CPL thresholds of the aux CAM (0.7 / 0.25).
        pseudo_down_scale: the CPL is built at 1/2 of the crop (``par_downscale``).
        seg_fg_alpha: :math:`\\alpha` of the balanced CE (0.5); aux_alpha: :math:`\\beta`, share of the aux
            CPL in :math:`L_{c2s}` (0.5).
        seg_temperature, spl_mask_mode, relu_cam: the SPL softmax temperature (0.01), absent classes
            masked before the softmax, ReLU before the sigmoid-BCE of :math:`L_{s2c}` (official loss floor
            log 2).
        w_cls, w_cls_aux, w_c2s, w_s2c, w_reg: loss weights 1 / 1 / 0.1 / 0.05 / 0.05.
        energy_sigma_rgb, energy_sigma_xy, energy_scale, energy_weight, energy_gradient, energy_backend,
            energy_chunk_size: :class:`~wsseg.losses.DenseEnergyLoss` (15, 100, 0.5, 1e-7, official
            gradient, permutohedral lattice).
        ema_momentum: teacher momentum 0.9994, every step from step 0.
        teacher_init: ``"independent"`` (faithful: the teacher is a second freshly built network —
            pretrained backbone, its own random heads) or ``"copy"`` (a copy of the student; deviation).
        threshold_search: the dynamic threshold (:class:`~wsseg.pseudo.ThresholdSearch`), **off** in the
            released code; ``gmm_*`` fields are its options (queue ratio 100, statistic at crop/16, filter
            0.05, EMA 0.99, refit every step, uniform queue initialisation, no component sorting,
            ``on_empty="keep"``).
        raw, raw_temperature, raw_beta, raw_normalize: EXPERIMENTAL per-pixel CPL weights
            (:class:`~wsseg.pseudo.PerplexityReliabilityWeight`); off; ``raw_temperature`` has no
            default and must be set to turn it on.
        csc, csc_margin, w_csc: EXPERIMENTAL contrastive separation of the student CAM
            (:class:`~wsseg.losses.CAMContrastiveSeparation`); off; margin and weight have no default.
        cam_eval_threshold: background threshold of the CAM diagnostic (0.5, ``bkg_thre``).
        eval_network: network whose segmentation is scored, ``"student"`` (default) or ``"teacher"``.
            CAMs and pseudo labels are always the teacher's (what the student trains on). The official
            code keeps the better of the two by label-filtered val mIoU at every evaluation (model
            selection on val); wsseg does not select on evaluation masks.
        skip_zero_weighted_terms: ``False`` (faithful): during the loss warm-up the decoder gets exact
            zero gradients (the official code multiplies the other terms by 0), so AdamW still applies
            weight decay to it; ``True``: no gradient at all.
        seed: random seed (official 0).
    """

    recipe: str = "cosa"
    crop_size: int = 448
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip_p: float = 0.5
    blur_p: float = 0.5
    blur_radius: tuple[float, float] = (0.1, 2.0)
    magnitude_range: tuple[int, int] = (1, 10)
    batch_size: int = 4
    iters: int = 32000
    loss_warmup_iters: int = 6000
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6
    poly_power: float = 0.9
    rebase_after_warmup: bool = False
    lr: float = 6e-5
    head_lr_mult: float = 10.0
    encoder_norm_lr_mult: float = 1.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    aux_layer: int = -3
    freeze_pos_embed: bool = True
    pseudo_scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    aux_cam_all_scales: bool = False
    high: float = 0.7
    low: float = 0.2
    high_aux: float = 0.7
    low_aux: float = 0.25
    pseudo_down_scale: int = 2
    seg_fg_alpha: float = 0.5
    aux_alpha: float = 0.5
    seg_temperature: float = 0.01
    spl_mask_mode: str = "before_softmax"
    relu_cam: bool = True
    w_cls: float = 1.0
    w_cls_aux: float = 1.0
    w_c2s: float = 0.1
    w_s2c: float = 0.05
    w_reg: float = 0.05
    energy_sigma_rgb: float = 15.0
    energy_sigma_xy: float = 100.0
    energy_scale: float = 0.5
    energy_weight: float = 1e-7
    energy_gradient: str = "official"
    energy_backend: str = "permutohedral"
    energy_chunk_size: int = 4096
    ema_momentum: float = 0.9994
    teacher_init: str = "independent"
    threshold_search: bool = False
    gmm_queue_ratio: int = 100
    gmm_scale: int = 16
    gmm_filter_thre: float = 0.05
    gmm_ema_decay: float = 0.99
    gmm_update_every: int = 1
    gmm_queue_init: str = "uniform"
    gmm_sort_components: bool = False
    gmm_on_empty: str = "keep"
    raw: bool = False
    raw_temperature: float | None = None
    raw_beta: float = 1.0
    raw_normalize: bool = False
    csc: bool = False
    csc_margin: float | None = None
    w_csc: float | None = None
    cam_eval_threshold: float = 0.5
    eval_network: str = "student"
    skip_zero_weighted_terms: bool = False
    seed: int = 0
    _pinned: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises ValueError naming the field."""
        choices = {"recipe": _RECIPES, "teacher_init": _TEACHER_INIT, "eval_network": _EVAL_NETWORKS,
                   "spl_mask_mode": ("before_softmax", "after_softmax"),
                   "energy_backend": ("permutohedral", "dense"), "gmm_queue_init": ("uniform", "empty"),
                   "gmm_on_empty": ("keep", "raise")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        for name in ("crop_size", "batch_size", "iters", "pseudo_down_scale", "energy_chunk_size",
                     "gmm_queue_ratio", "gmm_scale", "gmm_update_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive int, got {getattr(self, name)}")
        for name in ("loss_warmup_iters", "warmup_iters"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {getattr(self, name)}")
        for name in ("lr", "head_lr_mult", "encoder_norm_lr_mult", "weight_decay", "w_cls", "w_cls_aux",
                     "w_c2s", "w_s2c", "w_reg", "seg_temperature"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative float, got {getattr(self, name)}")
        if self.seg_temperature <= 0:
            raise ValueError(f"seg_temperature: expected a positive float, got {self.seg_temperature}")
        for lo, hi in (("low", "high"), ("low_aux", "high_aux")):
            if not 0.0 <= getattr(self, lo) <= getattr(self, hi) <= 1.0:
                raise ValueError(f"{lo}: expected 0 <= {lo} <= {hi} <= 1, got {lo}={getattr(self, lo)}, "
                                 f"{hi}={getattr(self, hi)}")
        for name in ("seg_fg_alpha", "aux_alpha", "gmm_ema_decay", "hflip_p", "blur_p"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum: expected a value in [0, 1), got {self.ema_momentum}")
        if not 0.0 < self.energy_scale <= 1.0:
            raise ValueError(f"energy_scale: expected a scale in (0, 1], got {self.energy_scale}")
        if len(self.pseudo_scales) == 0 or any(s <= 0 for s in self.pseudo_scales):
            raise ValueError(f"pseudo_scales: expected positive scales, got {self.pseudo_scales}")
        if self.raw and self.raw_temperature is None:
            raise ValueError("raw_temperature: required when raw=True (experimental RAW weighting has no "
                             "published temperature; choose one, e.g. --set raw_temperature=0.1)")
        if self.csc and (self.csc_margin is None or self.w_csc is None):
            raise ValueError("csc_margin, w_csc: both required when csc=True (experimental contrastive "
                             f"separation has no published values), got {self.csc_margin}, {self.w_csc}")
        if self.threshold_search and self.crop_size // self.gmm_scale < 1:
            raise ValueError(f"gmm_scale: {self.gmm_scale} is larger than crop_size {self.crop_size}")

    @classmethod
    def preset(cls, name: str = "cosa", **overrides: Any) -> CoSARecipe:
        """``"cosa"`` (VOC, released code), ``"cosa_coco"``, ``"cam"`` (baseline) or ``"cosa_paper"``.

        Example:
            >>> r = CoSARecipe.preset("cosa_coco")
            >>> r.loss_warmup_iters, r.iters, r.batch_size, r.high, r.low
            (10000, 60000, 8, 0.65, 0.25)
        """
        if name not in _PRESETS:
            raise ValueError(f"name: expected one of {_PRESETS}, got {name!r}")
        if name == "cosa_coco":
            base = dict(loss_warmup_iters=10000, iters=60000, batch_size=8, high=0.65, low=0.25)
            return cls(**{**base, **overrides})
        if name == "cosa_paper":
            return cls(**{"threshold_search": True, **overrides})
        return cls(recipe=name, **overrides)

    def scaled(self, iters: int) -> CoSARecipe:
        """A copy for a run of ``iters`` iterations keeping this recipe's schedule fractions (class docs).

        ``loss_warmup_iters`` and ``warmup_iters`` are scaled by ``iters / self.iters`` and the EMA momentum
        becomes :math:`m^{\text{self.iters} / \text{iters}}` (same teacher half-life as a fraction of the
        run), except for fields set explicitly (:meth:`replace`, ``--set``).

        Example:
            >>> r = CoSARecipe().scaled(400)
            >>> r.iters, r.loss_warmup_iters, r.warmup_iters, round(r.ema_momentum, 4)
            (400, 75, 19, 0.9531)
            >>> CoSARecipe.preset("cosa_coco").scaled(600).loss_warmup_iters
            100
        """
        if int(iters) < 1:
            raise ValueError(f"iters: expected a positive int, got {iters}")
        ratio = int(iters) / self.iters
        changes: dict[str, Any] = {"iters": int(iters)}
        for name in ("loss_warmup_iters", "warmup_iters"):
            if name not in self._pinned:
                changes[name] = int(round(getattr(self, name) * ratio))
        if "ema_momentum" not in self._pinned:
            changes["ema_momentum"] = float(self.ema_momentum ** (1.0 / ratio))
        out = dataclasses.replace(self, **changes)
        out._pinned = self._pinned
        return out


class CoSAPseudoLabels(NamedTuple):
    """What the teacher produces for one batch (``cosa.md`` §2–§3), all at the crop resolution.

    Attributes:
        cam: label-validated, min–max normalised teacher CAM ``(B, K, H, W)``.
        cam_aux: the same for the aux CAM (last scale only unless ``aux_cam_all_scales``).
        seg_logits: summed multi-scale + flip teacher segmentation logits ``(B, K+1, H, W)``.
        cpl, cpl_aux: CAM pseudo labels ``(B, H, W)`` in {0..K, 255}.
        low, high, low_aux, high_aux: the thresholds used (floats).
    """

    cam: Tensor
    cam_aux: Tensor
    seg_logits: Tensor
    cpl: Tensor
    cpl_aux: Tensor
    low: float
    high: float
    low_aux: float
    high_aux: float


class CoSATrainingStep:
    r"""One CoSA training iteration: every loss term and how they are combined (``cosa.md`` §9).

    With :math:`x_w, x_s` the weak and strong views (same geometry), :math:`y` the image labels and
    ``valid`` the real-image part of the crop, at iteration :math:`n` (counted from 0):

    1. student forward on :math:`x_s` **with gradients**: logits :math:`z, z_{aux}`, raw CAM :math:`M_{on}`,
       segmentation :math:`P`; :math:`L_{cls} = \mathrm{MLSM}(z, y)`, :math:`L_{cls}^{aux} = \mathrm{MLSM}(z_{aux}, y)`.
    2. :math:`n \le` ``loss_warmup_iters``: :math:`L = w_{cls} L_{cls} + w_{cls}^{aux} L_{cls}^{aux}
       + 0 \cdot \sum P` (the official code multiplies the other terms by 0: the decoder gets exact zero
       gradients; ``skip_zero_weighted_terms=True`` drops the zero term). With ``threshold_search`` the
       teacher still runs to feed the threshold queues, as officially. ``recipe="cam"``: always this,
       without the zero term.
    3. teacher (EMA of the student, no grad) on :math:`x_w`, scales (1, 0.5, 1.5) + flip
       (:func:`~wsseg.layers.cosa_teacher_inference`): :math:`\hat M, \hat M_{aux}` (label-validated) and
       :math:`\tilde S`.
    4. thresholds: fixed (0.7 / 0.2, aux 0.7 / 0.25) or from :class:`~wsseg.pseudo.ThresholdSearch`;
       :math:`Y_{cpl}, Y_{cpl}^{aux}` = :func:`~wsseg.pseudo.dual_threshold_pseudo_label` (no refiner,
       1/2 resolution, ``valid``).
    5. :math:`L_{c2s}, L_{s2c}` = :class:`~wsseg.losses.SwappedAssignmentLoss` (CPL → :math:`P`, SPL from
       :math:`\tilde S` → :math:`M_{on}`); :math:`L_{reg}` = :class:`~wsseg.losses.DenseEnergyLoss` on
       softmax(up(:math:`P`)), the de-normalised strong view, ``valid`` and the main CPL.
    6. :math:`L = w_{cls} L_{cls} + w_{cls}^{aux} L_{cls}^{aux} + w_{c2s} L_{c2s} + w_{s2c} L_{s2c}
       + w_{reg} L_{reg}` (1, 1, 0.1, 0.05, 0.05) [+ experimental :math:`w_{csc} L_{csc}`].

    The EMA update of the teacher is :meth:`CoSAMethod.after_optimizer_step`.

    Args:
        recipe: the :class:`CoSARecipe`.

    Shape:
        - batch["image"] (weak view) and batch["image_strong"]: :math:`(B, 3, H, W)` normalised;
          batch["label"]: :math:`(B, K)`; batch["valid"]: :math:`(B, H, W)` bool (optional).
        - returns ``(loss, logs)``.

    Raises:
        ValueError: for a malformed batch (see :func:`~wsseg.training.method.check_training_batch`).

    Source:
        CoSA, Yang et al., "Weakly Supervised Co-training with Swapping Assignments for Semantic
        Segmentation", ECCV 2024; github.com/youshyee/CoSA, ``main.py`` (train loop).
    """

    def __init__(self, recipe: CoSARecipe | None = None) -> None:
        from ..losses import DenseEnergyLoss, SwappedAssignmentLoss

        self.recipe = recipe if recipe is not None else CoSARecipe()
        if not isinstance(self.recipe, CoSARecipe):
            raise TypeError(f"recipe: expected a CoSARecipe, got {type(recipe).__name__}")
        r = self.recipe
        self.swap_loss = SwappedAssignmentLoss(fg_alpha=r.seg_fg_alpha, aux_alpha=r.aux_alpha,
                                               seg_temperature=r.seg_temperature,
                                               spl_mask_mode=r.spl_mask_mode, relu_cam=r.relu_cam,
                                               weight_c2s=r.w_c2s, weight_s2c=r.w_s2c, return_terms=True)
        self.energy_loss = DenseEnergyLoss(sigma_rgb=r.energy_sigma_rgb, sigma_xy=r.energy_sigma_xy,
                                           scale_factor=r.energy_scale, weight=r.energy_weight,
                                           gradient=r.energy_gradient, backend=r.energy_backend,
                                           chunk_size=r.energy_chunk_size)
        self.raw_weight = None
        if r.raw:
            from ..pseudo import PerplexityReliabilityWeight

            self.raw_weight = PerplexityReliabilityWeight(temperature=float(r.raw_temperature),
                                                          beta=r.raw_beta, normalize=r.raw_normalize)
        self.csc_loss = None
        if r.csc:
            from ..losses import CAMContrastiveSeparation

            self.csc_loss = CAMContrastiveSeparation(margin=float(r.csc_margin))
        self.thresholds: nn.ModuleDict | None = None  # ThresholdSearch per CAM, built by build_thresholds

    # -------------------------------------------------------------- pieces
    def build_thresholds(self, local_batch: int, device: torch.device | str = "cpu") -> None:
        """Create the two :class:`~wsseg.pseudo.ThresholdSearch` modules (main, aux) when enabled."""
        r = self.recipe
        if not r.threshold_search:
            return
        from ..pseudo import ThresholdSearch

        def make(low: float, high: float) -> nn.Module:
            return ThresholdSearch(init_low=low, init_high=high, queue_ratio=r.gmm_queue_ratio,
                                   stat_size=r.crop_size // r.gmm_scale, filter_thre=r.gmm_filter_thre,
                                   ema_decay=r.gmm_ema_decay, update_every=r.gmm_update_every,
                                   queue_init=r.gmm_queue_init, sort_components=r.gmm_sort_components,
                                   on_empty=r.gmm_on_empty, batch_size=int(local_batch))

        self.thresholds = nn.ModuleDict({"main": make(r.low, r.high), "aux": make(r.low_aux, r.high_aux)}).to(device)

    def current_thresholds(self) -> tuple[float, float, float, float]:
        """``(low, high, low_aux, high_aux)`` now in use (fixed, or the searched ones)."""
        r = self.recipe
        if self.thresholds is None:
            return r.low, r.high, r.low_aux, r.high_aux
        main, aux = self.thresholds["main"], self.thresholds["aux"]
        return float(main.low), float(main.high), float(aux.low), float(aux.high)

    @torch.no_grad()
    def teacher_outputs(self, teacher: nn.Module, images: Tensor, labels: Tensor):
        """:func:`~wsseg.layers.cosa_teacher_inference` of ``teacher`` on ``images`` (no grad)."""
        from ..layers import cosa_teacher_inference

        return cosa_teacher_inference(unwrap_model(teacher), images, labels, scales=self.recipe.pseudo_scales,
                                      aux_cam_all_scales=self.recipe.aux_cam_all_scales)

    @torch.no_grad()
    def pseudo_labels(self, teacher: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                      update_thresholds: bool = False) -> CoSAPseudoLabels:
        """The teacher's CAMs, segmentation logits and CPLs for ``images`` (``update_thresholds``: feed the
        threshold queues first, as in training)."""
        from ..pseudo import dual_threshold_pseudo_label

        r = self.recipe
        t = self.teacher_outputs(teacher, images, labels)
        low, high, low_aux, high_aux = r.low, r.high, r.low_aux, r.high_aux
        if self.thresholds is not None:
            for key in ("main", "aux"):
                self.thresholds[key].train(update_thresholds)
            low, high = (float(v) for v in self.thresholds["main"](t.cam))
            low_aux, high_aux = (float(v) for v in self.thresholds["aux"](t.cam_aux))
        kw = dict(valid=valid, down_scale=r.pseudo_down_scale, refiner=None)
        cpl = dual_threshold_pseudo_label(t.cam, labels, high=high, low=low, **kw)
        cpl_aux = dual_threshold_pseudo_label(t.cam_aux, labels, high=high_aux, low=low_aux, **kw)
        return CoSAPseudoLabels(t.cam, t.cam_aux, t.seg_logits, cpl, cpl_aux, low, high, low_aux, high_aux)

    # -------------------------------------------------------------- the step
    def __call__(self, model: nn.Module, teacher: nn.Module | None, batch: Mapping[str, Tensor],
                 step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step``; ``teacher`` is the EMA network (``None`` for ``cam``)."""
        r = self.recipe
        baseline = r.recipe == "cam"
        x_w, y, valid = check_training_batch(batch, model, step, extra_images=() if baseline else ("image_strong",))
        x_s = x_w if baseline else batch["image_strong"]
        if not baseline and teacher is None:
            raise ValueError("teacher: expected the EMA teacher network for recipe 'cosa', got None")

        # 1. student forward (strong view) + classification losses
        out = model(x_s)
        l_cls = F.multilabel_soft_margin_loss(out.cls, y)
        l_aux = F.multilabel_soft_margin_loss(out.cls_aux, y)
        loss = r.w_cls * l_cls + r.w_cls_aux * l_aux
        logs: dict[str, float] = {"loss_cls": float(l_cls.detach()), "loss_cls_aux": float(l_aux.detach())}
        if baseline:
            logs["loss"] = float(loss.detach())
            return loss, logs

        warmup = step <= r.loss_warmup_iters
        if not warmup or self.thresholds is not None:
            # 3.-4. teacher pseudo labels (the threshold queues are fed every step, also in the warm-up)
            pl = self.pseudo_labels(teacher, x_w, y, valid, update_thresholds=True)
            logs.update(tau_low=pl.low, tau_high=pl.high, tau_low_aux=pl.low_aux, tau_high_aux=pl.high_aux)
        if warmup:
            if not r.skip_zero_weighted_terms:
                loss = loss + zero_weighted(out.seg)
            logs["loss"] = float(loss.detach())
            return loss, logs

        # 5. swapped assignment + energy regulariser (+ experimental terms)
        weight = None
        if self.raw_weight is not None:
            weight = self.raw_weight(pl.cam, pl.low, pl.high, valid)
        terms = self.swap_loss(out.seg, out.cam, pl.cpl, pl.seg_logits, y, pl.cpl_aux, weight)
        loss = loss + terms.total
        logs.update(loss_c2s=float(terms.c2s.detach()), loss_s2c=float(terms.s2c.detach()))
        if r.w_reg > 0:
            H, W = x_s.shape[-2:]
            seg = F.interpolate(out.seg, size=(H, W), mode="bilinear", align_corners=False)
            img255 = denormalize(x_s.float(), mode="float") * 255.0
            v = valid if valid is not None else torch.ones_like(pl.cpl, dtype=torch.bool)
            l_reg = self.energy_loss(torch.softmax(seg.float(), dim=1), img255, v, pl.cpl)
            loss = loss + r.w_reg * l_reg
            logs["loss_reg"] = float(l_reg.detach())
        if self.csc_loss is not None:
            l_csc = self.csc_loss(out.cam, pl.cpl, y)
            loss = loss + float(r.w_csc) * l_csc
            logs["loss_csc"] = float(l_csc.detach())

        logs["loss"] = float(loss.detach())
        logs["cpl_ignore_frac"] = float((pl.cpl == 255).float().mean())
        logs["cpl_fg_frac"] = float(((pl.cpl > 0) & (pl.cpl != 255)).float().mean())
        return loss, logs

    def __repr__(self) -> str:
        return (f"CoSATrainingStep(recipe={self.recipe.recipe!r}, loss_warmup_iters={self.recipe.loss_warmup_iters}, "
                f"threshold_search={self.recipe.threshold_search})")


class CoSAMethod(TrainingMethod):
    """CoSA on the shared training engine: the student, its EMA teacher and :class:`CoSATrainingStep`.

    The teacher is owned by the method (not wrapped in DDP, never in the optimizer): built next to the
    student by :meth:`build_model` (``teacher_init``), moved to the device by :meth:`setup`, updated after
    every optimizer step from the (synchronised) student, saved and resumed through :meth:`state_dict`
    together with the threshold queues. CAMs and pseudo labels in evaluations are the teacher's (what the
    student trains on); the scored segmentation is ``recipe.eval_network``'s. ``recipe="cam"`` has no
    teacher: CAMs, pseudo labels and segmentation come from the network itself.

    Args:
        recipe: a :class:`CoSARecipe` (default: the released VOC recipe).

    Example:
        >>> m = CoSAMethod(CoSARecipe(crop_size=32, loss_warmup_iters=0, pseudo_scales=(1.0,)))
        >>> net = m.build_model(2, backbone="test_vit", decoder_dim=8)
        >>> m.setup(net, torch.device("cpu"))
        >>> x = torch.randn(2, 3, 32, 32)
        >>> batch = {"image": x, "image_strong": x, "label": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
        >>> loss, logs = m.training_step(net, batch, step=1)
        >>> sorted(k for k in logs if k.startswith("loss_"))
        ['loss_c2s', 'loss_cls', 'loss_cls_aux', 'loss_reg', 'loss_s2c']

    Source:
        CoSA, Yang et al. ECCV 2024; github.com/youshyee/CoSA, ``main.py``.
    """

    name = "cosa"
    find_unused_parameters = True
    log_keys = ("loss", "loss_cls", "loss_cls_aux", "loss_c2s", "loss_s2c", "loss_reg", "loss_csc",
                "cpl_ignore_frac", "cpl_fg_frac", "tau_low", "tau_high", "tau_low_aux", "tau_high_aux")

    def __init__(self, recipe: CoSARecipe | None = None) -> None:
        recipe = CoSARecipe() if recipe is None else recipe
        if not isinstance(recipe, CoSARecipe):
            raise TypeError(f"recipe: expected a CoSARecipe, got {type(recipe).__name__}")
        super().__init__(recipe)
        self.step_fn = CoSATrainingStep(recipe)
        self.teacher: nn.Module | None = None
        self._ema = None

    # ------------------------------------------------------------------ construction
    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """``create_model("cosa", ...)`` for the student and, for ``recipe="cosa"``, the EMA teacher.

        ``decoder_dim`` (the shared CLI flag) is the LargeFOV head's hidden width; ``aux_layer`` and
        ``freeze_pos_embed`` come from the recipe unless given.
        """
        from ..models import create_model
        from .ema_teacher import EMATeacher

        r = self.recipe
        kw = dict(kwargs)
        if "decoder_dim" in kw:
            dim = kw.pop("decoder_dim")
            if dim is not None:
                kw["hidden_channels"] = int(dim)
        kw.setdefault("aux_layer", r.aux_layer)
        kw.setdefault("freeze_pos_embed", r.freeze_pos_embed)

        def factory() -> nn.Module:
            return create_model("cosa", num_classes=num_classes, **kw)

        student = factory()
        if r.recipe == "cosa":
            self._ema = EMATeacher(momentum=r.ema_momentum, init=r.teacher_init)
            self.teacher = self._ema.build(student, factory)
        return student

    @property
    def trains_segmentation(self) -> bool:
        """False for ``recipe="cam"`` (classification only: the decoder is never trained)."""
        return self.recipe.recipe != "cam"

    def train_transform(self, long_side: int | None = None) -> Any:
        """:class:`~wsseg.data.WeakStrongTransform` with the recipe's crop and augmentation values."""
        from ..data import WeakStrongTransform

        r = self.recipe
        return WeakStrongTransform(crop_size=r.crop_size, scale_range=r.scale_range, hflip_p=r.hflip_p,
                                   blur_p=r.blur_p, blur_radius=r.blur_radius, magnitude_range=r.magnitude_range,
                                   long_side=long_side, seed=r.seed)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Move the teacher to ``device`` and build the threshold queues (per process)."""
        if self.teacher is not None:
            self.teacher.to(device)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if self.step_fn.thresholds is None:
            self.step_fn.build_thresholds(max(1, self.recipe.batch_size // world), device)

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """One CoSA iteration (:class:`CoSATrainingStep`)."""
        return self.step_fn(model, self.teacher, batch, step)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """EMA update of the teacher from the student (every step, including the loss warm-up)."""
        if self.teacher is not None:
            self._ema.step(self.teacher, model)

    # ------------------------------------------------------------------ inference
    def _cam_net(self, model: nn.Module) -> nn.Module:
        return unwrap_model(model) if self.teacher is None else self.teacher

    def cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """The teacher's multi-scale + flip normalised CAM (``recipe="cam"``: the network's own).

        CAM-only passes (:func:`~wsseg.layers.cosa_teacher_cam`: no decoder, no aux CAM) when the network has
        a ``cam`` method, else the full teacher pass; the same values either way."""
        from ..layers import cosa_teacher_cam

        net = self._cam_net(model)
        labels = images.new_ones(images.shape[0], unwrap_model(model).num_classes)
        if callable(getattr(net, "cam", None)):
            return cosa_teacher_cam(net, images, labels, scales=self.recipe.pseudo_scales)
        return self.step_fn.teacher_outputs(net, images, labels).cam

    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                     cam: Tensor | None = None) -> Tensor:
        """The main CPL (dual threshold, no refiner) with the thresholds currently in use."""
        from ..pseudo import dual_threshold_pseudo_label

        cam = self.cam(model, images) if cam is None else cam
        low, high, _, _ = self.step_fn.current_thresholds()
        return dual_threshold_pseudo_label(cam, labels.to(cam.dtype), valid=valid, high=high, low=low,
                                           down_scale=self.recipe.pseudo_down_scale)

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Segmentation logits of ``recipe.eval_network`` (student or teacher), single scale."""
        if self.recipe.eval_network == "teacher" and self.teacher is not None:
            return super().predict(self.teacher, images)
        return super().predict(model, images)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights and the threshold queues (thresholds, buffers)."""
        state: dict[str, Any] = {}
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.step_fn.thresholds is not None:
            state["thresholds"] = self.step_fn.thresholds.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if self.teacher is not None:
            if "teacher" not in state:
                raise ValueError("state: expected a 'teacher' entry (checkpoint of a CoSA run with a teacher)")
            self.teacher.load_state_dict(state["teacher"])
        if self.step_fn.thresholds is not None and "thresholds" in state:
            self.step_fn.thresholds.load_state_dict(state["thresholds"])
