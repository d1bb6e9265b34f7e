"""One SLRNet training iteration against the official ``Net.forward`` (training path) + loss composition, with
**each side drawing its own dropout / stochastic-gate masks from the same seed** (no shared masks).

Official side, written independently of wsseg's model: the sub-modules of ``tests/reference/official_slrnet_net.py``
(WR38 with its ``Dropout2d`` in b6 / b7, ASPP decoder, aux head with dropout, GCI, ``last_conv`` with two
dropouts) driven in the order of github.com/DesertsP/SLRNet ``models/slrnet.py`` ``Net.forward``: both
backbone passes, the aux head, the dictionary initialisation, the cross-view factorisation on the channel-first
concatenation, the two segmentation forwards (``StochasticGate`` mask from ``torch.ones_like`` of the
factorised map), the inverse transform, the mask / code regularisers, the PAMR pseudo label and the balanced
cross-entropy; total ``1·L_cls + 4·L_mask + 4·L_code + 1·mean(L_seg)`` (``train_voc_wss.py``).

The masks land on the same elements only if the factorised maps have the official memory layout (torch fills a
dropout mask in memory order): the check of ``LowRankFactorization``'s layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.reference.official_slrnet_heads import official_pseudo_label, official_stochastic_gate
from tests.reference.official_slrnet_losses import (
    label_map_to_onehot,
    official_affine_transform,
    official_balanced_mask_loss_ce,
    official_classifier_forward,
    official_code_reg_loss,
    official_mask_reg_loss,
)
from tests.reference.official_slrnet_lowrank import official_dictionary_init
from tests.reference.official_slrnet_net import OfficialSLRNet
from tests.test_official_checkpoints import slrnet_state
from wsseg import create_model
from wsseg.models.official import convert_official_state_dict
from wsseg.training import SLRNetRecipe, SLRNetTrainingStep
from wsseg.utils import denormalize

K, B, CROP, C, DIV = 3, 2, 49, 16, 16
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def _official_iteration(ref: OfficialSLRNet, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    x2, inverse = official_affine_transform(x, scale_factor=0.5, flip=None)

    def backbone_forward(z):
        feats = ref.backbone.forward_as_dict(z)
        y = ref.aspp(feats["conv6"])
        skip = ref.fc8_skip(feats["conv3"])
        up = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return ref.fc8_x(torch.cat([up, skip], dim=1)), feats["conv3"]

    def segmentation_forward(z, shallow):
        z = official_stochastic_gate(z, ref.shallow_mask(shallow, z), 0.3, True)
        z = ref.last_conv(z)
        z = torch.cat([torch.ones_like(z[:, :1]), z], dim=1)
        return z, F.softmax(z, dim=1)

    f1, s1 = backbone_forward(x)
    f2, s2 = backbone_forward(x2)
    aux = ref.aux_head(f1)
    aux = torch.cat([1 - aux.max(dim=1, keepdim=True)[0], aux], dim=1)
    mask_aux = F.softmax(aux, dim=1)
    dict_init = official_dictionary_init(f1, aux.detach()).detach().permute(0, 2, 1)
    c = f1.shape[1]
    multi = torch.cat([f1.view(b, c, -1), f2.view(b, c, -1)], dim=-1)
    out, coding, _ = ref.factorization_reconstruction(multi.permute(0, 2, 1), dict_init)
    out = out.permute(0, 2, 1)
    n1, n2 = f1.shape[-1] * f1.shape[-2], f2.shape[-1] * f2.shape[-2]
    x_aug, x2_aug = torch.split(out, (n1, n2), dim=-1)
    x_aug, x2_aug = x_aug.reshape_as(f1), x2_aug.reshape_as(f2)
    code1, code2 = torch.split(coding, (n1, n2), dim=-1)
    code1 = code1.reshape(b, code1.shape[1], *f1.shape[-2:])
    code2 = code2.reshape(b, code2.shape[1], *f2.shape[-2:])
    x_aug, mask_aug = segmentation_forward(x_aug, s1)
    x2_aug, mask2_aug = segmentation_forward(x2_aug, s2)
    cls = official_classifier_forward(x_aug, mask_aug)
    cls_affine = official_classifier_forward(x2_aug, mask2_aug)
    grid = f1.shape[-2:]
    code2, x2_aug, mask2_aug = inverse(code2, grid), inverse(x2_aug, grid), inverse(mask2_aug, grid)
    cls_aux = official_classifier_forward(aux, mask_aux)
    reg = official_mask_reg_loss(mask_aug, mask2_aug, labels)
    code = official_code_reg_loss(code1, code2)
    masks = (mask_aug.detach() + mask2_aug.detach()) / 2.0
    pseudo = official_pseudo_label(masks, denormalize(x, mode="float"), labels)
    onehot = label_map_to_onehot(pseudo, K + 1)
    seg = (official_balanced_mask_loss_ce(x_aug, onehot, labels) + official_balanced_mask_loss_ce(x2_aug, onehot, labels)
           + 0.4 * official_balanced_mask_loss_ce(aux, onehot, labels))
    cls_loss = (F.multilabel_soft_margin_loss(cls, labels) + F.multilabel_soft_margin_loss(cls_affine, labels)
                + 0.4 * F.multilabel_soft_margin_loss(cls_aux, labels))
    return cls_loss + 4.0 * reg + 4.0 * code + seg.mean()


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
    ref_loss = _official_iteration(ref, x, LABELS.clone())
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
