"""square_segments answers its coefficient exactly, and det, slogdet, inv and solve read it so
(edge15, session 15; docs/linear-algebra.md).

Found by review: ``square_segments`` turned a coefficient past the float range into inf or 0
(``number``), and the segments' routes took a tensor-scaled coefficient as ``Term.coefficient``'s
float product, which overflows first: ``(A @ B) * 1e200 * 1e200 * t`` with ``t = 1e-300`` (the
matrix ``1e100 A B``) had ``c = inf``, so ``inv`` answered 0 and the factored det NaN."""

from fractions import Fraction
from unittest import mock

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.coefficient import Wide, times

_SCALES = [1e200, 1e-200, 1e300, 1e-300, 3.0, -0.5]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 5), k=st.integers(1, 3),
       numbers=st.lists(st.sampled_from(_SCALES), min_size=1, max_size=3),
       tensor=st.sampled_from([None, 1e-300, 1e300, 2.0]),
       complex_=st.booleans(), batch=st.sampled_from([(), (2,)]))
def test_the_coefficient_is_exact_and_the_routes_read_it(seed, n, k, numbers, tensor, complex_, batch):
    """Property: with the scales' exact product ``s`` in float64's range (scales past it
    folded between), ``c * S_1 @ ... @ S_j`` is ``s * A_1 ... A_k`` (eager float64, scaled once by
    ``s``), and det (factored: ``s^n prod det A_i``, via slogdet where ``s^n`` passes the range),
    inv and solve are eager torch's on that matrix."""
    exact = Fraction(1)
    for v in numbers:
        exact *= Fraction(v)
    if tensor is not None:
        exact *= Fraction(tensor)
    assume(1e-250 <= abs(exact) <= 1e250)  # the matrix itself in range, with room for its entries
    dtype = torch.complex128 if complex_ else torch.float64
    gen = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(*(batch if i == 0 else ()), n, n, generator=gen, dtype=dtype) for i in range(k)]
    X = lm.lazy(leaves[0])
    D = leaves[0]
    for leaf in leaves[1:]:
        X, D = X @ lm.lazy(leaf), D @ leaf
    for v in numbers:
        X = X * v
    if tensor is not None:
        X = X * torch.tensor(tensor, dtype=torch.float64)
    D = D * float(exact)

    c, segments = lm.linalg.square_segments(X)
    assert isinstance(c, (int, float, complex, Wide, torch.Tensor))
    out = segments[0].to_dense()
    for s in segments[1:]:
        out = out @ s.to_dense()
    out = out * c if isinstance(c, torch.Tensor) else times(out, c)
    torch.testing.assert_close(out, D, rtol=1e-9, atol=0)

    B = torch.randn(n, 2, generator=gen, dtype=dtype)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        got = lm.linalg.slogdet(X)
        inverse = lm.linalg.inv(X)
        Y = lm.linalg.solve(X, B)
    want = torch.linalg.slogdet(D)
    torch.testing.assert_close(got.logabsdet, want.logabsdet, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.sign, want.sign, rtol=1e-7, atol=1e-7)
    inverse = inverse.to_dense() if isinstance(inverse, lm.Expr) else inverse
    torch.testing.assert_close(inverse, torch.linalg.inv(D), rtol=1e-7, atol=0)
    torch.testing.assert_close(Y, torch.linalg.solve(D, B), rtol=1e-7, atol=0)


def test_a_coefficient_past_the_range_is_a_wide():
    eye = torch.eye(3, dtype=torch.float64)
    X = lm.lazy(eye) @ lm.lazy(eye.clone()) * 1e200 * 1e200
    c, _ = lm.linalg.square_segments(X)
    assert isinstance(c, Wide) and times(torch.tensor(1e-300, dtype=torch.float64), c).item() == 1e100
