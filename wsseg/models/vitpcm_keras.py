"""Conversion of ViT-PCM's Keras HV-BiLSTM and patch-classifier weights to wsseg's modules."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from wsseg.layers.hv_bilstm import HVBiLSTM
from wsseg.layers.patch_classifier import PatchClassifier

__all__ = [
    "KERAS_VITPCM_KEYS",
    "keras_lstm_to_torch",
    "keras_vitpcm_key",
    "hv_bilstm_state_from_keras",
    "patch_classifier_state_from_keras",
    "load_vitpcm_keras_weights",
]

_LEAVES = ("kernel", "recurrent_kernel", "bias")
KERAS_VITPCM_KEYS: tuple[str, ...] = tuple(
    f"{branch}/{direction}/{leaf}" for branch in ("rows", "cols") for direction in ("forward", "backward")
    for leaf in _LEAVES
) + ("classifier/kernel",)
"""The logical keys the converter reads: 12 LSTM arrays (branch / direction / leaf) and the Dense kernel."""


def keras_vitpcm_key(name: str) -> str | None:
    """Map a Keras weight name (or a logical key) of ViT-PCM's head to its logical key, else ``None``.

    Logical keys are :data:`KERAS_VITPCM_KEYS` (``"rows/forward/kernel"``, ..., ``"classifier/kernel"``).
    A Keras name is recognised by the layer names of the official ``model.py``: ``Bidirectional`` names
    its two copies ``forward_<name>`` / ``backward_<name>``, the LSTMs are ``lstm_rows`` / ``lstm_cols``
    and the Dense layer is ``classifier``; the leaf is the last path component without ``:0``. This rule
    was written from the code and the Keras naming convention; it has not been checked against a released
    ViT-PCM ``.h5`` file (none was available), so pass logical keys when in doubt.

    Example:
        >>> keras_vitpcm_key("patch_conditioning/temporal_rows/bidirection_rows/forward_lstm_rows/"
        ...                  "lstm_cell_1/recurrent_kernel:0")
        'rows/forward/recurrent_kernel'
        >>> keras_vitpcm_key("patch_classifier/classifier/kernel:0"), keras_vitpcm_key("Transformer/x:0")
        ('classifier/kernel', None)

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``, ``PC``).
    """
    key = name[:-2] if name.endswith(":0") else name
    if key in KERAS_VITPCM_KEYS:
        return key
    leaf = key.rsplit("/", 1)[-1]
    if leaf not in _LEAVES:
        return None
    for branch in ("rows", "cols"):
        for direction in ("forward", "backward"):
            if f"{direction}_lstm_{branch}" in key:
                return f"{branch}/{direction}/{leaf}"
    if "classifier" in key and leaf == "kernel":
        return "classifier/kernel"
    return None


def _as_tensor(x: object, name: str, ndim: int) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name}: expected a numpy array or tensor, got {type(x).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point array, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(t.shape)}")
    return t


def keras_lstm_to_torch(kernel: np.ndarray | Tensor, recurrent_kernel: np.ndarray | Tensor,
                        bias: np.ndarray | Tensor) -> dict[str, Tensor]:
    r"""One Keras ``LSTM`` (one direction) as the four tensors of one ``nn.LSTM`` direction.

    Keras computes :math:`z = x K + h_{t-1} R + b` with :math:`K \in \mathbb R^{D \times 4h}`,
    :math:`R \in \mathbb R^{h \times 4h}`, :math:`b \in \mathbb R^{4h}` and the gates in the order
    (input, forget, cell, output) — PyTorch's (i, f, g, o). Hence ``weight_ih = K^T``,
    ``weight_hh = R^T``, ``bias_ih = b`` and ``bias_hh = 0`` (PyTorch adds two biases).

    Args:
        kernel: :math:`K`, shape (D, 4h).
        recurrent_kernel: :math:`R`, shape (h, 4h).
        bias: :math:`b`, shape (4h,).

    Returns:
        ``{"weight_ih", "weight_hh", "bias_ih", "bias_hh"}`` (copies; the input dtype is kept).

    Raises:
        TypeError: if an argument is not a floating-point array / tensor.
        ValueError: if the shapes do not fit together.

    Example:
        >>> sd = keras_lstm_to_torch(np.zeros((8, 12)), np.zeros((3, 12)), np.ones(12))
        >>> tuple(sd["weight_ih"].shape), tuple(sd["weight_hh"].shape), float(sd["bias_hh"].sum())
        ((12, 8), (12, 3), 0.0)

    Source:
        Keras ``LSTMCell`` (gate order i, f, c, o); ViT-PCM, Rossetti et al. ECCV 2022;
        github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``).
    """
    k = _as_tensor(kernel, "kernel", 2)
    r = _as_tensor(recurrent_kernel, "recurrent_kernel", 2)
    b = _as_tensor(bias, "bias", 1)
    four_h = k.shape[1]
    if four_h % 4 != 0 or four_h == 0:
        raise ValueError(f"kernel: expected shape (D, 4h), got {tuple(k.shape)}")
    h = four_h // 4
    if tuple(r.shape) != (h, four_h):
        raise ValueError(f"recurrent_kernel: expected shape ({h}, {four_h}), got {tuple(r.shape)}")
    if tuple(b.shape) != (four_h,):
        raise ValueError(f"bias: expected shape ({four_h},), got {tuple(b.shape)}")
    return {"weight_ih": k.t().clone(), "weight_hh": r.t().clone(), "bias_ih": b.clone(),
            "bias_hh": torch.zeros_like(b)}


def _logical(keras_arrays: Mapping[str, object]) -> dict[str, object]:
    if not isinstance(keras_arrays, Mapping):
        raise TypeError(f"keras_arrays: expected a mapping name -> array, got {type(keras_arrays).__name__}")
    out: dict[str, object] = {}
    for name, value in keras_arrays.items():
        key = keras_vitpcm_key(str(name))
        if key is None:
            continue
        if key in out:
            raise ValueError(f"keras_arrays: two entries map to {key!r} (one is {name!r})")
        out[key] = value
    return out


def _require(arrays: Mapping[str, object], keys: list[str]) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"keras_arrays: missing {missing} (found {sorted(arrays)})")


def hv_bilstm_state_from_keras(keras_arrays: Mapping[str, object]) -> dict[str, Tensor]:
    """The state dict of :class:`~wsseg.layers.HVBiLSTM` from ViT-PCM's 12 Keras LSTM arrays.

    Args:
        keras_arrays: name → array; names as in :func:`keras_vitpcm_key` (logical keys or Keras weight
            names; unrelated entries such as backbone weights are ignored).

    Returns:
        ``{"rows.weight_ih_l0", ..., "cols.bias_hh_l0_reverse"}`` (forward direction → ``_l0``,
        backward → ``_l0_reverse``).

    Raises:
        ValueError: if an LSTM array is missing, appears twice or has a wrong shape.
        TypeError: on non-floating-point arrays.

    Example:
        >>> m = wsseg.layers.HVBiLSTM(in_dim=8, hidden=3)
        >>> arrays = {f"{b}/{d}/{leaf}": np.zeros(s) for b in ("rows", "cols")
        ...           for d in ("forward", "backward")
        ...           for leaf, s in (("kernel", (8, 12)), ("recurrent_kernel", (3, 12)), ("bias", (12,)))}
        >>> m.load_state_dict(hv_bilstm_state_from_keras(arrays))
        <All keys matched successfully>

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``).
    """
    arrays = _logical(keras_arrays)
    _require(arrays, [k for k in KERAS_VITPCM_KEYS if not k.startswith("classifier")])
    state: dict[str, Tensor] = {}
    for branch in ("rows", "cols"):
        for direction, suffix in (("forward", ""), ("backward", "_reverse")):
            parts = keras_lstm_to_torch(*(arrays[f"{branch}/{direction}/{leaf}"] for leaf in _LEAVES))
            for name, value in parts.items():
                state[f"{branch}.{name}_l0{suffix}"] = value
    return state


def patch_classifier_state_from_keras(keras_arrays: Mapping[str, object]) -> dict[str, Tensor]:
    """The state dict of :class:`~wsseg.layers.PatchClassifier` from the Keras Dense kernel (D, C).

    Returns:
        ``{"weight": kernel^T}`` of shape (C, D).

    Raises:
        ValueError: if ``classifier/kernel`` is missing, appears twice or is not 2-D.
        TypeError: on a non-floating-point array.

    Example:
        >>> patch_classifier_state_from_keras({"classifier/kernel": np.ones((8, 3))})["weight"].shape
        torch.Size([3, 8])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``PC``).
    """
    arrays = _logical(keras_arrays)
    _require(arrays, ["classifier/kernel"])
    return {"weight": _as_tensor(arrays["classifier/kernel"], "classifier/kernel", 2).t().clone()}


def load_vitpcm_keras_weights(module: nn.Module, keras_arrays: Mapping[str, object]) -> nn.Module:
    """Load ViT-PCM's Keras head weights into the HV-BiLSTM and/or patch classifier inside ``module``.

    ``module`` may be an :class:`~wsseg.layers.HVBiLSTM`, a :class:`~wsseg.layers.PatchClassifier` or any
    module containing at most one of each; every one found is loaded (strictly: shapes must match, the
    values are cast to the module's dtype and device). The ViT backbone is not converted.

    Args:
        module: the target.
        keras_arrays: name → numpy array (e.g. read from the Keras ``.h5`` file with ``h5py``), see
            :func:`keras_vitpcm_key` for the accepted names.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: if ``module`` holds neither component or more than one of a kind, or on missing /
            duplicate / mis-shaped arrays.
        TypeError: if ``module`` is not an ``nn.Module`` or an array is not floating point.

    Example:
        >>> pc = load_vitpcm_keras_weights(wsseg.layers.PatchClassifier(in_dim=8, num_classes=3),
        ...                                {"patch_classifier/classifier/kernel:0": np.ones((8, 3))})
        >>> float(pc.weight.detach().sum())
        24.0

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``, ``PC``).
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    found = {kind: [m for m in module.modules() if isinstance(m, kind)] for kind in (HVBiLSTM, PatchClassifier)}
    if not any(found.values()):
        raise ValueError(f"module: expected an HVBiLSTM and/or a PatchClassifier inside, got {type(module).__name__}")
    for kind, mods in found.items():
        if len(mods) > 1:
            raise ValueError(f"module: expected at most one {kind.__name__}, found {len(mods)}")
    converters = {HVBiLSTM: hv_bilstm_state_from_keras, PatchClassifier: patch_classifier_state_from_keras}
    for kind, mods in found.items():
        if not mods:
            continue
        state = converters[kind](keras_arrays)
        for name, target in mods[0].state_dict().items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise ValueError(f"keras_arrays: {name} of the {kind.__name__} expects shape {tuple(target.shape)}, "
                                 f"the Keras arrays give {tuple(state[name].shape)}")
        mods[0].load_state_dict(state)
    return module
