"""Small matrices: where the dense route beats the factored one, and where small dense
decompositions run fastest on a GPU.

1. (any device) Products ``m x r @ r x r @ r x m`` with ``r = m / 2`` (the issue's 64x32 @ 32x32 @
   32x64 at m = 64), fresh expressions every call: lazymat's factored route, lazymat's dense
   route (forced through ``lazymat.linalg.DENSE_MAX_ELEMENTS``) and eager torch on the
   materialised matrix, interleaved. The crossover sets ``DENSE_MAX_ELEMENTS``: lazymat's
   choice is the faster of its two routes, and must never lose to eager dense by more than
   the per-call overhead bound.
2. (GPU only) batched cores decomposed on the GPU vs round-tripped through the CPU (sets
   ``lazymat.linalg.CPU_CORE_LIMIT``).

``python benchmarks/bench_small_cores.py [--quick] [--device cuda] [--threads N]``
"""

from __future__ import annotations

import argparse

import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm
from lazymat import linalg as LA

OPS = {
    "svdvals": (LA.svdvals, torch.linalg.svdvals),
    "svd": (LA.svd, lambda d: torch.linalg.svd(d, full_matrices=False)),
    "matrix_rank": (LA.matrix_rank, torch.linalg.matrix_rank),
    "fro norm": (LA.matrix_norm, torch.linalg.matrix_norm),
    "nuc norm": (lambda x: LA.matrix_norm(x, "nuc"), lambda d: torch.linalg.matrix_norm(d, "nuc")),
}


def dense_crossover(device: str, sizes: tuple, rounds: int, min_time: float) -> None:
    g = torch.Generator().manual_seed(0)
    print(f"float32 m x m/2 @ m/2 x m/2 @ m/2 x m on {device_name(device)}, fresh expression per call")
    print("times: lazymat factored / lazymat dense / eager dense; 'choice' = lazymat as shipped "
          f"(DENSE_MAX_ELEMENTS = {LA.DENSE_MAX_ELEMENTS}); last column: choice - eager")
    head = " ".join(f"{k:>10}" for k in ("factored", "dense", "eager", "choice"))
    print(f"{'op':>12} {'m':>5} {head} {'choice-eager':>13}")
    shipped = LA.DENSE_MAX_ELEMENTS
    for m in sizes:
        r = max(1, m // 2)
        A, B, C = (torch.randn(*s, generator=g).to(device) for s in ((m, r), (r, r), (r, m)))
        for name, (lazy_op, dense_op) in OPS.items():
            def run(limit, lazy_op=lazy_op, A=A, B=B, C=C):
                LA.DENSE_MAX_ELEMENTS = limit
                return lazy_op(lm.lazy(A.clone()) @ lm.lazy(B) @ lm.lazy(C))

            fns = {
                "factored": lambda run=run: run(0),
                "dense": lambda run=run: run(float("inf")),
                "eager": lambda dense_op=dense_op, A=A, B=B, C=C: dense_op(A.clone() @ B @ C),
                "choice": lambda run=run: run(shipped),
            }
            try:
                t = compare(fns, device, rounds=rounds, min_time=min_time)
            finally:
                LA.DENSE_MAX_ELEMENTS = shipped
            cells = " ".join(f"{fmt_time(t[k]):>10}" for k in fns)
            print(f"{name:>12} {m:>5} {cells} {(t['choice'] - t['eager']) * 1e6:>+10.0f} us")


def gpu_placement(rounds: int) -> None:
    dev = "cuda"
    g = torch.Generator().manual_seed(1)
    ops = {
        "eigvals": torch.linalg.eigvals,
        "svdvals": torch.linalg.svdvals,
        "svd": lambda c: torch.linalg.svd(c, full_matrices=False),
        "qr": torch.linalg.qr,
    }
    print(f"float32 cores on {device_name(dev)}: GPU time / CPU round-trip time (<1: GPU wins)")
    print(f"{'batch':>5} {'r':>5} " + " ".join(f"{k:>22}" for k in ops))
    for batch in (1, 144):
        for r in (16, 64, 128, 256, 512, 1024):
            if batch * r * r > 144 * 256 * 256:
                continue
            cores = torch.randn(batch, r, r, generator=g).to(dev)
            cells = []
            for fn in ops.values():
                def cpu(fn=fn, cores=cores):
                    out = fn(cores.cpu())
                    return [o.to(dev) for o in out] if isinstance(out, tuple) else out.to(dev)

                fns = {"gpu": lambda fn=fn, cores=cores: fn(cores), "cpu": cpu}
                t = compare(fns, dev, rounds=rounds, min_time=0)
                cells.append(f"{fmt_time(t['gpu'])}/{fmt_time(t['cpu'])} {t['gpu'] / t['cpu']:.2f}")
            print(f"{batch:>5} {r:>5} " + " ".join(f"{c:>22}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="three sizes, few rounds (seconds)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        dense_crossover(args.device, (16, 64, 256), rounds=3, min_time=0.005)
    else:
        dense_crossover(args.device, (8, 16, 32, 64, 96, 128, 192, 256, 384, 512), rounds=9, min_time=0.02)
    if args.device.startswith("cuda") and not args.quick:
        gpu_placement(rounds=3)


if __name__ == "__main__":
    main()
