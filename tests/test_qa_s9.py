"""Session 9 QA (qa12): what a demanding user met, each fixed at its root with a property."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close


# ---- real and imaginary parts of complex expressions --------------------------------------------
@st.composite
def complex_expressions(draw):
    """A random complex expression and its dense value: products of complex leaves, real
    expressions made complex (a cast, or a complex scaling), complex scalings, sums,
    transposes, indexing and ``cat``."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))

    def leaf(rows, cols, complex_=True):
        t = torch.randn(*batch, rows, cols, generator=g, dtype=torch.float64)
        if complex_:
            t = torch.complex(t, torch.randn(*batch, rows, cols, generator=g, dtype=torch.float64))
        return lm.lazy(t), t

    def chain(rows, cols):
        """A product of 1-3 factors, each complex or a real one made complex."""
        dims = [rows] + [draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2)))] + [cols]
        X = D = None
        for r, c in zip(dims, dims[1:], strict=False):
            how = draw(st.sampled_from(["complex", "cast", "scaled"]))
            F, T = leaf(r, c, complex_=how == "complex")
            if how == "cast":
                F, T = F.to(torch.complex128), T.to(torch.complex128)
            elif how == "scaled":
                coef = complex(draw(st.sampled_from([1j, 2 - 1j, -0.5j, 1.5 + 0j])))
                F, T = F * coef, T * coef
            X, D = (F, T) if X is None else (X @ F, D @ T)
        return X, D

    X, D = chain(m, n)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["add", "scale", "T", "index", "cat"]))
        if op == "add":
            Y, E = chain(m, n)
            X, D = X + Y, D + E
        elif op == "scale":
            coef = draw(st.sampled_from([0.5, -2.0, 1j, 0.5 - 1.5j]))
            if draw(st.booleans()):
                kind = torch.complex128 if isinstance(coef, complex) else torch.float64
                coef = torch.tensor(coef, dtype=kind)
            X, D = X * coef, D * coef
        elif op == "T":
            X, D, (m, n) = X.mT, D.mT, (n, m)
        elif op == "index" and m > 1:
            X, D, m = X[..., 1:, :], D[..., 1:, :], m - 1
        elif op == "cat":
            Y, E = chain(m, 2)
            X, D, n = lm.cat([X, Y], dim=-1), torch.cat([D, E], dim=-1), n + 2
    return X, D


@settings(max_examples=80, deadline=None)
@given(complex_expressions(), st.sampled_from(["real", "imag"]))
def test_real_and_imag_parts_match_torch(case, part):
    """``X.real``/``X.imag`` equal torch's parts of the dense matrix, are real float64
    expressions, and the linear algebra reads them (rank from the lazy parts)."""
    X, D = case
    got, expected = getattr(X, part), getattr(D, part)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    assert_close(got.to_dense(), expected, rtol=1e-12, atol=1e-12)
    assert_close(lm.linalg.matrix_norm(got), torch.linalg.matrix_norm(expected), rtol=1e-9, atol=1e-9)


def test_parts_of_real_expressions_made_complex():
    """A real expression under a complex one is its own real part, and its imaginary part
    is zero: ``(1j * X).real`` is the zero matrix, ``X.to(complex).imag`` too (a broadcast
    zero, nothing allocated)."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(3, 5, 2, generator=g, dtype=torch.float64),
            torch.randn(2, 4, generator=g, dtype=torch.float64))
    X = lm.lazy(a) @ lm.lazy(b)
    Z = X.to(torch.complex128)
    assert_close(Z.real.to_dense(), a @ b)
    zero = Z.imag
    assert zero.shape == (3, 5, 4) and zero.dtype == torch.float64
    assert torch.equal(zero.to_dense(), torch.zeros(3, 5, 4, dtype=torch.float64))
    assert torch.equal(lm.linalg.matrix_rank(zero), torch.zeros(3, dtype=torch.int64))
    assert_close((X * 1j).imag.to_dense(), a @ b)
    assert torch.equal((X * 1j).real.to_dense(), torch.zeros(3, 5, 4, dtype=torch.float64))
    assert_close(((2 - 3j) * X).real.to_dense(), 2 * (a @ b))
    with pytest.raises(RuntimeError, match="real dtype"):
        X.imag  # noqa: B018


# ---- factorize on complex layers --------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(4, 50), st.integers(2, 8), st.integers(2, 8), st.integers(1, 7), st.booleans(),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_factorize_matrix_reports_the_true_error_for_complex_data_too(
        n, d, m, k, complex_, with_bias, seed):
    """``nmse`` is ``mean(|Y - Y_hat|^2) / var(Y)`` of the returned tensors, never below the
    reduced-rank optimum and never growing with ``n_iters``, for complex data as for real (it
    was the real formula ``(Y - Y_hat)^2``: a complex layer raised 'cannot be converted to
    type double')."""
    from lazymat.factorize import factorize_matrix

    k = min(k, d - 1, m - 1)
    if k < 1:
        return
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    X, W = r(n, d), r(d, m)
    bias = r(m) if with_bias else None
    Y = X @ W + (0 if bias is None else bias) + 0.3 * r(n, m)
    # the optimum apart from lazymat: any bias takes the means away; then Eckart-Young on the
    # least-squares fit of the centred outputs (projected onto the centred inputs' columns)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    F = Xc @ torch.linalg.pinv(Xc) @ Yc
    Vh = torch.linalg.svd(F, full_matrices=False)[2][:k]
    best = float((Yc - F @ Vh.mH @ Vh).abs().square().mean() / Y.var())
    errors = []
    for n_iters in (0, 2, 20):
        sol = factorize_matrix(X, Y, W, bias=bias, rank=k, n_iters=n_iters)
        assert sol.Wa.dtype == sol.Wb.dtype == sol.bias.dtype == dtype
        true = float((Y - (X @ sol.Wa @ sol.Wb + sol.bias)).abs().square().mean() / Y.var())
        assert sol.nmse == pytest.approx(true, rel=1e-9, abs=1e-12)
        assert sol.nmse >= best - 1e-9
        errors.append(sol.nmse)
    assert errors[1] <= errors[0] + 1e-9 and errors[2] <= errors[1] + 1e-9


def _complex_regression(n=200, d=10, m=8, seed=0):
    g = torch.Generator().manual_seed(seed)

    def c(*shape):
        return torch.complex(torch.randn(*shape, generator=g, dtype=torch.float64),
                             torch.randn(*shape, generator=g, dtype=torch.float64))

    X, W, b = c(n, d), c(d, m), c(m)
    return X, W, b, X @ W + b + 0.3 * c(n, m)


def test_complex_als_reaches_the_reduced_rank_optimum():
    """The ALS step on complex data projects with ``Q^H`` (with ``Q^T``, unconjugated, it is
    no minimiser and stalls above the optimum): 30 iterations reach Eckart-Young's error."""
    from lazymat.factorize import factorize_matrix

    X, W, b, Y = _complex_regression()
    k = 3
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    F = Xc @ torch.linalg.pinv(Xc) @ Yc
    Vh = torch.linalg.svd(F, full_matrices=False)[2][:k]
    best = float((Yc - F @ Vh.mH @ Vh).abs().square().mean() / Y.var())
    sol = factorize_matrix(X, Y, W, bias=b, rank=k, n_iters=30)
    assert sol.nmse == pytest.approx(best, rel=1e-8)


# ---- concatenations of low-rank parts stay low rank ---------------------------------------------
@st.composite
def low_rank_cats(draw):
    """``lm.cat`` of 2-3 parts along the rows or columns, each a product of two thin factors,
    a sum of two, or a narrow dense leaf; batch dims broadcast between parts."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    axis = draw(st.sampled_from([-1, -2]))
    keep = draw(st.integers(12, 20))  # the shared dim: rows of a column cat, columns of a row cat
    batches = [(), (2,), (1,)]
    parts, dense, width = [], [], 0

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    for i in range(draw(st.integers(2, 3))):
        batch = draw(st.sampled_from(batches))
        own = draw(st.integers(6, 14))  # the part's extent along the joined dim
        rows, cols = (keep, own) if axis == -1 else (own, keep)
        kind = draw(st.sampled_from(["product", "sum"] + ["narrow"] * (i > 0)))
        if kind == "narrow":  # a dense part thin along the joined dim: its own core
            own = draw(st.integers(1, 2))
            rows, cols = (keep, own) if axis == -1 else (own, keep)
            t = r(*batch, rows, cols)
            parts.append(lm.lazy(t))
            dense.append(t)
            width += own
            continue
        k = draw(st.integers(1, 2))
        a, b = r(*batch, rows, k), r(k, cols)
        X, D = lm.lazy(a) @ lm.lazy(b), a @ b
        if kind == "sum":
            c, d = r(rows, 1), r(1, cols)
            X, D, k = X - 2 * lm.lazy(c) @ lm.lazy(d), D - 2 * c @ d, k + 1
        parts.append(X)
        dense.append(D)
        width += k
    batch = torch.broadcast_shapes(*(d.shape[:-2] for d in dense))
    dense = torch.cat([d.expand(*batch, *d.shape[-2:]) for d in dense], dim=axis)
    return lm.cat(parts, dim=axis), dense, width


@settings(max_examples=60, deadline=None)
@given(low_rank_cats())
def test_a_cat_of_low_rank_parts_is_read_off_a_low_rank_core(case):
    """``[L1 R1, L2 R2] = [L1, L2] @ blockdiag(R1, R2)``: the factor form of a concatenation
    is as narrow as its parts' factors together (it was the matrix itself: ``svdvals`` of
    two concatenated full QK circuits formed the whole ``d_vocab x 2 d_vocab`` matrix), and
    the spectral answers are torch's on the dense matrix."""
    X, D, width = case
    L, R = lm.factor(X)
    assert width < min(X.shape[-2:]) and L.shape[-1] <= width  # not the matrix as its own core
    assert_close((L @ R).to_dense(), D, rtol=1e-12)
    S = torch.linalg.svdvals(D)
    k = min(width, S.shape[-1])
    assert_close(lm.linalg.svdvals(X, full=True)[..., :k], S[..., :k], rtol=1e-9)
    assert_close(lm.linalg.matrix_norm(X, "nuc"), torch.linalg.matrix_norm(D, "nuc"), rtol=1e-9)
    assert torch.equal(lm.linalg.matrix_rank(X), torch.linalg.matrix_rank(D))
    U, Sv, Vh = lm.linalg.svd(X)
    assert_close(U @ torch.diag_embed(Sv) @ Vh, D, rtol=1e-9)
    P = lm.linalg.pinv(X)
    assert_close(P.to_dense() if lm.is_lazy(P) else P, torch.linalg.pinv(D), rtol=1e-7)


def test_a_product_with_a_cat_of_low_rank_parts_is_planned_without_the_cat():
    """``cat([A @ B, C @ D]) @ v`` is ``A @ B @ v[:n1] + C @ D @ v[n1:]``: it planned the whole
    cat as a dense block (18.6 GiB here), and so did sums over all entries (``X @ 1``)."""
    parts = [lm.symbol("A", (50000, 64)) @ lm.symbol("B", (64, 40000)),
             lm.symbol("C", (50000, 64)) @ lm.symbol("D", (64, 10000))]
    X = lm.cat(parts, dim=-1) @ lm.symbol("v", (50000, 2))
    report = lm.explain(X, "to_dense", memory_budget="1GiB")
    assert report.planned.peak_bytes < 2**30
    assert lm.explain(lm.cat(parts, dim=-1), "sum", memory_budget="1GiB").planned.peak_bytes < 2**20


@settings(max_examples=60, deadline=None)
@given(low_rank_cats(), st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_products_with_cats_match_torch(case, seed, before, after):
    """A cat inside a product (with factors before and/or after it, batches broadcasting)
    evaluates, sums and decomposes like torch's dense product."""
    X, D, _ = case
    g = torch.Generator().manual_seed(seed)
    if before:
        P = torch.randn(3, X.shape[-2], generator=g, dtype=torch.float64)
        X, D = lm.lazy(P) @ X, P @ D
    if after:
        G = torch.randn(X.shape[-1], 4, generator=g, dtype=torch.float64)
        X, D = X @ lm.lazy(G), D @ G
    assert_close(X.to_dense(), D, rtol=1e-12)
    assert_close(X.sum(), D.sum(), rtol=1e-10)
    assert_close(X.sum(-1), D.sum(-1), rtol=1e-10)
    assert_close(lm.linalg.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-10)
    S = torch.linalg.svdvals(D)
    got = lm.linalg.svdvals(X, full=True)
    assert_close(got, S, rtol=1e-9, atol=1e-9 * S.max().item())


# ---- Frobenius norms over any two dims ------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=2), st.integers(1, 4), st.integers(1, 4),
       st.data(), st.booleans(), st.integers(0, 2**31 - 1))
def test_frobenius_norm_over_any_two_dims_is_torchs(batch, m, n, data, keepdim, seed):
    """``torch.linalg.norm(X, 'fro', dim=(0, 2))`` (and ``matrix_norm``) over dims that are not
    the last two is the 2-norm of the entries over them, as in torch (it was refused while
    ``torch.norm(X, 'fro', dim=(0, 2))`` answered)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*batch, m, 2, generator=g, dtype=torch.float64)
    b = torch.randn(2, n, generator=g, dtype=torch.float64)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    dims = tuple(data.draw(st.lists(st.integers(-D.ndim, D.ndim - 1), min_size=2, max_size=2,
                                    unique_by=lambda d: d % D.ndim)))
    expected = torch.linalg.matrix_norm(D, "fro", dim=dims, keepdim=keepdim)
    for got in (torch.linalg.norm(X, "fro", dim=dims, keepdim=keepdim),
                lm.linalg.matrix_norm(X, "fro", dim=dims, keepdim=keepdim)):
        assert got.shape == expected.shape
        assert_close(got, expected, rtol=1e-12)
