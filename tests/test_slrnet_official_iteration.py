"""One SLRNet training iteration against the official ``Net.forward`` (training path) + loss composition, with
**each side drawing its own dropout / stochastic-gate masks from the same seed** (no shared masks).

Official side, written independently of wsseg's model: the sub-modules of ``tests/reference/official_slrnet_net.py``
(WR38 with its ``Dropout2d`` in b6 / b7, ASPP decoder, aux head with dropout, GCI, ``last_conv`` with two
dropouts) driven in the order of github.com/DesertsP/SLRNet ``models/slrnet.py`` ``Net.forward``: both
backbone passes, the aux head, the dictionary initialisation, the cross-view factorisation on the channel-first
concatenation, the two segmentation forwards (``StochasticGate`` mask from ``torch.ones_like`` of the
factorised map), the inverse transform, the mask / code regularisers, the PAMR pseudo label and the balanced
cross-entropy; total ``1·L_cls + 4·L_mask + 4·L_code + 1·mean(L_seg)`` (``train_voc_wss.py``). The loop body is
``official_slrnet_iteration`` of ``benchmarks/_official_loops.py``, shared with the iteration benchmark.

The masks land on the same elements only if the factorised maps have the official memory layout (torch fills a
dropout mask in memory order): the check of ``LowRankFactorization``'s layout.
"""

from __future__ import annotations

import torch

from benchmarks._official_loops import official_slrnet_iteration
from tests.reference.official_slrnet_net import OfficialSLRNet
from tests.test_official_checkpoints import slrnet_state
from wsseg import create_model
from wsseg.models.official import convert_official_state_dict
from wsseg.training import SLRNetRecipe, SLRNetTrainingStep

K, B, CROP, C, DIV = 3, 2, 49, 16, 16
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_iteration_with_own_masks_from_the_same_seed_equals_the_official():
    state = slrnet_state(DIV, C, K, seed=3)
    ref = OfficialSLRNet(num_classes=K + 1, divisor=DIV, c=C)
    ref.load_state_dict(state, strict=True)
    net = create_model("slrnet", backbone="resnet38d_w16", num_classes=K, feature_dim=C)
    net.load_state_dict(convert_official_state_dict("slrnet", state, model=net), strict=True)
    net.train()
    ref.train()
    for m in ref.aspp.modules():  # the official train(): _fix_running_stats(self.aspp, fix_params=False)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(B, 3, CROP, CROP, generator=torch.Generator().manual_seed(4))
    step = SLRNetTrainingStep(SLRNetRecipe(crop_size=CROP, batch_size=B, seg_start_iters=0))

    torch.manual_seed(7)
    loss, logs = step(net, {"image": x, "label": LABELS.clone()}, step=0)
    loss.backward()
    rng = torch.get_rng_state()
    torch.manual_seed(7)
    ref_loss = official_slrnet_iteration(ref, x, LABELS.clone())
    ref_loss.backward()
    assert torch.equal(rng, torch.get_rng_state())  # the same number of random draws
    assert "loss_seg" in logs
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)

    ref_params = dict(ref.named_parameters())  # duplicates (newly_added.*, fixed_layers.*) are the same tensors
    converted = convert_official_state_dict("slrnet", {k: v for k, v in ref.state_dict(keep_vars=True).items()},
                                            model=net)
    by_tensor = {id(v): k for k, v in converted.items()}
    worst, checked = 0.0, 0
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        ours = p.grad
        theirs = [v for v in ref_params.values() if id(v) in by_tensor and by_tensor[id(v)] == name]
        assert len(theirs) == 1, name
        g = theirs[0].grad
        assert (ours is None) == (g is None), name
        if g is None:
            continue
        worst = max(worst, float((ours - g).abs().max() / g.abs().max().clamp_min(1e-12)))
        checked += 1
    print(f"SLRNet iteration, own masks from one seed: {checked} gradients, worst relative difference {worst:.2e}")
    assert checked > 20 and worst <= 1e-4, worst
