"""Paired row and column lists on a low-rank product, ``(A @ B)[rows, cols]`` (index18, session
18): lazymat takes the diagonal of ``X[rows][:, cols]`` over the distinct pairs, the row-wise dots
of ``A[rows]`` and ``B[:, cols]``. Deterministic FLOPs and peak bytes from ``lm.explain`` on
shape-only symbols, against the route before session 18 (the selected rows formed, ``X[rows]``,
then the columns gathered) and dense materialisation; then one timing on data against the
hand-written ``(A[rows] * B[:, cols].mT).sum(-1)`` in the same run (noisy on a shared machine).

Run: ``PYTHONPATH=$PWD python benchmarks/count_index18_paired.py`` (seconds).
Output: benchmarks/results/cpu-index18-paired.txt.
"""


import torch
from _harness import best_time

import lazymat as lm


def counts(m: int, r: int, n: int, pairs: int) -> None:
    g = torch.Generator().manual_seed(0)
    X = lm.symbol("A", (m, r)) @ lm.symbol("B", (r, n))
    rows = torch.randperm(m, generator=g)[:pairs]
    cols = torch.randint(0, n, (pairs,), generator=g)
    routes = [("lazymat: diagonal of X[rows][:, cols]", lm.explain(X[rows][:, cols], "diagonal")),
              ("before: X[rows] formed, then gathered", lm.explain(X[rows], "to_dense")),
              ("dense: X formed", lm.explain(X, "to_dense"))]
    print(f"(A @ B)[rows, cols], A {m} x {r}, B {r} x {n}, {pairs} pairs")
    for name, report in routes:
        p = report.planned
        print(f"  {name:40s} FLOPs {p.flops:10.3g}  peak {p.peak_bytes / 2**20:10.4g} MiB")


def timing(m: int, r: int, n: int, pairs: int, repeats: int = 20) -> None:
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(m, r, generator=g), torch.randn(r, n, generator=g)
    rows, cols = torch.randint(0, m, (pairs,), generator=g), torch.randint(0, n, (pairs,), generator=g)
    X = lm.lazy(A) @ lm.lazy(B)
    assert torch.allclose(X[rows, cols], (A[rows] * B[:, cols].mT).sum(-1), rtol=1e-4, atol=1e-4)

    def best(f) -> float:
        return best_time(f, repeats)

    ours = best(lambda: X[rows, cols])
    hand = best(lambda: (A[rows] * B[:, cols].mT).sum(-1))
    print(f"timing, A {m} x {r}, B {r} x {n}, {pairs} pairs (float32, best of {repeats}): lazymat "
          f"{ours * 1e3:.3g} ms, hand-written {hand * 1e3:.3g} ms, ratio {ours / hand:.3g}")


if __name__ == "__main__":
    counts(50000, 64, 40000, 10000)
    counts(4096, 128, 4096, 64)
    timing(5000, 64, 4000, 2000)
