"""det, solve and lstsq of lazy expressions against dense torch on the formed matrix, side by
side in one run (round-robin medians; ratio > 1: lazymat faster), with explain's FLOPs of both
routes (deterministic, whatever the load):

- a chain of three square ``n x n`` factors: ``slogdet`` (its det overflows) and ``solve`` by
  one LU per factor, against forming the product (two GEMMs) and one LU;
- a rank-``r`` ``N x N`` product ``L @ R``: ``det`` read off the structure (0, only ``1^T X 1``)
  and ``lstsq`` off the core's triplets, against forming ``X`` and torch's ``det`` / ``gelsd``.

Run: ``python benchmarks/bench_solve.py [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import torch
from _harness import compare, device_name, fmt_time

import lazymat as lm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, N, r, k = (256, 1024, 32, 4) if args.quick else (512, 2048, 64, 4)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    A, B, C = rand(n, n), rand(n, n), rand(n, n)
    rhs, L, R, wide = rand(n, k), rand(N, r), rand(r, N), rand(N, k)
    print(f"# {device_name('cpu')}, torch {torch.__version__}; chain 3 x ({n} x {n}), "
          f"rank-{r} product {N} x {N}, B with {k} columns, float64")

    def chain():  # fresh nodes each call: no cached answer is reused
        return lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)

    def low():
        return lm.lazy(L) @ lm.lazy(R)

    cases = {
        "slogdet (chain)": (lambda: lm.linalg.slogdet(chain()).logabsdet,
                            lambda: torch.linalg.slogdet(A @ B @ C).logabsdet,
                            lm.explain(chain(), "slogdet")),
        "solve (chain)": (lambda: lm.linalg.solve(chain(), rhs), lambda: torch.linalg.solve(A @ B @ C, rhs),
                          lm.explain(chain(), "solve", k=k)),
        "det (rank r)": (lambda: lm.linalg.det(low()), lambda: torch.linalg.det(L @ R),
                         lm.explain(low(), "det")),
        "lstsq (rank r)": (lambda: lm.linalg.lstsq(low(), wide, driver="gelsd").solution,
                           lambda: torch.linalg.lstsq(L @ R, wide, driver="gelsd").solution,
                           lm.explain(low(), "lstsq", k=k)),
    }
    print(f"{'case':<16} {'lazymat':>10} {'dense':>10} {'speedup':>8} {'FLOPs lazymat':>14} "
          f"{'FLOPs dense':>12}")
    for name, (ours, dense, report) in cases.items():
        got, want = ours(), dense()
        scale = want.abs().max().item()
        err = (got - want).abs().max().item() / (scale or 1.0)
        t = compare({"lazymat": ours, "dense": dense}, rounds=5, clock=time.process_time)
        print(f"{name:<16} {fmt_time(t['lazymat']):>10} {fmt_time(t['dense']):>10} "
              f"{t['dense'] / t['lazymat']:>7.1f}x {report.planned.flops:>14.3g} "
              f"{report.naive[0].flops:>12.3g}   (relative difference {err:.1e})")


if __name__ == "__main__":
    main()
