"""Parity: the permutohedral DenseEnergyLoss vs the plain-loop transcription of the official C++ lattice.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/parity_permutohedral.py [--quick]

Real-image-like inputs (piecewise-smooth colour regions with edges and mild noise, smooth CAM-like
probabilities, a padded strip, ignored pseudo-label pixels), B = 2, official sigmas and 0.5 downscale.
Reference: ``tests.reference.official_permutohedral.official_energy`` (per-point Python loops, float32,
the SSE build's arithmetic), its official gradient chained through the bilinear downscale with autograd.
Prints a Markdown table: relative error of the loss, ‖Δgrad‖/‖grad‖ and max |Δgrad| / max |grad|.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tests.reference.naive_energy import downscale  # noqa: E402
from tests.reference.official_permutohedral import official_energy  # noqa: E402
from wsseg.losses import dense_energy_loss  # noqa: E402


def image_like_inputs(b: int, c: int, size: int, seed: int = 0):
    """Piecewise-smooth image with edges, smooth probabilities, padded strip, ignored block."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, size // 16, size // 16, generator=g) * 3
    probs = F.interpolate(logits, size=(size, size), mode="bilinear").softmax(1)
    image = F.interpolate(torch.rand(b, 3, 6, 6, generator=g) * 255, size=(size, size), mode="nearest")
    image = F.avg_pool2d(image, 5, 1, 2, count_include_pad=False)  # soft edges
    ramp = torch.linspace(0, 30, size)[None, None, None, :]
    image = (image + ramp + torch.randn(b, 3, size, size, generator=g) * 4).clamp(0, 255)
    valid = torch.ones(b, size, size, dtype=torch.bool)
    valid[-1, -size // 5:] = False
    label = torch.randint(0, c, (b, size, size), generator=g)
    label[:, : size // 4, : size // 4] = 255
    return probs, image, valid, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64² and 96² only")
    args = parser.parse_args()
    sizes = (64, 96) if args.quick else (64, 96, 128, 160)
    print("| internal size | C | loss rel. error | grad ‖Δ‖/‖g‖ | grad max abs err / max | reference s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for internal in sizes:
        for c in (4, 21):
            probs, image, valid, label = image_like_inputs(2, c, 2 * internal, seed=internal + c)
            probs.requires_grad_(True)
            t0 = time.perf_counter()
            ref, ref_grad_low = official_energy(probs, image, valid, label)
            t_ref = time.perf_counter() - t0
            p = probs.detach().clone().requires_grad_(True)
            p_low = downscale(p, image, valid, label, 0.5)[0]
            (expected,) = torch.autograd.grad((ref_grad_low * p_low).sum(), p)
            loss = dense_energy_loss(probs, image, valid, label)
            (grad,) = torch.autograd.grad(loss, probs)
            rel_loss = abs(loss.item() - ref.item()) / abs(ref.item())
            rel_norm = ((grad - expected).norm() / expected.norm()).item()
            rel_max = ((grad - expected).abs().max() / expected.abs().max()).item()
            print(f"| {internal}² | {c} | {rel_loss:.1e} | {rel_norm:.1e} | {rel_max:.1e} | {t_ref:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
