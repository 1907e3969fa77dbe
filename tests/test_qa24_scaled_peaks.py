"""The predicted peaks kept by an expression's structure (``lazymat.linalg.peaks``) are keyed by
each term's scale too: a scaled product (its route copies a factor or the product to scale it)
built after its unscaled twin read the twin's smaller peak, so the least budget
:class:`BudgetTooSmall` named was under what torch allocates (20 x 2 @ 2 x 20 float64 svdvals,
``* 0.125``: 152 B named, 336 B allocated)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall

OPS = {"svdvals": (lm.linalg.svdvals, torch.linalg.svdvals),
       "matrix_rank": (lm.linalg.matrix_rank, torch.linalg.matrix_rank)}


def _least(op, X) -> int:
    with pytest.raises(BudgetTooSmall) as refused:
        op(X, memory_budget=16)
    return refused.value.minimum


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(4, 40),
    r=st.integers(1, 5),
    n=st.integers(4, 40),
    scale=st.sampled_from([0.125, -3.0, 0.5j, "tensor"]),
    where=st.sampled_from(["product", "first"]),
    op=st.sampled_from(sorted(OPS)),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.complex64]),
    seed=st.integers(0, 2**16),
)
def test_scaled_product_after_its_unscaled_twin_names_a_least_budget_that_holds(
        m, r, n, scale, where, op, dtype, seed):
    if scale == 0.5j and not dtype.is_complex:
        scale = -0.5
    if scale == "tensor":
        scale = torch.tensor(0.25, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, r, dtype=dtype, generator=g)
    B = torch.randn(r, n, dtype=dtype, generator=g)
    ours, theirs = OPS[op]
    _least(ours, lm.lazy(A) @ lm.lazy(B))  # the unscaled twin's peak is kept by its structure
    X = (lm.lazy(A) * scale) @ lm.lazy(B) if where == "first" else (lm.lazy(A) @ lm.lazy(B)) * scale
    least = _least(ours, X)
    with Allocated() as counted:
        got = ours(X, memory_budget=least)
    assert counted.peak - got.untyped_storage().nbytes() <= least, (counted.peak, least)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    k = scale.item() if isinstance(scale, torch.Tensor) else scale
    expected = theirs(A.to(wide) @ B.to(wide) * k)
    if op == "matrix_rank":
        assert int(got) == int(expected) == min(m, n, r)
    else:
        tol = 1e-9 if dtype == torch.float64 else 1e-3
        torch.testing.assert_close(got[:r].double(), expected[:r], rtol=tol, atol=tol * expected[0].item())
