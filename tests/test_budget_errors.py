"""``BudgetTooSmall``: one error for every route, carrying ``budget``, ``minimum`` and ``device``.

Every place that refuses a budget (a chain's ``to_dense``, a closed network's trace, diagonal or
Frobenius norm, a spectral route's blocks of the batch, a streamed reduction) raises the same
error; its ``minimum`` is exact: passed back as the budget the call runs, and equals dense
float64 torch, while one byte less is refused again. Random expressions and budgets (hypothesis)
and one example per route.
"""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close, forced_route

# op name: (lazymat call, dense float64 answer); matrices are square where the op needs it
OPS = {
    "to_dense": (lambda X: X.to_dense(), lambda D: D),
    "trace": (lm.linalg.trace, lambda D: torch.diagonal(D, dim1=-2, dim2=-1).sum(-1)),
    "diagonal": (lm.linalg.diagonal, lambda D: torch.diagonal(D, dim1=-2, dim2=-1)),
    "fro": (lm.linalg.matrix_norm, torch.linalg.matrix_norm),
    "norm_1": (lambda X: lm.linalg.matrix_norm(X, 1), lambda D: torch.linalg.matrix_norm(D, 1)),
    "svdvals": (lambda X: lm.linalg.svdvals(X, full=True), torch.linalg.svdvals),
    "topk": (lambda X: X.topk(2).values, lambda D: D.topk(2).values),
    "argmax": (lambda X: X.argmax(-2), lambda D: D.argmax(-2)),
    "row_norms": (lambda X: torch.linalg.vector_norm(X, 1, -1), lambda D: torch.linalg.vector_norm(D, 1, -1)),
}


def _run(op, X, budget):
    """``op`` on ``X`` under ``budget``, on its own route whatever the size (the small-matrix
    dense shortcut off), from a cold cache."""
    X.clear_cache()
    streamed = op in ("to_dense", "topk", "argmax", "row_norms")  # blocks of the matrix itself
    with lm.config(memory_budget=budget), forced_route("factored", None if streamed else X):
        return OPS[op][0](X)


def _check_minimum(op, X, D, budget):
    """Run ``op`` under ``budget``; if refused, the error's figures are the budget given and an
    exact minimum: that minimum runs and matches dense, one byte less is refused."""
    try:
        out = _run(op, X, budget)
    except lm.BudgetTooSmall as err:
        assert (err.budget, err.device) == (budget, torch.device("cpu"))
        assert err.minimum > budget
        assert f"at least {err.minimum} bytes" in str(err) and f"{budget} bytes" in str(err)
        out = _run(op, X, err.minimum)
        with pytest.raises(lm.BudgetTooSmall) as again:
            _run(op, X, err.minimum - 1)
        assert again.value.minimum == err.minimum
    expected = OPS[op][1](D)
    if op == "argmax":
        assert torch.equal(out, expected)
    else:
        assert_close(out, expected, rtol=1e-9)


def _chain(gen, batch, dims):
    mats = [torch.randn(*batch, a, b, generator=gen, dtype=torch.float64)
            for a, b in zip(dims[:-1], dims[1:], strict=True)]
    X = lm.lazy(mats[0])
    D = mats[0]
    for m in mats[1:]:
        X, D = X @ lm.lazy(m), D @ m
    return X, D


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_route_names_an_exact_minimum(gen, op):
    X, D = _chain(gen, (3, 2), [12, 5, 9, 12])  # batched, square, rank 5
    _check_minimum(op, X, D, 1)


def test_a_sum_of_products_names_an_exact_minimum(gen):
    """Networks of several terms keep a running sum beside each other: counted in the minimum."""
    A, B = (torch.randn(3, 10, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    X = lm.lazy(A) @ lm.lazy(B).mT + lm.lazy(B) @ lm.lazy(A).mT
    D = A @ B.mT + B @ A.mT
    for op in ("to_dense", "trace", "diagonal", "fro", "topk"):
        _check_minimum(op, X, D, 1)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(sorted(OPS)),
       st.lists(st.integers(1, 3), max_size=2), st.lists(st.integers(1, 9), min_size=1, max_size=3),
       st.integers(2, 9), st.one_of(st.just(1), st.integers(1, 4000)))
def test_random_budgets_name_exact_minimums(seed, op, batch, inner, size, budget):
    gen = torch.Generator().manual_seed(seed)
    X, D = _chain(gen, tuple(batch), [size, *inner, size])
    _check_minimum(op, X, D, budget)
