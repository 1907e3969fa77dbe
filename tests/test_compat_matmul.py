"""lazymat.compat.FactoredMatrix products with tensors, vectors and other FactoredMatrix objects.

The split point (``mdim``) of every result follows TransformerLens's rule; the chain itself
stays lazy."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import TL, tl

import lazymat as lm
from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn

# (A, B, other on the right): mdim < rdim, mdim >= rdim, batched other, other with more batch dims
RIGHT = [((6, 2), (2, 5), (5, 3)), ((6, 4), (4, 3), (3, 7)), ((2, 6, 2), (2, 5), (2, 5, 3)),
         ((6, 4), (4, 3), (3, 3, 7))]
LEFT = [((6, 2), (2, 5), (3, 6)), ((3, 4), (4, 5), (7, 3)), ((2, 6, 2), (2, 5), (2, 4, 6)),
        ((6, 4), (4, 3), (3, 2, 6))]


@pytest.mark.parametrize("a,b,w", RIGHT)
def test_matrix_on_the_right(gen, a, b, w):
    A, B, W = randn(gen, *a), randn(gen, *b), randn(gen, *w)
    got = FactoredMatrix(A, B) @ W
    assert isinstance(got, FactoredMatrix)
    assert_close(got.AB, A @ B @ W)
    assert got.mdim == min(A.shape[-1], B.shape[-1])  # split kept where it is narrowest


@pytest.mark.parametrize("a,b,w", LEFT)
def test_matrix_on_the_left(gen, a, b, w):
    A, B, W = randn(gen, *a), randn(gen, *b), randn(gen, *w)
    got = W @ FactoredMatrix(A, B)
    assert isinstance(got, FactoredMatrix)
    assert_close(got.AB, W @ A @ B)
    assert got.mdim == min(A.shape[-2], A.shape[-1])


@pytest.mark.parametrize("a,b,w", RIGHT + LEFT)
def test_products_match_transformer_lens_factors(gen, a, b, w):
    TL = tl()
    A, B, W = randn(gen, *a), randn(gen, *b), randn(gen, *w)
    ours, theirs = FactoredMatrix(A, B), TL.FactoredMatrix(A, B)
    if W.shape[-2] == B.shape[-1]:
        ours, theirs = ours @ W, theirs @ W
    else:
        ours, theirs = W @ ours, W @ theirs
    assert ours.shape == theirs.shape and ours.mdim == theirs.mdim
    assert_close(ours.A, theirs.A)
    assert_close(ours.B, theirs.B)


def test_vectors_give_tensors(gen):
    A, B = randn(gen, 3, 6, 2), randn(gen, 2, 5)
    fm = FactoredMatrix(A, B)
    v, u = randn(gen, 5), randn(gen, 6)
    assert_close(fm @ v, (A @ B) @ v)
    assert_close(u @ fm, u @ (A @ B))
    TL = tl()
    assert_close(fm @ v, TL.FactoredMatrix(A, B) @ v)
    assert_close(u @ fm, u @ TL.FactoredMatrix(A, B))


def test_factored_on_both_sides(gen):
    A1, B1, A2, B2 = randn(gen, 2, 6, 3), randn(gen, 3, 4), randn(gen, 4, 2), randn(gen, 2, 7)
    got = FactoredMatrix(A1, B1) @ FactoredMatrix(A2, B2)
    assert_close(got.AB, A1 @ B1 @ A2 @ B2)
    TL = tl()
    theirs = TL.FactoredMatrix(A1, B1) @ TL.FactoredMatrix(A2, B2)
    assert got.mdim == theirs.mdim and got.A.shape == theirs.A.shape
    mixed = FactoredMatrix(A1, B1) @ TL.FactoredMatrix(A2, B2)  # duck-typed peer
    assert_close(mixed.AB, A1 @ B1 @ A2 @ B2)


def test_inner_dim_mismatch_names_both_shapes(gen):
    fm = FactoredMatrix(randn(gen, 6, 2), randn(gen, 2, 5))
    with pytest.raises(ValueError, match=r"\(6, 5\) @ \(4, 3\)"):
        fm @ randn(gen, 4, 3)
    with pytest.raises(AssertionError):
        randn(gen, 3, 4) @ fm
    with pytest.raises(ValueError, match=r"vector \(4,\)"):
        randn(gen, 4) @ fm


def test_chains_stay_lazy_and_planned():
    """Shape-only symbols: the whole chain builds and plans without touching data."""
    W_E, W_Q = lm.symbol("W_E", (50257, 768)), lm.symbol("W_Q", (12, 768, 64))
    W_K = lm.symbol("W_K", (12, 768, 64))
    qk = FactoredMatrix(W_E, W_Q) @ W_K.mT @ W_E.mT
    assert qk.shape == (12, 50257, 50257) and qk.mdim == 64
    plan = qk.expr.plan()  # one planned chain, not TransformerLens's collapse at every @
    assert plan.flops < plan.naive_flops


def test_a_lazymat_expression_times_a_factored_matrix_is_what_a_tensor_gives(gen):
    """An expression stands for a tensor beside a FactoredMatrix, on either side: the result is
    the FactoredMatrix ``W @ fm`` (``fm @ V``) gives, with its split and factors."""
    W, V = randn(gen, 4, 6), randn(gen, 5, 3)
    for inner in (2, 9):  # the split moves to W's side when fm's inner dim is the wider
        fm = FactoredMatrix(randn(gen, 6, inner), randn(gen, inner, 5))
        for got, want in [(lm.lazy(W) @ fm, W @ fm), (fm @ lm.lazy(V), fm @ V)]:
            assert isinstance(got, FactoredMatrix)
            assert (got.ldim, got.mdim, got.rdim) == (want.ldim, want.mdim, want.rdim)
            assert_close(got.A, want.A)
            assert_close(got.B, want.B)
        assert_close((lm.lazy(W) @ fm).AB, W @ fm.A @ fm.B)



@settings(max_examples=50, deadline=None)
@given(
    dims=st.lists(st.integers(1, 7), min_size=3, max_size=7),
    sides=st.lists(st.booleans(), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_random_chains_match_dense_and_the_transformer_lens_split(dims, sides, seed):
    """Grow a FactoredMatrix by random matrices on either side: the product is the dense one,
    and the split (mdim, A, B) is the one TransformerLens reaches by the same steps."""
    gen = torch.Generator().manual_seed(seed)
    mats = [randn(gen, dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
    start = (len(mats) - 1) // 2
    ours = FactoredMatrix(mats[start], mats[start + 1])
    theirs = None if TL is None else TL.FactoredMatrix(mats[start], mats[start + 1])
    lo, hi = start, start + 2  # mats[lo:hi] are in the product
    for on_left in sides:
        if on_left and lo > 0:
            lo -= 1
            ours = mats[lo] @ ours
            theirs = None if theirs is None else mats[lo] @ theirs
        elif hi < len(mats):
            ours = ours @ mats[hi]
            theirs = None if theirs is None else theirs @ mats[hi]
            hi += 1
    assert_close(ours.AB, torch.linalg.multi_dot(mats[lo:hi]))
    if theirs is not None:
        assert ours.mdim == theirs.mdim
        assert_close(ours.A, theirs.A)
        assert_close(ours.B, theirs.B)
