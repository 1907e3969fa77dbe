"""The smallest core where work or factors are shared: common factors of the terms of a sum,
a tall leaf shared by a whole batch (replaced by its triangular factor), identical
sub-networks computed once. Every answer against dense torch in float64, with the returned
width checked against the dense rank."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, forced_route, randn


def lazies(gen, **shapes):
    """``{name: (lazy, dense)}`` of seeded float64 tensors."""
    out = {}
    for name, shape in shapes.items():
        t = randn(gen, *shape)
        out[name] = (lm.lazy(t, name=name), t)
    return out


def check_spectrum(X, D, rank):
    """svdvals/svd of ``X`` have exactly ``rank`` entries and agree with dense ``D``."""
    S = LA.svdvals(X)
    assert S.shape == (*D.shape[:-2], rank)
    assert torch.equal(torch.linalg.matrix_rank(D), torch.full(D.shape[:-2], rank))
    assert_close(S, torch.linalg.svdvals(D)[..., :rank], rtol=1e-9)
    U, S2, Vh = LA.svd(X)
    assert U.shape[-1] == rank and Vh.shape[-2] == rank
    assert_close(U @ torch.diag_embed(S2) @ Vh, D, rtol=1e-9)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)


# ---- sums whose terms share factors -------------------------------------------------------
def test_k_composition_written_expanded_has_the_rank_width(gen):
    """E Q K^T E^T + E Q K^T O^T V^T E^T: the terms share E Q K^T ... E^T, so the core is as
    narrow as the factored form E Q (K^T + K^T O^T V^T) E^T (stacking gave twice the rank)."""
    w = lazies(gen, E=(60, 24), Q=(24, 4), K=(24, 4), O=(4, 24), V=(24, 4))
    (E, e), (Q, q), (K, k), (O, o), (V, v) = (w[n] for n in "EQKOV")
    X = E @ Q @ K.T @ E.T + E @ Q @ K.T @ O.T @ V.T @ E.T
    D = e @ q @ k.T @ e.T + e @ q @ k.T @ o.T @ v.T @ e.T
    L, R = X.factor()
    assert L.shape == (60, 4) and R.shape == (4, 60)
    check_spectrum(X, D, 4)


def test_common_factors_keep_each_terms_coefficient(gen):
    """2 A B C - 0.5 s A B D (s a tensor scalar) = A B (2 C - 0.5 s D), exactly."""
    w = lazies(gen, A=(30, 12), B=(12, 3), C=(3, 25), D=(3, 25))
    (A, a), (B, b), (C, c), (Dm, d) = (w[n] for n in "ABCD")
    s = torch.tensor(1.7, dtype=torch.float64)
    X = 2 * (A @ B @ C) - (A @ B @ Dm) * s * 0.5
    dense = 2 * (a @ b @ c) - 0.5 * s * (a @ b @ d)
    check_spectrum(X, dense, 3)
    assert_close(X.to_dense(), dense)


def test_a_term_that_is_the_common_prefix_itself(gen):
    """A B + A B C D: the common prefix is the whole first term, so one view stays inside
    (A (B + B C D)); no identity is formed and the width is the rank."""
    w = lazies(gen, A=(40, 5), B=(5, 9), C=(9, 2), D=(2, 9))
    (A, a), (B, b), (C, c), (Dm, d) = (w[n] for n in "ABCD")
    X = A @ B + A @ B @ C @ Dm
    check_spectrum(X, a @ b + a @ b @ c @ d, 5)


def test_inner_sum_is_factored_again(gen):
    """A (B C + B D) E + A F G E: the outer sum shares A .. E and its middles are stacked;
    the inner sum, used as a factor, is itself factored to B (C + D) (width 2, not 4)."""
    w = lazies(gen, A=(50, 20), B=(20, 2), C=(2, 20), D=(2, 20), F=(20, 1), G=(1, 20),
               E=(20, 45))
    (A, a), (B, b), (C, c), (Dm, d), (F, f), (G, g), (E, e) = (w[n] for n in "ABCDFGE")
    X = A @ (B @ C + B @ Dm) @ E + A @ F @ G @ E
    check_spectrum(X, a @ (b @ c + b @ d) @ e + a @ f @ g @ e, 3)


def test_batched_terms_with_a_broadcast_common_factor(gen):
    """A B C + A B F over a batch of 3 (A and F unbatched): A B (C + F), width 2 per member."""
    w = lazies(gen, A=(35, 10), B=(3, 10, 2), C=(3, 2, 30), F=(2, 30))
    (A, a), (B, b), (C, c), (F, f) = (w[n] for n in "ABCF")
    X = A @ B @ C + A @ B @ F
    check_spectrum(X, a @ b @ c + a @ b @ f, 2)


# ---- a tall leaf shared by the whole batch ------------------------------------------------
def circuit(gen, batch=(3, 4), vocab=120, d_model=20, d_head=3, dtype=torch.float64):
    """E Q_h K_h^T E^T over a batch of heads sharing the tall E: (lazy, dense, E)."""
    E = randn(gen, vocab, d_model, dtype=dtype)
    Q, K = randn(gen, *batch, d_model, d_head, dtype=dtype), randn(gen, *batch, d_model, d_head, dtype=dtype)
    e = lm.lazy(E, name="E")
    return e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT, E @ Q @ K.mT @ E.mT, e


def test_batch_sharing_a_tall_leaf_factorises_it_once(gen, monkeypatch):
    """svdvals of 12 heads: one QR of E (120 x 20), never E @ Q_h per head, and every
    spectral answer equal to dense with width d_head (the factored route, however small)."""
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)
    X, D, e = circuit(gen)
    with TorchCalls() as calls:
        S = LA.svdvals(X)
    assert calls.qr_inputs().count((120, 20)) == 1 and not any(s[-2:] == (120, 3) for s in calls.qr_inputs())
    assert not any(s[-2:] == (120, 3) for s in calls.matmul_shapes)
    assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
    check_spectrum(X, D, 3)
    assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(D))
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-7)
    for ord in ("nuc", 2):
        assert_close(LA.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord), rtol=1e-9)


def test_the_leaf_qr_is_reused_by_other_analyses_until_the_tensor_changes(gen, monkeypatch, factored_route):
    X, D, e = circuit(gen)
    LA.svdvals(X)
    Q2, K2 = randn(gen, 12, 20, 3), randn(gen, 12, 20, 3)
    Y = e @ lm.lazy(Q2) @ lm.lazy(K2).mT @ e.mT  # other heads, same E
    with TorchCalls() as calls:
        S = LA.svdvals(Y)
    assert not any(s[-2] == 120 for s in calls.qr_inputs())
    E = e.tensor
    assert_close(S, torch.linalg.svdvals(E @ Q2 @ K2.mT @ E.mT)[..., :3], rtol=1e-9)
    with torch.no_grad():
        E.mul_(-2.0)  # in place: the cached QR is stale
    Z = e @ lm.lazy(Q2[:1]) @ lm.lazy(K2[:1]).mT @ e.mT
    assert_close(LA.svdvals(Z), torch.linalg.svdvals(E @ Q2[:1] @ K2[:1].mT @ E.mT)[..., :3], rtol=1e-9)
    factored_route.assert_forced(X)


def test_one_head_keeps_the_direct_route_unless_the_qr_is_cached(gen, monkeypatch, factored_route):
    """For a single matrix the QR of E costs more than forming E @ Q: not taken; once the
    QR is on the leaf (from a batched analysis), the single head uses it."""
    X, D, e = circuit(gen, batch=())
    with TorchCalls() as calls:
        S = LA.svdvals(X)
    assert (120, 3) in calls.matmul_shapes and (120, 20) not in calls.qr_inputs()
    assert_close(S, torch.linalg.svdvals(D)[:3], rtol=1e-9)
    Xb = e @ lm.lazy(randn(gen, 12, 20, 3)) @ lm.lazy(randn(gen, 12, 20, 3)).mT @ e.mT
    LA.svdvals(Xb)
    X._cache.clear()
    with TorchCalls() as calls:
        S = LA.svdvals(X)
    assert (120, 3) not in calls.matmul_shapes and (120, 20) not in calls.qr_inputs()
    assert_close(S, torch.linalg.svdvals(D)[:3], rtol=1e-9)
    factored_route.assert_forced(X)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_shared_leaf_at_either_end_only(gen, dtype, monkeypatch, factored_route):
    """Only the right end shared (A_h B_h W^T, W tall) and only the left end (W B_h A_h);
    complex data checks the conjugation of the right end's QR (of conj(W))."""
    W = randn(gen, 100, 15, dtype=dtype)
    A, B = randn(gen, 24, 20, 3, dtype=dtype), randn(gen, 24, 3, 15, dtype=dtype)
    right = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(W).mT
    left = lm.lazy(W.clone()) @ lm.lazy(B.mT) @ lm.lazy(A.mT)  # a leaf of its own: no cached QR
    for X, D in ((right, A @ B @ W.mT), (left, W @ B.mT @ A.mT)):
        with TorchCalls() as calls:
            S = LA.svdvals(X)
        assert calls.qr_inputs().count((100, 15)) == 1
        assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
        U, S, Vh = LA.svd(X)
        assert U.shape[-1] == 3
        assert_close(U @ torch.diag_embed(S).to(dtype) @ Vh, D, rtol=1e-9)
    factored_route.assert_forced(X)


def test_gradients_flow_through_the_shared_qr(gen):
    X, D, e = circuit(gen, batch=(4,))
    E = e.tensor.clone().requires_grad_(True)
    ref = E.detach().clone().requires_grad_(True)
    q, k = randn(gen, 4, 20, 3), randn(gen, 4, 20, 3)
    el = lm.lazy(E)
    LA.svdvals(el @ lm.lazy(q) @ lm.lazy(k).mT @ el.mT).sum().backward()
    torch.linalg.svdvals(ref @ q @ k.mT @ ref.mT)[..., :3].sum().backward()
    assert_close(E.grad, ref.grad, rtol=1e-8)



# ---- a tall leaf shared by part of the batch (all pairs of heads) ------------------------
def pairs(gen, a=4, b=5, d_model=40, mid=25, d_head=3, dtype=torch.float64):
    """``V_i O_i K_j Q_j^T`` for every pair (i, j): each ``V_i`` is shared by the ``b`` later
    heads, each ``Q_j`` by the ``a`` earlier ones: (lazy, dense, Q)."""
    V, O = randn(gen, a, d_model, d_head, dtype=dtype), randn(gen, a, d_head, mid, dtype=dtype)
    K, Q = randn(gen, b, mid, d_head, dtype=dtype), randn(gen, b, d_model, d_head, dtype=dtype)
    X = lm.lazy(V)[:, None] @ lm.lazy(O)[:, None] @ lm.lazy(K) @ lm.lazy(Q).mT
    return X, V[:, None] @ O[:, None] @ K @ Q.mT, Q


def test_a_leaf_shared_by_part_of_the_batch_is_factorised_once_per_own_entry(gen, factored_route):
    """The right end Q_j^T is broadcast over the earlier heads: its b QRs (40 x 3) run once,
    not once per pair, and no pair forms the d_model-wide side; explain lists the QRs torch is
    asked for, with their FLOPs, and the spectrum equals dense."""
    X, D, _ = pairs(gen)
    report = lm.explain(X, "svdvals")
    with TorchCalls() as calls:
        S = LA.svdvals(X)
    qrs = calls.qr_inputs()
    assert (5, 40, 3) in qrs and not any(s[:2] == (4, 5) and s[-2] == 40 for s in qrs)
    assert not any(s[:2] == (4, 5) and 40 in s[-2:] for s in calls.matmul_shapes)
    listed = sorted(tuple(r.inputs[0]) for r in report.rows if r.op.startswith("QR of") and r.flops > 0)
    assert listed == sorted(calls.qr_inputs())
    assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
    check_spectrum(X, D, 3)
    factored_route.assert_forced(X)


@settings(max_examples=25, deadline=None)
@given(a=st.integers(1, 4), b=st.integers(1, 4), d_model=st.integers(4, 30), mid=st.integers(1, 12),
       d_head=st.integers(1, 4), complex_=st.booleans(), seed=st.integers(0, 2**16))
def test_pairs_sharing_a_leaf_agree_with_dense(a, b, d_model, mid, d_head, complex_, seed):
    """Every spectral answer of all-pairs products, whichever end the planner shares, against
    dense float64 (complex128 checks the conjugated right end)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    X, D, _ = pairs(gen, a, b, d_model, mid, d_head, dtype)
    with forced_route("factored", X):  # the factored route, however small
        assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[..., : LA.svdvals(X).shape[-1]], rtol=1e-8)
        U, S, Vh = LA.svd(X)
        assert_close(U @ torch.diag_embed(S).to(dtype) @ Vh, D, rtol=1e-8)
        for ord in ("fro", "nuc", 2):
            assert_close(LA.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord), rtol=1e-8)
        assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(D))



def test_frobenius_norm_of_pairs_sums_the_squares_of_the_core(gen, monkeypatch):
    """Where it costs fewer FLOPs than the Gram network (12 x 12 pairs, d_head 8 of 96), the
    Frobenius norm is the sum of squares of the r x r core that svdvals forms: one QR per
    later head's Q, no d_model-wide matrix per pair, and the norm equal to dense."""
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)  # the factored route, however small
    X, D, _ = pairs(gen, 12, 12, 96, 96, 8)
    assert LA.norms.fro_route(X)[0] == "core squares"
    with TorchCalls() as calls:
        got = LA.matrix_norm(X)
    assert_close(got, torch.linalg.matrix_norm(D), rtol=1e-9)
    assert (12, 96, 8) in calls.qr_inputs()
    assert not any(s[:2] == (12, 12) and 96 in s[-2:] for s in calls.matmul_shapes)
    rows = lm.explain(X, "matrix_norm").rows
    assert rows[-1].op == "sum of squares of the core"


def test_frobenius_core_squares_of_an_infinite_entry_is_not_finite(gen, monkeypatch):
    """The QRs would turn an infinity into NaN silently: the route falls back to the Grams,
    and the norm of a matrix with infinite entries is not finite, as torch's."""
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)  # the factored route, however small
    V, O = randn(gen, 12, 1, 96, 8), randn(gen, 12, 1, 8, 96)
    K, Q = randn(gen, 12, 96, 8), randn(gen, 12, 96, 8)
    V[0, 0, 5, 1] = float("inf")
    X = lm.lazy(V) @ lm.lazy(O) @ lm.lazy(K) @ lm.lazy(Q).mT
    assert LA.norms.fro_route(X)[0] == "core squares"
    got, want = LA.matrix_norm(X), torch.linalg.matrix_norm(V @ O @ K @ Q.mT)
    assert not torch.isfinite(want[0]).any() and not torch.isfinite(got[0]).any()
    assert_close(got[1:], want[1:], rtol=1e-9)


@settings(max_examples=25, deadline=None)
@given(a=st.integers(1, 12), b=st.integers(1, 12), d_model=st.integers(8, 100), mid=st.integers(1, 100),
       d_head=st.integers(1, 16), complex_=st.booleans(), seed=st.integers(0, 2**16))
def test_frobenius_norm_of_pairs_agrees_with_dense_on_every_route(a, b, d_model, mid, d_head, complex_, seed):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    X, D, _ = pairs(gen, a, b, d_model, mid, d_head, dtype)
    with forced_route("factored", X):
        assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)


# ---- identical sub-networks computed once -------------------------------------------------
def test_batched_frobenius_norm_forms_the_gram_of_the_shared_leaf_once(gen, network_steps, factored_route):
    """||E Q_h K_h^T E^T||_F as the closed network tr(X^H X): both E ends give E^T E; it is
    computed once, and explain lists it once with the FLOPs that run (12 heads of width 10:
    shapes where the network costs the fewest FLOPs)."""
    X, D, e = circuit(gen, batch=(12,), d_head=10)
    assert LA.norms.fro_route(X)[0] == "network"
    report = lm.explain(X, "matrix_norm")  # before the norm runs (then the Gram is cached)
    norm = LA.matrix_norm(X)
    assert_close(norm, torch.linalg.matrix_norm(D), rtol=1e-10)
    steps = [shapes for _, shapes, _ in network_steps]
    grams = [s for s in steps if s == ((120, 20), (120, 20)) or s == ((20, 120), (20, 120))]
    assert len(grams) == 1
    reused = [r for r in report.rows if "reused" in r.op]
    assert len(reused) == 1 and reused[0].flops == 0 and reused[0].output == (20, 20)
    assert len(steps) == len(report.rows) - len(reused)
    assert report.flops == LA.norms.fro_route(X)[1].flops
    factored_route.assert_forced(X)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_repeated_steps_across_the_terms_of_a_trace_run_once(gen, dtype, network_steps):
    """tr(W^T W M1 + W^T W M2): each term's network starts with W^T W; the second reuses it.
    Complex: W^T W is still one tensor (no conjugation in a trace)."""
    W = randn(gen, 200, 10, dtype=dtype)
    M1, M2 = randn(gen, 10, 10, dtype=dtype), randn(gen, 10, 10, dtype=dtype)
    w = lm.lazy(W)
    X = w.mT @ w @ lm.lazy(M1) + w.mT @ w @ lm.lazy(M2)
    tr = LA.trace(X)
    assert_close(tr, torch.trace(W.mT @ W @ (M1 + M2)), rtol=1e-10)
    steps = [shapes for _, shapes, _ in network_steps]
    assert sum(1 for s in steps if 200 in s[0]) == 1
    rows = [r for r in lm.explain(X, "trace").rows if not r.op.startswith("sum + ")]  # the networks' steps
    assert sum(1 for r in rows if "reused" in r.op) == 1 and len(steps) == len(rows) - 1


def test_complex_gram_trace_is_not_shared_between_a_view_and_its_conjugate(gen):
    """tr(X^H X) with complex X = A B: conj(A)^T A is a Gram, A^T A is not; the answer is
    right and nothing is reused where the tensors differ."""
    A = randn(gen, 40, 5, dtype=torch.complex128)
    B = randn(gen, 5, 40, dtype=torch.complex128)
    X = lm.lazy(A) @ lm.lazy(B)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(A @ B), rtol=1e-10)
    assert_close(LA.matrix_norm(X @ lm.lazy(A)), torch.linalg.matrix_norm(A @ B @ A), rtol=1e-10)


def test_explain_lists_the_one_qr_of_the_shared_leaf_with_the_flops_that_run(gen, factored_route):
    """explain('svdvals') of the batched circuit: one QR of E (the right end reuses it), the
    per-member QRs on the reduced (d_model x d_head) factors; the QR shapes listed are the
    ones torch is asked for, and once the QR is cached it costs nothing."""
    X, D, e = circuit(gen)
    report = lm.explain(X, "svdvals")
    qr_rows = [r for r in report.rows if r.op.startswith("QR of") and r.flops > 0]
    with TorchCalls() as calls:
        LA.svdvals(X)
    listed = sorted(tuple(r.inputs[0][-2:]) for r in qr_rows)
    assert listed == sorted(s[-2:] for s in calls.qr_inputs()) == [(20, 3), (20, 3), (120, 20)]
    assert [r.flops for r in qr_rows if r.inputs[0] == (120, 20)] == [int(2 * 20**2 * (120 - 20 / 3))]
    after = lm.explain(X, "svdvals")
    assert any(r.op == "QR of E: cached" and r.flops == 0 for r in after.rows)
    assert after.flops < report.flops
    factored_route.assert_forced(X)


def test_explain_reduced_sides_read_the_one_qr_of_the_shared_leaf(gen, monkeypatch):
    """The steps forming L' = R_E @ .. and R' = .. @ R_E^T read the QR step's result (one QR row,
    no second row for the other end), so the picture links them to it."""
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)  # the factored route, however small
    X, _, _ = circuit(gen)
    rows = lm.explain(X, "svdvals").rows
    qr = [i for i, r in enumerate(rows) if r.op.startswith("QR of E")]
    assert len(qr) == 1
    reduced = [r for r in rows if r.op.startswith(("L': ", "R': "))]
    assert len(reduced) == 2 and all(qr[0] in r.after and "R_E" not in r.operands for r in reduced)


def test_a_square_side_is_its_own_factor(gen, monkeypatch, factored_route):
    """After the shared leaves' QRs, each pair's side is an r x r block: it is no taller than
    the core, so it is used as it is (Q = I), never QR-factorised per pair (576 small QRs in
    2-layer gpt2-small composition); explain lists the same QRs, and every answer equals dense."""
    X, D, _ = pairs(gen, a=4, b=5, d_model=40, mid=25, d_head=3)
    for op, run in (("svdvals", LA.svdvals), ("svd", LA.svd)):
        X.clear_cache()
        report = lm.explain(X, op)
        with TorchCalls() as calls:
            run(X)
        qrs = calls.qr_inputs()
        assert not any(s[:2] == (4, 5) for s in qrs), qrs  # no QR per pair
        listed = sorted(tuple(r.inputs[0]) for r in report.rows if r.op.startswith("QR of") and r.flops > 0)
        assert listed == sorted(qrs)
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag_embed(S).to(D.dtype) @ Vh, D, rtol=1e-9)
    assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-10)
    factored_route.assert_forced(X)
