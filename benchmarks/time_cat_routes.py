"""First-call times and errors of linalg on cats of low-rank parts (cat2, session 10): svdvals of
a transposed cat, of ``P @ Q @ cat``, of ``2 cat - P @ Q``, and traces of a cat in a sum and at
an end of a product, 3000 x 3000 of rank-16 parts in float64, against dense torch.

Run: ``python benchmarks/time_cat_routes.py`` (seconds; the base forms the matrix: a minute).
Output: benchmarks/results/cpu-cat-times.txt.
"""

import time

import torch

import lazymat as lm
from lazymat import linalg as LA


def main() -> None:
    g = torch.Generator().manual_seed(0)
    n, r = 3000, 16
    A, B, C, D, P, Q = (torch.randn(*s, generator=g, dtype=torch.float64)
                        for s in [(n, r), (r, 1000), (n, r), (r, n - 1000), (n, r), (r, n)])
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C) @ lm.lazy(D)], -1)
    Xd = torch.cat([A @ B, C @ D], -1)
    PQ = lm.lazy(P) @ lm.lazy(Q)
    for name, x, d in [("svdvals cat.T", X.mT, Xd.mT), ("svdvals P @ Q @ cat", PQ @ X, P @ Q @ Xd),
                       ("svdvals 2 cat - P @ Q", 2 * X - PQ, 2 * Xd - P @ Q)]:
        t = time.perf_counter()
        got = LA.svdvals(x)
        ms = (time.perf_counter() - t) * 1e3
        want = torch.linalg.svdvals(d)[: got.shape[-1]]
        print(f"{name:24s} {ms:10.1f} ms  max rel err {float((got - want).abs().max() / want.max()):.1e}")
    for name, x, d in [("trace cat + P @ Q", X + PQ, Xd + P @ Q), ("trace P @ Q @ cat", PQ @ X, P @ Q @ Xd)]:
        t = time.perf_counter()
        got = LA.trace(x)
        ms = (time.perf_counter() - t) * 1e3
        err = float((got - torch.trace(d)).abs() / torch.trace(d).abs())
        print(f"{name:24s} {ms:10.1f} ms  rel err {err:.1e}")


if __name__ == "__main__":
    main()
