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
