"""The plan table keyed on shapes never hands a form the plan of another form whose products
share differently: ``A @ A @ A @ A`` forms ``A @ A`` once (its peak counts that), while
``A @ B @ C @ D`` of the same shapes forms two products side by side."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import plan as P
from lazymat.rewrite import canonical


def _plan_of(X) -> P.Plan:
    return P.plan_canon(canonical(X))


def _fresh_plan_of(X) -> P.Plan:
    """The plan a form gets when neither it nor the table has one of its shapes."""
    kept = P._chain_cache.copy()
    P._chain_cache.clear()
    c = canonical(X)
    c._plans.clear()
    try:
        return P.plan_canon(c)
    finally:
        P._chain_cache.clear()
        P._chain_cache.update(kept)


def _chain(tensors, picks):
    X = lm.lazy(tensors[picks[0]])
    for i in picks[1:]:
        X = X @ lm.lazy(tensors[i])
    return X


@settings(max_examples=60, deadline=None)
@given(first=st.lists(st.integers(0, 3), min_size=2, max_size=6), data=st.data())
def test_a_plan_found_by_shapes_is_the_plan_the_form_would_get(first, data):
    """Two chains of equal shapes (square leaves drawn from a pool, so leaves may repeat) planned
    one after the other: the second's plan, found in the table or not, equals its fresh plan."""
    second = data.draw(st.lists(st.integers(0, 3), min_size=len(first), max_size=len(first)))
    pool = [torch.randn(6, 6, dtype=torch.float64) for _ in range(4)]
    _plan_of(_chain(pool, first))  # seen first: in the table
    X = _chain(pool, second)
    found = _plan_of(X)
    fresh = _fresh_plan_of(X)
    assert (found.flops, found.peak_bytes, found.work_bytes) == \
        (fresh.flops, fresh.peak_bytes, fresh.work_bytes)


def test_a_repeated_leaf_chain_after_distinct_leaves_counts_its_own_peak():
    """The example: ``A @ B @ C @ D`` then ``A @ A @ A @ A`` of 8 x 8 float32 leaves, and the
    reverse order: each keeps its own peak (768 B with two products side by side, 512 B when
    ``A @ A`` is formed once), whichever was planned first."""
    A, B, C, D = (torch.randn(8, 8) for _ in range(4))
    distinct = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) @ lm.lazy(D)
    repeated = lm.lazy(C) @ lm.lazy(C) @ lm.lazy(C) @ lm.lazy(C)
    assert _plan_of(distinct).peak_bytes == 768 and _plan_of(repeated).peak_bytes == 512
    A2, B2 = torch.randn(8, 8), torch.randn(8, 8)
    repeated = lm.lazy(A2) @ lm.lazy(A2) @ lm.lazy(A2) @ lm.lazy(A2)
    distinct = lm.lazy(A2) @ lm.lazy(B2) @ lm.lazy(A) @ lm.lazy(B)
    assert _plan_of(repeated).peak_bytes == 512 and _plan_of(distinct).peak_bytes == 768
    assert torch.allclose(repeated.to_dense(), A2 @ A2 @ A2 @ A2, rtol=1e-4, atol=1e-4)
