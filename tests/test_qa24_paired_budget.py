"""Paired rows and columns of a product under a memory budget: the closed network's operands
``A[rows]`` and ``B[:, cols]`` are list-index copies, formed whole before the network runs
however it is sliced. The least budget :class:`BudgetTooSmall` names counts them, so it bounds
what torch allocates (it named 2.2 KB for 283 pairs of a rank-19 product that allocated 87 KB)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(20, 120),
    r=st.integers(1, 12),
    n=st.integers(20, 120),
    pairs=st.integers(10, 200),
    kind=st.sampled_from(["product", "sum", "batched"]),
    seed=st.integers(0, 2**16),
)
def test_paired_entries_least_budget_bounds_the_allocations(m, r, n, pairs, kind, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*((3,) if kind == "batched" else ()), m, r, generator=g, dtype=torch.float64)
    B = torch.randn(r, n, generator=g, dtype=torch.float64)
    C = torch.randn(m, n, generator=g, dtype=torch.float64)
    X, dense = lm.lazy(A) @ lm.lazy(B), A @ B
    if kind == "sum":
        X, dense = X + lm.lazy(C), dense + C
    rows = torch.randint(0, m, (pairs,), generator=g)
    cols = torch.randint(0, n, (pairs,), generator=g)
    key = (torch.randint(0, 3, (pairs,), generator=g), rows, cols) if kind == "batched" else (rows, cols)
    try:
        with lm.config(memory_budget=64):
            X[key]
    except BudgetTooSmall as refused:
        least = refused.minimum
    else:
        raise AssertionError("a 64-byte budget ran")
    with lm.config(memory_budget=least), Allocated() as counted:
        got = X[key]
    assert counted.peak - got.untyped_storage().nbytes() <= least, (counted.peak, least)
    torch.testing.assert_close(got, dense[key])
