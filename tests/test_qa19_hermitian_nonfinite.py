"""eigvalsh/eigh of a Hermitian product whose factor holds an inf or NaN entry, under the least
budget of the same expression with finite data (qa19, session 14): the members with non-finite
input are answered NaN, and the copies that answer took were not counted by the budget (the
zeroed U, S, Vh held beside the spectrum, the SVD's NaN copies of its triplets, the eigenvectors'
NaN copy: 30.9 KB allocated under a 20 KB budget). Now the core is zeroed for the solver and
the NaNs are written in place, so the run stays within the budget finite data needs."""

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _least(run) -> int:
    """The least budget under which ``run(budget)`` does not raise BudgetTooSmall (bisection)."""
    lo, hi = 1, 1 << 26
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            run(mid)
            hi = mid
        except lm.BudgetTooSmall:
            lo = mid + 1
    return lo


@SETTINGS
@given(n=st.integers(24, 60), k=st.integers(2, 6), b=st.integers(1, 3),
       op=st.sampled_from(["eigvalsh", "eigh"]), entry=st.sampled_from([math.inf, -math.inf, math.nan]),
       complex_=st.booleans(), seed=st.integers(0, 99))
def test_nonfinite_members_run_within_the_finite_budget(n, k, b, op, entry, complex_, seed):
    """Property: under the least budget of the finite expression, the one with a non-finite
    entry in member 0 runs, allocates at most that budget (plus 16 bytes a member: the masks of
    the members found non-finite, a bool each, which no budget counts), answers NaN for member 0
    and torch's eigenvalues (float64 eager, on the formed matrix) for the others."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    F = torch.randn(b, n, k, generator=g, dtype=dtype)
    finite = lm.lazy(F) @ lm.lazy(F).mH
    least = _least(lambda budget: (finite.clear_cache(), getattr(LA, op)(finite, memory_budget=budget)))
    G = F.clone()
    G[0, int(torch.randint(0, n, (1,), generator=g)), 0] = entry
    X = lm.lazy(G) @ lm.lazy(G).mH
    with Allocated() as counted:
        out = getattr(LA, op)(X, memory_budget=least)
    assert counted.peak <= least + 16 * b, (counted.peak, least)
    values = out if op == "eigvalsh" else out[0]
    assert bool(values[0].isnan().all())
    if op == "eigh":
        assert bool(out[1][0].isnan().all())
    if b > 1:
        want = torch.linalg.eigvalsh(G[1:] @ G[1:].mH)[..., -k:]
        torch.testing.assert_close(values[1:, -k:], want, rtol=1e-7, atol=1e-9 * want.abs().max().item())
