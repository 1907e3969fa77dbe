"""Sliced equals unsliced (and dense float64), under budgets forcing one block, two, and many:
streamed reductions of random expressions, and the closed networks of a sum (a trace or
diagonal whose terms' networks hold shared steps and the running sum beside each other).

The budgets are found from the routes' own figures: the least budget that streams in one block
(two blocks) by bisection on :func:`lazymat.reduce.stream_plan`, and the minimum from
``BudgetTooSmall``; the block counts are read from the loop that runs them.
"""

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_properties import assert_close, chains, expressions

import lazymat as lm
from lazymat import linalg as LA
from lazymat import reduce as RD

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.fixture
def loops(block_counts):
    """Block counts of the streamed and sliced loops run since the last clear."""
    return block_counts


REDUCTIONS = {  # name: (lazymat call, dense answer, reduced dims of a matrix)
    "topk": (lambda X: torch.topk(X, 1, -1).values, lambda D: torch.topk(D, 1, -1).values, (-1,)),
    "amax": (lambda X: torch.amax(X, -2), lambda D: torch.amax(D, -2), (-2,)),
    "argmin": (lambda X: X.argmin(-1), lambda D: D.argmin(-1), (-1,)),
    "vector_norm": (lambda X: torch.linalg.vector_norm(X, 1, -2),
                    lambda D: torch.linalg.vector_norm(D, 1, -2), (-2,)),
}


def _least_budget(X, s, most_blocks):
    """The least budget under which ``X`` streams along ``s`` in at most ``most_blocks`` blocks."""
    lo, hi = 0, 2**40
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            ok = RD.stream_plan(X, s, mid, "test").blocks <= most_blocks
        except lm.BudgetTooSmall:
            ok = False
        lo, hi = (lo, mid) if ok else (mid, hi)
    return hi


@SETTINGS
@given(expressions(), st.sampled_from(sorted(REDUCTIONS)))
def test_streamed_reductions_in_one_two_and_many_blocks(loops, pair, name):
    X, D = pair
    call, dense, dims = REDUCTIONS[name]
    if X.numel() == 0:
        return
    s = RD._stream_dim(X, tuple(d % X.ndim for d in dims))
    expected = dense(D)
    unstreamed = call(X)
    size = X.shape[s]
    for most in sorted({1, 2, size}):
        budget = _least_budget(X, s, most) if most < size else _least_budget(X, s, 2**40) + 0
        if most == size:  # the minimum: one line a block
            with pytest.raises(lm.BudgetTooSmall) as err, lm.config(memory_budget=1):
                call(X)
            budget = err.value.minimum
        loops.clear()
        with lm.config(memory_budget=budget):
            out = call(X)
        assert loops and loops[-1] == RD.stream_plan(X, s, budget, "test").blocks
        assert loops[-1] <= most if most < size else loops[-1] >= 1
        if name == "argmin":  # the same index as unstreamed; it picks the row minimum of dense
            assert torch.equal(out, unstreamed)
            assert_close(D.gather(-1, out.unsqueeze(-1)).squeeze(-1), D.amin(-1))
        else:
            assert_close(out, expected)
            assert_close(out, unstreamed)


@pytest.mark.xfail(reason="open bug found here: a sum's networks run under the minimum BudgetTooSmall "
                   "names but are refused under a larger budget (trace of t3x1@t1x3@t3x3 + "
                   "2 t3x2@t2x1@t1x2@t2x3 refused at 48 B): what earlier networks hold is not "
                   "monotone in the budget", strict=False)
@settings(max_examples=15, deadline=None, phases=[Phase.explicit, Phase.generate],  # no shrinking:
          suppress_health_check=list(HealthCheck))  # a failing example here (the open bug) took CI minutes
@given(st.data())
def test_networks_of_a_sum_in_one_two_and_many_blocks(loops, data):
    """``trace``/``diagonal`` of ``A1 B1 + A2 B2`` (random batched chains): under the budget
    explain reports for the unsliced run (one block each), half of it, and the minimum the
    error names; all equal dense float64 and the unsliced result."""
    batch = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    m = data.draw(st.integers(1, 6))
    (X1, D1), (X2, D2) = (data.draw(chains(m, m, batch, torch.float64)) for _ in range(2))
    X, D = X1 + 2.0 * X2, D1 + 2.0 * D2
    op = data.draw(st.sampled_from(["trace", "diagonal"]))
    fn = getattr(LA, op)
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    expected = diag if op == "diagonal" else diag.sum(-1)
    with mock.patch.object(LA, "DENSE_MAX_ELEMENTS", 0):
        X.clear_cache()
        unsliced = fn(X)
        whole = lm.explain(X, op).planned.peak_bytes
        try:
            with lm.config(memory_budget=1):
                X.clear_cache()
                fn(X)
            minimum = 1
        except lm.BudgetTooSmall as err:
            minimum = err.minimum
        for budget in sorted({max(whole, minimum), max(whole // 2, minimum), minimum}):
            X.clear_cache()
            with lm.config(memory_budget=budget):
                out = fn(X)
            assert_close(out, expected)
            assert_close(out, unsliced)
