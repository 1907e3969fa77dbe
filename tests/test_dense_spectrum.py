"""The small-matrix dense route's lean path: LAPACK runs on the materialised matrix as it is,
non-finite members are handled only when torch raises or the values come back non-finite, one
matrix is thresholded on the host, and what callers get never aliases the cached spectrum.
Every answer is checked against eager torch on the dense float64 (or float32) matrix."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close, forced_route, randn

SETTINGS = settings(max_examples=80, deadline=None)


def _diag_product(gen, s, m=9, n=8, dtype=torch.float64, batch=()):
    """``U diag(s) V^T`` as a lazy product of three leaves (orthonormal ``U``, ``V``; ``U``
    repeated over ``batch``), and its dense twin."""
    r = len(s)
    U = torch.linalg.qr(randn(gen, m, r))[0].to(dtype).expand(*batch, m, r).clone()
    V = torch.linalg.qr(randn(gen, n, r))[0].to(dtype)
    S = torch.diag(torch.as_tensor(s, dtype=dtype))
    return lm.lazy(U) @ lm.lazy(S) @ lm.lazy(V.mT), U @ S @ V.mT


# ---- tolerances given as Python numbers are read in the values' dtype, as torch reads them ----
# Found: a Python float atol/rtol was turned into a float32 tensor before the cast to the
# values' dtype, so on float64 matrices a singular value within float32 rounding of the
# tolerance (here 1e-9 relative) was kept or dropped against torch's decision.

@SETTINGS
@given(seed=st.integers(0, 2**16), j=st.integers(0, 3), above=st.booleans(), relative=st.booleans(),
       batch=st.sampled_from([(), (2,)]))
def test_number_tolerances_next_to_a_singular_value_follow_torch(seed, j, above, relative, batch):
    gen = torch.Generator().manual_seed(seed)
    s = sorted((0.05 + torch.rand(4, generator=gen, dtype=torch.float64)).tolist(), reverse=True)
    X, D = _diag_product(gen, s, batch=batch)
    S = torch.linalg.svdvals(D).reshape(-1, 8)[0]
    tol = S[j].item() * (1 - 1e-9 if above else 1 + 1e-9)  # far above the rounding, below float32's
    kwargs = {"rtol": tol / S[0].item()} if relative else {"atol": tol, "rtol": 0.0}
    want = torch.linalg.matrix_rank(D, **kwargs)
    assert torch.equal(LA.matrix_rank(X, **kwargs), want)
    assert bool((want == (j + 1 if above else j)).all())
    assert_close(LA.pinv(X, **kwargs).to_dense(), torch.linalg.pinv(D, **kwargs), rtol=1e-8)


def test_float64_atol_between_the_float32_neighbours_of_a_value():
    """The example: atol=0.1 and a singular value 0.1 + 5e-10, which float32 cannot tell from
    0.1 (torch keeps it: 0.1000000005 > 0.1 in float64)."""
    gen = torch.Generator().manual_seed(0)
    X, D = _diag_product(gen, [1.0, 0.1 + 5e-10, 0.01])
    assert torch.linalg.matrix_rank(D, atol=0.1, rtol=0.0) == 2
    assert LA.matrix_rank(X, atol=0.1, rtol=0.0) == 2
    assert LA.matrix_rank(X, 0.1) == 2  # the legacy positional tol means the same
    assert LA.pinv(X, atol=0.1, rtol=0.0).to_dense().shape == (8, 9)
    assert_close(LA.pinv(X, atol=0.1, rtol=0.0).to_dense(), torch.linalg.pinv(D, atol=0.1, rtol=0.0),
                 rtol=1e-8)


ZERO_THRESHOLDS = ((0.0, 0.0), (-1.0, 0.0), (None, -1.0))  # torch counts the dense rounding noise


@pytest.mark.parametrize("atol, rtol", [(None, None), *ZERO_THRESHOLDS, (0, 1e-3), (math.inf, None),
                                        (1e-3, None), (None, 0.3), (2, 0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_matrix_and_a_batch_of_it_keep_the_same_values(atol, rtol, dtype):
    """The host threshold (one matrix) and the device one (a batch) are one rule: torch's
    ranks on the dense matrix, except that a zero threshold counts no rounding noise."""
    X, D = _diag_product(torch.Generator().manual_seed(0), [4.0, 1.0, 0.3, 2e-3], dtype=dtype)
    Xb, _ = _diag_product(torch.Generator().manual_seed(0), [4.0, 1.0, 0.3, 2e-3], dtype=dtype, batch=(2,))
    want = torch.linalg.matrix_rank(D, atol=atol, rtol=rtol)
    if (atol, rtol) in ZERO_THRESHOLDS:
        assert want > 4
        want = torch.tensor(4)
    assert torch.equal(LA.matrix_rank(X, atol=atol, rtol=rtol), want)
    assert torch.equal(LA.matrix_rank(Xb, atol=atol, rtol=rtol), want.expand(2))


# ---- non-finite input: torch raises or answers non-finite; only that member is NaN ------------
@SETTINGS
@given(m=st.integers(2, 12), n=st.integers(2, 12), r=st.integers(1, 6), batch=st.sampled_from([(), (3,)]),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]), seed=st.integers(0, 2**16))
def test_a_non_finite_entry_on_the_dense_route(m, n, r, batch, value, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    A = randn(gen, *batch, m, r).to(dtype)
    B = randn(gen, r, n).to(dtype)
    A.view(-1, m, r)[0, 0, 0] = value
    X = lm.lazy(A) @ lm.lazy(B)
    assert LA.small.dense_is_cheaper(X)
    k = min(m, n, r)
    S, nuc, two = LA.svdvals(X), LA.matrix_norm(X, "nuc"), LA.matrix_norm(X, 2)
    U, S2, Vh = LA.svd(X)
    bad = S.reshape(-1, S.shape[-1])[0]
    assert bad.shape[-1] == k and bool(bad.isnan().all())
    assert bool(S2.reshape(-1, S2.shape[-1])[0].isnan().all())
    assert bool(nuc.reshape(-1)[0].isnan()) and bool(two.reshape(-1)[0].isnan())
    if batch:  # the other members are torch's answers on their own matrices
        D = (A @ B)[1:]
        rtol = 1e-10 if dtype == torch.float64 else 1e-4
        assert_close(S[1:], torch.linalg.svdvals(D)[..., :k], rtol=rtol)
        assert_close(nuc[1:], torch.linalg.matrix_norm(D, "nuc"), rtol=rtol)
        assert not bool(U[1:].isnan().any())


def test_finite_input_is_never_scanned_entry_by_entry(gen, monkeypatch):
    """The common case: LAPACK's values are checked (one norm read back), the matrix is not;
    the per-member scan runs only for non-finite input."""
    calls = []
    real = LA.spectrum._nonfinite_members
    monkeypatch.setattr(LA.spectrum, "_nonfinite_members", lambda *t: calls.append(len(t)) or real(*t))
    A, B = randn(gen, 2, 12, 5), randn(gen, 5, 10)
    for X in (lm.lazy(A[0]) @ lm.lazy(B), lm.lazy(A) @ lm.lazy(B)):
        assert LA.small.dense_is_cheaper(X)
        assert_close(LA.svdvals(X), torch.linalg.svdvals(X.to_dense())[..., :5])
        assert_close(LA.svd(X)[1], torch.linalg.svdvals(X.to_dense())[..., :5])
    assert calls == []
    A[1, 3, 2] = float("inf")
    S = LA.svdvals(lm.lazy(A) @ lm.lazy(B))
    assert calls and bool(S[1].isnan().all()) and not bool(S[0].isnan().any())


# ---- answers are the caller's: writing into them leaves the cached spectrum intact -----------
def test_writing_into_an_answer_leaves_later_answers_right(gen):
    X, D = _diag_product(gen, [3.0, 2.0, 1.0])
    want = torch.linalg.svdvals(D)[:3]
    for full in (False, True):
        LA.svdvals(X, full=full).fill_(-7.0)
        for t in LA.svd(X):
            t.fill_(-7.0)
        U, S, Vh = LA.svd(X)
        assert_close(U @ torch.diag(S) @ Vh, D)
        assert_close(LA.svdvals(X), want)
        assert_close(LA.matrix_norm(X, 2), want[0])
        assert_close(LA.matrix_norm(X, "nuc"), want.sum())
        assert_close(torch.linalg.svdvals(X), torch.linalg.svdvals(D).where(torch.arange(8) < 3, 0))


@SETTINGS
@given(dims=st.lists(st.integers(1, 12), min_size=2, max_size=4), batch=st.sampled_from([(), (2,)]),
       dense=st.booleans(), seed=st.integers(0, 2**16))
def test_answers_written_into_never_reach_the_cache(dims, batch, dense, seed):
    """On either route (dense, or factored with QRs), every tensor svd/svdvals hand out can be
    overwritten without changing what the same expression answers next (the route forced and
    checked)."""
    with forced_route("dense" if dense else "factored") as ran:
        X = _write_into_answers(dims, batch, seed)
    ran.assert_forced(X)


def _write_into_answers(dims, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    ts = [randn(gen, *(batch if i == 0 else ()), dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
    X, D = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        X, D = X @ lm.lazy(t), D @ t
    k = min(dims)
    for answer in (*LA.svd(X), LA.svdvals(X), LA.svdvals(X, full=True), torch.linalg.svdvals(X)):
        answer.fill_(-7.0)
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag_embed(S) @ Vh, D, rtol=1e-9)
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[..., :k], rtol=1e-9)
    assert_close(LA.matrix_norm(X, 2), torch.linalg.matrix_norm(D, 2), rtol=1e-9)
    return X
