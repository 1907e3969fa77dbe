"""diagonal_rank on non-finite input, against a dense float64 count: a row holding a NaN has
no rank (it raises naming the row); an inf compares as a number."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.circuits import diagonal_rank


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), r=st.integers(1, 3), batch=st.sampled_from([(), (2,), (2, 3)]),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]), factored=st.booleans(),
       block_rows=st.integers(1, 4), subset=st.booleans(), seed=st.integers(0, 1000))
def test_diagonal_rank_of_non_finite_rows(n, r, batch, value, factored, block_rows, subset, seed):
    """Property: rows with a NaN entry raise ``ValueError`` naming one of them; every other
    answer equals the dense float64 count (an inf beats every finite diagonal)."""
    g = torch.Generator().manual_seed(seed)
    if factored:
        A = torch.randn(*batch, n, r, generator=g, dtype=torch.float64)
        B = torch.randn(r, n, generator=g, dtype=torch.float64)
        A.view(-1)[torch.randint(0, A.numel(), (1,), generator=g)] = value
        x, dense = lm.lazy(A) @ lm.lazy(B), A @ B
    else:
        dense = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
        dense.view(-1)[torch.randint(0, dense.numel(), (1,), generator=g)] = value
        x = lm.lazy(dense)
    rows = sorted(set(torch.randint(0, n, (3,), generator=g).tolist())) if subset else list(range(n))
    picked = dense[..., rows, :]
    budget = math.prod(batch) * n * 9 * block_rows  # block_rows rows of every matrix
    if bool(picked.isnan().any()):
        with pytest.raises(ValueError, match=r"diagonal_rank: row \d+ .* holds NaN"):
            diagonal_rank(x, rows=rows if subset else None, memory_budget=budget)
        return
    diag = picked[..., torch.arange(len(rows)), rows]
    want = (picked > diag[..., None]).sum(-1)
    assert torch.equal(diagonal_rank(x, rows=rows if subset else None, memory_budget=budget), want)


def test_a_nan_diagonal_is_not_called_the_maximum():
    """The reported case: a NaN diagonal entry counted 0 (the row's maximum: 'copies')."""
    t = torch.eye(3, dtype=torch.float64)
    t[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"row 1 of the \(3, 3\) float64 expression holds NaN"):
        diagonal_rank(lm.lazy(t))
    assert diagonal_rank(lm.lazy(t), rows=[0, 2]).tolist() == [0, 0]  # rows without NaN answer
