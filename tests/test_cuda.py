"""CUDA variants: results on the expression's device and dtype, equal to CPU float64."""

import pytest
import torch

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, randn

pytestmark = pytest.mark.cuda


def test_to_dense_and_matvec_on_cuda(gen):
    a, b, c = randn(gen, 3, 40, 6), randn(gen, 6, 5), randn(gen, 5, 30)
    X = lm.lazy(a.cuda()) @ b.cuda() @ c.cuda()
    assert X.device.type == "cuda"
    out = X.to_dense()
    assert out.device.type == "cuda"
    assert_close(out.cpu(), a @ b @ c)
    v = randn(gen, 30)
    assert_close((X @ v.cuda()).cpu(), a @ b @ c @ v)
    assert_close(X[1, 2:7].to_dense().cpu(), (a @ b @ c)[1, 2:7])


def test_linalg_on_cuda_matches_cpu(gen):
    a, b = randn(gen, 4, 60, 5), randn(gen, 4, 5, 60)
    X = lm.lazy(a.cuda()) @ lm.lazy(b.cuda())
    D = a @ b
    S = LA.svdvals(X)
    assert S.device.type == "cuda" and S.dtype == torch.float64
    assert_close(S.cpu(), torch.linalg.svdvals(D)[..., :5])
    U, S, Vh = LA.svd(X)
    assert U.device.type == "cuda"
    assert_close((U @ torch.diag_embed(S) @ Vh).cpu(), D)
    vals = LA.eigvals(X)
    assert vals.device.type == "cuda" and vals.dtype == torch.complex128
    assert_close(LA.trace(X).cpu(), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1))
    assert_close(LA.matrix_norm(X).cpu(), torch.linalg.matrix_norm(D))
    assert_close(LA.diagonal(X).cpu(), torch.diagonal(D, dim1=-2, dim2=-1))


def test_float32_and_half_on_cuda(gen):
    a, b = randn(gen, 200, 8), randn(gen, 8, 150)
    X = lm.lazy(a.float().cuda()) @ lm.lazy(b.float().cuda())
    assert_close(LA.svdvals(X).double().cpu(), torch.linalg.svdvals(a @ b)[:8], rtol=1e-5)
    H = lm.lazy(a.half().cuda()) @ lm.lazy(b.half().cuda())
    S = LA.svdvals(H)
    assert S.dtype == torch.float16 and S.device.type == "cuda"
    assert_close(S.double().cpu(), torch.linalg.svdvals(a.half().double() @ b.half().double())[:8], rtol=3e-3)


def test_lazy_move_between_devices(gen):
    a, b = randn(gen, 10, 3), randn(gen, 3, 12)
    X = (lm.lazy(a) @ lm.lazy(b)).to("cuda")
    assert X.device.type == "cuda"
    assert_close(X.to_dense().cpu(), a @ b)
    with pytest.raises(ValueError, match="devices differ"):
        lm.lazy(a) @ lm.lazy(b.cuda())


def test_autograd_on_cuda(gen):
    a = randn(gen, 20, 3).cuda().requires_grad_()
    b = randn(gen, 3, 20).cuda().requires_grad_()
    (LA.matrix_norm(lm.lazy(a) @ lm.lazy(b)) + LA.trace(lm.lazy(a) @ lm.lazy(b))).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    D = a @ b
    (torch.linalg.matrix_norm(D) + torch.trace(D)).backward()
    assert_close(ga.cpu(), a.grad.cpu())
    assert_close(gb.cpu(), b.grad.cpu())
