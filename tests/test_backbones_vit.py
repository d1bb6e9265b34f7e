"""Tests for wsseg.backbones.TimmViTBackbone (timm ViTs: test_vit, DINOv2 ViT-S/14, ViT-B/16)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from wsseg.backbones import BackboneOutput, TimmViTBackbone, qk_logits

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return TimmViTBackbone("test_vit", out_indices=(1, -1), attn_indices=(0, -1)).eval()


def _manual_tokens(model, x):
    """Token sequence entering the first block, via timm's public pieces (no forward_intermediates)."""
    t = model.patch_embed(x)
    t = model._pos_embed(t)
    return model.norm_pre(model.patch_drop(t))


def test_last_features_equal_timm_forward_features(vit):
    x = torch.randn(2, 3, 32, 48)
    out = vit(x)
    assert isinstance(out, BackboneOutput)
    tokens = vit.model.forward_features(x)[:, vit.num_prefix_tokens:]
    ref = tokens.reshape(2, 2, 3, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.features[1], ref, rtol=0, atol=0)
    assert vit.out_channels == [64, 64] and vit.out_strides == [16, 16] and vit.patch_size == 16
    assert vit.num_prefix_tokens == 1 and vit.attn_heads == 2


def test_intermediate_features_are_raw_block_outputs(vit):
    x = torch.randn(1, 3, 32, 32)
    t = _manual_tokens(vit.model, x)
    for blk in vit.model.blocks[:2]:
        t = blk(t)
    ref = t[:, 1:].reshape(1, 2, 2, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(vit(x).features[0], ref, rtol=1e-6, atol=1e-6)


def test_model_output_unchanged_by_hooks(vit):
    """The wrapped model's own forward stays identical to an unhooked timm model with the same weights."""
    plain = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    plain.load_state_dict(vit.model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    vit(x)
    torch.testing.assert_close(vit.model(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(vit.model.forward_features(x), plain.forward_features(x), rtol=0, atol=0)


def test_attention_logits_match_qkv_with_prefix_dropped(vit):
    x = torch.randn(2, 3, 32, 48)
    out = vit(x)
    t = _manual_tokens(vit.model, x)
    for i, blk in enumerate(vit.model.blocks):
        if i in (0, 5):
            xn = blk.norm1(t)
            qkv = F.linear(xn, blk.attn.qkv.weight, blk.attn.qkv.bias)
            q, k, _ = qkv.reshape(2, 7, 3, 2, 32).permute(2, 0, 3, 1, 4)
            ref = torch.einsum("bhqd,bhkd->bhqk", q[:, :, 1:], k[:, :, 1:])
            torch.testing.assert_close(out.attn_logits[0 if i == 0 else 1], ref, rtol=1e-5, atol=1e-5)
        t = blk(t)
    assert [a.shape for a in out.attn_logits] == [(2, 2, 6, 6)] * 2


def test_softmaxed_logits_reproduce_timm_attention_output():
    """Without prefix tokens, softmax(L * scale) @ v then proj equals timm's Attention output."""
    torch.manual_seed(0)
    m = TimmViTBackbone("test_vit", attn_indices=(2,), class_token=False, global_pool="avg").eval()
    assert m.num_prefix_tokens == 0
    attn = m.model.blocks[2].attn
    seen = {}
    h = attn.register_forward_hook(lambda mod, a, o: seen.update(x=a[0], y=o))
    out = m(torch.randn(2, 3, 48, 32))
    h.remove()
    logits = out.attn_logits[0]
    assert logits.shape == (2, 2, 6, 6)
    v = attn.qkv(seen["x"]).reshape(2, 6, 3, 2, 32)[:, :, 2].transpose(1, 2)
    y = (torch.softmax(logits * attn.scale, dim=-1) @ v).transpose(1, 2).reshape(2, 6, 64)
    torch.testing.assert_close(attn.proj(y), seen["y"], rtol=1e-5, atol=1e-5)


def test_qk_norm_and_register_tokens_respected():
    torch.manual_seed(0)
    m = TimmViTBackbone("test_vit", attn_indices=(-1,), qk_norm=True, reg_tokens=4).eval()
    assert m.num_prefix_tokens == 5
    attn = m.model.blocks[-1].attn
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.bias.normal_()
    seen = {}
    h = attn.register_forward_hook(lambda mod, a, o: seen.update(x=a[0]))
    out = m(torch.randn(1, 3, 32, 32))
    h.remove()
    q, k, _ = attn.qkv(seen["x"]).reshape(1, 9, 3, 2, 32).permute(2, 0, 3, 1, 4)
    q = F.layer_norm(q, (32,), attn.q_norm.weight, attn.q_norm.bias, attn.q_norm.eps)
    k = F.layer_norm(k, (32,), attn.k_norm.weight, attn.k_norm.bias, attn.k_norm.eps)
    ref = q[:, :, 5:] @ k[:, :, 5:].transpose(-2, -1)
    torch.testing.assert_close(out.attn_logits[0], ref, rtol=1e-5, atol=1e-5)
    assert out.features[0].shape == (1, 64, 2, 2)


def test_qk_logits_function_equals_module_capture(vit):
    x = torch.randn(1, 5, 64)
    a = qk_logits(vit.model.blocks[0].attn, x, num_prefix_tokens=1)
    qkv = vit.model.blocks[0].attn.qkv(x).reshape(1, 5, 3, 2, 32)
    ref = torch.einsum("bqhd,bkhd->bhqk", qkv[:, 1:, 0], qkv[:, 1:, 1])
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,img,dim,patch,heads", [
    ("vit_base_patch16_224", 32, 768, 16, 12),
    ("vit_small_patch14_dinov2", 28, 384, 14, 6),
])
def test_real_architectures_shapes(name, img, dim, patch, heads):
    m = TimmViTBackbone(name, img_size=img, out_indices=(3, -1), attn_indices=(-1,)).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 2 * patch, 3 * patch))
    assert [f.shape for f in out.features] == [(1, dim, 2, 3)] * 2
    assert out.attn_logits[0].shape == (1, heads, 6, 6)
    assert m.out_strides == [patch, patch] and m.attn_heads == heads


def test_weights_round_trip_fp16_safetensors(tmp_path, vit):
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in vit.model.state_dict().items()}, str(tmp_path / "v.safetensors"))
    torch.save({"state_dict": {"module." + k: v for k, v in vit.model.state_dict().items()}}, tmp_path / "v.pth")
    x = torch.randn(1, 3, 32, 32)
    ref = vit(x)
    exact = TimmViTBackbone("test_vit", out_indices=(1, -1), attn_indices=(0, -1), weights=tmp_path / "v.pth").eval()
    got = exact(x)
    for a, b in zip(got.features + got.attn_logits, ref.features + ref.attn_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    half = TimmViTBackbone("test_vit", weights=tmp_path / "v.safetensors").eval()
    assert all(p.dtype == torch.float32 for p in half.parameters())
    torch.testing.assert_close(half(x).features[0], ref.features[1], rtol=0.05, atol=0.05)


def test_bf16_autocast_and_backward(vit):
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vit(x)
    assert all(torch.isfinite(t.float()).all() for t in out.features + out.attn_logits)
    m = TimmViTBackbone("test_vit", attn_indices=(-1,))
    out = m(x)
    (out.features[0].mean() + out.attn_logits[0].mean()).backward()
    assert m.model.blocks[-1].attn.qkv.weight.grad is not None


def test_drop_path_rate_passed_to_timm():
    m = TimmViTBackbone("test_vit", drop_path_rate=0.2)
    assert m.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    assert "drop_path_rate=0.2" in repr(m)


def test_split_norm_parameters(vit):
    norm, other = vit.split_norm_parameters()
    by_name = {id(p) for n, p in vit.named_parameters() if ".norm" in n or n.startswith("model.norm")}
    assert {id(p) for p in norm} == by_name
    assert len(norm) + len(other) == len(list(vit.parameters()))


def test_validation_errors(vit):
    with pytest.raises(ValueError, match="x"):
        vit(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="x"):
        vit(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="x"):
        vit(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="out_indices"):
        TimmViTBackbone("test_vit", out_indices=(6,))
    with pytest.raises(ValueError, match="out_indices"):
        TimmViTBackbone("test_vit", out_indices=())
    with pytest.raises(ValueError, match="attn_indices"):
        TimmViTBackbone("test_vit", attn_indices=(-7,))
    with pytest.raises(FileNotFoundError, match="no_such_vit.pth"):
        TimmViTBackbone("test_vit", weights="/nonexistent/no_such_vit.pth")


def test_unexpected_keys_strict(tmp_path, vit):
    sd = dict(vit.model.state_dict())
    sd["head.weight"] = torch.zeros(10, 64)
    torch.save(sd, tmp_path / "v.pth")
    with pytest.raises(RuntimeError, match="head.weight"):
        TimmViTBackbone("test_vit", weights=tmp_path / "v.pth")


def test_dinov2_real_weights(dinov2_weights):
    t0 = time.perf_counter()
    m = TimmViTBackbone("vit_small_patch14_dinov2", attn_indices=(-1,)).eval()
    report = m.load_weights(dinov2_weights)
    assert report.missing_keys == [] and report.unexpected_keys == []
    raw = torch.load(dinov2_weights, map_location="cpu", weights_only=True)
    assert torch.equal(m.model.blocks[0].attn.qkv.weight, raw["blocks.0.attn.qkv.weight"].float())
    with torch.no_grad():
        out = m(torch.randn(1, 3, 224, 224))
    assert out.features[0].shape == (1, 384, 16, 16)
    assert torch.isfinite(out.features[0]).all() and torch.isfinite(out.attn_logits[0]).all()
    assert out.attn_logits[0].shape == (1, 6, 256, 256)
    assert time.perf_counter() - t0 < 20
