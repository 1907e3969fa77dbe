"""``cond`` of a matrix whose rank bound is below ``min(m, n)`` allocates no padded copy of its
values: under the least budget it names (``BudgetTooSmall.minimum``) it allocates at most that
budget, and answers torch's semantics (inf, 0 for ``p=-2``, NaN for the zero matrix). On main a
37x1 @ 1x13 complex64 product allocated 64 B under its named 56 B."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


def least_budget(x, p):
    try:
        with lm.config(memory_budget=1):
            lm.linalg.cond(x, p)
    except BudgetTooSmall as e:
        return e.minimum
    return 1


@given(m=st.integers(2, 40), r=st.integers(1, 3), n=st.integers(2, 40), batch=st.sampled_from([(), (2,)]),
       dtype=st.sampled_from(DTYPES), p=st.sampled_from([None, 2, -2]), seed=st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_cond_of_a_low_rank_product_fits_its_least_budget(m, r, n, batch, dtype, p, seed):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, m, r, generator=gen, dtype=dtype)
    B = torch.randn(*batch, r, n, generator=gen, dtype=dtype)
    x = lm.lazy(A) @ lm.lazy(B)
    budget = least_budget(x, p)
    x.clear_cache()
    with Allocated() as allocated, lm.config(memory_budget=budget):
        out = lm.linalg.cond(x, p)
    assert allocated.peak <= budget, (allocated.peak, budget)
    D = (A @ B).to(torch.complex128 if dtype.is_complex else torch.float64)
    S = torch.linalg.svdvals(D)
    if r < min(m, n):  # rank deficient: the kept values' ratio with exact zeros past them
        expected = torch.zeros_like(S[..., 0]) if p == -2 else torch.full_like(S[..., 0], torch.inf)
    else:
        expected = torch.linalg.cond(D, p)
    torch.testing.assert_close(out.double(), expected.double(), rtol=1e-3, atol=0)


@pytest.mark.parametrize("p", [None, -2])
def test_cond_of_the_zero_product_is_nan(p):
    x = lm.lazy(torch.zeros(6, 2)) @ lm.lazy(torch.zeros(2, 6))
    assert torch.isnan(lm.linalg.cond(x, p))
