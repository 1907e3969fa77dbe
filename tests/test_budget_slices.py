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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated, broadcast_chains
from test_properties import assert_close, chains, expressions

import lazymat as lm
from lazymat import linalg as LA
from lazymat import network
from lazymat import reduce as RD
from lazymat.network import closed_chain
from lazymat.rewrite import canonical

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
        # one loop, the stream's: no evaluation inside a block is sliced again (its figures are
        # those of what the blocks run)
        assert loops == [RD.stream_plan(X, s, budget, "test").blocks]
        assert loops[-1] <= most if most < size else loops[-1] >= 1
        if name == "argmin":  # the same index as unstreamed; it picks the row minimum of dense
            assert torch.equal(out, unstreamed)
            assert_close(D.gather(-1, out.unsqueeze(-1)).squeeze(-1), D.amin(-1))
        else:
            assert_close(out, expected)
            assert_close(out, unstreamed)


# the minimum of a sum's networks bisects slice_network, which is slow under tiny budgets: fewer examples
NETWORK_SETTINGS = settings(SETTINGS, max_examples=15)


@NETWORK_SETTINGS
@given(st.data())
def test_networks_of_a_sum_in_one_two_and_many_blocks(loops, data):
    """``trace``/``diagonal`` of ``A1 B1 + 2 A2 B2`` (random batched chains): under the budget
    explain reports for the unsliced run (one block each), half of it, the minimum the error
    names, and any budget drawn above it, all equal dense float64 and the unsliced result; one
    byte below the minimum is refused (the minimum is exact, and what runs grows with the budget)."""
    batch = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    m = data.draw(st.integers(1, 6))
    (X1, D1), (X2, D2) = (data.draw(chains(m, m, batch, torch.float64)) for _ in range(2))
    X, D = X1 + 2.0 * X2, D1 + 2.0 * D2
    op = data.draw(st.sampled_from(["trace", "diagonal"]))
    fn, expected = getattr(LA, op), _trace_or_diagonal(D, op)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        unsliced, whole, minimum = _unbudgeted_and_minimum(X, op)
        above = data.draw(st.integers(minimum, max(2 * whole, minimum)))
        for budget in sorted({max(whole, minimum), max(whole // 2, minimum), minimum, above}):
            X.clear_cache()
            with lm.config(memory_budget=budget):
                out = fn(X)
            assert_close(out, expected)
            assert_close(out, unsliced)


def _trace_or_diagonal(D: torch.Tensor, op: str) -> torch.Tensor:
    """Dense torch's ``trace``/``diagonal`` of a batch ``D``."""
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return diag if op == "diagonal" else diag.sum(-1)


def _unbudgeted_and_minimum(X, op: str) -> tuple[torch.Tensor, int, int]:
    """``op(X)`` unbudgeted, explain's peak for it, and the minimum budget ``BudgetTooSmall``
    names, checked exact from below (one byte less is refused)."""
    fn = getattr(LA, op)
    X.clear_cache()
    unbudgeted = fn(X)
    whole = lm.explain(X, op).planned.peak_bytes
    minimum = _call_minimum(X, fn)
    if minimum > 0:
        X.clear_cache()
        with pytest.raises(lm.BudgetTooSmall), lm.config(memory_budget=minimum - 1):
            fn(X)
    return unbudgeted, whole, minimum


def _call_minimum(X, fn) -> int:
    """The minimum ``BudgetTooSmall`` names for ``fn(X)`` under a budget of 1 byte (1 if it runs)."""
    try:
        with lm.config(memory_budget=1):
            X.clear_cache()
            fn(X)
        return 1
    except lm.BudgetTooSmall as err:
        return err.minimum


def test_a_larger_budget_than_the_minimum_runs_a_trace_of_a_sum(gen):
    """``tr(a b c + 2 d e f h)``: the minimum named is 40 B and 40-47 B ran, but 48-71 B were
    refused (naming 72): under 48 B the first network ran whole and kept its small steps, which
    left the second too little. Nothing it keeps is read later, and keeping is never forced."""
    a, b, c = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(3, 1), (1, 3), (3, 3)])
    d, e, f, h = (torch.randn(*s, generator=gen, dtype=torch.float64)
                  for s in [(3, 2), (2, 1), (1, 2), (2, 3)])
    la, lb, lc, ld, le, lf, lh = map(lm.lazy, (a, b, c, d, e, f, h))
    X = la @ lb @ lc + 2.0 * (ld @ le @ lf @ lh)
    expected = torch.trace(a @ b @ c + 2.0 * (d @ e @ f @ h))
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        minimum = _call_minimum(X, LA.trace)
        assert minimum == 40
        for budget in (minimum, 48, 60, 71, 72, 1000):
            X.clear_cache()
            assert_close(LA.trace(X, memory_budget=budget), expected)


@NETWORK_SETTINGS
@given(st.data())
def test_networks_sharing_a_gram_under_any_budget_above_the_minimum(loops, data):
    """``trace``/``diagonal`` of ``sum_k c_k W^T W M_k``: every term's network starts with the Gram
    ``W^T W``, which the first keeps for the others when it fits beside them and is formed again
    when it does not. Under the minimum, one byte less, and budgets drawn above it: dense float64
    and the unbudgeted result, and explain's peak is the figure checked (it runs, one byte less
    is sliced or refused)."""
    n, r = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    batch = tuple(data.draw(st.lists(st.integers(1, 3), max_size=1)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    W = torch.randn(n, r, generator=g, dtype=torch.float64)
    w = lm.lazy(W)
    X, D = None, 0
    for k in range(data.draw(st.integers(2, 3))):
        Mk, Dk = data.draw(chains(r, r, batch, torch.float64))
        term, dense = w.mT @ w @ Mk, W.mT @ W @ Dk
        X, D = (term, dense) if X is None else (X + (k + 1.0) * term, D + (k + 1.0) * dense)
    op = data.draw(st.sampled_from(["trace", "diagonal"]))
    fn, expected = getattr(LA, op), _trace_or_diagonal(D, op)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        unbudgeted, whole, minimum = _unbudgeted_and_minimum(X, op)
        assert_close(unbudgeted, expected)
        budgets = {minimum, max(whole, minimum), data.draw(st.integers(minimum, max(whole + 8, minimum)))}
        for budget in sorted(budgets):
            X.clear_cache()
            loops.clear()
            with lm.config(memory_budget=budget):
                out = fn(X)
            assert_close(out, expected)
            assert_close(out, unbudgeted)
            assert (lm.explain(X, op, memory_budget=budget).planned.peak_bytes <= budget)
        X.clear_cache()
        loops.clear()
        with lm.config(memory_budget=whole):
            fn(X)
        assert loops == []  # explain's unbudgeted peak runs every network whole


def test_a_kept_gram_found_on_the_leaves_is_freed_like_a_computed_one(gen):
    """``tr(W^T W M1 + 2 W^T W M2 + 3 W^T W M3)`` with a batch: the first run leaves ``W^T W`` on
    the leaves; a later run under a budget where the second network must free the Gram the first
    kept found it there and did not keep it, and freeing it raised ``KeyError``. Every budget from
    the minimum to the unsliced peak runs, some of them freeing the kept Gram."""
    W = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    M = [torch.randn(3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    w = lm.lazy(W)
    X = w.mT @ w @ lm.lazy(M[0]) + 2.0 * (w.mT @ w @ lm.lazy(M[1])) + 3.0 * (w.mT @ w @ lm.lazy(M[2]))
    expected = torch.diagonal(W.mT @ W @ (M[0] + 2 * M[1] + 3 * M[2]), dim1=-2, dim2=-1).sum(-1)
    c = canonical(X)
    shared = network.Shared()
    nets = [closed_chain(t.factors, False, 8, shared) for t in c.terms]
    reserve = network.terms_reserve(c.terms, (3,), 8)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        assert_close(LA.trace(X), expected)  # W^T W now on the leaves
        minimum, whole = _call_minimum(X, LA.trace), lm.explain(X, "trace").planned.peak_bytes
        freeing = 0
        for budget in range(minimum, whole + 1, 8):
            freeing += any(run.free for run in network.plan_networks(nets, budget, reserve))
            X.clear_cache()
            assert_close(LA.trace(X, memory_budget=budget), expected)
    assert freeing > 0


def _check_sliced_to_dense_fits(X, D, frac: float) -> None:
    """``X.to_dense`` under a budget between its minimum and its unsliced peak allocates at most
    the budget beside its result (counted by torch's allocator hooks), and equals dense."""
    try:
        X.to_dense(memory_budget=1)
        least = 1
    except lm.BudgetTooSmall as e:
        least = e.minimum
    work = lm.explain(X, memory_budget=2**50).planned.peak_bytes
    budget = int(least + frac * max(work - least, 0))
    X.clear_cache()
    with Allocated() as counter:
        out = X.to_dense(memory_budget=budget)
    result = out.untyped_storage().nbytes()
    assert counter.peak - result <= budget, (counter.peak, result, budget, least, work)
    assert_close(out, D)


@st.composite
def batched_chains(draw):
    """(lazy, dense) products of 2-4 factors, most with two or three batch dims of 2-3 entries:
    blocks of an inner batch dim (2 of 3) view such a leaf with batch dims that do not merge."""
    n = draw(st.integers(2, 4))
    dims = [draw(st.integers(1, 3)) for _ in range(n + 1)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batches = st.sampled_from([(2, 3), (2, 2, 3), (3,), (2, 1, 1), (), (1, 3), (2, 1)])
    lazy = dense = None
    for i in range(n):
        t = torch.randn(*draw(batches), dims[i], dims[i + 1], generator=g, dtype=torch.float64)
        lazy = lm.lazy(t) if lazy is None else lazy @ lm.lazy(t)
        dense = t if dense is None else dense @ t
    return lazy, dense


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(batched_chains(), st.sampled_from([0.75, 0.5, 0.25, 0.0, 1.0]))
def test_blocks_of_inner_batch_dims_allocate_within_the_budget(pair, frac):
    X, D = pair
    _check_sliced_to_dense_fits(X, D, frac)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(expressions(), broadcast_chains()), st.floats(0, 1))
def test_a_sliced_to_dense_allocates_within_its_budget(pair, frac):
    X, D = pair
    _check_sliced_to_dense_fits(X, D, frac)


@pytest.mark.parametrize("budget", [120, 136, 160])
def test_blocks_of_a_middle_batch_dim_count_the_copies_matmul_makes(gen, budget):
    # blocks of 2 of the 3 entries of dim 1 view the (2, 3, 1, 5) leaf with batch strides (15, 5):
    # torch.matmul copies it to one batch dim; the plan picked them at 120 B, they took 168 B
    shapes = [(3, 1, 1), (1, 1), (1, 1), (2, 3, 1, 5), (5, 1), (3, 1, 1)]
    ts = [torch.randn(*s, dtype=torch.float64, generator=gen) for s in shapes]
    X, D = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        X, D = X @ lm.lazy(t), D @ t
    with Allocated() as counter:
        out = X.to_dense(memory_budget=budget)
    assert counter.peak - out.untyped_storage().nbytes() <= budget
    assert_close(out, D)
