"""Evaluation: planned order, shared subexpressions, products with vectors, autograd."""

import torch

import lazymat as lm

from conftest import TorchCalls, assert_close, randn


def test_shared_sum_block_is_evaluated_once(gen):
    a, b, c = randn(gen, 6, 6), randn(gen, 6, 6), randn(gen, 6, 6)
    S = lm.lazy(a) + b  # full rank: kept as one block
    X = S @ c @ S
    with TorchCalls() as n:
        out = X.to_dense()
    assert n.count("__add__") + n.count("add") == 1
    assert_close(out, (a + b) @ c @ (a + b))


def test_common_subchain_shared_across_terms(gen):
    a, b = randn(gen, 3, 40), randn(gen, 40, 2)
    c, d = randn(gen, 2, 50), randn(gen, 2, 60)
    AB = lm.lazy(a) @ b
    X = lm.cat([AB @ c, AB @ d], dim=-1)
    with TorchCalls() as n:
        out = X.to_dense()
    assert n.count("matmul") == 3  # a @ b once, then @ c and @ d
    assert_close(out, torch.cat([a @ b @ c, a @ b @ d], -1))


def test_matvec_right_to_left_never_forms_matrix(gen):
    a, b = randn(gen, 300, 300), randn(gen, 300, 300)
    v = randn(gen, 300)
    X = lm.lazy(a) @ b
    out = X @ v
    assert out.shape == (300,)
    assert_close(out, a @ (b @ v))
    thin = randn(gen, 300, 2)
    Y = X @ thin
    assert Y.plan().flops == 2 * (300 * 300 * 2) * 2  # two matrix-vector-like products
    assert_close(Y.to_dense(), a @ b @ thin)
    assert_close(v @ X, v @ a @ b)


def test_batched_matvec(gen):
    a, b = randn(gen, 4, 20, 8), randn(gen, 8, 30)
    v = randn(gen, 4, 30, 1)
    X = lm.lazy(a) @ b
    assert_close((X @ v).to_dense(), a @ b @ v)
    w = randn(gen, 30)
    out = torch.matmul(X, w)
    assert out.shape == (4, 20)
    assert_close(out, a @ b @ w)


def test_autograd_reaches_leaves(gen):
    a = randn(gen, 5, 4).requires_grad_()
    b = randn(gen, 4, 3).requires_grad_()
    c = randn(gen, 3, 6).requires_grad_()
    k = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    X = (lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c)).T * k + lm.lazy(c).T @ lm.lazy(b).T @ lm.lazy(a).T
    X.to_dense().square().sum().backward()
    lazy_grads = [t.grad.clone() for t in (a, b, c, k)]
    for t in (a, b, c, k):
        t.grad = None
    ((a @ b @ c).T * k + c.T @ b.T @ a.T).square().sum().backward()
    for got, t in zip(lazy_grads, (a, b, c, k), strict=True):
        assert_close(got, t.grad)


def test_scalars_fold_into_one_coefficient(gen):
    a, b = randn(gen, 4, 5), randn(gen, 5, 6)
    X = 2.0 * (lm.lazy(a) / 4) @ (-lm.lazy(b)) * 3
    from lazymat.rewrite import canonical

    (term,) = canonical(X).terms
    assert term.coef == -1.5 and len(term.factors) == 2
    assert_close(X.to_dense(), -1.5 * a @ b)


def test_sum_of_low_rank_terms_as_a_factor_is_stacked(gen):
    a, b = randn(gen, 100, 2), randn(gen, 2, 100)
    c, d = randn(gen, 100, 3), randn(gen, 3, 100)
    e = randn(gen, 100, 100)
    S = lm.lazy(a) @ b + lm.lazy(c) @ d
    X = S @ e
    p = X.plan()
    assert p.largest_bytes < 100 * 100 * 8 * 2  # no 100 x 100 sum block, only thin ones
    assert_close(X.to_dense(), (a @ b + c @ d) @ e)


def test_empty_dims(gen):
    a, b = randn(gen, 0, 4), randn(gen, 4, 3)
    X = lm.lazy(a) @ b
    assert X.to_dense().shape == (0, 3)
    Y = lm.lazy(randn(gen, 3, 0)) @ lm.lazy(randn(gen, 0, 5))
    assert_close(Y.to_dense(), torch.zeros(3, 5, dtype=torch.float64), atol=0)


def test_complex_and_16_bit(gen):
    a = torch.complex(randn(gen, 4, 3), randn(gen, 4, 3))
    b = torch.complex(randn(gen, 3, 5), randn(gen, 3, 5))
    assert_close((lm.lazy(a) @ b * 1j).to_dense(), a @ b * 1j)
    h = randn(gen, 8, 8).to(torch.bfloat16)
    out = (lm.lazy(h) @ h).to_dense()
    assert out.dtype == torch.bfloat16
    assert_close(out.double(), (h @ h).double(), rtol=0, atol=0)


def test_a_node_used_as_a_whole_term_and_inside_another_is_computed_once(gen):
    a, b, c = randn(gen, 30, 20), randn(gen, 20, 30), randn(gen, 30, 30)
    S = lm.lazy(a) @ lm.lazy(b)
    X = S + S @ c
    with lm.config(optimize="left-to-right"), TorchCalls() as n:
        out = X.to_dense()
    assert n.count("matmul") == 2  # a @ b once, then (a @ b) @ c
    assert_close(out, a @ b + a @ b @ c)
    Y = lm.cat([S, S @ c], dim=-1)  # across nested blocks too
    with lm.config(optimize="left-to-right"), TorchCalls() as n:
        out = Y.to_dense()
    assert n.count("matmul") == 2
    assert_close(out, torch.cat([a @ b, a @ b @ c], -1))
