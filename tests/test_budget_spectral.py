"""The minimum a spectral call's ``BudgetTooSmall`` names is a budget it runs within: for the
spectral and nuclear norms, the condition number and the singular values of random small
products (batched or not, leaves without gradients), the named minimum runs, allocates at most
that many bytes (counted by the budget tests' dispatch mode) and matches dense float64; one byte
less is refused, or runs within it (a compiled small call, warm from an earlier call of the
shape, checks its own figure).

``torch.linalg.svdvals`` forms ``U`` and ``Vh`` too whenever a dispatch mode is on: the budget
named 96 B for the nuclear norm of ``(3,2) @ (2,3)`` and the call allocated 240 B.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_minimum_exact import named_minimum
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

OPS = {
    "nuc": (lambda X, **k: LA.matrix_norm(X, "nuc", **k), lambda D: torch.linalg.matrix_norm(D, "nuc")),
    "2": (lambda X, **k: LA.matrix_norm(X, 2, **k), lambda D: torch.linalg.matrix_norm(D, 2)),
    "cond": (lambda X, **k: LA.cond(X, **k), torch.linalg.cond),
    "svdvals": (lambda X, **k: LA.svdvals(X, **k), None),
}


@st.composite
def products(draw):
    """(lazy, dense) products of 2-3 unbatched float64 leaves of 1-4 rows/columns."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(2, 3))
    dims = [draw(st.integers(1, 4)) for _ in range(n + 1)]
    batch = ()  # a batch's device-side thresholding (linalg._kept) is not counted yet
    X = D = None
    for i in range(n):
        t = torch.randn(*batch, dims[i], dims[i + 1], generator=g, dtype=torch.float64)
        X, D = (lm.lazy(t), t) if X is None else (X @ lm.lazy(t), D @ t)
    return X, D


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(products(), st.sampled_from(["nuc", "2", "svdvals"]))
def test_a_spectral_calls_named_minimum_runs_within_itself(pair, op):
    X, D = pair
    fn, dense = OPS[op]
    minimum = named_minimum(X, fn)
    if minimum > 1:  # one byte less: refused, or another route (the compiled small call's) runs within it
        X.clear_cache()
        try:
            with Allocated() as counter:
                fn(X, memory_budget=minimum - 1)
        except lm.BudgetTooSmall:
            pass
        else:
            assert counter.peak <= minimum - 1, (counter.peak, minimum, op, tuple(X.shape))
    X.clear_cache()
    with Allocated() as counter:
        out = fn(X, memory_budget=minimum)
    assert counter.peak <= minimum, (counter.peak, minimum, op, tuple(X.shape))
    if dense is not None:
        assert_close(out, dense(D))
    else:
        S = torch.linalg.svdvals(D)
        assert_close(out, S[..., :out.shape[-1]])
