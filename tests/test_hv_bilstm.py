"""Tests of ViT-PCM's HVBiLSTM, PatchClassifier and the Keras weight converter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from einops import rearrange
from torch import nn

from tests.reference.official_vitpcm_lstm import (
    keras_dense_numpy,
    keras_hv_bilstm_numpy,
    loop_hv_bilstm,
    random_keras_lstm,
)
from wsseg.layers import HVBiLSTM, PatchClassifier, hv_bilstm, keras_lstm_init_, patch_classifier
from wsseg.models.vitpcm_keras import (
    KERAS_VITPCM_KEYS,
    hv_bilstm_state_from_keras,
    keras_lstm_to_torch,
    keras_vitpcm_key,
    load_vitpcm_keras_weights,
    patch_classifier_state_from_keras,
)


def _module(d=6, h=3, **kw) -> HVBiLSTM:
    torch.manual_seed(0)
    return HVBiLSTM(in_dim=d, hidden=h, **kw).double()


# ----------------------------------------------------------------------------- HVBiLSTM: values


@pytest.mark.parametrize("grid", [(5, 5), (1, 1), (3, 6), (7, 2)])
def test_equals_per_row_loop_eval(grid):
    m = _module().eval()
    x = torch.randn(2, 6, *grid, dtype=torch.float64)
    out = m(x)
    assert out.shape == (2, 12, *grid)
    torch.testing.assert_close(out, loop_hv_bilstm(x, m.rows, m.cols), rtol=1e-12, atol=1e-12)


def test_train_without_dropout_equals_eval():
    m = _module(dropout=0.0, input_dropout=0.0).train()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(m(x), loop_hv_bilstm(x, m.rows, m.cols), rtol=1e-12, atol=1e-12)


def test_keras_numpy_reference_through_converter():
    """Random Keras-layout arrays → converted module == NumPy transcription of the Keras layers."""
    rng = np.random.default_rng(0)
    d, h, c = 5, 3, 4
    arrays = random_keras_lstm(rng, d, h)
    arrays["classifier/kernel"] = rng.normal(0, 0.5, (4 * h, c))
    hv = HVBiLSTM(in_dim=d, hidden=h).double().eval()
    pc = PatchClassifier(in_dim=4 * h, num_classes=c).double().eval()
    load_vitpcm_keras_weights(nn.ModuleDict({"hv": hv, "pc": pc}), arrays)
    feats_cl = rng.normal(size=(2, 4, 3, d))  # channels-last (B, Gh, Gw, D), non-square
    ref_hv = keras_hv_bilstm_numpy(feats_cl, arrays)
    ref_logits = keras_dense_numpy(ref_hv, arrays["classifier/kernel"])
    x = torch.from_numpy(feats_cl).permute(0, 3, 1, 2)
    out_hv = hv(x)
    np.testing.assert_allclose(out_hv.permute(0, 2, 3, 1).detach().numpy(), ref_hv, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pc(out_hv).permute(0, 2, 3, 1).detach().numpy(), ref_logits, rtol=1e-10,
                               atol=1e-12)


def test_transpose_equivariance_swaps_branches():
    """Transposing the grid and swapping the two LSTMs transposes the output and swaps the H/V halves."""
    m = _module().eval()
    x = torch.randn(2, 6, 3, 5, dtype=torch.float64)
    out = m(x)
    swapped = hv_bilstm(x.transpose(2, 3), m.cols, m.rows)
    expected = torch.cat([out[:, 6:], out[:, :6]], dim=1).transpose(2, 3)
    torch.testing.assert_close(swapped, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels, row_only, causal", [
    (slice(0, 3), True, "left"),    # horizontal forward: row r, columns <= c
    (slice(3, 6), True, "right"),   # horizontal backward: row r, columns >= c
    (slice(6, 9), False, "left"),   # vertical forward: column c, rows <= r
    (slice(9, 12), False, "right"),  # vertical backward: column c, rows >= r
])
def test_receptive_field_of_each_channel_block(channels, row_only, causal):
    m = _module().eval()
    x = torch.randn(1, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    r, c = 2, 3
    m(x)[0, channels, r, c].sum().backward()
    dep = x.grad[0].abs().sum(0) > 0  # (H, W)
    expected = torch.zeros(5, 5, dtype=torch.bool)
    if row_only:
        cols = range(0, c + 1) if causal == "left" else range(c, 5)
        expected[r, list(cols)] = True
    else:
        rows = range(0, r + 1) if causal == "left" else range(r, 5)
        expected[list(rows), c] = True
    assert torch.equal(dep, expected)


def test_function_equals_module():
    m = _module().eval()
    x = torch.randn(2, 6, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), hv_bilstm(x, m.rows, m.cols), rtol=0, atol=0)


# ----------------------------------------------------------------------------- HVBiLSTM: dropout


def _capture_lstm_inputs(m: HVBiLSTM) -> dict:
    seen = {}
    m.rows.register_forward_pre_hook(lambda mod, args: seen.__setitem__("rows", args[0].detach().clone()))
    m.cols.register_forward_pre_hook(lambda mod, args: seen.__setitem__("cols", args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("mode", ["sequence", "step"])
def test_input_dropout_mask_pattern(mode):
    torch.manual_seed(1)
    p, b, d, g = 0.5, 3, 16, 8
    m = HVBiLSTM(in_dim=d, hidden=2, dropout=0.0, input_dropout=p, input_dropout_mode=mode).train()
    seen = _capture_lstm_inputs(m)
    m(torch.ones(b, d, g, g))
    for branch in ("rows", "cols"):
        masks = seen[branch]
        assert masks.shape == (2 * b * g, g, d)  # one masked copy per direction
        assert set(masks.unique().tolist()) <= {0.0, 1.0 / (1.0 - p)}
        assert abs((masks == 0).float().mean().item() - p) < 0.08
        const_in_time = torch.equal(masks, masks[:, :1].expand_as(masks))
        assert const_in_time == (mode == "sequence")
        fwd, bwd = masks[: b * g], masks[b * g:]
        assert not torch.equal(fwd, bwd)  # independent masks per direction
        assert (fwd[:, 0] != fwd[:1, 0]).any()  # independent masks per sequence
    assert not torch.equal(seen["rows"], seen["cols"])  # and per branch


@pytest.mark.parametrize("mode", ["sequence", "step"])
def test_train_output_reads_each_direction_from_its_own_copy(mode):
    torch.manual_seed(2)
    m = HVBiLSTM(in_dim=6, hidden=3, dropout=0.0, input_dropout=0.3, input_dropout_mode=mode).double().train()
    seen = _capture_lstm_inputs(m)
    b, gh, gw = 2, 3, 4
    out = m(torch.randn(b, 6, gh, gw, dtype=torch.float64))
    with torch.no_grad():
        blocks = []
        for branch, n, seq_axis in (("rows", b * gh, "w"), ("cols", b * gw, "h")):
            lstm = getattr(m, branch)
            xs = seen[branch]
            fwd = torch.stack([lstm(xs[i: i + 1])[0][0, :, :3] for i in range(n)])
            bwd = torch.stack([lstm(xs[n + i: n + i + 1])[0][0, :, 3:] for i in range(n)])
            y = torch.cat([fwd, bwd], -1)
            pattern = "(b h) w c -> b c h w" if seq_axis == "w" else "(b w) h c -> b c h w"
            blocks.append(rearrange(y, pattern, b=b))
    torch.testing.assert_close(out, torch.cat(blocks, 1), rtol=1e-12, atol=1e-12)


def test_token_dropout_is_shared_by_both_branches():
    torch.manual_seed(3)
    b, d, g = 2, 32, 6
    m = HVBiLSTM(in_dim=d, hidden=2, dropout=0.5, input_dropout=0.0).train()
    seen = _capture_lstm_inputs(m)
    m(torch.ones(b, d, g, g))
    from_rows = rearrange(seen["rows"], "(b h) w d -> b d h w", b=b)
    from_cols = rearrange(seen["cols"], "(b w) h d -> b d h w", b=b)
    assert torch.equal(from_rows, from_cols)
    assert set(from_rows.unique().tolist()) == {0.0, 2.0}
    assert abs((from_rows == 0).float().mean().item() - 0.5) < 0.06


def test_eval_is_deterministic_and_dropout_free():
    m = HVBiLSTM(in_dim=6, hidden=3, dropout=0.5, input_dropout=0.5).eval()
    x = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(m(x), loop_hv_bilstm(x, m.rows, m.cols), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- HVBiLSTM: init, grads, dtypes


def test_keras_initialisation():
    torch.manual_seed(0)
    d, h = 96, 24
    m = HVBiLSTM(in_dim=d, hidden=h)
    bound = math.sqrt(6.0 / (d + 4 * h))
    expected_bias = torch.zeros(4 * h)
    expected_bias[h:2 * h] = 1.0
    for lstm in (m.rows, m.cols):
        for sfx in ("l0", "l0_reverse"):
            w_ih = getattr(lstm, f"weight_ih_{sfx}")
            w_hh = getattr(lstm, f"weight_hh_{sfx}")
            assert w_ih.abs().max() <= bound
            assert abs(w_ih.std().item() - bound / math.sqrt(3.0)) < 0.05 * bound
            torch.testing.assert_close(w_hh.t() @ w_hh, torch.eye(h), rtol=0, atol=1e-5)
            assert torch.equal(getattr(lstm, f"bias_ih_{sfx}").detach(), expected_bias)
            assert torch.equal(getattr(lstm, f"bias_hh_{sfx}").detach(), torch.zeros(4 * h))
    torch_init = HVBiLSTM(in_dim=d, hidden=h, init="torch")
    assert torch_init.rows.bias_hh_l0.abs().sum() > 0
    assert torch_init.rows.weight_ih_l0.abs().max() <= 1.0 / math.sqrt(h)
    with pytest.raises(TypeError, match="lstm"):
        keras_lstm_init_(nn.GRU(3, 2))


def test_gradcheck_float64():
    m = _module(d=3, h=2).eval()
    x = torch.randn(1, 3, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))
    x0 = x.detach()
    for name in ("rows.weight_hh_l0_reverse", "cols.weight_ih_l0"):
        w = dict(m.named_parameters())[name].detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda t, n=name: torch.func.functional_call(m, {n: t}, (x0,)), (w,))


def test_float32_backward_and_cpu_autocast_bf16():
    m = HVBiLSTM(in_dim=8, hidden=4).train()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = m(x)
    assert out.dtype == torch.float32
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.detach())
    assert y.shape == (2, 16, 4, 4) and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), m(x.detach()), rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------- HVBiLSTM: errors


def test_hv_bilstm_errors():
    m = HVBiLSTM(in_dim=6, hidden=3)
    with pytest.raises(ValueError, match=r"tokens: expected a 4-D"):
        m(torch.randn(2, 6, 4))
    with pytest.raises(TypeError, match="tokens: expected a floating-point"):
        m(torch.ones(2, 6, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"tokens: expected 6 channels"):
        m(torch.randn(2, 5, 4, 4))
    with pytest.raises(ValueError, match="non-empty grid"):
        m(torch.randn(2, 6, 0, 4))
    with pytest.raises(TypeError, match="rows: expected a torch.nn.LSTM"):
        hv_bilstm(torch.randn(1, 6, 2, 2), nn.GRU(6, 3), m.cols)
    with pytest.raises(ValueError, match="cols: expected nn.LSTM"):
        hv_bilstm(torch.randn(1, 6, 2, 2), m.rows, nn.LSTM(6, 3, batch_first=True))
    with pytest.raises(ValueError, match="cols: expected hidden size 3"):
        hv_bilstm(torch.randn(1, 6, 2, 2), m.rows, nn.LSTM(6, 4, batch_first=True, bidirectional=True))
    with pytest.raises(ValueError, match="input_dropout_mode"):
        hv_bilstm(torch.randn(1, 6, 2, 2), m.rows, m.cols, input_dropout_mode="time")
    for kw, name in ((dict(in_dim=0), "in_dim"), (dict(hidden=2.5), "hidden"), (dict(dropout=1.0), "dropout"),
                     (dict(input_dropout=-0.1), "input_dropout"), (dict(input_dropout_mode="x"), "input_dropout_mode"),
                     (dict(init="xavier"), "init")):
        with pytest.raises(ValueError, match=name):
            HVBiLSTM(**kw)
    rep = repr(HVBiLSTM(in_dim=6, hidden=3))
    assert "in_dim=6, hidden=3, dropout=0.2, input_dropout=0.2, input_dropout_mode='step', init='keras'" in rep


# ----------------------------------------------------------------------------- PatchClassifier


def test_patch_classifier_hand_computed_and_no_bias():
    pc = PatchClassifier(in_dim=2, num_classes=3).eval()
    assert [n for n, _ in pc.named_parameters()] == ["weight"]
    with torch.no_grad():
        pc.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 3.0]]))
    feat = torch.tensor([[1.0, -2.0], [0.5, 4.0]]).reshape(1, 2, 1, 2)  # pixel 0: (1, 0.5), pixel 1: (-2, 4)
    expected = torch.tensor([[2.0, 6.0], [-0.75, 4.0], [1.5, 12.0]]).reshape(1, 3, 1, 2)
    torch.testing.assert_close(pc(feat), expected)
    torch.testing.assert_close(patch_classifier(feat, pc.weight), expected)
    # l2 = 0.01 * (1 + 4 + 1 + 0.25 + 0 + 9) = 0.1525
    torch.testing.assert_close(pc.l2_penalty(), torch.tensor(0.1525))
    pc.l2_penalty().backward()
    torch.testing.assert_close(pc.weight.grad, 0.02 * pc.weight.detach())


def test_patch_classifier_init_statistics():
    torch.manual_seed(0)
    w = PatchClassifier(in_dim=768, num_classes=21).weight.detach()  # 16128 draws
    assert abs(w.mean().item()) < 3 * 0.05 / math.sqrt(w.numel())
    assert abs(w.std().item() - 0.05) < 0.05 * 0.03
    w2 = PatchClassifier(in_dim=768, num_classes=21, init_std=0.2).weight.detach()
    assert abs(w2.std().item() - 0.2) < 0.2 * 0.03


def test_patch_classifier_dropout_and_gradcheck():
    torch.manual_seed(0)
    pc = PatchClassifier(in_dim=64, num_classes=1, dropout=0.5).train()
    with torch.no_grad():
        pc.weight.fill_(1.0)
    feat = torch.zeros(2, 64, 8, 8)
    feat[:, 5] = 1.0  # the logit equals the (possibly dropped, scaled) channel 5
    out = pc(feat)
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert abs((out == 0).float().mean().item() - 0.5) < 0.15
    pc.eval()
    torch.testing.assert_close(pc(feat), torch.ones(2, 1, 8, 8))
    feat64 = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: patch_classifier(f, w), (feat64, w64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pc(feat).dtype == torch.bfloat16


def test_patch_classifier_errors():
    pc = PatchClassifier(in_dim=4, num_classes=3)
    with pytest.raises(ValueError, match=r"feat: expected 4 channels"):
        pc(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match=r"feat: expected a 4-D"):
        pc(torch.randn(1, 4, 2))
    with pytest.raises(TypeError, match="feat: expected a floating-point"):
        pc(torch.ones(1, 4, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        patch_classifier(torch.randn(1, 4, 2, 2), torch.randn(3, 4, 1, 1))
    for kw, name in ((dict(num_classes=0), "num_classes"), (dict(dropout=1.5), "dropout"),
                     (dict(init_std=0.0), "init_std"), (dict(l2=-1.0), "l2"), (dict(in_dim=True), "in_dim")):
        with pytest.raises(ValueError, match=name):
            PatchClassifier(**kw)
    assert "in_dim=4, num_classes=3, dropout=0.2, init_std=0.05, l2=0.01" in repr(pc)


# ----------------------------------------------------------------------------- converter


def test_converter_single_direction_and_keras_names():
    rng = np.random.default_rng(1)
    k, r, b = rng.normal(size=(5, 8)), rng.normal(size=(2, 8)), rng.normal(size=8)
    sd = keras_lstm_to_torch(k, r, b)
    lstm = nn.LSTM(5, 2, batch_first=True).double()
    lstm.load_state_dict({f"{n}_l0": v for n, v in sd.items()})
    x = rng.normal(size=(7, 5))
    from tests.reference.official_vitpcm_lstm import keras_lstm_numpy

    np.testing.assert_allclose(lstm(torch.from_numpy(x)[None])[0][0].detach().numpy(),
                               keras_lstm_numpy(x, k, r, b), rtol=1e-10, atol=1e-12)
    names = {key: f"patch_conditioning/temporal_{key.split('/')[0]}/bidirection_{key.split('/')[0]}/"
                  f"{key.split('/')[1]}_lstm_{key.split('/')[0]}/lstm_cell/{key.split('/')[2]}:0"
             for key in KERAS_VITPCM_KEYS if key != "classifier/kernel"}
    names["classifier/kernel"] = "patch_classifier/classifier/kernel:0"
    assert {keras_vitpcm_key(v): k for k, v in names.items()} == {k: k for k in names}
    assert keras_vitpcm_key("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel:0") is None
    arrays = random_keras_lstm(rng, 4, 2)
    arrays["classifier/kernel"] = rng.normal(size=(8, 3))
    by_name = {names[k]: v for k, v in arrays.items()}
    by_name["Transformer/encoder_norm/scale:0"] = np.ones(4)  # ignored
    a, b2 = hv_bilstm_state_from_keras(arrays), hv_bilstm_state_from_keras(by_name)
    assert a.keys() == b2.keys() == HVBiLSTM(in_dim=4, hidden=2).state_dict().keys()
    assert all(torch.equal(a[n], b2[n]) for n in a)
    assert torch.equal(patch_classifier_state_from_keras(by_name)["weight"],
                       torch.from_numpy(arrays["classifier/kernel"]).t())


def test_converter_errors():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="recurrent_kernel: expected shape"):
        keras_lstm_to_torch(np.zeros((5, 8)), np.zeros((3, 8)), np.zeros(8))
    with pytest.raises(ValueError, match="bias: expected shape"):
        keras_lstm_to_torch(np.zeros((5, 8)), np.zeros((2, 8)), np.zeros(4))
    with pytest.raises(ValueError, match="kernel: expected shape"):
        keras_lstm_to_torch(np.zeros((5, 6)), np.zeros((2, 8)), np.zeros(8))
    with pytest.raises(TypeError, match="kernel: expected a floating-point"):
        keras_lstm_to_torch(np.zeros((5, 8), dtype=np.int64), np.zeros((2, 8)), np.zeros(8))
    arrays = random_keras_lstm(rng, 4, 2)
    del arrays["cols/backward/bias"]
    with pytest.raises(ValueError, match="missing.*cols/backward/bias"):
        hv_bilstm_state_from_keras(arrays)
    arrays = random_keras_lstm(rng, 4, 2)
    arrays["x/forward_lstm_rows/y/kernel:0"] = arrays["rows/forward/kernel"]
    with pytest.raises(ValueError, match="two entries"):
        hv_bilstm_state_from_keras(arrays)
    with pytest.raises(ValueError, match=r"expects shape"):
        load_vitpcm_keras_weights(HVBiLSTM(in_dim=5, hidden=2), random_keras_lstm(rng, 4, 2))
    with pytest.raises(ValueError, match="HVBiLSTM and/or a PatchClassifier"):
        load_vitpcm_keras_weights(nn.Linear(2, 2), {})
    with pytest.raises(ValueError, match="at most one PatchClassifier"):
        load_vitpcm_keras_weights(nn.Sequential(PatchClassifier(2, 2), PatchClassifier(2, 2)), {})
    with pytest.raises(TypeError, match="module"):
        load_vitpcm_keras_weights("model", {})
