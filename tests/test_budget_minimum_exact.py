"""The minimum a ``BudgetTooSmall`` names is exactly the smallest budget that runs, for the
closed networks of a trace or diagonal of a sum whose terms share a Gram ``W^T W``: passed back,
the call runs within it (counted by torch's allocator hooks) and matches dense float64; one byte
less is refused.

A budgeted call keeps nothing on the leaves, but its networks kept the live peak counted with the
leaf-kept Gram held to the end: the minimum was one Gram too high (88 B named, 80 B ran).
"""

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
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
    with mock.patch.object(LA, "DENSE_MAX_ELEMENTS", 0):
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
