"""GPT-2-small circuits: lazymat's spectral routes against TransformerLens' FactoredMatrix,
a hand-written route and (optionally) the dense route, side by side in one run.

Random weights with GPT-2 small's shapes (no download). For each operation on the full QK
circuit ``W_E @ W_Q @ W_K.T @ W_E.T`` (50257 x 50257, rank 64) and the eigenvalue copying
scores of all 144 full OV circuits ``W_E @ W_V @ W_O @ W_U``. Decomposition caches are
cleared before every lazymat call and a new FactoredMatrix is built for every peer call
(building it is part of its work), so nothing is served from a cache.

Run: ``python benchmarks/bench_circuits.py [--device cuda] [--dense]``; TransformerLens is
measured when installed (``pip install --no-deps transformer-lens==4.3.0 jaxtyping einops``).
"""

from __future__ import annotations

import argparse
import gc

import torch
from _harness import compare, device_name, fmt_time, load_factored_matrix, peak_rss_bytes, rss_bytes

import lazymat as lm
from lazymat import linalg as LA


def weights(device: str):
    g = torch.Generator().manual_seed(0)
    d_vocab, d_model, d_head = 50257, 768, 64

    def w(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return {
        "W_E": w(d_vocab, d_model, scale=0.1),
        "W_U": w(d_model, d_vocab, scale=0.1),
        "W_Q": w(d_model, d_head, scale=d_model**-0.5),
        "W_K": w(d_model, d_head, scale=d_model**-0.5),
        "W_V": w(12, 12, d_model, d_head, scale=d_model**-0.5),
        "W_O": w(12, 12, d_head, d_model, scale=d_head**-0.5),
    }


def fresh(x: lm.Expr):
    """Run an op on ``x`` with its decomposition caches emptied first."""
    def run(fn):
        def call():
            x._cache.clear()
            return fn(x)
        return call
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense", action="store_true", help="also time the dense norm (10 GB)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dev = args.device
    W = weights(dev)
    FM = load_factored_matrix()
    E, Q, K = lm.lazy(W["W_E"], name="W_E"), lm.lazy(W["W_Q"], name="W_Q"), lm.lazy(W["W_K"], name="W_K")
    qk = E @ Q @ K.T @ E.T
    run = fresh(qk)
    print(f"GPT-2 small shapes on {device_name(dev)}; torch {torch.__version__}; median of "
          f"{args.rounds} rounds, measured round-robin")

    ops = {
        "svd": (run(LA.svd), lambda f: f.svd()),
        "svdvals": (run(LA.svdvals), lambda f: f.S),
        "matrix_norm (fro)": (run(LA.matrix_norm), lambda f: f.norm()),
        "eigvals": (run(LA.eigvals), lambda f: f.eigenvalues),
        "trace": (run(LA.trace), None),
        "diagonal": (run(LA.diagonal), None),
    }
    # memory: peak RSS growth over all lazymat calls, before any peer runs
    gc.collect()
    base, peak0 = rss_bytes(), peak_rss_bytes()
    for fn, _ in ops.values():
        fn()
    if dev == "cpu":
        grow = max(peak_rss_bytes() - max(peak0, base), 0)
        print(f"peak RSS growth over all lazymat QK operations: {grow / 2**20:.0f} MiB "
              f"(a dense 50257x50257 float32 is {50257**2 * 4 / 2**30:.1f} GiB)")
    else:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for fn, _ in ops.values():
            fn()
        print(f"peak CUDA memory growth over all lazymat QK operations: "
              f"{(torch.cuda.max_memory_allocated() - before) / 2**20:.0f} MiB")

    def tl_build():
        return FM(W["W_E"] @ W["W_Q"], W["W_K"].T @ W["W_E"].T)

    print(f"\nfull QK circuit, one head: {qk}")
    print(f"{'operation':<20} {'lazymat':>10} {'TL FactoredMatrix':>18} {'TL / lazymat':>13}")
    for name, (mine, theirs) in ops.items():
        fns = {"lazymat": mine}
        if FM is not None and theirs is not None:
            fns["tl"] = lambda theirs=theirs: theirs(tl_build())
        t = compare(fns, dev, rounds=args.rounds, min_time=0)
        tl, me = t.get("tl"), t["lazymat"]
        ratio = f"{tl / me:.2f}x" if tl else "-"
        print(f"{name:<20} {fmt_time(me):>10} {fmt_time(tl) if tl else '-':>18} {ratio:>13}")
    if args.dense:
        dense = compare({"dense": lambda: torch.linalg.matrix_norm(
            W["W_E"] @ W["W_Q"] @ W["W_K"].T @ W["W_E"].T)}, dev, rounds=1, min_time=0)["dense"]
        print(f"{'dense norm':<20} {fmt_time(dense):>10}")

    # ---- OV copying scores over all 144 heads --------------------------------------------
    V, O, U = lm.lazy(W["W_V"], name="W_V"), lm.lazy(W["W_O"], name="W_O"), lm.lazy(W["W_U"], name="W_U")
    ov = E @ V @ O @ U

    def score(ev):
        return (ev.sum(-1) / ev.abs().sum(-1)).real

    def by_hand():
        core = W["W_O"] @ (W["W_U"] @ W["W_E"]) @ W["W_V"]
        return score(torch.linalg.eigvals(core.cpu()).to(dev))

    fns = {"lazymat": fresh(ov)(lambda x: score(LA.eigvals(x))), "hand-written (shared W_U W_E)": by_hand}
    if FM is not None:
        fns["TL FactoredMatrix"] = lambda: score(FM(W["W_E"] @ W["W_V"], W["W_O"] @ W["W_U"]).eigenvalues)
    t = compare(fns, dev, rounds=max(1, args.rounds // 2), min_time=0)
    ref = by_hand()
    err = (fns["lazymat"]() - ref).abs().max().item()
    print(f"\ncopying scores of all 144 full OV circuits {ov.shape}: (max |lazymat - hand| = {err:.2e})")
    for k, v in t.items():
        print(f"  {k:<32} {fmt_time(v):>10}  {v / t['lazymat']:.2f}x lazymat's time")



if __name__ == "__main__":
    main()
