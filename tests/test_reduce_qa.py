"""Reductions of lazy expressions tried as a demanding user would: argument combinations at the
edges (dtype= casts, empty tensors reduced over every dim) give torch's answer on the dense
tensor, or torch's own kind of error with a message naming the value at fault."""

import re

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lazymat as lm

SETTINGS = settings(max_examples=80, deadline=None)
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]


def _outcome(call):
    """The result of ``call()``, or the type of the exception it raised."""
    try:
        return call()
    except (RuntimeError, IndexError, TypeError, ValueError) as e:
        return type(e)


def _same(got, want) -> bool:
    if isinstance(want, type) or isinstance(got, type):
        return got is want
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    return all(g.shape == w.shape and g.dtype == w.dtype and torch.allclose(g, w, rtol=1e-2, atol=1e-2,
                                                                            equal_nan=True)
               for g, w in zip(got, want, strict=True))


@SETTINGS
@given(src=st.sampled_from(DTYPES), dtype=st.sampled_from(DTYPES), ord=st.sampled_from([2, 1, float("inf")]),
       dim=st.sampled_from([None, -1, 0, (0, 1)]))
def test_vector_norm_dtype_follows_torchs_casting_rule(src, dtype, ord, dim):
    g = torch.Generator().manual_seed(0)
    A = torch.randint(-3, 4, (5, 2), generator=g).to(src)
    B = torch.randint(-3, 4, (2, 4), generator=g).to(src)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    got = _outcome(lambda: torch.linalg.vector_norm(X, ord, dim, dtype=dtype))
    want = _outcome(lambda: torch.linalg.vector_norm(D, ord, dim, dtype=dtype))
    assert _same(got, want), (got, want)


def test_vector_norm_refuses_a_narrowing_dtype_by_name():
    X = lm.lazy(torch.randn(4, 3, dtype=torch.float64)) @ lm.lazy(torch.randn(3, 5, dtype=torch.float64))
    narrowing = r"float64 expression of shape \(4, 5\) cannot be cast to torch.float32"
    with pytest.raises(RuntimeError, match=narrowing):
        torch.linalg.vector_norm(X, 2, -1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"dtype should be real .*got torch.complex128"):
        torch.linalg.vector_norm(X, dtype=torch.complex128)


_EMPTY_CALLS = {
    "amax()": lambda x: torch.amax(x),
    "amax(dim=())": lambda x: torch.amax(x, dim=()),
    "amin(0, 1)": lambda x: torch.amin(x, (0, 1)),
    "amax(-1)": lambda x: torch.amax(x, -1),
    "max()": lambda x: torch.max(x),
    "min()": lambda x: torch.min(x),
    "max(1)": lambda x: tuple(torch.max(x, 1)),
    "argmax()": lambda x: torch.argmax(x),
    "argmin(0)": lambda x: torch.argmin(x, 0),
    "topk(0)": lambda x: tuple(torch.topk(x, 0)),
    "sum()": lambda x: torch.sum(x),
    "mean(-1)": lambda x: torch.mean(x, -1),
    "norm inf": lambda x: torch.linalg.vector_norm(x, float("inf")),
    "norm 1, dim 0": lambda x: torch.linalg.vector_norm(x, 1, 0),
}


@SETTINGS
@given(shape=st.sampled_from([((0, 3), (3, 4)), ((5, 0), (0, 4)), ((5, 3), (3, 0)), ((2, 0, 3), (3, 4))]),
       name=st.sampled_from(sorted(_EMPTY_CALLS)))
def test_empty_expressions_answer_or_fail_like_torch(shape, name):
    A, B = torch.randn(*shape[0], dtype=torch.float64), torch.randn(*shape[1], dtype=torch.float64)
    call = _EMPTY_CALLS[name]
    got, want = _outcome(lambda: call(lm.lazy(A) @ lm.lazy(B))), _outcome(lambda: call(A @ B))
    assert _same(got, want), (name, got, want)


def test_amax_of_an_empty_expression_over_all_dims_is_torchs_error():
    X = lm.lazy(torch.randn(0, 3)) @ lm.lazy(torch.randn(3, 4))
    with pytest.raises(RuntimeError, match="Specify the reduction dim"):
        torch.amax(X)
    with pytest.raises(RuntimeError, match="max"):
        torch.max(X)


@SETTINGS
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16]), scale=st.floats(0.5, 30.0),
       dim=st.sampled_from([-1, -2, 0, 1]), seed=st.integers(0, 2**16))
def test_half_precision_line_2norms_match_the_float64_norm(dtype, scale, dim, seed):
    """Row and column 2-norms square the entries: in float16 a square overflows from 256, so
    they must be accumulated wider, as torch does for the dense tensor."""
    g = torch.Generator().manual_seed(seed)
    A = (scale * torch.randn(6, 4, generator=g)).to(dtype)
    B = (scale * torch.randn(4, 30, generator=g)).to(dtype)
    got = torch.linalg.vector_norm(lm.lazy(A) @ lm.lazy(B), dim=dim)
    exact = torch.linalg.vector_norm(A.double() @ B.double(), dim=dim)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=1e-3 * scale**2)


def test_float16_row_norms_past_256_do_not_overflow():
    g = torch.Generator().manual_seed(0)
    A, B = (20 * torch.randn(6, 4, generator=g)).half(), (20 * torch.randn(4, 50, generator=g)).half()
    got = torch.linalg.vector_norm(lm.lazy(A) @ lm.lazy(B), dim=-1)
    torch.testing.assert_close(got, torch.linalg.vector_norm(A @ B, dim=-1), rtol=1e-2, atol=0)


_OUT_CALLS = {
    "topk": lambda x, out: torch.topk(x, 2, out=None if out is None else (out, out.long())),
    "sum": lambda x, out: torch.sum(x, 1, out=out),
    "amax": lambda x, out: torch.amax(x, 0, out=out),
    "argmax": lambda x, out: torch.argmax(x, 1, out=out),
    "linalg.vector_norm": lambda x, out: torch.linalg.vector_norm(x, 1, -1, out=out),
    "matmul": lambda x, out: torch.matmul(x, torch.ones(5, 2, dtype=torch.float64), out=out),
    "linalg.svdvals": lambda x, out: torch.linalg.svdvals(x, out=out),
}


@pytest.mark.parametrize("name", sorted(_OUT_CALLS))
def test_out_arguments_are_refused_by_name_and_out_none_is_torchs_default(name):
    A, B = torch.randn(4, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    refused = rf"torch.{re.escape(name)}\(\.\.\., out=\.\.\.\) on a lazy expression"
    with pytest.raises(TypeError, match=refused):
        _OUT_CALLS[name](X, torch.empty(0, dtype=torch.float64))
    got, want = (_plain(_OUT_CALLS[name](Y, None)) for Y in (X, A @ B))
    assert _same(got, want)


def _plain(result):
    """A tensor, or a tuple of tensors, from a torch result or a lazy expression."""
    if isinstance(result, tuple):
        return tuple(result)
    return result if isinstance(result, torch.Tensor) else result.to_dense()


_INT_LIKE = [lambda v: v, np.int64, np.int32, lambda v: torch.tensor(v)]


@SETTINGS
@given(wrap=st.sampled_from(_INT_LIKE), k=st.integers(0, 5), dim=st.integers(-2, 1),
       call=st.sampled_from(["topk", "amax", "sum", "argmax", "max", "mean", "norm_tuple"]))
def test_numpy_and_tensor_integers_are_taken_as_ints_like_torch(wrap, k, dim, call):
    """torch takes anything with ``__index__`` for ``k`` and ``dim`` (NumPy integers, 0-dim
    integer tensors); so must the routed functions. ``torch.max(x, tensor)`` is the elementwise
    maximum, refused on a lazy expression, so a tensor dim is not tried there."""
    assume(not (call == "max" and wrap is _INT_LIKE[-1]))
    g = torch.Generator().manual_seed(k)
    A = torch.randn(6, 3, dtype=torch.float64, generator=g)
    B = torch.randn(3, 5, dtype=torch.float64, generator=g)
    calls = {
        "topk": lambda x: tuple(torch.topk(x, wrap(k), dim=wrap(dim))),
        "amax": lambda x: torch.amax(x, wrap(dim)),
        "sum": lambda x: torch.sum(x, wrap(dim)),
        "argmax": lambda x: torch.argmax(x, wrap(dim)),
        "max": lambda x: tuple(torch.max(x, wrap(dim))),
        "mean": lambda x: x.mean((wrap(dim),)),
        "norm_tuple": lambda x: torch.linalg.vector_norm(x, 1, (wrap(dim),)),
    }
    got = _outcome(lambda: calls[call](lm.lazy(A) @ lm.lazy(B)))
    want = _outcome(lambda: calls[call](A @ B))
    assert _same(got, want), (call, got, want)


@pytest.mark.parametrize("ord", [np.float64(1.0), np.int64(3), torch.tensor(0.5), np.float32(float("inf"))])
def test_numpy_and_tensor_ords_are_taken_as_numbers(ord):
    A, B = torch.randn(6, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    got = torch.linalg.vector_norm(lm.lazy(A) @ lm.lazy(B), ord, -1)
    torch.testing.assert_close(got, torch.linalg.vector_norm(A @ B, ord, -1))


def test_topk_with_a_numpy_k_matches_torch():
    A, B = torch.randn(6, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(torch.topk(lm.lazy(A) @ lm.lazy(B), np.int64(2)).indices, torch.topk(A @ B, 2).indices)


@pytest.mark.parametrize("dim", [np.int64(0), torch.tensor(1), -1])
@pytest.mark.parametrize("ord", [None, 1, float("inf")])
def test_linalg_norm_takes_an_integer_like_dim(dim, ord):
    A, B = torch.randn(6, 3, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    got = torch.linalg.norm(lm.lazy(A) @ lm.lazy(B), ord, dim)
    torch.testing.assert_close(got, torch.linalg.norm(A @ B, ord, dim))


@SETTINGS
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16]), scale=st.floats(1.0, 200.0),
       dim=st.sampled_from([-2, None, (0, 1), -1]), seed=st.integers(0, 2**16))
def test_half_precision_sums_do_not_overflow_in_the_ones_products(dtype, scale, dim, seed):
    """``1^T A B`` adds up ``1^T A`` first: in float16 that partial sum overflows where the
    entries of ``A B`` cancel and the dense sum (accumulated in float32 by torch) does not."""
    g = torch.Generator().manual_seed(seed)
    A = (scale * (1 + torch.rand(1000, 2, generator=g))).to(dtype)  # 1^T A reaches 4e5
    B = torch.tensor([[1.0, -2.0], [-1.0, 2.0]]).to(dtype)
    got = lm.lazy(A) @ lm.lazy(B)
    got = got.sum() if dim is None else got.sum(dim)
    exact = (A.double() @ B.double()).sum() if dim is None else (A.double() @ B.double()).sum(dim)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), exact, rtol=2e-2, atol=1e-2 * scale * 1000)


def test_half_float16_column_sums_of_a_cancelling_product_are_zero():
    A, B = torch.full((1000, 2), 100.0).half(), torch.tensor([[1.0, 2.0], [-1.0, -2.0]]).half()
    X = lm.lazy(A) @ lm.lazy(B)
    assert torch.equal(X.sum(-2), (A @ B).sum(-2)) and torch.equal(X.mean(), (A @ B).mean())
