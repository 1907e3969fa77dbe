"""``torch.linalg.multi_dot``, ``torch.chain_matmul`` and ``torch.linalg.matrix_power`` (and
``lm.linalg``'s names) on lazy expressions: lazy products with torch's operand rules, compared
with torch in float64."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

SETTINGS = settings(max_examples=60, deadline=None)


def _close(a, b):
    a = a.to_dense() if lm.is_lazy(a) else a
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * (1 + b.abs().max().item() if b.numel() else 1))


@SETTINGS
@given(dims=st.lists(st.integers(1, 5), min_size=3, max_size=6), row=st.booleans(), column=st.booleans(),
       lazy_at=st.integers(0, 4), data=st.data())
def test_multi_dot_is_torchs_product(dims, row, column, lazy_at, data):
    g = torch.Generator().manual_seed(sum(dims))
    mats = [torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64) for i in range(len(dims) - 1)]
    operands = [lm.lazy(m) if data.draw(st.booleans()) else m for m in mats]
    operands[lazy_at % len(operands)] = lm.lazy(mats[lazy_at % len(mats)])  # one lazy at least
    dense = list(mats)
    if row:
        v = torch.randn(dims[0], generator=g, dtype=torch.float64)
        operands.insert(0, v)
        dense.insert(0, v)
    if column:
        w = torch.randn(dims[-1], generator=g, dtype=torch.float64)
        operands.append(w)
        dense.append(w)
    out = torch.linalg.multi_dot(operands)
    assert lm.is_lazy(out) == (not row and not column)
    _close(out, torch.linalg.multi_dot(dense))
    _close(lm.linalg.multi_dot(operands), torch.linalg.multi_dot(dense))


@SETTINGS
@given(n=st.integers(0, 7), size=st.integers(1, 6), rank=st.integers(1, 6),
       batch=st.sampled_from([(), (2,), (2, 1)]))
def test_matrix_power_is_torchs(n, size, rank, batch):
    g = torch.Generator().manual_seed(n * 100 + size * 10 + rank)
    L = torch.randn(*batch, size, rank, generator=g, dtype=torch.float64) / math.sqrt(rank)
    R = torch.randn(rank, size, generator=g, dtype=torch.float64) / math.sqrt(size)
    X = lm.lazy(L) @ lm.lazy(R)
    expected = torch.linalg.matrix_power(L @ R, n)
    _close(torch.linalg.matrix_power(X, n), expected)
    _close(X.matrix_power(n), expected)
    _close(torch.matrix_power(X, n), expected)


def test_a_low_rank_power_contracts_at_its_inner_width():
    """``(L R)^6`` of a 50257-wide rank-64 product on shape-only symbols: ``L (R L)^5 R``, the
    five 64 x 64 cores cheap beside the final outer product; never the n^3 matrix products."""
    n, r = 50257, 64
    X = lm.symbol("L", (n, r)) @ lm.symbol("R", (r, n))
    report = lm.explain(lm.linalg.matrix_power(X, 6))
    outer = 2 * n * r * n  # forming the (n, n) answer from (n, r) @ (r, n)
    assert outer <= report.flops <= outer + 2 * 5 * (2 * n * r * r)
    assert report.flops < 2 * n**3 / 100  # one dense n x n product would take 2 n^3


def test_chain_matmul_and_bad_operands():
    A = torch.randn(4, 4, dtype=torch.float64)
    X = lm.lazy(A)
    _close(torch.chain_matmul(X, X, A), A @ A @ A)
    _close(torch.chain_matmul(X), A)
    with pytest.raises(RuntimeError, match=r"operand 1 has shape \(1, 4, 4\)"):
        torch.chain_matmul(X, X[None])
    with pytest.raises(ValueError, match="at least 2 tensors, got 1"):
        torch.linalg.multi_dot([X])
    with pytest.raises(ValueError, match=r"operand 1 must be 2-D .* got shape \(4,\)"):
        torch.linalg.multi_dot([X, torch.ones(4, dtype=torch.float64), X])
    with pytest.raises(ValueError, match=r"inner dimensions differ"):
        torch.linalg.multi_dot([X, lm.lazy(torch.ones(3, 2, dtype=torch.float64))])
    with pytest.raises(ValueError, match=r"square matrix, got shape \(4, 2\)"):
        torch.linalg.matrix_power(X[:, :2], 2)
    P = A @ A.mT + torch.eye(4, dtype=torch.float64)  # well conditioned: eigenvalues >= 1
    _close(torch.linalg.matrix_power(lm.lazy(P), -2), torch.linalg.matrix_power(P, -2))  # lm.linalg.inv's
    with pytest.raises(torch.linalg.LinAlgError, match="structural rank 2 < 4"):
        torch.linalg.matrix_power(X[:, :2] @ X[:2, :], -1)
    with pytest.raises(TypeError, match="n must be an int, got bool"):
        lm.linalg.matrix_power(X, True)
    big = lm.symbol("S", (100_000, 100_000))
    with pytest.raises(MemoryError, match="100000 x 100000 identity"):
        lm.linalg.matrix_power(big, 0)


@SETTINGS
@given(ord=st.sampled_from([None, 2, 1, math.inf, -1, "fro", "nuc"]),
       dim=st.sampled_from([None, -1, 0, (-2, -1)]), keepdim=st.booleans())
def test_linalg_norm_and_vector_norm_are_torchs(ord, dim, keepdim):
    """``lm.linalg.norm`` / ``vector_norm`` (torch.linalg's names) answer as torch on the dense
    matrix, or refuse where torch refuses."""
    g = torch.Generator().manual_seed(7)
    A = torch.randn(5, 2, generator=g, dtype=torch.float64)
    B = torch.randn(2, 4, generator=g, dtype=torch.float64)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    try:
        expected = torch.linalg.norm(D, ord, dim, keepdim)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            lm.linalg.norm(X, ord, dim, keepdim)
        return
    _close(lm.linalg.norm(X, ord, dim, keepdim), expected)
    if not isinstance(ord, str) and dim != (-2, -1):
        vord = 2 if ord is None else ord
        _close(lm.linalg.vector_norm(X, vord, dim, keepdim), torch.linalg.vector_norm(D, vord, dim, keepdim))
