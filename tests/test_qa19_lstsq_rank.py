"""lstsq's ``rank`` (and the solution it truncates to) under each driver's ``rcond`` rule, against
float64 eager torch (qa19, session 14): LAPACK's gelsd takes an ``rcond`` outside ``(0, 1)`` as
eps and keeps every value for NaN; gelss counts values above ``max(rcond S_1, sfmin)``; gelsy
starts at rank 1 and stops where its condition estimate passes ``1 / rcond``; gels ignores
``rcond``. Before, every driver counted values above ``rcond * S_1`` (rank 0 for ``rcond >= 1``).

gelsy (gelsy17, session 17) is compared with LAPACK's own gelsy on the dense ``X`` with its pivot
array zeroed (SciPy's wrapper), not with torch's: torch's reads that array uninitialised
(pytorch/pytorch#187411), so its rank changed between repeated calls on the same matrix (in 109
of 300 random 2..9-sized matrices with values near the cut, five calls each)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

scipy_lapack = pytest.importorskip("scipy.linalg.lapack")

def lapack_gelsy(D: torch.Tensor, B: torch.Tensor, rcond: float | None) -> tuple[int, torch.Tensor]:
    """``(rank, solution)`` of LAPACK's gelsy on one dense ``D (m, n)`` and ``B (m, k)`` with every
    column free (its pivot array zeroed), ``rcond`` None as torch reads it: ``eps * max(m, n)``."""
    m, n = D.shape
    rcond = torch.finfo(torch.float64).eps * max(m, n) if rcond is None else rcond
    complex_ = D.is_complex()
    fn = scipy_lapack.zgelsy if complex_ else scipy_lapack.dgelsy
    work = (scipy_lapack.zgelsy_lwork if complex_ else scipy_lapack.dgelsy_lwork)(m, n, B.shape[1], rcond)[0]
    b = torch.cat([B, B.new_zeros(max(0, n - m), B.shape[1])]).numpy()
    pivots = torch.zeros(n, 1, dtype=torch.int32).numpy()
    out = fn(D.numpy().copy(order="F"), b.copy(order="F"), pivots, rcond, int(abs(work)))
    assert out[-1] == 0
    return int(out[3]), torch.from_numpy(out[1][:n].copy())


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RCONDS = [None, 0.0, -1.0, 1e-4, 0.3, 1.0, 2.0, math.inf, math.nan]


def _spectral(m: int, n: int, big: int, inner: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U S, Vh)``: an ``m x inner @ inner x n`` product with ``S_1 = 10``, its next ``big - 1``
    singular values in ``[0.02, 0.1]`` and the rest of its ``inner`` in ``[1e-9, 1e-8]``: every
    value at least 20x from each cut the rules make (``0.3`` and ``1e-4`` relative, eps, sfmin),
    so gelsy's condition estimate and the SVD count the same values. (Nearer the cut torch 2.13's
    gelsy rank is not reproducible, pytorch/pytorch#187411: uninitialised pivots. With values at
    0.4x the ``0.3`` cut its rank differed from the SVD count in 15% of 400 random 2..9-sized
    matrices, at 0.1x in 0.75%, at 0.05x in none.)"""
    U = torch.linalg.qr(torch.randn(m, inner, generator=g, dtype=torch.float64))[0]
    Vh = torch.linalg.qr(torch.randn(n, inner, generator=g, dtype=torch.float64))[0].mT
    s = torch.cat([0.02 + 0.08 * torch.rand(big, generator=g, dtype=torch.float64),
                   1e-9 + 9e-9 * torch.rand(inner - big, generator=g, dtype=torch.float64)])
    s[0] = 10.0  # the big values lie between the 1e-4 cut (1e-3) and the 0.3 cut (3), 20x from each
    return U * s, Vh


def _decided(driver: str, rcond: float | None, deficient: bool) -> bool:
    """Whether torch's rank is fixed by the values above its rounding noise: where ``X`` has
    structurally zero singular values (``deficient``), torch's dense factorisation sees noise
    near ``eps S_1`` in their place, which an eps-scale or sfmin threshold counts or not by
    chance (lazymat's factored route has exact zeros: documented)."""
    if not deficient or rcond is None or driver == "gels":
        return True
    if driver == "gelsy":
        return True  # rank from 1 (NaN, >= 1), min(m, n) (<= 0), or the big values
    if driver == "gelsd":
        return math.isnan(rcond) or 0 < rcond < 1 and rcond > 1e-10
    return rcond >= 1 or rcond > 1e-10  # gelss


@SETTINGS
@given(m=st.integers(2, 9), n=st.integers(2, 9), big=st.integers(1, 9), narrow=st.booleans(),
       factored=st.booleans(), driver=st.sampled_from(["gels", "gelsd", "gelss"]),
       rcond=st.sampled_from(RCONDS), seed=st.integers(0, 999))
def test_lstsq_rank_and_solution_follow_the_driver_rule(m, n, big, narrow, factored, driver, rcond, seed):
    """Property: the rank field is torch's for every driver and ``rcond`` (the rule's edges: 0,
    negative, >= 1, inf, NaN), on the factored and the dense route; the solution and residuals
    are torch's where the driver's truncation is the SVD's (not gels on a rank-deficient ``X``).
    gelsy: :func:`test_gelsy_rank_and_solution_are_lapacks`."""
    g = torch.Generator().manual_seed(seed)
    full = min(m, n)
    inner = full - 1 if narrow and full > 1 else full
    big = min(big, inner)
    L, R = _spectral(m, n, big, inner, g)
    D = L @ R
    X = lm.lazy(L) @ lm.lazy(R) if factored else lm.lazy(D)
    B = torch.randn(m, 2, generator=g, dtype=torch.float64)
    deficient = inner < full
    if driver == "gels" and deficient:
        return  # torch's QR answer is arbitrary (or raises) for a rank-deficient X
    want = torch.linalg.lstsq(D, B, rcond=rcond, driver=driver)
    got = lm.linalg.lstsq(X, B, rcond=rcond, driver=driver)
    assert got.rank.dtype == want.rank.dtype and got.rank.shape == want.rank.shape
    if _decided(driver, rcond, deficient):
        assert got.rank.tolist() == want.rank.tolist(), (driver, rcond, got.rank, want.rank)
    if not _decided(driver, rcond, deficient) or deficient and bool(want.rank == full):
        return  # torch divided by its noise values
    scale = max(want.solution.abs().max().item(), 1.0)
    torch.testing.assert_close(got.solution, want.solution, rtol=1e-5, atol=1e-5 * scale)
    assert got.residuals.shape == want.residuals.shape
    if want.residuals.numel():
        # both sides carry rounding that grows with X's condition: at cond 1e10 (seed 6: m=6,
        # n=5, gels) torch's residual was 2.1e-5 off the one read in X's exact SVD basis, lazymat's
        # 4.7e-6
        S = torch.linalg.svdvals(D)
        cond = (S[0] / S[-1]).item()
        rtol = max(1e-6, 100 * torch.finfo(torch.float64).eps * cond)
        torch.testing.assert_close(got.residuals, want.residuals, rtol=rtol, atol=1e-9)


@SETTINGS
@given(m=st.integers(1, 9), n=st.integers(1, 9), narrow=st.booleans(), factored=st.booleans(),
       complex_=st.booleans(), rcond=st.sampled_from(RCONDS + [0.1, 0.03]),
       spread=st.floats(-0.6, 0.6), seed=st.integers(0, 9999))
def test_gelsy_rank_and_solution_are_lapacks(m, n, narrow, factored, complex_, rcond, spread, seed):
    """Property: gelsy's rank and solution are LAPACK's gelsy on the dense float64 ``X`` (every
    column free), also with singular values NEAR the cut (within 4x of ``rcond * S_1``, where its
    condition estimate and the SVD count differ: 15% of such matrices before, main 184d31f),
    real and complex, factored and dense, at every ``rcond`` edge. Where ``X`` is structurally
    rank-deficient torch's dense ``X`` holds noise for the exact zeros lazymat's route has: at the
    default ``rcond`` (eps-scale) that noise may count there, and at ``rcond <= 0`` LAPACK
    divides by it (lazymat keeps the minimum-norm answer): there only the rank is compared."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    full = min(m, n)
    inner = full - 1 if narrow and full > 1 else full
    U = torch.linalg.qr(torch.randn(m, inner, generator=g, dtype=dtype))[0]
    Vh = torch.linalg.qr(torch.randn(n, inner, generator=g, dtype=dtype))[0].mH
    cut = 10 * rcond if rcond is not None and 0 < rcond < 1 else 1.0
    s = cut * 10 ** (spread + 0.3 * torch.rand(inner, generator=g, dtype=torch.float64) - 0.15)
    s[0] = 10.0
    L, R = U * s.to(dtype), Vh
    D = L @ R
    X = lm.lazy(L) @ lm.lazy(R) if factored else lm.lazy(D)
    B = torch.randn(m, 2, generator=g, dtype=dtype)
    rank, solution = lapack_gelsy(D, B, rcond)
    got = lm.linalg.lstsq(X, B, rcond=rcond, driver="gelsy")
    assert got.rank.dtype == torch.int64 and got.rank.shape == ()
    assert got.residuals.numel() == 0 and got.singular_values.numel() == 0
    deficient = inner < full
    if not (deficient and rcond is None):
        assert got.rank.item() == rank, (rcond, got.rank, rank, s)
    if deficient and (rcond is None or rcond <= 0):
        return
    scale = max(solution.abs().max().item(), 1.0)
    torch.testing.assert_close(got.solution, solution, rtol=1e-7, atol=1e-7 * scale)


def test_lstsq_rank_edges_of_a_batch():
    """A batch mixing a zero member with nonzero ones: the zero member's rank is 0 under every
    rule (gelsy's ``rcond >= 1`` rank 1 and gelsd's NaN ``min(m, n)`` only where ``X != 0``)."""
    g = torch.Generator().manual_seed(3)
    D = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    D[1] = 0
    B = torch.randn(3, 6, 1, generator=g, dtype=torch.float64)
    for driver, rcond in [("gelsy", 1.0), ("gelsy", math.nan), ("gelsy", 0.0), ("gelsd", math.nan),
                          ("gelsd", 2.0), ("gelss", math.nan), ("gelss", 1.0)]:
        want = torch.linalg.lstsq(D, B, rcond=rcond, driver=driver).rank
        assert lm.linalg.lstsq(lm.lazy(D), B, rcond=rcond, driver=driver).rank.tolist() == want.tolist()


def test_lstsq_b_dims_as_torch():
    """``B`` with more dims than ``X`` raised in torch and broadcast here; now both refuse it (a
    ValueError naming both shapes), and batch dims of equal count still broadcast both ways."""
    g = torch.Generator().manual_seed(5)
    D = torch.randn(5, 3, generator=g, dtype=torch.float64)
    B = torch.randn(2, 5, 2, generator=g, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        torch.linalg.lstsq(D, B)
    with pytest.raises(ValueError, match=r"X \(5, 3\) and B \(2, 5, 2\)"):
        lm.linalg.lstsq(lm.lazy(D), B)
    D1 = torch.randn(1, 5, 3, generator=g, dtype=torch.float64)
    for X, Y in [(D1, B), (D1.expand(2, 5, 3).clone(), B[:1])]:
        got, want = lm.linalg.lstsq(lm.lazy(X), Y, driver="gelsd"), torch.linalg.lstsq(X, Y, driver="gelsd")
        torch.testing.assert_close(got.solution, want.solution)
        assert got.rank.shape == want.rank.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_bit_square_calls_run_in_float32(dtype):
    """torch's CPU det/inv/solve/lstsq refuse 16-bit inputs; lazymat answers them in float32 on
    purpose (documented): each answer is the float64 answer of the same (rounded) data, to the
    dtype's precision, in the input's dtype."""
    g = torch.Generator().manual_seed(7)
    A = (torch.randn(4, 4, generator=g) + 4 * torch.eye(4)).to(dtype)
    b = torch.randn(4, 2, generator=g).to(dtype)
    A64, b64 = A.double(), b.double()
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.float16 else {"rtol": 8e-2, "atol": 8e-2}
    X = lm.lazy(A) @ lm.lazy(A)
    D = A64 @ A64
    for ours, theirs in [(lm.linalg.det(X), torch.linalg.det(D)), (lm.linalg.inv(X), torch.linalg.inv(D)),
                         (lm.linalg.solve(X, b), torch.linalg.solve(D, b64)),
                         (lm.linalg.lstsq(X, b).solution, torch.linalg.lstsq(D, b64).solution)]:
        ours = ours.to_dense() if isinstance(ours, lm.Expr) else ours
        assert ours.dtype == dtype
        scale = theirs.abs().max().item()
        torch.testing.assert_close(ours.double() / scale, theirs / scale, **tol)
