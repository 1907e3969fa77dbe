"""The reduced small route (issue 12 item 4): a small product ``L @ R`` narrower than both its
dims is decomposed through one Householder QR of a side and LAPACK on the ``m x r`` (or
``r x n``) matrix. Checked against eager float64 torch on the materialised product and against
the dense small route (the same rules: tolerance, floor, zeros past the rank, NaN members)."""

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=40, deadline=None)


def chain(tensors, flips=(False, False, False)):
    """``lazy(A) @ lazy(B) @ lazy(C)``, the operands flagged in ``flips`` read as ``.mT`` of a
    transposed copy (the same values)."""
    x = None
    for t, flip in zip(tensors, flips, strict=True):
        leaf = lm.lazy(t.mT.contiguous()).mT if flip else lm.lazy(t)
        x = leaf if x is None else x @ leaf
    return x


def factors(gen, batch, m, r, n, dtype=torch.float64, where="left"):
    """``A (..., m, r)``, ``B (r, r)``, ``C (r, n)``, the batch on ``A`` (``"left"``) or on ``C``."""
    A = randn(gen, *(batch if where == "left" else ()), m, r, dtype=dtype)
    B = randn(gen, r, r, dtype=dtype)
    C = randn(gen, *(batch if where == "right" else ()), r, n, dtype=dtype)
    return A, B, C


@contextlib.contextmanager
def route(name):
    """Every small matrix on the ``"reduced"`` route (where the product is narrower than both
    dims) or the ``"dense"`` one, whatever the cost model says."""
    costs = LA.costs
    tables = costs.FACTORED_OVERHEAD_FLOPS, costs.FACTORED_OVER_REDUCED_FLOPS, costs.REDUCED_OVERHEAD_FLOPS
    saved = LA.costs.DENSE_MAX_ELEMENTS, [dict(t) for t in tables]
    LA.costs.DENSE_MAX_ELEMENTS = math.inf
    values = (math.inf, math.inf, -math.inf if name == "reduced" else math.inf)
    for table, value in zip(tables, values, strict=True):
        table.update(dict.fromkeys(table, value))
    try:
        yield
    finally:
        LA.costs.DENSE_MAX_ELEMENTS = saved[0]
        for table, old in zip(tables, saved[1], strict=True):
            table.update(old)


@contextlib.contextmanager
def counted():
    """The sides ``reduce_small`` factorised while inside, one entry per call."""
    seen, real = [], LA.spectrum.reduce_small
    LA.spectrum.reduce_small = lambda side, *args: seen.append(side) or real(side, *args)
    try:
        yield seen
    finally:
        LA.spectrum.reduce_small = real


def answers(x):
    """Every answer read off the spectrum: the first by the compiled call, the others by the
    general path (``x`` was read)."""
    U, S, Vh = LA.svd(x)
    return {"svdvals": LA.svdvals(x, full=True), "svd": U * S.to(U.dtype)[..., None, :] @ Vh,
            "U": U, "Vh": Vh, "S": S, "rank": LA.matrix_rank(x), "nuc": LA.matrix_norm(x, "nuc"),
            "2": LA.matrix_norm(x, 2), "cond": LA.cond(x), "pinv": LA.pinv(x).to_dense()}


def eye_like(t, k):
    return torch.eye(k, dtype=t.dtype).expand(*t.shape[:-2], k, k)


@SETTINGS
@given(m=st.integers(2, 60), n=st.integers(2, 60), r=st.integers(1, 59), seed=st.integers(0, 2**16),
       batch=st.sampled_from([(), (3,)]), where=st.sampled_from(["left", "right"]),
       flips=st.lists(st.booleans(), min_size=3, max_size=3),
       dtype=st.sampled_from([torch.float64, torch.complex128]))
def test_reduced_answers_are_torchs_and_the_dense_routes(m, n, r, seed, batch, where, flips, dtype):
    """Values, the SVD (reconstruction and orthonormal vectors: signs and phases are LAPACK's),
    rank, norms, cond and pinv, on both sides' reductions, batches on either factor, operands
    read transposed, complex: torch's on the float64 matrix, and the dense route's."""
    r = min(r, m - 1, n - 1)
    if r < 1:
        return
    gen = torch.Generator().manual_seed(seed)
    A, B, C = factors(gen, batch, m, r, n, dtype, where)
    D = A @ B @ C
    flips = [f and not (where == "right" and i == 2 and batch) for i, f in enumerate(flips)]
    with route("reduced"), counted() as seen:
        got = answers(chain((A, B, C), flips))
    assert seen and set(seen) <= {"left", "right"}
    with route("dense"), counted() as dense_seen:
        dense = answers(chain((A, B, C), flips))
    assert not dense_seen
    S = torch.linalg.svdvals(D)
    assert_close(got["svdvals"][..., :r], S[..., :r], rtol=1e-10)
    assert torch.equal(got["svdvals"][..., r:], torch.zeros_like(got["svdvals"][..., r:]))  # exact zeros
    assert_close(got["svd"], D, rtol=1e-10)
    k = got["S"].shape[-1]
    assert_close(got["U"].mH @ got["U"], eye_like(got["U"], k), rtol=1e-10, atol=1e-10)
    assert_close(got["Vh"] @ got["Vh"].mH, eye_like(got["Vh"], k), rtol=1e-10, atol=1e-10)
    assert torch.equal(got["rank"], torch.linalg.matrix_rank(D))
    assert torch.equal(got["rank"], dense["rank"])
    assert_close(got["nuc"], torch.linalg.matrix_norm(D, "nuc"), rtol=1e-10)
    assert_close(got["2"], torch.linalg.matrix_norm(D, 2), rtol=1e-10)
    assert torch.isinf(got["cond"]).all() and torch.isinf(dense["cond"]).all()  # rank r < min(m, n)
    assert_close(got["pinv"], torch.linalg.pinv(D), rtol=1e-7)
    for name in ("svdvals", "svd", "nuc", "2"):  # (pinv's rounding grows with cond: torch's above)
        assert_close(got[name], dense[name], rtol=1e-9)


@pytest.mark.parametrize("m, n, batch, side", [(60, 24, (), "left"), (24, 60, (), "right"),
                                               (48, 40, (2,), "left"), (40, 48, (2,), "right")])
@pytest.mark.parametrize("op", ["svdvals", "svd"])
def test_singular_values_spanning_twelve_decades_stay_accurate(gen, m, n, batch, side, op):
    """X = Q_m diag(s) Q_n^H with s from 1 to 1e-12 (float64), as ``A @ I @ C`` with all of
    ``s`` on the side the route reduces (mixed by a random rotation W, so its columns are not
    graded): that side has condition number 1e12. Every value comes out within a few rounding
    errors of ||X|| (the Householder QR is backward stable, as the dense SVD; a Gram reduction
    squares the condition number past 1/eps and fails or loses the small values), all kept
    (rank r), the matrix rebuilt."""
    r = 12
    s = torch.logspace(0, -12, r, dtype=torch.float64)
    Qm = torch.linalg.qr(randn(gen, *batch, m, r))[0]
    Qn = torch.linalg.qr(randn(gen, n, r))[0]
    W = torch.linalg.qr(randn(gen, r, r))[0]
    if side == "left":  # L = Q_m diag(s) W, R = W^H Q_n^H
        A, C = Qm * s @ W, W.mT @ Qn.mT
    else:  # L = Q_m W, R = W^H diag(s) Q_n^H
        A, C = Qm @ W, W.mT @ (s[:, None] * Qn.mT)
    B = torch.eye(r, dtype=torch.float64)
    with route("reduced"), counted() as seen:
        x = chain((A, B, C))
        S = LA.svdvals(x) if op == "svdvals" else LA.svd(x)[1]
        assert torch.equal(LA.matrix_rank(chain((A, B, C))), torch.full(batch, r))
        U, S2, Vh = LA.svd(chain((A, B, C)))
    assert seen == [side] * 3
    assert S.shape[-1] == r
    assert (S - s).abs().max() < 1e-14
    assert_close(U * S2[..., None, :] @ Vh, A @ B @ C, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_are_decomposed_in_float32(gen, dtype):
    """The sides are formed in the input's dtype and reduced in float32 (the general path's work
    dtype); the answers come back in the input's dtype, close to torch's float64 values of the
    same product and to the dense route's."""
    A, B, C = (t.to(dtype) for t in factors(gen, (2,), 64, 16, 48))
    with counted() as seen:
        S = LA.svdvals(chain((A, B, C)))
        U, S2, Vh = LA.svd(chain((A, B, C)))
    assert seen == ["left", "left"]
    assert S.dtype == dtype and U.dtype == dtype and Vh.dtype == dtype
    want = torch.linalg.svdvals(A.double() @ B.double() @ C.double())[..., :16]
    assert_close(S.double(), want, rtol=3e-2)
    with route("dense"):
        dense = LA.svdvals(chain((A, B, C)))
    assert_close(S.double(), dense.double(), rtol=3e-2)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("op", ["svdvals full", "svd", "rank", "norm 2"])
def test_a_non_finite_member_is_nan_as_on_the_dense_route(gen, bad, op):
    """A member with an inf or NaN entry is answered as the dense route answers it (NaN values;
    a rank raises NonFiniteError naming it); the other members keep their own answers."""
    A, B, C = factors(gen, (3,), 40, 8, 32)
    A[1, 3, 2] = bad
    call = {"svdvals full": lambda x: LA.svdvals(x, full=True), "svd": lambda x: LA.svd(x)[1],
            "rank": LA.matrix_rank, "norm 2": lambda x: LA.matrix_norm(x, 2)}[op]
    if op == "rank":
        for name in ("reduced", "dense"):
            with route(name), pytest.raises(LA.NonFiniteError, match=r"batch members \[\(1,\)\]"):
                call(chain((A, B, C)))
        return
    with route("reduced"):
        got = call(chain((A, B, C)))
    with route("dense"):
        want = call(chain((A, B, C)))
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got.isnan(), want.isnan())
    assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-10)


def test_the_cost_model_picks_the_side_and_the_dense_route_for_the_smallest(gen):
    """The longer side is the one reduced; a product too small to repay a QR call stays dense."""
    for (m, r, n), want in (((64, 32, 64), ["right"]), ((200, 5, 40), ["left"]), ((40, 5, 200), ["right"]),
                            ((16, 8, 16), [])):
        A, B, C = factors(gen, (), m, r, n)
        x = chain((A, B, C))
        assert LA.small.dense_is_cheaper(x, "svdvals")
        with counted() as seen:
            S = LA.svdvals(x)
        assert seen == want, (m, r, n)
        assert_close(S, torch.linalg.svdvals(A @ B @ C)[:r], rtol=1e-10)


def test_compiled_and_general_paths_give_the_same_bits(gen, monkeypatch):
    """A first call (the compiled one) and the general path run the same reduced route."""
    A, B, C = factors(gen, (3,), 50, 10, 70, where="right")
    first = LA.svd(chain((A, B, C)))
    pinv = LA.pinv(chain((A, B, C))).to_dense()
    monkeypatch.setattr(LA.compiled, "_compiled", lambda x, op, options: None)
    with counted() as seen:
        general = LA.svd(chain((A, B, C)))
        general_pinv = LA.pinv(chain((A, B, C))).to_dense()
    assert seen == ["right", "right"]
    for a, b in zip(first, general, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(pinv, general_pinv)


def test_gradients_flow_through_the_reduced_route(gen):
    A, B, C = (t.requires_grad_() for t in factors(gen, (), 48, 6, 40))
    x = chain((A, B, C))
    assert LA.small.small_reduction(x, "svdvals") is not None
    loss = LA.svdvals(x).sum() + LA.matrix_norm(x, 2)
    got = torch.autograd.grad(loss, (A, B, C))
    D = A @ B @ C
    want = torch.autograd.grad(torch.linalg.svdvals(D).sum() + torch.linalg.matrix_norm(D, 2), (A, B, C))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-8)


@pytest.mark.parametrize("where", ["left", "right"])
@pytest.mark.parametrize("op", ["svdvals", "svd"])
def test_explain_costs_the_reduced_route_that_runs(gen, where, op):
    """explain lists one QR (of the reduced side, once when it is shared by the batch), the
    reduced matrix, its SVD, and for svd the rotation back; its FLOPs are the textbook counts
    (Golub & Van Loan, written out here) of exactly those steps."""
    b, m, r, n = 4, 64, 16, 48
    A, B, C = factors(gen, (b,), m, r, n, where=where)
    x = chain((A, B, C))
    assert LA.small.small_reduction(x, op) == "left"  # m > n: the QR of the m x r side
    rows = [row.op for row in lm.explain(x, op).rows]
    assert sum(o.startswith("QR of L") for o in rows) == 1 and "SVD of the reduced matrix" in rows
    # factor splits where forming costs least: beside the batched factor, formed once
    # (R = B @ C, L = A batched: b QRs; or L = A @ B, one QR for the batch)
    forming, qrs = (2 * r * r * n, b) if where == "left" else (2 * m * r * r, 1)
    q = 2 if op == "svd" else 1
    flops = forming + qrs * q * 2 * r * r * (m - r / 3) + b * 2 * n * r * r
    svd = (14 * n * r * r + 8 * r**3 + 2 * m * r * r) if op == "svd" else (4 * n * r * r - 4 / 3 * r**3)
    flops += b * svd
    assert abs(lm.explain(x, op).planned.flops - flops) < len(rows)


@pytest.mark.parametrize("op", ["svdvals full", "svdvals", "svd"])
def test_a_compiled_reduced_call_runs_one_qr_one_svd_and_no_threshold(gen, op):
    """A structure's second fresh product: the side's product, one QR, the reduced matrix, one
    LAPACK SVD and the answer: the values past the rank bound are exact zeros (padded, or left
    out), never thresholded, and nothing is reduced or compared on the device."""
    A, B, C = (t.float() for t in factors(gen, (), 64, 32, 64))
    call = {"svdvals full": lambda x: LA.svdvals(x, full=True), "svdvals": LA.svdvals, "svd": LA.svd}[op]
    call(chain((A, B, C)))
    with TorchCalls() as calls:
        out = call(chain((A, B, C)))
    names = calls.names
    assert names.count("linalg_qr") == 1 and names.count("matmul") == 2 + (op == "svd")
    assert names.count("_linalg_svd") + names.count("linalg_svd") == 1
    assert not {"threshold_", "amax", "gt", "sum", "where", "isnan", "linalg_vector_norm"} & set(names), names
    S = out[1] if op == "svd" else out
    assert S.shape[-1] == (64 if op == "svdvals full" else 32)
    assert torch.equal(S[32:], torch.zeros(S.shape[-1] - 32))


def test_a_batch_sharing_a_tall_outer_leaf_keeps_the_factored_route(gen):
    """Heads ``E @ Q_h @ K_h^T @ E^T`` share ``E`` at both ends: the factored route factorises
    it once for the batch, which the small routes' FLOP counts do not price, so the reduced
    route is not offered (the decision is the dense/factored one); a batch whose shared side
    is unbatched (``A_b @ (B @ C)``) is reduced, its side factorised once."""
    E, Q, K = randn(gen, 96, 32), randn(gen, 12, 32, 4), randn(gen, 12, 32, 4)
    e = lm.lazy(E)
    heads = e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT
    assert LA.small.small_reduction(heads, "svdvals") is None
    assert not LA.small.dense_is_cheaper(heads, "svdvals")
    with counted() as seen:
        S = LA.svdvals(heads)
    assert seen == []
    assert_close(S, torch.linalg.svdvals(E @ Q @ K.mT @ E.mT)[..., :4], rtol=1e-9)
    A, B, C = factors(gen, (4,), 64, 32, 64)
    with counted() as seen, TorchCalls() as calls:
        S = LA.svdvals(chain((A, B, C)))
    assert seen == ["right"] and calls.qr_inputs() == [(64, 32)]  # one QR of (B @ C)^H for the batch
    assert_close(S, torch.linalg.svdvals(A @ B @ C)[..., :32], rtol=1e-10)


@settings(max_examples=15, deadline=None)
@given(batch=st.sampled_from([(2,), (3, 2), (2, 1, 2)]), vocab=st.integers(120, 200),
       d_model=st.integers(6, 20), d_head=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_blocks_of_a_budget_take_the_whole_batchs_route(batch, vocab, d_model, d_head, seed):
    """Heads sharing ``E`` (vocabularies where the factored route wins: the dense route's
    blocks answer other signs already, on main too), run whole and in blocks of one member under
    a memory budget: every block decides its route as the whole batch does (the shared-leaf rule
    reads the structure, not the batch's size), so even the vectors' signs are the same."""
    gen = torch.Generator().manual_seed(seed)
    E = randn(gen, vocab, d_model)
    Q, K = randn(gen, *batch, d_model, d_head), randn(gen, *batch, d_model, d_head)

    def heads():
        e = lm.lazy(E.clone())
        return e @ lm.lazy(Q.clone()) @ lm.lazy(K.clone()).mT @ e.mT

    whole = heads()
    assert not LA.small.dense_is_cheaper(whole, "svd")
    U0, S0, Vh0 = LA.svd(whole)
    x = heads()
    one = x[(0,) * len(batch)][None]
    # one member's route beside what every block holds: the batch's result and E's kept QR
    U, S, Vh = LA.svd(x, memory_budget=LA.peaks._peak(one, "svd") + LA.blocks._beside_blocks(x, "svd"))
    assert_close(S, S0, rtol=1e-12)
    assert_close(U, U0, rtol=1e-9, atol=1e-9)
    assert_close(Vh, Vh0, rtol=1e-9, atol=1e-9)
