"""det, slogdet, logdet, inv, solve and lstsq of lazy expressions against eager torch in float64
(complex128 for complex) on the formed matrix, gradients by gradcheck, errors, the budget."""

import contextlib
import math
import re

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

import lazymat as lm

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
F64 = torch.float64


def rand(g, *shape, **kw):
    return torch.randn(*shape, generator=g, dtype=F64, **kw)


@st.composite
def chain(draw, rows, cols, batch, dtype, g, deficient):
    """(lazy, dense): a product of 1..4 factors from ``rows`` to ``cols``, some factors batched
    (a broadcasting sub-batch of ``batch``), some read transposed or as a slice of a larger
    leaf. Inner dims are drawn at least ``min(rows, cols)`` unless ``deficient``, where one is
    below it (the structural rank then is below ``n``)."""
    k = draw(st.integers(1, 4))
    n = min(rows, cols)
    inner = [draw(st.integers(n, n + 2)) for _ in range(k - 1)]
    if deficient and inner:
        inner[draw(st.integers(0, len(inner) - 1))] = draw(st.integers(0, n - 1))
    dims = [rows, *inner, cols]
    lazy = dense = None
    for i in range(k):
        sub = batch[len(batch) - draw(st.integers(0, len(batch))):]
        shape = (*sub, dims[i], dims[i + 1])
        how = draw(st.sampled_from(["plain", "T", "slice"]))
        if how == "T":
            t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=dtype)
            x, d = lm.lazy(t).mT, t.mT
        elif how == "slice":
            t = torch.randn(*shape[:-2], shape[-2] + 1, shape[-1] + 2, generator=g, dtype=dtype)
            x, d = lm.lazy(t)[..., 1:, :-2], t[..., 1:, :-2]
        else:
            t = torch.randn(*shape, generator=g, dtype=dtype)
            x, d = lm.lazy(t), t
        lazy, dense = (x, d) if lazy is None else (lazy @ x, dense @ d)
    return lazy, dense


@st.composite
def square(draw, dtype=torch.float64, deficient=None):
    """(lazy, dense float64/complex128, structurally deficient?) for a square ``n x n``
    expression: a chain, scaled (a number or a tensor scalar), transposed, or a sum of two."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(1, 5))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    deficient = draw(st.booleans()) if deficient is None else deficient
    X, D = draw(chain(n, n, batch, dtype, g, deficient and n > 1))
    shape = draw(st.sampled_from(["chain", "scaled", "tensor scaled", "T", "sum"]))
    if shape == "scaled":
        c = draw(st.sampled_from([-2.0, 0.5, 3.0] + ([1 - 2j, 0.5j] if dtype.is_complex else [])))
        X, D = X * c, D * c
    elif shape == "tensor scaled":
        c = torch.tensor(-1.5, dtype=dtype)
        X, D = X * c, D * c
    elif shape == "T":
        X, D = X.mT, D.mT
    elif shape == "sum":  # two deficient chains stay deficient while their widths add below n
        Y, E = draw(chain(n, n, batch, dtype, g, deficient and n > 1))
        X, D = X + Y, D + E
    return X, D.to(torch.complex128 if dtype.is_complex else torch.float64), lm.linalg.structural_rank(X) < n


def _scale(D):
    """|det D| <= ||D||_F^n (Hadamard): the scale of det's rounding error."""
    return D.flatten(-2).norm(dim=-1).clamp_min(1e-300) ** D.shape[-1]


def _check_det(X, D, rtol):
    want = torch.linalg.det(D)
    got = lm.linalg.det(X)
    assert got.shape == want.shape and got.dtype == X.dtype
    tol = rtol * _scale(D)
    assert bool(((got.to(want.dtype) - want).abs() <= tol).all()), (got, want)
    sign, logabs = lm.linalg.slogdet(X)
    assert sign.dtype == X.dtype and logabs.dtype == X.dtype.to_real()
    back = sign.to(want.dtype) * logabs.to(want.dtype).exp()
    assert bool(((back - want).abs() <= tol).all()), (back, want)


@SETTINGS
@given(square())
def test_det_and_slogdet_match_torch(case):
    X, D, deficient = case
    _check_det(X, D, 1e-10)
    if deficient:  # exact zeros read off the structure
        assert bool((lm.linalg.det(X) == 0).all())
        sign, logabs = lm.linalg.slogdet(X)
        assert bool((sign == 0).all()) and bool((logabs == -math.inf).all())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(dtype=torch.complex128))
def test_complex_det_and_slogdet(case):
    X, D, _ = case
    _check_det(X, D, 1e-10)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(dtype=torch.float32))
def test_float32_det_against_float64(case):
    X, D, _ = case
    _check_det(X, D, 1e-4)


def _conditioned(D, limit=1e6):
    return bool((torch.linalg.cond(D) < limit).all())


@SETTINGS
@given(square(deficient=False), st.integers(1, 3), st.booleans())
def test_inv_and_solve_match_torch(case, k, left):
    X, D, _ = case
    assume(_conditioned(D))
    inverse = lm.linalg.inv(X)
    dense = inverse.to_dense() if isinstance(inverse, lm.Expr) else inverse
    want = torch.linalg.inv(D)
    torch.testing.assert_close(dense, want, rtol=1e-7, atol=1e-7 * want.abs().max().item())
    B = torch.randn(*D.shape[:-2], *((D.shape[-1], k) if left else (k, D.shape[-1])), dtype=D.dtype)
    want = torch.linalg.solve(D, B, left=left)
    got = lm.linalg.solve(X, B, left=left)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7 * want.abs().max().item())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(dtype=torch.complex128, deficient=False))
def test_complex_solve(case):
    X, D, _ = case
    assume(_conditioned(D))
    B = torch.randn(*D.shape[:-1], dtype=D.dtype)  # a batch of vectors (torch's rule)
    want = torch.linalg.solve(D, B)
    torch.testing.assert_close(lm.linalg.solve(X, B), want, rtol=1e-7, atol=1e-7 * want.abs().max().item())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(deficient=True))
def test_structurally_singular_inv_and_solve_raise(case):
    X, D, deficient = case
    assume(deficient)
    rank = lm.linalg.structural_rank(X)
    with pytest.raises(torch.linalg.LinAlgError, match=f"structural rank {rank} < {X.shape[-1]}"):
        lm.linalg.inv(X)
    with pytest.raises(torch.linalg.LinAlgError, match=re.escape(str(tuple(X.shape)))):
        lm.linalg.solve(X, torch.randn(*D.shape[:-1], dtype=D.dtype))


@st.composite
def rectangular(draw, dtype=torch.float64):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    X, D = draw(chain(m, n, batch, dtype, g, draw(st.booleans()) and min(m, n) > 1))
    if draw(st.booleans()):
        Y, E = draw(chain(m, n, batch, dtype, g, True))
        X, D = X + Y, D + E
    return X, D


@SETTINGS
@given(rectangular(), st.integers(1, 3), st.sampled_from(["gels", "gelsy", "gelsd", "gelss"]))
def test_lstsq_is_the_minimum_norm_solution(case, k, driver):
    X, D = case
    sv = torch.linalg.svdvals(D)
    # a clear gap between the nonzero singular values and rounding (the zero rules then agree)
    top = sv[..., :1]
    assume(bool(((sv < top * 1e-9) | (sv > top * 1e-5)).all()))
    m, n = D.shape[-2:]
    B = torch.randn(*D.shape[:-2], m, k, dtype=D.dtype)
    got = lm.linalg.lstsq(X, B, driver=driver)
    assert isinstance(got, torch.return_types.linalg_lstsq)
    want = torch.linalg.pinv(D) @ B
    torch.testing.assert_close(got.solution, want, rtol=1e-6, atol=1e-6 * max(want.abs().max().item(), 1))
    rank = torch.linalg.matrix_rank(D)
    if driver == "gels":
        assert got.rank.numel() == 0
    else:
        assert torch.equal(got.rank, rank)
    if driver in ("gelsd", "gelss"):
        torch.testing.assert_close(got.singular_values, sv, rtol=1e-9, atol=1e-9 * sv.max().item())
    else:
        assert got.singular_values.numel() == 0
    if m > n and driver != "gelsy" and (driver == "gels" or bool((rank == n).all())):
        fitted = (D @ want - B).abs().square().sum(-2)
        torch.testing.assert_close(got.residuals, fitted, rtol=1e-6, atol=1e-6 * max(fitted.max().item(), 1))
        if bool((rank == n).all()):  # torch's own residuals agree where its solution is unique
            ref = torch.linalg.lstsq(D, B, driver=driver)  # (gels raises on a rank-deficient wide D)
            torch.testing.assert_close(got.residuals, ref.residuals, rtol=1e-6, atol=1e-9)
    else:
        assert got.residuals.numel() == 0


def test_lstsq_conventions_follow_torch():
    g = torch.Generator().manual_seed(0)
    A, C = rand(g, 6, 3), rand(g, 3, 3)
    X, D = lm.lazy(A) @ lm.lazy(C), A @ C
    b = torch.randn(6, generator=g, dtype=torch.float64)
    got, want = lm.linalg.lstsq(X, b, driver="gelsd"), torch.linalg.lstsq(D, b, driver="gelsd")
    for a, w in zip(got, want, strict=True):  # a vector B: solution (n,), residuals (1,) as torch
        assert a.shape == w.shape and a.dtype == w.dtype
        torch.testing.assert_close(a, w, rtol=1e-9, atol=1e-12)
    default = lm.linalg.lstsq(X, b)  # the CPU default driver, gelsy: the rank only
    assert default.residuals.numel() == 0 and default.singular_values.numel() == 0 and int(default.rank) == 3
    routed = torch.linalg.lstsq(X, b.unsqueeze(-1), driver="gels")
    torch.testing.assert_close(routed.solution, torch.linalg.lstsq(D, b.unsqueeze(-1)).solution)
    with pytest.raises(ValueError, match="driver must be one of"):
        lm.linalg.lstsq(X, b, driver="gelsx")
    with pytest.raises(ValueError, match=r"B needs 6 rows"):
        lm.linalg.lstsq(X, torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="same dtype"):
        lm.linalg.lstsq(X, b.float())


def test_lstsq_rcond_and_lazy_rhs():
    g = torch.Generator().manual_seed(1)
    U = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]
    s = torch.tensor([1.0, 1e-2, 1e-4], dtype=torch.float64)
    X = lm.lazy(U * s) @ lm.lazy(V.mT)  # singular values 1, 1e-2, 1e-4
    D = X.to_dense()
    B = torch.randn(8, 2, generator=g, dtype=torch.float64)
    got = lm.linalg.lstsq(X, lm.lazy(B), rcond=1e-3, driver="gelsd")  # 1e-4 counts as zero
    assert int(got.rank) == 2
    torch.testing.assert_close(got.solution, torch.linalg.pinv(D, rtol=1e-3) @ B, rtol=1e-9, atol=1e-9)


def test_lstsq_never_forms_the_matrix():
    g = torch.Generator().manual_seed(2)
    A, C = rand(g, 300, 4), rand(g, 4, 300)
    X = lm.lazy(A) @ lm.lazy(C)
    with Shapes() as seen:
        got = lm.linalg.lstsq(X, torch.randn(300, 2, generator=g, dtype=torch.float64), driver="gelsd")
    assert all(math.prod(s[-2:]) < 300 * 300 for s in seen.shapes)
    assert int(got.rank) == 4


class Shapes(TorchFunctionMode):
    """The output shapes of every torch call (the matrices a route forms), and the calls' names."""

    def __init__(self):
        super().__init__()
        self.shapes, self.names = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.names.append(getattr(func, "__name__", str(func)))
        for o in out if isinstance(out, tuple) else (out,):
            if isinstance(o, torch.Tensor) and o.ndim >= 2:
                self.shapes.append(tuple(o.shape))
        return out


def _chain(n=6, k=3, seed=0, batch=()):
    g = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(*batch, n, n, generator=g, dtype=torch.float64) for _ in range(k)]
    X = lm.lazy(leaves[0])
    for t in leaves[1:]:
        X = X @ lm.lazy(t)
    return X, leaves


def segments_route(monkeypatch):
    """det, slogdet and solve take the square segments' route whatever the size (no fixed cost
    per segment: forming the product is never cheaper by FLOPs)."""
    from lazymat import linalg

    for op in linalg.costs.SQUARE_OPS:
        monkeypatch.setitem(linalg.costs.FACTORED_OVERHEAD_FLOPS, op, 0.0)


def test_chain_routes_never_form_the_product(monkeypatch):
    from lazymat import execute

    segments_route(monkeypatch)  # (6 x 6 segments: forming is cheaper, test_small_chains_are_formed)
    X, leaves = _chain()
    X = X.mT  # views of the leaves (transposed), read as they are
    D = (leaves[0] @ leaves[1] @ leaves[2]).mT
    B = torch.randn(6, 2, dtype=torch.float64)
    evaluations = []
    real = execute.evaluate
    monkeypatch.setattr(execute, "evaluate", lambda *a, **k: evaluations.append(a) or real(*a, **k))
    with Shapes() as seen:
        det = lm.linalg.det(X)
        Y = lm.linalg.solve(X, B)
    assert not evaluations  # a segment that is a leaf view is read, not planned and run
    assert seen.names.count("linalg_det") == 3 and seen.names.count("linalg_solve") == 3
    assert not {"matmul", "mm", "bmm", "einsum"} & set(seen.names)  # one LU per factor, no product
    torch.testing.assert_close(det, torch.linalg.det(D))
    torch.testing.assert_close(Y, torch.linalg.solve(D, B))
    inverse = lm.linalg.inv(X)  # lazy: C^-1 @ B^-1 @ A^-1, each formed once
    assert isinstance(inverse, lm.Expr) and len(lm.linalg.square_segments(inverse)[1]) == 3
    torch.testing.assert_close(inverse.to_dense(), torch.linalg.inv(D))
    single = lm.linalg.inv(lm.lazy(leaves[0]) * 2)  # one segment: a tensor, as torch
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, torch.linalg.inv(2 * leaves[0]))


def test_segments_cut_at_square_dims():
    g = torch.Generator().manual_seed(3)
    A, W, P = rand(g, 4, 6), rand(g, 6, 4), rand(g, 4, 4)
    X = lm.lazy(A) @ lm.lazy(W) @ lm.lazy(P) * 3
    c, segments = lm.linalg.square_segments(X)
    assert c == 3 and [tuple(s.shape) for s in segments] == [(4, 4), (4, 4)]
    torch.testing.assert_close(lm.linalg.det(X), torch.linalg.det(3 * A @ W @ P))


def test_gradients_of_a_chain_of_square_factors():
    X, leaves = _chain(n=3, k=3, seed=4, batch=(2,))
    leaves = [t.requires_grad_() for t in leaves]
    B = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)

    def build(*ts):
        return lm.lazy(ts[0]) @ lm.lazy(ts[1]).mT @ lm.lazy(ts[2]) * 1.5

    torch.autograd.gradcheck(lambda *ts: lm.linalg.det(build(*ts)), leaves)
    torch.autograd.gradcheck(lambda *ts: lm.linalg.slogdet(build(*ts)).logabsdet, leaves)
    torch.autograd.gradcheck(lambda *ts: lm.linalg.inv(build(*ts)).to_dense(), leaves)
    torch.autograd.gradcheck(lambda *ts: lm.linalg.solve(build(*ts[:3]), ts[3]), [*leaves, B])
    torch.autograd.gradcheck(lambda a, b: lm.linalg.det(lm.lazy(a) + lm.lazy(b)), leaves[:2])


def test_gradient_at_value_rank_n_minus_1_is_the_adjugate():
    """A square factor singular by its values (rank n - 1): torch's det gradient, the adjugate."""
    g = torch.Generator().manual_seed(5)
    S = rand(g, 4, 3) @ rand(g, 3, 4)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    S.requires_grad_(), A.requires_grad_()
    torch.autograd.gradcheck(lambda s, a: lm.linalg.det(lm.lazy(s) @ lm.lazy(a)), (S, A))
    lm.linalg.det(lm.lazy(S) @ lm.lazy(A)).backward()
    adj = torch.linalg.det(A) * torch.func.jacrev(torch.linalg.det)(S.detach())  # d det(S A) / dS
    assert adj.abs().max() > 1e-3  # not zero: the adjugate of a rank n - 1 matrix
    torch.testing.assert_close(S.grad, adj)


@pytest.mark.parametrize("inner", [3, 2])  # structural rank n - 1 and n - 2
def test_gradient_at_structural_rank_below_n_is_zero(inner):
    """``det(L @ R)`` with inner width below ``n`` is 0 for all values of ``L`` and ``R``: the
    gradient to the leaves is exactly 0 (the adjugate, ``X``'s gradient at rank ``n - 1``, is
    annihilated by ``L`` and ``R``: ``adj(X) L = 0``, ``R adj(X) = 0``)."""
    g = torch.Generator().manual_seed(6)
    L = torch.randn(4, inner, generator=g, dtype=torch.float64, requires_grad=True)
    R = torch.randn(inner, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: lm.linalg.det(lm.lazy(a) @ lm.lazy(b)), (L, R))
    lm.linalg.det(lm.lazy(L) @ lm.lazy(R)).backward()
    assert torch.equal(L.grad, torch.zeros_like(L)) and torch.equal(R.grad, torch.zeros_like(R))
    # the adjugate chained by hand through X = L R is 0 as well
    adj = torch.func.jacrev(torch.linalg.det)((L @ R).detach())
    assert (adj @ R.detach().mT).abs().max() < 1e-10 and (L.detach().mT @ adj).abs().max() < 1e-10


def test_lstsq_gradient():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    C = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(6, 2, generator=g, dtype=torch.float64)

    def solution(a, c):
        return lm.linalg.lstsq(lm.lazy(a) @ lm.lazy(c), B, driver="gelsd").solution

    torch.autograd.gradcheck(solution, (A, C))


def test_non_finite_and_empty():
    g = torch.Generator().manual_seed(8)
    L, R = rand(g, 2, 4, 2), rand(g, 2, 4)
    L[1, 0, 0] = math.nan
    X = lm.lazy(L) @ lm.lazy(R)  # structurally singular; member 1 reads a NaN
    det = lm.linalg.det(X)
    assert det[0] == 0 and det[1].isnan()
    sign, logabs = lm.linalg.slogdet(X)
    assert bool((sign == 0).all()) and logabs[0] == -math.inf and logabs[1].isnan()  # as torch on NaN
    E = lm.lazy(torch.randn(3, 0, 0, dtype=torch.float64))
    torch.testing.assert_close(lm.linalg.det(E), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(lm.linalg.slogdet(E).logabsdet, torch.zeros(3, dtype=torch.float64))
    for shape in ((0, 3), (3, 0), (0, 0)):  # lstsq of empty matrices: torch's shapes and values
        Z, B = torch.randn(*shape, dtype=F64), torch.randn(shape[0], 2, dtype=F64)
        for ours, theirs in zip(lm.linalg.lstsq(lm.lazy(Z), B, driver="gelsd"),
                                torch.linalg.lstsq(Z, B, driver="gelsd"), strict=True):
            assert torch.equal(ours, theirs)
    empty = lm.lazy(torch.randn(0, 0, dtype=F64))
    assert lm.linalg.solve(empty, torch.randn(0, 2, dtype=F64)).shape == (0, 2)


def test_logdet_follows_torch():
    X, leaves = _chain(n=3, k=2, seed=9)
    D = leaves[0] @ leaves[1]
    for Y, E in ((X, D), (-X, -D)):
        torch.testing.assert_close(lm.linalg.logdet(Y), torch.logdet(E), equal_nan=True)
    Z = lm.lazy(torch.randn(3, 2, dtype=torch.float64)) @ lm.lazy(torch.randn(2, 3, dtype=torch.float64))
    assert lm.linalg.logdet(Z) == -math.inf
    c = torch.randn(3, 3, dtype=torch.complex128)
    torch.testing.assert_close(lm.linalg.logdet(lm.lazy(c) @ lm.lazy(c)), torch.logdet(c @ c))


def test_errors_name_shapes(monkeypatch):
    segments_route(monkeypatch)
    Y = lm.lazy(torch.randn(3, 4, dtype=torch.float64))
    for f in (lm.linalg.det, lm.linalg.slogdet, lm.linalg.inv):
        with pytest.raises(ValueError, match=r"square matrix, got shape \(3, 4\)"):
            f(Y)
    X, leaves = _chain(n=3, k=2, seed=10)
    with pytest.raises(ValueError, match=r"incompatible shapes X \(3, 3\) and B \(4, 2\)"):
        lm.linalg.solve(X, torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="same dtype"):
        lm.linalg.solve(X, torch.randn(3, 2))
    singular = torch.zeros(3, 3, dtype=torch.float64)
    Z = lm.lazy(leaves[0]) @ lm.lazy(singular)
    with pytest.raises(torch.linalg.LinAlgError, match="square segment 1 of 2"):
        lm.linalg.inv(Z)
    with pytest.raises(torch.linalg.LinAlgError, match="square segment 1 of 2"):
        lm.linalg.solve(Z, torch.randn(3, dtype=torch.float64))
    assert lm.linalg.det(Z) == 0  # singular by value: torch's det of the segment


def test_torch_functions_route():
    X, leaves = _chain(n=4, k=2, seed=11, batch=(2,))
    D = leaves[0] @ leaves[1]
    B = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(torch.linalg.det(X), torch.linalg.det(D))
    torch.testing.assert_close(torch.det(X), torch.det(D))
    torch.testing.assert_close(X.det(), torch.det(D))
    torch.testing.assert_close(torch.logdet(X), torch.logdet(D), equal_nan=True)
    for f in (torch.linalg.slogdet, torch.slogdet):
        ours, theirs = f(X), f(D)
        assert type(ours) is type(theirs)
        torch.testing.assert_close(tuple(ours), tuple(theirs))
    torch.testing.assert_close(torch.linalg.inv(X).to_dense(), torch.linalg.inv(D))
    torch.testing.assert_close(torch.inverse(X).to_dense(), torch.inverse(D))
    torch.testing.assert_close(torch.linalg.solve(X, B), torch.linalg.solve(D, B))
    right = torch.linalg.solve(D, B.mT, left=False)
    torch.testing.assert_close(torch.linalg.solve(X, B.mT, left=False), right)
    got, want = torch.linalg.lstsq(X, B, driver="gelsd"), torch.linalg.lstsq(D, B, driver="gelsd")
    torch.testing.assert_close(got.solution, want.solution)
    torch.testing.assert_close(got.singular_values, want.singular_values)


def test_budget_refuses_before_forming_and_names_the_minimum():
    g = torch.Generator().manual_seed(12)
    A, C = rand(g, 3, 48, 64), rand(g, 3, 64, 48)
    X = lm.lazy(A) @ lm.lazy(C)  # one segment, formed: 3 x 48 x 48
    want = torch.linalg.det(A @ C)
    for op, f in (("det", lm.linalg.det), ("slogdet", lm.linalg.slogdet), ("inv", lm.linalg.inv)):
        peak = lm.explain(X[:1], op).planned.peak_bytes  # one member's (the batch runs in blocks)
        with Shapes() as seen, pytest.raises(lm.BudgetTooSmall) as err:
            f(X, memory_budget=peak // 2)
        assert (48, 48) not in [s[-2:] for s in seen.shapes]  # refused before anything ran
        assert err.value.minimum >= peak
        f(X, memory_budget=err.value.minimum)  # runs at the minimum it names
    torch.testing.assert_close(lm.linalg.det(X, memory_budget="1GiB"), want)
    B = torch.randn(3, 48, 2, generator=g, dtype=torch.float64)
    peak = lm.explain(X[:1], "solve", k=2).planned.peak_bytes
    with pytest.raises(lm.BudgetTooSmall):
        lm.linalg.solve(X, B, memory_budget=peak // 2)


def test_lstsq_under_a_budget_runs_in_blocks(block_counts):
    g = torch.Generator().manual_seed(13)
    A, C = rand(g, 4, 200, 12), rand(g, 12, 200)
    X = lm.lazy(A) @ lm.lazy(C)
    B = torch.randn(4, 200, 2, generator=g, dtype=torch.float64)
    peak = lm.explain(X, "svd").planned.peak_bytes
    got = lm.linalg.lstsq(X, B, driver="gelsd", memory_budget=peak - 1000)  # the batch does not fit whole
    assert block_counts and block_counts[-1] > 1
    torch.testing.assert_close(got.solution, torch.linalg.pinv(A @ C) @ B)
    # gelsy's pivoted QR of the 12 x 200 core holds more beside the spectrum: refused there, and
    # run at the least budget it names (rank 12 of 12: the minimum-norm answer)
    with pytest.raises(lm.BudgetTooSmall) as err:
        lm.linalg.lstsq(X, B, memory_budget=peak - 1000)
    got = lm.linalg.lstsq(X, B, memory_budget=err.value.minimum)
    torch.testing.assert_close(got.solution, torch.linalg.pinv(A @ C) @ B)


def test_explain_costs_the_routes():
    X, _ = _chain(n=256, k=3, seed=14)  # large enough for the segments' route
    report = lm.explain(X, "det")
    assert [r.op for r in report.rows][:3] == [f"det of segment {i} (LU)" for i in range(3)]
    assert report.planned.flops < report.naive[0].flops  # three LUs against two GEMMs and an LU
    solve = lm.explain(X, "solve", k=4)
    assert solve.rows[0].inputs == [(256, 256), (256, 4)]
    low = lm.lazy(torch.randn(500, 8)) @ lm.lazy(torch.randn(8, 500))
    det = lm.explain(low, "det")
    assert "structural rank 8 < 500" in det.planned.note and all(math.prod(r.output) < 500 for r in det.rows)
    lstsq = lm.explain(low, "lstsq", k=2)
    assert lstsq.rows[-1].output == (500, 2) and lstsq.planned.flops < lstsq.naive[0].flops / 100
    with pytest.raises(TypeError, match="takes k="):
        lm.explain(low, "lstsq", ord=2)


CASTS = [torch.float32, torch.float16, torch.bfloat16]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(deficient=False), st.sampled_from(CASTS))
def test_answers_of_a_narrowing_cast_keep_their_types(case, dtype):
    """Read through the cast (``reads_through_casts``): the answer of the float64 source rounded
    to ``dtype``, of torch's return type (a ``linalg_slogdet``, not a plain tuple)."""
    X, D, _ = case
    source = X @ X  # a product (a cast of a leaf is the rounded leaf, decomposed as it is)
    Y = source.to(dtype)
    got = lm.linalg.slogdet(Y)
    assert type(got) is torch.return_types.linalg_slogdet
    assert got.sign.dtype == dtype and got.logabsdet.dtype == dtype
    want = lm.linalg.slogdet(source)
    assert torch.equal(got.sign, want.sign.to(dtype)) and torch.equal(got.logabsdet, want.logabsdet.to(dtype))
    assert lm.linalg.det(Y).dtype == dtype


@pytest.mark.parametrize("op", ["det", "slogdet", "inv", "solve", "lstsq"])
@pytest.mark.parametrize("segments", [1, 3])
def test_gradients_under_a_memory_budget_match(op, segments):
    """Under a budget a differentiable call is recomputed in its backward pass (tensor answers)
    or records as usual (inv's lazy answer): the gradients are those of the unbudgeted call."""
    g = torch.Generator().manual_seed(15)
    leaves = [rand(g, 2, 4, 4, requires_grad=True) for _ in range(segments)]
    B = rand(g, 2, 4, 3)

    def run(**kw):
        X = lm.lazy(leaves[0])
        for t in leaves[1:]:
            X = X @ lm.lazy(t)
        out = {"det": lambda: lm.linalg.det(X, **kw), "slogdet": lambda: lm.linalg.slogdet(X, **kw).logabsdet,
               "solve": lambda: lm.linalg.solve(X, B, **kw),
               "lstsq": lambda: lm.linalg.lstsq(X, B, driver="gelsd", **kw).solution,
               "inv": lambda: lm.linalg.inv(X, **kw)}[op]()
        out = out.to_dense() if isinstance(out, lm.Expr) else out
        return torch.autograd.grad(out.square().sum(), leaves)

    for budgeted, free in zip(run(memory_budget="64MiB"), run(), strict=True):
        torch.testing.assert_close(budgeted, free)


@contextlib.contextmanager
def forced(route):
    """det, slogdet and solve by ``route``: ``"segments"`` (no fixed cost per segment: forming is
    never cheaper by FLOPs) or ``"formed"`` (an infinite one); as shipped for None."""
    from lazymat import linalg

    kept = dict(linalg.costs.FACTORED_OVERHEAD_FLOPS)
    if route is not None:
        for op in linalg.costs.SQUARE_OPS:
            linalg.costs.FACTORED_OVERHEAD_FLOPS[op] = 0.0 if route == "segments" else math.inf
    try:
        yield
    finally:
        linalg.costs.FACTORED_OVERHEAD_FLOPS.clear()
        linalg.costs.FACTORED_OVERHEAD_FLOPS.update(kept)


def lu_calls(names):
    return sum(names.count(f) for f in ("linalg_det", "linalg_slogdet", "linalg_solve"))


def test_small_chains_are_formed():
    """Where forming the product and one LU costs less than an LU per square segment (FLOPs with
    a fixed cost per extra LU call: linalg.costs.square_route_flops, FACTORED_OVERHEAD_FLOPS), det,
    slogdet and solve form it; explain reports that route and its FLOPs; inv keeps its segments
    (a lazy answer); a chain of 256 x 256 squares keeps them for all."""
    from lazymat import linalg

    X, leaves = _chain(n=16, k=3, seed=20)
    D = leaves[0] @ leaves[1] @ leaves[2]
    B = torch.randn(16, 2, dtype=F64)
    with Shapes() as seen:
        det, (_, logabs), Y = lm.linalg.det(X), lm.linalg.slogdet(X), lm.linalg.solve(X, B)
    assert lu_calls(seen.names) == 3 and (16, 16) in seen.shapes  # one LU each, of the product
    torch.testing.assert_close(det, torch.linalg.det(D))
    torch.testing.assert_close(logabs, torch.linalg.slogdet(D).logabsdet)
    torch.testing.assert_close(Y, torch.linalg.solve(D, B))
    for op, k in (("det", 0), ("slogdet", 0), ("solve", 2)):
        report = lm.explain(X, op, **({"k": k} if op == "solve" else {}))
        assert "formed whole" in report.planned.note and "3 square segments" in report.planned.note
        assert sum("(LU)" in r.op for r in report.rows) == 1
        dense, factored, calls = linalg.costs.square_route_flops(X, op, k)
        assert calls == 2 and dense > factored  # formed although its FLOPs are more
        assert abs(report.planned.flops - dense) <= 16 * 2  # (+ the c^n product, Y / c)
    assert isinstance(lm.linalg.inv(X), lm.Expr)
    big, _ = _chain(n=256, k=3, seed=21)
    for op in linalg.costs.SQUARE_OPS:
        assert len(lm.linalg.square_segments(big, op, 1)[1]) == 3


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(square(deficient=False), st.sampled_from([None, "segments", "formed"]), st.integers(1, 3),
       st.booleans())
def test_both_routes_match_torch_and_explain(case, route, k, grad):
    """Either route (forced, or as shipped) answers eager torch's det, slogdet and solve in
    float64 (complex128 for complex), with gradients through the leaves, and runs the LU calls
    explain reports."""
    X, D, _ = case
    assume(_conditioned(D))
    B = torch.randn(*D.shape[:-1], k, dtype=D.dtype)
    leaves = list({id(f.tensor): f.tensor for f in lm.expr.leaves(X)}.values()) if grad else []
    for t in leaves:
        t.requires_grad_(True)
    try:
        with forced(route), Shapes() as seen:
            det = lm.linalg.det(X)
            Y = lm.linalg.solve(X, B.to(X.dtype))
        with forced(route):
            rows = [sum("(LU)" in r.op for r in lm.explain(X, op, **kw).rows)
                    for op, kw in (("det", {}), ("solve", {"k": k}))]
        assert lu_calls(seen.names) == sum(rows)
        scale = float(_scale(D.detach()).max())
        torch.testing.assert_close(det.to(D.dtype), torch.linalg.det(D), rtol=1e-8, atol=1e-8 * scale)
        torch.testing.assert_close(Y.to(D.dtype), torch.linalg.solve(D, B), rtol=1e-7, atol=1e-7)
        if grad and det.requires_grad:
            det.sum().backward()
            assert all(t.grad is not None and bool(torch.isfinite(t.grad).all()) for t in leaves)
    finally:
        for t in leaves:
            t.requires_grad_(False)
            t.grad = None


def test_formed_route_reads_the_leaves_now():
    """The small route forms the product from the leaves' current tensors: a value changed in
    place is read, a tensor resized in place raises LeafChanged naming both shapes, and a
    shape-only symbol has no data to form."""
    X, leaves = _chain(n=8, k=3, seed=22)
    torch.testing.assert_close(lm.linalg.det(X), torch.linalg.det(leaves[0] @ leaves[1] @ leaves[2]))
    leaves[1].mul_(-3)
    torch.testing.assert_close(lm.linalg.det(X), torch.linalg.det(leaves[0] @ leaves[1] @ leaves[2]))
    B = torch.randn(8, 2, dtype=F64)
    D = leaves[0] @ leaves[1] @ leaves[2]
    torch.testing.assert_close(lm.linalg.solve(X, B), torch.linalg.solve(D, B))
    with torch.no_grad():
        leaves[2].resize_(4, 16)
    with pytest.raises(lm.expr.LeafChanged, match=r"\(8, 8\).*\(4, 16\)"):
        lm.linalg.det(X)
    S, T, U = (lm.symbol(name, (8, 8), dtype=F64) for name in "STU")
    S = S @ T @ U
    with pytest.raises(lm.SymbolHasNoData):
        lm.linalg.det(S)
