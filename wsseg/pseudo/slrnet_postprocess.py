"""SLRNet's inference post-processing: class filter (GT or predicted set) and background power."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsseg.utils.validation import check_labels, check_tensor

__all__ = ["SLRNetPostprocess", "slrnet_postprocess", "slrnet_predicted_classes"]


def _check_hparams(fp_cut: object, top_k: object, bg_pow: object) -> tuple[float, int, float]:
    for v, n in ((fp_cut, "fp_cut"), (bg_pow, "bg_pow")):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{n}: expected a float, got {type(v).__name__}")
    if not 0.0 <= float(fp_cut) <= 1.0:
        raise ValueError(f"fp_cut: expected a probability in [0, 1], got {fp_cut}")
    if not float(bg_pow) > 0.0:
        raise ValueError(f"bg_pow: expected a positive float, got {bg_pow}")
    if isinstance(top_k, bool) or not isinstance(top_k, int):
        raise TypeError(f"top_k: expected an int, got {type(top_k).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k: expected an int >= 1, got {top_k}")
    return float(fp_cut), top_k, float(bg_pow)


def slrnet_predicted_classes(cls_logits: Tensor, *, fp_cut: float = 0.3, top_k: int = 6) -> Tensor:
    r"""SLRNet's label-free class set: confident **and** among the top ``top_k`` classes.

    .. math::
        \hat y_k = [\sigma(s_k) > \texttt{fp_cut}] \wedge [\sigma(s_k) \ge \sigma_{(k^*)}], \qquad
        k^* = \min(\texttt{top_k}, K)

    with :math:`s` the classification logits averaged over the test-time passes and
    :math:`\sigma_{(k^*)}` the :math:`k^*`-th largest sigmoid of the image (ties at it are kept, so more
    than ``top_k`` classes can survive). The official code calls ``topk`` with ``k = 6`` unconditionally
    (an error for fewer than 6 classes); here ``k`` is clamped to ``K``.

    Args:
        cls_logits: classification logits (nGWP scores), float.
        fp_cut: sigmoid threshold, strict (official ``--fp_cut`` default 0.3; the worker's own default
            0.1 is never used).
        top_k: maximal rank (``--topk_classes``, 6).

    Returns:
        Boolean class set.

    Shape:
        - cls_logits: :math:`(B, K)`
        - output: :math:`(B, K)`, ``torch.bool``

    Raises:
        TypeError: if ``cls_logits`` is not a floating-point tensor or a hyperparameter has the wrong type.
        ValueError: if ``cls_logits`` is not 2-D or a hyperparameter is out of range.

    Example:
        >>> s = torch.logit(torch.tensor([[0.9, 0.2, 0.5, 0.8]]))
        >>> wsseg.pseudo.slrnet_predicted_classes(s, top_k=2).tolist()
        [[True, False, False, True]]

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``tools/infer_voc.py`` (``_worker``,
        ``use_cls_label=0``).
    """
    check_tensor(cls_logits, "cls_logits", ndim=2, dims="(B, K)", dtype="float")
    fp_cut, top_k, _ = _check_hparams(fp_cut, top_k, 1.0)
    scores = torch.sigmoid(cls_logits)
    kth = torch.topk(scores, k=min(top_k, scores.shape[1]), dim=1).values[:, -1:]
    return (scores > fp_cut) & (scores >= kth)


def slrnet_postprocess(probs: Tensor, labels: Tensor | None = None, cls_logits: Tensor | None = None, *,
                       fp_cut: float = 0.3, top_k: int = 6, bg_pow: float = 3.0) -> Tensor:
    r"""SLRNet's test-time post-processing of fused probabilities (before argmax and the optional CRF).

    The foreground channels of classes outside the class set are multiplied by 0 and the background
    channel is raised to the power ``bg_pow``; the result is **not** renormalised:

    .. math::
        Q_0 = P_0^{\,\texttt{bg_pow}}, \qquad Q_k = P_k \cdot \hat y_k \quad (k = 1..K)

    The class set :math:`\hat y` is the image labels ``labels`` (official ``--use_cls_label 1``: used to
    make pseudo labels on ``train_aug``; on val it uses ground truth), or the predicted set
    :func:`slrnet_predicted_classes` of ``cls_logits`` (``--use_cls_label 0``), or — when both are
    ``None`` — all classes (only the background power; the unfiltered variant). Background power 3 for
    WSSS, 1 for the semi-supervised models. The label map is ``Q.argmax(1)``; the ``slrnet`` dense-CRF
    preset (:meth:`wsseg.pseudo.DenseCRF.from_preset`) takes ``Q`` as is. Out of place.

    Args:
        probs: softmax masks averaged over scales and flips
            (:class:`~wsseg.layers.MultiScaleInference` preset ``"slrnet"``), background at channel 0.
        labels: image labels in {0, 1} (float, int or bool), or ``None``.
        cls_logits: mean classification logits, or ``None``. At most one of ``labels`` / ``cls_logits``.
        fp_cut: sigmoid threshold of the predicted set (0.3).
        top_k: rank limit of the predicted set (6).
        bg_pow: background exponent (3.0).

    Returns:
        The post-processed scores, dtype and device of ``probs``.

    Shape:
        - probs: :math:`(B, K + 1, H, W)`
        - labels, cls_logits: :math:`(B, K)`
        - output: :math:`(B, K + 1, H, W)`

    Raises:
        TypeError: if ``probs`` / ``cls_logits`` is not a floating-point tensor, ``labels`` not a tensor,
            or a hyperparameter has the wrong type.
        ValueError: on wrong shapes, if both ``labels`` and ``cls_logits`` are given, or a hyperparameter is
            out of range.

    Example:
        >>> p = torch.tensor([0.6, 0.3, 0.1]).reshape(1, 3, 1, 1)
        >>> q = wsseg.pseudo.slrnet_postprocess(p, labels=torch.tensor([[1, 0]]))
        >>> [round(v, 4) for v in q.flatten().tolist()]  # 0.6 ** 3, class 2 absent
        [0.216, 0.3, 0.0]
        >>> q.argmax(dim=1).item()
        1

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``tools/infer_voc.py`` (``_worker``:
        ``masks_pred[1:] *= cls_label``, ``masks_pred[0] = masks_pred[0] ** bg_pow``).
    """
    check_tensor(probs, "probs", ndim=4, dims="(B, K+1, H, W)", dtype="float")
    b, c = probs.shape[:2]
    if c < 2:
        raise ValueError(f"probs: expected at least 2 channels (background + classes), got shape {tuple(probs.shape)}")
    fp_cut, top_k, bg_pow = _check_hparams(fp_cut, top_k, bg_pow)
    if labels is not None and cls_logits is not None:
        raise ValueError("labels / cls_logits: expected at most one class source, got both")
    if labels is not None:
        check_labels(labels, "labels", b, c - 1)
        keep = labels
    elif cls_logits is not None:
        check_tensor(cls_logits, "cls_logits", ndim=2, dims="(B, K)", dtype="float")
        if tuple(cls_logits.shape) != (b, c - 1):
            raise ValueError(f"cls_logits: expected shape ({b}, {c - 1}) (B, K), got {tuple(cls_logits.shape)}")
        keep = slrnet_predicted_classes(cls_logits, fp_cut=fp_cut, top_k=top_k)
    else:
        keep = None
    fg = probs[:, 1:]
    if keep is not None:
        fg = fg * keep.to(device=probs.device, dtype=probs.dtype)[:, :, None, None]
    return torch.cat([probs[:, :1].pow(bg_pow), fg], dim=1)


class SLRNetPostprocess(nn.Module):
    r"""Module form of :func:`slrnet_postprocess`: class filter (GT or predicted set) and background power.

    Args:
        fp_cut: sigmoid threshold of the predicted class set (0.3).
        top_k: rank limit of the predicted class set (6).
        bg_pow: background exponent (3 for WSSS, 1 for semi-supervised).

    Shape:
        - probs: :math:`(B, K + 1, H, W)`
        - labels, cls_logits: :math:`(B, K)` or ``None``
        - output: :math:`(B, K + 1, H, W)`; ``output.argmax(1)`` is the prediction

    Raises:
        TypeError / ValueError: on invalid hyperparameters (at construction); see
            :func:`slrnet_postprocess` for the input checks.

    Example:
        >>> post = wsseg.pseudo.SLRNetPostprocess(bg_pow=3.0)
        >>> probs = torch.rand(2, 5, 8, 8).softmax(dim=1)
        >>> post(probs, cls_logits=torch.randn(2, 4)).argmax(dim=1).shape
        torch.Size([2, 8, 8])

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet ``tools/infer_voc.py``.
    """

    def __init__(self, fp_cut: float = 0.3, top_k: int = 6, bg_pow: float = 3.0) -> None:
        super().__init__()
        self.fp_cut, self.top_k, self.bg_pow = _check_hparams(fp_cut, top_k, bg_pow)

    def forward(self, probs: Tensor, labels: Tensor | None = None, cls_logits: Tensor | None = None) -> Tensor:
        """Post-processed scores ``(B, K + 1, H, W)`` (not renormalised)."""
        return slrnet_postprocess(probs, labels, cls_logits, fp_cut=self.fp_cut, top_k=self.top_k,
                                  bg_pow=self.bg_pow)

    def extra_repr(self) -> str:
        return f"fp_cut={self.fp_cut}, top_k={self.top_k}, bg_pow={self.bg_pow}"
