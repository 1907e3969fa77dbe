"""The minimum a ``BudgetTooSmall`` names is exactly the smallest budget that runs, for the
closed networks of a trace or diagonal of a sum whose terms share a Gram ``W^T W``: passed back,
the call runs within it (counted by torch's allocator hooks) and matches dense float64; one byte
less is refused.

A budgeted call keeps nothing on the leaves, but its networks kept the live peak counted with the
leaf-kept Gram held to the end: the minimum was one Gram too high (88 B named, 80 B ran).
"""

import functools
import itertools
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA
from lazymat import network
from lazymat.rewrite import canonical

from conftest import assert_close


def _dense_op(D: torch.Tensor, op: str) -> torch.Tensor:
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return diag if op == "diagonal" else diag.sum(-1)


def named_minimum(X, fn) -> int:
    """The minimum ``BudgetTooSmall`` names for ``fn(X)`` under a 1-byte budget (1 if it runs)."""
    X.clear_cache()
    try:
        fn(X, memory_budget=1)
    except lm.BudgetTooSmall as err:
        return err.minimum
    return 1


@st.composite
def gram_sums(draw):
    """(lazy, dense) ``sum_k c_k W^T W M_k``: each ``M_k`` one or two leaves, unbatched or with the
    sum's batch of 1-3 (the Gram of the unbatched ``W`` is kept on the leaves when a batch is present)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n, r = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    W = torch.randn(n, r, generator=g, dtype=torch.float64)
    w = lm.lazy(W)
    b = draw(st.integers(1, 3))
    X = D = None
    for k in range(draw(st.integers(2, 3))):
        term, dense = w.mT @ w, W.mT @ W
        for _ in range(draw(st.integers(1, 2))):
            batch = (b,) if draw(st.booleans()) else ()
            M = torch.randn(*batch, r, r, generator=g, dtype=torch.float64)
            term, dense = term @ lm.lazy(M), dense @ M
        X, D = (term, dense) if X is None else (X + (k + 1.0) * term, D + (k + 1.0) * dense)
    return X, D


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(gram_sums(), st.sampled_from(["trace", "diagonal"]), st.booleans())
def test_the_minimum_of_networks_sharing_a_gram_is_exact(pair, op, warm):
    """Named minimum ``m``: ``m`` runs within ``m`` bytes and equals dense; ``m - 1`` is refused.
    ``warm``: an unbudgeted call ran first (the Gram is then found on the leaves)."""
    X, D = pair
    fn = getattr(LA, op)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        if warm:
            assert_close(fn(X), _dense_op(D, op))
        minimum = named_minimum(X, fn)
        if minimum > 1:
            X.clear_cache()
            with pytest.raises(lm.BudgetTooSmall):
                fn(X, memory_budget=minimum - 1)
        X.clear_cache()
        with Allocated() as counter:
            out = fn(X, memory_budget=minimum)
        assert counter.peak <= minimum, (counter.peak, minimum)
        assert_close(out, _dense_op(D, op))


def test_slicing_ends_when_every_label_is_cut_to_one():
    """The diagonal of ``W^T W M`` with a batch of 3: the Gram kept on the leaves counts unless every label is
    sliced (size-1 ones too), so blocks of 1 of the batch (48 B) do not fit 40 B while cutting
    everything does. The search halved nothing further and looped forever; it now returns the
    all-ones slicing the caller weighed, within the budget."""
    g = torch.Generator().manual_seed(0)
    w = lm.lazy(torch.randn(1, 1, generator=g, dtype=torch.float64))
    Ms = [lm.lazy(torch.randn(3, 1, 1, generator=g, dtype=torch.float64)) for _ in range(2)]
    X = w.mT @ w @ Ms[0] + 2.0 * (w.mT @ w @ Ms[1])
    shared = network.Shared()
    for term in canonical(X).terms:
        net = network.closed_chain(term.factors, True, 8, shared)
        ones = network.schedule_cost(net, {c: 1 for c, _ in net.sizes}).peak_bytes
        assert ones < network.unsliced_peak(net)
        cost = network.slice_network(net, ones)
        assert cost is not None and cost.peak_bytes <= ones
        assert dict(cost.blocks) == {c: 1 for c, _ in net.sizes}


@st.composite
def indexed_expressions(draw):
    """(lazy, dense) small expressions whose sides copy as they are formed: a product, a sum with
    a leaf or a cat of a leaf and a product, then (maybe) an index list on the rows or columns
    (session 14: such copies were missed by explain's rows and the split Gram route's peak, and
    a cat's diagonal blocks named one block's least without the bytes held beside it).

    Session 15 adds a product with a sum factor (its nested block is formed before the networks
    run: the least named was the forming's alone, 8 B where the network beside it needed 24 B) and
    a chain of 3-6 leaves of sides 1-2 (its ``tr(X^T X)`` repeats steps: slicing the size-1 labels
    too raised the smallest block above the one the least was bisected from, and the refusal
    crashed looking for a slicing at it)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    m, k, n = (draw(st.integers(1, 3)) for _ in range(3))
    A, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, k), (k, n), (m, n)))
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    kind = draw(st.sampled_from(["product", "sum", "cat", "sum factor", "chain"]))
    if kind == "sum":
        X, D = X + lm.lazy(C), D + C
    elif kind == "cat":
        X, D = lm.cat([lm.lazy(C), X], -1), torch.cat([C, D], -1)
    elif kind == "sum factor":
        B2 = torch.randn(k, n, generator=g, dtype=torch.float64)
        X, D = lm.lazy(A) @ (lm.lazy(B) + lm.lazy(B2)), A @ (B + B2)
    elif kind == "chain":
        sides = draw(st.lists(st.integers(1, 2), min_size=4, max_size=7))
        mats = [torch.randn(a, b, generator=g, dtype=torch.float64) for a, b in itertools.pairwise(sides)]
        X, D = lm.lazy(mats[0]), mats[0]
        for M in mats[1:]:
            X, D = X @ lm.lazy(M), D @ M
    rows = draw(st.sampled_from([None, [0], [-1, 0]]))
    cols = draw(st.sampled_from([None, [0], [0, -1]]))
    if rows is not None:
        X, D = X[rows], D[rows]
    if cols is not None:
        X, D = X[:, cols], D[:, cols]
    return X, D


def _sum_factor_example() -> tuple:
    """``t1x1 @ (t1x1 + t1x1)`` (seed 4 of test_qa_session8's vector norms)."""
    a, b, c = (torch.tensor([[v]], dtype=torch.float64) for v in (0.5, 1.5, -2.0))
    return lm.lazy(a) @ (lm.lazy(b) + lm.lazy(c)), a @ (b + c)


def _chain_example() -> tuple:
    """``t2x1 @ t1x1 @ t1x1 @ t1x2 @ t2x2 @ t2x2`` (seed 4 of test_qa_session8's vector norms)."""
    g = torch.Generator().manual_seed(4)
    mats = [torch.randn(*s, generator=g, dtype=torch.float64)
            for s in ((2, 1), (1, 1), (1, 1), (1, 2), (2, 2), (2, 2))]
    X = lm.lazy(mats[0])
    for M in mats[1:]:
        X = X @ lm.lazy(M)
    return X, functools.reduce(torch.matmul, mats)


_NORM_CALLS = {
    "vector_norm": lambda X, ord_, dim: torch.linalg.vector_norm(X, ord_, dim),
    "fro": lambda X, ord_, dim: torch.linalg.matrix_norm(X),
    "trace": lambda X, ord_, dim: torch.trace(X[..., :1, :1] if X.shape[-1] != X.shape[-2] else X),
    "diagonal gram": lambda X, ord_, dim: torch.diagonal(X.mT @ X, dim1=-2, dim2=-1),
}


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(indexed_expressions(), st.sampled_from(sorted(_NORM_CALLS)), st.sampled_from([2, 1, float("inf")]),
       st.sampled_from([None, -1, -2, (-2, -1)]))
@example(pair=_sum_factor_example(), call="vector_norm", ord_=2, dim=-1)
@example(pair=_chain_example(), call="vector_norm", ord_=2, dim=None)
def test_the_named_minimum_of_norms_traces_and_diagonals_runs(pair, call, ord_, dim):
    """A ``BudgetTooSmall`` under a 1-byte budget names ``m``; the same call under exactly ``m``
    runs and matches the dense float64 answer (the least a refusal names must run)."""
    X, D = pair
    fn = _NORM_CALLS[call]
    with torch.no_grad():
        try:
            with lm.config(memory_budget=1):
                fn(X, ord_, dim)
            minimum = None  # nothing to bound: it ran within 1 byte
        except lm.BudgetTooSmall as err:
            minimum = err.minimum
        X.clear_cache()
        with lm.config(memory_budget=minimum):
            out = fn(X, ord_, dim)
    assert_close(out, fn(D, ord_, dim))
