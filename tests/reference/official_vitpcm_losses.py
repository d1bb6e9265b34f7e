"""Straightforward NumPy formulation of ViT-PCM's label merge, losses and mosaic (tests and benchmarks only).

Written independently from the description of the official TensorFlow code (github.com/deepplants/ViT-PCM,
HEAD ``1fea66f``; ``model.py``: ``merge_class_labels``, ``compute_mce_loss``, ``compute_cce_loss``,
``VITPCM.merged_step``; ``utils.py``: ``extract_nonoverlapping_patches`` and its gradient-based inverse) and
of the tf.keras 2.9 semantics it relies on:

* ``tf.math.divide_no_nan(x, y)``: ``x / y``, and 0 where ``y == 0``;
* ``keras.backend.binary_crossentropy`` on probabilities: clip to ``[eps, 1 - eps]``, then
  ``-(y log(p + eps) + (1 - y) log(1 - p + eps))``; ``keras.losses.binary_crossentropy`` averages over the
  last axis (``Reduction.NONE`` leaves one value per sample);
* ``keras.backend.categorical_crossentropy`` on probabilities: ``p / sum_c p``, clip to ``[eps, 1 - eps]``,
  ``-sum_c y log p`` (no ``+ eps``);
* ``tf.image.extract_patches`` with ``sizes = strides = size`` followed by ``reshape(-1, size, size, C)``:
  patches listed image by image, row-major over the patch grid; the inverse is the gradient trick (scatter
  the patches back, divide by the scatter count with ``divide_no_nan``).

Everything is channels-last (the official layout) and NumPy, with plain per-image / per-class / per-patch
loops; dtypes are kept (float32 inputs are computed in float32, as TensorFlow does).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "EPSILON",
    "official_cce_loss",
    "official_divide_no_nan",
    "official_extract_nonoverlapping_patches",
    "official_extract_nonoverlapping_patches_inverse",
    "official_keras_binary_crossentropy",
    "official_keras_categorical_crossentropy",
    "official_mce_loss",
    "official_merge_class_labels",
    "official_merged_batch",
]

EPSILON = 1e-7  # keras.backend.epsilon()


def official_divide_no_nan(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``tf.math.divide_no_nan``: ``x / y`` where ``y != 0``, else 0 (y broadcast against x)."""
    x = np.asarray(x)
    y = np.broadcast_to(np.asarray(y, dtype=x.dtype), x.shape)
    out = np.zeros(x.shape, dtype=x.dtype)
    np.divide(x, y, out=out, where=y != 0)
    return out


def official_merge_class_labels(preds: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``merge_class_labels`` on channels-last predictions ``(B, H, W, C)`` and labels ``(B, C)``."""
    B, H, W, C = preds.shape
    out = np.zeros_like(preds)
    for b in range(B):
        # push absent categories to 0
        p = preds[b] * labels[b].astype(preds.dtype)[None, None, :]
        # push the max of every class to 1 (divide_no_nan by the per-class max over the grid)
        for c in range(C):
            p[:, :, c] = official_divide_no_nan(p[:, :, c], p[:, :, c].max())
        # back to a categorical distribution per patch (divide_no_nan by the sum over classes)
        out[b] = official_divide_no_nan(p, p.sum(axis=-1, keepdims=True))
    return out


def official_keras_binary_crossentropy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``keras.losses.binary_crossentropy`` with ``Reduction.NONE``: ``(B, C) -> (B,)``."""
    y_pred = np.asarray(y_pred)
    dt = y_pred.dtype.type
    eps = dt(EPSILON)
    y = np.asarray(y_true).astype(y_pred.dtype)
    out = np.zeros(y_pred.shape[0], dtype=y_pred.dtype)
    for b in range(y_pred.shape[0]):
        terms = []
        for c in range(y_pred.shape[1]):
            p = min(max(y_pred[b, c], eps), dt(1) - eps)
            bce = y[b, c] * np.log(p + eps) + (dt(1) - y[b, c]) * np.log(dt(1) - p + eps)
            terms.append(-bce)
        out[b] = np.mean(np.asarray(terms, dtype=y_pred.dtype))
    return out


def official_mce_loss(labels: np.ndarray, pooled_preds: np.ndarray) -> np.ndarray:
    """``compute_mce_loss``: ``tf.reduce_mean`` of the per-sample Keras BCE."""
    return np.mean(official_keras_binary_crossentropy(labels, pooled_preds))


def official_keras_categorical_crossentropy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``keras.losses.categorical_crossentropy`` with ``Reduction.NONE``: ``(..., C) -> (...)``."""
    y_pred = np.asarray(y_pred)
    dt = y_pred.dtype.type
    eps = dt(EPSILON)
    y = np.asarray(y_true).astype(y_pred.dtype)
    out = np.zeros(y_pred.shape[:-1], dtype=y_pred.dtype)
    for idx in np.ndindex(y_pred.shape[:-1]):
        p = y_pred[idx] / y_pred[idx].sum()
        p = np.clip(p, eps, dt(1) - eps)
        out[idx] = -np.sum(y[idx] * np.log(p))
    return out


def official_cce_loss(target_view2: np.ndarray, preds_t: np.ndarray) -> np.ndarray:
    """The end of ``compute_cce_loss``: ``tf.reduce_mean(CCE(y_true=stop_gradient(merged), y_pred=preds_t))``.

    ``target_view2`` is the first view's prediction already mapped to the second view and merged with the
    labels; both are ``(B, g, g, C)``.
    """
    return np.mean(official_keras_categorical_crossentropy(target_view2, preds_t))


def official_extract_nonoverlapping_patches(image: np.ndarray, size: int) -> np.ndarray:
    """``extract_nonoverlapping_patches(image, size)``: ``(N, H, W, C) -> (N*(H/size)*(W/size), size, size, C)``."""
    N, H, W, _ = image.shape
    patches = []
    for n in range(N):
        for i in range(H // size):  # row-major over the patch grid, as extract_image_patches lists them
            for j in range(W // size):
                patches.append(image[n, i * size:(i + 1) * size, j * size:(j + 1) * size])
    return np.stack(patches)


def official_extract_nonoverlapping_patches_inverse(shape: tuple, patches: np.ndarray, size: int) -> np.ndarray:
    """The gradient-trick inverse: scatter the patches back into an image of ``shape``, divide_no_nan by the
    number of patches that covered each pixel. Raises if the patch count does not match ``shape`` (the TF
    gradient call fails on mismatching shapes)."""
    N, H, W, C = shape
    expected = (N * (H // size) * (W // size), size, size, C)
    if patches.shape != expected:
        raise ValueError(f"patches: expected shape {expected}, got {patches.shape}")
    summed = np.zeros(shape, dtype=patches.dtype)
    count = np.zeros(shape, dtype=patches.dtype)
    k = 0
    for n in range(N):
        for i in range(H // size):
            for j in range(W // size):
                summed[n, i * size:(i + 1) * size, j * size:(j + 1) * size] += patches[k]
                count[n, i * size:(i + 1) * size, j * size:(j + 1) * size] += 1
                k += 1
    return official_divide_no_nan(summed, count)


def official_merged_batch(batch: np.ndarray) -> np.ndarray:
    """``VITPCM.merged_step``'s mosaic: ``(B, D, D, 3) -> (B // 4, 2D, 2D, 3)`` (the official slice
    ``batch[:4*B//4]`` is the whole batch)."""
    B, D = batch.shape[0], batch.shape[1]
    return official_extract_nonoverlapping_patches_inverse((B // 4, 2 * D, 2 * D, batch.shape[-1]),
                                                           batch[:4 * B // 4], size=D)
