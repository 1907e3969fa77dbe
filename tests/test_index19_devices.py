"""The index19 routes on the CPU and CUDA (skipped without it): new axes after the row dim, batch
lists paired with the rows (lazy and apart) and per-member triples give torch's values on the
expression's device, and gradients reach the leaves as torch's do."""

import pytest
import torch

import lazymat as lm


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_index19_routes_match_torch_with_gradients(device):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 300, 8, generator=g, dtype=torch.float64).to(device).requires_grad_()
    B = torch.randn(12, 8, 200, generator=g, dtype=torch.float64).to(device).requires_grad_()
    X = lm.lazy(A) @ lm.lazy(B)
    b = torch.randint(0, 12, (3000,), generator=g).to(device)
    rows = torch.randint(0, 300, (3000,), generator=g).to(device)
    cols = torch.randint(0, 200, (3000,), generator=g).to(device)
    keys = [(b, rows, cols), (b, rows), (b.sort().values, rows), (Ellipsis, 2, slice(None), None), (0, None)]
    for key in keys:
        D = A @ B  # (a fresh graph for each key's gradients)
        got = X[key]
        got = got.to_dense() if lm.is_lazy(got) else got
        assert got.device == D.device and got.shape == D[key].shape
        torch.testing.assert_close(got, D[key])
        grads = torch.autograd.grad(got.square().sum(), (A, B))
        want = torch.autograd.grad(D[key].square().sum(), (A, B))
        for a, w in zip(grads, want, strict=True):
            torch.testing.assert_close(a, w)
