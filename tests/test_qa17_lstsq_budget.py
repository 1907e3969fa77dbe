"""``lm.linalg.lstsq`` counts everything it holds after the SVD (``U^H B``, the solution, the
residuals) in its budget check: the least budget it names bounds what torch allocates."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 40),
    n=st.integers(2, 40),
    cols=st.integers(1, 120),
    driver=st.sampled_from(["gels", "gelsy", "gelsd", "gelss"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_least_budget_bounds_the_allocations(m, n, cols, driver, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, dtype=torch.float64, generator=g)
    B = torch.randn(m, cols, dtype=torch.float64, generator=g)
    x, b = lm.lazy(X.to(dtype)), B.to(dtype)
    with pytest.raises(BudgetTooSmall) as err, Allocated() as refused:
        lm.linalg.lstsq(x, b, driver=driver, memory_budget=64)
    assert refused.peak == 0  # refused before anything ran
    least = err.value.minimum
    with Allocated() as counted:
        got = lm.linalg.lstsq(x, b, driver=driver, memory_budget=least)
    assert counted.peak <= least, (counted.peak, least)
    expected = torch.linalg.pinv(X.to(dtype).double()) @ B.to(dtype).double()
    tol = 1e-8 if dtype == torch.float64 else 1e-2
    scale = max(1.0, expected.abs().max().item())
    cond = torch.linalg.cond(X.to(dtype).double()).item()
    assert (got.solution.double() - expected).abs().max().item() <= tol * scale * max(1.0, cond) ** 2
