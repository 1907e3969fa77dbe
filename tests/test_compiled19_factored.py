"""Compiled calls on the factored route (issue 12, items 1, 2 and 5): the first call of a spectral op
(svd, svdvals, rank, the 2-, -2- and nuclear norms, cond, pinv), of the Frobenius norm or of the
trace (its closed network) on one
matrix whose factored route is cheaper decides that route once; later calls run the sides' GEMMs,
their QRs, the core, one read and the host's cut (``linalg.compiled._compile_factored``,
``_compile_split_fro``). A circuit reads ``W_E`` at both ends: that leaf may repeat.

Every answer is the general path's bit for bit (the compiled calls switched off, the same data),
and torch's on the float64 matrix. A leaf holding a cached QR, a factor the CholeskyQR route
cannot certify, and a non-finite entry each go to the general path."""

import contextlib
import math
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiled_calls import CALLS, answer, equal_answers, outcome, same

import lazymat as lm
from lazymat import linalg as LA
from lazymat.core import outer_reductions
from lazymat.linalg import compiled

from conftest import assert_close, general_path

# the calls the factored route answers (eigvals reads another core), and the trace's network
NAMES = sorted(name for name in CALLS if not name.startswith("eigvals")) + ["trace"]
# the op each call's compiled entry is keyed by
OPS = {"svdvals": "svdvals", "svdvals full": "svdvals", "torch svdvals": "svdvals", "svd": "svd",
       "norm fro": "fro", "norm 2": "norm", "norm -2": "norm", "norm nuc": "norm",
       "norm 2 keepdim": "norm", "cond": "cond", "cond -2": "cond", "trace": "trace"}


def outcome19(name, x):
    return LA.trace(x) if name == "trace" else outcome(name, x)


def answer19(name, x):
    return LA.trace(x) if name == "trace" else answer(name, x)


def equal19(name, a, b):
    return same(a, b) if name == "trace" else equal_answers(name, a, b)


@contextlib.contextmanager
def factored_route():
    """Every matrix past the dense route's size limit: the factored route at test sizes."""
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        yield


def circuit(E, Q, K, scale=None, stored_t=False):
    """``E @ Q @ K^T @ E^T`` from fresh leaves, ``E`` one leaf read at both ends; ``Q`` and ``K``
    stored transposed and read ``.mT`` where ``stored_t``; ``scale`` on the first factor."""
    left = lm.lazy(E) if scale is None else lm.lazy(E) * scale
    q = lm.lazy(Q.mT.contiguous()).mT if stored_t else lm.lazy(Q)
    k = lm.lazy(K) if stored_t else lm.lazy(K.mT.contiguous())
    return left @ q @ (k.mT if stored_t else k) @ lm.lazy(E).mT


def factored_entries(op):
    return [call for key, call in compiled._CALLS.items() if key[0] == op and call.factored]


def qk(seed, vocab, d, h, rank, dtype):
    """Weights of a QK head whose product has rank ``rank`` (``K``'s columns past it zero) and
    singular values spread over a few decades, and the float64 product."""
    gen = torch.Generator().manual_seed(seed)
    E = torch.randn(vocab, d, generator=gen, dtype=torch.float64)
    Q = torch.randn(d, h, generator=gen, dtype=torch.float64) * torch.logspace(0, -3, h, dtype=torch.float64)
    K = torch.randn(d, h, generator=gen, dtype=torch.float64) * (torch.arange(h) < rank)
    return [t.to(dtype) for t in (E, Q, K)], E @ Q @ K.mT @ E.mT


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), vocab=st.integers(20, 90), d=st.integers(6, 16), h=st.integers(1, 5),
       rank=st.integers(0, 5), dtype=st.sampled_from([torch.float64, torch.float32]),
       name=st.sampled_from(NAMES), route=st.sampled_from(["householder", "cholesky"]),
       scale=st.sampled_from([None, 0.125, 3.0]), stored_t=st.booleans())
def test_factored_compiled_answers_are_the_general_paths_and_torchs(seed, vocab, d, h, rank, dtype, name,
                                                                    route, scale, stored_t):
    """A QK circuit (``W_E`` at both ends, maybe scaled, ``W_Q``/``W_K`` maybe stored
    transposed) on the factored route by either QR route: the first call and a second one from a
    fresh expression (the stored call) answer as the general path, bit for bit, and as torch on
    the float64 matrix."""
    h = min(h, d)
    rank = min(rank, h)
    (E, Q, K), D = qk(seed, vocab, d, h, rank, dtype)
    D = D if scale is None else D * scale
    with factored_route(), lm.config(qr=route):
        compiled._CALLS.clear()
        first = outcome19(name, circuit(E, Q, K, scale, stored_t))
        again = outcome19(name, circuit(E, Q, K, scale, stored_t))
        # (a tall W_E may be factorised once for both sides instead: a route of its own)
        direct = outer_reductions(circuit(E, Q, K, scale, stored_t), name == "svd") == (None, None)
        if name in OPS and (direct or name == "trace"):
            assert factored_entries(OPS[name]), f"{name} did not compile the factored route"
        with general_path():
            general = outcome19(name, circuit(E, Q, K, scale, stored_t))
        equal19(name, first, general)
        equal19(name, again, general)
        got = answer19(name, circuit(E, Q, K, scale, stored_t))
    tol = 1e-9 if dtype == torch.float64 else 3e-4
    S = torch.linalg.svdvals(D)
    k = int((S[0] * 1e-5 < S).sum()) if len(S) and S[0] > 0 else 0
    if name in ("svdvals", "svdvals full", "torch svdvals"):
        want = S[:k] if name == "svdvals" else torch.cat([S[:k], S.new_zeros(len(S) - k)])
        assert_close(got, want, rtol=tol, atol=tol * float(S[0] if len(S) else 1))
    elif name == "svd":
        assert_close(got, D, rtol=tol, atol=tol * float(S[0] if len(S) else 1))
    elif name == "norm fro":
        assert_close(got, torch.linalg.matrix_norm(D), rtol=tol)
    elif name == "trace":  # (entries cancel: within the rounding of the Frobenius norm)
        assert abs(float(got) - float(torch.trace(D))) <= tol * float(torch.linalg.matrix_norm(D)) * 10
    elif name == "rank":
        assert int(got) == k


def test_a_cached_qr_on_a_leaf_goes_to_the_general_path():
    """A QR kept on ``W_E`` (from a batched analysis) changes the general path's route: the
    compiled call steps aside, and the answers are the general path's."""
    (E, Q, K), D = qk(3, 80, 12, 4, 4, torch.float64)
    with factored_route():
        compiled._CALLS.clear()
        LA.svdvals(circuit(E, Q, K))
        assert factored_entries("svdvals")
        WE = lm.lazy(E)
        heads = WE @ lm.lazy(torch.stack([Q, Q])) @ lm.lazy(torch.stack([K, K])).mT @ WE.mT
        LA.svdvals(heads)  # the batch shares W_E: its QR is kept on the leaf
        x = WE @ lm.lazy(Q) @ lm.lazy(K).mT @ WE.mT
        got = LA.svdvals(x)
        with general_path():
            want = LA.svdvals(WE @ lm.lazy(Q) @ lm.lazy(K).mT @ WE.mT)
    same(got, want)
    assert_close(got, torch.linalg.svdvals(D)[:4], rtol=1e-9)


@pytest.mark.parametrize("name", ["svdvals", "svd", "norm 2", "rank"])
def test_an_uncertified_cholesky_qr_is_answered_by_the_general_path(name):
    """A side too ill-conditioned for CholeskyQR2 (condition number 1e7 in float64): the
    compiled call gives up after its one read, and the general path redoes that side."""
    gen = torch.Generator().manual_seed(5)
    E = torch.linalg.qr(torch.randn(120, 8, generator=gen, dtype=torch.float64))[0] * torch.logspace(
        0, -7, 8, dtype=torch.float64)
    Q, K = (torch.randn(8, 8, generator=gen, dtype=torch.float64) for _ in range(2))
    D = E @ Q @ K.mT @ E.mT
    with factored_route(), lm.config(qr="cholesky"):
        got = outcome(name, circuit(E, Q, K))
        with general_path():
            want = outcome(name, circuit(E, Q, K))
    equal_answers(name, got, want)
    if name == "svdvals":
        S = torch.linalg.svdvals(D)
        assert_close(got, S[:len(got)], rtol=1e-6, atol=1e-12 * float(S[0]))


@pytest.mark.parametrize("name", ["svdvals", "svd", "norm fro", "norm 2", "rank"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_entries_are_answered_as_the_general_path(name, bad):
    (E, Q, K), _ = qk(7, 60, 10, 3, 3, torch.float32)
    E[4, 2] = bad
    with factored_route():
        got = outcome(name, circuit(E, Q, K))
        with general_path():
            want = outcome(name, circuit(E, Q, K))
    equal_answers(name, got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("placement", ["auto", "device"])
@pytest.mark.parametrize("name", NAMES)
def test_factored_compiled_answers_on_cuda_are_the_general_paths(name, placement):
    """On a GPU the sides, their CholeskyQR2 and (``small_cores="device"``) the core run on the
    device; under ``"auto"`` the core and its floor are worked out on the host from the sides'
    factors read with the QR evidence: the answers are the general path's, on the device, and
    torch's on the float64 matrix."""
    (E, Q, K), D = qk(11, 400, 24, 6, 6, torch.float32)
    E, Q, K = (t.cuda() for t in (E, Q, K))
    with factored_route(), lm.config(small_cores=placement):
        compiled._CALLS.clear()
        got = outcome19(name, circuit(E, Q, K, 0.125))
        if name in OPS:
            assert factored_entries(OPS[name])
        with general_path():
            want = outcome19(name, circuit(E, Q, K, 0.125))
        equal19(name, got, want)
        value = answer19(name, circuit(E, Q, K, 0.125))
    assert all(t.device.type == "cuda" for t in (got if isinstance(got, tuple) else (got,)))
    if name in ("svdvals", "norm 2", "norm fro", "trace"):
        D = D * 0.125
        want = {"svdvals": torch.linalg.svdvals(D)[:6], "norm 2": torch.linalg.matrix_norm(D, 2),
                "norm fro": torch.linalg.matrix_norm(D), "trace": torch.trace(D)}[name]
        assert_close(value.cpu(), want, rtol=2e-4)


@pytest.mark.parametrize("name", ["trace", "norm fro", "svdvals", "svd"])
def test_a_stored_call_applies_each_calls_own_scale(name):
    """Scales of one placement (below 1 in magnitude, or a 0-dim tensor) share a compiled call:
    each call's answer is its own scale's (the call stored by the first does not keep its scale)."""
    (E, Q, K), D = qk(13, 70, 12, 4, 4, torch.float64)
    with factored_route():
        compiled._CALLS.clear()
        for scale in (0.125, 0.25, -0.5, torch.tensor(0.375, dtype=torch.float64)):
            got = outcome19(name, circuit(E, Q, K, scale))
            with general_path():
                want = outcome19(name, circuit(E, Q, K, scale))
            equal19(name, got, want)
        if name == "trace":
            atol = 1e-9 * float(torch.linalg.matrix_norm(D))
            assert_close(got, torch.trace(D) * 0.375, rtol=1e-9, atol=atol)


def test_factored_calls_hold_no_tensor():
    """The stored calls keep plans and rules, never the leaves' tensors (a circuit's weights
    are freed once the caller drops them)."""
    import gc
    import weakref

    (E, Q, K), _ = qk(17, 60, 10, 3, 3, torch.float64)
    refs = [weakref.ref(t) for t in (E, Q, K)]
    with factored_route():
        compiled._CALLS.clear()
        for name in NAMES:
            outcome19(name, circuit(E, Q, K, 0.5))
        assert {"svd", "fro", "trace"} <= {key[0] for key, call in compiled._CALLS.items() if call.factored}
    del E, Q, K
    gc.collect()
    assert all(r() is None for r in refs)
