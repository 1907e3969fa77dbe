"""Shared products kept on the leaves (:mod:`lazymat.product_cache`): the eigenvalue core
``W_O @ W_U @ W_E @ W_V`` of the full OV circuits of all 144 heads of a GPT-2-small-shaped
model, evaluated from a new expression over the same leaves, as a second analysis would:

- ``cached``: ``W_U @ W_E`` (5.9e10 FLOPs) found on the leaves, only the per-head steps run;
- ``recomputed``: the same after ``clear_cache()`` on ``W_U`` (the product formed again),
  which is what every later analysis paid before the cache.

Random weights, no download. Run: ``python benchmarks/bench_product_cache.py [--device cuda]``.
"""

from __future__ import annotations

import argparse

import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm
from lazymat.linalg._common import eig_core


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    d_vocab, d_model, d_head = 50257, 768, 64

    def w(*shape):
        return (torch.randn(*shape, generator=g) * shape[-2] ** -0.5).to(args.device)

    E, U = lm.lazy(w(d_vocab, d_model), name="W_E"), lm.lazy(w(d_model, d_vocab), name="W_U")
    V, O = lm.lazy(w(12, 12, d_model, d_head), name="W_V"), lm.lazy(w(12, 12, d_head, d_model), name="W_O")

    def core():
        return eig_core(E @ V @ O @ U).to_dense()  # a new expression each call (nothing else cached)

    def recomputed():
        U.clear_cache()
        return core()

    times = compare({"cached": core, "recomputed": recomputed}, args.device, rounds=args.rounds)
    print(f"eigenvalue core of 144 full OV circuits, {device_name(args.device)}")
    for name, t in times.items():
        print(f"  {name:<11} {fmt_time(t)}")
    print(f"  recomputed / cached: {times['recomputed'] / times['cached']:.2f}x")


if __name__ == "__main__":
    main()
