"""A full QK circuit ``W_E W_Q W_K^T W_E^T`` formed by ``to_dense`` in row blocks under a memory
budget below its unsliced intermediates: the work the blocks share formed once versus every
block forming it again.

Two routes, timed side by side (round-robin medians, :func:`_harness.compare`):
- ``shared``: ``X.to_dense(memory_budget=...)``, lazymat's route: ``W_K^T W_E^T`` (64 x V) is
  formed once and held, each row block runs ``(W_E[i:j] W_Q) @ shared``;
- ``per-block``: what ``to_dense`` ran before, written with the public API: the largest row
  block whose planned peak fits the budget, each block ``X[i:j].to_dense()`` planned on its
  own (a block of few rows is cheapest left to right, ``((W_E[i:j] W_Q) W_K^T) W_E^T``).

For each route: blocks, the FLOPs planned (``lm.explain`` for the shared route, the blocks' own
plans for the other) and the FLOPs run (torch's ``FlopCounterMode`` over one call: every matmul),
and the time; then the ratios and the largest difference between the two results.

Weights are random (``W_E`` V x 768, ``W_Q``/``W_K`` 768 x 64, float32). Run from the repository
root: ``python benchmarks/bench_slice_shared.py [--quick] [--vocab V] [--fraction F]
[--device cuda] [--cpu-time]``; the budget is ``F`` (default 0.8) of the unsliced plan's intermediates;
``--quick`` uses a 2048-token vocabulary (seconds), the default 8192 (~half a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import torch
from _harness import compare, device_name, fmt_time, sync
from bench_topk import D_HEAD, D_MODEL, full_qk, weights
from torch.utils.flop_counter import FlopCounterMode

import lazymat as lm


def row_blocks(X: lm.Expr, budget: int) -> int:
    """The largest row block whose planned peak fits ``budget`` (what each block is planned as
    when it is evaluated on its own)."""
    lo, hi = 1, X.shape[-2]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if X[:mid].plan().peak_bytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def per_block(X: lm.Expr, rows: int, budget: int) -> torch.Tensor:
    """Every row block formed from the leaves by its own plan."""
    out = torch.empty(tuple(X.shape), dtype=X.dtype, device=X.device)
    for start in range(0, X.shape[-2], rows):
        out[start : start + rows] = X[start : start + rows].to_dense(memory_budget=budget)
    return out


def flops_run(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2048-token vocabulary (seconds)")
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--fraction", type=float, default=0.8,
                    help="budget as a fraction of the unsliced plan's intermediates (default 0.8)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpu-time", action="store_true",
                    help="one torch thread, timed by this process's CPU time (steadier on a loaded machine)")
    args = ap.parse_args()
    if not 0 < args.fraction < 1:
        ap.error(f"--fraction must be between 0 and 1 (a budget that forces slicing), got {args.fraction}")
    vocab = args.vocab or (2048 if args.quick else 8192)
    dev = args.device
    if args.cpu_time:
        if dev != "cpu":
            ap.error("--cpu-time measures the CPU only")
        torch.set_num_threads(1)
    W = weights(vocab, dev)
    X = full_qk(W)
    budget = int(args.fraction * X.plan().work_bytes)
    report = lm.explain(X, memory_budget=budget)
    sliced = report.slicing[0]
    rows = row_blocks(X, budget)
    starts = range(0, vocab, rows)
    before_flops = sum(X[s : s + rows].plan().flops for s in starts)

    routes = {"shared": lambda: X.to_dense(memory_budget=budget),
              "per-block": lambda: per_block(X, rows, budget)}
    results = {name: fn() for name, fn in routes.items()}
    sync(dev)
    diff = ((results["shared"] - results["per-block"]).abs().max() /
            results["per-block"].abs().max()).item()
    del results
    run = {name: flops_run(fn) for name, fn in routes.items()}
    seconds = compare(routes, dev, rounds=args.rounds, min_time=0.0,
                      clock=time.process_time if args.cpu_time else time.perf_counter)

    print(f"to_dense of a {vocab} x {vocab} full QK circuit (d_model {D_MODEL}, d_head {D_HEAD}, float32) "
          f"under a {budget / 2**20:.3g} MiB budget ({args.fraction:g} of its unsliced intermediates), "
          f"on {device_name(dev)}; torch {torch.__version__}"
          f"{'; times are CPU time' if args.cpu_time else ''}")
    print(f"  explain: {sliced.text(budget)}")
    print(f"  {'route':<10} {'blocks':>7} {'FLOPs planned':>14} {'FLOPs run':>11} {'time':>10}")
    print(f"  {'shared':<10} {sliced.slices:>7} {report.planned.flops:>14.4g} {run['shared']:>11.4g} "
          f"{fmt_time(seconds['shared']):>10}")
    print(f"  {'per-block':<10} {len(starts):>7} {before_flops:>14.4g} {run['per-block']:>11.4g} "
          f"{fmt_time(seconds['per-block']):>10}")
    print(f"  per-block / shared: {before_flops / report.planned.flops:.2f}x the FLOPs, "
          f"{seconds['per-block'] / seconds['shared']:.2f}x the time; results differ by {diff:.1e} "
          f"(relative to the largest entry)")


if __name__ == "__main__":
    main()
