"""det, slogdet, inv and solve of a batch under a memory budget that the whole batch's route does
not fit run in blocks of the batch (the spectral calls' ``_in_blocks``) where one member fits
beside the batch's answer: the least budget ``BudgetTooSmall`` names is below the whole batch's
peak, the call allocates at most its budget (counted by :class:`lazymat.allocated.Allocated`,
the answer included), ``explain`` reports the blocked run's peak (within the budget, at least
what is allocated) and the answers are float64 torch's on the formed matrix. They refused any
budget below the whole batch's peak."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated

from conftest import assert_close


def _least(fn, X) -> int:
    X.clear_cache()
    with pytest.raises(lm.BudgetTooSmall) as err:
        fn(X, memory_budget=1)
    return err.value.minimum


@st.composite
def batches(draw):
    """(op, lazy X, dense X, B or None): a batch of 2-6 square ``n x n`` matrices, a product of
    two batched leaves, of a batched and an unbatched leaf, or a sum of two batched leaves;
    solve's ``B`` batched like ``X`` or shared by the batch."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    b, n = draw(st.integers(2, 6)), draw(st.integers(2, 12))
    A = torch.randn(b, n, n, generator=g, dtype=torch.float64) + 3 * torch.eye(n, dtype=torch.float64)
    shape = draw(st.sampled_from(["product", "shared", "sum"]))
    C = torch.randn(*(() if shape == "shared" else (b,)), n, n, generator=g, dtype=torch.float64)
    X, D = ((lm.lazy(A) + lm.lazy(C), A + C) if shape == "sum" else (lm.lazy(A) @ lm.lazy(C), A @ C))
    op = draw(st.sampled_from(["det", "slogdet", "inv", "solve"]))
    B = None
    if op == "solve":
        k = draw(st.integers(1, 3))
        B = torch.randn(*((b,) if draw(st.booleans()) else ()), n, k, generator=g, dtype=torch.float64)
    return op, X, D, B


CALLS = {"det": (LA.det, torch.linalg.det), "slogdet": (LA.slogdet, torch.linalg.slogdet),
         "inv": (LA.inv, torch.linalg.inv)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches(), st.floats(1.0, 2.0))
def test_a_batch_runs_in_blocks_within_the_budget(case, slack):
    op, X, D, B = case
    if op == "solve":  # (a B of shape X.shape[:-1] is a batch of vectors, torch's rule)
        vectors = tuple(B.shape) == tuple(X.shape[:-1])
        fn, want = (lambda Y, **k: LA.solve(Y, B, **k)), torch.linalg.solve(D, B)
        options = {"k": 1 if vectors else B.shape[-1]}
    else:
        fn, want, options = CALLS[op][0], CALLS[op][1](D), {}
    whole = lm.explain(X, op, memory_budget=2**40, **options).planned.peak_bytes
    least = _least(fn, X)
    lazy_inverse = op == "inv" and isinstance(fn(X), lm.Expr)  # a product's inverse: lazy, never blocked
    assert least == whole if lazy_inverse else least <= whole  # (one member and the answer: maybe not less)
    budget = min(int(least * slack), whole - 1) if least < whole else least
    explained = lm.explain(X, op, memory_budget=budget, **options).planned.peak_bytes
    X.clear_cache()
    with Allocated() as counted:
        out = fn(X, memory_budget=budget)
    assert counted.peak <= explained <= budget, (counted.peak, explained, budget)
    got = out.to_dense() if isinstance(out, lm.Expr) else out
    for a, e in zip(got if op == "slogdet" else (got,), want if op == "slogdet" else (want,), strict=True):
        assert_close(a, e, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("op", ["det", "slogdet", "inv", "solve"])
def test_the_least_budget_is_one_members_beside_the_answer(op):
    """16 products of two 30 x 30 leaves (inv: their sums, a tensor answer): the least budget is
    below the whole batch's peak (main refused every budget below it), and the blocked call runs
    within it."""
    g = torch.Generator().manual_seed(0)
    A, C = (torch.randn(16, 30, 30, generator=g, dtype=torch.float64) for _ in range(2))
    B = torch.randn(16, 30, 5, generator=g, dtype=torch.float64)
    X, D = (lm.lazy(A) + lm.lazy(C), A + C) if op == "inv" else (lm.lazy(A) @ lm.lazy(C), A @ C)
    fn = (lambda Y, **k: LA.solve(Y, B, **k)) if op == "solve" else CALLS[op][0]
    whole = lm.explain(X, op, memory_budget=2**40, **({"k": 5} if op == "solve" else {})).planned.peak_bytes
    least = _least(fn, X)
    assert least < whole / 2
    with Allocated() as counted:
        out = fn(X, memory_budget=least)
    assert counted.peak <= least
    want = torch.linalg.solve(D, B) if op == "solve" else CALLS[op][1](D)
    for a, e in zip(out if op == "slogdet" else (out,), want if op == "slogdet" else (want,), strict=True):
        assert_close(a, e, rtol=1e-8, atol=1e-10)


def test_a_batch_broadcast_by_B_is_not_cut():
    """``B`` with batch dims ``X`` lacks: the answer's batch is not ``X``'s, so the whole
    route's peak is the least budget (refused below it, as before). This small chain is formed
    whole, with B's 5 batches counted, down to that least budget (edge15: the segments' route,
    1828 bytes, was taken below the generous bound, and budgets of 1700 to 1827 refused). explain
    is told ``B``'s shape (``B=``): ``k=`` alone costs a ``B`` of ``X``'s batch (qa19: the check
    did too, and ran the solve of 5 right-hand batches under a budget for one)."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(8, 8, dtype=torch.float64, generator=g) + 3 * torch.eye(8, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(A)
    B = torch.randn(5, 8, 2, dtype=torch.float64, generator=g)
    least = _least(lambda Y, **k: LA.solve(Y, B, **k), X)
    assert least == lm.explain(X, "solve", memory_budget=least, B=B).planned.peak_bytes == 1700
    assert least > lm.explain(X, "solve", memory_budget=least, k=2).planned.peak_bytes
    assert "formed whole" in lm.explain(X, "solve", memory_budget=2**40, B=B).planned.note
    assert "formed whole" in lm.explain(X, "solve", memory_budget=least, B=B).planned.note
    assert_close(LA.solve(X, B, memory_budget=least), torch.linalg.solve(A @ A, B))


@pytest.mark.parametrize("op", ["det", "slogdet", "inv", "solve"])
def test_gradients_through_blocks_are_eager_torchs(op):
    """Under the least budget (blocks of the batch, recomputed in the backward) the gradients to
    the leaves are those of eager float64 torch on the formed matrices."""
    g = torch.Generator().manual_seed(0)
    A = (torch.randn(6, 10, 10, generator=g, dtype=torch.float64) + 3 * torch.eye(10, dtype=torch.float64))
    A.requires_grad_()
    C = torch.randn(6, 10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(6, 10, 2, generator=g, dtype=torch.float64)
    calls = {"det": (LA.det, torch.linalg.det),
             "slogdet": (lambda X, **k: LA.slogdet(X, **k)[1], lambda D: torch.linalg.slogdet(D)[1]),
             "solve": (lambda X, **k: LA.solve(X, B, **k), lambda D: torch.linalg.solve(D, B)),
             "inv": (LA.inv, torch.linalg.inv)}
    fn, eager = calls[op]
    X, D = (lm.lazy(A) + lm.lazy(C), A + C) if op == "inv" else (lm.lazy(A) @ lm.lazy(C), A @ C)
    with torch.no_grad():
        least = _least(fn, X)
    options = {"k": 2} if op == "solve" else {}
    assert least < lm.explain(X, op, memory_budget=2**40, **options).planned.peak_bytes
    got = torch.autograd.grad(fn(X, memory_budget=least).pow(2).sum(), [A, C])
    want = torch.autograd.grad(eager(D).pow(2).sum(), [A, C])
    for a, e in zip(got, want, strict=True):
        assert_close(a, e, rtol=1e-9)
