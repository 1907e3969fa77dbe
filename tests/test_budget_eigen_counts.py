"""The eigen calls of a batch of low-rank products under a memory budget allocate at most it
(counted by :class:`lazymat.allocated.Allocated`, the answer included): under the least budget
:class:`~lazymat.settings.BudgetTooSmall` names, and under a larger one. eigvals' cores
(``R @ L``) were formed for the whole batch and its solver's output (``linalg_eig``'s values
and vectors) left uncounted: 28 KB allocated under a named 528 B."""

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated
from lazymat.settings import BudgetTooSmall


def _least(make, fn) -> int:
    try:
        fn(make(), memory_budget=1)
    except BudgetTooSmall as err:
        return err.minimum
    raise AssertionError("a 1-byte budget was not refused")


def _held(make, fn, budget):
    X = make()
    with Allocated() as counted:
        out = fn(X, memory_budget=budget)
    return counted.peak, out


CALLS = {"eigvals": lambda X, **k: LA.eigvals(X, full=True, **k), "eig": LA.eig,
         "eigvals k": LA.eigvals,
         "eigvalsh": lambda X, **k: LA.eigvalsh(X, full=True, **k), "eigh": LA.eigh}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example("eigvals k", 15, 28, 2, 3, 1.0, 7)  # 56 B over: a shared span kept on the leaves by the first block
@example("eigh", 5, 3, 1, 1, 1.0, 0)  # the Hermitian check's norms uncounted
@example("eigh", 4, 9, 1, 1, 1.0, 0)  # the shared leaf's QR held beside the Hermitian check
@example("eigh", 2, 3, 2, 1, 1.0, 0)  # the small (dense) route's spectrum held after the SVD
@given(st.sampled_from(sorted(CALLS)), st.integers(2, 24), st.integers(3, 40), st.integers(1, 5),
       st.integers(1, 4), st.floats(1.0, 3.0), st.integers(0, 2**16))
def test_eigen_calls_of_a_batch_allocate_within_the_budget(op, b, n, r, d, slack, seed):
    g = torch.Generator().manual_seed(seed)
    E = torch.randn(n, r + d, generator=g, dtype=torch.float64)
    Q = torch.randn(b, r + d, r, generator=g, dtype=torch.float64)
    K = torch.randn(b, r + d, r, generator=g, dtype=torch.float64)
    hermitian = op in ("eigvalsh", "eigh")
    Kh = Q if hermitian else K  # W_E Q Q^T W_E^T is symmetric

    def make():
        return lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(Kh).mT @ lm.lazy(E).mT

    fn = CALLS[op]
    least = _least(make, fn)
    for budget in (least, int(least * slack)):
        held, out = _held(make, fn, budget)
        assert held <= budget, (op, held, budget)
    D = E @ Q @ Kh.mT @ E.mT
    if op == "eigvalsh":
        expected = torch.linalg.eigvalsh(D)
        assert torch.allclose(out, expected, atol=1e-8 * (1 + expected.abs().max()))
    elif op == "eigh":
        w, V = out
        assert torch.allclose((V * w[..., None, :]) @ V.mT, D, atol=1e-8 * (1 + D.abs().max()))
    elif op == "eigvals k":  # the nonzero ones, against the dense matrix's largest in modulus
        expected = torch.linalg.eigvals(D)
        expected = expected.gather(-1, expected.abs().argsort(-1, descending=True))[..., :out.shape[-1]]
        apart = (out[..., :, None] - expected[..., None, :]).abs()
        tol = 1e-6 * (1 + expected.abs().max())
        assert apart.min(-1).values.max() <= tol
    elif op == "eigvals":  # all n (the zeros appended) against the dense matrix's, as multisets
        expected = torch.linalg.eigvals(D)
        apart = (out[..., :, None] - expected[..., None, :]).abs()
        tol = 1e-6 * (1 + expected.abs().max())
        assert apart.min(-1).values.max() <= tol and apart.min(-2).values.max() <= tol
    else:
        vals, vecs = out
        Dc = D.to(vecs.dtype)
        assert torch.allclose(Dc @ vecs, vecs * vals[..., None, :], atol=1e-8 * (1 + D.abs().max()))
