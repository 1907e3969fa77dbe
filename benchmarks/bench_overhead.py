"""Per-evaluation overhead of a 4-factor chain of 64x64 matrices vs eager torch and peers.

Goal (issue 2): lazymat at most 50 us more per evaluation than the eager expression with a
warm plan cache. Run: ``python benchmarks/bench_overhead.py [--device cuda]``.
"""

from __future__ import annotations

import argparse

import opt_einsum as oe
import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    A, B, C, D = (torch.randn(args.n, args.n, generator=g).to(args.device) for _ in range(4))
    X = lm.lazy(A) @ B @ C @ D
    X.to_dense()
    rows = {
        "eager A @ B @ C @ D": lambda: A @ B @ C @ D,
        "torch.linalg.multi_dot": lambda: torch.linalg.multi_dot([A, B, C, D]),
        "torch.einsum": lambda: torch.einsum("ab,bc,cd,de->ae", A, B, C, D),
        "opt_einsum.contract": lambda: oe.contract("ab,bc,cd,de->ae", A, B, C, D, backend="torch"),
        "lazymat X.to_dense() (built once)": X.to_dense,
        "lazymat build + plan + evaluate": lambda: (lm.lazy(A) @ B @ C @ D).to_dense(),
    }
    times = compare(rows, args.device, rounds=11, min_time=0.05)
    eager = times["eager A @ B @ C @ D"]
    print(f"4 x ({args.n}x{args.n}) float32 chain on {device_name(args.device)}; median per call")
    print(f"{'route':<38} {'time':>10} {'vs eager':>10} {'overhead':>10}")
    for k, t in times.items():
        print(f"{k:<38} {fmt_time(t):>10} {t / eager:>9.2f}x {fmt_time(t - eager):>10}")
    over = times["lazymat X.to_dense() (built once)"] - eager
    print(f"\nlazymat overhead with a warm plan: {over * 1e6:.1f} us per evaluation (goal <= 50 us)")


if __name__ == "__main__":
    main()
