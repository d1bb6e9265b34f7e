"""Tests for wsseg.backbones.ResNet38d (WideResNet-38, SLRNet backbone) and its official-layout loader."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.reference.official_slrnet_resnet38d import (
    OFFICIAL_FIXED_PREFIXES,
    official_checkpoint_shapes,
    official_forward,
    official_num_params,
)
from wsseg.backbones import (
    RESNET38D_FEATURES,
    BackboneOutput,
    LoadReport,
    ResNet38d,
    load_resnet38d_weights,
    resnet38d,
)

TINY = 16  # width divisor of the fast variant
ALL = ("conv1", "conv3", "conv4", "conv5", "conv6")


def _synthetic_checkpoint(divisor: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors in the official converted key layout (no num_batches_tracked)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_checkpoint_shapes(divisor).items():
        if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            state[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return state


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    state = _synthetic_checkpoint(TINY)
    path = tmp_path_factory.mktemp("wr38") / "ilsvrc-cls_rna-a1_cls1000_ep-0001.pth"
    torch.save(state, path)
    return state, path


def _ceil_div(n: int, s: int) -> int:
    return -(-n // s)


# ----------------------------------------------------------------------------- architecture (full width)

def test_full_width_parameter_count_and_keys_match_official():
    with torch.device("meta"):
        net = ResNet38d()
    n_params = sum(p.numel() for p in net.parameters())
    # hand count from the official ResNet38 definition (conv weights + BN affine, no classifier)
    assert n_params == official_num_params() == 105_070_912
    # one block by hand: b7 = bn(2048) + 1x1 2048->1024 + bn(1024) + 3x3 1024->2048 + bn(2048)
    #                         + 1x1 2048->4096 + shortcut 1x1 2048->4096
    b7 = 2 * 2048 + 2048 * 1024 + 2 * 1024 + 9 * 1024 * 2048 + 2 * 2048 + 2048 * 4096 + 2048 * 4096
    assert sum(p.numel() for p in net.b7.parameters()) == b7
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert shapes == official_checkpoint_shapes()


@pytest.mark.parametrize("hw", [(321, 321), (320, 240), (33, 47)])
def test_full_width_shapes_output_stride_8(hw):
    with torch.device("meta"):
        net = ResNet38d(out_features=ALL).eval()
        out = net(torch.empty(2, 3, *hw))
    assert isinstance(out, BackboneOutput) and out.attn_logits == []
    assert net.out_channels == [64, 256, 512, 1024, 4096]
    assert net.out_strides == [1, 4, 8, 8, 8]
    expected = [(2, c, _ceil_div(hw[0], s), _ceil_div(hw[1], s))
                for c, s in zip(net.out_channels, net.out_strides, strict=True)]
    assert [tuple(f.shape) for f in out.features] == expected
    if hw == (321, 321):  # spec §1.1: conv3 = 256x81x81, conv6 = 4096x41x41
        assert expected[1][1:] == (256, 81, 81) and expected[4][1:] == (4096, 41, 41)


def test_default_features_are_slrnet_decoder_inputs():
    with torch.device("meta"):
        net = ResNet38d()
        out = net.eval()(torch.empty(1, 3, 64, 48))
    assert net.out_features == ("conv3", "conv6")
    assert (net.out_channels, net.out_strides) == ([256, 4096], [4, 8])
    assert [tuple(f.shape) for f in out.features] == [(1, 256, 16, 12), (1, 4096, 8, 6)]
    assert RESNET38D_FEATURES["conv6"] == (4096, 8)


def test_dilations_and_strides_of_official_blocks():
    with torch.device("meta"):
        net = ResNet38d()
    assert net.b4.conv_branch2a.stride == (2, 2) and net.b5.conv_branch2a.stride == (1, 1)
    assert net.b5.conv_branch2a.dilation == (1, 1) and net.b5.conv_branch2b1.dilation == (2, 2)
    assert net.b5_1.conv_branch2a.dilation == (2, 2) and net.b5_1.conv_branch2a.padding == (2, 2)
    assert net.b6.conv_branch2b1.dilation == (4, 4) and net.b7.conv_branch2b1.padding == (4, 4)
    assert (net.b6.dropout_2b1.p, net.b7.dropout_2b2.p) == (0.3, 0.5)


# ----------------------------------------------------------------------------- numerics vs the reference

def test_matches_official_formulation_and_loader_accepts_official_layout(tiny_ckpt):
    state, path = tiny_ckpt
    assert not any("num_batches_tracked" in k for k in state)
    net = resnet38d(weights=path, out_features=ALL, width_divisor=TINY).eval()
    x = torch.randn(2, 3, 37, 50, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = net(x).features
        ref = official_forward(state, x)
    for name, f in zip(ALL, got, strict=True):
        torch.testing.assert_close(f, ref[name], rtol=1e-4, atol=1e-4, msg=name)
    assert ref["conv6"].abs().max() > 0.1  # not a degenerate all-zero comparison


def test_frozen_bn_train_mode_equals_eval_mode(tiny_ckpt):
    state, _ = tiny_ckpt
    net = ResNet38d(width_divisor=TINY, drop_rates=(0.0, 0.0))
    net.load_state_dict(state, strict=False)
    x = torch.randn(2, 3, 40, 40)
    net.train()
    with torch.no_grad():
        train_out = net(x).features
    ref = official_forward(state, x)
    torch.testing.assert_close(train_out[0], ref["conv3"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(train_out[1], ref["conv6"], rtol=1e-4, atol=1e-4)


def test_dropout_only_in_b6_b7_and_only_in_train_mode(tiny_ckpt):
    state, _ = tiny_ckpt
    net = ResNet38d(width_divisor=TINY, out_features=("conv3", "conv5", "conv6"))
    net.load_state_dict(state, strict=False)
    x = torch.randn(1, 3, 32, 32)
    torch.manual_seed(0)
    a = net.train()(x).features
    b = net(x).features
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # conv3, conv5: before any dropout
    assert not torch.allclose(a[2], b[2])  # conv6 follows Dropout2d in b6/b7
    net.eval()
    assert torch.equal(net(x).features[2], net(x).features[2])


# ----------------------------------------------------------------------------- freezing

def _backward(net, x):
    out = net(x).features
    sum(f.square().mean() for f in out).backward()


def test_frozen_bn_and_stages_get_no_update(tiny_ckpt):
    state, _ = tiny_ckpt
    net = ResNet38d(width_divisor=TINY)
    net.load_state_dict(state, strict=False)
    net.requires_grad_(True)  # the official train() re-freezes
    net.train()
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    _backward(net, torch.randn(2, 3, 24, 24))
    for k, v in net.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), k
    for name, p in net.named_parameters():
        is_bn = ".bn" in name or name.startswith("bn7")
        frozen = is_bn or name.startswith(OFFICIAL_FIXED_PREFIXES)
        assert p.requires_grad is not frozen, name
        if frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert net.split_norm_parameters()[0] == []
    weights, biases = net.parameter_groups()
    assert biases == [] and len(weights) == sum(1 for n, _ in net.named_parameters()
                                                 if not n.startswith(OFFICIAL_FIXED_PREFIXES)
                                                 and "conv" in n)


def test_freeze_bn_false_trains_bn_outside_frozen_stages():
    torch.manual_seed(0)
    net = ResNet38d(width_divisor=TINY, freeze_bn=False, freeze_stages=2).train()
    assert all(not m.training for m in net.frozen_modules())
    assert net.b3.training
    _backward(net, torch.randn(2, 3, 24, 24))
    assert int(net.b3.bn_branch2a.num_batches_tracked) == 1
    assert int(net.b2.bn_branch2a.num_batches_tracked) == 0  # frozen stage kept in eval mode
    assert net.b3.bn_branch2a.weight.grad is not None and net.b2.bn_branch2a.weight.grad is None
    norm, _ = net.split_norm_parameters()
    _, biases = net.parameter_groups()
    assert len(biases) == len(norm) // 2 > 0  # BN biases of stages 3..7


@pytest.mark.parametrize("stages, frozen_prefix, trained_prefix", [
    (0, None, "conv1a."), (1, "conv1a.", "b2."), (3, "b3_2.", "b4."), (7, "bn7.", None)])
def test_freeze_stages_option(stages, frozen_prefix, trained_prefix):
    with torch.device("meta"):
        net = ResNet38d(freeze_stages=stages, freeze_bn=False)
    params = dict(net.named_parameters())
    if frozen_prefix:
        assert not any(p.requires_grad for n, p in params.items() if n.startswith(frozen_prefix))
    if trained_prefix:
        assert all(p.requires_grad for n, p in params.items() if n.startswith(trained_prefix))
    if stages == 7:
        assert net.parameter_groups() == ([], [])


# ----------------------------------------------------------------------------- loader errors

def test_loader_accepts_own_state_dict_with_wrapper(tmp_path):
    src = ResNet38d(width_divisor=TINY)
    path = tmp_path / "own.pth"
    torch.save({"state_dict": {"module." + k: (v.half() if v.is_floating_point() else v)
                                  for k, v in src.state_dict().items()}}, path)
    dst = ResNet38d(width_divisor=TINY)
    assert dst.load_weights(path) == LoadReport([], [])
    assert dst.b4_3.conv_branch2b1.weight.dtype == torch.float32
    assert torch.equal(dst.b4_3.conv_branch2b1.weight, src.b4_3.conv_branch2b1.weight.half().float())


def test_loader_rejects_renamed_key_naming_file_and_key(tiny_ckpt, tmp_path):
    state, _ = tiny_ckpt
    bad = dict(state)
    bad["b2.bn2a.weight"] = bad.pop("b2.bn_branch2a.weight")
    path = tmp_path / "renamed.pth"
    torch.save(bad, path)
    net = ResNet38d(width_divisor=TINY)
    before = net.conv1a.weight.clone()
    with pytest.raises(RuntimeError, match=r"renamed\.pth.*first unexpected key 'b2\.bn2a\.weight'"):
        load_resnet38d_weights(net, path)
    assert torch.equal(net.conv1a.weight, before)  # nothing loaded
    report = load_resnet38d_weights(net, path, strict=False)
    assert report == LoadReport(["b2.bn_branch2a.weight"], ["b2.bn2a.weight"])
    assert torch.equal(net.conv1a.weight, state["conv1a.weight"])


def test_loader_rejects_missing_key_and_classifier(tiny_ckpt, tmp_path):
    state, _ = tiny_ckpt
    missing = {k: v for k, v in state.items() if k != "b7.conv_branch1.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(RuntimeError, match=r"missing\.pth.*first missing key 'b7\.conv_branch1\.weight'"):
        load_resnet38d_weights(ResNet38d(width_divisor=TINY), tmp_path / "missing.pth")
    extra = dict(state, **{"fc8.weight": torch.zeros(20, 256, 1, 1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(RuntimeError, match=r"first unexpected key 'fc8\.weight'"):
        load_resnet38d_weights(ResNet38d(width_divisor=TINY), tmp_path / "extra.pth")


def test_loader_rejects_wrong_width(tiny_ckpt):
    _, path = tiny_ckpt
    with pytest.raises(RuntimeError, match=r"'conv1a\.weight' has shape \(4, 3, 3, 3\).*\(2, 3, 3, 3\)"):
        load_resnet38d_weights(ResNet38d(width_divisor=32), path)


def test_loader_type_and_file_errors(tmp_path, tiny_ckpt):
    _, path = tiny_ckpt
    with pytest.raises(TypeError, match="model: expected a wsseg.backbones.ResNet38d"):
        load_resnet38d_weights(torch.nn.Linear(2, 2), path)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_resnet38d_weights(ResNet38d(width_divisor=TINY), tmp_path / "nope.pth")


# ----------------------------------------------------------------------------- validation, misc

def test_input_validation():
    net = ResNet38d(width_divisor=64)
    with pytest.raises(ValueError, match=r"x: expected 3 channels"):
        net(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
        net(torch.zeros(3, 16, 16))
    with pytest.raises(TypeError, match=r"x: expected a floating-point dtype"):
        net(torch.zeros(1, 3, 16, 16, dtype=torch.long))


@pytest.mark.parametrize("kwargs, match", [
    (dict(out_features=("conv2",)), "out_features"), (dict(out_features=("conv3", "conv3")), "out_features"),
    (dict(out_features=()), "out_features"), (dict(freeze_stages=8), "freeze_stages"),
    (dict(drop_rates=(0.3,)), "drop_rates"), (dict(drop_rates=(0.3, 1.0)), "drop_rates"),
    (dict(width_divisor=3), "width_divisor"), (dict(width_divisor=0), "width_divisor")])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet38d(**kwargs)


def test_extra_repr_and_out_feature_order():
    net = ResNet38d(width_divisor=TINY, out_features=("conv6", "conv1"))
    r = repr(net)
    assert "freeze_bn=True" in r and "freeze_stages=2" in r and "drop_rates=(0.3, 0.5)" in r
    out = net.eval()(torch.randn(1, 3, 17, 17)).features
    assert [tuple(f.shape) for f in out] == [(1, 256, 3, 3), (1, 4, 17, 17)]


def test_shallow_only_features_match_full_run():
    torch.manual_seed(0)
    net = ResNet38d(width_divisor=TINY, out_features=ALL).eval()
    x = torch.randn(1, 3, 20, 20)
    full = net(x).features
    net.out_features = ("conv3",)
    assert torch.equal(net(x).features[0], full[1])


def test_gradient_reaches_input_through_frozen_layers():
    net = ResNet38d(width_divisor=64).train()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    F.relu(net(x).features[1]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
