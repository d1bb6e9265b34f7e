"""Tests for wsseg.backbones.load_weights / read_state_dict."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsseg.backbones import LoadReport, load_weights, mit_b0, read_state_dict


def _pair():
    torch.manual_seed(1)
    src = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    torch.manual_seed(2)
    dst = nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    return src, dst


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
@pytest.mark.parametrize("half", [False, True])
def test_round_trip_formats(tmp_path, suffix, half):
    src, dst = _pair()
    sd = {k: (v.half() if half else v) for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    report = load_weights(dst, path)
    assert report == LoadReport([], [])
    for k, v in dst.state_dict().items():
        assert v.dtype == torch.float32
        expected = src.state_dict()[k].half().float() if half else src.state_dict()[k]
        assert torch.equal(v, expected), k
    x = torch.randn(4, 5)
    if not half:
        assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_unwraps_and_strips_prefixes(tmp_path, wrapper):
    src, dst = _pair()
    sd = {"module.backbone." + k: v for k, v in src.state_dict().items()}
    torch.save({wrapper: sd, "epoch": 3}, tmp_path / "w.pth")
    assert load_weights(dst, tmp_path / "w.pth") == LoadReport([], [])
    x = torch.randn(2, 5)
    assert torch.equal(dst(x), src(x))


def test_prefix_not_stripped_when_key_already_matches(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(2, 2)

    src, dst = M(), M()
    torch.save(src.state_dict(), tmp_path / "w.pth")  # keys 'encoder.weight': must not become 'weight'
    assert load_weights(dst, tmp_path / "w.pth") == LoadReport([], [])
    assert torch.equal(dst.encoder.weight, src.encoder.weight)


def test_key_map_dict_and_callable(tmp_path):
    src, dst = _pair()
    sd = {k.replace("0.", "first."): v for k, v in src.state_dict().items()}
    sd["head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match="path"):
        load_weights(dst, tmp_path / "w.pth")
    report = load_weights(dst, tmp_path / "w.pth", key_map=lambda k: None if k.startswith("head.")
                          else k.replace("first.", "0."))
    assert report == LoadReport([], [])
    assert torch.equal(dst[0].weight, src[0].weight)
    report = load_weights(dst, tmp_path / "w.pth", strict=False,
                          key_map={"first.weight": "0.weight", "first.bias": "0.bias"})
    assert report == LoadReport([], ["head.weight"])


def test_strict_errors_and_report(tmp_path):
    src, dst = _pair()
    sd = src.state_dict()
    sd["extra.weight"] = torch.ones(1)
    del sd["2.bias"]
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match=r"path.*missing keys \['2.bias'\].*unexpected keys \['extra.weight'\]"):
        load_weights(dst, tmp_path / "w.pth")
    before = dst[2].bias.clone()
    report = load_weights(dst, tmp_path / "w.pth", strict=False)
    assert report == LoadReport(["2.bias"], ["extra.weight"])
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[2].bias, before)  # untouched


def test_shape_mismatch_raises(tmp_path):
    torch.save({"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(nn.Linear(2, 2), tmp_path / "w.pth", strict=False)


def test_missing_file_and_bad_suffix(tmp_path):
    missing = tmp_path / "nope" / "mit_b1.pth"
    with pytest.raises(FileNotFoundError, match="mit_b1.pth"):
        load_weights(nn.Linear(2, 2), missing)
    bad = tmp_path / "w.npz"
    bad.write_bytes(b"0")
    with pytest.raises(ValueError, match="w.npz"):
        read_state_dict(bad)
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(TypeError, match="module"):
        load_weights("not a module", tmp_path / "list.pth")


def test_integer_buffers_keep_dtype(tmp_path):
    src = nn.BatchNorm1d(3)
    src(torch.randn(4, 3))  # num_batches_tracked = 1 (int64), running stats updated
    torch.save({k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()},
               tmp_path / "w.pth")
    dst = nn.BatchNorm1d(3).double()
    load_weights(dst, tmp_path / "w.pth")
    assert dst.running_mean.dtype == torch.float64
    assert dst.num_batches_tracked.dtype == torch.int64 and int(dst.num_batches_tracked) == 1
    assert torch.equal(dst.running_mean, src.running_mean.half().double())


def test_mit_round_trip_fp16_and_safetensors(tmp_path):
    """A full MiT state dict (with a classification head, as in SegFormer checkpoints) round-trips."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = mit_b0().eval()
    sd = dict(src.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    torch.save({"state_dict": sd}, tmp_path / "mit.pth")
    save_file({k: v.half().contiguous() for k, v in sd.items()}, str(tmp_path / "mit16.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    ref = src(x)
    a = mit_b0(weights=tmp_path / "mit.pth").eval()
    out = a(x)
    for f, g in zip(out.features + out.attn_logits, ref.features + ref.attn_logits, strict=True):
        assert torch.equal(f, g)
    b = mit_b0(weights=tmp_path / "mit16.safetensors").eval()
    out16 = b(x)
    assert all(p.dtype == torch.float32 for p in b.parameters())
    assert torch.allclose(out16.features[-1], ref.features[-1], atol=0.05, rtol=0.05)
    assert not torch.equal(out16.features[-1], ref.features[-1])  # really the rounded weights
