"""Small matrices take the dense route (materialise, then torch): same answers as dense float64
torch and as lazymat's factored route, the zero rule kept, gradients flowing."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, randn


@pytest.fixture
def no_factored(monkeypatch):
    """Fail if the factored route runs (its QRs start from ``reduced_factors``)."""
    def boom(*args, **kwargs):
        raise AssertionError("the factored route ran on a small matrix")
    monkeypatch.setattr(LA, "reduced_factors", boom)


def chain(gen, dims, batch=()):
    ts = [randn(gen, *batch, dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
    X, D = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        X, D = X @ lm.lazy(t), D @ t
    return X, D


def answers(X, full_k):
    return {
        "svdvals": LA.svdvals(X, full=True)[..., :full_k],
        "rank": LA.matrix_rank(X),
        "fro": LA.matrix_norm(X),
        "nuc": LA.matrix_norm(X, "nuc"),
        "2": LA.matrix_norm(X, 2),
        "cond": LA.cond(X),
        "pinv": LA.pinv(X).to_dense(),
    }


def test_issue_example_is_dense_and_matches_torch(gen, no_factored):
    X, D = chain(gen, [64, 32, 32, 64])
    assert LA.dense_is_cheaper(X)
    got = answers(X, 32)
    assert_close(got["svdvals"], torch.linalg.svdvals(D)[:32])
    assert got["rank"] == torch.linalg.matrix_rank(D) == 32
    for name, ord in (("fro", "fro"), ("nuc", "nuc"), ("2", 2)):
        assert_close(got[name], torch.linalg.matrix_norm(D, ord))
    assert_close(got["pinv"], torch.linalg.pinv(D), rtol=1e-8)
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag(S) @ Vh, D)


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 10), min_size=2, max_size=5),
       batch=st.sampled_from([(), (2,), (2, 3)]), seed=st.integers(0, 2**16))
def test_dense_route_equals_factored_route_and_torch(dims, batch, seed):
    """Against dense float64 torch and against the factored route (rank, cut width, cond)."""
    gen = torch.Generator().manual_seed(seed)
    X, D = chain(gen, dims, batch)
    assert LA.dense_is_cheaper(X)
    dense = answers(X, min(dims))
    saved = LA.DENSE_MAX_ELEMENTS
    LA.DENSE_MAX_ELEMENTS = 0
    try:
        X2, _ = chain(torch.Generator().manual_seed(seed), dims, batch)  # a fresh expression, no caches
        assert not LA.dense_is_cheaper(X2)
        factored = answers(X2, min(dims))
    finally:
        LA.DENSE_MAX_ELEMENTS = saved
    k = min(dims)
    assert_close(dense["svdvals"], torch.linalg.svdvals(D)[..., :k], rtol=1e-9)
    assert torch.equal(dense["rank"], factored["rank"])
    assert torch.equal(dense["rank"], torch.linalg.matrix_rank(D))
    for name in ("svdvals", "fro", "nuc", "2", "pinv"):
        assert_close(dense[name], factored[name], rtol=1e-8)
    # rank at most the inner width: both routes call X singular (inf) where it is structurally
    assert torch.equal(torch.isinf(dense["cond"]), torch.isinf(factored["cond"]))
    finite = ~torch.isinf(dense["cond"])
    assert_close(dense["cond"][finite], torch.linalg.cond(D)[finite], rtol=1e-6)


def test_exact_cancellation_is_rank_zero(gen, no_factored):
    """``X - X`` and a difference of two associations of one product (rounding noise in the
    dense matrix) are both the zero matrix to lazymat: rank 0, no singular values, norm 0."""
    A, B, C = randn(gen, 20, 10), randn(gen, 10, 10), randn(gen, 10, 20)
    X, _ = chain(gen, [20, 10, 10, 20])
    Y = lm.lazy(A @ B) @ lm.lazy(C) - lm.lazy(A) @ lm.lazy(B @ C)
    assert (A @ B @ C - A @ (B @ C)).abs().max() > 0  # the dense matrix is noise, not zero
    for Z in (X - X, Y):
        assert LA.dense_is_cheaper(Z)
        assert LA.matrix_rank(Z) == 0
        assert LA.svdvals(Z).shape[-1] == 0
        assert LA.matrix_norm(Z) < 1e-12 * LA.matrix_norm(X)
        assert torch.isnan(LA.cond(Z))  # 0 / 0, as torch on the zero matrix


def test_structurally_singular_product_is_singular(gen, no_factored):
    X, D = chain(gen, [30, 4, 25])
    assert LA.svdvals(X).shape[-1] == 4 and torch.isinf(LA.cond(X))
    assert torch.linalg.cond(D) > 1e12  # torch sees rounding noise where lazymat sees zero


def test_gradients_flow_through_the_dense_route(gen):
    A, B, C = (randn(gen, *s).requires_grad_() for s in ((12, 6), (6, 6), (6, 12)))
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    assert LA.dense_is_cheaper(X)
    loss = LA.svdvals(X).sum() + LA.matrix_norm(X) + LA.matrix_norm(X, "nuc")
    got = torch.autograd.grad(loss, (A, B, C))
    D = A @ B @ C
    want = torch.autograd.grad(torch.linalg.svdvals(D).sum() + torch.linalg.matrix_norm(D)
                               + torch.linalg.matrix_norm(D, "nuc"), (A, B, C))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-8)


def test_large_or_nested_expressions_stay_factored(gen):
    big, _ = chain(gen, [200, 4, 200])
    assert not LA.dense_is_cheaper(big)
    A, B, C = (lm.lazy(randn(gen, *s)) for s in ((8, 8), (8, 8), (8, 8)))
    nested = (A + B) @ C @ (A - B)
    assert any(isinstance(f.base, LA.Nested) for t in LA.canonical(nested).terms for f in t.factors)
    assert not LA.dense_is_cheaper(nested)
    assert LA.dense_is_cheaper(A @ B)
    assert not LA.dense_is_cheaper(lm.lazy(torch.zeros(0, 5)) @ lm.lazy(torch.zeros(5, 3)))
