"""Batch indices paired with rows and columns, ``(A @ B)[heads, rows, cols]`` (index19, session
19): one member per triple, so lazymat reads the entries per member (the diagonal of each
member's pairs). Deterministic FLOPs and peak bytes from ``lm.explain`` on shape-only symbols
(summed over the members' diagonals) against the route before (the diagonal of the distinct
members times the distinct pairs; lazymat now takes the per-member route where it reads fewer
entries, ``CALL_ENTRIES`` counted per read: the 144-head key, not the 12-head one); then
timings on data of lazymat's choice, of the route before and of the hand-written
``(A[heads, rows] * B[heads, :, cols]).sum(-1)`` in the same run (noisy on a shared machine).

Run: ``PYTHONPATH=$PWD python benchmarks/count_index19_per_member.py`` (seconds).
Output: benchmarks/results/cpu-index19-per-member.txt.
"""


import numpy as np
import torch
from _harness import best_time

import lazymat as lm
import lazymat.linalg.entries as entries


def _squares(X, heads, rows, cols) -> tuple[list, list]:
    """The lazy squares whose diagonals each route takes: per member, and all at once."""
    width = X.shape[-1]
    mine = []
    for h in sorted(set(heads.tolist())):
        at = heads == h
        keys = np.unique((rows[at] * width + cols[at]).numpy())
        mine.append(X[h][(keys // width).tolist()][:, (keys % width).tolist()])
    keys = np.unique((rows * width + cols).numpy())
    members = sorted(set(heads.tolist()))
    before = X[members][:, (keys // width).tolist()][:, :, (keys % width).tolist()]
    return mine, [before]


def counts(H: int, m: int, r: int, n: int, triples: int) -> None:
    g = torch.Generator().manual_seed(0)
    X = lm.symbol("A", (H, m, r)) @ lm.symbol("B", (H, r, n))
    heads, rows, cols = (torch.randint(0, s, (triples,), generator=g) for s in (H, m, n))
    print(f"(A @ B)[heads, rows, cols], A {H} x {m} x {r}, B {H} x {r} x {n}, {triples} triples")
    routes = ("per member", "all at once (the only route before)")
    for name, squares in zip(routes, _squares(X, heads, rows, cols), strict=True):
        reports = [lm.explain(s, "diagonal").planned for s in squares]
        flops = sum(p.flops for p in reports)
        peak = max(p.peak_bytes for p in reports)
        print(f"  {name:36s} FLOPs {flops:10.3g}  largest peak {peak / 2**20:10.4g} MiB"
              f"  ({len(squares)} diagonals)")


def timing(H: int, m: int, r: int, n: int, triples: int, repeats: int = 10) -> None:
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(H, m, r, generator=g), torch.randn(H, r, n, generator=g)
    heads, rows, cols = (torch.randint(0, s, (triples,), generator=g) for s in (H, m, n))
    X = lm.lazy(A) @ lm.lazy(B)
    hand = (A[heads, rows] * B[heads, :, cols]).sum(-1)
    assert torch.allclose(X[heads, rows, cols], hand, rtol=1e-4, atol=1e-4)

    def best(f) -> float:
        return best_time(f, repeats)

    ours = best(lambda: X[heads, rows, cols])
    counted = entries.read_counts
    entries.read_counts = lambda *a: (0, 1, 1)  # the route before: all at once
    try:
        before = best(lambda: X[heads, rows, cols])
    finally:
        entries.read_counts = counted
    written = best(lambda: (A[heads, rows] * B[heads, :, cols]).sum(-1))
    print(f"timing, A {H} x {m} x {r}, B {H} x {r} x {n}, {triples} triples (float32, best of {repeats}): "
          f"lazymat {ours * 1e3:.3g} ms, before {before * 1e3:.3g} ms, hand-written {written * 1e3:.3g} ms, "
          f"lazymat / hand-written {ours / written:.3g}")


if __name__ == "__main__":
    counts(144, 50257, 64, 50257, 10000)
    counts(12, 1024, 64, 1024, 200)
    timing(12, 1024, 64, 1024, 200)
    timing(144, 2000, 64, 2000, 2000)
