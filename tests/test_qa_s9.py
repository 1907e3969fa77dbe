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
