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


# ---------------------------------------------------------------------- positional-embedding resampling
def _keys_cubic(t: float, a: float) -> float:
    """Keys' cubic-convolution kernel W(t), written out from the 1981 paper."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _plain_bicubic_weights(n_in: int, n_out: int, a: float = -0.75) -> torch.Tensor:
    """(n_out, n_in) weights of plain bicubic, align_corners=False, border taps clamped to the edge."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        u = (i + 0.5) * n_in / n_out - 0.5
        f = int(torch.floor(torch.tensor(u)))
        for k in (-1, 0, 1, 2):
            w[i, min(max(f + k, 0), n_in - 1)] += _keys_cubic(u - (f + k), a)
    return w


def _renormalised_cubic_weights(n_in: int, n_out: int, a: float = -0.5) -> torch.Tensor:
    """(n_out, n_in) weights of TensorFlow 2's bicubic resize when upsampling (scale_and_translate, Keys
    a = -0.5, half-pixel centres): taps outside the grid dropped, the rest renormalised to sum 1."""
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = (i + 0.5) * n_in / n_out
        taps = [j for j in range(n_in) if abs(j + 0.5 - centre) < 2]
        vals = torch.tensor([_keys_cubic(j + 0.5 - centre, a) for j in taps], dtype=torch.float64)
        w[i, taps] = vals / vals.sum()
    return w


def _impulse_backbone(mode: str, r: int, c: int, model_name: str = "test_vit") -> TimmViTBackbone:
    vit = TimmViTBackbone(model_name, img_size=64, pos_embed_interp=mode)  # stored grid 4 x 4
    with torch.no_grad():
        vit.model.pos_embed.zero_()
        vit.model.pos_embed[0, 0] = 7.0  # prefix entry (all channels)
        vit.model.pos_embed[0, 1 + r * 4 + c, 0] = 1.0
    return vit


@pytest.mark.parametrize("out_size", [(8, 8), (7, 5), (3, 6)])
@pytest.mark.parametrize("r, c", [(0, 0), (1, 2), (3, 1)])
def test_plain_bicubic_impulse_response_is_the_a075_kernel(out_size, r, c):
    vit = _impulse_backbone("bicubic", r, c)
    pe = vit.pos_embed_for_grid(*out_size)
    assert pe.shape == (1, 1 + out_size[0] * out_size[1], 64)
    torch.testing.assert_close(pe[0, 0], torch.full((64,), 7.0), rtol=0, atol=0)  # prefix untouched
    grid = pe[0, 1:, 0].reshape(out_size).double()
    expected = torch.outer(_plain_bicubic_weights(4, out_size[0])[:, r], _plain_bicubic_weights(4, out_size[1])[:, c])
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-6)
    assert pe[0, 1:, 1:].abs().max() == 0  # other channels stay zero


@pytest.mark.parametrize("out_size", [(8, 8), (7, 5)])
def test_timm_mode_is_the_renormalised_a05_kernel_when_upsampling(out_size):
    vit = _impulse_backbone("timm", 1, 2)
    grid = vit.pos_embed_for_grid(*out_size)[0, 1:, 0].reshape(out_size).double()
    expected = torch.outer(_renormalised_cubic_weights(4, out_size[0])[:, 1],
                           _renormalised_cubic_weights(4, out_size[1])[:, 2])
    torch.testing.assert_close(grid, expected, rtol=0, atol=1e-6)
    plain = torch.outer(_plain_bicubic_weights(4, out_size[0])[:, 1], _plain_bicubic_weights(4, out_size[1])[:, 2])
    assert (grid - plain).abs().max() > 1e-2  # the two kernels really differ


@pytest.mark.parametrize("mode", ["bicubic", "timm"])
def test_stored_grid_is_identity(mode):
    vit = TimmViTBackbone("test_vit", img_size=64, pos_embed_interp=mode)
    assert vit.pos_embed_for_grid(4, 4) is vit.model.pos_embed
    other = TimmViTBackbone("test_vit", img_size=64, pos_embed_interp="timm" if mode == "bicubic" else "bicubic")
    other.load_state_dict(vit.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(vit(x).features[0], other(x).features[0], rtol=0, atol=0)


@pytest.mark.parametrize("model_name, kw", [("test_vit", {}), ("test_vit2", {}),  # class token; register token
                                           ("test_vit", {"no_embed_class": True})])  # no prefix entry
def test_forward_adds_the_resampled_embedding_after_the_prefix(model_name, kw):
    torch.manual_seed(0)
    vit = TimmViTBackbone(model_name, img_size=64, pos_embed_interp="bicubic", **kw).eval()
    m = vit.model
    x = torch.randn(2, 3, 128, 96)  # grid 8 x 6 from the stored 4 x 4
    patches = m.patch_embed(x).reshape(2, 48, -1)
    prefix = (m.cls_token if m.cls_token is not None else m.reg_token).expand(2, -1, -1)
    pe = m.pos_embed
    p = 0 if kw.get("no_embed_class") else 1
    assert pe.shape[1] == p + 16
    grid = F.interpolate(pe[:, p:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(8, 6), mode="bicubic",
                         align_corners=False).flatten(2).transpose(1, 2)  # the official CoSA prepare_tokens
    if p:
        tokens = torch.cat([prefix, patches], 1) + torch.cat([pe[:, :1], grid], 1)
    else:
        tokens = torch.cat([prefix, patches + grid], 1)
    torch.testing.assert_close(m._pos_embed(m.patch_embed(x)), tokens, rtol=0, atol=1e-6)
    for blk in m.blocks:
        tokens = blk(tokens)
    ref = m.norm(tokens)[:, 1:].reshape(2, 8, 6, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(vit(x).features[0], ref, rtol=1e-5, atol=1e-5)


def test_bicubic_mode_survives_deepcopy_and_gets_gradients():
    import copy

    vit = TimmViTBackbone("test_vit", img_size=64, pos_embed_interp="bicubic")
    twin = copy.deepcopy(vit)
    assert twin.model._pos_embed.__self__ is twin.model and twin.pos_embed_interp == "bicubic"
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(twin(x).features[0], vit(x).features[0], rtol=0, atol=0)
    vit(x).features[0].sum().backward()
    assert vit.model.pos_embed.grad is not None and vit.model.pos_embed.grad.abs().sum() > 0
    assert "pos_embed_interp='bicubic'" in repr(vit).splitlines()[0] + repr(vit).splitlines()[1]


def test_pos_embed_interp_errors():
    from wsseg.backbones import resample_pos_embed

    with pytest.raises(ValueError, match="pos_embed_interp: expected one of .*'timm', 'bicubic'.*got 'bilinear'"):
        TimmViTBackbone("test_vit", pos_embed_interp="bilinear")
    with pytest.raises(ValueError, match="pos_embed_interp: 'bicubic' .*needs dynamic_img_size=True"):
        TimmViTBackbone("test_vit", pos_embed_interp="bicubic", dynamic_img_size=False)
    pe = torch.zeros(1, 17, 8)
    with pytest.raises(ValueError, match="mode: expected one of"):
        resample_pos_embed(pe, (8, 8), (4, 4), mode="area")
    with pytest.raises(ValueError, match=r"pos_embed: expected shape \(1, 1 \+ 3\*3, C\)"):
        resample_pos_embed(pe, (8, 8), (3, 3))
    with pytest.raises(ValueError, match="new_size: expected two positive ints"):
        resample_pos_embed(pe, (0, 8), (4, 4))
    with pytest.raises(TypeError, match="pos_embed:"):
        resample_pos_embed(pe.long(), (8, 8), (4, 4))
