"""Gradient checkpointing of the MiT and ViT encoders (``set_grad_checkpointing``, ``--grad-checkpointing``).

The reference is the same computation without checkpointing (plain autograd keeps every activation): with
the same weights, inputs and seed, one training iteration must give the same loss, the same gradient for
every parameter and leave the global random stream in the same state, in train mode with drop-path on (the
recomputation must draw the same drop-path masks).
"""

from __future__ import annotations

import copy

import pytest
import torch

import wsseg
from wsseg.backbones import TimmViTBackbone, mit_b0
from wsseg.training import (
    APCMethod,
    APCRecipe,
    CoSAMethod,
    CoSARecipe,
    SLRNetMethod,
    SLRNetRecipe,
    TrainConfig,
    Trainer,
    TSCDMethod,
    TSCDRecipe,
    TSCDTrainingStep,
    ViTPCMMethod,
    ViTPCMRecipe,
    read_checkpoint,
)
from wsseg.training.cli import TSCD_CLI, build_parser, main

K = 3


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _labels(b: int) -> torch.Tensor:
    y = torch.zeros(b, K)
    y[torch.arange(b), torch.arange(b) % K] = 1.0
    return y


def _run(model: torch.nn.Module, step, checkpointing: bool, seed: int = 7, switch: bool = True):
    """Loss, every parameter's gradient and the RNG state after one ``step(model)`` + backward on a copy
    (``model.set_grad_checkpointing(True)`` first if ``checkpointing and switch``); checks that
    ``torch.utils.checkpoint.checkpoint`` ran (only) when ``checkpointing``."""
    model = copy.deepcopy(model).train()
    if checkpointing and switch:
        model.set_grad_checkpointing(True)
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    torch.utils.checkpoint.checkpoint = counted
    try:
        torch.manual_seed(seed)
        loss = step(model)
        loss.backward()
    finally:
        torch.utils.checkpoint.checkpoint = real
    assert (len(calls) > 0) == checkpointing and not any(calls)  # non-reentrant only
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


def _assert_same(model, step, min_grads: int = 1) -> None:
    loss0, g0, rng0 = _run(model, step, False)
    loss1, g1, rng1 = _run(model, step, True)
    assert torch.isfinite(loss0)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and len(g0) >= min_grads
    for name, g in g0.items():
        scale = float(g.abs().max())
        err = float((g1[name] - g).abs().max())
        assert err <= 1e-6 * max(scale, 1e-12), (name, err, scale)
    assert torch.equal(rng0, rng1)  # the recomputation restores the stream: later draws are unchanged


def _backbone_loss(out) -> torch.Tensor:
    """Uses every returned map and the softmax of every attention map (so their gradients are checked)."""
    loss = sum((f ** 2).mean() for f in out.features)
    for a in out.attn_logits:
        w = torch.linspace(-1, 1, a.shape[-1])
        loss = loss + (a.softmax(dim=-1) * w).sum(dim=-1).pow(2).mean()
    return loss


# ---------------------------------------------------------------------- backbones
def test_mit_same_loss_and_gradients_with_drop_path():
    torch.manual_seed(0)
    enc = mit_b0(strides=(4, 2, 2, 1), drop_path_rate=0.5, attn_indices=(0, 3, -1))  # sr 8, sr 4, sr 1
    x = torch.randn(2, 3, 64, 64)
    _assert_same(enc, lambda m: _backbone_loss(m(x)), min_grads=100)


def test_mit_drop_path_is_active_in_the_comparison():
    """The comparison above would be vacuous if drop-path did not change the loss: it does."""
    torch.manual_seed(0)
    enc = mit_b0(strides=(4, 2, 2, 1), drop_path_rate=0.5).train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(1)
    a = _backbone_loss(enc(x))
    torch.manual_seed(2)
    b = _backbone_loss(enc(x))
    assert not torch.equal(a, b)


def test_vit_same_loss_and_gradients_with_drop_path_and_attention():
    torch.manual_seed(0)
    vit = TimmViTBackbone("test_vit", out_indices=(1, -1), attn_indices=(0, -1), drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 48)
    _assert_same(vit, lambda m: _backbone_loss(m(x)), min_grads=20)


def test_vit_attention_logits_get_gradients_through_the_recomputation():
    """The logits are captured inside the checkpointed block: their gradient must reach the qkv weights of
    that block only through them (here they are the only output used)."""
    torch.manual_seed(0)
    vit = TimmViTBackbone("test_vit", out_indices=(-1,), attn_indices=(0,)).train()
    x = torch.randn(1, 3, 32, 32)

    def step(m):
        return m(x).attn_logits[0].pow(2).mean()

    loss0, g0, _ = _run(vit, step, False)
    loss1, g1, _ = _run(vit, step, True)
    qkv = "model.blocks.0.attn.qkv.weight"
    assert qkv in g1 and float(g1[qkv].abs().max()) > 0
    torch.testing.assert_close(g1[qkv], g0[qkv], rtol=1e-6, atol=1e-9)
    assert not any(n.startswith("model.blocks.1.") for n in g1)  # later blocks are not in the graph


def test_timm_switch_set_directly_on_the_timm_model_works_too():
    torch.manual_seed(0)
    vit = TimmViTBackbone("test_vit", out_indices=(-1,), attn_indices=(0, -1), drop_path_rate=0.5)
    x = torch.randn(2, 3, 32, 32)

    def step(m, direct):
        if direct:
            m.model.set_grad_checkpointing(True)
        return _backbone_loss(m(x))

    loss0, g0, _ = _run(vit, lambda m: step(m, False), False)
    loss1, g1, _ = _run(vit, lambda m: step(m, True), True, switch=False)  # only timm's own switch
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    for name, g in g0.items():
        torch.testing.assert_close(g1[name], g, rtol=1e-6, atol=1e-9)


def test_checkpointing_is_skipped_without_gradients_and_can_be_switched_off():
    torch.manual_seed(0)
    vit = TimmViTBackbone("test_vit", attn_indices=(-1,)).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = vit(x)
    vit.set_grad_checkpointing()
    assert vit.grad_checkpointing and "grad_checkpointing=True" in repr(vit)
    with torch.no_grad():
        out = vit(x)
    assert not vit.model.grad_checkpointing  # timm's own loop is not checkpointed under no_grad
    torch.testing.assert_close(out.features[0], ref.features[0], rtol=0, atol=0)
    torch.testing.assert_close(out.attn_logits[0], ref.attn_logits[0], rtol=0, atol=0)
    vit.set_grad_checkpointing(False)
    vit(x)
    assert not vit.grad_checkpointing and not vit.model.grad_checkpointing


def test_deep_copy_of_a_vit_backbone_captures_its_own_attention():
    """The attention hooks are re-bound by ``copy.deepcopy`` (EMA teachers are deep copies)."""
    torch.manual_seed(0)
    vit = TimmViTBackbone("test_vit", attn_indices=(-1,)).eval()
    twin = copy.deepcopy(vit)
    with torch.no_grad():
        twin.model.blocks[-1].attn.qkv.weight.mul_(2.0)
        a, b = vit(torch.ones(1, 3, 32, 32)).attn_logits[0], twin(torch.ones(1, 3, 32, 32)).attn_logits[0]
    assert not torch.equal(a, b)


def test_reentrant_timm_setting_is_refused_when_attention_is_returned():
    from timm.layers import set_reentrant_ckpt

    vit = TimmViTBackbone("test_vit", attn_indices=(-1,))
    set_reentrant_ckpt(True)
    try:
        with pytest.raises(ValueError, match=r"grad_checkpointing: .*re-entrant.*attn_indices=\(5,\)"):
            vit.set_grad_checkpointing()
    finally:
        set_reentrant_ckpt(False)


# ---------------------------------------------------------------------- one training iteration per method
def test_tscd_mit_iteration():
    torch.manual_seed(0)
    net = wsseg.create_model("tscd", backbone="mit_b0", num_classes=K, decoder_dim=8, drop_path_rate=0.3)
    recipe = TSCDRecipe(crop_size=64, cam_iters=0, varm_num_iter=2, scd_num_samples=8, energy_chunk_size=1024)
    step_fn = TSCDTrainingStep(recipe)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 64, 64, generator=g), "label": _labels(2),
             "valid": torch.ones(2, 64, 64, dtype=torch.bool)}
    loss, logs = step_fn(net.train(), batch, step=1)
    assert {"loss_scd", "loss_aff", "loss_seg", "loss_reg"} <= set(logs)  # every term is active
    _assert_same(net, lambda m: step_fn(m, batch, step=1)[0], min_grads=150)


def test_cosa_vit_iteration():
    torch.manual_seed(0)
    method = CoSAMethod(CoSARecipe(crop_size=32, batch_size=2, iters=10, loss_warmup_iters=0,
                                   pseudo_scales=(1.0, 0.5)))
    net = method.build_model(K, backbone="test_vit", decoder_dim=8, drop_path_rate=0.3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    batch = {"image": x, "image_strong": x + 0.1 * torch.randn(2, 3, 32, 32, generator=g), "label": _labels(2),
             "valid": torch.ones(2, 32, 32, dtype=torch.bool)}

    def step(m):
        method.setup(m, torch.device("cpu"))  # the EMA teacher (a copy of the student, as the engine does)
        return method.training_step(m, batch, step=1)[0]

    _assert_same(net, step, min_grads=20)


@pytest.mark.parametrize("apc", [False, True])
def test_vitpcm_and_apc_iteration(apc):
    common = dict(crop_size=32, patch_size=16, batch_size=4, stage_a_iters=0, hidden=4, num_unfrozen_blocks=2)
    torch.manual_seed(0)
    if apc:
        method = APCMethod(APCRecipe(**common, k_mode="ratio_to_max", rho=0.5, w_pcl=1.0, w_seg=1.0,
                                     seg_start_iters=0))
        net = method.build_model(K, backbone="test_vit", decoder_dim=8, drop_path_rate=0.3)
    else:
        method = ViTPCMMethod(ViTPCMRecipe(**common))
        net = method.build_model(K, backbone="test_vit", drop_path_rate=0.3)
    g = torch.Generator().manual_seed(0)
    flips = torch.rand(4, 3, generator=g) < 0.5
    batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "label": _labels(4),
             "image_view2": torch.randn(4, 3, 16, 16, generator=g), "flips_view1": flips,
             "flips_view2": flips.roll(1, dims=0), "crop_box_view2": torch.tensor([[0, 0, 2, 2]] * 4)}
    _assert_same(net, lambda m: method.training_step(m, batch, step=1)[0], min_grads=10)


def test_slrnet_vit_iteration():
    """SLRNet's ViT variant (its official WideResNet-38 has no checkpointing)."""
    torch.manual_seed(0)
    method = SLRNetMethod(SLRNetRecipe(crop_size=32, batch_size=2, iters=10, seg_start_iters=0, pamr_iters=3))
    net = method.build_model(K, backbone="test_vit", decoder_dim=8, drop_path_rate=0.3)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=g), "label": _labels(2)}
    _assert_same(net, lambda m: method.training_step(m, batch, step=1)[0], min_grads=20)


# ---------------------------------------------------------------------- models, engine, command line
def test_unsupported_encoders_are_named():
    slr = wsseg.create_model("slrnet", backbone="resnet38d_w16", num_classes=K, feature_dim=16)
    with pytest.raises(ValueError, match=r"grad_checkpointing: SLRNet's encoder ResNet38d has no gradient "
                                         r"checkpointing \(supported: MixTransformer .* TimmViTBackbone"):
        slr.set_grad_checkpointing()
    slr.set_grad_checkpointing(False)  # switching it off is always possible


def test_models_delegate_to_their_encoder():
    net = wsseg.create_model("tscd", backbone="mit_b0", num_classes=K, decoder_dim=8)
    net.set_grad_checkpointing()
    assert net.encoder.grad_checkpointing
    net.set_grad_checkpointing(False)
    assert not net.encoder.grad_checkpointing


def _tiny_tscd():
    method = TSCDMethod(TSCDRecipe(crop_size=32, batch_size=2, iters=1))
    return method, method.build_model(K, backbone="test_vit", decoder_dim=8)


def test_trainer_option(tmp_path):
    assert TrainConfig().grad_checkpointing is False
    method, net = _tiny_tscd()
    Trainer(method, net, [], TrainConfig(out_dir=str(tmp_path), grad_checkpointing=True))
    assert net.encoder.grad_checkpointing
    Trainer(method, net, [], TrainConfig(out_dir=str(tmp_path)))  # the engine's setting wins either way
    assert not net.encoder.grad_checkpointing
    slr = wsseg.create_model("slrnet", backbone="resnet38d_w16", num_classes=K, feature_dim=16)
    with pytest.raises(ValueError, match="grad_checkpointing: SLRNet's encoder ResNet38d"):
        Trainer(method, slr, [], TrainConfig(out_dir=str(tmp_path), grad_checkpointing=True))
    with pytest.raises(ValueError, match=r"grad_checkpointing: Sequential has no set_grad_checkpointing"):
        Trainer(method, torch.nn.Sequential(), [], TrainConfig(out_dir=str(tmp_path), grad_checkpointing=True))


def test_cli_flag():
    parser = build_parser(TSCD_CLI)
    assert parser.parse_args([]).grad_checkpointing is False
    assert parser.parse_args(["--grad-checkpointing"]).grad_checkpointing is True
    assert any("--grad-checkpointing" in a.option_strings for g in parser._action_groups if g.title == "engine"
               for a in g._group_actions)


TINY = ["--synthetic-images", "4", "--synthetic-size", "32", "--crop", "32", "--batch-size", "2",
        "--backbone", "test_vit", "--decoder-dim", "8", "--num-vis", "0", "--no-progress", "--threads", "1",
        "--set", "varm_num_iter=1", "scd_num_samples=4", "cam_scales=1.0", "--max-eval-images", "2",
        "--iters", "2", "--set", "cam_iters=0"]


def test_cli_error_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match=r"--grad-checkpointing \(grad_checkpointing\): SLRNet's encoder"):
        from wsseg.training.cli import SLRNET_CLI

        main(SLRNET_CLI, ["--synthetic-images", "4", "--synthetic-size", "32", "--crop", "32", "--batch-size",
                          "2", "--backbone", "resnet38d_w16", "--iters", "1", "--no-progress", "--num-vis", "0",
                          "--out", str(tmp_path / "slr"), "--grad-checkpointing"])


def test_resume_may_switch_it_and_the_run_is_unchanged(tmp_path):
    """A run stopped after 1 step without it and resumed with it ends with the same weights as the
    uninterrupted run without it."""
    main(TSCD_CLI, [*TINY, "--out", str(tmp_path / "full")])
    main(TSCD_CLI, [*TINY, "--out", str(tmp_path / "cut"), "--stop-at", "1"])
    main(TSCD_CLI, [*TINY, "--out", str(tmp_path / "cut"), "--resume", "--grad-checkpointing"])
    full = read_checkpoint(tmp_path / "full" / "checkpoint.pt")
    cut = read_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert full["step"] == cut["step"] == 2
    assert cut["extra"]["engine"]["grad_checkpointing"] is True
    assert full["extra"]["engine"]["grad_checkpointing"] is False
    assert full["model"].keys() == cut["model"].keys()
    for k, v in full["model"].items():
        torch.testing.assert_close(cut["model"][k], v, rtol=1e-6, atol=1e-7, msg=k)
