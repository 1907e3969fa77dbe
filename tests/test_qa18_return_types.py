"""torch's named tuples from lazymat's decompositions, on every path (qa18, session 13).

Found: ``lm.linalg.svd``, ``eig`` and ``eigh`` (and ``torch.linalg.svd/eig/eigh`` and
``torch.svd`` routed to them) returned plain tuples where torch returns
``torch.return_types.linalg_svd`` (``.U``, ``.S``, ``.Vh``), ``linalg_eig``, ``linalg_eigh``
and ``svd`` (``.V``); only meta inputs gave torch's type for ``eig``/``eigh``, and a sliced
plain tuple for ``svd``. ``out.S`` raised AttributeError."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PATHS = ("lm", "torch", "method", "budget", "cast")


def _call(path: str, name: str, X):
    """``name`` (svd, eig, eigh) of ``X`` by one of the ways a user asks it."""
    if path == "torch":
        return getattr(torch.linalg, name)(X, **({"full_matrices": False} if name == "svd" else {}))
    if path == "method" and name == "svd":
        return torch.linalg.svd(X, False)
    if path == "budget":  # under a memory budget with gradients: recomputed in the backward
        return getattr(lm.linalg, name)(X, memory_budget="1GiB")
    if path == "cast":  # a narrowing cast of a product: answered from the product, rounded
        return getattr(lm.linalg, name)(X.to(torch.float32))
    return getattr(lm.linalg, name)(X)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = max(b.abs().max().item() if b.numel() else 0.0, 1.0)
    torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=rtol * scale)


@SETTINGS
@given(data=st.data(), path=st.sampled_from(PATHS), name=st.sampled_from(["svd", "eig", "eigh"]))
def test_decompositions_return_torchs_named_tuple_on_every_path(data, path, name):
    """Property: on random expressions (products, sums, cats, indexed, transposed, scaled,
    batched and broadcast), by lm.linalg, torch.linalg, under a budget with gradients or through
    a narrowing cast, ``svd``/``eig``/``eigh`` return the type torch's own call returns on the
    dense float64 matrix, whose named fields reconstruct it."""
    leaves: list = []
    X, D = data.draw(expressions(leaves=leaves if path == "budget" else None))
    if name != "svd":  # square; Hermitian for eigh (a Gram product keeps the structure lazy)
        X, D = X @ X.mT, D @ D.mT
    expected = getattr(torch.linalg, name)(D.detach(), **({"full_matrices": False} if name == "svd" else {}))
    out = _call(path, name, X)
    assert type(out) is type(expected), (type(out), path)
    rtol = 1e-4 if path == "cast" else 1e-8
    D = D.detach()
    if name == "svd":
        assert out.U is out[0] and out.S is out[1] and out.Vh is out[2]
        _close(out.U @ torch.diag_embed(out.S).to(out.U.dtype) @ out.Vh, D, rtol)
    elif name == "eig":
        vals, vecs = out.eigenvalues, out.eigenvectors
        _close(D.to(vecs.dtype) @ vecs, vecs * vals[..., None, :], rtol)
    else:
        w, Q = out.eigenvalues, out.eigenvectors
        _close(Q @ torch.diag_embed(w).to(Q.dtype) @ Q.mH, D, rtol)
    if path == "budget" and leaves:
        sum(t.abs().sum() for t in out).backward()  # the recompute runs


@pytest.mark.parametrize("batch", [(), (3,)])
@pytest.mark.parametrize("route", ["lm", "torch"])
def test_a_fresh_chain_compiled_call_returns_torchs_svd_type(batch, route):
    """A fresh product of data leaves takes the compiled call (one per structure: unbatched and
    batched finishers), the first call and the next."""
    g = torch.Generator().manual_seed(3)
    for _ in range(2):
        A, B = (torch.randn(*batch, 6, 3, generator=g, dtype=torch.float64),
                torch.randn(3, 5, generator=g, dtype=torch.float64))
        X = lm.lazy(A) @ lm.lazy(B)
        out = lm.linalg.svd(X) if route == "lm" else torch.linalg.svd(X, full_matrices=False)
        assert type(out) is torch.return_types.linalg_svd
        _close(out.U @ torch.diag_embed(out.S) @ out.Vh, A @ B, 1e-10)


def test_torch_svd_returns_its_named_tuple_with_v():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(6, 2, generator=g, dtype=torch.float64)
    B = torch.randn(2, 5, generator=g, dtype=torch.float64)
    for out in (torch.svd(lm.lazy(A) @ lm.lazy(B)), (lm.lazy(A) @ lm.lazy(B)).svd()):
        assert type(out) is torch.return_types.svd
        _close(out.U @ torch.diag(out.S) @ out.V.mT, A @ B, 1e-10)


@pytest.mark.parametrize("name", ["svd", "eig", "eigh", "slogdet"])
def test_meta_inputs_return_torchs_named_tuple(name):
    """Meta leaves (shapes only) answer through torch's meta kernels: the same type, the
    structural rank bound's width."""
    A, B = torch.empty(6, 2, device="meta"), torch.empty(2, 6, device="meta")
    out = getattr(lm.linalg, name)(lm.lazy(A) @ lm.lazy(B))
    expected = getattr(torch.linalg, name)(torch.empty(6, 6, device="meta"))
    assert type(out) is type(expected)
    if name != "slogdet":
        assert out[0].shape[-1 if name != "svd" else -1] == 2
