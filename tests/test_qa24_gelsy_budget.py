"""``lm.linalg.lstsq(driver="gelsy")`` on the formed route (R of a Householder QR of ``X``, ``Q``
left implicit): the least budget :class:`BudgetTooSmall` names bounds what torch allocates, also
where ``B`` is much wider than ``X`` (``?ormqr`` writes ``Q^H B`` at ``B``'s full height first),
and so does ``lm.explain``'s peak."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated
from lazymat.linalg.systems import _formed_route
from lazymat.settings import BudgetTooSmall

scipy_lapack = pytest.importorskip("scipy.linalg.lapack")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    m=st.integers(2, 40),
    n=st.integers(1, 6),
    cols=st.integers(1, 60),
    batch=st.sampled_from([(), (2,), (3, 1)]),
    product=st.booleans(),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.complex128, torch.complex64]),
    seed=st.integers(0, 2**16),
)
def test_gelsy_formed_route_least_budget_bounds_the_allocations(m, n, cols, batch, product, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, m, n + 2 if product else n, dtype=dtype, generator=g)
    X = lm.lazy(A) @ lm.lazy(torch.randn(n + 2, n, dtype=dtype, generator=g)) if product else lm.lazy(A)
    assert _formed_route(X)
    B = torch.randn(*batch, m, cols, dtype=dtype, generator=g)
    with pytest.raises(BudgetTooSmall) as err:
        lm.linalg.lstsq(X, B, driver="gelsy", memory_budget=64)
    least = err.value.minimum
    with Allocated() as counted:
        got = lm.linalg.lstsq(X, B, driver="gelsy", memory_budget=least)
    assert counted.peak <= least, (counted.peak, least)
    # explain's peak (the answer not counted) holds too
    planned = lm.explain(X, "lstsq", k=cols, driver="gelsy").planned.peak_bytes
    with Allocated() as unbudgeted:
        again = lm.linalg.lstsq(X, B, driver="gelsy")
    assert unbudgeted.peak - again.solution.untyped_storage().nbytes() <= planned, (unbudgeted.peak, planned)
    # the answer, against LAPACK's gelsy (zeroed pivots) member by member
    D = X.to_dense().reshape(-1, m, n).to(torch.complex128 if dtype.is_complex else torch.float64)
    Bs = B.reshape(-1, m, cols).to(D.dtype)
    fn = scipy_lapack.zgelsy if dtype.is_complex else scipy_lapack.dgelsy
    lwork = (scipy_lapack.zgelsy_lwork if dtype.is_complex else scipy_lapack.dgelsy_lwork)
    rcond = torch.finfo(dtype).eps * max(m, n)
    sol = got.solution.reshape(-1, n, cols)
    for i in range(D.shape[0]):
        work = int(abs(lwork(m, n, cols, rcond)[0]))
        b = torch.cat([Bs[i], Bs[i].new_zeros(max(0, n - m), cols)]).numpy().copy(order="F")
        out = fn(D[i].numpy().copy(order="F"), b, torch.zeros(n, 1, dtype=torch.int32).numpy(), rcond, work)
        ref = torch.from_numpy(out[1][:n].copy())
        assert int(got.rank.reshape(-1)[i]) == int(out[3])
        tol = 1e-8 if dtype in (torch.float64, torch.complex128) else 1e-2
        cond = torch.linalg.cond(D[i]).item()
        scale = max(1.0, ref.abs().max().item()) * max(1.0, cond) ** 2
        assert (sol[i].to(ref.dtype) - ref).abs().max().item() <= tol * scale
