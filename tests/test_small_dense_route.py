"""Small matrices take the dense route (materialise, then torch): same answers as dense float64
torch and as lazymat's factored route, the zero rule kept, gradients flowing."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat.rewrite import Nested, canonical

from conftest import assert_close, randn


@pytest.fixture
def no_factored(monkeypatch):
    """Fail if the factored route runs (its QRs start from ``reduced_factors``)."""
    def boom(*args, **kwargs):
        raise AssertionError("the factored route ran on a small matrix")
    for reader in (LA.spectrum, LA.norms):  # the factored route's QRs (of the SVD, of the Frobenius core)
        monkeypatch.setattr(reader, "reduced_factors", boom)


def chain(gen, dims, batch=()):
    ts = [randn(gen, *batch, dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
    X, D = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        X, D = X @ lm.lazy(t), D @ t
    return X, D


def answers(X, full_k):
    return {
        "svdvals": LA.svdvals(X, full=True)[..., :full_k],
        "rank": LA.matrix_rank(X),
        "fro": LA.matrix_norm(X),
        "nuc": LA.matrix_norm(X, "nuc"),
        "2": LA.matrix_norm(X, 2),
        "cond": LA.cond(X),
        "pinv": LA.pinv(X).to_dense(),
    }


def test_issue_example_is_dense_and_matches_torch(gen, no_factored):
    X, D = chain(gen, [64, 32, 32, 64])
    assert LA.small.dense_is_cheaper(X, "svdvals") and LA.small.dense_is_cheaper(X, "svd")
    got = answers(X, 32)
    assert_close(got["svdvals"], torch.linalg.svdvals(D)[:32])
    assert got["rank"] == torch.linalg.matrix_rank(D) == 32
    for name, ord in (("fro", "fro"), ("nuc", "nuc"), ("2", 2)):
        assert_close(got[name], torch.linalg.matrix_norm(D, ord))
    assert_close(got["pinv"], torch.linalg.pinv(D), rtol=1e-8)
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag(S) @ Vh, D)


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 10), min_size=2, max_size=5),
       batch=st.sampled_from([(), (2,), (2, 3)]), seed=st.integers(0, 2**16))
def test_dense_route_equals_factored_route_and_torch(dims, batch, seed):
    """Against dense float64 torch and against the factored route (rank, cut width, cond)."""
    gen = torch.Generator().manual_seed(seed)
    X, D = chain(gen, dims, batch)
    assert LA.small.dense_is_cheaper(X)
    dense = answers(X, min(dims))
    saved = LA.costs.DENSE_MAX_ELEMENTS
    LA.costs.DENSE_MAX_ELEMENTS = 0
    try:
        X2, _ = chain(torch.Generator().manual_seed(seed), dims, batch)  # a fresh expression, no caches
        assert not LA.small.dense_is_cheaper(X2)
        factored = answers(X2, min(dims))
    finally:
        LA.costs.DENSE_MAX_ELEMENTS = saved
    k = min(dims)
    assert_close(dense["svdvals"], torch.linalg.svdvals(D)[..., :k], rtol=1e-9)
    assert torch.equal(dense["rank"], factored["rank"])
    assert torch.equal(dense["rank"], torch.linalg.matrix_rank(D))
    for name in ("svdvals", "fro", "nuc", "2", "pinv"):
        assert_close(dense[name], factored[name], rtol=1e-8)
    # rank at most the inner width: both routes call X singular (inf) where it is structurally
    assert torch.equal(torch.isinf(dense["cond"]), torch.isinf(factored["cond"]))
    finite = ~torch.isinf(dense["cond"])
    assert_close(dense["cond"][finite], torch.linalg.cond(D)[finite], rtol=1e-6)


def test_exact_cancellation_is_rank_zero(gen, no_factored):
    """``X - X`` and a difference of two associations of one product (rounding noise in the
    dense matrix) are both the zero matrix to lazymat: rank 0, no singular values, norm 0."""
    A, B, C = randn(gen, 20, 10), randn(gen, 10, 10), randn(gen, 10, 20)
    X, _ = chain(gen, [20, 10, 10, 20])
    Y = lm.lazy(A @ B) @ lm.lazy(C) - lm.lazy(A) @ lm.lazy(B @ C)
    assert (A @ B @ C - A @ (B @ C)).abs().max() > 0  # the dense matrix is noise, not zero
    for Z in (X - X, Y):
        assert LA.small.dense_is_cheaper(Z)
        assert LA.matrix_rank(Z) == 0
        assert LA.svdvals(Z).shape[-1] == 0
        assert LA.matrix_norm(Z) < 1e-12 * LA.matrix_norm(X)
        assert torch.isnan(LA.cond(Z))  # 0 / 0, as torch on the zero matrix


def test_structurally_singular_product_is_singular(gen, no_factored):
    X, D = chain(gen, [30, 4, 25])
    assert LA.svdvals(X).shape[-1] == 4 and torch.isinf(LA.cond(X))
    assert torch.linalg.cond(D) > 1e12  # torch sees rounding noise where lazymat sees zero


def test_gradients_flow_through_the_dense_route(gen):
    A, B, C = (randn(gen, *s).requires_grad_() for s in ((12, 6), (6, 6), (6, 12)))
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)
    assert LA.small.dense_is_cheaper(X)
    loss = LA.svdvals(X).sum() + LA.matrix_norm(X) + LA.matrix_norm(X, "nuc")
    got = torch.autograd.grad(loss, (A, B, C))
    D = A @ B @ C
    want = torch.autograd.grad(torch.linalg.svdvals(D).sum() + torch.linalg.matrix_norm(D)
                               + torch.linalg.matrix_norm(D, "nuc"), (A, B, C))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-8)


def test_large_or_nested_expressions_stay_factored(gen):
    big, _ = chain(gen, [600, 4, 600])
    assert not LA.small.dense_is_cheaper(big)
    A, B, C = (lm.lazy(randn(gen, *s)) for s in ((8, 8), (8, 8), (8, 8)))
    nested = (A + B) @ C @ (A - B)
    assert any(isinstance(f.base, Nested) for t in canonical(nested).terms for f in t.factors)
    assert not LA.small.dense_is_cheaper(nested)
    assert LA.small.dense_is_cheaper(A @ B)
    assert not LA.small.dense_is_cheaper(lm.lazy(torch.zeros(0, 5)) @ lm.lazy(torch.zeros(5, 3)))


# ---- the route decision: one cost model, checked against textbook FLOP counts -------------
def _textbook_flops(m, n, r, op):
    """(dense, factored) FLOPs from Golub & Van Loan, written out here independently of lazymat:
    Householder QR of p x q: 2 q^2 (p - q/3), twice that with Q; SVD of p x q (p >= q):
    4 p q^2 - 4/3 q^3 for values, 14 p q^2 + 8 q^3 with reduced vectors. Forming L @ R costs
    2 m n r; the r x r core R_L R_R^H 2 r^3; U = Q_L U_c and Vh = Vh_c Q_R^H 2 (m + n) r^2;
    the Gram matrices L^H L, R R^H and the trace of their product 2 (m + n) r^2 + 2 r^2."""
    big, small = max(m, n), min(m, n)
    if op == "matrix_norm":
        return 2 * m * n * r + 2 * m * n, 2 * (m + n) * r * r + 2 * r * r
    if op == "svdvals":
        dense = 2 * m * n * r + 4 * big * small**2 - 4 / 3 * small**3
        factored = 2 * r * r * (m - r / 3) + 2 * r * r * (n - r / 3) + 2 * r**3 + 4 * r**3 - 4 / 3 * r**3
        return dense, factored
    dense = 2 * m * n * r + 14 * big * small**2 + 8 * small**3
    factored = 4 * r * r * (m - r / 3) + 4 * r * r * (n - r / 3) + 2 * r**3 + 22 * r**3 + 2 * (m + n) * r * r
    return dense, factored


def _textbook_reduced(m, n, r, op):
    """FLOPs of the reduced small route (r < min(m, n)), the cheaper side, as above: the QR of
    the reduced side's rows x r (with Q for svd), the kept x r matrix (2 kept r^2), its SVD, and
    for svd the vectors rotated back by Q (2 rows r^2)."""
    costs = []
    for rows, kept in ((n, m), (m, n)):
        qr = 2 * r * r * (rows - r / 3)
        if op == "svdvals":
            costs.append(qr + 2 * kept * r * r + 4 * kept * r * r - 4 / 3 * r**3)
        else:
            costs.append(2 * qr + 2 * kept * r * r + 14 * kept * r * r + 8 * r**3 + 2 * rows * r * r)
    return min(costs)


@pytest.mark.parametrize("op", ["svdvals", "svd", "matrix_norm"])
@pytest.mark.parametrize("m, r, n, batch", [
    (64, 32, 64, ()), (8, 2, 8, ()), (96, 12, 96, ()), (128, 64, 128, ()), (256, 32, 256, ()),
    (40, 5, 200, ()), (200, 5, 40, ()), (64, 32, 64, (8,)), (64, 32, 64, (2, 50)), (16, 8, 16, (100,)),
    (300, 4, 300, ()), (256, 16, 256, ()),
])
def test_route_decision_is_the_cheaper_by_flops(op, m, r, n, batch):
    """dense_is_cheaper(x, op) takes a small route exactly when the whole batch's FLOPs on the
    cheaper of the dense and (for the SVDs of a product narrower than its dims) reduced routes,
    the reduced route's per-call overhead added, are at most the factored FLOPs plus its
    per-call overhead, and the matrix is small enough; small_reduction names the reduced one."""
    X = lm.symbol("A", (*batch, m, r)) @ lm.symbol("B", (r, r)) @ lm.symbol("C", (r, n))
    dense, factored = _textbook_flops(m, n, r, op)
    count = math.prod(batch)
    small, reduced = count * dense, False
    if op != "matrix_norm" and r < min(m, n):
        cost = count * _textbook_reduced(m, n, r, op) + LA.costs.REDUCED_OVERHEAD_FLOPS[op]
        small, reduced = min(small, cost), cost < small
    overhead = (LA.costs.FACTORED_OVER_REDUCED_FLOPS if reduced else LA.costs.FACTORED_OVERHEAD_FLOPS)[op]
    want = m * n <= LA.costs.DENSE_MAX_ELEMENTS and small - count * factored <= overhead
    assert LA.small.dense_is_cheaper(X, op) == want
    if want:
        assert (LA.small.small_reduction(X, op) is not None) == reduced


def test_the_decision_sees_both_sides_of_the_crossover():
    """The shapes above are not all on one side: the model is exercised both ways per op."""
    for op in ("svdvals", "svd", "matrix_norm"):
        routes = {LA.small.dense_is_cheaper(lm.symbol("A", (m, r)) @ lm.symbol("B", (r, m)), op)
                  for m, r in ((8, 2), (64, 32), (512, 64), (600, 8))}
        assert routes == {True, False}, op


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 90), n=st.integers(1, 90), r=st.integers(1, 40),
       batch=st.sampled_from([(), (3,)]), seed=st.integers(0, 2**16))
def test_answers_equal_float64_torch_on_both_sides_of_the_crossover(m, n, r, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    X, D = chain(gen, [m, r, r, n], batch)
    k = min(m, n, r)
    S = torch.linalg.svdvals(D)
    assert_close(LA.svdvals(X, full=True)[..., :k], S[..., :k], rtol=1e-9)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)
    assert_close(LA.matrix_norm(X, "nuc"), torch.linalg.matrix_norm(D, "nuc"), rtol=1e-9)
    assert_close(LA.matrix_norm(X, 2), torch.linalg.matrix_norm(D, 2), rtol=1e-9)
    U, S2, Vh = LA.svd(X)
    assert_close(U @ torch.diag_embed(S2).to(U.dtype) @ Vh, D, rtol=1e-9)


# ---- explain shows the route that runs ---------------------------------------------------
@pytest.mark.parametrize("op", ["svdvals", "svd", "matrix_norm"])
@pytest.mark.parametrize("dims", [[64, 32, 32, 64], [16, 4, 4, 16], [400, 8, 8, 400], [256, 64, 64, 256]])
def test_explain_reports_the_route_that_runs(gen, op, dims):
    X, _ = chain(gen, dims)
    report = lm.explain(X, op)
    steps = [row.op for row in report.rows]
    dense = next(r for r in report.naive if r.name == "dense materialisation")
    if LA.small.dense_is_cheaper(X, op) and LA.small.small_reduction(X, op) is not None:
        m, n, r = dims[0], dims[-1], min(dims)
        assert "SVD of the reduced matrix" in steps and sum(s.startswith("QR") for s in steps) == 1
        forming = 2 * r * r * max(m, n)  # the side of two factors (m x r @ r x r), formed once
        # (each row's count truncated to an integer: the rows of the route differ by under 1 each)
        assert abs(report.planned.flops - (forming + _textbook_reduced(m, n, r, op))) < len(steps)
    elif LA.small.dense_is_cheaper(X, op):
        assert steps[-1] in ("SVD of the dense matrix", "Frobenius norm of the dense matrix")
        assert not any(s.startswith(("QR", "Gram", "tr(")) for s in steps)
        assert report.planned.flops == dense.flops  # the dense route, costed as the naive one
    else:
        assert not any("dense matrix" in s for s in steps)
        assert report.planned.flops < dense.flops


def test_explain_follows_a_changed_decision(gen, monkeypatch):
    """explain asks the same decision linalg runs: forcing the factored route changes both."""
    X, _ = chain(gen, [64, 32, 32, 64])
    assert "SVD of the reduced matrix" in [row.op for row in lm.explain(X, "svdvals").rows]
    monkeypatch.setitem(LA.costs.REDUCED_OVERHEAD_FLOPS, "svdvals", math.inf)
    assert "SVD of the dense matrix" in [row.op for row in lm.explain(X, "svdvals").rows]
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)
    X2, _ = chain(gen, [64, 32, 32, 64])
    assert any(row.op.startswith("QR") for row in lm.explain(X2, "svdvals").rows)


def test_the_dense_route_keeps_to_the_memory_budget(gen):
    """A batch whose dense route (the matrices formed, then torch's routine) exceeds the budget
    by one byte is not materialised, however cheap by FLOPs: the factored route runs, with the
    same answers; at exactly its peak (explain's figure) the dense route runs."""
    X, D = chain(gen, [64, 32, 32, 64], batch=(3,))
    for op in ("matrix_norm", "svd"):
        peak = lm.explain(X, op, memory_budget=2**40).planned
        assert "small matrices" in peak.note
        with lm.config(memory_budget=peak.peak_bytes):
            assert LA.small.dense_is_cheaper(X, op)
        with lm.config(memory_budget=peak.peak_bytes - 1):
            assert not LA.small.dense_is_cheaper(X, op)
            assert "small matrices" not in lm.explain(X, op).planned.note
    small = lm.explain(X, "matrix_norm", memory_budget=2**40).planned.peak_bytes - 1
    assert_close(LA.matrix_norm(X, memory_budget=small), torch.linalg.matrix_norm(D))
    small = lm.explain(X, "svdvals", memory_budget=2**40).planned.peak_bytes - 1
    assert_close(LA.svdvals(X, memory_budget=small), torch.linalg.svdvals(D)[..., :32], rtol=1e-9)
