"""QR routes (lazymat.qr) against float64 torch: Householder and shifted CholeskyQR agree on
orthonormality, residual and singular values, from well conditioned to exactly rank deficient."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA
from lazymat import qr as QR

from conftest import ValueReads, assert_close, randn

DTYPES = [torch.float32, torch.float64, torch.complex64, torch.complex128]


def _real(dtype):
    return torch.empty((), dtype=dtype).real.dtype


def prescribed(gen, m, n, cond, dtype, batch=(), rank=None):
    """``(A, s)``: an ``m x n`` matrix (in ``dtype``) with singular values ``s`` log-spaced
    from 1 to ``1/cond`` (zero past ``rank``), built in float64/complex128."""
    wide = torch.complex128 if dtype.is_complex else torch.float64
    G = randn(gen, *batch, m, n).to(wide)
    if dtype.is_complex:
        G = G + 1j * randn(gen, *batch, m, n)
    U = torch.linalg.qr(G)[0]
    V = torch.linalg.qr(randn(gen, *batch, n, n).to(wide))[0]
    s = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64).expand(*batch, n).clone()
    if rank is not None:
        s[..., rank:] = 0
    return ((U * s.to(wide)[..., None, :]) @ V.mH).to(dtype), s


def check_qr(A, Q, R, with_q=True):
    """A = Q R with Q orthonormal and R upper triangular, to the rounding of A's dtype; R's
    singular values are A's (float64 reference)."""
    u = torch.finfo(_real(A.dtype)).eps
    m, n = A.shape[-2:]
    wide = torch.complex128 if A.is_complex() else torch.float64
    A64, R64 = A.to(wide), R.to(wide)
    assert torch.equal(R, torch.triu(R))
    scale = torch.linalg.matrix_norm(A64).amax().item()
    ref = torch.linalg.svdvals(A64)
    assert (torch.linalg.svdvals(R64) - ref).abs().max() <= 50 * u * math.sqrt(n) * max(scale, 1e-300)
    if with_q:
        Q64 = Q.to(wide)
        eye = torch.eye(n, dtype=wide)
        assert (Q64.mH @ Q64 - eye).abs().max() <= 50 * u * math.sqrt(m)
        assert (A64 - Q64 @ R64).abs().max() <= 50 * u * math.sqrt(m) * max(scale, 1e-300)


def conds(dtype):
    return [1.0, 1e3, 1e6] if _real(dtype) == torch.float32 else [1.0, 1e6, 1e10, 1e14]


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_qr_certifies_ill_conditioned_factors(gen, dtype):
    for cond in conds(dtype):
        A, _ = prescribed(gen, 400, 12, cond, dtype)
        out = QR.cholesky_qr(A, with_q=True)
        assert out is not None, f"CholeskyQR gave up on cond {cond:g} ({dtype})"
        check_qr(A, *out)
        _, R_only = QR.cholesky_qr(A, with_q=False)
        check_qr(A, None, R_only, with_q=False)


@pytest.mark.parametrize("route", ["householder", "cholesky"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_routes_agree_with_torch_on_every_condition(gen, route, dtype):
    with lm.config(qr=route):
        for cond in [*conds(dtype), 1e30]:  # 1e30: exactly singular in any precision
            A, _ = prescribed(gen, 200, 9, cond, dtype, batch=(3,))
            check_qr(A, *QR.qr(A))
            check_qr(A, None, QR.qr(A, mode="r")[1], with_q=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_rank_deficiency_falls_back_to_householder(gen, dtype, monkeypatch):
    A, _ = prescribed(gen, 300, 10, 1.0, dtype, rank=6)
    A[:, 3] = 0  # and an exactly zero column
    calls = []
    householder = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(1) or householder(*a, **k))
    with lm.config(qr="cholesky"):
        Q, R = QR.qr(A)
    check_qr(A, Q, R)
    assert QR.cholesky_qr(A, True) is None and calls == [1]


@pytest.mark.parametrize("shape", [(0, 0), (5, 0), (0, 3), (3, 5), (2, 0, 4), (4, 4)])
def test_empty_wide_and_square_like_torch(gen, shape):
    A = randn(gen, *shape)
    with lm.config(qr="cholesky"):
        Q, R = QR.qr(A)
        Qh, Rh = torch.linalg.qr(A)
        assert Q.shape == Qh.shape and R.shape == Rh.shape
        if A.numel():
            assert_close(Q @ R, A)


def test_non_finite_input_gives_householders_answer(gen):
    A = randn(gen, 50, 4)
    A[7, 2] = float("nan")
    with lm.config(qr="cholesky"):
        R = QR.qr(A, mode="r")[1]
    assert QR.cholesky_qr(A, False) is None
    assert torch.isnan(R).any()


def test_route_setting(gen):
    assert QR.qr_route("cpu") == "householder"  # small factors (measured faster on the CPU)
    assert QR.qr_route("cuda") == "cholesky"
    # the CPU's rule by size (benchmarks/results/cpu-qr-crossover19.txt): Q asked for from 4096
    # rows, R alone up to 8 MiB factors
    tall, short = torch.empty(4096, 64), torch.empty(4095, 64)
    huge = torch.empty(50257, 64)  # 12.3 MiB
    assert QR.qr_route("cpu", tall, "reduced") == QR.qr_route("cpu", tall, "r") == "cholesky"
    assert QR.qr_route("cpu", short, "reduced") == "householder"
    assert QR.qr_route("cpu", huge, "reduced") == "cholesky"
    assert QR.qr_route("cpu", huge, "r") == "householder"
    with lm.config(qr="cholesky"):
        assert QR.qr_route("cpu") == "cholesky"
    with pytest.raises(ValueError, match="'givens'"):
        lm.config(qr="givens")
    with pytest.raises(ValueError, match="'full'"):
        QR.qr(randn(gen, 4, 2), mode="full")


def test_linalg_runs_the_cholesky_route_when_forced(gen, monkeypatch, factored_route):
    """The ill-conditioned product of test_linalg (singular values 1..1e-12) is answered by
    CholeskyQR, not its Householder fallback, and stays exact."""
    calls = []
    householder = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(1) or householder(*a, **k))
    s = torch.logspace(0, -12, 10, dtype=torch.float64)
    Q1 = householder(randn(gen, 300, 10))[0]
    Q2 = householder(randn(gen, 200, 10))[0]
    M = torch.eye(10, dtype=torch.float64) + 0.1 * randn(gen, 10, 10)
    X = lm.lazy(Q1 @ torch.diag(s) @ M) @ lm.lazy(torch.linalg.solve(M, Q2.T))
    with lm.config(qr="cholesky"):
        got = LA.svdvals(X)
        U, S, Vh = LA.svd(X)
    assert calls == []
    assert (got - s).abs().max() < 1e-13
    assert_close(U @ torch.diag(S) @ Vh, (Q1 * s) @ Q2.T, rtol=1e-12)
    factored_route.assert_forced(X)


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 80), n=st.integers(1, 12), log_cond=st.floats(0, 16), batch=st.integers(0, 2),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), deficient=st.booleans())
def test_cholesky_route_matches_torch(m, n, log_cond, batch, dtype, seed, deficient):
    """Whatever the shape and conditioning, the forced Cholesky route answers a valid QR
    (certified CholeskyQR or the Householder fallback)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(n, m)
    A, _ = prescribed(gen, m, n, 10.0**log_cond, dtype, batch=(2,) * batch,
                      rank=n // 2 if deficient else None)
    with lm.config(qr="cholesky"):
        check_qr(A, *QR.qr(A))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_default_route_is_certified_cholesky(gen, dtype):
    for cond in conds(dtype):
        A, _ = prescribed(gen, 5000, 64, cond, dtype)
        A = A.cuda()
        assert QR.qr_route(A.device) == "cholesky"
        out = QR.cholesky_qr(A, with_q=True)
        assert out is not None, f"CholeskyQR gave up on cond {cond:g} ({dtype}) on CUDA"
        Q, R = QR.qr(A)
        check_qr(A.cpu(), Q.cpu(), R.cpu())


@pytest.mark.cuda
def test_cuda_svd_of_a_product_matches_dense(gen):
    s = torch.logspace(0, -12, 10, dtype=torch.float64)
    Q1 = torch.linalg.qr(randn(gen, 3000, 10))[0]
    Q2 = torch.linalg.qr(randn(gen, 2000, 10))[0]
    X = lm.lazy((Q1 * s).cuda()) @ lm.lazy(Q2.T.cuda())
    got = LA.svdvals(X)
    assert got.device.type == "cuda" and (got.cpu() - s).abs().max() < 1e-13


def test_reduced_precision_float32_gemms_keep_householder(gen, monkeypatch):
    """TF32/bfloat16 GEMMs would spoil the Gram matrices: float32 goes to Householder then."""
    calls = []
    householder = torch.linalg.qr
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(a[0].dtype) or householder(*a, **k))
    A = randn(gen, 100, 5)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with lm.config(qr="cholesky"):
            QR.qr(A.float())
            QR.qr(A)  # float64 GEMMs are unaffected
    finally:
        torch.set_float32_matmul_precision(old)
    assert calls == [torch.float32]


@pytest.mark.parametrize("with_q", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_well_conditioned_factor_is_read_back_once(gen, dtype, with_q):
    """CholeskyQR2 of a well-conditioned factor queues both passes and reads the device once
    (the pass-by-pass route read it after every check: 5 times); the QR is exact."""
    A, _ = prescribed(gen, 500, 16, 1e2, dtype, batch=(2,))
    with ValueReads() as reads:
        Q, R = QR.cholesky_qr(A, with_q=with_q)
    assert reads.count == 1
    check_qr(A, Q, R, with_q=with_q)


@settings(max_examples=80, deadline=None)
@given(m=st.integers(1, 80), n=st.integers(1, 12), log_cond=st.floats(0, 16), batch=st.integers(0, 2),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16), with_q=st.booleans(),
       deficient=st.booleans())
def test_one_read_route_is_the_pass_by_pass_route(m, n, log_cond, batch, dtype, seed, with_q, deficient):
    """Where the one-read CholeskyQR2 certifies a factor, its answer is the pass-by-pass route's
    bit for bit (the same operations); it certifies every factor of condition number up to
    1e2, and where it does not, the pass-by-pass route answers (or Householder)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(n, m)
    A, _ = prescribed(gen, m, n, 10.0**log_cond, dtype, batch=(2,) * batch,
                      rank=n // 2 if deficient and n > 1 else None)
    fast = QR._cholesky_qr2(A, with_q)
    slow = QR._shifted_cholesky_qr(A, with_q)
    if log_cond <= 2 and not (deficient and n > 1):
        assert fast is not None, f"not certified: cond 1e{log_cond:.1f}, {m}x{n}, {dtype}"
    if fast is not None:
        assert slow is not None
        for a, b in zip(fast, slow, strict=True):
            assert (a is None and b is None) or torch.equal(a, b)
        assert QR.cholesky_qr(A, with_q) is not None
        check_qr(A, fast[0], fast[1], with_q=with_q)
