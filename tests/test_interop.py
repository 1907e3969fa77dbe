"""Every torch function routed through ``__torch_function__`` against torch itself on the dense
float64 tensor: torch's defaults and argument meanings, or a clear error."""

import math

import pytest
import torch

import lazymat as lm

from conftest import assert_close, randn


def _pair(gen, batch=(), dims=(7, 3, 6)):
    a, b = randn(gen, *batch, dims[0], dims[1]), randn(gen, *batch, dims[1], dims[2])
    return lm.lazy(a) @ lm.lazy(b), a @ b


@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
def test_norms_follow_torch(gen, batch):
    X, D = _pair(gen, batch)
    assert_close(torch.linalg.norm(X), torch.linalg.norm(D))  # one scalar over all dims
    assert_close(torch.norm(X), torch.norm(D))
    assert_close(torch.linalg.norm(X, keepdim=True), torch.linalg.norm(D, keepdim=True))
    assert torch.linalg.norm(X, keepdim=True).shape == torch.linalg.norm(D, keepdim=True).shape
    for ord in ["fro", "nuc", 2, -2, 1, -1, math.inf, -math.inf]:
        want = torch.linalg.norm(D, ord=ord, dim=(-2, -1))
        assert_close(torch.linalg.norm(X, ord=ord, dim=(-2, -1)), want, atol=1e-12 * D.abs().max())
        assert_close(torch.linalg.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord),
                     atol=1e-12 * D.abs().max())
    assert_close(torch.norm(X, p="nuc", dim=(-2, -1)), torch.norm(D, p="nuc", dim=(-2, -1)))
    if not batch:
        assert_close(torch.linalg.norm(X, ord="nuc"), torch.linalg.norm(D, ord="nuc"))
        assert_close(torch.norm(X, p="nuc"), torch.norm(D, p="nuc"))
    else:
        with pytest.raises(RuntimeError, match="2-D"):
            torch.linalg.norm(X, ord="nuc")
        with pytest.raises(RuntimeError):
            torch.linalg.norm(D, ord="nuc")
    for dim in [-1, -2, (-1,)]:  # vector norms along one dim (lazymat.reduce)
        assert_close(torch.linalg.norm(X, dim=dim), torch.linalg.norm(D, dim=dim))
        assert_close(torch.linalg.norm(X, 1, dim=dim), torch.linalg.norm(D, 1, dim=dim))
        assert_close(torch.norm(X, p=3, dim=dim), torch.norm(D, p=3, dim=dim))
        assert_close(torch.norm(X, p="fro", dim=dim), torch.norm(D, p="fro", dim=dim))
    assert_close(torch.norm(X, p=1), torch.norm(D, p=1))
    with pytest.raises(RuntimeError, match="ord='nuc'.*2-tuple"):
        torch.linalg.norm(X, "nuc", dim=-1)


def test_spectra_follow_torch(gen):
    X, D = _pair(gen, (2,))
    assert_close(torch.linalg.svdvals(X), torch.linalg.svdvals(D), atol=1e-12 * D.abs().max())
    S = torch.linalg.svdvals(D)
    U, S3, Vh = torch.linalg.svd(X, full_matrices=False)
    assert_close(U @ torch.diag_embed(S3) @ Vh, D)
    assert_close(S3, S[..., :3])
    U, S3, V = torch.svd(X)  # V, not Vh
    assert_close(U @ torch.diag_embed(S3) @ V.mT, D)
    with pytest.raises(NotImplementedError, match="some=False"):
        torch.svd(X, some=False)
    with pytest.raises(NotImplementedError, match="svdvals"):
        torch.svd(X, compute_uv=False)
    with pytest.raises(NotImplementedError, match="full_matrices"):
        torch.linalg.svd(X, full_matrices=True)
    assert torch.equal(torch.linalg.matrix_rank(X), torch.linalg.matrix_rank(D))
    assert torch.equal(torch.linalg.matrix_rank(X, atol=1.0, rtol=0.1),
                       torch.linalg.matrix_rank(D, atol=1.0, rtol=0.1))
    assert_close(torch.linalg.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-8)
    assert torch.isinf(torch.linalg.cond(X)).all() and (torch.linalg.cond(D) > 1e12).all()
    Y, E = _pair(gen, (2,), dims=(6, 4, 6))
    ev = torch.linalg.eigvals(Y)
    assert ev.shape == torch.linalg.eigvals(E).shape  # zero-padded to torch's length
    for p in (1, 2):
        assert_close(ev.pow(p).sum(-1), torch.linalg.eigvals(E).pow(p).sum(-1), rtol=1e-9)
    vals, vecs = torch.linalg.eig(Y)
    assert_close(E.to(vecs.dtype) @ vecs, vecs * vals[..., None, :], rtol=1e-9)


def test_trace_diagonal_and_transposes_follow_torch(gen):
    Y, E = _pair(gen, dims=(6, 4, 6))
    assert_close(torch.trace(Y), torch.trace(E))
    assert_close(torch.diagonal(Y), torch.diagonal(E))
    assert_close(torch.linalg.diagonal(Y), torch.linalg.diagonal(E))
    assert_close(torch.t(Y).to_dense(), torch.t(E))
    assert_close(torch.transpose(Y, 0, 1).to_dense(), torch.transpose(E, 0, 1))
    B, F = _pair(gen, (3,), dims=(6, 4, 6))
    # torch's default dims 0 and 1 of a 3-D tensor are not the matrix diagonal: refused by name
    with pytest.raises(NotImplementedError, match=r"dim1=0, dim2=1.*\(3, 6, 6\)"):
        torch.diagonal(B)
    assert_close(torch.diagonal(B, dim1=-2, dim2=-1), torch.diagonal(F, dim1=-2, dim2=-1))
    assert_close(torch.linalg.diagonal(B), torch.linalg.diagonal(F))
    assert_close(torch.diagonal(Y, 1), torch.diagonal(E, 1))  # an offset is a lazy slice


def test_products_sums_and_scaling_follow_torch(gen):
    X, D = _pair(gen, (2,))
    v = randn(gen, 2, 6, 5)
    def dense(t):
        return t.to_dense() if lm.is_lazy(t) else t

    assert_close(dense(torch.matmul(X, v)), torch.matmul(D, v))
    assert_close(dense(torch.bmm(X, v)), torch.bmm(D, v))
    assert_close(dense(torch.mm(X[0], v[0])), torch.mm(D[0], v[0]))
    w = randn(gen, 2, 7, 6)
    assert_close(torch.add(X, w).to_dense(), torch.add(D, w))
    assert_close((w - X).to_dense(), w - D)
    assert_close(torch.mul(X, 2.5).to_dense(), torch.mul(D, 2.5))
    k = torch.tensor(1.5, dtype=torch.float64)
    assert_close((k * X).to_dense(), k * D)
    assert_close((X * k).to_dense(), D * k)
    assert_close(dense(v.mT @ X.mT), v.mT @ D.mT)
    assert_close(dense(X @ v), D @ v)
    assert_close(dense(v.mT.matmul(X.mT)), v.mT.matmul(D.mT))
    assert_close((w + X).to_dense(), w + D)
    assert_close((X - w).to_dense(), D - w)
    with pytest.raises(RuntimeError, match=r"2-D.*\(2, 7, 6\)"):
        torch.trace(X)
    with pytest.raises(RuntimeError):
        torch.trace(D)
    with pytest.raises(TypeError, match="exp"):
        torch.exp(X)


def test_unsupported_function_names_the_shapes_inside_a_list_argument():
    X = lm.lazy(torch.randn(5, 2)) @ lm.lazy(torch.randn(2, 5))
    with pytest.raises(TypeError, match=r"torch\.stack .*\(5, 5\), \(5, 5\)"):
        torch.stack([X, X])
