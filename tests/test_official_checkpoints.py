"""Official TSCD / CoSA / SLRNet checkpoints: key layouts, containers, conversion and output equality.

The official key names and shapes are written down here from the official class definitions
(TSCD: Rongtao-Xu/RepresentationLearning SCD-AAAI2023/network/TSCD_model.py + AFA's mix_transformer.py and
segformer_head.py; CoSA: youshyee/CoSA models/__init__.py, models/vit/vit.py, models/decoder/conv_head.py;
SLRNet: DesertsP/SLRNet models/slrnet.py, models/single_stage.py, models/backbones/resnet38d.py, models/mods/),
independently of wsseg's mapping tables. Each test fills them with random values, saves them in the official
container, loads the file with ``load_official_checkpoint`` and compares the wsseg model with a re-written
official network (``tests/reference/official_*_net.py``) loaded strictly with the same state dict.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pathlib
from collections import Counter

import pytest
import torch

import wsseg
from tests.reference.official_cosa_net import OfficialCoSA
from tests.reference.official_slrnet_net import OfficialSLRNet, official_pamr_kernels
from tests.reference.official_slrnet_resnet38d import official_checkpoint_shapes
from tests.reference.official_tscd_net import OfficialTSCD
from wsseg.layers import ngwp_score
from wsseg.models import convert_official_state_dict, load_official_checkpoint

TOL = 1e-4  # relative: max |wsseg - official| / max |official|


# ----------------------------------------------------------------------------- official key layouts
def _bn(prefix: str, c: int, affine: bool = True) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)} if affine else {}
    out.update({f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()})
    return out


def tscd_official_shapes(dims, depths, srs, heads4: int, embed: int, k: int) -> dict[str, tuple[int, ...]]:
    """``TSCD(backbone, num_classes=k + 1, embedding_dim=embed).state_dict()`` (bare, before DDP's ``module.``)."""
    s: dict[str, tuple[int, ...]] = {}
    prev = 3
    for i, (d, depth, sr) in enumerate(zip(dims, depths, srs, strict=True), start=1):
        ks = 7 if i == 1 else 3
        s.update({f"encoder.patch_embed{i}.proj.weight": (d, prev, ks, ks), f"encoder.patch_embed{i}.proj.bias": (d,),
                  f"encoder.patch_embed{i}.norm.weight": (d,), f"encoder.patch_embed{i}.norm.bias": (d,)})
        for j in range(depth):
            p = f"encoder.block{i}.{j}."
            s.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                      p + "attn.q.weight": (d, d), p + "attn.q.bias": (d,),
                      p + "attn.kv.weight": (2 * d, d), p + "attn.kv.bias": (2 * d,),
                      p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                      p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                      p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                      p + "mlp.dwconv.dwconv.weight": (4 * d, 1, 3, 3), p + "mlp.dwconv.dwconv.bias": (4 * d,),
                      p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
            if sr > 1:
                s.update({p + "attn.sr.weight": (d, d, sr, sr), p + "attn.sr.bias": (d,),
                          p + "attn.norm.weight": (d,), p + "attn.norm.bias": (d,)})
        s.update({f"encoder.norm{i}.weight": (d,), f"encoder.norm{i}.bias": (d,)})
        prev = d
    for i, d in enumerate(dims, start=1):
        s.update({f"decoder.linear_c{i}.proj.weight": (embed, d), f"decoder.linear_c{i}.proj.bias": (embed,)})
    s["decoder.linear_fuse.conv.weight"] = (embed, 4 * embed, 1, 1)
    s.update(_bn("decoder.linear_fuse.bn", embed))
    s.update({"decoder.linear_pred.weight": (k + 1, embed, 1, 1), "decoder.linear_pred.bias": (k + 1,),
              "attn_proj.weight": (1, 2 * heads4, 1, 1), "attn_proj.bias": (1,),
              "classifier.weight": (k, dims[3], 1, 1)})
    return s


def cosa_official_shapes(dim: int, depth: int, hidden: int, patch: int, grid: int, fov: int,
                         k: int) -> dict[str, tuple[int, ...]]:
    """``VITNetwork(backbone, num_classes=k + 1).state_dict()`` (ViT with its ImageNet head)."""
    s: dict[str, tuple[int, ...]] = {"encoder.cls_token": (1, 1, dim), "encoder.pos_embed": (1, grid * grid + 1, dim),
                                     "encoder.patch_embed.proj.weight": (dim, 3, patch, patch),
                                     "encoder.patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"encoder.blocks.{i}."
        s.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                  p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                  p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                  p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                  p + "mlp.fc1.weight": (hidden, dim), p + "mlp.fc1.bias": (hidden,),
                  p + "mlp.fc2.weight": (dim, hidden), p + "mlp.fc2.bias": (dim,)})
    s.update({"encoder.norm.weight": (dim,), "encoder.norm.bias": (dim,),
              "encoder.head.weight": (1000, dim), "encoder.head.bias": (1000,),
              "decoder.conv6.weight": (fov, dim, 3, 3), "decoder.conv7.weight": (fov, fov, 3, 3),
              "decoder.conv8.weight": (k + 1, fov, 1, 1),
              "classifier.weight": (k, dim, 1, 1), "aux_classifier.weight": (k, dim, 1, 1)})
    return s


#: second names under which the official SLRNet registers the same modules (fixed_layers, newly_added)
SLRNET_ALIASES = {"backbone.fixed_layers.0.": "backbone.conv1a.", "backbone.fixed_layers.1.": "backbone.b2.",
                  "backbone.fixed_layers.2.": "backbone.b2_1.", "backbone.fixed_layers.3.": "backbone.b2_2.",
                  "newly_added.0.": "aspp.", "newly_added.1.": "shallow_mask.", "newly_added.3.": "fc8_skip.",
                  "newly_added.4.": "fc8_x.", "newly_added.5.": "last_conv.",
                  "newly_added.6.": "factorization_reconstruction.", "newly_added.8.": "aux_head."}
SLRNET_CONSTANTS = ("_aff.aff_x.kernel", "_aff.aff_m.kernel", "_aff.aff_std.kernel")


def slrnet_official_shapes(divisor: int, c: int, k: int) -> dict[str, tuple[int, ...]]:
    """``Net(num_classes=k + 1).state_dict()`` without the aliases and the PAMR constants (added by :func:`slrnet_state`)."""
    s: dict[str, tuple[int, ...]] = {}
    for key, shape in official_checkpoint_shapes(divisor).items():
        s[key if key.startswith("backbone.") else "backbone." + key] = shape
        if key.endswith("running_var"):
            s["backbone." + key[: -len("running_var")] + "num_batches_tracked"] = ()
    deep, shallow = 4096 // divisor, 256 // divisor
    for i, ks in ((1, 1), (2, 3), (3, 3), (4, 3)):
        s[f"aspp.aspp{i}.atrous_conv.weight"] = (c, deep, ks, ks)
        s.update(_bn(f"aspp.aspp{i}.bn", c))
    s["aspp.global_avg_pool.1.weight"] = (c, deep, 1, 1)
    s.update(_bn("aspp.global_avg_pool.2", c))
    s["aspp.conv1.weight"] = (c, 5 * c, 1, 1)
    s.update(_bn("aspp.bn1", c))
    s["fc8_skip.0.weight"] = (48, shallow, 1, 1)
    s.update(_bn("fc8_skip.1", 48))
    s["fc8_x.0.weight"] = (c, c + 48, 3, 3)
    s.update(_bn("fc8_x.1", c))
    s["shallow_mask.fc_deep.0.weight"] = (2 * c, c, 1, 1)
    s.update(_bn("shallow_mask.fc_deep.1", 2 * c))
    s["shallow_mask.fc_skip.0.weight"] = (c, shallow, 1, 1)
    s.update(_bn("shallow_mask.fc_skip.1", c, affine=False))
    s["shallow_mask.fc_cls.0.weight"] = (c, c, 1, 1)
    s.update(_bn("shallow_mask.fc_cls.1", c))
    s["last_conv.0.weight"] = (c, c, 3, 3)
    s.update(_bn("last_conv.1", c))
    s["last_conv.4.weight"] = (c, c, 3, 3)
    s.update(_bn("last_conv.5", c))
    s.update({"last_conv.8.weight": (k, c, 1, 1), "last_conv.8.bias": (k,)})
    for t in ("transform1", "transform2"):
        s.update({f"factorization_reconstruction.{t}.weight": (c, c), f"factorization_reconstruction.{t}.bias": (c,)})
    s["aux_head.0.weight"] = (c, c, 3, 3)
    s.update(_bn("aux_head.1", c))
    s.update({"aux_head.4.weight": (k, c, 1, 1), "aux_head.4.bias": (k,)})
    return s


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of O(1) activations: fan-in scaled weights, BN statistics, near-unit norm weights."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.randint(1, 10_000, (), generator=g)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".weight") and len(shape) == 1:
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("pos_embed") or key.endswith("cls_token"):
            out[key] = 0.5 * torch.randn(shape, generator=g)
        else:
            out[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return out


def slrnet_state(divisor: int, c: int, k: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full official SLRNet state dict: canonical tensors, their second names (same values), PAMR constants."""
    state = random_state(slrnet_official_shapes(divisor, c, k), seed)
    for alias, canonical in SLRNET_ALIASES.items():
        state.update({alias + key[len(canonical):]: v for key, v in list(state.items()) if key.startswith(canonical)})
    state.update({f"_aff.{n}.kernel": v for n, v in official_pamr_kernels().items()})
    return state


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def fingerprints(tensors) -> Counter:
    return Counter((tuple(t.shape), hashlib.sha1(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest())
                   for t in tensors)


def kept(state: dict[str, torch.Tensor], drop) -> list[torch.Tensor]:
    return [v for key, v in state.items() if not drop(key)]


def _cosa_args(**overrides) -> argparse.Namespace:
    args = dict(model="vit", backbone="vit_base_patch16_224", decoder="LargeFOV", aux_layer=-4, isgap=False,
                num_classes=21, dataset="VOC12", crop_size=448, scales=(0.5, 2), pseudo_scales=[1.0, 0.5, 1.5],
                output_dir=pathlib.Path("/work/cosa/voc"), bestseg_path=pathlib.Path("/work/cosa/voc/best_seg.pth"),
                work_dir="", device="cuda", lr=6e-5, momentum=0.9994, seed=0)
    args.update(overrides)
    return argparse.Namespace(**args)


# ----------------------------------------------------------------------------- the layouts are the official ones
def test_written_layouts_equal_the_reference_networks():
    """The key lists above are exactly the state dicts of the re-written official networks."""
    tscd = OfficialTSCD((32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2), (8, 4, 2, 1), num_classes=4, embedding_dim=16)
    assert {k: tuple(v.shape) for k, v in tscd.state_dict().items()} == tscd_official_shapes(
        (32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1), 8, 16, 3)
    cosa = OfficialCoSA(num_classes=4, img_size=160, dim=64, depth=6, heads=2, hidden=192, decoder_dim=16)
    assert {k: tuple(v.shape) for k, v in cosa.state_dict().items()} == cosa_official_shapes(64, 6, 192, 16, 10, 16, 3)
    slr = OfficialSLRNet(num_classes=4, divisor=16, c=16)
    ref = slr.state_dict()
    assert {k: tuple(v.shape) for k, v in ref.items()} == {k: tuple(v.shape) for k, v in slrnet_state(16, 16, 3).items()}
    assert len(ref) > len({id(v) for v in slr.parameters()} | {id(b) for b in slr.buffers()})  # more names than tensors
    assert all(torch.equal(ref[f"_aff.{n}.kernel"], v) for n, v in official_pamr_kernels().items())


def test_cosa_vit_table_matches_timm():
    import timm

    from wsseg.models.cosa_official import COSA_VIT_BY_SHAPE

    for (dim, depth, patch, hidden), name in COSA_VIT_BY_SHAPE.items():
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
        assert (m.embed_dim, len(m.blocks), m.patch_embed.patch_size[0], m.blocks[0].mlp.fc1.out_features) == \
            (dim, depth, patch, hidden), name


# ----------------------------------------------------------------------------- TSCD
def _check_tscd(tmp_path, dims, heads, depths, srs, embed, k, size, seed=0):
    state = random_state(tscd_official_shapes(dims, depths, srs, heads[3], embed, k), seed)
    ref = OfficialTSCD(dims, heads, depths, srs, num_classes=k + 1, embedding_dim=embed).eval()
    ref.load_state_dict(state, strict=True)
    path = tmp_path / "tscd_ddp.pth"
    torch.save({"module." + key: v for key, v in state.items()}, path)   # DDP-wrapped state_dict()
    net = load_official_checkpoint(path, "tscd")
    assert isinstance(net, wsseg.models.TSCDNet) and not net.training and net.num_classes == k
    assert fingerprints(net.state_dict().values()) == fingerprints(state.values())   # round trip, nothing lost
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        cls, seg, _, aff = ref(x)
        cam, _ = ref(x, cam_only=True)
        out = net(x)
        wcam = net.cam(x)
    errs = {"cls": rel(out.cls, cls), "seg": rel(out.seg, seg), "aff": rel(out.aff, aff), "cam": rel(wcam, cam)}
    assert all(e <= TOL for e in errs.values()), errs
    return errs


def test_tscd_small_official_checkpoint_matches_official_forward(tmp_path):
    # MiT-B0 widths: same key layout as MiT-B1, smaller
    _check_tscd(tmp_path, (32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2), (8, 4, 2, 1), embed=16, k=3, size=64)


def test_tscd_mit_b1_official_checkpoint_matches_official_forward(tmp_path):
    errs = _check_tscd(tmp_path, (64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 2, 2), (8, 4, 2, 1), embed=256, k=20,
                       size=64)
    print("TSCD MiT-B1 relative errors:", errs)


# ----------------------------------------------------------------------------- CoSA
def _check_cosa(tmp_path, dim, depth, heads, hidden, grid, fov, k, size, aux_layer=-4, backbone=None, seed=0):
    state = random_state(cosa_official_shapes(dim, depth, hidden, 16, grid, fov, k), seed)
    ref = OfficialCoSA(num_classes=k + 1, aux_layer=aux_layer, img_size=grid * 16, dim=dim, depth=depth,
                       heads=heads, hidden=hidden, decoder_dim=fov).eval()
    ref.load_state_dict(state, strict=True)
    path = tmp_path / "cosa_voc_weights.pth"
    torch.save({"s_or_t": "t", "model": state, "epoch": 32000, "args": _cosa_args(aux_layer=aux_layer),
                "result": 76.19}, path)
    kwargs = {} if backbone is None else {"backbone": backbone}
    net = load_official_checkpoint(path, "cosa", **kwargs)
    assert isinstance(net, wsseg.models.CoSANet) and not net.training
    assert net.aux_layer == aux_layer and net.num_classes == k   # aux block read from the container's args
    head = {"encoder.head.weight", "encoder.head.bias"}
    assert fingerprints(net.state_dict().values()) == fingerprints(kept(state, lambda key: key in head))
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        cls, cls_aux, _, seg, cam, cam_aux = ref(x)
        out = net(x)
    errs = {"cls": rel(out.cls, cls), "cls_aux": rel(out.cls_aux, cls_aux), "seg": rel(out.seg, seg),
            "cam": rel(out.cam, cam), "cam_aux": rel(out.cam_aux, cam_aux)}
    assert all(e <= TOL for e in errs.values()), errs
    return errs


def test_cosa_small_official_checkpoint_matches_official_forward(tmp_path):
    # timm's test_vit: 64 dims, 6 blocks, 2 heads, MLP 192, stored grid 10 x 10; input at the stored grid
    _check_cosa(tmp_path, 64, 6, 2, 192, grid=10, fov=16, k=3, size=(160, 160))


def _has_plain_pos_embed_interp() -> bool:
    import inspect

    return "pos_embed_interp" in inspect.signature(wsseg.backbones.TimmViTBackbone).parameters


@pytest.mark.skipif(not _has_plain_pos_embed_interp(),
                    reason="needs TimmViTBackbone(pos_embed_interp=...) with CoSA's plain bicubic resize")
def test_cosa_small_resized_positional_grid_matches_official(tmp_path):
    # input grid 20 x 12 != stored 10 x 10: the positional grid is resized as prepare_tokens does
    _check_cosa(tmp_path, 64, 6, 2, 192, grid=10, fov=16, k=3, size=(320, 192))


@pytest.mark.slow
def test_cosa_vit_b16_official_checkpoint_matches_official_forward(tmp_path):
    errs = _check_cosa(tmp_path, 768, 12, 12, 3072, grid=14, fov=512, k=20, size=(224, 224))
    print("CoSA ViT-B/16 relative errors (grid 14):", errs)
    if _has_plain_pos_embed_interp():
        errs = _check_cosa(tmp_path, 768, 12, 12, 3072, grid=14, fov=512, k=20, size=(448, 448))
        print("CoSA ViT-B/16 relative errors (448, grid 28):", errs)


def test_cosa_aux_layer_argument_overrides_the_container(tmp_path):
    state = random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, 3))
    path = tmp_path / "cosa.pth"
    torch.save({"model": state, "args": _cosa_args(aux_layer=-3)}, path)
    assert load_official_checkpoint(path, "cosa").aux_layer == -3
    assert load_official_checkpoint(path, "cosa", aux_layer=-4).aux_layer == -4
    torch.save({"model": state, "epoch": 1}, path)       # no args: wsseg's default
    assert load_official_checkpoint(path, "cosa").aux_layer == -3


# ----------------------------------------------------------------------------- SLRNet
def _check_slrnet(tmp_path, divisor, c, k, size, seed=0):
    state = slrnet_state(divisor, c, k, seed)
    ref = OfficialSLRNet(num_classes=k + 1, divisor=divisor, c=c).eval()
    ref.load_state_dict(state, strict=True)
    path = tmp_path / "slrnet_checkpoint20.pth.tar"
    torch.save({"state_dict": state, "epoch": 20,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}}, path)
    net = load_official_checkpoint(path, "slrnet")
    assert isinstance(net, wsseg.models.SLRNet) and not net.training and net.num_classes == k

    def dropped(key):
        return key in SLRNET_CONSTANTS or any(key.startswith(a) for a in SLRNET_ALIASES)

    assert fingerprints(net.state_dict().values()) == fingerprints(kept(state, dropped))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        cls, seg, masks = ref(x)
        out = net(x)
        wcls = ngwp_score(out.seg_logits1, out.seg_logits1.softmax(dim=1))
        wcam = net.cam(x)
    errs = {"cls": rel(wcls, cls), "seg": rel(out.seg_logits1, seg), "cam": rel(wcam, masks[:, 1:])}
    assert all(e <= TOL for e in errs.values()), errs
    return errs


def test_slrnet_small_official_checkpoint_matches_official_forward(tmp_path):
    _check_slrnet(tmp_path, divisor=16, c=16, k=3, size=33)


@pytest.mark.slow
def test_slrnet_wr38_official_checkpoint_matches_official_forward(tmp_path):
    errs = _check_slrnet(tmp_path, divisor=1, c=256, k=20, size=41)
    print("SLRNet WR38 relative errors:", errs)


# ----------------------------------------------------------------------------- convert_official_state_dict
def test_convert_output_loads_strictly():
    tscd = random_state(tscd_official_shapes((32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1), 8, 16, 3))
    net = wsseg.create_model("tscd", backbone="mit_b0", num_classes=3, decoder_dim=16)
    assert not net.load_state_dict(convert_official_state_dict("tscd", tscd), strict=True).missing_keys
    cosa = random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, 3))
    net = wsseg.create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=8, img_size=160)
    net.load_state_dict(convert_official_state_dict("cosa", cosa), strict=True)
    slr = slrnet_state(16, 16, 3)
    net = wsseg.create_model("slrnet", backbone="resnet38d_w16", num_classes=3, feature_dim=16)
    converted = convert_official_state_dict("slrnet", slr, model=net)
    net.load_state_dict(converted, strict=True)
    assert len(converted) == len(slr) - len(SLRNET_CONSTANTS) - sum(
        1 for key in slr if any(key.startswith(a) for a in SLRNET_ALIASES))


def test_convert_lists_leftovers_on_both_sides():
    slr = slrnet_state(16, 16, 3)
    extra = dict(slr, **{"newly_added.9.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"no rule.*newly_added\.9\.weight"):
        convert_official_state_dict("slrnet", extra)
    missing = {key: v for key, v in slr.items() if key not in ("aux_head.4.bias", "newly_added.8.4.bias")}
    with pytest.raises(ValueError, match=r"missing \['aux_head\.classifier\.bias'\]"):
        convert_official_state_dict("slrnet", missing)
    differs = dict(slr)
    differs["newly_added.5.8.bias"] = slr["last_conv.8.bias"] + 1
    with pytest.raises(ValueError, match=r"newly_added\.5\.8\.bias.*same tensor as 'last_conv\.8\.bias'"):
        convert_official_state_dict("slrnet", differs)
    cosa = random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, 3))
    cosa["encoder.blocks.0.ls1.gamma"] = torch.ones(64)
    with pytest.raises(ValueError, match=r"unexpected \['encoder\.model\.blocks\.0\.ls1\.gamma'\]"):
        convert_official_state_dict("cosa", cosa)


def test_convert_rejects_other_methods_and_bad_input():
    slr = slrnet_state(16, 16, 3)
    with pytest.raises(ValueError, match=r"holds an official slrnet state dict .*not tscd"):
        convert_official_state_dict("tscd", slr)
    with pytest.raises(ValueError, match="not an official cosa state dict"):
        convert_official_state_dict("cosa", {"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="method: expected one of"):
        convert_official_state_dict("afa", slr)
    with pytest.raises(TypeError, match="mapping of names to tensors"):
        convert_official_state_dict("slrnet", {"a": 1})


# ----------------------------------------------------------------------------- containers and errors
def test_wrong_method_file_names_the_file_and_the_method(tmp_path):
    path = tmp_path / "slrnet.pth.tar"
    torch.save({"state_dict": slrnet_state(16, 16, 3), "epoch": 20}, path)
    with pytest.raises(ValueError, match=r"slrnet\.pth\.tar' holds an official slrnet checkpoint.*not cosa"):
        load_official_checkpoint(path, "cosa")
    cosa = tmp_path / "voc_weights.pth"
    torch.save({"model": random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, 3)), "args": _cosa_args()}, cosa)
    with pytest.raises(ValueError, match=r"voc_weights\.pth' holds an official cosa checkpoint.*not tscd"):
        load_official_checkpoint(cosa, "tscd")


def test_non_checkpoint_files_give_clear_errors(tmp_path):
    text = tmp_path / "readme.pth"
    text.write_text("these are not weights")
    with pytest.raises(ValueError, match=r"readme\.pth' is not a PyTorch checkpoint"):
        load_official_checkpoint(text, "tscd")
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match=r"resnet\.pth' is not an official slrnet checkpoint"):
        load_official_checkpoint(other, "slrnet")
    empty = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "note": "no tensors"}, empty)
    with pytest.raises(ValueError, match=r"meta\.pth' is not an official tscd checkpoint"):
        load_official_checkpoint(empty, "tscd")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_official_checkpoint(tmp_path / "missing.pth", "tscd")


class _Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_container_loading_runs_no_pickled_code(tmp_path):
    """Only tensors, containers, Namespace and paths are rebuilt: a pickled callable is refused, not run."""
    target = tmp_path / "created_by_the_file"
    path = tmp_path / "evil.pth"
    torch.save({"model": random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, 3)), "args": _Payload(str(target))},
               path)
    with pytest.raises(ValueError, match=r"evil\.pth' holds objects other than tensors"):
        load_official_checkpoint(path, "cosa")
    assert not target.exists()


def test_builder_kwargs_are_checked_against_the_tensors(tmp_path):
    path = tmp_path / "tscd.pth"
    state = random_state(tscd_official_shapes((32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1), 8, 16, 3))
    torch.save({"module." + key: v for key, v in state.items()}, path)
    with pytest.raises(ValueError, match=r"tscd\.pth'.*num_classes: the checkpoint's classifier has 3"):
        load_official_checkpoint(path, "tscd", num_classes=20)
    with pytest.raises(ValueError, match=r"weights/pretrained"):
        load_official_checkpoint(path, "tscd", weights="x.pth")
    net = load_official_checkpoint(path, "tscd", cam_runs_decoder=False)   # other builder arguments pass through
    assert net.cam_runs_decoder is False


def test_unknown_backbone_shape_asks_for_backbone():
    cosa = random_state(cosa_official_shapes(64, 5, 192, 16, 10, 8, 3))   # 5 blocks: no timm ViT in the table
    with pytest.raises(ValueError, match=r"backbone: the cosa backbone could not be identified.*5 blocks"):
        convert_official_state_dict("cosa", cosa)
    net = wsseg.create_model("cosa", backbone="test_vit", num_classes=3, hidden_channels=8, img_size=160,
                             aux_layer=-2, depth=5)
    net.load_state_dict(convert_official_state_dict("cosa", cosa, model=net), strict=True)


# ----------------------------------------------------------------------------- examples/evaluate.py --official
def _evaluate_main():
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("_wsseg_example_evaluate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _stand_in(method: str, path: pathlib.Path, k: int = 3) -> None:
    """A synthetic stand-in for the released file: random weights, official layout and container."""
    if method == "tscd":
        state = random_state(tscd_official_shapes((32, 64, 160, 256), (2, 2, 2, 2), (8, 4, 2, 1), 8, 16, k))
        torch.save({"module." + key: v for key, v in state.items()}, path)
    elif method == "cosa":
        torch.save({"model": random_state(cosa_official_shapes(64, 6, 192, 16, 10, 8, k)), "args": _cosa_args(),
                    "epoch": 1, "s_or_t": "t", "result": 0.0}, path)
    else:
        torch.save({"state_dict": slrnet_state(16, 16, k), "epoch": 20}, path)


@pytest.mark.parametrize("method", ["tscd", "cosa", "slrnet"])
def test_evaluate_official_runs_end_to_end(tmp_path, method):
    import json

    ckpt = tmp_path / f"{method}_release.pth"
    _stand_in(method, ckpt)
    out = tmp_path / "metrics.json"
    res = _evaluate_main()([str(ckpt), "--official", method, "--dataset", "synthetic", "--max-images", "2",
                            "--long-side", "64", "--no-progress", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["method"] == method and saved["protocol"]["preset"] == method and saved["num_images"] == 2
    assert 0.0 <= saved["seg_miou"] <= 1.0 and 0.0 <= saved["seg_miou_filtered"] <= 1.0
    assert saved["seg_miou"] == pytest.approx(res["seg_miou"])


def test_evaluate_official_errors_name_the_flag(tmp_path):
    main = _evaluate_main()
    ckpt = tmp_path / "slrnet_voc.pth"
    _stand_in("slrnet", ckpt, k=20)                       # 20 classes, the synthetic set has 3
    with pytest.raises(SystemExit, match=r"--official slrnet.*20 classes.*3"):
        main([str(ckpt), "--official", "slrnet", "--dataset", "synthetic", "--no-progress"])
    with pytest.raises(SystemExit, match=r"--official cosa.*holds an official slrnet checkpoint"):
        main([str(ckpt), "--official", "cosa", "--dataset", "synthetic", "--no-progress"])
