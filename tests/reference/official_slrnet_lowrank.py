"""Reference formulations of SLRNet's dictionary initialisation and low-rank factorisation.

Written for wsseg's tests and benchmarks (not library code), following the structure of the official
implementation (github.com/DesertsP/SLRNet, ``models/slrnet.py``: ``DictionaryInitialization``,
``FactorizationReconstruction``, ``l2norm``; the cross-view concatenation of ``Net.forward``) rather than
wsseg's:

* the official layout: features as (B, C, n), prototypes computed as (B, C, K) and permuted, codes as
  (B, K, N) with the softmax over dim 1, einsum contractions, the scale multiplied in unconditionally;
* the views are flattened as (B, C, n) maps, concatenated on the token axis and permuted to (B, N, C),
  as ``Net.forward`` does; the factorised tokens and codes are split back and reshaped per view.

``naive_factorization`` is a second, independent transcription of the equations of the wsseg spec
(``slrnet.md`` §2) with explicit Python loops over images, atoms and tokens: slow, for tiny sizes only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "official_l2norm",
    "official_dictionary_init",
    "OfficialFactorizationReconstruction",
    "official_cross_view",
    "naive_factorization",
    "naive_prototypes",
]


def official_l2norm(t: Tensor, dim: int) -> Tensor:
    """``t / (1e-6 + ||t||)`` along ``dim`` (the official constant and order)."""
    return t / (1e-6 + t.norm(dim=dim, keepdim=True))


def official_dictionary_init(feats: Tensor, logits: Tensor) -> Tensor:
    """Prototypes as the official module computes them, returned as (B, C, K) (not yet permuted)."""
    b, c, h, w = feats.shape
    k = logits.shape[1]
    flat = feats.reshape(b, c, h * w)
    resp = logits.reshape(b, k, h * w).softmax(dim=1)
    resp = resp / (resp.sum(dim=-1, keepdim=True) + 1e-6)
    return flat.matmul(resp.permute(0, 2, 1))


class OfficialFactorizationReconstruction(nn.Module):
    """The official factorisation module's forward (no detach of ``inits`` inside, as in the code).

    ``normalize_tokens`` re-enables the commented-out token normalisation (wsseg's option).
    """

    def __init__(self, c: int, num_iters: int = 1, scale: float = 1.0, eps: float = 1e-6,
                 normalize_tokens: bool = False) -> None:
        super().__init__()
        self.num_iters = num_iters
        self.transform1 = nn.Linear(c, c)
        self.transform2 = nn.Linear(c, c)
        self.scale = scale
        self.eps = eps
        self.normalize_tokens = normalize_tokens

    def forward(self, x: Tensor, inits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shortcut = x
        x = self.transform1(x)
        atoms = official_l2norm(self.transform1(inits), dim=-1)
        if self.normalize_tokens:
            x = official_l2norm(x, dim=-1)
        coding = None
        for _ in range(self.num_iters):
            sim = torch.einsum("bkc,bnc->bkn", atoms, x) * self.scale
            coding = sim.softmax(dim=1)
            resp = coding + self.eps
            resp = resp / resp.sum(dim=-1, keepdim=True)
            atoms = official_l2norm(torch.einsum("bnc,bkn->bkc", x, resp), dim=-1)
        rec = F.relu(torch.einsum("bkn,bkc->bnc", coding, atoms))
        out = F.relu(shortcut + self.transform2(rec))
        return out, coding, atoms


def official_cross_view(module: OfficialFactorizationReconstruction, maps: Sequence[Tensor],
                        dict_init_bck: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Cross-view pass as ``Net.forward``: maps (B, C, h_i, w_i), prototypes (B, C, K) -> per-view maps,
    per-view codes (B, K, h_i, w_i), dictionary (B, K, C)."""
    B, C = maps[0].shape[:2]
    flat = torch.cat([m.reshape(B, C, -1) for m in maps], dim=-1)
    out, coding, atoms = module(flat.permute(0, 2, 1), dict_init_bck.permute(0, 2, 1))
    out = out.permute(0, 2, 1)
    sizes = [m.shape[-1] * m.shape[-2] for m in maps]
    outs = [o.reshape_as(m) for o, m in zip(torch.split(out, sizes, dim=-1), maps, strict=True)]
    codes = [c.reshape(B, c.shape[1], *m.shape[-2:])
             for c, m in zip(torch.split(coding, sizes, dim=-1), maps, strict=True)]
    return outs, codes, atoms


def naive_prototypes(feats: Tensor, logits: Tensor, eps: float = 1e-6) -> Tensor:
    """Spec §2 prototype equations with loops over images and classes: (B, K, d)."""
    B, d = feats.shape[:2]
    K = logits.shape[1]
    out = feats.new_zeros(B, K, d)
    for b in range(B):
        f = feats[b].reshape(d, -1)
        r = torch.exp(logits[b].reshape(K, -1))
        r = r / r.sum(dim=0, keepdim=True)  # softmax over classes, pixel by pixel
        for k in range(K):
            out[b, k] = (f * (r[k] / (r[k].sum() + eps))).sum(dim=1)
    return out


def naive_factorization(x: Tensor, d0: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, *,
                        num_iters: int = 1, temperature: float = 1.0, eps: float = 1e-6,
                        normalize_tokens: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Spec §2 steps 1-4 with explicit loops over images, atoms and tokens. x (B, N, d), d0 (B, K, d)."""
    B, N, d = x.shape
    K = d0.shape[1]

    def l2(v: Tensor) -> Tensor:
        return v / (1e-6 + torch.sqrt((v * v).sum()))

    outs, all_codes, dicts = [], [], []
    for b in range(B):
        xp = [w1 @ x[b, n] + b1 for n in range(N)]
        if normalize_tokens:
            xp = [l2(v) for v in xp]
        atoms = [l2(w1 @ d0[b, k] + b1) for k in range(K)]
        codes = None
        for _ in range(num_iters):
            codes = []
            for n in range(N):
                z = torch.stack([torch.dot(atoms[k], xp[n]) / temperature for k in range(K)])
                e = torch.exp(z - z.max())
                codes.append(e / e.sum())
            codes = torch.stack(codes, dim=1)  # (K, N)
            new_atoms = []
            for k in range(K):
                mass = (codes[k] + eps).sum()
                acc = torch.zeros_like(xp[0])
                for n in range(N):
                    acc = acc + (codes[k, n] + eps) / mass * xp[n]
                new_atoms.append(l2(acc))
            atoms = new_atoms
        rows = []
        for n in range(N):
            rec = torch.clamp(sum(codes[k, n] * atoms[k] for k in range(K)), min=0)
            rows.append(torch.clamp(x[b, n] + w2 @ rec + b2, min=0))
        outs.append(torch.stack(rows))
        all_codes.append(codes)
        dicts.append(torch.stack(atoms))
    return torch.stack(outs), torch.stack(all_codes), torch.stack(dicts)
