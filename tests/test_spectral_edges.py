"""Edges of the spectral functions against dense torch.linalg in float64: torch's tolerance
rules, exact cancellation, zero eigenvalues, empty shapes, gradients of rank-deficient
stacks, non-finite input and bad arguments."""

import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, randn


def _prescribed(gen, m, n, s, batch=()):
    """``(X, D)``: a two-factor product with singular values ``s`` (rank ``len(s)``)."""
    k = len(s)
    Q1 = torch.linalg.qr(randn(gen, *batch, m, k))[0]
    Q2 = torch.linalg.qr(randn(gen, *batch, n, k))[0]
    a, b = Q1 * s, Q2.mT
    return lm.lazy(a) @ lm.lazy(b), a @ b


SPECTRUM = torch.tensor([10.0, 1.0, 1e-3, 1e-6], dtype=torch.float64)
ATOLS = [None, 0.0, 1e-7, 1e-4, 0.5, 5.0]
RTOLS = [None, 0.0, 1e-8, 1e-5, 1e-2, 0.5]


def _torch_tol(D, atol, rtol):
    """torch's documented threshold, to know which cases sit in the dense rounding noise."""
    S = torch.linalg.svdvals(D)
    eps = torch.finfo(D.dtype).eps * max(D.shape[-2:])
    rt = rtol if rtol is not None else (0.0 if atol is not None and atol > 0 else eps)
    return max(atol or 0.0, rt * S.max().item())


@pytest.mark.parametrize("atol", ATOLS)
@pytest.mark.parametrize("rtol", RTOLS)
def test_tolerances_follow_torch(gen, atol, rtol):
    # a matrix that is its own core: torch's answer for every combination, zeros included
    s = torch.tensor([10.0, 3.0, 1.0, 1e-3, 1e-5, 1e-9], dtype=torch.float64)
    Q1, Q2 = (torch.linalg.qr(randn(gen, 6, 6))[0] for _ in range(2))
    D = Q1 @ torch.diag(s) @ Q2.T
    X = lm.lazy(D)
    assert torch.equal(LA.matrix_rank(X, atol=atol, rtol=rtol),
                       torch.linalg.matrix_rank(D, atol=atol, rtol=rtol))
    assert_close(LA.pinv(X, atol=atol, rtol=rtol).to_dense(),
                 torch.linalg.pinv(D, atol=atol, rtol=rtol), rtol=1e-6)
    # a low-rank product: the same wherever torch's threshold is above the dense rounding noise
    X, D = _prescribed(gen, 10, 12, SPECTRUM)
    if _torch_tol(D, atol, rtol) < 1e-12:
        assert LA.matrix_rank(X, atol=atol, rtol=rtol) == 4  # the noise is not counted
        return
    assert torch.equal(LA.matrix_rank(X, atol=atol, rtol=rtol),
                       torch.linalg.matrix_rank(D, atol=atol, rtol=rtol))
    assert_close(LA.pinv(X, atol=atol, rtol=rtol).to_dense(),
                 torch.linalg.pinv(D, atol=atol, rtol=rtol), rtol=1e-6)


def test_batched_tensor_tolerances_and_legacy_positional_forms(gen):
    X, D = _prescribed(gen, 9, 7, SPECTRUM, batch=(3,))
    atol = torch.tensor([1e-7, 1e-4, 2.0], dtype=torch.float64)
    assert torch.equal(LA.matrix_rank(X, atol=atol), torch.linalg.matrix_rank(D, atol=atol))
    assert torch.equal(torch.linalg.matrix_rank(X, 1e-4), torch.linalg.matrix_rank(D, 1e-4))
    assert_close(torch.linalg.pinv(X, 1e-2).to_dense(), torch.linalg.pinv(D, 1e-2), rtol=1e-8)
    with pytest.raises(TypeError, match="not both"):
        LA.matrix_rank(X, 1e-4, atol=1e-3)


def _cancelling(gen):
    a, b, c, d = randn(gen, 9, 3), randn(gen, 3, 8), randn(gen, 9, 2), randn(gen, 2, 8)
    A, B, C, Dl = (lm.lazy(t) for t in (a, b, c, d))
    return [A @ B - A @ B, A @ B + A @ (-B), (A @ B + C @ Dl) - C @ Dl - A @ B,
            lm.lazy(a @ b) - lm.lazy(a @ b)]


def test_exact_cancellation_is_the_zero_matrix(gen):
    for X in _cancelling(gen):
        D = X.to_dense()  # zero, or rounding noise where the dense sums come in another order
        assert D.abs().max() < 1e-14
        assert LA.matrix_rank(X) == torch.linalg.matrix_rank(torch.zeros_like(D)) == 0
        assert LA.matrix_rank(X, atol=0.0, rtol=0.0) == 0
        assert torch.count_nonzero(LA.pinv(X).to_dense()) == 0
        assert LA.svdvals(X).shape == (0,) and torch.count_nonzero(LA.svdvals(X, full=True)) == 0
        assert LA.matrix_norm(X, "nuc") == 0 and LA.matrix_norm(X, 2) == 0
        assert torch.isnan(LA.cond(X))  # 0 / 0, as torch.linalg.cond of the zero matrix
        U, S, Vh = LA.svd(X)
        assert U.shape == (9, 0) and S.shape == (0,) and Vh.shape == (0, 8)
        assert LA.truncate(X, 3).to_dense().abs().max() == 0


def test_cancellation_leaves_the_true_rank(gen):
    a, b, c, d = randn(gen, 12, 3), randn(gen, 3, 10), randn(gen, 12, 2), randn(gen, 2, 10)
    X = lm.lazy(a) @ lm.lazy(b) + lm.lazy(c) @ lm.lazy(d) - lm.lazy(a) @ lm.lazy(b)
    D = c @ d
    assert LA.matrix_rank(X) == 2
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[:2])
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-8)


def _square_cases(gen):
    a, b, c = randn(gen, 8, 3), randn(gen, 3, 3), randn(gen, 3, 8)
    b[:, 0] = b[:, 1]  # rank 2 inside a width-3 product: one zero eigenvalue in the core
    e, f = randn(gen, 8, 2), randn(gen, 2, 8)
    A, B, C, E, F = (lm.lazy(t) for t in (a, b, c, e, f))
    nil = torch.zeros(8, 8, dtype=torch.float64)
    nil[0, 1] = nil[1, 2] = 1.0  # nilpotent, rank 2
    G = lm.lazy(randn(gen, 8, 8))
    return [A @ B @ C, A @ B @ C + E @ F, A @ B @ C + E @ F - E @ F, E @ F - E @ F,
            lm.lazy(nil[:, :2]) @ lm.lazy(nil[:2, :]),
            G + A @ B @ C - G,  # its own core, evaluated densely: rounding noise, not eigenvalues
            (A @ B @ C + E @ F) @ (A @ B @ C + E @ F) - G @ G + G @ G]


def test_eig_returns_true_eigenvectors_for_every_pair(gen):
    for X in _square_cases(gen):
        D = X.to_dense()
        vals, vecs = LA.eig(X)
        scale = max(torch.linalg.matrix_norm(D, 2).item(), 1.0)
        resid = D.to(vecs.dtype) @ vecs - vecs * vals[..., None, :]
        assert resid.numel() == 0 or resid.abs().max() < 1e-12 * scale, X
        assert_close(torch.linalg.vector_norm(vecs, dim=-2), torch.ones(vals.shape, dtype=torch.float64))
        dense = torch.linalg.eigvals(D)
        nonzero = dense[dense.abs() > 1e-6 * scale]
        got = LA.eigvals(X)
        for v in nonzero:
            assert (got - v).abs().min() < 1e-8 * scale
        assert (got.abs() > 1e-6 * scale).sum() == len(nonzero)


EMPTY = [((0, 3), 2), ((3, 0), 2), ((0, 0), 0), ((0, 3, 3), 3), ((2, 0, 4), 2), ((2, 4, 0), 1)]
OPS = {
    "svdvals": lambda f, X: f.svdvals(X),
    "svd": lambda f, X: [t.shape for t in f.svd(X, full_matrices=False)],
    "eigvals": lambda f, X: f.eigvals(X),
    "eig": lambda f, X: [t.shape for t in f.eig(X)],
    "matrix_rank": lambda f, X: f.matrix_rank(X),
    "pinv": lambda f, X: (f.pinv(X).to_dense() if lm.is_lazy(f.pinv(X)) else f.pinv(X)),
    "cond": lambda f, X: f.cond(X),
    "trace": lambda f, X: (f.trace(X) if f is LA else torch.diagonal(X, dim1=-2, dim2=-1).sum(-1)),
    "diagonal": lambda f, X: (f.diagonal(X) if f is LA else torch.diagonal(X, dim1=-2, dim2=-1)),
    **{f"norm {o}": functools.partial(lambda f, X, o: f.matrix_norm(X, o), o=o)
       for o in ["fro", "nuc", 2, -2, 1, -1, math.inf, -math.inf]},
}


def _outcome(fn, *args):
    try:
        return "ok", fn(*args)
    except (RuntimeError, ValueError, IndexError) as e:
        return "error", e


@pytest.mark.parametrize("shape,inner", EMPTY)
@pytest.mark.parametrize("op", list(OPS))
def test_empty_shapes_like_torch(gen, shape, inner, op):
    *batch, m, n = shape
    a, b = randn(gen, *batch, m, inner), randn(gen, *batch, inner, n)
    D = a @ b
    for X in (lm.lazy(a) @ lm.lazy(b), lm.lazy(D)):
        want_kind, want = _outcome(OPS[op], torch.linalg, D)
        got_kind, got = _outcome(OPS[op], LA, X)
        if want_kind == "error":
            # torch refuses (non-square eig, amin over nothing): so does lazymat, by name
            assert got_kind == "error", (op, shape, got)
            assert str(tuple(shape)) in str(got) or "non-zero size" in str(got) or "empty" in str(got)
            continue
        assert got_kind == "ok", (op, shape, got)
        if isinstance(want, list):
            assert want == got
        elif op in ("matrix_rank",):
            assert torch.equal(got, want)
        else:
            assert got.shape == want.shape and got.dtype == want.dtype
            torch.testing.assert_close(got, want)


def test_gradients_of_rank_deficient_stacks_match_dense():
    """Nuclear norm, singular values and the pseudo-inverse of ``A B + A C`` (stacked factor
    ``[A, A]`` has rank 3 of 6): QR's backward divided by its zero diagonal (NaN)."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a, b, c = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                   for s in [(9, 3), (3, 7), (3, 7)])
        w = torch.randn(7, 9, generator=g, dtype=torch.float64)

        def loss(lib, X, w=w):
            P = lib.pinv(X)
            P = P.to_dense() if lm.is_lazy(P) else P
            return lib.matrix_norm(X, "nuc") + lib.svdvals(X)[:2].square().sum() + (P * w).sum()

        A, B, C = lm.lazy(a), lm.lazy(b), lm.lazy(c)
        got = torch.autograd.grad(loss(LA, A @ B + A @ C), (a, b, c))
        want = torch.autograd.grad(loss(torch.linalg, a @ b + a @ c), (a, b, c))
        for g1, g2 in zip(got, want, strict=True):
            assert torch.isfinite(g1).all(), seed
            assert_close(g1, g2, rtol=1e-7)


def test_gradients_of_the_svd_factors_match_dense(gen):
    a, b, c = (randn(gen, *s).requires_grad_() for s in [(9, 3), (3, 2), (2, 8)])
    w1, w2 = randn(gen, 9, 2), randn(gen, 2, 8)

    def loss(U, S, Vh):  # sign-invariant: U diag(S) and the projector V V^H
        return ((U * S) @ (U * S).mT * (w1 @ w1.mT)).sum() + ((Vh.mT @ Vh) * (w2.mT @ w2)).sum()

    got = torch.autograd.grad(loss(*LA.svd(lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c))), (a, b, c))
    U, S, Vh = torch.linalg.svd(a @ b @ c, full_matrices=False)
    want = torch.autograd.grad(loss(U[:, :2], S[:2], Vh[:2]), (a, b, c))
    for g1, g2 in zip(got, want, strict=True):
        assert_close(g1, g2, rtol=1e-7)


def test_non_finite_input_gives_nan_like_torch(gen):
    a, b = randn(gen, 6, 2), randn(gen, 2, 5)
    a[1, 1] = math.inf
    X = lm.lazy(a) @ lm.lazy(b)
    assert torch.isnan(LA.svdvals(X)).all() and torch.isnan(torch.linalg.svdvals(a @ b)).all()
    assert torch.isnan(LA.matrix_norm(X, "nuc")) and torch.isnan(LA.matrix_norm(X, 2))
    assert LA.svdvals(X).shape == (2,)
    a[1, 1] = math.nan
    assert torch.isnan(LA.svdvals(X)).all() and torch.isnan(LA.svd(X)[0]).all()
    sq = lm.lazy(a) @ lm.lazy(randn(gen, 2, 6))
    assert torch.isnan(LA.eigvals(sq)).all()
    assert torch.isnan(LA.svdvals(lm.lazy(a @ b))).all()


def test_float8_leaves_are_upcast(gen):
    a, b = randn(gen, 12, 3), randn(gen, 3, 10)
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    X = lm.lazy(a8) @ lm.lazy(b8)
    ref = torch.linalg.svdvals(a8.double() @ b8.double())[:3]
    assert_close(LA.svdvals(X).double(), ref, rtol=0.1)


def test_truncate_validates_k(gen):
    X, D = _prescribed(gen, 8, 6, SPECTRUM)
    with pytest.raises(TypeError, match="2.0"):
        LA.truncate(X, 2.0)
    with pytest.raises(TypeError, match="int"):
        X.truncate("2")
    with pytest.raises(TypeError, match="True"):
        X.truncate(True)
    with pytest.raises(ValueError, match="-1"):
        X.truncate(-1)
    import numpy as np

    U, S, Vh = torch.linalg.svd(D)
    assert_close(X.truncate(np.int64(2)).to_dense(), (U[:, :2] * S[:2]) @ Vh[:2])
    assert_close(X.truncate(torch.tensor(1)).to_dense(), (U[:, :1] * S[:1]) @ Vh[:1])


def test_gradients_of_svd_factors_and_eigenvalues_of_rank_deficient_stacks():
    """``A B + A C``: the stacked factor ``[A, A]`` is rank-deficient. Sign-invariant losses
    of ``U``, ``S``, ``Vh`` and of the eigenvalues differentiate like dense torch."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        a, b, c = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                   for s in [(7, 3), (3, 7), (3, 7)])
        w1, w2 = (torch.randn(7, 7, generator=g, dtype=torch.float64) for _ in range(2))

        def loss(U, S, Vh, w1=w1, w2=w2):
            return ((U * S) @ (U * S).mT * w1).sum() + ((Vh.mT @ Vh) * w2).sum()

        A, B, C = lm.lazy(a), lm.lazy(b), lm.lazy(c)
        vals = LA.eigvals(A @ B + A @ C)
        got = torch.autograd.grad(loss(*LA.svd(A @ B + A @ C)) + vals.real.sum() + vals.abs()[0],
                                  (a, b, c))
        D = a @ b + a @ c
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        dv = torch.linalg.eigvals(D)
        dv = dv[dv.abs().argsort(descending=True)][:3]
        want = torch.autograd.grad(loss(U[:, :3], S[:3], Vh[:3]) + dv.real.sum() + dv.abs()[0],
                                   (a, b, c))
        for g1, g2 in zip(got, want, strict=True):
            assert_close(g1, g2, rtol=1e-7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 40), st.integers(1, 6), st.integers(2, 40), st.sampled_from([0.0, 1e-9, 1e-5, 1.0]),
       st.integers(0, 2**31 - 1))
def test_frobenius_norm_of_a_nearly_cancelling_sum_is_accurate(m, k, n, small, seed):
    """``A@B + small * C@D - A'@B'`` with ``A' == A``, ``B' == B`` held in other tensors: the norm
    equals dense float64 to 1e-9 relative to the result (a Gram route leaves sqrt(eps)-relative
    noise of the factors' scale here), and is exactly 0 when ``small`` is 0."""
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, k), (k, n)))
    c, d = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((m, 1), (1, n)))
    X = lm.lazy(a) @ lm.lazy(b) + small * (lm.lazy(c) @ lm.lazy(d)) - lm.lazy(a.clone()) @ lm.lazy(b.clone())
    D = a @ b + small * (c @ d) - a @ b
    want = torch.linalg.matrix_norm(small * (c @ d))  # the exact value, free of D's own rounding
    got = LA.matrix_norm(X)
    scale = torch.linalg.matrix_norm(a @ b).item()
    if small == 0:
        assert got.item() == 0.0
    else:
        assert abs(got.item() - want.item()) <= 1e-9 * want.item() + 1e-13 * scale
    assert abs(got.item() - torch.linalg.matrix_norm(D).item()) <= 1e-12 * scale + 1e-9 * want.item()
