"""ViT-PCM's HV-BiLSTM ("patch conditioning"): a horizontal and a vertical bidirectional LSTM over the patch grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from wsseg.utils.validation import check_tensor

__all__ = ["HVBiLSTM", "hv_bilstm", "keras_lstm_init_"]

_DROPOUT_MODES = ("step", "sequence")


def _check_rate(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value!r}")
    return float(value)


def _check_lstm(lstm: object, name: str) -> nn.LSTM:
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"{name}: expected a torch.nn.LSTM, got {type(lstm).__name__}")
    if not (lstm.bidirectional and lstm.batch_first and lstm.num_layers == 1 and lstm.bias
            and lstm.proj_size == 0):
        raise ValueError(
            f"{name}: expected nn.LSTM(D, h, batch_first=True, bidirectional=True) with one layer, bias and no "
            f"projection, got bidirectional={lstm.bidirectional}, batch_first={lstm.batch_first}, "
            f"num_layers={lstm.num_layers}, bias={lstm.bias}, proj_size={lstm.proj_size}"
        )
    return lstm


@torch.no_grad()
def keras_lstm_init_(lstm: nn.LSTM) -> nn.LSTM:
    r"""Initialise an ``nn.LSTM`` in place as Keras initialises ``LSTM`` by default.

    Per layer and direction: the input kernel :math:`W_{ih} \in \mathbb R^{4h \times D}` is Glorot-uniform,
    :math:`\mathcal U(\pm\sqrt{6 / (D + 4h)})` (Keras ``glorot_uniform`` on its ``(D, 4h)`` kernel, the same
    fans); the recurrent kernel :math:`W_{hh} \in \mathbb R^{4h \times h}` is a random matrix with
    orthonormal columns (Keras ``orthogonal``, gain 1, on its ``(h, 4h)`` transpose); the bias is zero
    except the forget-gate slice of ``bias_ih``, which is 1 (``unit_forget_bias=True``). Keras has a
    single bias per LSTM, so ``bias_hh`` is zero. The gate order of both frameworks is
    (input, forget, cell, output).

    Args:
        lstm: the module to initialise (any number of layers and directions).

    Returns:
        ``lstm`` itself.

    Raises:
        TypeError: if ``lstm`` is not an ``nn.LSTM``.

    Example:
        >>> lstm = keras_lstm_init_(torch.nn.LSTM(8, 4, batch_first=True, bidirectional=True))
        >>> lstm.bias_ih_l0[4:8].tolist(), lstm.bias_hh_l0.abs().sum().item()
        ([1.0, 1.0, 1.0, 1.0], 0.0)

    Source:
        Keras ``tf.keras.layers.LSTM`` defaults (``kernel_initializer="glorot_uniform"``,
        ``recurrent_initializer="orthogonal"``, ``unit_forget_bias=True``), used unchanged by ViT-PCM,
        Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``).
    """
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm: expected a torch.nn.LSTM, got {type(lstm).__name__}")
    h = lstm.hidden_size
    for name, p in lstm.named_parameters():
        if name.startswith("weight_ih"):
            nn.init.xavier_uniform_(p)
        elif name.startswith("weight_hh"):
            nn.init.orthogonal_(p)
        elif name.startswith("bias_ih"):
            p.zero_()
            p[h:2 * h] = 1.0
        elif name.startswith("bias_hh"):
            p.zero_()
    return lstm


def _bilstm(seq: Tensor, lstm: nn.LSTM, p: float, mode: str, training: bool) -> Tensor:
    """Bidirectional LSTM over ``seq (n, t, D)`` with an independent input-dropout mask per direction."""
    if not training or p == 0.0:
        return lstm(seq)[0]
    n, t, d = seq.shape
    mask_shape = (2, n, t if mode == "step" else 1, d)
    keep = torch.empty(mask_shape, device=seq.device, dtype=seq.dtype).bernoulli_(1.0 - p).div_(1.0 - p)
    # one call on both masked copies; the forward direction is read from the first copy, the backward
    # direction from the second (Keras' Bidirectional wraps two LSTM layers, each drawing its own mask)
    out = lstm(rearrange(seq.unsqueeze(0) * keep, "k n t d -> (k n) t d"))[0]
    hid = lstm.hidden_size
    return torch.cat([out[:n, :, :hid], out[n:, :, hid:]], dim=-1)


def hv_bilstm(tokens: Tensor, rows: nn.LSTM, cols: nn.LSTM, *, dropout: float = 0.0, input_dropout: float = 0.0,
              input_dropout_mode: str = "step", training: bool = False) -> Tensor:
    r"""Functional HV-BiLSTM: dropout, a bidirectional LSTM along every row and one along every column.

    With :math:`\tilde F = \mathrm{Dropout}_{p}(F)` (one dropout shared by both branches),

    .. math::
        H_{b,r} = \big[\overrightarrow{\mathrm{LSTM}}_{row}(\tilde F_{b,r,\cdot}) \,\|\,
                       \overleftarrow{\mathrm{LSTM}}_{row}(\tilde F_{b,r,\cdot})\big], \quad
        V_{b,\cdot,c} = \big[\overrightarrow{\mathrm{LSTM}}_{col}(\tilde F_{b,\cdot,c}) \,\|\,
                             \overleftarrow{\mathrm{LSTM}}_{col}(\tilde F_{b,\cdot,c})\big], \quad
        F_{hv} = [H \,\|\, V]

    where a row sequence runs over the width (left to right for the forward direction) and a column
    sequence over the height (top to bottom), the backward outputs are aligned with the forward ones (as
    Keras' ``Bidirectional`` returns them), and :math:`\|` concatenates channels in the official order
    ``[H_fwd, H_bwd, V_fwd, V_bwd]``. All rows of all images go through ``rows`` in one call, all columns
    through ``cols`` in one call.

    Input dropout of each LSTM (``input_dropout``, training only): each of the four LSTMs (two branches ×
    two directions) draws its own mask (Keras ``Bidirectional`` holds two LSTM layers). ``"step"``
    (faithful default): an element-wise mask of shape (sequences, steps, D) — what TF 2.x Keras ``LSTM``
    does on its fused (cuDNN / ``standard_lstm``) path, which ViT-PCM's configuration takes (it multiplies
    the whole input sequence by ``dropout_mask[0]`` built from ``ones_like(inputs)``). ``"sequence"``: one
    mask per sequence, shape (sequences, 1, D), reused at every step (Keras ``LSTMCell`` semantics, the
    "variational" dropout of Gal & Ghahramani; taken only on Keras' non-fused path). Both are inverted
    dropout (kept values scaled by :math:`1/(1-p)`). With input dropout active, the two directions need
    different inputs, so the two masked copies are stacked along the batch and one bidirectional call
    runs on twice the sequences (the forward output is read from the first copy, the backward output from
    the second); in eval mode or with ``input_dropout = 0`` there is one call on the sequences themselves.

    Args:
        tokens: patch features :math:`F` on the grid (ViT tokens without CLS, reshaped row-major).
        rows: horizontal ``nn.LSTM(D, h, batch_first=True, bidirectional=True)``, one layer.
        cols: vertical LSTM of the same kind (separate weights).
        dropout: dropout rate :math:`p` on :math:`F` in [0, 1) (official 0.2).
        input_dropout: input-dropout rate of every LSTM in [0, 1) (official 0.2).
        input_dropout_mode: ``"step"`` or ``"sequence"``, see above.
        training: apply the dropouts (``False``: deterministic, no dropout).

    Shape:
        - tokens: :math:`(B, D, H, W)`; any grid, square (ViT-PCM: 24×24 at 384 px) or not.
        - output: :math:`(B, 4h, H, W)`, channels ``[H_fwd, H_bwd, V_fwd, V_bwd]`` of :math:`h` each.

    Raises:
        TypeError: if ``tokens`` is not a floating-point tensor or an LSTM is not an ``nn.LSTM``.
        ValueError: on a wrong rank, an empty grid, channels different from the LSTMs' input size,
            differing hidden sizes, non-bidirectional / not batch-first / multi-layer LSTMs, rates outside
            [0, 1) or an unknown ``input_dropout_mode``.

    Example:
        >>> rows = torch.nn.LSTM(8, 3, batch_first=True, bidirectional=True)
        >>> cols = torch.nn.LSTM(8, 3, batch_first=True, bidirectional=True)
        >>> hv_bilstm(torch.randn(2, 8, 5, 4), rows, cols).shape
        torch.Size([2, 12, 5, 4])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``:
        ``TimeDistributed(Bidirectional(LSTM(..., dropout, return_sequences=True)))`` on rows and on the
        transposed grid, ``tf.concat([h, v], -1)``), utils.py (``iT``).
    """
    check_tensor(tokens, "tokens", ndim=4, dims="(B, D, H, W)", dtype="float")
    _check_lstm(rows, "rows")
    _check_lstm(cols, "cols")
    b, d, h, w = tokens.shape
    if h == 0 or w == 0:
        raise ValueError(f"tokens: expected a non-empty grid (B, D, H, W), got shape {tuple(tokens.shape)}")
    for name, lstm in (("rows", rows), ("cols", cols)):
        if lstm.input_size != d:
            raise ValueError(f"tokens: expected {lstm.input_size} channels (the input size of {name}), "
                             f"got shape {tuple(tokens.shape)}")
    if rows.hidden_size != cols.hidden_size:
        raise ValueError(f"cols: expected hidden size {rows.hidden_size} (that of rows), got {cols.hidden_size}")
    p_in = _check_rate(input_dropout, "input_dropout")
    p = _check_rate(dropout, "dropout")
    if input_dropout_mode not in _DROPOUT_MODES:
        raise ValueError(f"input_dropout_mode: expected one of {_DROPOUT_MODES}, got {input_dropout_mode!r}")
    x = F.dropout(tokens, p, training=training) if p > 0.0 else tokens
    out_rows = _bilstm(rearrange(x, "b d h w -> (b h) w d"), rows, p_in, input_dropout_mode, training)
    out_cols = _bilstm(rearrange(x, "b d h w -> (b w) h d"), cols, p_in, input_dropout_mode, training)
    return torch.cat([rearrange(out_rows, "(b h) w c -> b c h w", b=b),
                      rearrange(out_cols, "(b w) h c -> b c h w", b=b)], dim=1)


class HVBiLSTM(nn.Module):
    r"""ViT-PCM's patch conditioning: horizontal and vertical bidirectional LSTMs over the patch grid.

    Dropout :math:`p` on the tokens :math:`F`, then a bidirectional LSTM (hidden size :math:`h` per
    direction, input dropout, ``tanh`` / ``sigmoid``, full sequence returned) along every row — the
    sequence runs over the width — and a second one with its own weights along every column; outputs
    concatenated as ``[H_fwd, H_bwd, V_fwd, V_bwd]`` (:func:`hv_bilstm`):

    .. math::
        F_{hv} = \big[\mathrm{BiLSTM}_{row}(\tilde F) \,\|\, \mathrm{BiLSTM}_{col}(\tilde F)\big]
        \in \mathbb R^{B \times 4h \times H \times W}, \qquad \tilde F = \mathrm{Dropout}_p(F)

    The dropouts are active in training mode only. The input dropout of the LSTMs is element-wise per
    time step by default (``input_dropout_mode="step"``, what ViT-PCM's TF 2.x Keras LSTM does, see
    :func:`hv_bilstm`); ``"sequence"`` reuses one mask per sequence over all steps (Keras ``LSTMCell`` /
    variational dropout). Training with input dropout runs each LSTM on twice the sequences (one masked
    copy per direction).

    Initialisation (``init="keras"``, default): the Keras ``LSTM`` defaults that ViT-PCM uses
    (:func:`keras_lstm_init_`: Glorot-uniform input kernel, orthogonal recurrent kernel, zero bias with
    forget-gate bias 1). ``init="torch"`` keeps PyTorch's :math:`\mathcal U(\pm 1/\sqrt h)`.

    Precision: float32 (or float64); under ``torch.autocast`` the ``nn.LSTM`` calls run in the autocast
    dtype (checked on CPU with bfloat16; CUDA autocast not checked here).

    Grids: any :math:`H \times W` works, square or not (ViT-PCM itself only uses square grids, 24×24 at
    384 px in training and 60×60 at 960 px at test time). The module's submodules ``rows`` and ``cols``
    are plain ``nn.LSTM`` (state-dict keys ``rows.weight_ih_l0``, ``rows.weight_ih_l0_reverse``, ...).

    Args:
        in_dim: D, token channels (768 for ViT-B/16).
        hidden: :math:`h`, hidden size per direction (official ``HIDDEN_SIZE`` 192).
        dropout: dropout rate on the tokens in [0, 1) (official ``DROPOUT`` 0.2).
        input_dropout: input-dropout rate of the LSTMs in [0, 1) (official 0.2, the same ``DROPOUT``).
        input_dropout_mode: ``"step"`` (faithful default) or ``"sequence"``.
        init: ``"keras"`` (faithful default) or ``"torch"``.

    Shape:
        - tokens: :math:`(B, D, H, W)`.
        - output: :math:`(B, 4h, H, W)` (768 channels for the official sizes).

    Raises:
        ValueError: on non-positive sizes, rates outside [0, 1) or unknown modes; in ``forward`` on a
            wrong rank, channel count or an empty grid.
        TypeError: in ``forward`` if ``tokens`` is not a floating-point tensor.

    Example:
        >>> m = HVBiLSTM(in_dim=16, hidden=4).eval()
        >>> m(torch.randn(2, 16, 6, 6)).shape
        torch.Size([2, 16, 6, 6])

    Source:
        ViT-PCM, Rossetti et al. ECCV 2022; github.com/deepplants/ViT-PCM, model.py (``HVBiLSTM``,
        ``get_model``), configs/voc12.yaml (``HIDDEN_SIZE: 192``, ``DROPOUT: 0.2``).
    """

    def __init__(self, in_dim: int = 768, hidden: int = 192, dropout: float = 0.2, input_dropout: float = 0.2,
                 input_dropout_mode: str = "step", init: str = "keras") -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        self.dropout = _check_rate(dropout, "dropout")
        self.input_dropout = _check_rate(input_dropout, "input_dropout")
        if input_dropout_mode not in _DROPOUT_MODES:
            raise ValueError(f"input_dropout_mode: expected one of {_DROPOUT_MODES}, got {input_dropout_mode!r}")
        if init not in ("keras", "torch"):
            raise ValueError(f"init: expected 'keras' or 'torch', got {init!r}")
        self.in_dim = in_dim
        self.hidden = hidden
        self.input_dropout_mode = input_dropout_mode
        self.init = init
        self.rows = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise both LSTMs (``init="keras"``: :func:`keras_lstm_init_`; ``"torch"``: PyTorch's)."""
        for lstm in (self.rows, self.cols):
            if self.init == "keras":
                keras_lstm_init_(lstm)
            else:
                lstm.reset_parameters()

    def forward(self, tokens: Tensor) -> Tensor:
        """Conditioned features ``(B, 4·hidden, H, W)`` of the token grid ``tokens (B, in_dim, H, W)``."""
        return hv_bilstm(tokens, self.rows, self.cols, dropout=self.dropout, input_dropout=self.input_dropout,
                         input_dropout_mode=self.input_dropout_mode, training=self.training)

    def extra_repr(self) -> str:
        return (f"in_dim={self.in_dim}, hidden={self.hidden}, dropout={self.dropout}, "
                f"input_dropout={self.input_dropout}, input_dropout_mode={self.input_dropout_mode!r}, "
                f"init={self.init!r}")
