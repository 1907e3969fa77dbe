"""Batch indices paired with the rows, ``(A @ B)[heads, rows]`` (index19, session 19): row ``p``
is row ``rows[p]`` of head ``heads[p]``. lazymat forms each head's own distinct rows (lazy, a
``cat`` of one part per head, where each head's pairs sit side by side; else formed and put in
order by one gather). Deterministic FLOPs from ``lm.explain`` on shape-only symbols against the
route before session 19 (the distinct heads times the distinct rows, ``X[heads][:, rows]``,
formed and gathered); then one timing on data against the hand-written loop over the heads
(``A[h, rows_h] @ B[h]``, joined and put in order) in the same run (noisy on a shared machine).

Run: ``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_index19_member_rows.py``.
Output: benchmarks/results/cpu-index19-member-rows.txt.
"""


import torch
from _harness import best_time

import lazymat as lm


def counts(H: int, m: int, r: int, n: int, P: int) -> None:
    g = torch.Generator().manual_seed(0)
    X = lm.symbol("A", (H, m, r)) @ lm.symbol("B", (H, r, n))
    heads, rows = torch.randint(0, H, (P,), generator=g).sort().values, torch.randint(0, m, (P,), generator=g)
    mine = X[heads, rows]
    formed = X[sorted(set(heads.tolist()))][:, sorted(set(rows.tolist()))]
    print(f"(A @ B)[heads, rows], A {H} x {m} x {r}, B {H} x {r} x {n}, {P} pairs, heads side by side "
          "(peak: explain's, the result aside)")
    routes = (("lazymat (lazy: a cat of each head's rows)", mine), ("before: heads x rows formed", formed))
    for name, x in routes:
        p = lm.explain(x).planned
        print(f"  {name:42s} FLOPs {p.flops:10.3g}  peak {p.peak_bytes / 2**20:8.4g} MiB  "
              f"result {x.numel() * 4 / 2**20:10.4g} MiB")


def timing(H: int, m: int, r: int, n: int, P: int, repeats: int = 5) -> None:
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(H, m, r, generator=g), torch.randn(H, r, n, generator=g)
    heads, rows = torch.randint(0, H, (P,), generator=g), torch.randint(0, m, (P,), generator=g)
    X = lm.lazy(A) @ lm.lazy(B)

    def hand(heads: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(heads, stable=True)
        parts = [A[h, rows[order][heads[order] == h]] @ B[h] for h in heads.unique().tolist()]
        return torch.cat(parts)[torch.argsort(order)]

    def ours(heads: torch.Tensor) -> torch.Tensor:
        got = X[heads, rows]
        return got.to_dense() if lm.is_lazy(got) else got

    def best(f) -> float:
        return best_time(f, repeats)

    for name, key in (("heads apart", heads), ("heads side by side", heads.sort().values)):
        assert torch.allclose(ours(key), hand(key), rtol=1e-4, atol=1e-4)
        mine, written = best(lambda k=key: ours(k)), best(lambda k=key: hand(k))
        print(f"timing, A {H} x {m} x {r}, B {H} x {r} x {n}, {P} pairs, {name} (float32, best of "
              f"{repeats}): lazymat {mine * 1e3:.3g} ms, hand-written {written * 1e3:.3g} ms, "
              f"ratio {mine / written:.3g}")


if __name__ == "__main__":
    counts(144, 50257, 64, 50257, 2000)
    counts(144, 2000, 64, 2000, 2000)
    timing(144, 2000, 64, 2000, 2000)
