"""A budgeted call's backward falls back to the default budget also inside ``with lm.config``.

Under a memory budget a call recomputes itself in the backward; where the differentiable route
needs more than the budget it was meant to run "under the default budget", but the fallback set
no budget by passing ``memory_budget=None``, which leaves the block's (or a process-wide) budget
in force: the backward of ``svdvals`` of a ``(3, 400, 8) @ (8, 300)`` product, run inside the
block whose budget the forward fitted, raised ``BudgetTooSmall``.
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

OPS = {
    "svdvals": (LA.svdvals, lambda D, k: torch.linalg.svdvals(D)[..., :k]),
    "nuc": (lambda X, **kw: LA.matrix_norm(X, "nuc", **kw), lambda D, k: torch.linalg.matrix_norm(D, "nuc")),
    "fro": (LA.matrix_norm, lambda D, k: torch.linalg.matrix_norm(D)),
}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**31 - 1), st.sampled_from(sorted(OPS)), st.integers(2, 3))
def test_backward_inside_a_budget_block_is_dense_torchs(seed, op, batch):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, 200, 6, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(6, 150, generator=g, dtype=torch.float64, requires_grad=True)
    fn, dense = OPS[op]
    X = lm.lazy(A) @ lm.lazy(B)
    try:
        fn(X, memory_budget=1)
        minimum = 1
    except lm.BudgetTooSmall as err:
        minimum = err.minimum
    with lm.config(memory_budget=minimum):
        out = fn(X)
        w = torch.randn(out.shape, generator=g, dtype=out.dtype)
        got = torch.autograd.grad((out * w).sum(), (A, B))
    want = torch.autograd.grad((dense(A @ B, out.shape[-1]) * w).sum(), (A, B))
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-8, atol=1e-10)
