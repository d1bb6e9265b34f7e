"""SLRNet reference model: shapes, data flow (shared dictionary, stop-gradient init), param groups, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wsseg import create_model
from wsseg.models import SLRNet, SLRNetOutput


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _net(K=3, d=16, **kw):
    torch.manual_seed(0)
    return create_model("slrnet", backbone="resnet38d_w16", num_classes=K, feature_dim=d, **kw)


# ---------------------------------------------------------------------- shapes
def test_two_view_and_single_view_shapes():
    net = _net()
    out = net(torch.randn(2, 3, 65, 65), torch.randn(2, 3, 32, 32))
    assert isinstance(out, SLRNetOutput)
    assert out.seg_logits1.shape == (2, 4, 17, 17) and out.seg_logits2.shape == (2, 4, 8, 8)
    assert out.aux_logits.shape == (2, 4, 17, 17)
    assert out.codes1.shape == (2, 4, 17, 17) and out.codes2.shape == (2, 4, 8, 8)
    assert out.dictionary.shape == (2, 4, 16) and out.seg is out.seg_logits1
    single = net(torch.randn(2, 3, 65, 65))
    assert single.seg_logits2 is None and single.codes2 is None and single.seg_logits1.shape == (2, 4, 17, 17)
    # official crop 321 -> 81 x 81 (stride 4, ceil), the 0.5 view 160 -> 40 x 40
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 321, 321), torch.randn(1, 3, 160, 160))
    assert out.codes1.shape[-2:] == (81, 81) and out.codes2.shape[-2:] == (40, 40)


def test_background_logits_codes_and_atoms():
    net = _net().eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 33, 33), torch.randn(2, 3, 16, 16))
    assert torch.all(out.seg_logits1[:, 0] == 1) and torch.all(out.seg_logits2[:, 0] == 1)
    torch.testing.assert_close(out.aux_logits[:, 0], 1 - out.aux_logits[:, 1:].amax(1))
    torch.testing.assert_close(out.codes1.sum(1), torch.ones(2, 9, 9))
    torch.testing.assert_close(out.dictionary.norm(dim=-1), torch.ones(2, 4), atol=1e-5, rtol=0)
    assert net.num_atoms == 4 and net.output_stride == 4 and net.stride == 1


def _l2n(z):
    return z / (1e-6 + z.norm(dim=-1, keepdim=True))


def test_dictionary_is_shared_by_the_views_spec_transcription():
    """Independent transcription of spec §2 on the concatenated tokens of both views (float64)."""
    net = _net().double().eval()
    x1, x2 = torch.randn(2, 3, 33, 33, dtype=torch.float64), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        out = net(x1, x2)
        f1, _ = net.encode(x1)
        f2, _ = net.encode(x2)
        a = net.aux_head(f1)
        B, d = f1.shape[:2]
        R = a.flatten(2).softmax(1)                                   # (B, K, N1)
        Rh = R / (R.sum(-1, keepdim=True) + 1e-6)
        d0 = Rh @ f1.flatten(2).transpose(1, 2)                       # (B, K, d)
        X = torch.cat([f1.flatten(2), f2.flatten(2)], -1).transpose(1, 2)   # (B, N1 + N2, d)
        W1 = net.factorization.transform1
        Xp, D = W1(X), _l2n(W1(d0))
        C = (D @ Xp.transpose(1, 2)).softmax(1)                       # E-step (B, K, N)
        Ch = (C + 1e-6) / (C + 1e-6).sum(-1, keepdim=True)
        D = _l2n(Ch @ Xp)                                             # M-step pools both views
    torch.testing.assert_close(out.dictionary, D)
    torch.testing.assert_close(out.codes1.flatten(2), C[..., :81])
    torch.testing.assert_close(out.codes2.flatten(2), C[..., 81:])
    # the second view changes the shared dictionary and so the first view's reconstruction; with T = 1 the
    # codes come from the E-step before the (pooled) M-step, so view 1's codes do not depend on view 2
    with torch.no_grad():
        other = net(x1, torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert not torch.equal(other.dictionary, out.dictionary) and not torch.equal(other.seg_logits1, out.seg_logits1)
    torch.testing.assert_close(other.codes1, out.codes1)


def test_initial_dictionary_stops_gradients_to_the_aux_head():
    net = _net().eval()
    out = net(torch.randn(2, 3, 33, 33), torch.randn(2, 3, 16, 16))
    out.codes1.sum().backward()
    assert all(p.grad is None for p in net.aux_head.parameters())
    assert net.factorization.transform1.weight.grad is not None
    net2 = _net(detach_init=False).eval()
    out = net2(torch.randn(2, 3, 33, 33), torch.randn(2, 3, 16, 16))
    out.codes1.sum().backward()
    assert net2.aux_head.classifier.weight.grad is not None


def test_single_view_is_the_factorisation_of_one_view():
    net = _net().eval()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        out = net(x)
        f, s = net.encode(x)
        res = net.factorization(f, net.prototypes(f, net.aux_head(f)))
        torch.testing.assert_close(out.seg_logits1, net.seg_head(res.out, s))
        cam = net.cam(x)
    assert cam.shape == (1, 3, 33, 33) and float(cam.min()) >= 0 and float(cam.max()) <= 1


def test_vit_backbone():
    torch.manual_seed(0)
    net = create_model("slrnet", backbone="test_vit", num_classes=2, feature_dim=8, vit_skip_layer=0)
    assert net.stride == 16 and net.output_stride == 16 and net.backbone.out_indices == (0, 5)
    out = net(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 32, 32))
    assert out.seg_logits1.shape == (1, 3, 4, 4) and out.codes2.shape == (1, 3, 2, 2)
    assert net.fit_input(torch.randn(1, 3, 44, 44)).shape[-2:] == (48, 48)


# ---------------------------------------------------------------------- optimisation
def test_param_groups_are_the_four_official_groups():
    net = _net()
    groups = net.param_groups(5e-4, weight_decay=5e-4)
    by = {g["name"]: g for g in groups}
    assert set(by) == {"backbone_weights", "new_weights", "new_biases"}     # WR38: no trainable bias
    assert (by["backbone_weights"]["lr"], by["backbone_weights"]["weight_decay"]) == (5e-4, 5e-4)
    assert (by["new_weights"]["lr"], by["new_weights"]["weight_decay"]) == (5e-3, 5e-4)
    assert (by["new_biases"]["lr"], by["new_biases"]["weight_decay"]) == (1e-2, 0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert not any(p.requires_grad for p in net.backbone.conv1a.parameters())      # frozen conv1a / b2
    lrf = net.factorization
    assert any(p is lrf.transform1.weight for p in by["new_weights"]["params"])
    assert any(p is lrf.transform2.bias for p in by["new_biases"]["params"])
    assert any(p is net.seg_head.last_conv[1].weight for p in by["new_weights"]["params"])   # new BN weight
    vit = create_model("slrnet", backbone="test_vit", num_classes=2, feature_dim=8)
    assert [g["name"] for g in vit.param_groups(1.0)] == ["backbone_weights", "backbone_biases", "new_weights",
                                                            "new_biases"]
    assert vit.param_groups(1.0)[1]["lr"] == 2.0
    with pytest.raises(ValueError, match="base_lr"):
        net.param_groups(-1.0)


# ---------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="backbone"):
        create_model("slrnet", backbone="not_a_timm_model")
    with pytest.raises(ValueError, match="pretrained"):
        create_model("slrnet", pretrained=True)
    with pytest.raises(ValueError, match="weights"):
        create_model("slrnet", backbone="resnet38d_w16", weights="/nonexistent.pth")
    with pytest.raises(ValueError, match="vit_skip_layer"):
        create_model("slrnet", backbone="test_vit", vit_skip_layer=5)
    with pytest.raises(ValueError, match="backbone"):
        create_model("slrnet_wr38", backbone="test_vit")
    with pytest.raises(ValueError, match="num_classes"):
        SLRNet(_net().backbone, 0)
    net = _net()
    with pytest.raises(ValueError, match="x1"):
        net(torch.randn(1, 4, 33, 33))
    with pytest.raises(ValueError, match="x2"):
        net(torch.randn(2, 3, 33, 33), torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match="x1"):
        net(torch.zeros(1, 3, 33, 33, dtype=torch.long))
    assert "num_atoms=4" in repr(net)
    assert F.softmax(net.eval()(torch.randn(1, 3, 17, 17)).seg, 1).shape == (1, 4, 5, 5)


# ---------------------------------------------------------------------- timm CNN backbones
def test_slrnet_on_a_timm_cnn_backbone_trains_both_views():
    from wsseg.backbones import TimmCNNBackbone

    torch.manual_seed(0)
    net = create_model("slrnet", backbone="test_efficientnet", num_classes=3, feature_dim=16)
    assert isinstance(net.backbone, TimmCNNBackbone) and net.output_stride == 4 and net.stride == 1
    out = net(torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32))
    assert out.seg_logits1.shape == (2, 4, 16, 16) and out.seg_logits2.shape == (2, 4, 8, 8)
    out.seg_logits1.sum().backward()
    assert any(p.grad is not None for p in net.backbone.parameters())
    with pytest.raises(ValueError, match="vit_skip_layer"):
        create_model("slrnet", backbone="test_efficientnet", num_classes=3, vit_skip_layer=1)


def test_cnn_weights_load_by_name_and_by_order(tmp_path):
    from wsseg.backbones import TimmCNNBackbone

    torch.manual_seed(0)
    src = TimmCNNBackbone("test_efficientnet")
    sd = src.model.state_dict()
    torch.save(sd, tmp_path / "by_name.pth")
    renamed = {f"layer{i}.{k.replace('.', '_')}": v for i, (k, v) in enumerate(sd.items())}
    renamed["classifier.weight"] = torch.zeros(5, 7)             # a trailing head the backbone lacks
    torch.save(renamed, tmp_path / "by_order.pth")
    for f in ("by_name.pth", "by_order.pth"):
        torch.manual_seed(1)
        dst = TimmCNNBackbone("test_efficientnet", weights=tmp_path / f)
        for k, v in dst.model.state_dict().items():
            assert torch.equal(v, sd[k]), (f, k)
    bad = dict(list(renamed.items())[:3])
    torch.save(bad, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="short.pth"):
        TimmCNNBackbone("test_efficientnet", weights=tmp_path / "short.pth")


def test_torchvision_mobilenet_v2_weights_load_into_the_slrnet_backbone():
    import os

    shared = os.environ.get("WSSEG_SHARED")
    path = os.path.join(shared or "", "weights", "mobilenet_v2-b0353104.pth")
    if not shared or not os.path.isfile(path):
        pytest.skip("WSSEG_SHARED not set or mobilenet_v2-b0353104.pth missing (real weights)")
    net = create_model("slrnet", backbone="mobilenetv2_100", num_classes=3, feature_dim=16, weights=path)
    tv = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(net.backbone.model.conv_stem.weight, tv["features.0.0.weight"])
    assert torch.equal(net.backbone.model.conv_head.weight, tv["features.18.0.weight"])


def test_timm_cnn_backbone_errors_and_vit_cnn_routing():
    from wsseg.backbones import TimmCNNBackbone, TimmViTBackbone

    for bad in ((1, 1), (-1, 1), (99,), (), (True,)):
        with pytest.raises(ValueError, match="out_indices"):
            TimmCNNBackbone("test_efficientnet", out_indices=bad)
    net = TimmCNNBackbone("test_efficientnet")
    with pytest.raises(ValueError, match="3 channels"):
        net(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="x"):
        net(torch.zeros(3, 32, 32))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        TimmCNNBackbone("test_efficientnet", weights="missing.pth")
    assert "test_efficientnet" in repr(net)
    # EfficientNet has `.blocks` too: the ViT rule is structural (patch_embed + blocks), not the name
    assert isinstance(create_model("slrnet", backbone="test_vit", num_classes=3, feature_dim=8).backbone,
                      TimmViTBackbone)
    with pytest.raises(ValueError, match="not a ViT-style"):
        create_model("tscd", backbone="test_efficientnet", num_classes=3)
