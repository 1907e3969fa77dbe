"""A batch whose answer alone outgrows the budget: the error says the least block is one
matrix beside the whole batch's result, and names that result's size (it read "one matrix of
the batch needs 1.07 TiB" for GPT-2 XL's all-pairs svd, whose U and Vh are that size)."""

import re

import pytest
import torch

import lazymat as lm
from lazymat.settings import BudgetTooSmall, parse_bytes


@pytest.mark.parametrize("pairs", [64, 400])
def test_the_least_block_names_the_batchs_result(pairs):
    m, r = 300, 8
    L = lm.symbol("L", (pairs, m, r), dtype=torch.float32)
    R = lm.symbol("R", (pairs, r, m), dtype=torch.float32)
    X = L @ R
    answer = pairs * (2 * m * r + r) * 4  # U, Vh and the values: what svd returns
    with pytest.raises(BudgetTooSmall) as err:
        lm.explain(X, "svd", memory_budget=answer // 2)
    text = str(err.value)
    found = re.search(r"one matrix of the batch beside the batch's ([\d.]+ [KMG]?i?B) result needs", text)
    assert found, text
    assert parse_bytes(found.group(1).replace(" ", "")) >= 0.99 * answer
    assert err.value.minimum > answer


@pytest.mark.parametrize("max_slices", [65536, 1024, 64, 4])
def test_a_closed_networks_refusal_names_the_bound_only_where_it_binds(max_slices):
    """trace of a 300 x 300 product at 8 bytes: its smallest block needs 24 B with or without
    a bound of 1024 slices, so the refusal names the block; a bound of 64 raises the least
    budget (to 80 B), so it names the bound (it named the bound whenever the network had more
    entries than the bound)."""
    g = torch.Generator().manual_seed(0)
    shapes = ((300, 8), (8, 40), (40, 300))
    A, B, C = (lm.lazy(torch.randn(*s, generator=g, dtype=torch.float64)) for s in shapes)
    X = A @ B @ C

    def refusal(bound):
        with lm.config(max_slices=bound, memory_budget=8), pytest.raises(BudgetTooSmall) as err:
            X.trace()
        return err.value

    free, bounded = refusal(2**62), refusal(max_slices)
    assert bounded.minimum >= free.minimum
    assert ("the max_slices setting" in str(bounded)) == (bounded.minimum > free.minimum), str(bounded)
