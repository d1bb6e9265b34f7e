"""SLRNet's pseudo label: view-averaged masks → PAMR → relative per-class thresholds → one class or ignore."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsseg.layers._neighbors import check_dilations
from wsseg.layers.pamr import pamr
from wsseg.utils.validation import check_labels, check_tensor

__all__ = ["SLRNetPseudoLabel", "slrnet_pseudo_label"]

_DILATIONS = (1, 2, 4, 8, 12, 24)


def _check_hparams(bg_factor, fg_factor, min_thre, pamr_iters, pamr_dilations, ignore_index):
    for v, n in ((bg_factor, "bg_factor"), (fg_factor, "fg_factor"), (min_thre, "min_thre")):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{n}: expected a float, got {type(v).__name__}")
        if not v >= 0:
            raise ValueError(f"{n}: expected a non-negative float, got {v}")
    if isinstance(pamr_iters, bool) or not isinstance(pamr_iters, int):
        raise TypeError(f"pamr_iters: expected an int, got {type(pamr_iters).__name__}")
    if pamr_iters < 0:
        raise ValueError(f"pamr_iters: expected an int >= 0 (0 skips PAMR), got {pamr_iters}")
    try:
        pamr_dilations = check_dilations(pamr_dilations)
    except (TypeError, ValueError) as err:
        raise type(err)(f"pamr_{err}") from None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    return float(bg_factor), float(fg_factor), float(min_thre), pamr_dilations


@torch.no_grad()
def slrnet_pseudo_label(probs: Tensor, image: Tensor, labels: Tensor, *, bg_factor: float = 0.7,
                        fg_factor: float = 0.6, min_thre: float = 0.2, pamr_iters: int = 10,
                        pamr_dilations: Sequence[int] = _DILATIONS, ignore_index: int = 255) -> Tensor:
    r"""SLRNet's PAMR-refined pseudo label with relative per-image, per-class thresholds.

    Steps, in the official order (``Net.forward`` → ``run_pamr`` → ``pseudo_gtmask`` →
    ``balanced_mask_loss_ce``), vectorised over the batch:

    1. the image is resized to the mask grid ``(h, w)`` (bilinear, ``align_corners=True``) and the masks
       are refined there by :func:`wsseg.layers.pamr` (``pamr_iters`` steps, ``pamr_dilations``);
    2. the refined masks are upsampled to the image size ``(H, W)`` (bilinear, ``align_corners=True``);
    3. the foreground channels are multiplied by the image labels (absent classes → 0), giving
       :math:`\tilde P`;
    4. per image and channel, :math:`t_0 = \max(f_{bg} \max_p \tilde P_0, m)` and
       :math:`t_k = \max(f_{fg} \max_p \tilde P_k, m)` for :math:`k \ge 1`; a pixel is positive for
       channel :math:`c` if :math:`\tilde P_c > t_c` (strict);
    5. a pixel positive for exactly one channel gets that channel; pixels positive for none or for
       several channels (ambiguous) get ``ignore_index``.

    .. math::
        Y(p) = \begin{cases} c & \text{if } \{c' : \tilde P_{c'}(p) > t_{c'}\} = \{c\} \\
        \text{ignore} & \text{otherwise} \end{cases}

    Faithful defaults: ``bg_factor = 0.7`` is hard-coded in the official VOC code and ``fg_factor = 0.6``
    / ``min_thre = 0.2`` are the function defaults it uses (the config's ``cutoff_top`` / ``cutoff_low``
    are never passed); here all three are options. The unrefined masks are not returned (the official
    code only logs them). No gradient; the output is detached.

    Args:
        probs: view-averaged class probabilities :math:`\bar P = (P^{(1)} + \mathrm{inv}(P^{(2)}))/2` at
            the feature grid, background at channel 0 (any non-negative scores work).
        image: the **de-normalised** input image (any consistent intensity range; PAMR is scale-invariant).
        labels: image-level labels in {0, 1} without background (float, int or bool); the foreground
            channels are multiplied by them.
        bg_factor: relative threshold of the background channel (0.7).
        fg_factor: relative threshold of the foreground channels (0.6).
        min_thre: absolute floor of every threshold (0.2).
        pamr_iters: PAMR steps (10); 0 skips the refinement (the image resize is then unused).
        pamr_dilations: PAMR dilations ((1, 2, 4, 8, 12, 24)).
        ignore_index: label of unassigned / ambiguous pixels (255).

    Returns:
        The pseudo label, ``torch.long``, values in ``{0..K} ∪ {ignore_index}``.

    Shape:
        - probs: :math:`(B, K + 1, h, w)`
        - image: :math:`(B, 3, H, W)`
        - labels: :math:`(B, K)`
        - output: :math:`(B, H, W)`

    Raises:
        TypeError: if ``probs`` / ``image`` is not a floating-point tensor, ``labels`` not a tensor, or a
            hyperparameter has the wrong type.
        ValueError: on wrong dimensions, a batch mismatch, ``image`` without 3 channels, ``labels`` not
            ``(B, K)``, or a negative hyperparameter.

    Example:
        >>> probs = torch.tensor([[0.9, 0.5, 0.1], [0.1, 0.5, 0.9]]).reshape(1, 2, 1, 3)  # bg, class 1
        >>> image = torch.zeros(1, 3, 1, 3)
        >>> wsseg.pseudo.slrnet_pseudo_label(probs, image, torch.ones(1, 1), pamr_iters=0).tolist()
        [[[0, 255, 1]]]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py`` (``Net.forward``,
        pseudo-label block), ``models/single_stage.py`` (``run_pamr``, ``pseudo_gtmask``,
        ``balanced_mask_loss_ce``: argmax / ignore); PAMR from 1-Stage-WSeg (Araslanov & Roth, CVPR 2020).
    """
    check_tensor(probs, "probs", ndim=4, dims="(B, K+1, h, w)", dtype="float")
    check_tensor(image, "image", ndim=4, dims="(B, 3, H, W)", dtype="float")
    b, c = probs.shape[:2]
    if c < 2:
        raise ValueError(f"probs: expected at least 2 channels (background + classes), got shape {tuple(probs.shape)}")
    if image.shape[0] != b or image.shape[1] != 3:
        raise ValueError(f"image: expected shape ({b}, 3, H, W) (batch of probs), got {tuple(image.shape)}")
    check_labels(labels, "labels", b, c - 1)
    bg_factor, fg_factor, min_thre, pamr_dilations = _check_hparams(
        bg_factor, fg_factor, min_thre, pamr_iters, pamr_dilations, ignore_index)

    if image.device != probs.device:
        raise ValueError(f"image: expected device {probs.device} (that of probs), got {image.device}")

    # official: float32, no autocast (float64 inputs stay float64)
    dtype = torch.promote_types(probs.dtype, torch.float32)
    masks = probs.to(dtype)
    if pamr_iters > 0:
        small = F.interpolate(image.to(dtype), size=probs.shape[-2:], mode="bilinear", align_corners=True)
        masks = pamr(small, masks, dilations=pamr_dilations, num_iter=pamr_iters)
    masks = F.interpolate(masks, size=image.shape[-2:], mode="bilinear", align_corners=True)
    fg = masks[:, 1:] * labels.to(device=masks.device, dtype=masks.dtype)[:, :, None, None]
    masks = torch.cat([masks[:, :1], fg], dim=1)

    factors = torch.full((1, c), fg_factor, dtype=masks.dtype, device=masks.device)
    factors[:, 0] = bg_factor
    thresholds = (masks.flatten(2).amax(dim=-1) * factors).clamp_min(min_thre)     # (B, C)
    positive = masks > thresholds[:, :, None, None]                                 # (B, C, H, W)
    single = positive.sum(dim=1) == 1
    label = positive.to(torch.uint8).argmax(dim=1)
    return torch.where(single, label, torch.full_like(label, ignore_index))


class SLRNetPseudoLabel(nn.Module):
    r"""Module form of :func:`slrnet_pseudo_label` (PAMR + relative thresholds 0.7 / 0.6, floor 0.2).

    Parameter-free, no gradient. ``forward(probs, image, labels)``: view-averaged probabilities at the
    feature grid, de-normalised image, image labels → ``LongTensor (B, H, W)`` at the image size.

    Args:
        bg_factor: relative background threshold (0.7, hard-coded officially).
        fg_factor: relative foreground threshold (0.6).
        min_thre: absolute floor of the thresholds (0.2).
        pamr_iters: PAMR steps (10).
        pamr_dilations: PAMR dilations ((1, 2, 4, 8, 12, 24)).
        ignore_index: label of unassigned / ambiguous pixels (255).

    Shape:
        - probs: :math:`(B, K + 1, h, w)`
        - image: :math:`(B, 3, H, W)`
        - labels: :math:`(B, K)`
        - output: :math:`(B, H, W)`

    Raises:
        TypeError / ValueError: on invalid hyperparameters (at construction); see
            :func:`slrnet_pseudo_label` for the input checks.

    Example:
        >>> make = wsseg.pseudo.SLRNetPseudoLabel(pamr_iters=2)
        >>> probs = torch.rand(2, 4, 8, 8).softmax(dim=1)
        >>> make(probs, torch.rand(2, 3, 16, 16), torch.tensor([[1, 0, 1], [0, 1, 0]])).shape
        torch.Size([2, 16, 16])

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``models/slrnet.py``,
        ``models/single_stage.py`` (``pseudo_gtmask``).
    """

    def __init__(self, bg_factor: float = 0.7, fg_factor: float = 0.6, min_thre: float = 0.2,
                 pamr_iters: int = 10, pamr_dilations: Sequence[int] = _DILATIONS,
                 ignore_index: int = 255) -> None:
        super().__init__()
        (self.bg_factor, self.fg_factor, self.min_thre, self.pamr_dilations) = _check_hparams(
            bg_factor, fg_factor, min_thre, pamr_iters, pamr_dilations, ignore_index)
        self.pamr_iters = pamr_iters
        self.ignore_index = ignore_index

    def forward(self, probs: Tensor, image: Tensor, labels: Tensor) -> Tensor:
        """Pseudo label ``(B, H, W)``."""
        return slrnet_pseudo_label(probs, image, labels, bg_factor=self.bg_factor, fg_factor=self.fg_factor,
                                   min_thre=self.min_thre, pamr_iters=self.pamr_iters,
                                   pamr_dilations=self.pamr_dilations, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return (f"bg_factor={self.bg_factor}, fg_factor={self.fg_factor}, min_thre={self.min_thre}, "
                f"pamr_iters={self.pamr_iters}, pamr_dilations={self.pamr_dilations}, "
                f"ignore_index={self.ignore_index}")
