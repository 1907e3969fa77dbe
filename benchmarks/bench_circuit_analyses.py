"""Circuit analyses of GPT-2 small's shapes: lazymat.circuits against hand-written
smallest-core routes and TransformerLens 4.3's FactoredMatrix, side by side in one run.

- copying scores of all 144 heads (eigenvalues of ``W_E W_V W_O W_U``);
- K-composition scores of all 144 x 144 head pairs.

lazymat runs each analysis as the user would (``Circuits(weights).copying_scores()``), on a
new ``Circuits`` for every call so nothing comes from a cache. The hand-written routes:
copying, the ``d_head`` cores ``W_O (W_U W_E) W_V`` with the Gram formed once; K-composition,
one GEMM of the stacked ``R_V(a) W_O(a)`` against the stacked ``R_Q(b) W_K(b)^T`` (``R`` the
triangular QR factors, so ``||W_V W_O W_K W_Q^T|| = ||R_V W_O W_K R_Q^T||``), then block norms.
TransformerLens: ``FactoredMatrix`` products and norms as its ``all_composition_scores``.

Peak memory of each route is measured in a child process (peak RSS growth on the CPU; peak
allocated on CUDA). Run: ``python benchmarks/bench_circuit_analyses.py [--device cuda]
[--rounds 5] [--no-tl] [--only copying|K-composition]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys

import torch
from _harness import (
    compare,
    device_name,
    fmt_time,
    load_factored_matrix,
    median_time,
    peak_rss_bytes,
    rss_bytes,
)

from lazymat.circuits import Circuits
from lazymat.presets import PRESETS


def weights(device: str) -> dict[str, torch.Tensor]:
    s = PRESETS["gpt2-small"]
    g = torch.Generator().manual_seed(0)
    L, H, D, Dh, V = s.n_layers, s.n_heads, s.d_model, s.d_head, s.d_vocab

    def w(*shape, scale):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    return {"W_E": w(V, D, scale=0.1), "W_U": w(D, V, scale=0.1), "W_Q": w(L, H, D, Dh, scale=D**-0.5),
            "W_K": w(L, H, D, Dh, scale=D**-0.5), "W_V": w(L, H, D, Dh, scale=D**-0.5),
            "W_O": w(L, H, Dh, D, scale=Dh**-0.5)}


def earlier_to_later(scores: torch.Tensor) -> torch.Tensor:
    L = scores.shape[0]
    layers = torch.arange(L, device=scores.device)
    mask = layers[:, None, None, None] < layers[None, None, :, None]
    return torch.where(mask, scores, torch.zeros((), dtype=scores.dtype, device=scores.device))


# ---- routes ---------------------------------------------------------------------------------
def lazymat_copying(W):
    return Circuits(W).copying_scores().scores


def lazymat_k(W):
    return Circuits(W).composition_scores("K").scores


def hand_copying(W):
    core = W["W_O"] @ (W["W_U"] @ W["W_E"]) @ W["W_V"]
    ev = torch.linalg.eigvals(core.cpu()).to(W["W_E"].device)
    return ev.sum(-1).real / ev.abs().sum(-1)


def hand_k(W):
    L, H, D, Dh = W["W_Q"].shape
    Rv = torch.linalg.qr(W["W_V"]).R                      # (L, H, Dh, Dh)
    Rq = torch.linalg.qr(W["W_Q"]).R
    A = (Rv @ W["W_O"]).reshape(L * H * Dh, D)            # R_V(a) W_O(a), stacked
    B = (Rq @ W["W_K"].mT).reshape(L * H * Dh, D)         # R_Q(b) W_K(b)^T, stacked
    P = (A @ B.mT).reshape(L, H, Dh, L, H, Dh)            # the one GEMM
    num = P.square().sum((2, 5)).sqrt()
    na = A.reshape(L, H, Dh * D).norm(dim=-1)
    nb = B.reshape(L, H, Dh * D).norm(dim=-1)
    return earlier_to_later(num / (na[:, :, None, None] * nb[None, None]))


def tl_routes(FM):
    def copying(W):
        ev = (W["W_E"] @ FM(W["W_V"], W["W_O"]) @ W["W_U"]).eigenvalues
        return ev.sum(-1).real / ev.abs().sum(-1)

    def k(W):
        ov = FM(W["W_V"], W["W_O"])
        qk_t = FM(W["W_Q"], W["W_K"].mT).T
        left, right = ov.unsqueeze(2).unsqueeze(3), qk_t.unsqueeze(0).unsqueeze(1)
        scores = (left @ right).norm() / left.norm() / right.norm()
        return earlier_to_later(scores)

    return copying, k


def routes(FM) -> dict[str, dict]:
    out = {"copying": {"lazymat": lazymat_copying, "hand-written": hand_copying},
           "K-composition": {"lazymat": lazymat_k, "hand-written": hand_k}}
    if FM is not None:
        tc, tk = tl_routes(FM)
        out["copying"]["TransformerLens"] = tc
        out["K-composition"]["TransformerLens"] = tk
    return out


# ---- memory, in a child process per route ------------------------------------------------------
def reset_peak_rss() -> None:
    """Reset the kernel's high-water mark of this process's RSS (Linux: clear_refs 5), so the
    peak measured is the analysis's, not that of drawing the weights."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return peak_rss_bytes()


def child(analysis: str, route: str, device: str) -> None:
    W = weights(device)
    fn = routes(load_factored_matrix())[analysis][route]
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(W)
        torch.cuda.synchronize()
        grow = torch.cuda.max_memory_allocated() - before
    else:
        reset_peak_rss()
        base = rss_bytes()
        fn(W)
        grow = max(peak_rss_since_reset() - base, 0)
    print(json.dumps({"peak_bytes": grow}))


def peak_memory(analysis: str, route: str, device: str) -> int | None:
    out = subprocess.run([sys.executable, __file__, "--child", analysis, route, "--device", device],
                         capture_output=True, text=True)
    if out.returncode:
        print(f"  ({analysis}/{route} memory child failed: {out.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-tl", action="store_true", help="skip TransformerLens even when installed")
    ap.add_argument("--only", choices=("copying", "K-composition"), help="run one analysis")
    ap.add_argument("--child", nargs=2, metavar=("ANALYSIS", "ROUTE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.device)
        return
    dev = args.device
    FM = None if args.no_tl else load_factored_matrix()
    W = weights(dev)
    dense_bytes = W["W_E"].shape[0] ** 2 * 4
    print(f"GPT-2 small shapes, random weights, on {device_name(dev)}; torch {torch.__version__}; "
          f"lazymat and hand-written: median of {args.rounds} rounds, round-robin; TransformerLens: "
          f"median of 3 (slow); peak memory in a child process per route "
          f"(one vocab x vocab float32 matrix: {dense_bytes / 2**30:.1f} GiB)")
    for analysis, fns in routes(FM).items():
        if args.only and analysis != args.only:
            continue
        ref = fns["hand-written"](W)
        fast = {k: (lambda f=f: f(W)) for k, f in fns.items() if k != "TransformerLens"}
        t = compare(fast, dev, rounds=args.rounds, min_time=0)
        if "TransformerLens" in fns:
            t["TransformerLens"] = median_time(lambda f=fns["TransformerLens"]: f(W), dev, repeat=3, warmup=0)
        print(f"\n{analysis} ({tuple(ref.shape)} scores)")
        print(f"  {'route':<18} {'time':>10} {'/ hand-written':>15} {'peak memory':>12} {'max |diff|':>11}")
        for name, fn in fns.items():
            err = (fn(W).to(ref.dtype) - ref).abs().max().item()
            mem = peak_memory(analysis, name, dev)
            mem_text = f"{mem / 2**20:.0f} MiB" if mem is not None else "-"
            print(f"  {name:<18} {fmt_time(t[name]):>10} {t[name] / t['hand-written']:>14.2f}x "
                  f"{mem_text:>12} {err:>11.2e}")


if __name__ == "__main__":
    main()
