"""Factors formed in the layout whose products run fast (lazymat.core.dense_side): the same
values as the plain route, and no product of transposed leaf operands where one can be avoided."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

import lazymat as lm
from lazymat import linalg as LA
from lazymat.core import dense_side

from conftest import assert_close, randn


class MatmulOperands(TorchFunctionMode):
    """Records, for every matmul, whether each operand is a transposed (column-major) view, and
    whether it is a view of ``leaf``'s storage."""

    def __init__(self, leaf=None):
        super().__init__()
        self.transposed, self.of_leaf = [], []
        self.ptr = None if leaf is None else leaf.untyped_storage().data_ptr()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("matmul", "__matmul__"):
            ops = [a for a in args[:2] if isinstance(a, torch.Tensor)]
            self.transposed.append(tuple(a.ndim >= 2 and a.stride(-2) < a.stride(-1) for a in ops))
            self.of_leaf.append(tuple(a.untyped_storage().data_ptr() == self.ptr for a in ops))
        return func(*args, **(kwargs or {}))

    def transposed_leaf_reads(self):
        return sum(t and o for ts, os in zip(self.transposed, self.of_leaf, strict=True)
                   for t, o in zip(ts, os, strict=True))


def qk(gen, vocab=300, d_model=40, d_head=6):
    E, Q, K = randn(gen, vocab, d_model), randn(gen, d_model, d_head), randn(gen, d_model, d_head)
    return lm.lazy(E), lm.lazy(Q), lm.lazy(K), E, Q, K


def test_wide_right_factor_is_formed_untransposed(gen):
    """R = W_K^T W_E^T is formed as (W_E W_K)^T: no GEMM reads a transposed operand."""
    E, Q, K, Ed, Qd, Kd = qk(gen)
    L, R = lm.factor(E @ Q @ K.T @ E.T)
    with MatmulOperands() as seen:
        RH = dense_side(R, adjoint=True)
        Ld = dense_side(L)
    assert seen.transposed and all(t == (False, False) for t in seen.transposed)
    assert_close(RH, Ed @ Kd)
    assert_close(Ld, Ed @ Qd)


@pytest.mark.parametrize("op", ["svd", "svdvals", "matrix_norm"])
def test_single_head_routes_read_no_transposed_leaf(gen, op, monkeypatch, factored_route):
    """No product reads the embedding W_E through a transpose (the slow GEMM layout)."""
    E, Q, K, Ed, Qd, Kd = qk(gen)
    X = E @ Q @ K.T @ E.T
    with MatmulOperands(Ed) as seen:
        out = getattr(LA, op)(X)
    assert any(any(o) for o in seen.of_leaf)  # W_E was read by a product
    assert seen.transposed_leaf_reads() == 0
    D = Ed @ Qd @ Kd.T @ Ed.T
    if op == "svdvals":
        assert_close(out, torch.linalg.svdvals(D)[:6])
    elif op == "matrix_norm":
        assert_close(out, torch.linalg.matrix_norm(D))
    elif op == "eigvals":
        dense = torch.linalg.eigvals(D)
        top = dense[torch.argsort(dense.abs(), descending=True)][:6]
        assert (out[:, None] - top[None, :]).abs().min(-1).values.max() < 1e-9 * top.abs().max()
    else:
        U, S, Vh = out
        assert_close(U @ torch.diag(S) @ Vh, D)
    factored_route.assert_forced(X)


def _expr(gen, draw_ops, shapes, dtype):
    """A product of leaves, each used as stored or through a transposed view."""
    X = D = None
    for (m, n), transposed in zip(shapes, draw_ops, strict=True):
        t = (randn(gen, n, m) if transposed else randn(gen, m, n)).to(dtype)
        leaf, dense = (lm.lazy(t).mT, t.mT) if transposed else (lm.lazy(t), t)
        X, D = (leaf, dense) if X is None else (X @ leaf, D @ dense)
    return X, D


@settings(max_examples=80, deadline=None)
@given(dims=st.lists(st.integers(1, 9), min_size=2, max_size=6), seed=st.integers(0, 2**16),
       flips=st.lists(st.booleans(), min_size=5, max_size=5), adjoint=st.booleans(),
       complex_=st.booleans(), summed=st.booleans(), coef=st.sampled_from([1.0, -2.5]))
def test_dense_side_is_the_side_or_its_adjoint(dims, seed, flips, adjoint, complex_, summed, coef):
    gen = torch.Generator().manual_seed(seed)
    shapes = list(zip(dims[:-1], dims[1:], strict=True))
    dtype = torch.complex128 if complex_ else torch.float64
    X, D = _expr(gen, flips[: len(shapes)], shapes, dtype)
    if summed:
        Y, Dy = _expr(gen, flips[: len(shapes)][::-1], shapes, dtype)
        X, D = X + 1j * Y if complex_ else X - Y, D + 1j * Dy if complex_ else D - Dy
    X, D = coef * X, coef * D
    want = D.mH if adjoint else D
    assert_close(dense_side(X, adjoint), want)
