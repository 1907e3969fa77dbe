"""Deterministic memory counts of the budget under-counts session 10 left (pinv's ``U / S``, the
blocks a closed network of a sum reads, a step reused inside one network, gradients; session 12:
the eigen calls of a batch): for each,
the peak ``explain`` names (or the minimum ``BudgetTooSmall`` names) and the bytes torch
allocates at once during the call, its answer excluded (counted as ``tests/test_budget_peak.py``
counts: every new storage from the op that makes it until it is freed). Session 13: the LU routes
of a batch (det, slogdet, solve, inv), whose named minimum was the whole batch's peak.

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
    E, Q, K = r(50, 16), r(64, 16, 4), r(64, 16, 4)  # 64 heads W_E W_Q[h] W_K[h]^T W_E^T
    rows.append(("eigvals 64 heads (50,16) (64,16,4) (64,4,16) (16,50), named minimum",
                 _minimum(E @ Q @ K.mT @ E.mT, LA.eigvals)))
    rows.append(("eig 64 heads, named minimum", _minimum(E @ Q @ K.mT @ E.mT, LA.eig)))
    rows.append(("eigvalsh 64 heads W_E W_Q[h] W_Q[h]^T W_E^T, named minimum",
                 _minimum(E @ Q @ Q.mT @ E.mT, LA.eigvalsh)))
    rows.append(("eigh 64 heads W_E W_Q[h] W_Q[h]^T W_E^T, named minimum",
                 _minimum(E @ Q @ Q.mT @ E.mT, LA.eigh)))
    gq = torch.Generator().manual_seed(0)  # tests/test_qa15_hermitian_budget.py's b=13, n=100, r=2, seed=0
    A, B = (lm.lazy(torch.randn(*s, generator=gq, dtype=torch.float64)) for s in ((13, 100, 2), (100, 2)))
    rows.append(("eigvalsh(full=True) (A B^T + B A^T) / 2, b=13 n=100 r=2, named minimum",
                 _minimum((A @ B.mT + B @ A.mT) / 2, lambda X, **k: LA.eigvalsh(X, full=True, **k))))
    gl = torch.Generator().manual_seed(0)  # session 13: the LU routes of a batch (in blocks, or refused)
    A, C = (torch.randn(16, 30, 30, generator=gl, dtype=torch.float64) for _ in range(2))
    B = torch.randn(16, 30, 5, generator=gl, dtype=torch.float64)
    for name, fn in [("det", LA.det), ("slogdet", LA.slogdet),
                     ("solve, B (16,30,5)", lambda X, **k: LA.solve(X, B, **k))]:
        rows.append((f"{name} 16 x (30,30) @ (30,30), named minimum", _minimum(lm.lazy(A) @ lm.lazy(C), fn)))
    rows.append(("inv 16 x (30,30) + (30,30), named minimum", _minimum(lm.lazy(A) + lm.lazy(C), LA.inv)))
    for name, (named, used) in rows:
        print(f"{name:82s} named {named:6d} B  used {used:6d} B")


if __name__ == "__main__":
    main()
