"""SLRNet's dictionary initialisation: soft class prototypes from the auxiliary head (``PrototypeInit``)."""

from __future__ import annotations

import contextlib

import torch
from einops import rearrange
from torch import Tensor, nn

from wsseg.layers._neighbors import check_bool, check_positive
from wsseg.utils.validation import check_same_spatial, check_tensor

__all__ = ["class_prototypes", "PrototypeInit"]


def class_prototypes(features: Tensor, logits: Tensor, *, eps: float = 1e-6, detach: bool = True) -> Tensor:
    r"""Soft class prototypes: the softmax-weighted mean feature of every class (SLRNet's :math:`D_0`).

    With the per-pixel class posterior :math:`R = \operatorname{softmax}_k(\bar A)` of the auxiliary-head
    logits :math:`\bar A` (``K`` channels, background included) and the features :math:`F` (``d``
    channels), over the :math:`n = H W` pixels:

    .. math::

        \hat R_{k,n} = \frac{R_{k,n}}{\epsilon + \sum_{n'} R_{k,n'}}, \qquad
        D_{0,k} = \sum_n \hat R_{k,n}\, F_{:,n} \in \mathbb{R}^d .

    So every prototype is (up to ``eps``) a convex combination of the pixel features, and the number of
    atoms equals the number of classes. In SLRNet the result initialises the dictionary of
    :class:`LowRankFactorization` and is a **stop-gradient** target: by default (``detach=True``) it is
    computed under :func:`torch.no_grad` from detached inputs, so it never requires grad.

    Args:
        features: the features :math:`F` that are factorised (SLRNet: the decoder output of view 1).
        logits: the ``K``-way logits :math:`\bar A` (SLRNet: the aux head, 20 foreground + background);
            softmax over the channel dimension, temperature 1.
        eps: added to the per-class mass :math:`\sum_n R_{k,n}` (official 1e-6), ``>= 0``.
        detach: stop the gradient to both inputs (official). ``False`` keeps the graph (an option, not
            the SLRNet behaviour).

    Returns:
        The prototypes :math:`D_0`, dtype of the computation (that of ``features`` outside autocast).

    Shape:
        - features: :math:`(B, d, H, W)`
        - logits: :math:`(B, K, H, W)` (same spatial size)
        - output: :math:`(B, K, d)`

    Raises:
        TypeError: if an input is not a floating-point tensor, or ``detach`` is not a bool.
        ValueError: if an input is not 4-D, the batch sizes, spatial sizes or devices differ, or ``eps``
            is negative.

    Example:
        >>> feats = torch.rand(2, 8, 5, 5)
        >>> logits = torch.randn(2, 3, 5, 5)
        >>> protos = wsseg.layers.class_prototypes(feats, logits)
        >>> protos.shape, protos.requires_grad
        (torch.Size([2, 3, 8]), False)
        >>> one_class = wsseg.layers.class_prototypes(feats, torch.zeros(2, 1, 5, 5), eps=0.0)
        >>> torch.allclose(one_class[:, 0], feats.mean(dim=(2, 3)))  # a single class: the mean feature
        True

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``
        (``DictionaryInitialization``; detached in ``Net.forward``).
    """
    check_tensor(features, "features", ndim=4, dims="(B, d, H, W)", dtype="float")
    check_tensor(logits, "logits", ndim=4, dims="(B, K, H, W)", dtype="float")
    if logits.shape[0] != features.shape[0]:
        raise ValueError(f"logits: expected batch size {features.shape[0]} (that of features), "
                         f"got shape {tuple(logits.shape)}")
    check_same_spatial(features, "features", logits, "logits")
    if logits.device != features.device:
        raise ValueError(f"logits: expected device {features.device} (that of features), got {logits.device}")
    eps = check_positive(eps, "eps", allow_zero=True)
    detach = check_bool(detach, "detach")
    ctx = torch.no_grad() if detach else contextlib.nullcontext()
    with ctx:
        resp = rearrange(logits, "b k h w -> b k (h w)").softmax(dim=1)  # R (B, K, n)
        resp = resp / (resp.sum(dim=-1, keepdim=True) + eps)              # R̂
        return torch.bmm(resp.to(features.dtype), rearrange(features, "b d h w -> b (h w) d"))  # (B, K, d)


class PrototypeInit(nn.Module):
    r"""Module form of :func:`class_prototypes`: SLRNet's data-dependent dictionary initialisation.

    Parameter-free. :math:`D_0 = \hat R F^\top` with :math:`\hat R` the per-class normalised softmax of
    the aux-head logits (see :func:`class_prototypes`); detached by default, as in SLRNet, where the
    result is fed to :class:`LowRankFactorization` as ``init_dict``.

    Args:
        eps: added to the per-class mass (official 1e-6).
        detach: stop the gradient to both inputs (official ``True``).

    Shape:
        - features: :math:`(B, d, H, W)`
        - logits: :math:`(B, K, H, W)`
        - output: :math:`(B, K, d)`

    Raises:
        TypeError, ValueError: for invalid hyperparameters (at construction); see :func:`class_prototypes`
            for the input checks in ``forward``.

    Example:
        >>> init = wsseg.layers.PrototypeInit()
        >>> init(torch.rand(2, 16, 9, 9), torch.randn(2, 21, 9, 9)).shape
        torch.Size([2, 21, 16])

    Source:
        SLRNet, Pan et al. IJCV 2022; github.com/DesertsP/SLRNet, ``models/slrnet.py``
        (``DictionaryInitialization``).
    """

    def __init__(self, eps: float = 1e-6, detach: bool = True) -> None:
        super().__init__()
        self.eps = check_positive(eps, "eps", allow_zero=True)
        self.detach = check_bool(detach, "detach")

    def forward(self, features: Tensor, logits: Tensor) -> Tensor:
        """Prototypes ``(B, K, d)`` of ``features (B, d, H, W)`` weighted by ``softmax(logits (B, K, H, W))``."""
        return class_prototypes(features, logits, eps=self.eps, detach=self.detach)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, detach={self.detach}"
