"""Direct thresholding of a normalised CAM into a pseudo label (``common.md`` §2.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsseg.utils.validation import check_labels, check_shape, check_tensor

__all__ = ["CAMToLabel", "cam_to_label"]


def _check_valid(valid: Tensor | None, B: int, H: int, W: int) -> None:
    if valid is not None:
        check_tensor(valid, "valid", ndim=3, dims="(B, H, W)", dtype="bool")
        check_shape(valid, "valid", (B, H, W), "(B, H, W)")


def cam_to_label(cam: Tensor, labels: Tensor, valid: Tensor | None = None, *, bkg_thre: float = 0.45,
                 high: float | None = None, low: float | None = None, ignore_index: int = 255) -> Tensor:
    r"""Threshold a min–max normalised CAM into a pseudo label, optionally with an ignore band.

    The CAM is restricted to the classes of the image, the strongest class wins, and weak pixels become
    background:

    .. math::
        v = y \odot \hat M,\qquad Y = 1 + \arg\max_k v_k,\qquad
        Y = 0 \text{ where } \max_k v_k \le \tau_{bkg}

    With the ignore band (``high`` and ``low`` given, official ``ignore_mid=True``) two more rules are
    applied in this order: :math:`Y = \text{ignore}` where :math:`\max_k v_k \le \tau_{hi}`, then
    :math:`Y = 0` where :math:`\max_k v_k \le \tau_{lo}`. Finally :math:`Y = \text{ignore}` outside
    ``valid``. Ties are broken towards the lowest class index. Runs under ``torch.no_grad()``.

    Args:
        cam: normalised CAM :math:`\hat M` in [0, 1] (from :func:`wsseg.layers.multi_scale_cam`).
        labels: image-level labels in {0, 1} (no background entry).
        valid: real-image region of a padded crop; ``None`` means everything is valid.
        bkg_thre: background threshold :math:`\tau_{bkg}` (AFA/TSCD 0.45).
        high: upper threshold of the ignore band (AFA/TSCD 0.55); give together with ``low``.
        low: lower threshold of the ignore band (AFA/TSCD 0.35).
        ignore_index: label value of ignored pixels.

    Shape:
        - cam: :math:`(B, K, H, W)`.
        - labels: :math:`(B, K)`.
        - valid: :math:`(B, H, W)`, bool.
        - output: :math:`(B, H, W)`, int64 in :math:`\{0, \dots, K\} \cup \{\text{ignore}\}`.

    Raises:
        TypeError: on a wrong dtype (``cam`` float, ``valid`` bool).
        ValueError: on wrong shapes, if only one of ``high``/``low`` is given, or if ``low > high``.

    Example:
        >>> cam = torch.tensor([[[[0.9, 0.5], [0.2, 0.1]], [[0.3, 0.4], [0.6, 0.0]]]])
        >>> labels = torch.tensor([[1.0, 1.0]])
        >>> cam_to_label(cam, labels)[0].tolist()
        [[1, 1], [2, 0]]
        >>> cam_to_label(cam, labels, high=0.55, low=0.35)[0].tolist()
        [[1, 255], [2, 0]]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``cam_to_label``);
        TSCD, Xu et al. AAAI 2023 (same function, used for the CAM diagnostic mIoU).
    """
    check_tensor(cam, "cam", ndim=4, dims="(B, K, H, W)", dtype="float")
    B, K, H, W = cam.shape
    check_labels(labels, "labels", B, K)
    _check_valid(valid, B, H, W)
    if (high is None) != (low is None):
        raise ValueError(f"high/low: give both thresholds of the ignore band or neither, got high={high}, low={low}")
    if high is not None and low > high:
        raise ValueError(f"low: expected low <= high, got low={low}, high={high}")
    with torch.no_grad():
        v = cam.detach() * labels.detach().to(cam.dtype)[:, :, None, None]
        score, idx = v.max(dim=1)
        out = idx + 1
        out[score <= bkg_thre] = 0
        if high is not None:
            out[score <= high] = ignore_index
            out[score <= low] = 0
        if valid is not None:
            out[~valid] = ignore_index
    return out


class CAMToLabel(nn.Module):
    r"""Module form of :func:`cam_to_label` (thresholds as hyperparameters).

    .. math::
        Y = 1 + \arg\max_k (y \odot \hat M)_k,\quad Y = 0 \text{ where } \max_k (y \odot \hat M)_k \le \tau_{bkg}

    Args:
        bkg_thre: background threshold (AFA/TSCD 0.45).
        high: upper threshold of the optional ignore band (AFA/TSCD 0.55).
        low: lower threshold of the optional ignore band (AFA/TSCD 0.35).
        ignore_index: label value of ignored pixels.

    Shape:
        - cam: :math:`(B, K, H, W)`; labels: :math:`(B, K)`; valid: :math:`(B, H, W)`.
        - output: :math:`(B, H, W)`, int64.

    Raises:
        ValueError: if only one of ``high``/``low`` is given, or ``low > high``.

    Example:
        >>> m = CAMToLabel(bkg_thre=0.45)
        >>> m(torch.tensor([[[[0.9, 0.1]]]]), torch.ones(1, 1))[0].tolist()
        [[1, 0]]

    Source:
        AFA, Ru et al. CVPR 2022; github.com/rulixiang/afa, utils/camutils.py (``cam_to_label``).
    """

    def __init__(self, bkg_thre: float = 0.45, high: float | None = None, low: float | None = None,
                 ignore_index: int = 255) -> None:
        super().__init__()
        if (high is None) != (low is None):
            raise ValueError(f"high/low: give both thresholds of the ignore band or neither, "
                             f"got high={high}, low={low}")
        if high is not None and low > high:
            raise ValueError(f"low: expected low <= high, got low={low}, high={high}")
        self.bkg_thre = bkg_thre
        self.high = high
        self.low = low
        self.ignore_index = ignore_index

    def forward(self, cam: Tensor, labels: Tensor, valid: Tensor | None = None) -> Tensor:
        """Pseudo label ``(B, H, W)``; see :func:`cam_to_label`."""
        return cam_to_label(cam, labels, valid, bkg_thre=self.bkg_thre, high=self.high, low=self.low,
                            ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"bkg_thre={self.bkg_thre}, high={self.high}, low={self.low}, ignore_index={self.ignore_index}"
