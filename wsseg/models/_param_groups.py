"""The four optimizer parameter groups shared by the AFA-family recipes (TSCD, CoSA)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn


def encoder_head_param_groups(encoder: nn.Module, heads: Iterable[nn.Parameter], decoder: nn.Module, *,
                              base_lr: float, weight_decay: float, head_lr_mult: float,
                              encoder_norm_lr_mult: float, norm_weight_decay: float) -> list[dict[str, Any]]:
    """``encoder`` / ``encoder_norm`` / ``heads`` / ``decoder`` groups (empty groups and frozen parameters dropped).

    Encoder parameters whose name contains ``"norm"`` form the norm group (the official rule of the
    AFA-family code), at ``base_lr * encoder_norm_lr_mult`` and ``norm_weight_decay``; heads and decoder run at
    ``base_lr * head_lr_mult``.

    Raises:
        ValueError: if ``base_lr``, ``weight_decay`` or a multiplier is negative.
    """
    for name, v in (("base_lr", base_lr), ("weight_decay", weight_decay), ("head_lr_mult", head_lr_mult),
                    ("encoder_norm_lr_mult", encoder_norm_lr_mult)):
        if float(v) < 0:
            raise ValueError(f"{name}: expected a non-negative float, got {v}")
    enc: list[nn.Parameter] = []
    enc_norm: list[nn.Parameter] = []
    for name, p in encoder.named_parameters():
        if p.requires_grad:
            (enc_norm if "norm" in name else enc).append(p)
    head_params = [p for p in heads if p.requires_grad]
    dec = [p for p in decoder.parameters() if p.requires_grad]
    groups = [
        {"name": "encoder", "params": enc, "lr": base_lr, "weight_decay": weight_decay},
        {"name": "encoder_norm", "params": enc_norm, "lr": base_lr * encoder_norm_lr_mult,
         "weight_decay": norm_weight_decay},
        {"name": "heads", "params": head_params, "lr": base_lr * head_lr_mult, "weight_decay": weight_decay},
        {"name": "decoder", "params": dec, "lr": base_lr * head_lr_mult, "weight_decay": weight_decay},
    ]
    return [g for g in groups if g["params"]]
