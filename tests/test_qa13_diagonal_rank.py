"""diagonal_rank against a dense float64 count: non-finite input (a row holding a NaN has no
rank: it raises naming the row; an inf compares as a number), empty matrices and batches (a
ZeroDivisionError before), rows read as layer/head arguments (``1.5`` was row 1), complex input
(torch's "gt_cpu not implemented" before)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.circuits import diagonal_rank
from lazymat.settings import BudgetTooSmall


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
    budget = math.prod(batch) * n * 9 * block_rows  # block_rows rows of every matrix, their masks
    try:
        diagonal_rank(x, rows=rows[:1], memory_budget=budget)
    except BudgetTooSmall as e:  # and what forming a block holds: the budget that runs
        budget = e.minimum + (block_rows - 1) * math.prod(batch) * n * 9
    except ValueError:
        pass
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


ROWS = {"all": None, "list": [0, -1, 1], "slice": slice(1, None, 2), "tensor": torch.tensor([2, 0]),
        "int": -2, "none": []}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 6), batch=st.sampled_from([(), (0,), (2,), (3, 0)]),
       how=st.sampled_from(sorted(ROWS)), seed=st.integers(0, 1000))
def test_diagonal_rank_of_any_rows_of_any_size(n, batch, how, seed):
    """Property: rows named as torch indexes them (negative from the end, a slice, a tensor)
    give the dense count, also for empty matrices and empty batches."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(*batch, n, n, generator=g, dtype=torch.float64)
    rows = ROWS[how]
    try:
        picked = torch.arange(n)[rows if rows is not None else slice(None)].reshape(-1)
    except IndexError:  # a row past the end names itself
        with pytest.raises(IndexError, match="row .* out of range"):
            diagonal_rank(lm.lazy(dense), rows=rows)
        return
    block = dense[..., picked, :]
    want = (block > block.gather(-1, picked.expand(block.shape[:-1])[..., None])).sum(-1)
    got = diagonal_rank(lm.lazy(dense), rows=rows)
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("rows", [[1.5], [True], ["0"], 2.0])
def test_a_row_that_is_not_an_int_is_named(rows):
    with pytest.raises(TypeError, match="row .*expected an int"):
        diagonal_rank(lm.lazy(torch.randn(4, 4)), rows=rows)


def test_a_complex_expression_is_refused_by_name():
    x = lm.lazy(torch.randn(3, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"needs a real expression, got a \(3, 3\) complex64"):
        diagonal_rank(x)
