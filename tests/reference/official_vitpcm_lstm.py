"""Reference formulations of ViT-PCM's HV-BiLSTM and patch classifier (tests and benchmark only).

Two independent references, both written with explicit per-image / per-row / per-step loops:

* ``keras_*_numpy``: a NumPy transcription of the Keras layers used by the official TensorFlow model
  (github.com/deepplants/ViT-PCM, ``model.py``: ``HVBiLSTM`` = ``TimeDistributed(Bidirectional(LSTM(h,
  return_sequences=True)))`` on the rows and on the transposed grid, concatenated; ``PC`` = bias-free
  ``Dense``), in the official channels-last layout and with Keras-layout weights: the LSTM recurrence of
  the Keras documentation, ``z = x K + h R + b`` split into the gates (i, f, c, o), ``c = f c + i tanh(z_c)``,
  ``h = o tanh(c)`` with sigmoid gates; ``Bidirectional`` runs a second LSTM on the time-reversed sequence,
  reverses its output back and concatenates ``[forward, backward]``. Inference mode (no dropout).
* ``loop_hv_bilstm``: the PyTorch per-row formulation — one ``nn.LSTM`` call per row of each image and one
  per column, with the weights of wsseg's module — used to check the batched implementation and as the
  benchmark's baseline.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "keras_lstm_numpy",
    "keras_bidirectional_numpy",
    "keras_hv_bilstm_numpy",
    "keras_dense_numpy",
    "random_keras_lstm",
    "loop_hv_bilstm",
]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def keras_lstm_numpy(x: np.ndarray, kernel: np.ndarray, recurrent_kernel: np.ndarray,
                     bias: np.ndarray) -> np.ndarray:
    """One Keras LSTM on one sequence ``x (t, D)`` from zero states; returns all outputs ``(t, h)``."""
    h_dim = recurrent_kernel.shape[0]
    h = np.zeros(h_dim)
    c = np.zeros(h_dim)
    outs = []
    for step in range(x.shape[0]):
        z = x[step] @ kernel + h @ recurrent_kernel + bias
        i = _sigmoid(z[:h_dim])
        f = _sigmoid(z[h_dim:2 * h_dim])
        g = np.tanh(z[2 * h_dim:3 * h_dim])
        o = _sigmoid(z[3 * h_dim:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outs.append(h)
    return np.stack(outs)


def keras_bidirectional_numpy(x: np.ndarray, forward: dict, backward: dict) -> np.ndarray:
    """Keras ``Bidirectional(LSTM, merge_mode="concat")`` on one sequence ``x (t, D)`` → ``(t, 2h)``."""
    out_f = keras_lstm_numpy(x, forward["kernel"], forward["recurrent_kernel"], forward["bias"])
    out_b = keras_lstm_numpy(x[::-1], backward["kernel"], backward["recurrent_kernel"], backward["bias"])[::-1]
    return np.concatenate([out_f, out_b], axis=-1)


def keras_hv_bilstm_numpy(features: np.ndarray, arrays: dict) -> np.ndarray:
    """The official ``HVBiLSTM`` in inference mode on a channels-last grid ``(B, Gh, Gw, D)``.

    ``arrays`` maps ``"rows/forward/kernel"``-style keys to Keras-layout arrays. Returns ``(B, Gh, Gw, 4h)``.
    """
    def lstm_arrays(branch: str, direction: str) -> dict:
        return {leaf: arrays[f"{branch}/{direction}/{leaf}"] for leaf in ("kernel", "recurrent_kernel", "bias")}

    b_size, gh, gw, _ = features.shape
    rows = [[keras_bidirectional_numpy(features[b, r], lstm_arrays("rows", "forward"),
                                       lstm_arrays("rows", "backward")) for r in range(gh)] for b in range(b_size)]
    out_h = np.array(rows)  # (B, Gh, Gw, 2h)
    transposed = np.transpose(features, (0, 2, 1, 3))  # utils.iT
    cols = [[keras_bidirectional_numpy(transposed[b, c], lstm_arrays("cols", "forward"),
                                       lstm_arrays("cols", "backward")) for c in range(gw)] for b in range(b_size)]
    out_v = np.transpose(np.array(cols), (0, 2, 1, 3))
    return np.concatenate([out_h, out_v], axis=-1)


def keras_dense_numpy(features: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Bias-free ``Dense`` on a channels-last grid: ``(B, Gh, Gw, D) @ (D, C)``, pixel by pixel."""
    b_size, gh, gw, _ = features.shape
    out = np.zeros((b_size, gh, gw, kernel.shape[1]))
    for b in range(b_size):
        for r in range(gh):
            for c in range(gw):
                out[b, r, c] = features[b, r, c] @ kernel
    return out


def random_keras_lstm(rng: np.random.Generator, in_dim: int, hidden: int) -> dict:
    """Random Keras-layout arrays for the four HV-BiLSTM LSTMs (``kernel (D,4h)``, ``recurrent (h,4h)``, ``bias``)."""
    arrays = {}
    for branch in ("rows", "cols"):
        for direction in ("forward", "backward"):
            arrays[f"{branch}/{direction}/kernel"] = rng.normal(0, 0.5, (in_dim, 4 * hidden))
            arrays[f"{branch}/{direction}/recurrent_kernel"] = rng.normal(0, 0.5, (hidden, 4 * hidden))
            arrays[f"{branch}/{direction}/bias"] = rng.normal(0, 0.5, (4 * hidden,))
    return arrays


def loop_hv_bilstm(tokens: Tensor, rows: nn.LSTM, cols: nn.LSTM) -> Tensor:
    """HV-BiLSTM without dropout, one ``nn.LSTM`` call per row and per column of every image.

    ``tokens (B, D, H, W)`` → ``(B, 4h, H, W)``: row ``r`` of image ``b`` is the sequence
    ``tokens[b, :, r, :]`` over the width, column ``c`` the sequence ``tokens[b, :, :, c]`` over the height.
    """
    b_size, _, gh, gw = tokens.shape
    out_images = []
    for b in range(b_size):
        h_rows = [rows(tokens[b, :, r, :].t().unsqueeze(0))[0][0] for r in range(gh)]  # each (W, 2h)
        v_cols = [cols(tokens[b, :, :, c].t().unsqueeze(0))[0][0] for c in range(gw)]  # each (H, 2h)
        out_h = torch.stack(h_rows, dim=0)  # (H, W, 2h)
        out_v = torch.stack(v_cols, dim=1)  # (H, W, 2h)
        out_images.append(torch.cat([out_h, out_v], dim=-1).permute(2, 0, 1))
    return torch.stack(out_images)
