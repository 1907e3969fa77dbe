"""Planning cost of ``lm.linalg.matrix_power(X, n)`` (issue 12 follow-up, qa16): the first
``to_dense()`` and the first ``explain()`` of a fresh power, for n = 10, 100, 1000, on a dense
8 x 8 ``X`` and on a low-rank ``X = L @ R`` (8 x 2 @ 2 x 8).

Deterministic column: the number of view hashes (``rewrite.View.__hash__`` calls) the first
``to_dense()`` makes; keying every span of the chain by its views made it grow as n^2. The
times are of one call each (under load: compare the ratios). The last column checks the
answer against ``torch.linalg.matrix_power`` in float64.

``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_power_planning.py``
"""

from __future__ import annotations

import time

import torch

import lazymat as lm
from lazymat import rewrite


def _counting_hashes():
    calls = [0]
    original = rewrite.View.__hash__

    def counted(self):
        calls[0] += 1
        return original(self)

    rewrite.View.__hash__ = counted
    return calls, original


def main() -> None:
    calls, original = _counting_hashes()
    print(f"{'X':8} {'n':>5} {'view hashes':>12} {'to_dense ms':>12} {'explain ms':>11} {'max rel err':>12}")
    try:
        for kind in ("dense", "low-rank"):
            for n in (10, 100, 1000):
                g = torch.Generator().manual_seed(0)
                if kind == "dense":
                    a = torch.randn(8, 8, generator=g, dtype=torch.float64) / 3
                    x, dense = lm.lazy(a), a
                else:
                    left = torch.randn(8, 2, generator=g, dtype=torch.float64)
                    right = torch.randn(2, 8, generator=g, dtype=torch.float64) / 3
                    x, dense = lm.lazy(left) @ lm.lazy(right), left @ right
                calls[0] = 0
                start = time.perf_counter()
                got = lm.linalg.matrix_power(x, n).to_dense()
                first = time.perf_counter() - start
                hashes = calls[0]
                start = time.perf_counter()
                lm.linalg.matrix_power(x, n).explain()
                explained = time.perf_counter() - start
                want = torch.linalg.matrix_power(dense, n)
                err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()
                times = f"{first * 1e3:>12.1f} {explained * 1e3:>11.1f}"
                print(f"{kind:8} {n:>5} {hashes:>12} {times} {err:>12.1e}")
    finally:
        rewrite.View.__hash__ = original


if __name__ == "__main__":
    main()
