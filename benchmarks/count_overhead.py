"""Instruction counts of the per-call routes of ``bench_overhead.py`` (deterministic on a loaded
machine, where timings are not): each route runs ``--calls`` times inside ``functools.reduce``
(a C function callgrind can be told to count in), on the same pool of fresh tensors.

Run under callgrind, which counts only inside ``functools.reduce`` and writes one dump per
route (``callgrind_control`` zeroes and dumps the counters between routes)::

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 PYTHONPATH=$PWD valgrind --tool=callgrind \\
        --instr-atstart=no --collect-atstart=no --toggle-collect=functools_reduce \\
        --callgrind-out-file=/tmp/cg.out "$(python -c 'import sys; print(sys.executable)')" \\
        benchmarks/count_overhead.py --callgrind
    grep -E "^(desc: Trigger|totals)" /tmp/cg.out.*   # each route's instructions; / --calls

(``python`` itself may be a launcher script: valgrind needs the interpreter's own path.)
Without ``--callgrind`` the routes just run (a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import subprocess

import torch

import lazymat as lm


def routes(pool: list, vectors: list) -> dict:
    """Each route takes one quadruple of 64x64 tensors and a vector."""
    kept = lm.lazy(pool[0][0]) @ lm.lazy(pool[0][1]) @ lm.lazy(pool[0][2]) @ lm.lazy(pool[0][3])

    def chain(A, B, C, D):
        return lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) @ lm.lazy(D)

    return {
        "eager": lambda A, B, C, D, v: A @ B @ C @ D,
        "eager_vector": lambda A, B, C, D, v: A @ (B @ (C @ (D @ v))),
        "fresh": lambda A, B, C, D, v: chain(A, B, C, D).to_dense(),
        "fresh_vector": lambda A, B, C, D, v: chain(A, B, C, D) @ v,
        "kept": lambda A, B, C, D, v: kept.to_dense(),
        "build": lambda A, B, C, D, v: chain(A, B, C, D),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--callgrind", action="store_true", help="zero and dump callgrind's counters per route")
    args = ap.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    pool = [[torch.randn(64, 64, generator=g) for _ in range(4)] for _ in range(64)]
    vectors = [torch.randn(64, generator=g) for _ in range(64)]

    def control(*options: str) -> None:
        if args.callgrind:
            subprocess.run(["callgrind_control", *options, str(os.getpid())], check=True, capture_output=True)

    control("-i", "on")
    for name, route in routes(pool, vectors).items():
        for i in range(200):  # warm: plans made, allocator and caches settled
            route(*pool[i % 64], vectors[i % 64])
        gc.collect()

        def step(_, i, route=route):
            route(*pool[i % 64], vectors[i % 64])

        control("-z")
        functools.reduce(step, range(args.calls), None)
        control("-d", name)
        print(f"{name}: {args.calls} calls")


if __name__ == "__main__":
    main()
