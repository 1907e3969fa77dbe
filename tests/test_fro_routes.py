"""The Frobenius-norm routes (:func:`lazymat.linalg.norms.fro_route`): the peak each route, the
network's included, is chosen by is the peak explain schedules for it (a route judged to fit by
one estimate and refused by the other raised ``BudgetTooSmall`` under a budget another route
fitted), and every route answers as dense torch does."""

from unittest import mock

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close


@st.composite
def products(draw):
    """A random product of 2-5 float64 symbols, some batched."""
    k = draw(st.integers(2, 5))
    dims = draw(st.lists(st.integers(1, 30), min_size=k + 1, max_size=k + 1))
    batch = draw(st.sampled_from([(), (2,), (3, 2)]))
    shared = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    factors = [lm.symbol(f"A{i}", (*(() if shared[i] else batch), dims[i], dims[i + 1]), dtype=torch.float64)
               for i in range(k)]
    x = factors[0]
    for f in factors[1:]:
        x = x @ f
    return x


@settings(max_examples=150, deadline=None)
@given(x=products())
def test_each_route_is_chosen_by_the_peak_explain_schedules(x):
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        route = LA.norms.fro_route(x)
        if len(lm.rewrite.canonical(x).terms[0].factors) < 2 or route[0] == "core":
            return
        chosen = next(peak for _, peak, r in LA.norms.fro_candidates(x) if r[0] == route[0])
        assert chosen == lm.explain(x, "matrix_norm").planned.peak_bytes, route[0]


def test_a_budget_the_network_fits_is_not_refused_by_the_grams(gen):
    """||A B|| of 1 x 1 factors under 16 bytes: the Grams with their trace need 24, the sliced
    network fits; the split route was judged to fit (its peak left out the trace) and raised."""
    A, B = torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.6]], dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0), lm.config(memory_budget=16):
        assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(A @ B))


def test_the_network_route_is_weighed_by_the_peak_it_runs_with():
    """The network runs alone (nothing kept for later networks): it was weighed by the peak of a
    network that retains its steps, 32 bytes against the 24 that explain and the executor use."""
    x = lm.symbol("A", (1, 2), dtype=torch.float64) @ lm.symbol("B", (2, 2), dtype=torch.float64) \
        @ lm.symbol("C", (2, 1), dtype=torch.float64)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        assert LA.norms.fro_route(x)[0] == "network"
        peak = next(peak for _, peak, r in LA.norms.fro_candidates(x) if r[0] == "network")
        assert peak == lm.explain(x, "matrix_norm").planned.peak_bytes == 24
