"""A budget that fits only in more than ``max_slices`` slices is refused (``lm.config(max_slices=)``,
default 65536), for closed networks and sliced evaluations alike: ``BudgetTooSmall`` names the
least budget that runs within the bound (passed back it runs, in at most that many slices, and
matches float64 torch; one byte less is refused naming the same minimum). Without the bound a
tiny budget cut a network into millions of slices (every label halved) and ran for minutes.
"""

import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_network_layouts import laid_out_square_chains

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, forced_route

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def _answer(op: str, D: torch.Tensor) -> torch.Tensor:
    if op == "to_dense":
        return D
    if op == "matrix_norm":
        return torch.linalg.matrix_norm(D)
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    return diag if op == "diagonal" else diag.sum(-1)


def _run(X, op: str, budget: int):
    X.clear_cache()
    if op == "to_dense":
        return X.to_dense(memory_budget=budget)
    with forced_route("factored", X):  # the norm on its own route
        return getattr(LA, op)(X, memory_budget=budget)


def _check(X, D, op: str, budget: int, bound: int, block_counts) -> None:
    with lm.config(max_slices=bound):
        block_counts.clear()
        try:
            out = _run(X, op, budget)
        except lm.BudgetTooSmall as err:
            assert err.budget == budget and err.minimum > budget
            block_counts.clear()
            out = _run(X, op, err.minimum)  # the minimum named runs, within the bound
            with pytest.raises(lm.BudgetTooSmall) as again:
                _run(X, op, err.minimum - 1)
            assert again.value.minimum == err.minimum
        assert all(n is None or n <= bound for n in block_counts), (block_counts, bound)
    assert_close(out, _answer(op, D), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(laid_out_square_chains(), st.sampled_from(["trace", "diagonal", "to_dense"]),
       st.integers(1, 12), st.integers(1, 600))
def test_a_budget_needing_more_slices_than_the_bound_names_the_least_that_stays_within(
        block_counts, pair, op, bound, budget):
    X, D = pair
    _check(X, D, op, budget, bound, block_counts)


def test_a_tiny_budget_is_refused_at_once_not_sliced_a_million_times(block_counts):
    """The Frobenius network of a batch of 12 products ``(64 x 256) @ (256 x 64)`` (393 KB) under
    196 B: every label halved, it took millions of slices (the whole network again for each) and
    ran for minutes; within a bound of 256 slices it is refused at once, naming the least budget
    within the bound and its slice count (and with a bound of 16 that minimum runs in 16)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 64, 256, generator=g, dtype=torch.float64)
    B = torch.randn(256, 64, generator=g, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    assert LA.norms.fro_route(X)[0] == "network"
    peak = lm.explain(X, "matrix_norm", memory_budget=2**50).planned.peak_bytes
    start = time.monotonic()
    with lm.config(max_slices=256), pytest.raises(lm.BudgetTooSmall) as err:
        _run(X, "matrix_norm", peak // 2000)
    assert time.monotonic() - start < 60  # not a speed claim: minutes against a moment
    assert "at most 256 slices (the max_slices setting" in str(err.value)
    assert peak // 2000 < err.value.minimum < peak
    _check(X, A @ B, "matrix_norm", peak // 2000, 16, block_counts)


def test_max_slices_is_checked_where_it_is_set():
    with pytest.raises(ValueError, match="at least 1"):
        lm.config(max_slices=0)
    with pytest.raises(TypeError, match="an int"):
        lm.config(max_slices=2.5)
    with lm.config(max_slices=7):
        assert lm.settings.get("max_slices") == 7
    assert lm.settings.get("max_slices") == lm.settings.DEFAULT_MAX_SLICES == 2**16
    assert math.log2(lm.settings.DEFAULT_MAX_SLICES) == 16
