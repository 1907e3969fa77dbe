"""Batched eigenvalues of small cores (copying scores of many heads: ``eigvals`` of ``d_head``-wide
cores), by placement and method, side by side in one run:

- ``device``: ``torch.linalg.eigvals`` where the cores live (the GPU with ``--device cuda``);
- ``cpu serial``: round trip through the CPU, torch's one-thread loop over the batch;
- ``cpu split``: round trip, the batch split across torch's threads (``lazymat.cpu_batches``,
  what ``lazymat.linalg`` does);
- ``cpu split 1t``: the same with torch (and so MKL/OpenMP) set to one thread while it runs, so
  the workers' LAPACK calls do not start nested thread teams (lazymat does not do this: it would
  change a process-wide setting under the user's other threads);
- ``cpu chunked``: round trip in chunks of 64 matrices, one after the other (bounded memory).

Ratios are against ``cpu serial`` (< 1: faster). Run:
``python benchmarks/bench_eigvals.py [--device cuda] [--quick]``.
"""

from __future__ import annotations

import argparse

import torch
from _harness import compare, device_name, fmt_time

from lazymat.cpu_batches import split_batch


def split_one_thread_each(cores: torch.Tensor) -> torch.Tensor:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return split_batch(torch.linalg.eigvals, cores, threads)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batches of 16 and 64, 3 rounds (seconds)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dev, rounds = args.device, (3 if args.quick else args.rounds)
    sizes = [(16, 64), (64, 64)] if args.quick else [(144, 64), (144, 128), (1024, 64), (1024, 128)]
    print(f"float32 eigvals of batched cores on {device_name(dev)} (host: {torch.get_num_threads()} "
          f"torch threads); torch {torch.__version__}; median of {rounds} rounds, round-robin")
    g = torch.Generator().manual_seed(0)
    for batch, k in sizes:
        cores = torch.randn(batch, k, k, generator=g).to(dev)
        fns = {
            "cpu serial": lambda c=cores: torch.linalg.eigvals(c.cpu()).to(dev),
            "cpu split": lambda c=cores: split_batch(torch.linalg.eigvals, c.cpu()).to(dev),
            "cpu split 1t": lambda c=cores: split_one_thread_each(c.cpu()).to(dev),
            "cpu chunked": lambda c=cores: torch.cat([torch.linalg.eigvals(p.cpu())
                                                      for p in c.split(64)]).to(dev),
        }
        if dev != "cpu":
            fns["device"] = lambda c=cores: torch.linalg.eigvals(c)
        t = compare(fns, dev, rounds=rounds, min_time=0)
        base = t["cpu serial"]
        cells = "  ".join(f"{name} {fmt_time(s)} ({s / base:.2f})" for name, s in t.items())
        print(f"  {batch:>5} x {k:>3}x{k:<3}  {cells}")


if __name__ == "__main__":
    main()
