"""Reference formulations of the (assumed) APC patch contrastive loss, ``apc.md`` §4.

No official APC code exists, so "official" here means the spec's equations transcribed directly:

* :func:`loop_patch_contrast` — plain Python loops over groups, anchors and pairs (tiny sizes only);
  used by ``tests/test_patch_contrast.py`` as the independent reference (values and, through autograd,
  gradients).
* :func:`dense_patch_contrast` — the straightforward vectorised formulation: one full (B·N)×(B·N) cosine
  matrix over the whole batch plus boolean masks (same image / same label / kept / not self); used by
  ``benchmarks/bench_patch_contrast.py`` as the baseline.

Both take embeddings (B, N, D), labels (B, N) and a keep mask (B, N) (label != ignore and confidence >= γ,
already applied by the caller) and return the per-image losses (B,) for scope="image" or a scalar for
scope="batch".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _unit(e: Tensor, eps: float) -> Tensor:
    return e / torch.clamp(torch.linalg.vector_norm(e, dim=-1, keepdim=True), min=eps)


def _loop_group(e_hat: Tensor, y: list[int], form: str, margin: float, temperature: float | None) -> Tensor:
    """The spec's loss over one list of kept patches (unit embeddings (M, D), labels as Python ints)."""
    m = len(y)
    zero = e_hat.new_zeros(())
    if form == "margin":
        pos, neg = [], []
        for i in range(m):
            for j in range(m):
                s = torch.dot(e_hat[i], e_hat[j])
                if y[i] == y[j] and i != j:
                    pos.append(1.0 - s)
                elif y[i] != y[j]:
                    neg.append(torch.clamp(s - margin, min=0.0))
        pos_term = torch.stack(pos).mean() if pos else zero
        neg_term = torch.stack(neg).mean() if neg else zero
        return pos_term + neg_term
    losses = []
    for i in range(m):
        positives = [j for j in range(m) if j != i and y[j] == y[i]]
        if not positives:
            continue
        denom = sum(torch.exp(torch.dot(e_hat[i], e_hat[k]) / temperature) for k in range(m) if k != i)
        terms = [-torch.log(torch.exp(torch.dot(e_hat[i], e_hat[j]) / temperature) / denom) for j in positives]
        losses.append(sum(terms) / len(positives))
    return torch.stack(losses).mean() if losses else zero


def loop_patch_contrast(embeddings: Tensor, labels: Tensor, keep: Tensor, *, form: str = "margin",
                        margin: float = 0.0, temperature: float | None = None, scope: str = "image",
                        eps: float = 1e-8) -> Tensor:
    """Per-image (B,) or batch (scalar) loss with explicit loops over images, anchors and pairs."""
    b, n, _ = embeddings.shape
    e_hat = _unit(embeddings, eps)
    if scope == "image":
        out = []
        for bi in range(b):
            idx = [i for i in range(n) if bool(keep[bi, i])]
            ys = [int(labels[bi, i]) for i in idx]
            rows = e_hat[bi, idx] if idx else e_hat.new_zeros(0, embeddings.shape[-1])
            out.append(_loop_group(rows, ys, form, margin, temperature))
        return torch.stack(out)
    rows, ys = [], []
    for bi in range(b):
        for i in range(n):
            if bool(keep[bi, i]):
                rows.append(e_hat[bi, i])
                ys.append(int(labels[bi, i]))
    rows_t = torch.stack(rows) if rows else e_hat.new_zeros(0, embeddings.shape[-1])
    return _loop_group(rows_t, ys, form, margin, temperature)


def dense_patch_contrast(embeddings: Tensor, labels: Tensor, keep: Tensor, *, form: str = "margin",
                         margin: float = 0.0, temperature: float | None = None, scope: str = "image",
                         eps: float = 1e-8) -> Tensor:
    """The same loss from one full (B·N)×(B·N) similarity matrix and boolean masks."""
    b, n, d = embeddings.shape
    e_hat = _unit(embeddings, eps).reshape(b * n, d)
    sim = e_hat @ e_hat.T                                                     # (BN, BN)
    y = labels.reshape(-1)
    k = keep.reshape(-1)
    img = torch.arange(b, device=labels.device).repeat_interleave(n)
    in_scope = (img[:, None] == img[None, :]) if scope == "image" else torch.ones_like(sim, dtype=torch.bool)
    pair = in_scope & k[:, None] & k[None, :]
    same = y[:, None] == y[None, :]
    eye = torch.eye(b * n, dtype=torch.bool, device=sim.device)
    pos = pair & same & ~eye
    # per-row group id: the image for scope="image", 0 for scope="batch"
    group = img if scope == "image" else torch.zeros_like(img)
    n_groups = b if scope == "image" else 1
    zero = sim.new_zeros(())
    if form == "margin":
        neg = pair & ~same
        pos_sum = torch.zeros(n_groups, dtype=sim.dtype, device=sim.device).index_add(
            0, group, torch.where(pos, 1.0 - sim, zero).sum(1))
        neg_sum = torch.zeros(n_groups, dtype=sim.dtype, device=sim.device).index_add(
            0, group, torch.where(neg, torch.relu(sim - margin), zero).sum(1))
        pos_cnt = torch.zeros(n_groups, dtype=torch.long, device=sim.device).index_add(0, group, pos.sum(1))
        neg_cnt = torch.zeros(n_groups, dtype=torch.long, device=sim.device).index_add(0, group, neg.sum(1))
        out = (torch.where(pos_cnt > 0, pos_sum / pos_cnt.clamp_min(1), zero)
               + torch.where(neg_cnt > 0, neg_sum / neg_cnt.clamp_min(1), zero))
    else:
        logits = sim / temperature
        denom = pair & ~eye
        n_pos = pos.sum(1)
        anchor = n_pos > 0
        masked = torch.where(denom | ~anchor[:, None], logits, torch.full_like(logits, -math.inf))
        lse = torch.logsumexp(masked, dim=1)
        ell = lse - torch.where(pos, logits, zero).sum(1) / n_pos.clamp_min(1)
        ell = torch.where(anchor, ell, zero)
        ell_sum = torch.zeros(n_groups, dtype=sim.dtype, device=sim.device).index_add(0, group, ell)
        cnt = torch.zeros(n_groups, dtype=torch.long, device=sim.device).index_add(0, group, anchor.long())
        out = torch.where(cnt > 0, ell_sum / cnt.clamp_min(1), zero)
    return out if scope == "image" else out[0]
