"""lstsq's gelsy at sizes where its pivoting runs many steps (gelsy18, session 18): the pivot
order against LAPACK's ``dgeqp3``/``zgeqp3`` (SciPy, pivots zeroed), the rank and answer of
batches against LAPACK's gelsy per member on both cores (the SVD's ``S Vh`` of a factored
product, the formed matrix's ``R``), the pivoting stopped at the rank (its truncated answer is
still LAPACK's), and the full-rank certificate that skips the pivoting (it agrees with the
pivoting it skips). References: SciPy's LAPACK on the dense float64 matrix."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qa19_lstsq_rank import lapack_gelsy

import lazymat as lm
from lazymat.linalg import systems

scipy_lapack = pytest.importorskip("scipy.linalg.lapack")
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def near_cut(m: int, n: int, inner: int, rcond: float, spread: float, complex_: bool, g: torch.Generator,
             batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L, R)`` with ``L @ R`` of rank ``inner`` per member, ``S_1 = 10`` and the other values
    within about 4x of the cut ``rcond * S_1`` (``spread``: their log10 offset from it)."""
    dtype = torch.complex128 if complex_ else torch.float64
    U = torch.linalg.qr(torch.randn(batch, m, inner, generator=g, dtype=dtype))[0]
    Vh = torch.linalg.qr(torch.randn(batch, n, inner, generator=g, dtype=dtype))[0].mH
    s = 10 * rcond * 10 ** (spread + 0.3 * torch.rand(batch, inner, generator=g, dtype=torch.float64) - 0.15)
    s[:, 0] = 10.0
    return U * s[:, None, :].to(dtype), Vh


@pytest.mark.parametrize("m,n,complex_", [(30, 20, False), (20, 30, False), (25, 25, True), (40, 12, True)])
def test_pivot_order_is_lapacks_geqp3(m, n, complex_):
    """The columns in the order LAPACK's column-pivoted QR takes them (every column free), on a
    batch of three, with an ``rcond`` that keeps every step (random values: no near ties)."""
    g = torch.Generator().manual_seed(m * n)
    dtype = torch.complex128 if complex_ else torch.float64
    D = torch.randn(3, m, n, generator=g, dtype=dtype)
    order, ranks = systems._gelsy_pivots(D, 1e-300)
    geqp3 = scipy_lapack.zgeqp3 if complex_ else scipy_lapack.dgeqp3
    assert ranks == [min(m, n)] * 3
    for member, got in zip(D, order, strict=True):
        want = geqp3(member.numpy().copy(order="F"))[1] - 1  # (SciPy's wrapper zeroes the pivots)
        assert got.tolist() == want.tolist()


@SETTINGS
@given(m=st.integers(1, 36), n=st.integers(1, 36), narrow=st.booleans(), factored=st.booleans(),
       complex_=st.booleans(), rcond=st.sampled_from([None, 1e-3, 0.03, 0.1, 0.3]),
       spread=st.floats(-0.6, 0.6), batch=st.integers(1, 3), seed=st.integers(0, 9999))
def test_batches_near_the_cut_are_lapacks(m, n, narrow, factored, complex_, rcond, spread, batch, seed):
    """Property: each member's rank and answer are LAPACK's gelsy on it alone, at sizes to 36
    with values near the cut (most members stop pivoting before ``min(m, n)``: their truncated
    answer shows the columns after the rank do not matter), factored (the SVD's core) and
    dense (the formed matrix's ``R``), real and complex. Fails on main 0f500cb, whose gelsy
    counts singular values (ranks differ near the cut)."""
    g = torch.Generator().manual_seed(seed)
    full = min(m, n)
    inner = full - 1 if narrow and full > 1 else full
    L, R = near_cut(m, n, inner, rcond if rcond is not None else 0.1, spread, complex_, g, batch)
    D = L @ R
    X = lm.lazy(L) @ lm.lazy(R) if factored else lm.lazy(D)
    B = torch.randn(batch, m, 2, generator=g, dtype=D.dtype)
    got = lm.linalg.lstsq(X, B, rcond=rcond, driver="gelsy")
    for i in range(batch):
        rank, solution = lapack_gelsy(D[i], B[i], rcond)
        if inner < full and rcond is None:
            continue  # torch's dense X holds noise where the structure has exact zeros (test_qa19)
        assert got.rank[i].item() == rank, (i, got.rank, rank)
        scale = max(solution.abs().max().item(), 1.0)
        torch.testing.assert_close(got.solution[i], solution, rtol=1e-7, atol=1e-7 * scale)


@SETTINGS
@given(m=st.integers(1, 30), n=st.integers(1, 30), factored=st.booleans(), complex_=st.booleans(),
       log_cond=st.floats(0, 15), rcond=st.sampled_from([None, 1e-12, 1e-8, 1e-4]), seed=st.integers(0, 9999))
def test_full_rank_certificate_agrees_with_the_pivoting(m, n, factored, complex_, log_cond, rcond, seed):
    """Property: where the bounds certify rank ``n`` (pivoting skipped), pivoting every member
    (the certificate switched off) finds rank ``n`` too and the same answer; and both ranks
    are LAPACK's. Condition numbers to ``1e15``, across the default and small ``rcond``."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=dtype))[0]
    Vh = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=dtype))[0].mH
    s = torch.logspace(0, -log_cond, k, dtype=torch.float64)
    L, R = U * s.to(dtype), Vh
    X = lm.lazy(L) @ lm.lazy(R) if factored else lm.lazy(L @ R)
    B = torch.randn(m, 2, generator=g, dtype=dtype)
    calls = []
    certify = systems._full_rank_certified

    def counted(*args):
        calls.append(certify(*args))
        return calls[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(systems, "_full_rank_certified", counted)
        fast = lm.linalg.lstsq(X, B, rcond=rcond, driver="gelsy")
        patch.setattr(systems, "_full_rank_certified", lambda core, *args: torch.zeros(
            core.C.shape[:-2], dtype=torch.bool))
        pivoted = lm.linalg.lstsq(X, B, rcond=rcond, driver="gelsy")
    assert fast.rank.item() == pivoted.rank.item() == lapack_gelsy(L @ R, B, rcond)[0]
    if bool(calls[0].all()):
        assert fast.rank.item() == n
        scale = max(pivoted.solution.abs().max().item(), 1.0)
        torch.testing.assert_close(fast.solution, pivoted.solution, rtol=1e-6, atol=1e-6 * scale)


@pytest.mark.parametrize("factored", [False, True])
def test_certificate_is_taken_for_well_conditioned_full_rank(factored):
    """The bounds do certify what they should: a random tall matrix (condition ~10), dense and
    factored, skips the pivoting (its answer is the unique least-squares one, torch's)."""
    g = torch.Generator().manual_seed(0)
    A, F = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(300, 40), (40, 40)])
    B = torch.randn(300, 2, generator=g, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(F) if factored else lm.lazy(A @ F)
    seen, original = [], systems._gelsy_pivots
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(systems, "_gelsy_pivots", lambda *a: seen.append(a) or original(*a))
        got = lm.linalg.lstsq(X, B, driver="gelsy")
    assert not seen and got.rank.item() == 40
    torch.testing.assert_close(got.solution, torch.linalg.lstsq(A @ F, B, driver="gelsd").solution)


def test_nan_member_of_a_dense_batch():
    """A member with a NaN entry is answered NaN with rank 0; the others are LAPACK's."""
    g = torch.Generator().manual_seed(3)
    D = torch.randn(3, 12, 9, generator=g, dtype=torch.float64)
    D[1, 4, 2] = math.nan
    B = torch.randn(3, 12, 2, generator=g, dtype=torch.float64)
    got = lm.linalg.lstsq(lm.lazy(D), B, rcond=0.2, driver="gelsy")
    assert got.rank[1].item() == 0 and got.solution[1].isnan().all()
    for i in (0, 2):
        rank, solution = lapack_gelsy(D[i], B[i], 0.2)
        assert got.rank[i].item() == rank
        torch.testing.assert_close(got.solution[i], solution)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_no_columns(batch):
    """``X`` with no columns (an empty core has no bounds to certify with): solution ``(..., 0,
    k)`` and rank 0, as torch, dense and factored."""
    d = torch.float64
    B = torch.randn(*batch, 5, 2, dtype=d)
    want = torch.linalg.lstsq(torch.zeros(*batch, 5, 0, dtype=d), B, driver="gelsy")
    for X in (lm.lazy(torch.zeros(*batch, 5, 0, dtype=d)),
              lm.lazy(torch.randn(*batch, 5, 2, dtype=d)) @ lm.lazy(torch.randn(2, 0, dtype=d))):
        got = lm.linalg.lstsq(X, B, driver="gelsy")
        assert got.solution.shape == want.solution.shape and got.rank.tolist() == want.rank.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_structurally_deficient_small_product_keeps_its_exact_zeros(dtype):
    """A small product of structural rank 3 (``6x3 @ 3x4``: the size that forms ``X``) is not
    run on its formed ``R``, whose rounding (16-bit: ~1e-3) gelsy would count at the default
    ``rcond``: rank 3, and with those values exactly zero the truncated answer is the
    minimum-norm one (gelsd's). Failed at 514a0d3 (rank 4 in 16 bits)."""
    g = torch.Generator().manual_seed(5)
    A, F, B = (torch.randn(*shape, generator=g).to(dtype) for shape in [(6, 3), (3, 4), (6, 2)])
    X = lm.lazy(A) @ lm.lazy(F)
    got = lm.linalg.lstsq(X, B, driver="gelsy")
    assert got.rank.item() == 3
    want = lm.linalg.lstsq(X, B, driver="gelsd").solution
    tol = 1e-2 if dtype.itemsize == 2 else 1e-5
    torch.testing.assert_close(got.solution.float(), want.float(), rtol=tol, atol=tol)
