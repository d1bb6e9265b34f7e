"""Official-formulation reference of CoSA's dynamic threshold (tests and benchmarks only).

A straightforward re-formulation of the ``usegmm`` branch of github.com/youshyee/CoSA (``main.py``,
``utils/seg_helper.py``: ``rungmm``, ``DynamicQueue``; ``utils/torch_helper.py``: ``EMAtracker``):
a NumPy float64 queue written row block by row block, scikit-learn's ``GaussianMixture`` on the CPU
with the official initialisation, thresholds read from components 0 and 2 (or 1 with two components
[assumed, the official two-component branch returns only the low threshold]), Python-float EMA.
Written independently for comparison with :class:`wsseg.pseudo.ThresholdSearch`; needs scikit-learn.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["OfficialThresholdSearch", "official_statistic", "reference_gmm", "reference_thresholds"]


def official_statistic(valid_cam: Tensor, stat_size: int = 28) -> np.ndarray:
    """``F.interpolate(bilinear, align_corners=False)`` to ``stat_size``², max over classes, (B, S²)."""
    reduced = F.interpolate(valid_cam.clone().float(), size=(stat_size, stat_size), mode="bilinear",
                            align_corners=False)
    cam_max, _ = torch.max(reduced, dim=1, keepdim=False)
    return cam_max.cpu().reshape(valid_cam.shape[0], -1).numpy()


def reference_gmm(values: np.ndarray, modal: int = 3, **kwargs):
    """The official ``GaussianMixture`` call on 1-D ``values``; returns ``(fitted model, prediction)``."""
    from sklearn import mixture as skm

    queue = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    if modal == 3:
        means_init = [[np.min(queue)], [np.median(queue)], [np.max(queue)]]
        weights_init = [1 / 3, 1 / 3, 1 / 3]
        precisions_init = [[[1.0]], [[1.0]], [[1.0]]]
    else:
        means_init = [[np.min(queue)], [np.max(queue)]]
        weights_init = [1 / 2, 1 / 2]
        precisions_init = [[[1.0]], [[1.0]]]
    gmm = skm.GaussianMixture(modal, weights_init=weights_init, means_init=means_init,
                              precisions_init=precisions_init, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning when max_iter is reached
        prediction = gmm.fit_predict(queue)
    return gmm, prediction


def reference_thresholds(queue: np.ndarray, modal: int = 3, filter_thre: float = 0.05,
                         sort_components: bool = False) -> tuple[float, float]:
    """``rungmm``: flatten, drop values <= filter_thre, fit, (max of component 0, min of the last).

    ``sort_components=True`` renumbers the components by increasing mean first (wsseg option).
    Raises ``ValueError`` on an empty component, like the official ``max()`` / ``min()`` of an empty array.
    """
    queue = np.asarray(queue, dtype=np.float64).flatten()
    queue = queue[queue > filter_thre]
    gmm, prediction = reference_gmm(queue, modal)
    first, last = 0, modal - 1
    if sort_components:
        order = np.argsort(gmm.means_.ravel())
        first, last = int(order[0]), int(order[-1])
    return max(queue[prediction == first]).item(), min(queue[prediction == last]).item()


class _EMAtracker:
    def __init__(self, initial_value: float = 0.0, decay: float = 0.9) -> None:
        self.X = initial_value
        self.decay = decay

    def update(self, new_value: float) -> None:
        self.X = self.X * self.decay + new_value * (1 - self.decay)

    def get(self) -> float:
        return self.X


class OfficialThresholdSearch:
    """The official per-iteration update: enqueue the batch's statistic, refit, EMA; returns floats."""

    def __init__(self, batch_size: int, init_low: float = 0.25, init_high: float = 0.7,
                 queue_ratio: int = 100, stat_size: int = 28, filter_thre: float = 0.05,
                 ema_decay: float = 0.99, modal: int = 3, sort_components: bool = False,
                 queue: np.ndarray | None = None) -> None:
        self.max_size = batch_size * queue_ratio
        self.batch_size = batch_size
        self.queue = (np.random.random((self.max_size, stat_size * stat_size)) if queue is None
                      else np.array(queue, dtype=np.float64))
        self.ptr = 0
        self.stat_size = stat_size
        self.filter_thre = filter_thre
        self.modal = modal
        self.sort_components = sort_components
        self.low = _EMAtracker(init_low, decay=ema_decay)
        self.high = _EMAtracker(init_high, decay=ema_decay)

    def __call__(self, valid_cam: Tensor) -> tuple[float, float]:
        income = official_statistic(valid_cam, self.stat_size)
        self.queue[self.ptr:self.ptr + self.batch_size, :] = income
        self.ptr = (self.ptr + self.batch_size) % self.max_size
        low_, high_ = reference_thresholds(self.queue, self.modal, self.filter_thre, self.sort_components)
        self.low.update(low_)
        self.high.update(high_)
        return self.low.get(), self.high.get()
