"""A demanding user's calls, session 3: each class of wrong answer found, as a property against
eager torch on the dense tensor (float64), plus the example that exposed it."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

SETTINGS = settings(max_examples=60, deadline=None)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]


def _outcome(call):
    """``call()``'s result, or the type of the exception it raised (torch's errors are RuntimeError,
    IndexError, TypeError or ValueError; lazymat's name the same kinds)."""
    try:
        return call()
    except (RuntimeError, IndexError, TypeError, ValueError) as e:
        return type(e)


def _same(got, want, tol=1e-6) -> bool:
    """Both raised, or both returned tensors of one shape and dtype and close values."""
    if isinstance(want, type) or isinstance(got, type):
        return isinstance(want, type) and isinstance(got, type)
    return (got.shape == want.shape and got.dtype == want.dtype
            and torch.allclose(got.double(), want.double(), rtol=tol, atol=tol, equal_nan=True))


def _product(dtype, shape=(2, 4, 3), inner=3, seed=0):
    """A lazy product ``A @ B`` of the given dtype and the dense tensor it stands for."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*shape[:-1], inner, generator=g, dtype=torch.complex128).to(dtype)
    B = torch.randn(inner, shape[-1], generator=g, dtype=torch.complex128).to(dtype)
    if not dtype.is_complex:
        A, B = A.real if A.is_complex() else A, B.real if B.is_complex() else B
    return lm.lazy(A) @ lm.lazy(B), A @ B


# ---- matrix_norm(dtype=...) follows torch's casting rule -------------------------------------
# Found: matrix_norm(complex X, dtype=torch.float64) cast X to float64 first, silently dropping
# the imaginary part (a wrong norm where torch raises); a narrowing dtype was accepted too.

@SETTINGS
@given(src=st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]),
       dtype=st.sampled_from(DTYPES), ord=st.sampled_from(["fro", "nuc", 2, -2, 1, float("inf")]))
def test_matrix_norm_dtype_follows_torchs_rule(src, dtype, ord):
    X, D = _product(src)
    got = _outcome(lambda: torch.linalg.matrix_norm(X, ord, dtype=dtype))
    want = _outcome(lambda: torch.linalg.matrix_norm(D, ord, dtype=dtype))
    assert _same(got, want, tol=1e-3), (got, want)


def test_matrix_norm_refuses_a_real_dtype_for_a_complex_expression():
    X, D = _product(torch.complex128)
    complex_only = r"matrix_norm: dtype should be complex .*complex128.*got torch.float64"
    with pytest.raises(RuntimeError, match=complex_only):
        torch.linalg.matrix_norm(X, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"cannot be cast to torch.float32"):
        torch.linalg.norm(_product(torch.float64)[0], dtype=torch.float32)
    assert torch.allclose(torch.linalg.matrix_norm(X, dtype=torch.complex128), torch.linalg.matrix_norm(D))


# ---- dims out of range are refused like torch, never wrapped ---------------------------------
# Found: matrix_norm(X, dim=(4, 5)), torch.diagonal(X, 0, -5, -4), torch.transpose(X, 4, 5) and
# torch.linalg.norm / torch.norm over dim=(4, 5) of a 3-D expression answered for the last two
# dims (the dims were taken modulo ndim) where torch raises IndexError.

_DIM_CALLS = {
    "matrix_norm": lambda x, d0, d1: torch.linalg.matrix_norm(x, dim=(d0, d1)),
    "linalg.norm": lambda x, d0, d1: torch.linalg.norm(x, "nuc", dim=(d0, d1)),
    "torch.norm": lambda x, d0, d1: torch.norm(x, "nuc", dim=(d0, d1)),
    "diagonal": lambda x, d0, d1: torch.diagonal(x, 0, d0, d1),
    "linalg.diagonal": lambda x, d0, d1: torch.linalg.diagonal(x, dim1=d0, dim2=d1),
    "transpose": lambda x, d0, d1: torch.transpose(x, d0, d1),
    "Expr.transpose": lambda x, d0, d1: x.transpose(d0, d1),
}


def _dense(t):
    return t.to_dense() if lm.is_lazy(t) else t


@SETTINGS
@given(name=st.sampled_from(sorted(_DIM_CALLS)), ndim=st.integers(2, 4),
       d0=st.integers(-6, 5), d1=st.integers(-6, 5))
def test_dims_out_of_range_raise_index_error_like_torch(name, ndim, d0, d1):
    X, D = _product(torch.float64, shape=(2, 3, 4, 4)[4 - ndim:])
    call = _DIM_CALLS[name]
    try:
        want = call(D, d0, d1)
    except IndexError:
        with pytest.raises(IndexError, match=rf"{d0 if not -ndim <= d0 < ndim else d1}.*range"):
            call(X, d0, d1)
        return
    except RuntimeError:  # torch refuses for another reason (a repeated dim): lazymat must too
        with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
            call(X, d0, d1)
        return
    try:
        got = _dense(call(X, d0, d1))
    except NotImplementedError:  # dims lazymat does not support (a batch dim): refused by name
        assert sorted((d0 % ndim, d1 % ndim)) != [ndim - 2, ndim - 1] or d0 % ndim == ndim - 1
        return
    assert got.shape == want.shape and torch.allclose(got, want), (got, want)


def test_matrix_norm_over_dims_past_the_end_raises():
    X, D = _product(torch.float64)
    with pytest.raises(IndexError, match=r"dim 4 is out of range .*\(2, 4, 3\)"):
        torch.linalg.matrix_norm(X, dim=(4, 5))
    with pytest.raises(IndexError, match=r"dim -5 is out of range"):
        torch.diagonal(X, 0, -5, -4)


# ---- trace of a rectangular matrix is the sum of its main diagonal, as in torch ---------------
# Found: torch.trace(X), X.trace() and lm.linalg.trace(X) raised "trace needs a square matrix" for
# a (4, 6) expression; torch.trace sums the min(m, n) entries of the main diagonal.

@SETTINGS
@given(batch=st.sampled_from([(), (2,), (2, 1)]), m=st.integers(0, 5), n=st.integers(0, 5),
       inner=st.integers(1, 3), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float64, torch.complex128]))
def test_trace_of_rectangular_expressions_sums_the_main_diagonal(batch, m, n, inner, seed, dtype):
    X, D = _product(dtype, shape=(*batch, m, n), inner=inner, seed=seed)
    want = D.diagonal(0, -2, -1).sum(-1)
    got = lm.linalg.trace(X)
    assert got.shape == want.shape and torch.allclose(got, want)
    if not batch:
        assert torch.allclose(torch.trace(X), torch.trace(D))
        assert torch.allclose(X.trace(), D.trace())


def test_trace_of_a_wide_product():
    A, B = torch.arange(12.0).reshape(4, 3), torch.arange(18.0).reshape(3, 6)
    X = lm.lazy(A) @ lm.lazy(B)
    assert torch.trace(X).item() == torch.trace(A @ B).item()  # exact: small integers


@SETTINGS
@given(m=st.integers(1, 60), n=st.integers(1, 60), r=st.integers(1, 8),
       op=st.sampled_from(["trace", "diagonal"]))
def test_explain_costs_the_trace_and_diagonal_of_rectangular_products(m, n, r, op):
    """explain(op='trace'/'diagonal') of A @ B (m x r times r x n) counts the k = min(m, n)
    diagonal entries' inner products: k r multiply-adds, 2 k r FLOPs (it refused non-square)."""
    X = lm.symbol("A", (m, r)) @ lm.symbol("B", (r, n))
    assert X.explain(op).to_dict()["planned"]["flops"] == 2 * min(m, n) * r


# ---- the lazy arithmetic torch users call by name: functions and Tensor methods --------------
# Found: X.matmul(t), X.mm(t), X.add(Y), X.mul(2), X.neg(), X.sub(Y), X.div(2), X.adjoint() raised
# "would need the dense matrix" although each is lazy structure (torch.matmul(X, t) answered);
# torch.neg, torch.sub, torch.div, torch.conj, torch.adjoint, torch.swapaxes were refused, and
# torch.add(X, Y, alpha=2) failed with Python's "unexpected keyword argument 'alpha'".

def _calls(other, vec, mat):
    return {
        "X.matmul(mat)": lambda x: x.matmul(mat), "X.matmul(vec)": lambda x: x.matmul(vec),
        "X.mm(mat)": lambda x: x.mm(mat), "X.add(Y)": lambda x: x.add(other(x)),
        "X.add(Y, alpha=-2)": lambda x: x.add(other(x), alpha=-2), "X.sub(Y)": lambda x: x.sub(other(x)),
        "X.mul(3)": lambda x: x.mul(3), "X.mul(0-dim)": lambda x: x.mul(torch.tensor(0.5)),
        "X.div(4)": lambda x: x.div(4), "X.neg()": lambda x: x.neg(), "X.adjoint()": lambda x: x.adjoint(),
        "X.swapaxes(-1, -2)": lambda x: x.swapaxes(-1, -2),
        "X.swapdims(-2, -1)": lambda x: x.swapdims(-2, -1),
        "torch.neg": torch.neg, "torch.conj": torch.conj, "torch.adjoint": torch.adjoint,
        "torch.sub(X, Y, alpha=0.5)": lambda x: torch.sub(x, other(x), alpha=0.5),
        "torch.add(X, Y, alpha=2)": lambda x: torch.add(x, other(x), alpha=2),
        "torch.div(X, 2)": lambda x: torch.div(x, 2),
        "torch.true_divide(X, 2)": lambda x: torch.true_divide(x, 2),
        "torch.swapaxes(X, -1, -2)": lambda x: torch.swapaxes(x, -1, -2),
        "torch.swapdims(X, -2, -1)": lambda x: torch.swapdims(x, -2, -1),
    }


@SETTINGS
@given(batch=st.sampled_from([(), (3,), (2, 1)]), dtype=st.sampled_from([torch.float64, torch.complex128]),
       name=st.sampled_from(sorted(_calls(None, None, None))), seed=st.integers(0, 2**16))
def test_lazy_arithmetic_by_torch_name_matches_torch(batch, dtype, name, seed):
    X, D = _product(dtype, shape=(*batch, 4, 5), seed=seed)
    Y, E = _product(dtype, shape=(*batch, 4, 5), seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    vec = torch.randn(5, generator=g, dtype=torch.float64).to(dtype)
    mat = torch.randn(5, 2, generator=g, dtype=torch.float64).to(dtype)
    pairs = {id(X): Y, id(D): E}
    call = _calls(lambda x: pairs[id(x)], vec, mat)[name]
    want = _outcome(lambda: call(D))
    got = _outcome(lambda: _dense(call(X)))
    if name == "X.mm(mat)" and batch:  # torch.mm takes 2-D matrices only; lazymat broadcasts
        return
    assert _same(got, want, tol=1e-10), (name, got, want)


# ---- cat takes torch's dims: non-negative ones, and torch.cat / hstack / vstack ---------------
# Found: lm.cat([X, Y], dim=1) of 2-D expressions raised "supports dim=-1 or -2, got 1" (dim 1 is
# the column dim), and torch.cat([X, Y], dim=-1) was refused.

@SETTINGS
@given(batch=st.sampled_from([(), (2,)]), dim=st.sampled_from([None, -4, -3, -2, -1, 0, 1, 2, 3]),
       via=st.sampled_from(["lm.cat", "torch.cat", "torch.concat", "torch.hstack", "torch.vstack"]),
       seed=st.integers(0, 2**16))
def test_cat_along_the_matrix_dims_like_torch(batch, dim, via, seed):
    X, D = _product(torch.float64, shape=(*batch, 4, 4), seed=seed)
    Y, E = _product(torch.float64, shape=(*batch, 4, 4), inner=2, seed=seed + 1)
    if via.endswith("stack"):
        dim, cat = None, getattr(torch, via.split(".")[1])
    else:
        cat = lm.cat if via == "lm.cat" else getattr(torch, via.split(".")[1])
    if dim is None and via == "lm.cat":
        dim = -1  # lm.cat's own default: the columns
    call = (lambda parts: cat(parts)) if dim is None else (lambda parts: cat(parts, dim=dim))
    want = _outcome(lambda: torch.cat([D, E], dim) if via == "lm.cat" else call([D, E]))
    try:
        got = _dense(call([X, Y]))
    except NotImplementedError:  # a batch dim: refused by name
        assert (0 if dim is None else dim) % X.ndim < X.ndim - 2
        return
    except (IndexError, ValueError) as e:
        assert isinstance(want, type), (dim, e)
        return
    assert _same(got, want, tol=1e-12), (dim, got, want)


# ---- diagonals off the main one, and the last two dims in either order -----------------------
# torch.diagonal(X, offset=k, dim1=-2, dim2=-1) is the main diagonal of a slice of X (columns k..
# for k > 0, rows -k.. for k < 0); dims (-1, -2) read X.mT. Both were refused.

@SETTINGS
@given(batch=st.sampled_from([(), (2,)]), m=st.integers(0, 5), n=st.integers(0, 5), offset=st.integers(-7, 7),
       reverse=st.booleans(), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float64, torch.complex128]))
def test_diagonal_with_an_offset_like_torch(batch, m, n, offset, reverse, seed, dtype):
    X, D = _product(dtype, shape=(*batch, m, n), seed=seed)
    dims = (-1, -2) if reverse else (-2, -1)
    want = torch.diagonal(D, offset, *dims)
    for got in (torch.diagonal(X, offset, *dims), lm.linalg.diagonal(X, offset, *dims)):
        assert got.shape == want.shape and torch.allclose(got, want)


# ---- matrix_norm over the last two dims in either order --------------------------------------
# torch.linalg.matrix_norm(X, ord, dim=(-1, -2)) is the norm of X.mT (ord 1 and inf swap): refused.

@SETTINGS
@given(ord=st.sampled_from(["fro", "nuc", 2, -2, 1, -1, float("inf"), -float("inf")]),
       dim=st.sampled_from([(-1, -2), (2, 1), (-2, -1), (1, -1)]), keepdim=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matrix_norm_over_either_order_of_the_matrix_dims(ord, dim, keepdim, seed):
    X, D = _product(torch.float64, shape=(2, 4, 3), seed=seed)
    want = torch.linalg.matrix_norm(D, ord, dim=dim, keepdim=keepdim)
    got = torch.linalg.matrix_norm(X, ord, dim=dim, keepdim=keepdim)
    assert got.shape == want.shape and torch.allclose(got, want)


def test_the_examples_that_exposed_the_refusals():
    """The calls as first tried, on small integers (exact): each now matches torch."""
    A, B = torch.arange(8.0).reshape(4, 2), torch.arange(6.0).reshape(2, 3) - 2
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    t = torch.ones(3, 2)
    assert torch.equal(_dense(X.matmul(t)), D.matmul(t)) and torch.equal(_dense(X.mm(t)), D.mm(t))
    assert torch.equal(X.neg().to_dense(), D.neg()) and torch.equal(X.mul(2).to_dense(), D.mul(2))
    assert torch.equal(torch.add(X, X, alpha=2).to_dense(), torch.add(D, D, alpha=2))
    assert torch.equal(torch.cat([X, X], dim=1).to_dense(), torch.cat([D, D], dim=1))
    assert torch.equal(lm.cat([X, X], dim=0).to_dense(), torch.cat([D, D], dim=0))
    assert torch.equal(torch.diagonal(X, 1), torch.diagonal(D, 1))
    assert torch.equal(torch.diagonal(X, -2, 1, 0), torch.diagonal(D, -2, 1, 0))
    assert torch.equal(torch.linalg.matrix_norm(X, 1, dim=(1, 0)), torch.linalg.matrix_norm(D, 1, dim=(1, 0)))
