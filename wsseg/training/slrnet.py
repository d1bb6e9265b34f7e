"""SLRNet's training recipe and its per-iteration loss composition, in one readable place (``slrnet.md`` §7)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.image import denormalize
from .distributed import unwrap_model
from .method import TrainingMethod, check_training_batch
from .recipe import RecipeMixin

__all__ = ["SLRNetMethod", "SLRNetRecipe", "SLRNetTrainingStep"]

_PRESETS = ("slrnet", "cam")
#: Official VOC schedule: 10,582 train_aug images / batch 16 = 661 iterations per epoch.
_IPE = 661
#: Fractions of the run kept by :meth:`SLRNetRecipe.scaled` (warm-up 6 of 30 epochs, cosine T_max 25 of 30).
_FRACTIONS = {"warmup_iters": 6 / 30, "cosine_iters": 25 / 30, "seg_start_iters": 6 / 30}


@dataclass
class SLRNetRecipe(RecipeMixin):
    """Every hyperparameter of the SLRNet training recipe, with the official VOC values as defaults.

    Official values: ``tools/train_voc_wss.py`` and ``experiments/slrnet_voc_wss_v100x2.yaml`` of
    github.com/DesertsP/SLRNet (``slrnet.md`` §7). The official loop counts epochs; here everything is in
    iterations (counted from 0) for VOC ``train_aug`` (10,582 images, batch 16 → 661 iterations per epoch):
    30 epochs = 19,830 iterations; the segmentation loss joins when the epoch index exceeds
    ``pretrain_epochs = 5``, i.e. from iteration 6 × 661 = 3,966; the lr is constant until then and
    follows a cosine with :math:`T_{max}` = 25 epochs = 16,525 iterations afterwards (it ends at ≈ 0.4 % of
    the base after the 24 remaining epochs).

    Presets (:meth:`preset`): ``"slrnet"`` (VOC, the official recipe) and ``"cam"`` (the classification-only
    baseline: the same network, data and schedule trained with :math:`L_{cls}` alone — no consistency, no
    segmentation loss).

    **Schedule scaling rule** (:meth:`scaled`): for short runs ``warmup_iters``, ``cosine_iters`` and
    ``seg_start_iters`` keep their official fractions of the run (6/30, 25/30, 6/30 of ``iters``) unless
    they were set explicitly (:meth:`replace`, ``--set``). ``SLRNetRecipe().scaled(19830)`` changes nothing.

    Deviations: the official ``torch.autograd.set_detect_anomaly(True)`` is not used (it only slows the run
    down). The augmentation is the official one (RandomResizedCrop 321, area ``scale_range`` (0.9, 1.0),
    ratio (3/4, 4/3), bicubic → flip → ColorJitter (0.3, 0.3, 0.3, 0.1)), drawn from numpy generators
    instead of torch's RNG; see :meth:`SLRNetMethod.train_transform`.

    Attributes:
        recipe: ``"slrnet"`` or ``"cam"``.
        crop_size: training crop (321). scale_range: area range of the random resized crop (0.9, 1.0).
            hflip_p: 0.5. jitter: ColorJitter (brightness, contrast, saturation, hue) (0.3, 0.3, 0.3, 0.1).
        batch_size: global batch (16: DataParallel over 2 GPUs).
        iters: total iterations (19,830 = 30 × 661).
        warmup_iters: constant-lr iterations before the cosine (3,966 = 6 epochs).
        cosine_iters: cosine half-period :math:`T_{max}` (16,525 = 25 epochs). eta_min: final lr (0).
        seg_start_iters: iterations ``step < seg_start_iters`` train without :math:`L_{seg}` (3,966).
        lr, momentum, nesterov, weight_decay: SGD (5e-4, 0.9, Nesterov, 5e-4).
        bias_lr_mult, head_lr_mult, head_bias_lr_mult: lr multipliers of the backbone biases (2, no
            decay), new weights (10) and new biases (20, no decay); backbone weights ×1.
        w_cls, w_mask, w_code, w_seg: loss weights 1 / 4 / 4 / 1 (``loss_coeff``).
        aux_weight: weight of the aux head inside :math:`L_{cls}` and :math:`L_{seg}` (0.4).
        view_scale, view_flip: the second view (0.5× rescale, no flip; flip draws each image with p = 0.5).
        lowrank_iters, temperature, normalize_tokens, detach_init: :class:`~wsseg.layers.LowRankFactorization`
            (1, 1.0, False, True).
        sg_alpha: stochastic-gate rate (0.3).
        keep_ties: :class:`~wsseg.losses.CodeConsistencyLoss` (True: the official ``max_onehot``).
        gate: :class:`~wsseg.losses.GatedClassBalancedCE` (True: drop images whose pseudo label misses a class).
        bg_factor, fg_factor, min_thre, pamr_iters, pamr_dilations: :class:`~wsseg.pseudo.SLRNetPseudoLabel`
            (0.7, 0.6, 0.2, 10, (1, 2, 4, 8, 12, 24)).
        cam_eval_threshold: background threshold of the engine's CAM diagnostic on the masks (0.5, wsseg).
        seed: random seed (official 128).
    """

    recipe: str = "slrnet"
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.9, 1.0)
    hflip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    batch_size: int = 16
    iters: int = 30 * _IPE
    warmup_iters: int = 6 * _IPE
    cosine_iters: int = 25 * _IPE
    eta_min: float = 0.0
    seg_start_iters: int = 6 * _IPE
    lr: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0
    head_lr_mult: float = 10.0
    head_bias_lr_mult: float = 20.0
    w_cls: float = 1.0
    w_mask: float = 4.0
    w_code: float = 4.0
    w_seg: float = 1.0
    aux_weight: float = 0.4
    view_scale: float = 0.5
    view_flip: bool = False
    lowrank_iters: int = 1
    temperature: float = 1.0
    normalize_tokens: bool = False
    detach_init: bool = True
    sg_alpha: float = 0.3
    keep_ties: bool = True
    gate: bool = True
    bg_factor: float = 0.7
    fg_factor: float = 0.6
    min_thre: float = 0.2
    pamr_iters: int = 10
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    cam_eval_threshold: float = 0.5
    seed: int = 128
    _pinned: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises ValueError naming the field."""
        if self.recipe not in _PRESETS:
            raise ValueError(f"recipe: expected one of {_PRESETS}, got {self.recipe!r}")
        for name in ("crop_size", "batch_size", "iters", "cosine_iters", "lowrank_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name in ("warmup_iters", "seg_start_iters", "pamr_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
        for name in ("lr", "eta_min", "weight_decay", "bias_lr_mult", "head_lr_mult", "head_bias_lr_mult",
                     "w_cls", "w_mask", "w_code", "w_seg", "aux_weight"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"{name}: expected a non-negative float, got {getattr(self, name)}")
        for name in ("momentum", "hflip_p", "bg_factor", "fg_factor", "min_thre", "sg_alpha", "cam_eval_threshold"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.view_scale <= 1.0:
            raise ValueError(f"view_scale: expected a scale in (0, 1], got {self.view_scale}")
        if self.temperature <= 0:
            raise ValueError(f"temperature: expected a positive float, got {self.temperature}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: expected 0 < low <= high, got {self.scale_range}")
        if len(self.jitter) != 4 or any(not float(v) >= 0 for v in self.jitter) or float(self.jitter[3]) > 0.5:
            raise ValueError(f"jitter: expected 4 non-negative strengths (hue <= 0.5), got {self.jitter}")
        if len(self.pamr_dilations) == 0 or any(int(d) < 1 for d in self.pamr_dilations):
            raise ValueError(f"pamr_dilations: expected positive dilations, got {self.pamr_dilations}")
        if self.nesterov and (self.momentum <= 0):
            raise ValueError(f"momentum: Nesterov SGD needs a positive momentum, got {self.momentum}")

    @classmethod
    def preset(cls, name: str = "slrnet", **overrides: Any) -> SLRNetRecipe:
        """``"slrnet"`` (VOC, official) or ``"cam"`` (classification-only baseline: ``w_mask = w_code =
        w_seg = 0``).

        Example:
            >>> r = SLRNetRecipe.preset("cam")
            >>> r.recipe, r.w_cls, r.w_mask, r.w_code, r.w_seg
            ('cam', 1.0, 0.0, 0.0, 0.0)
        """
        if name not in _PRESETS:
            raise ValueError(f"name: expected one of {_PRESETS}, got {name!r}")
        if name == "cam":
            return cls(**{"recipe": "cam", "w_mask": 0.0, "w_code": 0.0, "w_seg": 0.0, **overrides})
        return cls(recipe=name, **overrides)

    def scaled(self, iters: int) -> SLRNetRecipe:
        """A copy for a run of ``iters`` iterations keeping the official schedule fractions (class docs).

        Example:
            >>> r = SLRNetRecipe().scaled(300)
            >>> r.iters, r.warmup_iters, r.cosine_iters, r.seg_start_iters
            (300, 60, 250, 60)
            >>> SLRNetRecipe().scaled(19830) == SLRNetRecipe()
            True
        """
        return self._scale_schedule(iters, _FRACTIONS)


class SLRNetTrainingStep:
    r"""One SLRNet iteration: the loss composition of ``Net.forward`` + ``train_voc_wss.py`` in one place.

    With :math:`x_1` the crop and :math:`x_2` = :func:`~wsseg.layers.make_view` (:math:`x_1`, 0.5):

    1. forward both views (:class:`~wsseg.models.SLRNet`): segmentation logits :math:`S^{(1)}, S^{(2)}`,
       aux logits :math:`\bar A` (view 1), codes :math:`C^{(1)}, C^{(2)}`; :math:`P = \mathrm{softmax}(S)`;
    2. :math:`L_{cls} = \ell(s^{(1)}) + \ell(s^{(2)}) + 0.4\,\ell(s^{aux})`, with :math:`s` the nGWP scores
       (:func:`~wsseg.layers.ngwp_score`, view 2 on its own grid) and :math:`\ell` the multi-label soft
       margin loss;
    3. view-2 outputs mapped back to the view-1 grid (:func:`~wsseg.layers.inverse_view`: logits,
       probabilities, codes); :math:`L_{mask}` (:class:`~wsseg.losses.MaskConsistencyLoss`) on
       :math:`P^{(1)}, \mathrm{inv}(P^{(2)})` and :math:`L_{code}` (:class:`~wsseg.losses.CodeConsistencyLoss`)
       on :math:`C^{(1)}, \mathrm{inv}(C^{(2)})`, gradients into both views;
    4. from ``step >= seg_start_iters``: the pseudo label (no grad, :class:`~wsseg.pseudo.SLRNetPseudoLabel`)
       from :math:`(P^{(1)} + \mathrm{inv}(P^{(2)}))/2` (detached) and the de-normalised crop, pixels outside
       ``batch["valid"]`` set to ignore, and :math:`L_{seg} = g(S^{(1)}) + g(\mathrm{inv}(S^{(2)})) +
       0.4\,g(\bar A)` with :math:`g` the :class:`~wsseg.losses.GatedClassBalancedCE`;

    .. math::
        L = w_{cls} L_{cls} + w_{mask} L_{mask} + w_{code} L_{code}
            + [\,t \ge t_{seg}\,]\; w_{seg} L_{seg} \qquad (1, 4, 4, 1)

    During the warm-up the official code still builds the pseudo label (for logging only); wsseg skips it
    (no effect on the gradients). Terms with weight 0 (the ``"cam"`` preset) are not computed.

    Args:
        recipe: an :class:`SLRNetRecipe`.

    Raises:
        TypeError: if ``recipe`` is not an :class:`SLRNetRecipe`.

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, models/slrnet.py (``Net.forward``),
        tools/train_voc_wss.py.
    """

    def __init__(self, recipe: SLRNetRecipe) -> None:
        if not isinstance(recipe, SLRNetRecipe):
            raise TypeError(f"recipe: expected an SLRNetRecipe, got {type(recipe).__name__}")
        from ..losses import CodeConsistencyLoss, GatedClassBalancedCE, MaskConsistencyLoss
        from ..pseudo import SLRNetPseudoLabel

        r = self.recipe = recipe
        self.mask_loss = MaskConsistencyLoss()
        self.code_loss = CodeConsistencyLoss(keep_ties=r.keep_ties)
        self.seg_loss = GatedClassBalancedCE(gate=r.gate)
        self.pseudo = SLRNetPseudoLabel(bg_factor=r.bg_factor, fg_factor=r.fg_factor, min_thre=r.min_thre,
                                        pamr_iters=r.pamr_iters, pamr_dilations=tuple(r.pamr_dilations))

    def views(self, x: Tensor, model: nn.Module, random_flip: bool = True) -> tuple[Tensor, bool | Tensor]:
        """The second view of ``x`` (fitted to the backbone's input multiple) and its flip mask.

        With ``view_flip`` each image is flipped with probability 0.5 (torch's global RNG) unless
        ``random_flip=False`` (evaluation: no flip, no RNG draw).
        """
        from ..layers import make_view

        flip: bool | Tensor = False
        if self.recipe.view_flip and random_flip:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x2 = make_view(x, scale=self.recipe.view_scale, flip=flip)
        fit = getattr(unwrap_model(model), "fit_input", None)
        return (fit(x2) if fit is not None else x2), flip

    @torch.no_grad()
    def pseudo_label(self, probs: Tensor, images: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """:class:`~wsseg.pseudo.SLRNetPseudoLabel` of view-averaged ``probs`` at the crop size (no grad)."""
        pl = self.pseudo(probs.detach().float(), denormalize(images.float(), mode="float"), labels)
        if valid is not None:
            pl = pl.masked_fill(~valid, self.pseudo.ignore_index)
        return pl

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step``."""
        from ..layers import inverse_view, ngwp_score

        r = self.recipe
        x1, y, valid = check_training_batch(batch, model, step)
        x2, flip = self.views(x1, model)

        # 1. both views through the network (shared dictionary)
        out = model(x1, x2)
        p1, p2 = out.seg_logits1.softmax(dim=1), out.seg_logits2.softmax(dim=1)
        p_aux = out.aux_logits.softmax(dim=1)

        # 2. classification: nGWP scores of each head, view 2 on its own grid
        def cls(logits: Tensor, probs: Tensor) -> Tensor:
            return F.multilabel_soft_margin_loss(ngwp_score(logits, probs), y)

        l_cls = cls(out.seg_logits1, p1) + cls(out.seg_logits2, p2) + r.aux_weight * cls(out.aux_logits, p_aux)
        loss = r.w_cls * l_cls
        logs: dict[str, float] = {"loss_cls": float(l_cls.detach())}

        # 3. cross-view consistency on the view-1 grid
        grid = out.seg_logits1.shape[-2:]
        p2_inv = inverse_view(p2, grid, flip=flip)
        if r.w_mask > 0:
            l_mask = self.mask_loss(p1, p2_inv, y)
            loss = loss + r.w_mask * l_mask
            logs["loss_mask"] = float(l_mask.detach())
        if r.w_code > 0:
            l_code = self.code_loss(out.codes1, inverse_view(out.codes2, grid, flip=flip))
            loss = loss + r.w_code * l_code
            logs["loss_code"] = float(l_code.detach())

        # 4. segmentation on the PAMR pseudo label, after the warm-up epochs
        if r.w_seg > 0 and step >= r.seg_start_iters:
            pl = self.pseudo_label((p1 + p2_inv) / 2.0, x1, y, valid)
            seg2_inv = inverse_view(out.seg_logits2, grid, flip=flip)
            l_seg = (self.seg_loss(out.seg_logits1, pl, y) + self.seg_loss(seg2_inv, pl, y)
                     + r.aux_weight * self.seg_loss(out.aux_logits, pl, y))
            loss = loss + r.w_seg * l_seg
            logs["loss_seg"] = float(l_seg.detach())
            logs["pl_ignore_frac"] = float((pl == self.pseudo.ignore_index).float().mean())
            logs["pl_fg_frac"] = float(((pl > 0) & (pl != self.pseudo.ignore_index)).float().mean())

        logs["loss"] = float(loss.detach())
        return loss, logs

    def __repr__(self) -> str:
        r = self.recipe
        return (f"SLRNetTrainingStep(recipe={r.recipe!r}, weights=({r.w_cls}, {r.w_mask}, {r.w_code}, {r.w_seg}), "
                f"seg_start_iters={r.seg_start_iters})")


class SLRNetMethod(TrainingMethod):
    """SLRNet on the shared training engine: the network, SGD Nesterov, constant-then-cosine lr,
    :class:`SLRNetTrainingStep`.

    Diagnostics: ``cam`` is the single-view foreground masks (SLRNet has no separate CAM), ``pseudo_label``
    the training target (both views, PAMR, relative thresholds) and ``predict`` the single-view masks
    (returned as log-probabilities upsampled bilinearly with ``align_corners=True``, so their argmax and
    softmax equal the official upsampled masks). The official test protocol (5 scales × flip, background
    power 3, CRF) is ``--eval-msc slrnet --eval-crf slrnet`` plus :class:`~wsseg.pseudo.SLRNetPostprocess`.
    No extra training state: dropout and the stochastic gate draw from torch's global RNG, which the
    engine checkpoints.

    Args:
        recipe: an :class:`SLRNetRecipe` (default: the official VOC recipe).

    Example:
        >>> m = SLRNetMethod(SLRNetRecipe(crop_size=33, batch_size=2, seg_start_iters=0, pamr_iters=2))
        >>> net = m.build_model(2, backbone="resnet38d_w16", decoder_dim=8)
        >>> batch = {"image": torch.randn(2, 3, 33, 33), "label": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
        >>> loss, logs = m.training_step(net, batch, step=0)
        >>> sorted(k for k in logs if k.startswith("loss_"))
        ['loss_cls', 'loss_code', 'loss_mask', 'loss_seg']

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, tools/train_voc_wss.py,
        tools/infer_voc.py.
    """

    name = "slrnet"
    find_unused_parameters = False
    reuse_eval_forward = True       # cam and predict read one single-view forward (evaluate_method)
    log_keys = ("loss", "loss_cls", "loss_mask", "loss_code", "loss_seg", "pl_ignore_frac", "pl_fg_frac")

    def __init__(self, recipe: SLRNetRecipe | None = None) -> None:
        recipe = SLRNetRecipe() if recipe is None else recipe
        if not isinstance(recipe, SLRNetRecipe):
            raise TypeError(f"recipe: expected an SLRNetRecipe, got {type(recipe).__name__}")
        super().__init__(recipe)
        self.step_fn = SLRNetTrainingStep(recipe)

    # ------------------------------------------------------------------ construction
    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """``create_model("slrnet", ...)`` with the recipe's factorisation and gate settings.

        ``decoder_dim`` (the shared CLI flag) is the feature width d (official 256).
        """
        from ..models import create_model

        r = self.recipe
        kw = dict(kwargs)
        if "decoder_dim" in kw:
            dim = kw.pop("decoder_dim")
            if dim is not None:
                kw["feature_dim"] = int(dim)
        for name in ("lowrank_iters", "temperature", "normalize_tokens", "detach_init", "sg_alpha"):
            kw.setdefault(name, getattr(r, name))
        return create_model("slrnet", num_classes=num_classes, **kw)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """SGD with Nesterov momentum over the model's four groups (×1 / ×2 / ×10 / ×20, no decay on biases).

        Raises:
            TypeError: if ``model`` has no ``param_groups`` method.
        """
        if not callable(getattr(model, "param_groups", None)):
            raise TypeError(f"model: expected a model with a param_groups(base_lr, ...) method, "
                            f"got {type(model).__name__}")
        r = self.recipe
        groups = model.param_groups(r.lr, weight_decay=r.weight_decay, bias_lr_mult=r.bias_lr_mult,
                                    head_lr_mult=r.head_lr_mult, head_bias_lr_mult=r.head_bias_lr_mult)
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum, nesterov=r.nesterov, weight_decay=r.weight_decay)

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """:class:`~wsseg.optim.WarmupCosineLR` (constant for ``warmup_iters``, cosine over ``cosine_iters``)."""
        from ..optim import WarmupCosineLR

        r = self.recipe
        return WarmupCosineLR(optimizer, warmup_iters=r.warmup_iters, t_max=r.cosine_iters, eta_min=r.eta_min)

    def train_transform(self, long_side: int | None = None) -> Any:
        """The official pipeline, :func:`~wsseg.data.slrnet_train_transform`.

        RandomResizedCrop (``crop_size``, area ``scale_range``, ratio (3/4, 4/3), bicubic) → flip
        (``hflip_p``) → ColorJitter (``jitter``, p = 1) → ImageNet normalisation. ``long_side`` (optional,
        not official) first resizes each image's longer side.
        """
        from ..data import slrnet_train_transform

        r = self.recipe
        return slrnet_train_transform(r.crop_size, scale=r.scale_range, hflip_p=r.hflip_p, jitter=r.jitter,
                                      seed=r.seed, long_side=long_side)

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """One SLRNet iteration (:class:`SLRNetTrainingStep`)."""
        return self.step_fn(model, batch, step)

    # ------------------------------------------------------------------ inference
    def cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """Single-view foreground masks ``(B, K, H, W)`` in [0, 1] (:meth:`~wsseg.models.SLRNet.cam`)."""
        core = unwrap_model(model)
        with torch.no_grad():
            cam = core.cam(core.fit_input(images))
        return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=True).clamp_(0.0, 1.0)

    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                     cam: Tensor | None = None) -> Tensor:
        """The training target: both views (no random flip), view-averaged masks, PAMR, relative thresholds
        (``cam`` unused)."""
        from ..layers import inverse_view

        core = unwrap_model(model)
        x1 = core.fit_input(images)
        with torch.no_grad():
            x2, flip = self.step_fn.views(x1, core, random_flip=False)
            out = core(x1, x2)
            p1 = out.seg_logits1.float().softmax(dim=1)
            p2 = inverse_view(out.seg_logits2.float().softmax(dim=1), p1.shape[-2:], flip=flip)
            pl = self.step_fn.pseudo_label((p1 + p2) / 2.0, x1, labels.to(p1.dtype))
        if pl.shape[-2:] != images.shape[-2:]:
            pl = F.interpolate(pl[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0].long()
        if valid is not None:
            pl = pl.masked_fill(~valid.bool(), self.step_fn.pseudo.ignore_index)
        return pl

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Single-view log-masks ``(B, K+1, H, W)``: log of the softmax masks upsampled to the images."""
        core = unwrap_model(model)
        out = core(core.fit_input(images))
        probs = F.interpolate(out.seg_logits1.float().softmax(dim=1), size=images.shape[-2:], mode="bilinear",
                              align_corners=True)
        return probs.clamp_min(1e-12).log()
