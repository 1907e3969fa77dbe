"""qa15: eigvalsh and eigh of a batch under a memory budget stay within it (the answer
included). The SVD behind them runs in blocks of the batch within the budget beside its whole
result (U and Vh); the Hermitian steps after it held a (k, n) scaled copy of Vh, the check's
(n, k) temporary for the whole batch at once and, for complex, a conjugated copy of Vh: 1.4x the
budget for a 3 KiB answer (32 x 400 x 400, rank 12)."""

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA
from lazymat.settings import BudgetTooSmall


def _least_budget(make, fn) -> int:
    """The least budget the call names (its SVD's, or the Hermitian steps' after it beside the
    spectrum, whichever is more)."""
    try:
        with lm.config(memory_budget=1):
            fn(make())
    except BudgetTooSmall as err:
        return err.minimum
    raise AssertionError("a 1-byte budget was not refused")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(13, 100, 2, False, 1.0, False, 0)  # 1224 B over main's named least budget
@given(st.integers(4, 16), st.integers(100, 300), st.integers(2, 6), st.booleans(),
       st.floats(1.0, 1.5), st.booleans(), st.integers(0, 2**16))
def test_eigvalsh_of_a_batch_keeps_the_budget(b, n, r, complex_, slack, vectors, seed):
    """Within the budget, the answer included (full=True's padded zeros held 1224 B over the
    least budget named, b=13 n=100 r=2 seed=0: a padded copy and its sort beside the spectrum)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    A = torch.randn(b, n, r, generator=g, dtype=dtype)
    B = torch.randn(n, r, generator=g, dtype=dtype)

    def make():
        return (lm.lazy(A) @ lm.lazy(B).mH + lm.lazy(B) @ lm.lazy(A).mH) / 2

    fn = LA.eigh if vectors else (lambda X: LA.eigvalsh(X, full=True))
    budget = int(_least_budget(make, fn) * slack)
    with lm.config(memory_budget=budget), Allocated() as held:
        out = LA.eigh(make()) if vectors else (LA.eigvalsh(make(), full=True),)
    assert held.peak <= budget, (held.peak, budget)
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
