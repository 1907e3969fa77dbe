"""Session 5 QA of the small-matrix dense route of the spectral answers (issue 12 item 4),
both routes, against eager torch on the dense matrix in float64."""

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

SETTINGS = settings(max_examples=60, deadline=None)
ROUTES = ["dense", "factored"]


def _route(name: str):
    """The dense route as the cost model picks it for these small matrices, or the factored
    route forced as the other tests force it."""
    limit = 0 if name == "factored" else LA.DENSE_MAX_ELEMENTS
    return mock.patch.object(LA, "DENSE_MAX_ELEMENTS", limit)


def _orthonormal(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


# ---- singular values near the top of the dtype's range -------------------------------------
# Found: on the dense route a batch member (or, in float64, one matrix) whose singular values
# are all finite but whose ||S||_2 passes the dtype's largest value (float32 values near 1e38)
# made the norm the floor is read from inf: the floor became inf and every value counted as
# zero (matrix_rank 0, svdvals empty) where torch answers the full rank.

@pytest.mark.parametrize("route", ROUTES)
@SETTINGS
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]),
       batch=st.sampled_from([(), (2,), (3,)]), power=st.floats(0.5, 1.0), rank=st.integers(2, 3))
def test_finite_values_whose_norm_overflows_keep_their_rank(route, seed, dtype, batch, power, rank):
    """Singular values from the square root of the dtype's largest value (where sums of
    squares overflow) up to near it; the answers must be torch's on the dense float64 matrix."""
    gen = torch.Generator().manual_seed(seed)
    m, n = 6, 5
    big = 0.9 * torch.finfo(dtype).max ** power
    s = torch.tensor([big] * (rank - 1) + [1e-2 * big], dtype=torch.float64)
    U = torch.stack([_orthonormal(gen, m, rank) for _ in range(batch[0] if batch else 1)])
    U = U.reshape(*batch, m, rank)
    V = _orthonormal(gen, n, rank)
    # |entries| <= s_max (unit rows), so every factor product stays finite in the dtype
    X = lm.lazy(U.to(dtype)) @ lm.lazy(torch.diag(s).to(dtype)) @ lm.lazy(V.mT.to(dtype))
    D = X.to_dense().to(torch.float64)
    with _route(route):
        got_rank = LA.matrix_rank(X, rtol=1e-3)
        got_vals = LA.svdvals(X)
        Uk, Sk, Vhk = LA.svd(X)
    want = torch.linalg.matrix_rank(D, rtol=1e-3)
    assert torch.equal(got_rank.expand_as(want), want)
    assert bool((want == rank).all())
    want_vals = torch.linalg.svdvals(D)[..., :rank]
    torch.testing.assert_close(got_vals.to(torch.float64), want_vals, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(Sk.to(torch.float64), want_vals, rtol=1e-4, atol=0.0)
    rebuilt = (Uk.to(torch.float64) * Sk.to(torch.float64)[..., None, :]) @ Vhk.to(torch.float64)
    torch.testing.assert_close(rebuilt / big, D / big, rtol=0.0, atol=1e-4)


def test_float32_batch_of_values_near_1e38_has_full_rank():
    """The example: diag(3e38, 3e38, 1) twice; each value is finite, ||S||_2 = 4.2e38 is not."""
    A = torch.diag(torch.tensor([3e38, 3e38, 1.0])).expand(2, 3, 3).clone()
    X = lm.lazy(A) * 1.0
    assert torch.equal(torch.linalg.matrix_rank(A), torch.tensor([2, 2]))  # 1 < rtol * 3e38
    assert torch.equal(LA.matrix_rank(X), torch.tensor([2, 2]))
    torch.testing.assert_close(LA.svdvals(X), torch.linalg.svdvals(A)[..., :2])
