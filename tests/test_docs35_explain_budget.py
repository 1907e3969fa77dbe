"""explain under a memory budget agrees with the call it explains: where the call refuses the
budget (BudgetTooSmall) explain refuses it too, and a route explain returns fits the budget.

Found while checking memory-budgets.md's LU figures: explain of det, slogdet, solve and inv
under a 10-byte budget returned the square segments' route, peak 1772 bytes and more, where the
calls refuse it (svdvals, matrix_norm and trace refuse in explain as in the call).
"""

import pytest
import torch

import lazymat as lm

CALLS = {
    "det": lambda X, **k: lm.linalg.det(X, **k),
    "slogdet": lambda X, **k: lm.linalg.slogdet(X, **k),
    "inv": lambda X, **k: lm.linalg.inv(X, **k),
    "solve": lambda X, **k: lm.linalg.solve(X, torch.ones(3, 8, 1, dtype=torch.float64), **k),
    "svdvals": lambda X, **k: lm.linalg.svdvals(X, **k),
    "trace": lambda X, **k: lm.linalg.trace(X, **k),
}
LU = ("det", "slogdet", "inv", "solve")


def _chain() -> lm.Expr:
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(3, 8, 8, generator=g, dtype=torch.float64) + 3 * torch.eye(8, dtype=torch.float64)
            for _ in range(2))
    return lm.lazy(A) @ lm.lazy(B)


def _check(op: str, budget: int) -> None:
    X = _chain()
    try:
        CALLS[op](X, memory_budget=budget)
        refused = False
    except lm.BudgetTooSmall:
        refused = True
    if refused:
        with pytest.raises(lm.BudgetTooSmall):
            lm.explain(X, op, memory_budget=budget)
    else:
        assert lm.explain(X, op, memory_budget=budget).planned.peak_bytes <= budget


@pytest.mark.parametrize("op", [op for op in CALLS if op not in LU])
@pytest.mark.parametrize("budget", [10, 2**20])
def test_explain_refuses_where_the_call_does(op, budget):
    _check(op, budget)


@pytest.mark.parametrize("op", LU)
def test_explain_of_an_lu_route_refuses_where_the_call_does(op):
    _check(op, 10)


@pytest.mark.parametrize("op", LU)
def test_explain_of_an_lu_route_fits_a_generous_budget(op):
    _check(op, 2**20)
