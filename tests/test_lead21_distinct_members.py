"""A tall outer view whose batch index reads some matrix more than once (a flat list of pairs
``W[a.flatten()]``, a repeated head) is factorised once per distinct matrix, and its triangular
factor read back to the batch: every spectral answer as eager torch's in float64, QRs only of
distinct matrices, and the FLOPs of the broadcast-written form."""

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, forced_route


@st.composite
def pair_lists(draw):
    """Stacks ``A (h, m, k)``, ``B (h, k, n)``, ``C (g, n, k2)``, ``D (g, p, k2)`` (tall outer
    views: ``m > k``, ``p > k2``) and index lists ``i`` (into h) and ``j`` (into g) of one
    length, with repeats; a dtype, and a coefficient."""
    h, g = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    k, k2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    m, p = k + draw(st.integers(1, 6)), k2 + draw(st.integers(1, 6))
    n = draw(st.integers(1, 5))
    length = draw(st.integers(2, 9))
    i = draw(st.lists(st.integers(0, h - 1), min_size=length, max_size=length))
    j = draw(st.lists(st.integers(0, g - 1), min_size=length, max_size=length))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    coef = draw(st.sampled_from([1.0, -0.5, 2.0]))
    seed = draw(st.integers(0, 2**16))
    return (h, g, m, k, n, k2, p), i, j, dtype, coef, seed


def _operands(shapes, dtype, seed):
    h, g, m, k, n, k2, p = shapes
    gen = torch.Generator().manual_seed(seed)
    sizes = ((h, m, k), (h, k, n), (g, n, k2), (g, p, k2))
    return [torch.randn(*s, generator=gen, dtype=dtype) for s in sizes]


@given(pair_lists())
@settings(max_examples=50, deadline=None)
def test_pair_lists_answer_as_eager_torch(case):
    shapes, i, j, dtype, coef, seed = case
    A, B, C, D = _operands(shapes, dtype, seed)
    a, b = torch.tensor(i), torch.tensor(j)
    X = (lm.lazy(A)[a] @ lm.lazy(B)[a] @ lm.lazy(C)[b] @ lm.lazy(D)[b].mT) * coef
    dense = (A[a] @ B[a] @ C[b] @ D[b].mT) * coef
    with forced_route("factored"):
        S = LA.svdvals(X, full=True)
        U, S2, Vh = LA.svd(X)
        norms = [LA.matrix_norm(X, ord) for ord in ("fro", "nuc", 2)]
        P = LA.pinv(X).to_dense()
    assert_close(S, torch.linalg.svdvals(dense), rtol=1e-9, atol=1e-9)
    assert_close(U @ torch.diag_embed(S2).to(dtype) @ Vh, dense, rtol=1e-9, atol=1e-9)
    eye = torch.eye(U.shape[-1], dtype=dtype).expand(*U.shape[:-2], -1, -1)
    assert_close(U.mH @ U, eye, rtol=1e-9, atol=1e-9)
    for ours, ord in zip(norms, ("fro", "nuc", 2), strict=True):
        assert_close(ours, torch.linalg.matrix_norm(dense, ord), rtol=1e-9, atol=1e-9)
    assert_close(P, torch.linalg.pinv(dense), rtol=1e-7, atol=1e-7)


def test_each_distinct_matrix_is_factorised_once(gen):
    """12 pairs of 3 x 4 heads: the outer views' QRs run over the 3 and 4 distinct heads, not
    the 12 pairs, and the answers are eager torch's."""
    A, B = torch.randn(3, 40, 4, dtype=torch.float64), torch.randn(3, 4, 30, dtype=torch.float64)
    C, D = torch.randn(4, 30, 4, dtype=torch.float64), torch.randn(4, 50, 4, dtype=torch.float64)
    a, b = (x.flatten() for x in torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij"))
    X = lm.lazy(A)[a] @ lm.lazy(B)[a] @ lm.lazy(C)[b] @ lm.lazy(D)[b].mT
    with forced_route("factored"), lm.config(qr="householder"), TorchCalls() as calls:
        S = LA.svdvals(X)
    assert sorted(calls.qr_inputs()) == [(3, 40, 4), (4, 50, 4)]
    assert_close(S, torch.linalg.svdvals(A[a] @ B[a] @ C[b] @ D[b].mT)[..., :4], rtol=1e-9)


@pytest.mark.parametrize("op", ["svdvals", "svd"])
def test_a_flat_pair_list_costs_what_the_broadcast_form_costs(op):
    """All-pairs K-composition of GPT-2-small-shaped heads, on shape-only symbols: the flat
    list of 144 pairs plans the FLOPs of ``W_V[:, None] ... W_K[None]`` (it planned 2.9x
    more, a QR per pair)."""
    h, d, dh = 12, 768, 64
    Wv, Wo = lm.symbol("W_V", (h, d, dh)), lm.symbol("W_O", (h, dh, d))
    Wq, Wk = lm.symbol("W_Q", (h, d, dh)), lm.symbol("W_K", (h, d, dh))
    a, b = (x.flatten() for x in torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij"))
    flat = Wv[a] @ Wo[a] @ (Wq[b] @ Wk[b].mT).mT
    broadcast = Wv[:, None] @ Wo[:, None] @ (Wq[None] @ Wk[None].mT).mT
    assert lm.explain(flat, op).flops == lm.explain(broadcast, op).flops


def test_a_repeated_head_reuses_its_qr_across_pair_lists():
    """Two lists reading the same distinct heads share the QRs kept on the leaves."""
    A, B = torch.randn(3, 40, 4, dtype=torch.float64), torch.randn(3, 4, 4, dtype=torch.float64)
    lA, lB = lm.lazy(A), lm.lazy(B)
    first, second = torch.tensor([0, 2, 2, 0]), torch.tensor([2, 0, 0, 0, 2])
    with forced_route("factored"), lm.config(qr="householder"):
        LA.svdvals(lA[first] @ lB[first] @ lA[first].mT)
        with TorchCalls() as calls:
            S = LA.svdvals(lA[second] @ lB[second] @ lA[second].mT)
    assert calls.qr_inputs() == []
    dense = A[second] @ B[second] @ A[second].mT
    assert_close(S, torch.linalg.svdvals(dense)[..., :4], rtol=1e-9)


def test_pair_lists_differentiate_as_eager_torch():
    """Gradients through the read-back triangular factor: the nuclear norm's, against eager."""
    A = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 3, 8, dtype=torch.float64, requires_grad=True)
    a, b = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([2, 2, 0, 1, 0])
    with forced_route("factored"):
        ours = torch.autograd.grad(LA.matrix_norm(lm.lazy(A)[a] @ lm.lazy(B)[b], "nuc").sum(), (A, B))
    theirs = torch.autograd.grad(torch.linalg.matrix_norm(A[a] @ B[b], "nuc").sum(), (A, B))
    for x, y in zip(ours, theirs, strict=True):
        assert_close(x, y, rtol=1e-8, atol=1e-10)


def _all_pairs(h=4, d=300, dh=4, flat=True):
    gen = torch.Generator().manual_seed(7)
    Wv, Wq, Wk = (torch.randn(h, d, dh, generator=gen, dtype=torch.float64) for _ in range(3))
    Wo = torch.randn(h, dh, d, generator=gen, dtype=torch.float64)
    V, O, Q, K = map(lm.lazy, (Wv, Wo, Wq, Wk))
    if flat:
        a, b = (x.flatten() for x in torch.meshgrid(torch.arange(h), torch.arange(h), indexing="ij"))
        return V[a] @ O[a] @ (Q[b] @ K[b].mT).mT, Wv[a] @ Wo[a] @ (Wq[b] @ Wk[b].mT).mT
    return (V[:, None] @ O[:, None] @ (Q[None] @ K[None].mT).mT,
            Wv[:, None] @ Wo[:, None] @ (Wq[None] @ Wk[None].mT).mT)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("budget", ["40KB", "20KB"])
def test_blocks_of_all_pairs_read_the_batchs_qrs(budget, flat):
    """Under a budget that cuts the 16 pairs into blocks, the 4 + 4 distinct heads are
    factorised once, before the blocks, and each block reads their rows (the flat list's blocks
    factorised their own heads again, 32 QRs; the broadcast form's, its earlier heads' once a
    block); explain's FLOPs are the unblocked run's, as the QRs that run."""
    X, dense = _all_pairs(flat=flat)
    with forced_route("factored"), lm.config(qr="householder"):
        whole = lm.explain(X, "svdvals").flops
        X._cache.clear()
        with lm.config(memory_budget=budget):
            report = lm.explain(X, "svdvals")
            with TorchCalls() as calls:
                S = LA.svdvals(X)
    assert report.slicing or report.planned.note  # the run was cut into blocks
    assert sorted(s[-2:] for s in calls.qr_inputs()) == [(300, 4), (300, 4)]
    assert sorted(math.prod(s[:-2]) for s in calls.qr_inputs()) == [4, 4]
    assert report.flops == pytest.approx(whole, rel=1e-4)  # (rows round their FLOPs down)
    assert_close(S, torch.linalg.svdvals(dense)[..., :4], rtol=1e-9)


def test_part_of_a_batch_reads_the_qrs_kept_for_all_of_it():
    """After svd of all pairs, svdvals and svd of some pairs (a slice, a list) factorise nothing:
    their heads' rows are read from the QRs kept for the whole batch."""
    X, dense = _all_pairs()
    with forced_route("factored"), lm.config(qr="householder"):
        LA.svd(X)
        with TorchCalls() as calls:
            S = LA.svdvals(X[3:9])
            U, S2, Vh = LA.svd(X[[5, 1, 5]])
    assert calls.qr_inputs() == []
    assert_close(S, torch.linalg.svdvals(dense[3:9])[..., :4], rtol=1e-9)
    assert_close(U @ torch.diag_embed(S2) @ Vh, dense[[5, 1, 5]], rtol=1e-9)


@pytest.mark.parametrize("flat", [True, False])
def test_blocked_explain_counts_the_qrs_that_run(flat):
    """The blocked run's QR FLOPs in explain are those of the QRs it runs (Householder's
    2 n^2 (m - n/3) each): no block's QR counted as free that the run factorises again."""
    X, _ = _all_pairs(flat=flat)
    with forced_route("factored"), lm.config(qr="householder", memory_budget="40KB"):
        report = lm.explain(X, "svdvals")
        unblocked = lm.explain(X, "svdvals", memory_budget="1GB").flops
        with TorchCalls() as calls:
            LA.svdvals(X)
    qr_flops = sum(2 * s[-1] ** 2 * (s[-2] - s[-1] / 3) * (s[0] if len(s) == 3 else s[0] * s[1])
                   for s in calls.qr_inputs())
    once = 2 * 4 ** 2 * (300 - 4 / 3) * 8  # the 8 distinct heads' QRs of the unblocked run
    assert report.flops - unblocked == pytest.approx(qr_flops - once, abs=16)  # (rows round down)
