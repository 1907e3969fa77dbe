"""Spectral routes' predicted peaks, kept by structure (``linalg.peaks._route_costs``), are the peaks
``explain`` gives the expression itself: a leaf that two terms share is a common factor the
route takes out (``A @ B + A @ C = A @ (B + C)``), so ``A @ B + D @ C`` of the same shapes must
not be handed its peak."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

N, R = 40, 3
OPS = ("svdvals", "svd", "matrix_norm")


def _sum(tall, wide, picks):
    """``sum_i tall[a_i] @ wide[b_i]`` for ``picks = [(a_i, b_i), ...]``."""
    X = None
    for a, b in picks:
        term = lm.lazy(tall[a]) @ lm.lazy(wide[b])
        X = term if X is None else X + term
    return X


pairs = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=2, max_size=3)


@settings(max_examples=40, deadline=None)
@given(first=pairs, data=st.data(), op=st.sampled_from(OPS))
def test_a_peak_kept_by_structure_is_the_expression_own(first, data, op):
    second = data.draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                min_size=len(first), max_size=len(first)))
    g = torch.Generator().manual_seed(len(first))
    tall = [torch.randn(N, R, generator=g, dtype=torch.float64) for _ in range(3)]
    wide = [torch.randn(R, N, generator=g, dtype=torch.float64) for _ in range(3)]
    LA.peaks._route_costs(_sum(tall, wide, first), op)  # kept by its structure
    X = _sum(tall, wide, second)
    planned = lm.explain(X, op).planned
    assert LA.peaks._route_costs(X, op) == (planned.peak_bytes, planned.flops)


def test_a_shared_leaf_across_terms_keeps_its_own_peak():
    g = torch.Generator().manual_seed(0)
    A, D = (torch.randn(300, 4, generator=g) for _ in range(2))
    B, C = (torch.randn(4, 300, generator=g) for _ in range(2))
    shared = lm.lazy(A) @ lm.lazy(B) + lm.lazy(A) @ lm.lazy(C)
    distinct = lm.lazy(A) @ lm.lazy(B) + lm.lazy(D) @ lm.lazy(C)
    for op in OPS:
        assert LA.peaks._route_costs(shared, op)[0] == lm.explain(shared, op).planned.peak_bytes
        assert LA.peaks._route_costs(distinct, op)[0] == lm.explain(distinct, op).planned.peak_bytes
    assert lm.explain(shared, "svdvals").planned.peak_bytes < \
        lm.explain(distinct, "svdvals").planned.peak_bytes
