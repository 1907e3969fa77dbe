"""A budget's slicing plan that cuts a dim to single entries costs every kind of entry: across a
``cat``'s parts the entries differ in form (a view of one part, a product of another).

Found (index16, session 16, replaying test_budget_slices' property): ``cat([a, b @ c], dim=-1).T``
(a, b 2x1, c 1x1) under ``memory_budget=1`` cut its rows to entries and costed only row 0 (``a^T``:
no FLOPs, no memory), so the plan said 0 B and 0 FLOPs while row 1's product took 16 B beside the
result. Now every kind of entry is costed: the plan names the minimum its largest kind needs."""

import itertools
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.plan import plan_expr, slice_plan

sys.path.insert(0, str(Path(__file__).parent))
from test_budget_peak import Allocated  # noqa: E402


def _parts(seed: int, rows: int, widths: list[int], inner: list[int]):
    """Lazy and dense parts of ``rows`` rows: a leaf where ``inner`` is 0, else a product of two
    leaves through ``inner`` columns."""
    g = torch.Generator().manual_seed(seed)
    lazy, dense = [], []
    for w, k in zip(widths, inner, strict=True):
        if k == 0:
            t = torch.randn(rows, w, dtype=torch.float64, generator=g)
            lazy.append(lm.lazy(t))
            dense.append(t)
        else:
            a = torch.randn(rows, k, dtype=torch.float64, generator=g)
            b = torch.randn(k, w, dtype=torch.float64, generator=g)
            lazy.append(lm.lazy(a) @ lm.lazy(b))
            dense.append(a @ b)
    return lazy, dense


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 3),
    widths=st.lists(st.integers(1, 3), min_size=2, max_size=3),
    inner=st.lists(st.integers(0, 2), min_size=3, max_size=3),
    transposed=st.booleans(),
    frac=st.sampled_from([0.0, 0.5]),
)
@example(seed=0, rows=2, widths=[1, 1], inner=[0, 1, 0], transposed=True, frac=0.0)  # the report's case
def test_entries_of_every_kind_fit_the_budget_and_are_counted(seed, rows, widths, inner, transposed, frac):
    lazy, dense = _parts(seed, rows, widths, inner[: len(widths)])
    X, D = lm.cat(lazy, dim=-1), torch.cat(dense, dim=-1)
    if transposed:
        X, D = X.mT, D.mT
    try:
        slice_plan(X, 1)
        least = 1
    except lm.BudgetTooSmall as e:
        least = e.minimum
    work = plan_expr(X).work_bytes
    budget = int(least + frac * max(work - least, 0))
    sliced = slice_plan(X, budget)
    X.clear_cache()
    with Allocated() as counter:
        out = X.to_dense(memory_budget=budget)
    torch.testing.assert_close(out, D)
    beside = counter.peak - out.untyped_storage().nbytes()
    assert beside <= budget, (beside, budget, least)
    if sliced.dims and not sliced.shared:
        # the plan's FLOPs are its blocks' own, block by block (each block planned alone)
        ndim = X.ndim
        spans = [[(s, min(s + blk, size)) for s in range(0, size, blk)] for _, size, blk, _ in sliced.dims]
        total = 0
        for combo in itertools.product(*spans):
            key = [slice(None)] * ndim
            for (dim, *_), (start, stop) in zip(sliced.dims, combo, strict=True):
                key[dim] = slice(start, stop)
            total += plan_expr(X[tuple(key)]).flops
        assert sliced.flops == total, (sliced.flops, total, sliced.dims)
