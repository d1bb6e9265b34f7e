"""Tests for wsseg.backbones.MixTransformer (SegFormer MiT encoder)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from wsseg.backbones import BackboneOutput, MixTransformer, mit_b0, mit_b1, mit_b2


def _out_size(n: int, strides) -> list[int]:
    sizes = []
    for i, s in enumerate(strides):
        k = 7 if i == 0 else 3
        n = (n + 2 * (k // 2) - k) // s + 1  # conv output size
        sizes.append(n)
    return sizes


@pytest.fixture(scope="module")
def b0():
    torch.manual_seed(0)
    return mit_b0().eval()


@pytest.mark.parametrize("strides", [(4, 2, 2, 2), (4, 2, 2, 1)])
@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (70, 90)])
def test_stage_shapes(strides, hw):
    torch.manual_seed(0)
    m = mit_b0(strides=strides).eval()
    out = m(torch.randn(2, 3, *hw))
    assert isinstance(out, BackboneOutput)
    hs, ws = _out_size(hw[0], strides), _out_size(hw[1], strides)
    assert [tuple(f.shape) for f in out.features] == [
        (2, c, h, w) for c, h, w in zip((32, 64, 160, 256), hs, ws, strict=True)]
    assert m.out_channels == [32, 64, 160, 256]
    assert m.out_strides == [4, 8, 16, 32] if strides[-1] == 2 else [4, 8, 16, 16]
    n = hs[-1] * ws[-1]
    assert [tuple(a.shape) for a in out.attn_logits] == [(2, 8, n, n)] * 2
    assert m.attn_heads == 8


def test_tscd_shapes_stage4_equals_stage3_resolution():
    m = mit_b0(strides=(4, 2, 2, 1), drop_path_rate=0.0).eval()
    out = m(torch.randn(1, 3, 128, 128))
    assert out.features[2].shape[-2:] == out.features[3].shape[-2:] == (8, 8)
    assert out.attn_logits[0].shape == (1, 8, 64, 64)


def _reference_attention(attn, x, h, w):
    """Independent re-implementation of efficient self-attention from the module's parameters."""
    b, n, c = x.shape
    heads = attn.num_heads
    d = c // heads
    q = F.linear(x, attn.q.weight, attn.q.bias).view(b, n, heads, d).transpose(1, 2)
    src = x
    if attn.sr_ratio > 1:
        grid = x.transpose(1, 2).reshape(b, c, h, w)
        grid = F.conv2d(grid, attn.sr.weight, attn.sr.bias, stride=attn.sr_ratio)
        src = F.layer_norm(grid.flatten(2).transpose(1, 2), (c,), attn.norm.weight, attn.norm.bias, 1e-5)
    kv = F.linear(src, attn.kv.weight, attn.kv.bias)
    k = kv[..., :c].reshape(b, -1, heads, d).transpose(1, 2)
    v = kv[..., c:].reshape(b, -1, heads, d).transpose(1, 2)
    raw = torch.einsum("bhqd,bhkd->bhqk", q, k)
    out = torch.softmax(raw / math.sqrt(d), dim=-1) @ v
    out = F.linear(out.transpose(1, 2).reshape(b, n, c), attn.proj.weight, attn.proj.bias)
    return raw, out


def test_attention_logits_reproduce_block_output(b0):
    """softmax(logits * scale) @ v reproduces the block's attention; the whole block is recomputed."""
    blk = b0.block4[-1]
    seen = {}
    h1 = blk.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], hw=args[1:3], y=out[0]))
    out = b0(torch.randn(2, 3, 64, 64))
    h1.remove()
    x, (h, w), y = seen["x"], seen["hw"], seen["y"]
    assert blk.attn.sr_ratio == 1
    xn = F.layer_norm(x, (x.shape[-1],), blk.norm1.weight, blk.norm1.bias, 1e-6)
    raw, attn_out = _reference_attention(blk.attn, xn, h, w)
    logits = out.attn_logits[-1]
    torch.testing.assert_close(logits, raw, rtol=1e-5, atol=1e-5)
    # the probabilities the block used, from the returned logits
    c = x.shape[-1]
    d = c // blk.attn.num_heads
    v = F.linear(xn, blk.attn.kv.weight, blk.attn.kv.bias)[..., c:].reshape(2, -1, blk.attn.num_heads, d)
    probs = torch.softmax(logits * d ** -0.5, dim=-1)
    from_logits = F.linear((probs @ v.transpose(1, 2)).transpose(1, 2).reshape(2, -1, c),
                           blk.attn.proj.weight, blk.attn.proj.bias)
    torch.testing.assert_close(from_logits, attn_out, rtol=1e-5, atol=1e-5)
    # full block: x + attn, then x + fc2(GELU(dwconv3x3(fc1(LN(x)))))
    z = x + from_logits
    hid = F.linear(F.layer_norm(z, (c,), blk.norm2.weight, blk.norm2.bias, 1e-6), blk.mlp.fc1.weight,
                   blk.mlp.fc1.bias)
    grid = hid.transpose(1, 2).reshape(2, -1, h, w)
    conv = blk.mlp.dwconv.dwconv
    grid = F.conv2d(grid, conv.weight, conv.bias, padding=1, groups=grid.shape[1])
    z = z + F.linear(F.gelu(grid.flatten(2).transpose(1, 2)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    torch.testing.assert_close(y, z, rtol=1e-5, atol=1e-5)
    # stage-4 map = norm4 of the last block output, on its grid
    f4 = F.layer_norm(y, (c,), b0.norm4.weight, b0.norm4.bias, 1e-6).reshape(2, h, w, c).permute(0, 3, 1, 2)
    torch.testing.assert_close(out.features[-1], f4)


@pytest.mark.parametrize("hw", [(64, 64), (72, 88)])
def test_spatial_reduction_logits_are_query_pooled(hw):
    """sr > 1: logits are the raw (N_q, N_k) map average-pooled by sr x sr over the query grid."""
    torch.manual_seed(0)
    m = mit_b0(attn_indices=(0, 3)).eval()  # block1.0 (sr 8) and block2.1 (sr 4)
    seen = {}
    hooks = [m.block1[0].attn.register_forward_hook(lambda mod, a, o: seen.update(s1=(a[0], a[1], a[2]))),
             m.block2[1].attn.register_forward_hook(lambda mod, a, o: seen.update(s2=(a[0], a[1], a[2])))]
    out = m(torch.randn(1, 3, *hw))
    for hk in hooks:
        hk.remove()
    assert m.attn_heads == 2
    for key, attn, logits in (("s1", m.block1[0].attn, out.attn_logits[0]),
                              ("s2", m.block2[1].attn, out.attn_logits[1])):
        x, h, w = seen[key]
        raw, _ = _reference_attention(attn, x, h, w)
        r = attn.sr_ratio
        hk, wk = h // r, w // r
        n_k = hk * wk
        assert raw.shape[-1] == n_k and logits.shape == (1, attn.num_heads, n_k, n_k)
        grid = raw.reshape(1, attn.num_heads, h, w, n_k)[:, :, : hk * r, : wk * r]
        pooled = grid.reshape(1, attn.num_heads, hk, r, wk, r, n_k).mean(dim=(3, 5)).reshape(1, -1, n_k, n_k)
        torch.testing.assert_close(logits, pooled, rtol=1e-5, atol=1e-5)


def test_selected_blocks_match_fused_path(b0):
    """Returning logits (explicit softmax path) does not change the features (fused SDPA path)."""
    x = torch.randn(1, 3, 64, 64)
    ref = b0(x)
    plain = mit_b0(attn_indices=()).eval()
    plain.load_state_dict(b0.state_dict())
    out = plain(x)
    assert out.attn_logits == []
    for f, g in zip(out.features, ref.features, strict=True):
        torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-5)


def test_need_attn_false_skips_the_logits_only(b0):
    """CAM-only passes ask for no attention logits: same features, no logits, even with attn_indices set."""
    x = torch.randn(2, 3, 64, 80)
    ref = b0(x)
    out = b0(x, need_attn=False)
    assert len(ref.attn_logits) == 2 and out.attn_logits == []
    for f, g in zip(out.features, ref.features, strict=True):
        torch.testing.assert_close(f, g, rtol=1e-5, atol=1e-5)


def test_token_grid_round_trips_match_a_contiguous_formulation(b0):
    """The encoder reshapes tokens to grids as channels-last views (no copies); every stage map equals the
    same blocks run with the official contiguous ``transpose(1, 2).reshape(B, C, H, W)`` round trips."""
    x = torch.randn(2, 3, 64, 64)
    out = b0(x)
    y, feats = x, []
    for s in range(4):
        emb = getattr(b0, f"patch_embed{s + 1}")
        z = emb.proj(y.contiguous())
        h, w = z.shape[-2:]
        t = emb.norm(z.flatten(2).transpose(1, 2).contiguous())
        for blk in getattr(b0, f"block{s + 1}"):
            a = blk.attn
            n1 = blk.norm1(t)
            b, n, c = n1.shape
            q = a.q(n1).reshape(b, n, a.num_heads, -1).transpose(1, 2)
            kv_in = n1
            if a.sr_ratio > 1:
                kv_in = a.norm(a.sr(n1.transpose(1, 2).reshape(b, c, h, w).contiguous()).flatten(2).transpose(1, 2))
            k, v = a.kv(kv_in).reshape(b, -1, 2, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
            att = ((q @ k.transpose(-2, -1)) * a.scale).softmax(-1) @ v
            t = t + a.proj(att.transpose(1, 2).reshape(b, n, c))
            m = blk.mlp
            hid = m.fc1(blk.norm2(t))
            grid = hid.transpose(1, 2).reshape(b, -1, h, w).contiguous()
            t = t + m.fc2(m.act(m.dwconv.dwconv(grid).flatten(2).transpose(1, 2)))
        t = getattr(b0, f"norm{s + 1}")(t)
        y = t.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
        feats.append(y)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in out.features)
    for f, g in zip(out.features, feats, strict=True):
        torch.testing.assert_close(f, g, rtol=1e-4, atol=1e-5)


def test_checkpoint_key_layout():
    keys = set(mit_b1().state_dict())
    for k in ["patch_embed1.proj.weight", "patch_embed1.norm.weight", "patch_embed4.proj.bias",
              "block1.0.norm1.weight", "block1.0.attn.q.weight", "block1.0.attn.q.bias",
              "block1.0.attn.kv.weight", "block1.0.attn.kv.bias", "block1.0.attn.proj.weight",
              "block1.0.attn.sr.weight", "block1.0.attn.norm.weight", "block1.1.norm2.bias",
              "block1.0.mlp.fc1.weight", "block1.0.mlp.dwconv.dwconv.weight", "block1.0.mlp.fc2.bias",
              "block4.1.attn.kv.weight", "norm1.weight", "norm2.bias", "norm3.weight", "norm4.bias"]:
        assert k in keys, k
    assert "block4.0.attn.sr.weight" not in keys  # sr = 1 in stage 4
    assert not any(k.startswith("head") for k in keys)
    sd = mit_b1().state_dict()
    assert sd["block1.0.attn.kv.weight"].shape == (128, 64)
    assert sd["block1.0.attn.sr.weight"].shape == (64, 64, 8, 8)
    assert sd["block2.0.mlp.dwconv.dwconv.weight"].shape == (512, 1, 3, 3)
    assert sd["patch_embed1.proj.weight"].shape == (64, 3, 7, 7)
    assert sd["patch_embed2.proj.weight"].shape == (128, 64, 3, 3)


def test_parameter_counts_match_segformer_paper():
    # SegFormer Table 1 (encoder params): MiT-B1 13.1M, MiT-B2 24.2M
    assert sum(p.numel() for p in mit_b1().parameters()) / 1e6 == pytest.approx(13.1, abs=0.1)
    assert sum(p.numel() for p in mit_b2().parameters()) / 1e6 == pytest.approx(24.2, abs=0.1)


def test_layernorm_eps_and_drop_path_schedule():
    m = mit_b1()
    assert m.block1[0].norm1.eps == 1e-6 and m.norm4.eps == 1e-6
    assert m.patch_embed1.norm.eps == 1e-5 and m.block1[0].attn.norm.eps == 1e-5
    probs = [blk.drop_path.p for s in range(1, 5) for blk in getattr(m, f"block{s}")]
    assert probs == pytest.approx([0.1 * i / 7 for i in range(8)])


def test_split_norm_parameters_matches_official_name_rule():
    m = mit_b0()
    norm, other = m.split_norm_parameters()
    by_name = {id(p) for n, p in m.named_parameters() if "norm" in n}
    assert {id(p) for p in norm} == by_name
    assert len(norm) + len(other) == len(list(m.parameters()))
    assert not ({id(p) for p in norm} & {id(p) for p in other})


def test_drop_path_train_vs_eval():
    m = mit_b0(drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    m.train()
    a = m(x).features[-1]
    b = m(x).features[-1]
    assert not torch.equal(a, b)
    m.eval()
    assert torch.equal(m(x).features[-1], m(x).features[-1])


def test_backward_and_bf16_autocast(b0):
    m = mit_b0(drop_path_rate=0.0)
    x = torch.randn(1, 3, 64, 64)
    out = m(x)
    (out.features[-1].sum() + out.attn_logits[-1].mean()).backward()
    assert m.patch_embed1.proj.weight.grad is not None
    assert torch.isfinite(m.block4[1].attn.q.weight.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = b0(x)
    assert all(torch.isfinite(f.float()).all() for f in out.features + out.attn_logits)
    assert out.attn_logits[-1].dtype == torch.bfloat16


def test_custom_config_and_repr():
    m = MixTransformer(embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1),
                       sr_ratios=(4, 2, 1, 1), strides=(2, 2, 2, 1), in_chans=1, attn_indices=(1,))
    out = m(torch.randn(1, 1, 16, 16))
    assert [f.shape[1:] for f in out.features] == [(8, 8, 8), (16, 4, 4), (24, 2, 2), (32, 2, 2)]
    assert out.attn_logits[0].shape == (1, 2, 4, 4) and m.attn_heads == 2
    assert "strides=(2, 2, 2, 1)" in repr(m)


def test_validation_errors(b0):
    with pytest.raises(ValueError, match="attn_indices"):
        mit_b0(attn_indices=(8,))
    with pytest.raises(ValueError, match="strides"):
        mit_b0(strides=(4, 2, 2))
    with pytest.raises(ValueError, match="num_heads"):
        MixTransformer(embed_dims=(8, 16, 24, 32), num_heads=(3, 2, 3, 4))
    with pytest.raises(ValueError, match="x"):
        b0(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="x.*channels"):
        b0(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="x.*too small"):
        b0(torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match="x"):
        b0(torch.zeros(1, 3, 64, 64, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match="missing_mit.pth"):
        mit_b0(weights="/nonexistent/missing_mit.pth")
