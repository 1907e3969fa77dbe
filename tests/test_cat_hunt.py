"""Random expressions with cats anywhere (nested, transposed, batched, scaled, inside sums,
products and indices, cast, conjugated, real and imaginary parts) against dense torch in float64 and
complex128: values, products with a vector, trace, diagonal, norms and singular values; and on
shape-only symbols of low-rank parts, explain's FLOPs and peak never those of a matrix formed
whole."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_properties import SETTINGS, assert_close, chains

import lazymat as lm
from lazymat import linalg as LA


def _pair(draw, rows: int, cols: int, batch: tuple, dtype, depth: int):
    """(lazy, dense) of shape ``(*batch, rows, cols)``: a chain, or (depth left) a cat of two
    such along a random axis, maybe transposed, scaled, summed with a chain or multiplied."""
    kind = draw(st.sampled_from(["chain", "cat", "cat", "sum", "product"] if depth else ["chain"]))
    if kind == "chain" or (kind == "cat" and max(rows, cols) < 2):
        X, D = draw(chains(rows, cols, batch, dtype))
    elif kind == "cat":
        axis = draw(st.sampled_from([a for a, n in ((-1, cols), (-2, rows)) if n > 1]))
        n = cols if axis == -1 else rows
        k = draw(st.integers(1, n - 1))
        transposed = draw(st.booleans())
        shapes = [(rows, k), (rows, n - k)] if axis == -1 else [(k, cols), (n - k, cols)]
        if transposed:  # build the transpose's parts, then transpose the cat
            shapes, axis = [(c, r) for r, c in shapes], -3 - axis
        (P, E), (Q, F) = (_pair(draw, *s, batch, dtype, depth - 1) for s in shapes)
        b = torch.broadcast_shapes(E.shape[:-2], F.shape[:-2])
        X = lm.cat([P, Q], dim=axis)
        D = torch.cat([E.expand(*b, *E.shape[-2:]), F.expand(*b, *F.shape[-2:])], dim=axis)
        if transposed:
            X, D = X.mT, D.mT
    elif kind == "sum":
        X, D = _pair(draw, rows, cols, batch, dtype, depth - 1)
        Y, E = draw(chains(rows, cols, batch, dtype))
        X, D = X - Y, D - E
    else:
        k = draw(st.integers(1, 4))
        X, D = _pair(draw, rows, k, batch, dtype, depth - 1)
        Y, E = _pair(draw, k, cols, batch, dtype, depth - 1)
        X, D = X @ Y, D @ E
    if draw(st.booleans()):
        c = draw(st.sampled_from([-1.5, 0.5, 2.0] + ([1 + 2j, -0.5j] if dtype.is_complex else [])))
        X, D = c * X, c * D
    return X, D


@st.composite
def cat_expressions(draw, dtype=torch.float64):
    """(lazy, dense): a random expression with cats in it, then indexed, conjugated or split into
    its real or imaginary part."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    X, D = _pair(draw, rows, cols, batch, dtype, draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["rows", "cols", "list", "T", "conj", "real", "imag", "complex"]))
        m, n = D.shape[-2:]
        if op in ("rows", "cols"):
            size = m if op == "rows" else n
            lo = draw(st.integers(0, size - 1))
            sl = slice(lo, draw(st.integers(lo + 1, size)), draw(st.integers(1, 2)))
            key = (..., sl, slice(None)) if op == "rows" else (..., sl)
            X, D = X[key], D[key]
        elif op == "list":
            cols = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4))
            X, D = X[..., cols], D[..., cols]
        elif op == "T":
            X, D = X.mT, D.mT
        elif op == "conj":
            X, D = X.conj(), D.conj()
        elif op == "complex":  # a widening cast (exact)
            X, D = X.to(torch.complex128), D.to(torch.complex128)
        elif D.dtype.is_complex:
            try:
                Y = X.real if op == "real" else X.imag
            except NotImplementedError:  # not exact structure here (a product's parts)
                continue
            X, D = Y, D.real if op == "real" else D.imag
    return X, D


def _dense(D: torch.Tensor) -> torch.Tensor:
    return D.resolve_conj()


@SETTINGS
@given(cat_expressions(), st.integers(0, 2**31 - 1))
def test_values_and_products_of_expressions_with_cats_match_torch(case, seed):
    X, D = case
    assert X.shape == D.shape
    assert_close(X.to_dense(), D)
    v = torch.randn(D.shape[-1], 2, generator=torch.Generator().manual_seed(seed), dtype=D.dtype)
    assert_close((X @ v).to_dense(), D @ v)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@SETTINGS
@given(data=st.data())
def test_linear_algebra_of_expressions_with_cats_matches_torch(dtype, data):
    X, D = data.draw(cat_expressions(dtype))
    D = _dense(D)
    m, n = D.shape[-2:]
    k = min(m, n)
    assert_close(LA.diagonal(X), torch.diagonal(D, dim1=-2, dim2=-1))
    assert_close(LA.trace(X), torch.diagonal(D[..., :k, :k], dim1=-2, dim2=-1).sum(-1))
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D))
    got, want = LA.svdvals(X), torch.linalg.svdvals(D)  # lazymat returns the core's (at most k)
    assert_close(got, want[..., :got.shape[-1]], rtol=1e-8)
    assert_close(want[..., got.shape[-1]:], torch.zeros_like(want[..., got.shape[-1]:]), rtol=1e-8)


def _symbols(draw, rows: int, cols: int, r: int, depth: int, names: list):
    """A shape-only expression of rank at most ``r`` per leaf part (``L @ R`` of width ``r``), with
    cats as :func:`_pair` draws them."""
    kind = draw(st.sampled_from(["low", "cat", "cat", "sum"] if depth else ["low"]))
    if kind == "low" or max(rows, cols) < 2:
        names.append(len(names))
        X = lm.symbol(f"L{len(names)}", (rows, r)) @ lm.symbol(f"R{len(names)}", (r, cols))
    elif kind == "cat":
        axis = draw(st.sampled_from([a for a, n in ((-1, cols), (-2, rows)) if n > 1]))
        n = cols if axis == -1 else rows
        k = draw(st.integers(1, n - 1))
        shapes = [(rows, k), (rows, n - k)] if axis == -1 else [(k, cols), (n - k, cols)]
        X = lm.cat([_symbols(draw, *s, r, depth - 1, names) for s in shapes], dim=axis)
    else:
        names.append(len(names))
        X = _symbols(draw, rows, cols, r, depth - 1, names) - 2 * (
            lm.symbol(f"L{len(names)}", (rows, r)) @ lm.symbol(f"R{len(names)}", (r, cols)))
    return X


@SETTINGS
@given(st.data())
def test_explain_of_low_rank_cats_never_forms_a_matrix(data):
    """4096 x 4096 of rank-4 parts, nested cats, sums, an outer product and a slice: every op's
    FLOPs stay below the ``2 n^2 r`` of forming one rank-``r`` part (a cat times a cat reads its
    spectrum off a core several ``r`` wide: ``n^2`` FLOPs and more) and the peak below the ``n^2``
    bytes of a formed matrix."""
    n, r = 4096, 4
    X = _symbols(data.draw, n, n, r, data.draw(st.integers(1, 3)), [])
    kind = data.draw(st.sampled_from(["plain", "T", "left", "right", "slice", "square", "double"]))
    P, Q = lm.symbol("P", (n, r)), lm.symbol("Q", (r, n))
    if kind == "T":
        X = X.mT
    elif kind == "square":  # a cat times a cat: each splits the other
        X = X @ _symbols(data.draw, n, n, r, 1, [100])
    elif kind == "double":  # a widening cast goes into the parts
        X = X.double()
    elif kind == "left":
        X = P @ Q @ X
    elif kind == "right":
        X = X @ P @ Q
    elif kind == "slice":
        lo = data.draw(st.integers(0, n - 2))
        X = X[:, lo:data.draw(st.integers(lo + 1, n))]
    v = lm.symbol("v", (X.shape[-1], 1), dtype=X.dtype)
    for op, y in [("trace", X), ("diagonal", X), ("matrix_norm", X), ("svdvals", X), ("to_dense", X @ v),
                  ("sum", X)]:
        planned = lm.explain(y, op).planned
        assert planned.flops < 2 * n * n * r and planned.peak_bytes < n * n, (kind, op, planned)
