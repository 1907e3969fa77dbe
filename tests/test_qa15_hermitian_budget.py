"""qa15: eigvalsh (and eigh, beside its answer) of a batch under a memory budget stays within
it. The SVD behind it runs in blocks of the batch within the budget beside its whole result
(U and Vh); the Hermitian steps after it held a (k, n) scaled copy of Vh, the check's (n, k)
temporary for the whole batch at once and, for complex, a conjugated copy of Vh: 1.4x the
budget for a 3 KiB answer (32 x 400 x 400, rank 12)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA
from lazymat.settings import BudgetTooSmall


def _least_svd_budget(make) -> int:
    try:
        with lm.config(memory_budget=1):
            LA.svd(make())
    except BudgetTooSmall as err:
        return err.minimum
    raise AssertionError("a 1-byte budget was not refused")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 16), st.integers(100, 300), st.integers(2, 6), st.booleans(),
       st.floats(1.0, 1.5), st.booleans(), st.integers(0, 2**16))
def test_eigvalsh_of_a_batch_keeps_the_budget(b, n, r, complex_, slack, vectors, seed):
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    A = torch.randn(b, n, r, generator=g, dtype=dtype)
    B = torch.randn(n, r, generator=g, dtype=dtype)

    def make():
        return (lm.lazy(A) @ lm.lazy(B).mH + lm.lazy(B) @ lm.lazy(A).mH) / 2

    budget = int(_least_svd_budget(make) * slack)
    with lm.config(memory_budget=budget), Allocated() as held:
        out = LA.eigh(make()) if vectors else (LA.eigvalsh(make(), full=True),)
    assert held.peak <= budget + sum(t.numel() * t.element_size() for t in out), (held.peak, budget)
    D = (A @ B.mH + B @ A.mH) / 2
    expected = torch.linalg.eigvalsh(D)
    scale = 1 + expected.abs().max().item()
    if vectors:  # the pairs rebuild the matrix
        w, Q = out
        assert torch.allclose((Q * w.to(Q.dtype)[..., None, :]) @ Q.mH, D, atol=1e-9 * scale)
    else:
        assert torch.allclose(out[0], expected, atol=1e-9 * scale)


@pytest.mark.parametrize("batch, n, r", [((0,), 4, 2), ((2, 0), 4, 2), ((), 0, 2), ((3,), 4, 0),
                                         ((2,), 5, 3)])
@pytest.mark.parametrize("budget", [None, 1 << 20])
def test_edge_shapes_are_torchs(batch, n, r, budget):
    """Empty batches, empty matrices, rank 0 (and X - X): torch's eigenvalues (all zero)."""
    A = torch.randn(*batch, n, r, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(A).mT
    with lm.config(memory_budget=budget):
        for Y, D in ((X, A @ A.mT), (X - X, torch.zeros(*batch, n, n, dtype=torch.float64))):
            w = torch.linalg.eigvalsh(Y)
            expected = torch.linalg.eigvalsh(D)
            assert w.shape == expected.shape and torch.allclose(w, expected, atol=1e-12)
            vals, Q = LA.eigh(Y)
            assert Q.shape == (*batch, n, vals.shape[-1])
