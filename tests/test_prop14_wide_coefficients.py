"""Coefficients past the float range in linalg (docs/expressions.md "Scales and the float range").

Found (prop14, session 14): scale folding is exact (a product of number scales past float64's
range is a ``Wide``), but linalg read the coefficient of a single product as a float for its
square-segment routes: ``inv``/``solve`` of ``2**550 * (A' @ B) * 2**550`` (``A'`` holding
``2**-1000 A``, the matrix ``2**100 A @ B`` in range) divided by inf (zeros), or raised "scaled
by 0.0" for the reciprocal case; ``slogdet`` added ``log(inf)``; float32 ``inv`` divided by a
float64 coefficient rounded to a float32 inf. Every such read now applies the coefficient
exactly (:func:`lazymat.coefficient.times` steps, ``|c|^n`` by its log for ``slogdet``, ``det``
from the logs where ``c^n`` is past the range)."""

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

OPS = {
    "svdvals": (lambda X: LA.svdvals(X, full=True), torch.linalg.svdvals),
    "fro": (lambda X: LA.matrix_norm(X), torch.linalg.matrix_norm),
    "spectral": (lambda X: LA.matrix_norm(X, 2), lambda D: torch.linalg.matrix_norm(D, 2)),
    "nuc": (lambda X: LA.matrix_norm(X, "nuc"), lambda D: torch.linalg.matrix_norm(D, "nuc")),
    "det": (LA.det, torch.linalg.det),
    "logabsdet": (lambda X: LA.slogdet(X)[1], lambda D: torch.linalg.slogdet(D)[1]),
    "sign": (lambda X: LA.slogdet(X)[0], lambda D: torch.linalg.slogdet(D)[0]),
    "inv": (lambda X: _dense(LA.inv(X)), torch.linalg.inv),
    "solve": (lambda X: LA.solve(X, torch.ones(X.shape[-1], 2, dtype=X.dtype)),
              lambda D: torch.linalg.solve(D, torch.ones(D.shape[-1], 2, dtype=D.dtype))),
    "pinv": (lambda X: _dense(LA.pinv(X)), torch.linalg.pinv),
    "trace": (LA.trace, lambda D: torch.diagonal(D, dim1=-2, dim2=-1).sum(-1)),
    "vector_norm": (lambda X: torch.linalg.vector_norm(X), torch.linalg.vector_norm),
    "to_dense": (lambda X: X.to_dense(), lambda D: D),
    "eigvals": (lambda X: LA.eigvals(X, full=True).abs().sort().values,
                lambda D: torch.linalg.eigvals(D).abs().sort().values),
}


def _dense(P):
    return P.to_dense() if isinstance(P, lm.Expr) else P


def _matrices(gen, n, count):
    """``count`` well-conditioned ``n x n`` float64 matrices (``randn + 2 sqrt(n) I``)."""
    shift = 2 * math.sqrt(n) * torch.eye(n, dtype=torch.float64)
    return [torch.randn(n, n, generator=gen, dtype=torch.float64) + shift for _ in range(count)]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.sampled_from([1, 2, 3, 5, 40]),
       dtype=st.sampled_from([torch.float64, torch.float32]),
       kind=st.sampled_from(["pair", "chain", "outer"]), k1=st.integers(-600, 600),
       k2=st.integers(-600, 600), s=st.integers(-40, 40),
       op=st.sampled_from(sorted(OPS)))
@example(seed=0, n=4, dtype=torch.float64, kind="pair", k1=550, k2=550, s=100, op="inv")
@example(seed=0, n=4, dtype=torch.float64, kind="chain", k1=-550, k2=-550, s=-100, op="solve")
@example(seed=0, n=40, dtype=torch.float64, kind="chain", k1=600, k2=600, s=0, op="logabsdet")
@example(seed=0, n=3, dtype=torch.float32, kind="pair", k1=80, k2=80, s=60, op="inv")
def test_scales_past_the_float_range_answer_as_torch_on_the_formed_matrix(seed, n, dtype, kind, k1, k2, s,
                                                                         op):
    """Property: number scales ``2**k1`` and ``2**k2`` (their product past the dtype's range for
    most draws) on a product whose leaf data carry ``2**-(k1 + k2 - s)``, so that the matrix is
    ``2**s`` times a well-conditioned product: each call answers as torch on the formed
    matrix in float64 (the scales cancel exactly in powers of two)."""
    limit = 1000 if dtype == torch.float64 else 100  # the leaf data stay normal numbers
    k1, k2 = (max(-limit, min(limit, k)) for k in (k1, k2))
    d = max(-limit, min(limit, k1 + k2 - s))
    s = k1 + k2 - d
    if dtype == torch.float32 and abs(s) > 40 or abs(s) > 300:
        s = max(-40, min(40, s))
        d = k1 + k2 - s
        if abs(d) > limit:
            return
    gen = torch.Generator().manual_seed(seed)
    A, B, C = (M.to(dtype).double() for M in _matrices(gen, n, 3))  # exact in dtype
    lazy = lambda M: lm.lazy(M.to(dtype))  # noqa: E731
    a = lazy(A * 2.0**-d)
    if kind == "pair":
        X, D = 2.0**k1 * (a @ lazy(B)) * 2.0**k2, A @ B
    elif kind == "chain":
        X, D = (2.0**k1 * a) @ lazy(C) @ (lazy(B) * 2.0**k2), A @ C @ B
    else:
        X, D = 2.0**k1 * (a @ (2.0**k2 * lazy(B))), A @ B
    D = D * 2.0**s
    if op == "det" and dtype == torch.float32 and n > 5:  # (its value alone passes float32's range)
        op = "logabsdet"
    ours, theirs = OPS[op]
    got, want = ours(X), theirs(D)
    assert got.dtype == (want.to(dtype) if not want.is_complex() else want).dtype or op == "eigvals"
    got = got.to(torch.float64)
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    if op == "logabsdet":  # an absolute error: the log of a relative one
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * n)
        return
    assert torch.isfinite(got).all(), (got, want)
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=tol * n, atol=tol * n * scale)
