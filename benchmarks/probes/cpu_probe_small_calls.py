"""Where a compiled call on a small chain spends its time over eager torch (issue 12, item 4: the
``16x8 @ 8x8 @ 8x16`` rows of ``bench_small_cores.py --part overhead``), split in one process,
interleaved, least per call: building the expression, the compiled call's lookup (its run swapped
for a constant), its run alone on the tensors (product, LAPACK, the host rule and the finish),
the whole call straight, through lazymat's function and through ``torch.linalg``; then what single torch calls of the finish
cost (an in-place op that changes nothing costs about as much as ``threshold_``).

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/probes/cpu_probe_small_calls.py [--ops svdvals svd eigvals]``
Output: benchmarks/results/cpu-small-overhead.txt (session 12's note).
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import lazymat as lm
from lazymat import linalg as LA

OPS = {  # torch call, lazymat's call as torch's routes to it, compiled op and options
    "svdvals": (torch.linalg.svdvals, lambda x: LA.svdvals.unbudgeted(x, full=True), "svdvals", (True,)),
    "svd": (lambda x: torch.linalg.svd(x, full_matrices=False), LA.svd.unbudgeted, "svd", ()),
    "eigvals": (torch.linalg.eigvals, lambda x: LA.eigvals.unbudgeted(x, full=True), "eigvals", (True,)),
}


def least(fns: dict, rounds: int) -> dict:
    best = dict.fromkeys(fns, math.inf)
    for f in fns.values():
        for _ in range(5):
            f()
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


class _Constant:
    """A compiled call whose run answers at once: what is left is building and the lookup."""

    def __init__(self, need: int) -> None:
        self.need = need

    @staticmethod
    def run(tensors: list) -> int:
        return 1


def split(name: str, rounds: int) -> None:
    torch_op, lazy_op, op, options = OPS[name]
    g = torch.Generator().manual_seed(0)
    A, B, C = torch.randn(16, 8, generator=g), torch.randn(8, 8, generator=g), torch.randn(8, 16, generator=g)

    def build():
        return lm.lazy(A.clone()) @ lm.lazy(B.clone()) @ lm.lazy(C.clone())

    LA.compiled._compiled(build(), op, options)
    key = next(k for k in LA.compiled._CALLS if k[0] == op and k[4] == ((16, 8), (8, 8), (8, 16)))
    call = LA.compiled._CALLS[key]

    def lookup():
        LA.compiled._CALLS[key] = _Constant(call.need)
        try:
            return LA.compiled._compiled(build(), op, options)
        finally:
            LA.compiled._CALLS[key] = call

    fns = {
        "eager": lambda: torch_op(A.clone() @ B.clone() @ C.clone()),
        "clones + product": lambda: A.clone() @ B.clone() @ C.clone(),
        "build": build,
        "build + lookup": lookup,
        "clones + run": lambda: call.run([A.clone(), B.clone(), C.clone()]),
        "compiled call": lambda: LA.compiled._compiled(build(), op, options),
        "lazymat.linalg(lazy)": lambda: lazy_op(build()),
        "torch.linalg(lazy)": lambda: torch_op(build()),
    }
    t = least(fns, rounds)
    print(f"\n{name} of 16x8 @ 8x8 @ 8x16 (float32), least per call over {rounds} interleaved rounds")
    for k, v in t.items():
        print(f"{k:>20} {v * 1e6:8.1f} us  {(v - t['eager']) * 1e6:+7.1f} us over eager")


def single_calls(rounds: int) -> None:
    S0 = torch.linspace(10, 0, 16)
    values = S0.tolist()
    pool = [S0.clone() for _ in range(rounds)]
    z = torch.randn(8, dtype=torch.complex64)
    zs, order, zeros = z.tolist(), list(range(7, -1, -1)), [0j] * 8
    k = [0]

    def nxt():
        k[0] = (k[0] + 1) % rounds
        return pool[k[0]]

    fns = {
        "threshold_(S, v, 0)": lambda: torch.nn.functional.threshold_(nxt(), values[8], 0.0),
        "S.clamp_min_(0) (no change)": lambda: nxt().clamp_min_(0),
        "S[8:].zero_()": lambda: nxt()[8:].zero_(),
        "S.tolist()": lambda: nxt().tolist(),
        "torch.tensor(16 complex)": lambda: torch.tensor([zs[i] for i in order] + zeros, dtype=torch.complex64),
    }
    t = least(fns, rounds)
    print(f"\nsingle calls of the finish on 16 values, least per call over {rounds} interleaved rounds")
    for name, v in t.items():
        print(f"{name:>28} {v * 1e6:6.2f} us")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for name in args.ops:
        split(name, args.rounds)
    single_calls(args.rounds)


if __name__ == "__main__":
    main()
