"""A refused memory budget names what binds: the smallest block, or the max_slices bound.

Found by the docs' output check: memory-budgets.md's first refusal (to_dense of an
(8, 8, 64, 64) expression at 100 bytes) names "a run in at most 65536 slices" although the
least budget, 640 bytes, is the smallest block's with no bound at all.
"""

import pytest
import torch

import lazymat as lm


def _leaf(g: torch.Generator, *shape: int) -> lm.Expr:
    return lm.lazy(torch.randn(*shape, generator=g, dtype=torch.float64))


def _head_pairs() -> lm.Expr:
    """memory-budgets.md's all-pairs composition: (8, 8, 64, 64)."""
    g = torch.Generator().manual_seed(0)
    OV = _leaf(g, 8, 64, 16) @ _leaf(g, 8, 16, 64)
    QK = _leaf(g, 8, 64, 16) @ _leaf(g, 8, 64, 16).mT
    return OV[:, None] @ QK[None]


def _refusal(X: lm.Expr, budget: int, max_slices: int) -> lm.BudgetTooSmall:
    with lm.config(max_slices=max_slices), pytest.raises(lm.BudgetTooSmall) as info:
        X.to_dense(memory_budget=budget)
    return info.value


def test_a_bound_that_does_not_bind_is_not_named():
    X = _head_pairs()
    unbounded = _refusal(X, 100, 2**62)
    assert "its smallest block" in str(unbounded)
    bounded = _refusal(X, 100, 65536)
    assert bounded.minimum == unbounded.minimum == 640  # the bound does not raise the least budget
    assert "max_slices" not in str(bounded), str(bounded)


def test_a_bound_that_binds_is_named():
    X = _head_pairs()
    unbounded = _refusal(X, 100, 2**62)
    bounded = _refusal(X, unbounded.minimum, 16)
    assert bounded.minimum > unbounded.minimum
    assert "at most 16 slices (the max_slices setting" in str(bounded), str(bounded)
    with lm.config(max_slices=16):
        X.to_dense(memory_budget=bounded.minimum)  # the least it names runs, as documented

    g = torch.Generator().manual_seed(1)
    Y = _leaf(g, 300, 8) @ _leaf(g, 8, 16) @ _leaf(g, 16, 300)
    with lm.config(max_slices=2**62):  # with no bound, cut to single entries: 100 bytes fit
        assert lm.explain(Y, memory_budget=100).slicing[0].slices == 300 * 300
    bounded = _refusal(Y, 100, 65536)  # 90000 entries: the bound binds
    assert "at most 65536 slices (the max_slices setting" in str(bounded), str(bounded)
