"""A batch cut into budget blocks factorises the tall leaves its blocks share before the blocks
(each block reads their QRs), but only where those QRs fit the budget while they run: the QR of
all of a leaf's members at once holds a working copy of them all (CholeskyQR's ``X``, LAPACK's
copy). svdvals of all pairs of 8 heads of a 4000 x 2 leaf under a 128 KiB budget allocated
512 KB before its blocks, and explain predicted 2.2 KiB. Measured against the bytes torch
allocates (CholeskyQR: its copy is an op's output), answers against eager float64."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

import lazymat as lm
from lazymat import linalg as LA
from lazymat.allocated import Allocated
from lazymat.core import block_reductions
from lazymat.explain import _qr_work

from conftest import assert_close


def _leaves(h, d, dh, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = ((h, d, dh), (h, dh, d), (h, d, dh), (h, d, dh))
    return [torch.randn(*s, generator=gen, dtype=dtype) for s in shapes]


def _pairs(h, d, dh, flat, dtype, seed):
    """All pairs of heads, lazy, and a function forming them densely."""
    V, O, Q, K = _leaves(h, d, dh, dtype, seed)
    lV, lO, lQ, lK = map(lm.lazy, (V, O, Q, K))
    if flat:
        a, b = (x.flatten() for x in torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij"))
        return lV[a] @ lO[a] @ (lQ[b] @ lK[b].mT).mT, lambda: V[a] @ O[a] @ (Q[b] @ K[b].mT).mT
    return (lV[:, None] @ lO[:, None] @ (lQ[None] @ lK[None].mT).mT,
            lambda: V[:, None] @ O[:, None] @ (Q[None] @ K[None].mT).mT)


@given(h=st.integers(2, 5), d=st.integers(100, 400), dh=st.integers(1, 3), flat=st.booleans(),
       dtype=st.sampled_from([torch.float64, torch.complex128]), op=st.sampled_from(["svdvals", "svd"]),
       fraction=st.sampled_from([0.05, 0.15, 0.3, 0.6]), seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
def test_a_blocked_run_stays_within_its_budget(h, d, dh, flat, dtype, op, fraction, seed):
    X, dense = _pairs(h, d, dh, flat, dtype, seed)
    dense = dense()
    with lm.config(qr="cholesky"):
        whole = lm.explain(X, op).planned.peak_bytes
        budget = int(whole * fraction)
        try:
            lm.explain(X, op, memory_budget=budget)  # where it refuses, the call does too
        except lm.BudgetTooSmall:
            return
        # the QRs run before the blocks must fit the budget themselves: where they do not, the
        # run overruns it (the known case, strict xfail below), so this guard holds where they fit
        vectors, item = op == "svd", dtype.itemsize
        before = sum(_qr_work(s.count, s.rows, s.k, not vectors, item)
                     + s.count * (s.k * s.k + (s.rows * s.k if vectors else 0)) * item
                     for s in block_reductions(X, vectors))
        assume(before <= budget)
        with Allocated() as counted:
            out = getattr(LA, op)(X, memory_budget=budget)
    out = out if op == "svdvals" else tuple(out)
    result = sum(t.untyped_storage().nbytes() for t in (out if isinstance(out, tuple) else (out,)))
    read = counted.peak - result
    if not flat:  # (a list index's copy of a leaf is planned as a view: docs/memory-budgets.md)
        assert read <= budget, (read, budget)
    if op == "svdvals":
        assert_close(out, torch.linalg.svdvals(dense)[..., :out.shape[-1]], rtol=1e-9, atol=1e-9)
    else:
        U, S, Vh = out
        assert_close(U @ torch.diag_embed(S).to(dtype) @ Vh, dense, rtol=1e-9, atol=1e-9)


@pytest.mark.xfail(strict=True, reason="lead: the QRs shared before a batch's blocks (core.block_reductions) "
                   "run whole, beside no budget: their working copy of all members can exceed it; "
                   "qa34's fix (choose only those that fit) reverted for time, see the session 21 note")
def test_all_pairs_of_a_tall_leaf_under_a_budget_smaller_than_its_qr():
    """The example: the heads' QR whole needs 512 KB, the budget is 128 KiB. (Its 8 GB dense
    matrix is not formed: each pair's singular values are those of ``R_V O K R_Q^T``, from
    torch's QRs of the heads, ``X_ij = V_i O_i K_j Q_j^T``.)"""
    X, _ = _pairs(8, 4000, 2, False, torch.float64, 0)
    with lm.config(qr="cholesky"):
        predicted = lm.explain(X, "svdvals", memory_budget=2**17).planned.peak_bytes
        with Allocated() as counted:
            S = LA.svdvals(X, memory_budget=2**17)
    assert counted.peak - S.untyped_storage().nbytes() <= min(predicted, 2**17)
    V, O, Q, K = _leaves(8, 4000, 2, torch.float64, 0)
    RV, RQ = torch.linalg.qr(V).R, torch.linalg.qr(Q).R
    core = RV[:, None] @ O[:, None] @ K[None] @ RQ[None].mT
    assert_close(S, torch.linalg.svdvals(core), rtol=1e-9, atol=1e-9)


@pytest.mark.xfail(strict=True, reason="lead: explain's blocked peak (linalg.blocks.batch_blocks) leaves out "
                   "the QRs run before the blocks; counting them (patch in the session 21 note) needs "
                   "the overrun above fixed first")
def test_explain_counts_the_qrs_run_before_the_blocks():
    """All pairs of 2 heads of 100 x 1: the run holds 1664 B (the heads' QRs before the blocks),
    within its 1987 B budget, where explain predicted 192 B (the blocks alone)."""
    X, _ = _pairs(2, 100, 1, False, torch.float64, 0)
    with lm.config(qr="cholesky"):
        budget = int(lm.explain(X, "svdvals").planned.peak_bytes * 0.6)
        predicted = lm.explain(X, "svdvals", memory_budget=budget).planned.peak_bytes
        with Allocated() as counted:
            S = LA.svdvals(X, memory_budget=budget)
    assert counted.peak - S.untyped_storage().nbytes() <= predicted

