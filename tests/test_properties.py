"""Random expression trees against eager torch (float64, 1e-10 relative)."""

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close as _assert_close


def assert_close(actual, expected, rtol=1e-10):
    """Relative to the larger of the result's scale and 1: terms of size ~1 may cancel
    exactly in one association order and leave rounding noise in another."""
    scale = max(expected.abs().max().item() if expected.numel() else 0.0, 1.0)
    _assert_close(actual, expected, rtol=rtol, atol=rtol * scale)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _factor_batch(draw, batch):
    """A batch shape that broadcasts to ``batch``: leading dims dropped, some set to 1."""
    keep = draw(st.integers(0, len(batch)))
    sub = list(batch[len(batch) - keep:])
    return tuple(1 if draw(st.booleans()) and draw(st.booleans()) else s for s in sub)


@st.composite
def chains(draw, rows, cols, batch, dtype, leaves=None):
    """(lazy, dense) pair for a product of 1..6 factors from ``rows`` to ``cols``; the leaf
    tensors are appended to ``leaves`` when given (and then require grad)."""
    n = draw(st.integers(1, 6))
    dims = [rows] + [draw(st.integers(1, 5)) for _ in range(n - 1)] + [cols]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    lazy = dense = None
    for i in range(n):
        shape = (*_factor_batch(draw, batch), dims[i], dims[i + 1])
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        if leaves is not None:
            t.requires_grad_()
            leaves.append(t)
        x = lm.lazy(t) if draw(st.booleans()) or i == 0 else t
        lazy = lm.lazy(x) if lazy is None else lazy @ x
        dense = t if dense is None else dense @ t
    return lazy, dense


@st.composite
def expressions(draw, dtype=torch.float64, leaves=None):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    X, D = draw(chains(m, n, batch, dtype, leaves))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["T", "scale", "add", "index", "matmul", "lmatmul", "sum_factor",
                                   "cat", "new_axis", "batch_list", "tensor_scale"]))
        if op == "T":
            X, D = X.mT, D.mT
        elif op == "scale":
            k = draw(st.floats(0.1, 3)) * draw(st.sampled_from([-1, 1]))
            X, D = k * X, k * D
        elif op == "add":
            Y, E = draw(chains(D.shape[-2], D.shape[-1], tuple(D.shape[:-2]), dtype, leaves))
            X, D = X - Y, D - E
        elif op == "matmul":
            Y, E = draw(chains(D.shape[-1], draw(st.integers(1, 5)), tuple(D.shape[:-2]), dtype, leaves))
            X, D = X @ Y, D @ E
        elif op == "lmatmul":
            Y, E = draw(chains(draw(st.integers(1, 5)), D.shape[-2], tuple(D.shape[:-2]), dtype, leaves))
            X, D = Y @ X, E @ D
        elif op == "sum_factor":  # a sum used inside a product: a block or stacked factors
            k = draw(st.integers(1, 5))
            Y, E = draw(chains(D.shape[-1], k, tuple(D.shape[:-2]), dtype, leaves))
            Z, F = draw(chains(D.shape[-1], k, (), dtype, leaves))
            X, D = X @ (Y + Z), D @ (E + F)
        elif op == "cat":
            Y, E = draw(chains(D.shape[-2], draw(st.integers(1, 4)), tuple(D.shape[:-2]), dtype, leaves))
            X, D = lm.cat([X, Y], dim=-1), torch.cat([D, E.expand(*D.shape[:-1], -1)], -1)
        elif op == "new_axis":
            X, D = X[None], D[None]
        elif op == "tensor_scale":
            k = torch.tensor(draw(st.floats(0.5, 2)), dtype=torch.float64)
            X, D = X * k, D * k
        elif op == "batch_list" and D.ndim > 2:
            idx = draw(st.lists(st.integers(-D.shape[0], D.shape[0] - 1), min_size=1, max_size=3))
            X, D = X[idx], D[idx]
        else:
            rows = D.shape[-2]
            lo = draw(st.integers(0, rows - 1))
            hi = draw(st.integers(lo + 1, rows))
            if D.ndim > 2 and draw(st.booleans()):
                b = draw(st.integers(0, D.shape[0] - 1))
                X, D = X[b], D[b]
            elif draw(st.booleans()):
                X, D = X[..., lo:hi, :], D[..., lo:hi, :]
            else:
                cols = draw(st.lists(st.integers(0, D.shape[-1] - 1), min_size=1, max_size=4))
                X, D = X[..., cols], D[..., cols]
    return X, D


@SETTINGS
@given(expressions())
def test_to_dense_matches_eager(pair):
    X, D = pair
    assert X.shape == D.shape
    assert_close(X.to_dense(), D)


@SETTINGS
@given(expressions(), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_matvec_matches_eager(pair, k, seed):
    X, D = pair
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(D.shape[-1], generator=g, dtype=torch.float64)
    assert_close(X @ v, D @ v)
    V = torch.randn(D.shape[-1], k, generator=g, dtype=torch.float64)
    assert_close((X @ V).to_dense(), D @ V)


@settings(max_examples=40, deadline=None)
@given(expressions(dtype=torch.float32))
def test_float32(pair):
    X, D = pair
    assert X.dtype == torch.float32
    assert_close(X.to_dense().double(), D.double(), rtol=1e-4)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_gradients_match_eager(data):
    leaves: list[torch.Tensor] = []
    X, D = data.draw(expressions(leaves=leaves))
    w = torch.randn(D.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (X.to_dense() * w).sum().backward()
    got = [None if t.grad is None else t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    (D * w).sum().backward()
    for a, t in zip(got, leaves, strict=True):
        if t.grad is None or a is None:  # a leaf no entry reads: None here, zeros or None in eager
            assert (a is None or not a.any()) and (t.grad is None or not t.grad.any())
        else:
            assert_close(a, t.grad)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_spectral_answers_match_dense(pair):
    """Singular values from the core equal the dense ones; the rest of the dense spectrum is
    zero (the factor form is exact), and norms, trace and diagonal agree."""
    X, D = pair
    S = lm.linalg.svdvals(X)
    dense = torch.linalg.svdvals(D)
    r = S.shape[-1]
    scale = max(dense.max().item() if dense.numel() else 0.0, 1.0)
    _assert_close(S, dense[..., :r], rtol=1e-10, atol=1e-10 * scale)
    assert dense[..., r:].numel() == 0 or dense[..., r:].max() <= 1e-10 * scale
    assert_close(lm.linalg.matrix_norm(X), torch.linalg.matrix_norm(D))
    assert_close(lm.linalg.matrix_norm(X, "nuc"), torch.linalg.matrix_norm(D, "nuc"))
    if D.shape[-1] == D.shape[-2]:
        assert_close(lm.linalg.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1))
        assert_close(lm.linalg.diagonal(X), torch.diagonal(D, dim1=-2, dim2=-1))
        ev = lm.linalg.eigvals(X, full=True)
        ref = torch.linalg.eigvals(D)
        # same characteristic polynomial: compare the sums of powers 1..3 of the eigenvalues
        for p in (1, 2, 3):
            _assert_close(ev.pow(p).sum(-1), ref.pow(p).sum(-1), rtol=1e-8,
                          atol=1e-8 * scale**p * D.shape[-1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_explain_agrees_with_the_plan_on_random_expressions(pair):
    from lazymat.explain import OPS

    X, D = pair
    report = X.explain()
    assert report.flops == X.plan().flops == sum(r.flops for r in report.rows)
    for op in OPS:
        if op in ("eigvals", "eig", "eigvalsh", "eigh", "det", "slogdet", "inv", "solve") and (
                D.shape[-1] != D.shape[-2]):
            with pytest.raises(ValueError, match="square"):
                X.explain(op)
            continue
        r = X.explain(op)
        assert r.flops >= 0 and r.planned.peak_bytes >= 0 and str(r)


CAST_TARGETS = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex64,
                torch.complex128]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), st.sampled_from(CAST_TARGETS))
def test_casts_match_torch(pair, dtype):
    """``X.to(dtype)`` is torch's ``D.to(dtype)``: a narrowing cast rounds the float64 result
    once (not every factor, whose product could overflow or lose digits); a widening one is
    exact wherever it is applied."""
    X, D = pair
    Y = X.to(dtype)
    assert Y.dtype == dtype and Y.shape == D.shape
    got, want = Y.to_dense(), D.to(dtype)
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert_close(got.to(torch.complex128), want.to(torch.complex128), rtol=max(2 * eps, 1e-10))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_narrowing_cast_of_a_product_rounds_the_result(dtype):
    """[[1e5]] @ [[1e-5]] is 1; cast factor by factor it overflows float16 (inf)."""
    big = torch.tensor([[1e5, 3e4]], dtype=torch.float64)
    small = torch.tensor([[1e-5], [2e-5]], dtype=torch.float64)
    X = (lm.lazy(big) @ lm.lazy(small)).to(dtype)
    want = (big @ small).to(dtype)
    torch.testing.assert_close(X.to_dense(), want, rtol=0, atol=0)
    torch.testing.assert_close((2.0 * X.T).to_dense(), (2.0 * want.T), rtol=0, atol=0)


@st.composite
def low_rank_sums(draw):
    """``(X, D, rank)``: a sum of 1..3 random products whose inner dim is below the outer
    ones, some terms cancelled exactly by a negated copy; ``rank`` from the dense SVD."""
    batch = tuple(draw(st.lists(st.integers(1, 2), max_size=1)))
    m, n = draw(st.integers(2, 9)), draw(st.integers(2, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    X = D = None
    for _ in range(draw(st.integers(1, 3))):
        k = draw(st.integers(1, max(1, min(m, n) - 1)))
        a = torch.randn(*batch, m, k, generator=g, dtype=torch.float64)
        b = torch.randn(*batch, k, n, generator=g, dtype=torch.float64)
        if draw(st.booleans()) and k > 1:  # rank-deficient inside: a repeated column
            a[..., -1] = a[..., 0]
        term, dense = lm.lazy(a) @ lm.lazy(b), a @ b
        X, D = (term, dense) if X is None else (X + term, D + dense)
        if draw(st.booleans()):  # an exact cancellation, written one of two ways
            X = X - term if draw(st.booleans()) else X + lm.lazy(a) @ (-lm.lazy(b))
            D = D - dense
    sv = torch.linalg.svdvals(D)
    scale = max(sv.max().item() if sv.numel() else 0.0, 1.0)
    return X, D, (sv > 1e-8 * scale).sum(-1), scale


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(low_rank_sums())
def test_rank_deficiency_and_cancellation(case):
    """Rank, singular values, pseudo-inverse and eigenpairs of low-rank sums with exact
    cancellation equal dense torch's; nothing below the rounding floor survives as noise."""
    X, D, rank, scale = case
    assert torch.equal(lm.linalg.matrix_rank(X), rank)
    S = lm.linalg.svdvals(X)
    assert S.shape[-1] == (int(rank.max()) if rank.numel() else 0)
    _assert_close(lm.linalg.svdvals(X, full=True), torch.linalg.svdvals(D), rtol=1e-9, atol=1e-9 * scale)
    P = torch.linalg.pinv(D, atol=1e-8 * scale)
    _assert_close(lm.linalg.pinv(X).to_dense(), P, rtol=1e-6, atol=1e-6 * max(P.abs().max().item(), 1.0))
    if D.shape[-1] == D.shape[-2]:
        vals, vecs = lm.linalg.eig(X)
        resid = D.to(vecs.dtype) @ vecs - vecs * vals[..., None, :]
        assert resid.numel() == 0 or resid.abs().max() < 1e-9 * scale
        if vecs.numel():
            _assert_close(torch.linalg.vector_norm(vecs, dim=-2).real,
                          torch.ones(vals.shape, dtype=torch.float64), rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=2), st.integers(0, 3), st.integers(0, 3),
       st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_empty_dims_like_torch(batch, m, n, k, seed):
    """Shapes with a zero dim (rows, columns, inner or batch) answer like torch on the dense
    empty tensor, or raise where torch raises."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, m, k, generator=g, dtype=torch.float64)
    b = torch.randn(*batch, k, n, generator=g, dtype=torch.float64)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    _assert_close(lm.linalg.svdvals(X, full=True), torch.linalg.svdvals(D), atol=1e-12)
    assert torch.equal(lm.linalg.matrix_rank(X), torch.linalg.matrix_rank(D))
    assert lm.linalg.pinv(X).shape == torch.linalg.pinv(D).shape
    assert_close(lm.linalg.truncate(X, min(m, n)).to_dense(), D)  # all triplets: X itself
    for ord in ("fro", "nuc", 2, 1, float("inf")):
        _assert_close(lm.linalg.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord), atol=1e-12)
    if m == n:
        assert_close(lm.linalg.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1))
        assert lm.linalg.eigvals(X, full=True).shape == torch.linalg.eigvals(D).shape
    if min(m, n) == 0 or 0 in batch:
        assert torch.equal(lm.linalg.cond(X), torch.linalg.cond(D))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([None, 0.0, 1e-9, 1e-5, 1e-2, 0.3, 3.0]),
       st.sampled_from([None, 0.0, 1e-9, 1e-5, 1e-3, 0.05, 0.5]))
def test_tolerances_like_torch(seed, atol, rtol):
    """matrix_rank and pinv keep what torch keeps for any atol/rtol, wherever torch's
    threshold is clear of the singular values and of the dense rounding noise."""
    g = torch.Generator().manual_seed(seed)
    k = 4
    jitter = torch.empty(k, dtype=torch.float64).uniform_(0.5, 2, generator=g)
    s = torch.logspace(1, -7, k, dtype=torch.float64) * jitter
    s = s.sort(descending=True).values
    Q1 = torch.linalg.qr(torch.randn(9, k, generator=g, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(7, k, generator=g, dtype=torch.float64))[0]
    # a core of width 6 holding rank 4: two directions split over repeated columns
    a = torch.cat([Q1 * s, Q1[:, :2] * s[:2]], dim=1)
    half = torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64)[:, None]
    b = torch.cat([Q2.T * half, 0.5 * Q2.T[:2]], dim=0)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    eps = torch.finfo(torch.float64).eps
    rt = rtol if rtol is not None else (0.0 if atol is not None and atol > 0 else eps * 9)
    tol = max(atol or 0.0, rt * s[0].item())
    if tol < 1e-12:  # torch would count the dense rounding noise; lazymat never does
        assert lm.linalg.matrix_rank(X, atol=atol, rtol=rtol) == k
        return
    if ((s / tol - 1).abs() < 0.1).any():
        return  # on a singular value: not determined
    assert torch.equal(lm.linalg.matrix_rank(X, atol=atol, rtol=rtol),
                       torch.linalg.matrix_rank(D, atol=atol, rtol=rtol))
    P = torch.linalg.pinv(D, atol=atol, rtol=rtol)
    _assert_close(lm.linalg.pinv(X, atol=atol, rtol=rtol).to_dense(), P, rtol=1e-6,
                  atol=1e-6 * max(P.abs().max().item(), 1.0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 8), st.integers(2, 8), st.integers(1, 3), st.booleans(), st.booleans(),
       st.integers(0, 2**31 - 1))
@example(2, 3, 1, False, False, 4)  # a rank-1 sum that is its own core: SVD backward gave NaN
def test_spectral_gradients_of_rank_deficient_sums(m, n, k, shared_left, negate, seed):
    """Gradients of the top singular value, the nuclear norm and the pseudo-inverse of sums
    whose stacked factors are rank-deficient (a factor shared by two terms) are finite and
    equal dense torch's (QR's backward divided by a zero diagonal and gave NaN)."""
    k = min(k, m - 1, n - 1) or 1
    g = torch.Generator().manual_seed(seed)
    a, b, c = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
               for s in ([(m, k), (k, n), (k, n)] if shared_left else [(m, k), (k, n), (m, k)]))
    w = torch.randn(n, m, generator=g, dtype=torch.float64)
    sign = -1.0 if negate else 1.0

    def build(lib_lazy):
        A, B, C = (lib_lazy(t) for t in (a, b, c))
        return A @ B + sign * (A @ C) if shared_left else A @ B + sign * (C @ B)

    def loss(lib, X):
        # dense torch keeps a rounding-level singular value that lands just above its default
        # cut (1e-16 relative: a 1e29 gradient); lazymat cuts it by its rounding floor. The
        # reference cuts at 1e-6, between the rounding values (<= 1e-8) and the genuine ones
        # (>= 1e-4, below)
        P = lib.pinv(X) if lib is lm.linalg else lib.pinv(X, atol=1e-6)
        P = P.to_dense() if lm.is_lazy(P) else P
        S = lib.svdvals(X)
        return S[..., 0] + lib.matrix_norm(X, "nuc") + (P * w).sum()

    D = build(lambda t: t)
    sv = torch.linalg.svdvals(D.detach())
    if sv[0] < 1e-6 or (sv.numel() > 1 and sv[0] - sv[1] < 1e-3 * sv[0]) or sv[sv > 1e-8].min() < 1e-4:
        return  # the top value repeated, or near-singular: the dense gradient is ill-posed
    got = torch.autograd.grad(loss(lm.linalg, build(lm.lazy)), (a, b, c))
    want = torch.autograd.grad(loss(torch.linalg, D), (a, b, c))
    for g1, g2 in zip(got, want, strict=True):
        assert torch.isfinite(g1).all()
        if torch.isfinite(g2).all():
            assert_close(g1, g2, rtol=1e-6)
