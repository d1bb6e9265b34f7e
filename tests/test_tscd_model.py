"""Tests of the TSCD reference model (``wsseg.models.TSCDNet``, builders ``tscd`` / ``tscd_mit_b1``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import wsseg
from wsseg.models import TSCDNet, TSCDOutput


def _mit(**kw):
    kw.setdefault("decoder_dim", 16)
    return wsseg.create_model("tscd", backbone="mit_b0", num_classes=3, **kw)


def _vit(**kw):
    kw.setdefault("decoder_dim", 8)
    return wsseg.create_model("tscd", backbone="test_vit", num_classes=3, **kw)


@pytest.fixture(scope="module")
def mit():
    torch.manual_seed(0)
    return _mit()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return _vit()


def test_registry():
    names = wsseg.list_models()
    assert "tscd" in names and "tscd_mit_b1" in names
    assert wsseg.is_model("tscd")


def test_output_shapes_mit(mit):
    out = mit(torch.randn(2, 3, 64, 64))
    assert isinstance(out, TSCDOutput)
    assert out.cls.shape == (2, 3)
    assert out.seg.shape == (2, 4, 16, 16)          # stride 4, K+1 channels
    assert out.attn_logits.shape == (2, 16, 16, 16)  # 2 blocks x 8 heads, N = (64/16)^2
    assert out.aff.shape == (2, 16, 16)
    assert bool(((out.aff > 0) & (out.aff < 1)).all())
    assert mit.stride == 16 and mit.seg_stride == 4
    assert list(mit.encoder.out_strides) == [4, 8, 16, 16]


def test_output_shapes_vit(vit):
    out = vit(torch.randn(2, 3, 64, 96))
    assert out.cls.shape == (2, 3)
    assert out.seg.shape == (2, 4, 4, 6)            # ViT: stride = patch size 16
    assert out.attn_logits.shape == (2, 4, 24, 24)  # 2 blocks x 2 heads
    assert out.aff.shape == (2, 24, 24)
    assert vit.stride == 16 and vit.seg_stride == 16
    assert vit.encoder.attn_indices == (4, 5)       # last two of 6 blocks
    assert len(vit.encoder.out_indices) == 4


def test_cam_is_detached_linear_map_of_last_features(mit):
    mit.eval()
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    cam = mit.cam(x)
    assert cam.shape == (2, 3, 4, 4)
    assert not cam.requires_grad
    feats = mit.encoder(x).features[-1]
    ref = torch.einsum("kc,bchw->bkhw", mit.classifier.weight[:, :, 0, 0], feats)
    torch.testing.assert_close(cam, ref.detach(), rtol=1e-5, atol=1e-5)
    assert bool((cam < 0).any())  # raw CAM: no ReLU inside the model
    mit.train()


def test_cls_is_gmp_then_bias_free_conv(mit):
    mit.eval()
    x = torch.randn(2, 3, 64, 64)
    out = mit(x)
    feats = mit.encoder(x).features[-1]
    ref = feats.amax(dim=(-2, -1)) @ mit.classifier.weight[:, :, 0, 0].T
    torch.testing.assert_close(out.cls, ref, rtol=1e-5, atol=1e-5)
    assert mit.classifier.bias is None
    mit.train()


def test_gap_pooling():
    torch.manual_seed(0)
    net = _mit(pooling="gap").eval()
    x = torch.randn(1, 3, 64, 64)
    feats = net.encoder(x).features[-1]
    ref = feats.mean(dim=(-2, -1)) @ net.classifier.weight[:, :, 0, 0].T
    torch.testing.assert_close(net(x).cls, ref, rtol=1e-5, atol=1e-5)


def test_affinity_not_symmetrised_by_default(mit):
    assert mit.affinity.symmetrize is False
    mit.eval()
    aff = mit(torch.randn(1, 3, 64, 64)).aff
    assert not torch.allclose(aff, aff.transpose(-1, -2))
    net = _mit(symmetrize_affinity=True).eval()
    aff = net(torch.randn(1, 3, 64, 64)).aff
    torch.testing.assert_close(aff, aff.transpose(-1, -2))
    mit.train()


@pytest.mark.parametrize("runs_decoder", [True, False])
def test_cam_branch_updates_decoder_bn_only_when_faithful(runs_decoder):
    torch.manual_seed(0)
    net = _mit(cam_runs_decoder=runs_decoder).train()
    before = net.decoder.fuse[1].running_mean.clone()
    net.cam(torch.randn(2, 3, 64, 64))
    changed = not torch.equal(before, net.decoder.fuse[1].running_mean)
    assert changed is runs_decoder


def test_cam_in_eval_mode_skips_the_discarded_decoder_pass():
    """In eval mode the faithful decoder pass of ``cam`` changes nothing, so it is not run: the CAM is equal and
    the decoder is never called; in train mode it runs (the official BatchNorm update)."""
    torch.manual_seed(0)
    net = _mit(cam_runs_decoder=True)
    calls = []
    net.decoder.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    net.eval()
    cam = net.cam(x)
    assert calls == []
    reference = torch.nn.functional.conv2d(net._encode(x, need_attn=False).features[-1], net.classifier.weight)
    assert torch.equal(cam, reference)
    net.decoder.fuse[1].train()          # one decoder module in train mode: the pass runs again
    net.cam(x)
    assert calls == [1]
    net.train()
    net.cam(x)
    assert calls == [1, 1]


def test_param_groups_cover_all_trainable_params_once(mit):
    groups = mit.param_groups(6e-5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in mit.parameters() if p.requires_grad}
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"encoder", "encoder_norm", "heads", "decoder"}
    assert by_name["encoder"]["lr"] == pytest.approx(6e-5) and by_name["encoder"]["weight_decay"] == 0.01
    assert by_name["encoder_norm"]["lr"] == 0.0 and by_name["encoder_norm"]["weight_decay"] == 0.0
    assert by_name["heads"]["lr"] == pytest.approx(6e-4) and by_name["decoder"]["lr"] == pytest.approx(6e-4)
    norm_ids = {id(p) for n, p in mit.encoder.named_parameters() if "norm" in n}
    assert {id(p) for p in by_name["encoder_norm"]["params"]} == norm_ids
    head_ids = {id(mit.classifier.weight)} | {id(p) for p in mit.affinity.parameters()}
    assert {id(p) for p in by_name["heads"]["params"]} == head_ids
    assert {id(p) for p in by_name["decoder"]["params"]} == {id(p) for p in mit.decoder.parameters()}


def test_param_groups_vit_and_frozen_params(vit):
    vit.encoder.model.cls_token.requires_grad_(False)
    try:
        groups = vit.param_groups(1e-4, head_lr_mult=5.0, encoder_norm_lr_mult=1.0)
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in vit.parameters() if p.requires_grad}
        assert id(vit.encoder.model.cls_token) not in ids
        by_name = {g["name"]: g for g in groups}
        assert by_name["encoder_norm"]["lr"] == pytest.approx(1e-4)
        assert by_name["heads"]["lr"] == pytest.approx(5e-4)
    finally:
        vit.encoder.model.cls_token.requires_grad_(True)
    with pytest.raises(ValueError, match="base_lr"):
        vit.param_groups(-1.0)


def test_param_groups_work_with_adamw(mit):
    opt = torch.optim.AdamW(mit.param_groups(6e-5), lr=6e-5)
    assert [g["name"] for g in opt.param_groups] == ["encoder", "encoder_norm", "heads", "decoder"]


def test_faithful_preset_tscd_mit_b1():
    net = wsseg.create_model("tscd_mit_b1")
    assert isinstance(net, TSCDNet)
    assert list(net.encoder.out_strides) == [4, 8, 16, 16]
    assert net.num_classes == 20 and net.pooling == "gmp" and net.cam_runs_decoder
    assert net.decoder.embed_dim == 256 and net.decoder.num_classes == 21
    assert net.affinity.symmetrize is False
    assert net.classifier.in_channels == 512
    assert net.encoder.drop_path_rate == pytest.approx(0.1)


def test_weights_are_loaded_from_path(tmp_path):
    src = _vit()
    path = tmp_path / "vit.pth"
    torch.save({k: v.half() for k, v in src.encoder.model.state_dict().items()}, path)
    net = wsseg.create_model("tscd", backbone="test_vit", num_classes=3, weights=str(path))
    for (k, a), b in zip(src.encoder.model.state_dict().items(), net.encoder.model.state_dict().values(), strict=False):
        torch.testing.assert_close(a.half().float(), b.float(), msg=k)


def test_fit_input(mit, vit):
    assert vit.input_constraints == (16, 1)
    assert vit.fit_input(torch.zeros(1, 3, 67, 67)).shape[-2:] == (64, 64)
    x = torch.zeros(1, 3, 64, 64)
    assert vit.fit_input(x) is x
    multiple, min_size = mit.input_constraints
    assert multiple == 1 and min_size == 29        # stage-1 grid (stride 4) must reach sr 8
    assert mit.fit_input(torch.zeros(1, 3, 19, 19)).shape[-2:] == (29, 29)


@pytest.mark.parametrize("kwargs, match", [
    (dict(backbone="not_a_model"), "backbone"),
    (dict(backbone="mit_b9"), "backbone"),
    (dict(backbone="resnet18"), "model_name|backbone"),
    (dict(backbone="mit_b0", pretrained=True), "pretrained"),
    (dict(backbone="test_vit", strides=(4, 2, 2, 1)), "strides"),
    (dict(backbone="mit_b0", pooling="avg"), "pooling"),
    (dict(backbone="mit_b0", num_classes=0), "num_classes"),
    (dict(backbone="mit_b0", weights="/nonexistent/w.pth"), "weights"),
])
def test_builder_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        wsseg.create_model("tscd", **kwargs)


def test_tscd_mit_b1_rejects_backbone():
    with pytest.raises(ValueError, match="backbone"):
        wsseg.create_model("tscd_mit_b1", backbone="mit_b0")


def test_forward_validation(mit):
    with pytest.raises(ValueError, match="x"):
        mit(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="x"):
        mit(torch.randn(1, 4, 64, 64))
    with pytest.raises(TypeError, match="x"):
        mit(torch.zeros(1, 3, 64, 64, dtype=torch.long))


def test_seg_gradient_reaches_encoder(mit):
    mit.zero_grad()
    out = mit(torch.randn(1, 3, 64, 64))
    out.seg.sum().backward()
    assert mit.encoder.patch_embed1.proj.weight.grad.abs().sum() > 0   # seg_detach is not applied
    assert mit.classifier.weight.grad is None
    mit.zero_grad()
    assert F.softmax(out.seg.detach(), 1).shape == (1, 4, 16, 16)


def test_extra_repr(mit):
    assert "pooling='gmp'" in repr(mit) and "cam_runs_decoder=True" in repr(mit)
