"""svd and pinv by the compiled call of one matrix (``linalg.compiled._finisher``): the ``k`` leading
triplets of LAPACK's ``U``, ``S``, ``Vh`` are cut as views made by ``as_strided`` with the
tensors' own strides (column-major from LAPACK, row-major from the reduced route's rotation back).
Properties against float64 and the Moore-Penrose conditions, on random small chains (dense and
reduced routes), operands read transposed, real and complex, of full rank within the chain and
rank-deficient (a zero column in the middle factor: ``k`` below the rank bound)."""

import functools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_small14_single_run import fresh

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def chains(draw):
    """``m x r @ r x r @ r x n`` of random data (the middle factor maybe missing a column), each
    factor maybe read transposed, in a float or complex dtype."""
    m, n, r = draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    tensors = [torch.randn(*s, generator=gen, dtype=dtype) for s in ((m, r), (r, r), (r, n))]
    if draw(st.booleans()):
        tensors[1][:, draw(st.integers(0, r - 1))] = 0
    flips = tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    return tensors, flips


def wide(tensors):
    """The product in float64 (complex128)."""
    dtype = torch.complex128 if tensors[0].dtype.is_complex else torch.float64
    return functools.reduce(torch.matmul, [t.to(dtype) for t in tensors])


def tolerance(dtype, S):
    """Rounding of a float32 (float64) computation, relative to the largest kept value and grown
    with the condition of the kept values."""
    eps = 1e-4 if dtype in (torch.float32, torch.complex64) else 1e-10
    return eps * (float(S[0] / S[-1]) if S.numel() else 1.0)


@SETTINGS
@given(chains())
def test_svd_keeps_the_leading_triplets_of_the_product(case):
    tensors, flips = case
    svd = functools.partial(torch.linalg.svd, full_matrices=False)
    svd(fresh(tensors, flips))  # compiles the structure's call
    U, S, Vh = svd(fresh(tensors, flips))
    X = wide(tensors)
    m, n = X.shape
    k = S.shape[0]
    assert U.shape == (m, k) and Vh.shape == (k, n)
    expected = torch.linalg.svdvals(X)
    rank = int((expected > expected[0] * 1e-4).sum()) if expected.numel() else 0
    assert k == rank, (k, expected)  # (the zero column drops one; generic data keeps the rest)
    if not k:
        return
    tol = tolerance(tensors[0].dtype, S)
    scale = float(expected[0])
    torch.testing.assert_close(S.to(expected.dtype), expected[:k], rtol=tol, atol=tol * scale)
    back = (U.to(X.dtype) * S.to(X.dtype)) @ Vh.to(X.dtype)
    torch.testing.assert_close(back, X, rtol=tol, atol=tol * scale)
    eye = torch.eye(k, dtype=X.dtype)
    torch.testing.assert_close(U.to(X.dtype).mH @ U.to(X.dtype), eye, rtol=tol, atol=tol)
    torch.testing.assert_close(Vh.to(X.dtype) @ Vh.to(X.dtype).mH, eye, rtol=tol, atol=tol)


@SETTINGS
@given(chains())
def test_pinv_meets_the_moore_penrose_conditions(case):
    tensors, flips = case
    torch.linalg.pinv(fresh(tensors, flips))
    P = torch.linalg.pinv(fresh(tensors, flips))
    P = (P.to_dense() if hasattr(P, "to_dense") else P).to(wide(tensors).dtype)
    X = wide(tensors)
    assert P.shape == X.mT.shape
    S = torch.linalg.svdvals(X)
    S = S[S / S[0] > 1e-4] if S.numel() else S
    if not S.numel():  # a zero matrix (or an empty one): its pseudo-inverse is zero
        assert P.count_nonzero() == 0
        return
    tol = tolerance(tensors[0].dtype, S) * float(S[0] / S[-1])
    torch.testing.assert_close(X @ P @ X, X, rtol=tol, atol=tol * float(S[0]))
    torch.testing.assert_close(P @ X @ P, P, rtol=tol, atol=tol / float(S[-1]))
    torch.testing.assert_close((X @ P).mH, X @ P, rtol=tol, atol=tol)
    torch.testing.assert_close((P @ X).mH, P @ X, rtol=tol, atol=tol)
