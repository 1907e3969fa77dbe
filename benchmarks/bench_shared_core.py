"""The smallest core where a batch shares a leaf: GPT-2-small-shaped full QK circuits of all
144 heads, ``W_E @ W_Q @ W_K.T @ W_E.T`` with ``W_Q``, ``W_K`` of shape (12, 12, 768, 64).

- svdvals of all 144 heads: lazymat (the shared ``W_E`` QR-factorised once) against a
  hand-written shared-QR route (``R_E`` once, then ``R_E W_Q``, ``R_E W_K`` and the 64 x 64
  cores), plus lazymat's peak memory growth;
- the batched Frobenius norm (closed network ``tr(X^H X)``, the Gram ``W_E^T W_E`` formed
  once) against a hand-written Gram route;
- one head's svdvals (no QR of ``W_E`` worth its cost: the direct route) against the
  hand-written direct route (form ``W_E W_Q``, ``W_K^T W_E^T``, QR both).

Every lazymat call wraps fresh tensor objects (views of the same storage), so nothing is
served from a leaf's or an expression's cache. Random weights, no download.

Run: ``python benchmarks/bench_shared_core.py [--device cuda] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import gc

import torch
from _harness import compare, device_name, fmt_time, peak_rss_bytes, rss_bytes

import lazymat as lm
from lazymat import linalg as LA


def weights(device: str):
    g = torch.Generator().manual_seed(0)
    d_vocab, d_model, d_head = 50257, 768, 64

    def w(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return w(d_vocab, d_model, scale=0.1), w(12, 12, d_model, d_head, scale=d_model**-0.5), \
        w(12, 12, d_model, d_head, scale=d_model**-0.5)


def circuit(E, Q, K):
    """The lazy full QK circuit over fresh leaves (``t[...]`` is a new tensor object)."""
    e = lm.lazy(E[...], name="W_E")
    return e @ lm.lazy(Q[...], name="W_Q") @ lm.lazy(K[...], name="W_K").mT @ e.mT


def hand_shared_qr(E, Q, K):
    R_E = torch.linalg.qr(E, mode="r")[1]
    R1 = torch.linalg.qr(R_E @ Q, mode="r")[1]
    R2 = torch.linalg.qr(R_E @ K, mode="r")[1]
    return torch.linalg.svdvals(R1 @ R2.mT)


def hand_gram_norm(E, Q, K):
    G = E.mT @ E
    return ((Q.mT @ G @ Q) * (K.mT @ G @ K)).sum((-2, -1)).sqrt()


def hand_direct(E, Q, K):
    R1 = torch.linalg.qr(E @ Q, mode="r")[1]
    R2 = torch.linalg.qr(E @ K, mode="r")[1]
    return torch.linalg.svdvals(R1 @ R2.mT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = args.device
    E, Q, K = weights(dev)
    print(f"GPT-2 small shapes on {device_name(dev)}; torch {torch.__version__}; median of "
          f"{args.rounds} rounds, measured round-robin")
    X = circuit(E, Q, K)
    print(f"all 144 full QK circuits: {X}")

    # memory first, before any other route has raised the peak
    gc.collect()
    if dev == "cpu":
        base, peak0 = rss_bytes(), peak_rss_bytes()
        S = LA.svdvals(circuit(E, Q, K))
        grow = max(peak_rss_bytes() - max(peak0, base), 0)
        print(f"peak RSS growth of one lazymat svdvals over 144 heads: {grow / 2**20:.0f} MiB")
    else:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        S = LA.svdvals(circuit(E, Q, K))
        print(f"peak CUDA memory growth of one lazymat svdvals over 144 heads: "
              f"{(torch.cuda.max_memory_allocated() - before) / 2**20:.0f} MiB")
    ref = hand_shared_qr(E, Q, K)
    print(f"max relative difference to the hand-written route: "
          f"{((S - ref).abs().amax(-1) / ref.amax(-1)).max().item():.2e}")
    report = lm.explain(circuit(E, Q, K), "svdvals")
    print("explain:", "; ".join(f"{r.op} {r.flops:.3g}" for r in report.rows[:4]), "...")

    def row(name, fns):
        t = compare(fns, dev, rounds=args.rounds, min_time=0)
        (a, ta), (b, tb) = t.items()
        print(f"{name:<34} {a} {fmt_time(ta):>9}   {b} {fmt_time(tb):>9}   ratio {ta / tb:.2f}x")

    print(f"\n{'':<34} times and lazymat / hand-written")
    row("svdvals, 144 heads", {
        "lazymat": lambda: LA.svdvals(circuit(E, Q, K)),
        "shared-QR by hand": lambda: hand_shared_qr(E, Q, K)})

    norm_x = circuit(E, Q, K)
    rows = lm.explain(norm_x, "matrix_norm").rows
    grams = [r for r in rows if r.inputs[0][-2:] in ((50257, 768), (768, 50257))]
    print(f"matrix_norm route: {len(rows)} steps, W_E Gram listed {len(grams)}x, computed "
          f"{sum(1 for r in grams if r.flops)}x; max relative difference to by hand: "
          f"{((LA.matrix_norm(norm_x) - hand_gram_norm(E, Q, K)).abs() / hand_gram_norm(E, Q, K)).max():.2e}")
    row("matrix_norm (fro), 144 heads", {
        "lazymat": lambda: LA.matrix_norm(circuit(E, Q, K)),
        "Gram by hand": lambda: hand_gram_norm(E, Q, K)})

    q, k = Q[0, 0], K[0, 0]
    row("svdvals, one head", {
        "lazymat": lambda: LA.svdvals(circuit(E, q, k)),
        "direct by hand": lambda: hand_direct(E, q, k)})


if __name__ == "__main__":
    main()
