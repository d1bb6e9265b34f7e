"""ViT-PCM's training recipe and its per-iteration loss composition, in one readable place (``apc.md`` §2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import unwrap_model
from .method import TrainingMethod, check_training_batch, zero_weighted
from .recipe import RecipeMixin

__all__ = ["ViTPCMMethod", "ViTPCMRecipe", "ViTPCMTrainingStep", "vitpcm_pseudo_label"]

_K_MODES = ("max", "fixed", "ratio_to_max", "ratio_consecutive")
#: Official VOC schedule: 10,582 train_aug images / (16 per GPU × 4 GPUs) = 166 iterations per epoch.
_IPE = 166
#: Fractions kept by :meth:`ViTPCMRecipe.scaled` (warm-up stage: 1 of 80 epochs).
_FRACTIONS = {"stage_a_iters": 1 / 80}


@dataclass
class ViTPCMRecipe(RecipeMixin):
    """Every hyperparameter of the ViT-PCM training recipe, with the official VOC values as defaults.

    Official values: ``configs/voc12.yaml`` and ``main.py`` of github.com/deepplants/ViT-PCM (``apc.md``
    §2.6). The official loop counts epochs of the 10,582 ``train_aug`` images at a global batch of 64
    (16 per GPU × 4); here everything is in iterations: 80 epochs = 13,280 iterations, the warm-up stage
    (only the HV-BiLSTM and the classifier train, Adam lr 1e-3) is the first epoch (166 iterations), then
    the last ``num_unfrozen_blocks`` encoder blocks and the final norm join at Adam lr 1e-4, constant.
    The official code re-compiles the model with a **new** Adam at the stage switch; the method clears
    the optimizer state there (:meth:`ViTPCMMethod.after_optimizer_step`).

    **Schedule scaling rule** (:meth:`scaled`): ``stage_a_iters`` keeps its official fraction (1/80) of
    the run unless it was set explicitly.

    Deviations, documented: the official run keeps the checkpoint with the best **val** mIoU (early stopping,
    patience 60): wsseg reports the last iteration. The official image labels come from the GT masks
    (``seg2multihot``); wsseg uses the dataset's image-level labels with the background entry always 1.
    Images are normalised with the engine's ImageNet statistics (vit-keras scales to [-1, 1]).

    Presets (:meth:`preset`): ``"vitpcm"`` (VOC, ``crop_prob`` 0.3) and ``"vitpcm_coco"`` (``crop_prob`` 0).

    Args:
        recipe: ``"vitpcm"`` or ``"vitpcm_coco"``.
        crop_size: side of the square view 1 (384; the grid is ``crop_size / patch_size``).
        view2_size: side of the square view 2 (``None``: ``crop_size // 2``, 192 officially).
        view2_crop: side of the view-2 crop in pixels (``None``: the multiple of ``patch_size`` nearest to
            ``crop_size / 3``, 128 officially = 8 patches).
        crop_prob: probability of cropping view 2 (0.3 VOC, 0 COCO).
        patch_size: the backbone's patch size (16; 14 for DINOv2); checked against the model in ``setup``.
        batch_size: global batch (64; must be divisible by 4 per process: the 2 × 2 mosaic).
        iters: total iterations (13,280 = 80 epochs).
        stage_a_iters: warm-up stage length (166 = 1 epoch).
        lr_stage_a, lr: Adam learning rates of the two stages (1e-3, 1e-4), constant.
        betas, eps: Adam (Keras defaults (0.9, 0.999), 1e-7).
        w_mce, w_reg, w_et: weights of the pooled BCE, the classifier L2 and the equivariance loss (1, 1, 1;
            0 switches a term off like the official ``LOSS_*`` flags).
        hidden, dropout, num_unfrozen_blocks: :class:`~wsseg.models.ViTPCM` (192, 0.2, 5).
        k_mode, k, rho, k_min, k_max: the pooling (:class:`~wsseg.layers.AdaptiveKPooling`; ``"max"`` is
            ViT-PCM; the other modes are APC's, experimental).
        bce_eps: Keras clipping of the pooled BCE and the equivariance CE (1e-7).
        seed: base seed (1234).
    """

    recipe: str = "vitpcm"
    crop_size: int = 384
    view2_size: int | None = None
    view2_crop: int | None = None
    crop_prob: float = 0.3
    patch_size: int = 16
    batch_size: int = 64
    iters: int = 80 * _IPE
    stage_a_iters: int = _IPE
    lr_stage_a: float = 1e-3
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-7
    w_mce: float = 1.0
    w_reg: float = 1.0
    w_et: float = 1.0
    hidden: int = 192
    dropout: float = 0.2
    num_unfrozen_blocks: int = 5
    k_mode: str = "max"
    k: int | None = None
    rho: float | None = None
    k_min: int = 1
    k_max: int | None = None
    bce_eps: float = 1e-7
    seed: int = 1234
    _pinned: tuple[str, ...] = field(default=(), repr=False, compare=False)

    _presets = ("vitpcm", "vitpcm_coco")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raises ValueError naming the field."""
        if self.recipe not in self._presets:
            raise ValueError(f"recipe: expected one of {self._presets}, got {self.recipe!r}")
        for name in ("crop_size", "patch_size", "batch_size", "iters", "hidden", "k_min"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        for name in ("stage_a_iters", "num_unfrozen_blocks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
        for name in ("view2_size", "view2_crop", "k", "k_max"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name}: expected a positive int or None, got {v!r}")
        for name in ("lr_stage_a", "lr", "w_mce", "w_reg", "w_et", "eps", "bce_eps"):
            if not float(getattr(self, name)) >= 0:
                raise ValueError(f"{name}: expected a non-negative float, got {getattr(self, name)}")
        for name in ("crop_prob", "dropout"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise ValueError(f"{name}: expected a value in [0, 1], got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in self.betas):
            raise ValueError(f"betas: expected two values in [0, 1), got {self.betas}")
        if self.k_mode not in _K_MODES:
            raise ValueError(f"k_mode: expected one of {_K_MODES}, got {self.k_mode!r}")
        if self.crop_size % self.patch_size:
            raise ValueError(f"crop_size: expected a multiple of patch_size={self.patch_size}, got {self.crop_size}")
        if self.view2_px % self.patch_size or self.view2_crop_px % self.patch_size:
            raise ValueError(f"view2_size / view2_crop: expected multiples of patch_size={self.patch_size}, got "
                             f"{self.view2_px} / {self.view2_crop_px}")
        if not self.patch_size <= self.view2_crop_px <= self.crop_size:
            raise ValueError(f"view2_crop: expected a value in [patch_size, crop_size], got {self.view2_crop_px}")
        if self.batch_size % 4:
            raise ValueError(f"batch_size: expected a multiple of 4 (the 2 x 2 mosaic of view 2), got {self.batch_size}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def view2_px(self) -> int:
        """Side of view 2 in pixels (``view2_size`` or ``crop_size // 2``)."""
        return self.view2_size if self.view2_size is not None else self.crop_size // 2

    @property
    def view2_crop_px(self) -> int:
        """Side of the view-2 crop in pixels (``view2_crop`` or the patch multiple nearest to crop_size / 3)."""
        if self.view2_crop is not None:
            return self.view2_crop
        return max(1, round(self.crop_size / (3 * self.patch_size))) * self.patch_size

    @classmethod
    def preset(cls, name: str = "vitpcm", **overrides: Any):
        """``"vitpcm"`` (VOC, official) or ``"vitpcm_coco"`` (COCO: ``crop_prob`` 0).

        Example:
            >>> ViTPCMRecipe.preset("vitpcm_coco").crop_prob
            0.0
        """
        if name not in cls._presets:
            raise ValueError(f"name: expected one of {cls._presets}, got {name!r}")
        if name == "vitpcm_coco":
            return cls(**{"recipe": name, "crop_prob": 0.0, **overrides})
        return cls(**{"recipe": name, **overrides})

    def scaled(self, iters: int):
        """A copy for a run of ``iters`` iterations keeping the warm-up stage's fraction (1/80).

        Example:
            >>> r = ViTPCMRecipe().scaled(400)
            >>> r.iters, r.stage_a_iters
            (400, 5)
        """
        return self._scale_schedule(iters, _FRACTIONS)


def _labels_with_background(y: Tensor) -> Tensor:
    """``(B, K)`` image labels → ``(B, K + 1)`` with the background entry 1 (wsseg's faithful choice)."""
    return torch.cat([torch.ones_like(y[:, :1]), y], dim=1)


@torch.no_grad()
def vitpcm_pseudo_label(probs: Tensor, labels: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    r"""ViT-PCM's pseudo label ("BPM"): merged patch probabilities, bilinear upsampling, argmax.

    .. math::
        Y = \arg\max_c\ \mathrm{up}\big(\mathrm{merge}(P, [1; y])\big)_c

    with :func:`~wsseg.pseudo.merge_class_labels` and a bilinear ``align_corners=True`` resize to ``size``
    (official ``utils.resize``). No pixel is ignored.

    Args:
        probs: patch-class probabilities (background at channel 0).
        labels: image labels without background (the background entry 1 is prepended).
        size: output ``(H, W)``.

    Shape:
        - probs: :math:`(B, K + 1, G_h, G_w)`; labels: :math:`(B, K)`; output: :math:`(B, H, W)` long.

    Example:
        >>> p = torch.tensor([[[[0.9, 0.2]], [[0.1, 0.8]]]])      # (1, 2, 1, 2): bg, class 1
        >>> vitpcm_pseudo_label(p, torch.ones(1, 1), (1, 2)).tolist()
        [[[0, 1]]]

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, main.py (``test``), model.py
        (``infer``, ``merge_class_labels``).
    """
    from ..pseudo import merge_class_labels

    merged = merge_class_labels(probs.float(), _labels_with_background(labels.to(probs.device).float()))
    return F.interpolate(merged, size=tuple(size), mode="bilinear", align_corners=True).argmax(dim=1)


class ViTPCMTrainingStep:
    r"""One ViT-PCM iteration: ``VITPCM.train_step`` of the official code in one place.

    With :math:`x_1` the view-1 batch and :math:`x_2` the view-2 batch
    (:class:`~wsseg.data.ViTPCMTwoViewTransform`), :math:`y` the image labels with the background entry 1:

    1. target pass: the network on :math:`x_1` in **inference mode** (no dropout), no gradient →
       :math:`P^{sg}`;
    2. one training-mode call on :math:`x_1` and the 2 × 2 mosaic of :math:`x_2`
       (:func:`~wsseg.layers.mosaic_2x2`): pooled scores :math:`\hat y` and the mosaic's patch probabilities,
       split back into one grid per image (:func:`~wsseg.layers.unmosaic_2x2`) → :math:`P^{(2)}`;
    3. :math:`L_{mce}` = :class:`~wsseg.losses.PooledBCELoss` (:math:`\hat y, y`); :math:`L_{reg}` = the
       classifier's L2 penalty;
    4. :math:`L_{et}` = :class:`~wsseg.losses.EquivarianceLoss` (:math:`P^{(2)}`,
       merge(:func:`~wsseg.layers.patch_grid_view1_to_view2` (:math:`P^{sg}`), y)).

    .. math::
        L = w_{mce} L_{mce} + w_{reg} L_{reg} + w_{et} L_{et} \qquad (1, 1, 1)

    During the warm-up stage (``step < stage_a_iters``) the encoder runs without gradient
    (:attr:`~wsseg.models.ViTPCM.encoder_grad`), as the official frozen layers.

    Args:
        recipe: a :class:`ViTPCMRecipe`.

    Raises:
        TypeError: if ``recipe`` is not a :class:`ViTPCMRecipe`.

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``train_step``,
        ``merged_step``, ``compute_mce_loss``, ``compute_reg_loss``, ``compute_cce_loss``).
    """

    recipe_cls: type = ViTPCMRecipe
    #: whether later terms need the inference-mode pass even when ``w_et == 0`` (APC's pseudo labels)
    needs_target: bool = False

    def __init__(self, recipe: ViTPCMRecipe) -> None:
        if not isinstance(recipe, self.recipe_cls):
            raise TypeError(f"recipe: expected a {self.recipe_cls.__name__}, got {type(recipe).__name__}")
        from ..losses import EquivarianceLoss, PooledBCELoss

        self.recipe = recipe
        self.bce = PooledBCELoss(eps=recipe.bce_eps)
        self.et_loss = EquivarianceLoss(eps=recipe.bce_eps)

    @staticmethod
    def _view_keys(batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        for key in ("image_view2", "flips_view1", "flips_view2", "crop_box_view2"):
            if key not in batch:
                raise ValueError(f"batch: expected the ViTPCMTwoViewTransform key {key!r} "
                                 f"(use the method's train_transform), got keys {sorted(batch)}")
        return batch["image_view2"], batch["flips_view1"], batch["flips_view2"], batch["crop_box_view2"]

    @staticmethod
    @torch.no_grad()
    def target_pass(model: nn.Module, x1: Tensor) -> Any:
        """The network on ``x1`` in inference mode (no dropout), no gradient; restores the training mode."""
        core = unwrap_model(model)
        was_training = core.training
        core.eval()
        try:
            return core(x1)
        finally:
            core.train(was_training)

    def forward_losses(self, model: nn.Module, batch: Mapping[str, Tensor], step: int
                       ) -> tuple[Tensor, dict[str, float], dict[str, Any]]:
        """``(loss, logs, parts)``: the ViT-PCM terms; ``parts`` holds the outputs later terms reuse
        (``y_bg``, ``target``: the inference-mode pass, ``out``: the training pass on view 1)."""
        from ..layers import mosaic_2x2, patch_grid_view1_to_view2, unmosaic_2x2
        from ..pseudo import merge_class_labels

        r = self.recipe
        x1, y, _ = check_training_batch(batch, model, step)
        x2, flips1, flips2, boxes = self._view_keys(batch)
        if x1.shape[0] % 4:
            raise ValueError(f"batch: expected a per-process batch divisible by 4 (the 2 x 2 mosaic), got {x1.shape[0]}")
        core = unwrap_model(model)
        core.encoder_grad = step >= r.stage_a_iters
        y_bg = _labels_with_background(y.to(x1.dtype))
        target = self.target_pass(model, x1) if (r.w_et > 0 or self.needs_target) else None
        out, out_m = model(x1, mosaic_2x2(x2.to(x1.dtype)))
        loss = x1.new_zeros(())
        logs: dict[str, float] = {}
        if r.w_mce > 0:
            l_mce = self.bce(out.pooled.float(), y_bg.float())
            loss = loss + r.w_mce * l_mce
            logs["loss_mce"] = float(l_mce.detach())
        if r.w_reg > 0:
            l_reg = core.l2_penalty()
            loss = loss + r.w_reg * l_reg
            logs["loss_reg"] = float(l_reg.detach())
        if r.w_et > 0:
            p2 = unmosaic_2x2(out_m.patch_probs)
            y2 = merge_class_labels(patch_grid_view1_to_view2(target.patch_probs.float(), flips1, flips2, boxes,
                                                              out_size=p2.shape[-1]), y_bg.float())
            l_et = self.et_loss(p2.float(), y2)
            loss = loss + r.w_et * l_et
            logs["loss_et"] = float(l_et.detach())
        else:  # keep every parameter of the mosaic pass in the graph (DDP)
            loss = loss + zero_weighted(out_m.patch_logits)
        return loss, logs, {"y_bg": y_bg, "target": target, "out": out, "x1": x1, "y": y}

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """``(loss, logs)`` of iteration ``step``."""
        loss, logs, _ = self.forward_losses(model, batch, step)
        logs["loss"] = float(loss.detach())
        return loss, logs

    def __repr__(self) -> str:
        r = self.recipe
        return (f"{type(self).__name__}(recipe={r.recipe!r}, weights=({r.w_mce}, {r.w_reg}, {r.w_et}), "
                f"stage_a_iters={r.stage_a_iters}, k_mode={r.k_mode!r})")


class ViTPCMMethod(TrainingMethod):
    """ViT-PCM on the shared training engine: the network, Adam with the two-stage schedule,
    :class:`ViTPCMTrainingStep`.

    Diagnostics: ``cam`` is the merged foreground patch probabilities (ViT-PCM has no CAM), ``pseudo_label``
    the BPM (:func:`vitpcm_pseudo_label`) and ``predict`` the log of the patch probabilities upsampled
    bilinearly with ``align_corners=True`` (its argmax is the unconditioned segmentation). The official test
    protocol (960 × 960, CRF preset ``vitpcm``) is ``--eval-msc vitpcm --eval-crf vitpcm``.

    The optimizer has two groups (``encoder``: the trainable tail; ``heads``: HV-BiLSTM + classifier). The
    schedule gives the heads ``lr_stage_a`` and the encoder 0 during the warm-up stage (the encoder also gets
    no gradient then), and ``lr`` to both afterwards; at the switch the Adam state is cleared (the official
    code compiles a new optimizer).

    Args:
        recipe: a :class:`ViTPCMRecipe` (default: the official VOC recipe).

    Example:
        >>> r = ViTPCMRecipe(crop_size=32, patch_size=16, batch_size=4, hidden=4, num_unfrozen_blocks=1)
        >>> m = ViTPCMMethod(r)
        >>> net = m.build_model(2, backbone="test_vit")
        >>> t = m.train_transform()
        >>> import numpy as np
        >>> samples = [t({"image": np.zeros((40, 50, 3), np.uint8), "label": np.array([1.0, 0.0])}) for _ in range(4)]
        >>> batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in samples[0]}
        >>> loss, logs = m.training_step(net, batch, step=0)
        >>> sorted(logs)
        ['loss', 'loss_et', 'loss_mce', 'loss_reg']

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, main.py (``train``), model.py.
    """

    name = "vitpcm"
    find_unused_parameters = True   # the encoder tail gets no gradient during the warm-up stage
    reuse_eval_forward = True       # cam, pseudo_label and predict read one forward (evaluate_method)
    log_keys = ("loss", "loss_mce", "loss_reg", "loss_et")
    recipe_cls: type = ViTPCMRecipe
    step_cls: type = ViTPCMTrainingStep

    def __init__(self, recipe: Any = None) -> None:
        recipe = self.recipe_cls() if recipe is None else recipe
        if not isinstance(recipe, self.recipe_cls):
            raise TypeError(f"recipe: expected a {self.recipe_cls.__name__}, got {type(recipe).__name__}")
        super().__init__(recipe)
        self.step_fn = self.step_cls(recipe)
        self._optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ construction
    def _model_kwargs(self) -> dict[str, Any]:
        r = self.recipe
        return {name: getattr(r, name) for name in ("hidden", "dropout", "num_unfrozen_blocks", "k_mode", "k", "rho",
                                                     "k_min", "k_max")}

    def build_model(self, num_classes: int, **kwargs: Any) -> nn.Module:
        """``create_model("vitpcm", ...)`` with the recipe's head and pooling settings (``decoder_dim`` ignored)."""
        from ..models import create_model

        kw = {k: v for k, v in kwargs.items() if k != "decoder_dim"}
        for name, value in self._model_kwargs().items():
            kw.setdefault(name, value)
        return create_model(self.name, num_classes=num_classes, **kw)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Check that the recipe's ``patch_size`` is the model's (the views are cut on the patch grid).

        Raises:
            ValueError: if they differ.
        """
        stride = getattr(unwrap_model(model), "stride", None)
        if stride is not None and int(stride) != self.recipe.patch_size:
            raise ValueError(f"recipe.patch_size: the backbone's patch size is {stride}, the recipe says "
                             f"{self.recipe.patch_size}; pass --set patch_size={stride}")

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam (Keras defaults) over the model's groups, no weight decay (the classifier's L2 is a loss term)."""
        r = self.recipe
        groups = unwrap_model(model).param_groups(r.lr)
        self._optimizer = torch.optim.Adam(groups, lr=r.lr, betas=tuple(r.betas), eps=r.eps)
        return self._optimizer

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Per-group :class:`torch.optim.lr_scheduler.LambdaLR`: the two constant stages (``"encoder"``: 0 then
        ``lr``; every other group, the new modules: ``lr_stage_a`` then ``lr``)."""
        r = self.recipe
        a, ratio = r.stage_a_iters, (r.lr_stage_a / r.lr if r.lr > 0 else 0.0)

        def heads(s: int) -> float:
            return ratio if s < a else 1.0

        def others(s: int) -> float:
            return 0.0 if s < a else 1.0

        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, [others if g.get("name") == "encoder" else heads for g in optimizer.param_groups])

    def train_transform(self, long_side: int | None = None) -> Any:
        """:class:`~wsseg.data.ViTPCMTwoViewTransform` with the recipe's sizes, ImageNet normalisation
        (``long_side`` is not used: both views are square resizes of the whole image)."""
        from ..data import ViTPCMTwoViewTransform
        from ..utils.image import IMAGENET_MEAN, IMAGENET_STD

        r = self.recipe
        return ViTPCMTwoViewTransform(image_size=r.crop_size, view2_size=r.view2_px, patch_size=r.patch_size,
                                      crop_prob=r.crop_prob, crop_size=r.view2_crop_px, mean=IMAGENET_MEAN,
                                      std=IMAGENET_STD, seed=r.seed)

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, batch: Mapping[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """One iteration (:class:`ViTPCMTrainingStep`)."""
        return self.step_fn(model, batch, step)

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """At the end of the warm-up stage, clear the Adam state (the official fresh optimizer)."""
        if self._optimizer is not None and step + 1 == self.recipe.stage_a_iters:
            self._optimizer.state.clear()

    # ------------------------------------------------------------------ inference
    def _probs(self, model: nn.Module, images: Tensor) -> Tensor:
        core = unwrap_model(model)
        with torch.no_grad():
            return core(core.fit_input(images)).patch_probs.float()

    def cam(self, model: nn.Module, images: Tensor) -> Tensor:
        """A CAM-like diagnostic ``(B, K, H, W)`` in [0, 1]: each foreground class's patch probabilities
        rescaled to peak 1 over the grid (the first step of ``merge_class_labels``; 0 where the peak is 0),
        upsampled bilinearly (``align_corners=True``). ViT-PCM has no CAM; its pseudo label is
        :meth:`pseudo_label`."""
        from ..pseudo.merge_class_labels import divide_no_nan

        fg = self._probs(model, images)[:, 1:]
        fg = divide_no_nan(fg, fg.amax(dim=(2, 3), keepdim=True))
        return F.interpolate(fg, size=images.shape[-2:], mode="bilinear", align_corners=True).clamp(0.0, 1.0)

    def pseudo_label(self, model: nn.Module, images: Tensor, labels: Tensor, valid: Tensor | None = None,
                     cam: Tensor | None = None) -> Tensor:
        """The BPM (:func:`vitpcm_pseudo_label`); ``cam`` unused; pixels outside ``valid`` ignored."""
        pl = vitpcm_pseudo_label(self._probs(model, images), labels, images.shape[-2:])
        if valid is not None:
            pl = pl.masked_fill(~valid.bool(), 255)
        return pl

    def predict(self, model: nn.Module, images: Tensor) -> Tensor:
        """Log patch probabilities ``(B, K+1, H, W)`` upsampled bilinearly (``align_corners=True``)."""
        core = unwrap_model(model)
        probs = core(core.fit_input(images)).patch_probs.float()
        up = F.interpolate(probs, size=images.shape[-2:], mode="bilinear", align_corners=True)
        return up.clamp_min(1e-12).log()
