"""Deterministic memory counts of the budget under-counts session 10 left (pinv's ``U / S``, the
blocks a closed network of a sum reads, a step reused inside one network, gradients): for each,
the peak ``explain`` names (or the minimum ``BudgetTooSmall`` names) and the bytes torch
allocates at once during the call, its answer excluded (counted as ``tests/test_budget_peak.py``
counts: every new storage from the op that makes it until it is freed).

``OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/count_budget_undercounts.py``
"""

from __future__ import annotations

import torch

import lazymat as lm
from benchmarks.count_budget_blocks import Allocated, _bytes
from lazymat import linalg as LA


def _explained(X, op: str) -> tuple[int, int]:
    named = lm.explain(X, op, memory_budget=2**50).planned.peak_bytes
    X.clear_cache()
    with Allocated() as counted:
        out = getattr(LA, op)(X, memory_budget=2**50)
    return named, counted.peak - _bytes(out)


def _minimum(X, fn) -> tuple[int, int]:
    X.clear_cache()
    try:
        fn(X, memory_budget=1)
        named = 1
    except lm.BudgetTooSmall as err:
        named = err.minimum
    X.clear_cache()
    with Allocated() as counted:
        out = fn(X, memory_budget=named)
    return named, counted.peak - _bytes(out)


def main() -> None:
    g = torch.Generator().manual_seed(0)

    def r(*shape, grad=False):
        return lm.lazy(torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=grad))

    rows = [("pinv (2,2,4,3) @ (2,2,3,2), named minimum", _minimum(r(2, 2, 4, 3) @ r(2, 2, 3, 2), LA.pinv))]
    X = r(3, 1) @ r(1, 2) @ r(2, 2, 4) @ lm.cat([r(2, 3) - r(2, 2, 3) @ r(3, 3) @ r(3, 3), r(1, 3), r(1, 3)],
                                               dim=-2)
    rows.append(("trace t3x1 t1x2 t2x2x4 cat([t2x3 - t2x2x3 t3x3 t3x3, t1x3, t1x3])[..., :3, :3]",
                 _explained(X[..., :3, :3], "trace")))
    X = lm.cat([r(4, 1) @ r(2, 1, 1) @ r(1, 1) @ r(1, 2), r(4, 1) + -1 * r(2, 4, 1)], dim=-1) @ r(3, 4)
    rows.append(("trace cat([t4x1 t2x1x1 t1x1 t1x2, t4x1 - t2x4x1]) t3x4 [..., :3, :3]",
                 _explained(X[..., :3, :3], "trace")))
    Z = r(1, 2) @ r(2, 2) @ r(2, 1)
    W = Z @ ((r(1, 1) - 2 * r(1, 1)) @ Z)
    rows.append(("trace Z ((X - 2Y) Z), Z = t1x2 t2x2 t2x1", _explained(W, "trace")))
    for name, fn, shapes in [("fro", LA.matrix_norm, [(2, 3), (3, 2)]), ("svd", LA.svd, [(2, 5, 3), (3, 4)]),
                             ("nuc", lambda X, **k: LA.matrix_norm(X, "nuc", **k), [(6, 2), (2, 6)]),
                             ("2", lambda X, **k: LA.matrix_norm(X, 2, **k), [(2, 1), (1, 2), (2, 2, 2)])]:
        X = r(*shapes[0], grad=True)
        for s in shapes[1:]:
            X = X @ r(*s, grad=True)
        rows.append((f"{name} {' @ '.join(map(str, shapes))} requiring grad, named minimum", _minimum(X, fn)))
    for name, (named, used) in rows:
        print(f"{name:82s} named {named:5d} B  used {used:5d} B")


if __name__ == "__main__":
    main()
