"""Under a memory budget, det, slogdet and solve take a route that fits where one does (edge15,
session 15; docs/memory-budgets.md).

Found by review: ``dense_is_cheaper`` dropped the formed route (``X`` formed whole, one LU)
whenever its generous peak bound did not fit the budget, and the square segments' route then
needed more: an 8 x 8 chain of two leaves solved against a ``(5, 8, 2)`` ``B`` raised
BudgetTooSmall for budgets of 1700 to 1827 bytes, where the formed route's peak is 1700."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


def _case(seed, n, k, batch, rhs_batch):
    gen = torch.Generator().manual_seed(seed)
    eye = 3 * torch.eye(n, dtype=torch.float64)  # (well conditioned)
    leaves = [torch.randn(*(batch if i == 0 else ()), n, n, generator=gen, dtype=torch.float64) + eye
              for i in range(k)]
    X, D = lm.lazy(leaves[0]), leaves[0]
    for leaf in leaves[1:]:
        X, D = X @ lm.lazy(leaf), D @ leaf
    B = torch.randn(*rhs_batch, n, 2, generator=gen, dtype=torch.float64)
    return X, D, B


def _run(op, X, B, budget=None):
    if op == "solve":
        return lm.linalg.solve(X, B, memory_budget=budget)
    out = getattr(lm.linalg, op)(X, memory_budget=budget)
    return out.logabsdet if op == "slogdet" else out


def _torch(op, D, B):
    return torch.linalg.solve(D, B) if op == "solve" else \
        torch.linalg.slogdet(D).logabsdet if op == "slogdet" else torch.linalg.det(D)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 99), n=st.integers(2, 12), k=st.integers(2, 3),
       batch=st.sampled_from([(), (3,)]), rhs_batch=st.sampled_from([(), (5,)]),
       op=st.sampled_from(["det", "slogdet", "solve"]), slack=st.integers(0, 400))
def test_a_route_explain_names_within_the_budget_runs_under_it(seed, n, k, batch, rhs_batch, op, slack):
    """Property: the route explain names without a budget, of peak ``P``, runs under any budget
    from ``P`` (and explain under that budget names a route within it), and the least budget
    ``BudgetTooSmall`` names is at most ``P`` and runs; the answers are eager torch's (float64)."""
    X, D, B = _case(seed, n, k, batch, (*rhs_batch, *batch) if op == "solve" else ())
    options = {"B": tuple(B.shape)} if op == "solve" else {}
    free = lm.explain(X, op, **options).planned.peak_bytes
    budget = free + slack
    assert lm.explain(X, op, memory_budget=budget, **options).planned.peak_bytes <= budget
    torch.testing.assert_close(_run(op, X, B, budget), _torch(op, D, B))
    with pytest.raises(lm.BudgetTooSmall) as err:  # the least named is at most that route's, and runs
        _run(op, X, B, 1)
    assert err.value.minimum <= free
    torch.testing.assert_close(_run(op, X, B, err.value.minimum), _torch(op, D, B))


@pytest.mark.parametrize("budget", [1700, 1750, 1827])
def test_the_found_solve_runs_formed_under_its_peak(budget):
    X, D, B = _case(0, 8, 2, (), (5,))
    report = lm.explain(X, "solve", B=(5, 8, 2), memory_budget=budget)
    assert "formed whole" in report.planned.note and report.planned.peak_bytes == 1700
    torch.testing.assert_close(lm.linalg.solve(X, B, memory_budget=budget), torch.linalg.solve(D, B))
