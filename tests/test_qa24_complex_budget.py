"""Spectral calls on complex products: the QR of a factor read ``.mH`` (a conjugated view)
factors its data (``conj(M) = conj(Q) conj(R)``) instead of letting torch copy it resolved, a
copy no plan counted: the least budget :class:`BudgetTooSmall` names bounds what torch
allocates (it was 2.4x under for a 38 x 3 @ 3 x 24 complex64 ``matrix_rank``; the rounding
floor's norms read a conjugated view's data too), and the answers still match torch's on the
dense matrix."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall

OPS = {
    "svdvals": (lm.linalg.svdvals, torch.linalg.svdvals),
    "matrix_rank": (lm.linalg.matrix_rank, torch.linalg.matrix_rank),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(8, 40),
    r=st.integers(1, 4),
    n=st.integers(8, 40),
    op=st.sampled_from(sorted(OPS)),
    dtype=st.sampled_from([torch.complex64, torch.complex128]),
    seed=st.integers(0, 2**16),
)
def test_complex_spectral_least_budget_bounds_the_allocations(m, r, n, op, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(m, r, dtype=dtype, generator=g)
    B = torch.randn(r, n, dtype=dtype, generator=g)
    X = lm.lazy(A) @ lm.lazy(B)
    dense = A.to(torch.complex128) @ B.to(torch.complex128)
    ours, theirs = OPS[op]
    try:
        ours(X, memory_budget=16)
    except BudgetTooSmall as refused:
        least, message = refused.minimum, str(refused)
    else:
        pytest.skip("no budget refused")
    with Allocated() as counted:
        got = ours(X, memory_budget=least)
    assert counted.peak - got.untyped_storage().nbytes() <= least, (counted.peak, least, message)
    expected = theirs(dense)
    if op == "matrix_rank":
        assert int(got) == min(m, n, r) == int(expected)
    else:
        k = min(m, n, r)
        tol = 1e-3 if dtype == torch.complex64 else 1e-9
        torch.testing.assert_close(got[:k].double(), expected[:k], rtol=tol, atol=tol * expected[0].item())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_svd_vectors_through_conjugated_factors(dtype):
    g = torch.Generator().manual_seed(3)
    A = torch.randn(30, 4, dtype=dtype, generator=g)
    B = torch.randn(4, 25, dtype=dtype, generator=g)
    U, S, Vh = lm.linalg.svd(lm.lazy(A) @ lm.lazy(B))
    dense = A.to(torch.complex128) @ B.to(torch.complex128)
    rebuilt = (U.to(torch.complex128) * S.double()) @ Vh.to(torch.complex128)
    tol = 1e-4 if dtype == torch.complex64 else 1e-10
    torch.testing.assert_close(rebuilt, dense, rtol=tol, atol=tol * dense.abs().max().item())
    eye = torch.eye(U.shape[-1], dtype=torch.complex128)
    torch.testing.assert_close(U.mH.to(torch.complex128) @ U.to(torch.complex128), eye, rtol=tol, atol=tol)
