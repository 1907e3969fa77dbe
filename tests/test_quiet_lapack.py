"""Non-finite input never reaches LAPACK from a sum: MKL prints "Intel oneMKL ERROR: Parameter 4
was incorrect on entry to SLASCL" (on stdout) for a matrix with a row of infs, and a library
must not write to the user's terminal. The answers stay torch's: NaN for the member with the
non-finite entry, torch's float64 answer on the dense matrix for the others (a rank raises
NonFiniteError naming that member, docs/linear-algebra.md)."""

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

ROUTES = ["dense", "factored"]
OPS = {
    "svdvals": torch.linalg.svdvals,
    "matrix_rank": torch.linalg.matrix_rank,
    "nuc": lambda X: torch.linalg.matrix_norm(X, "nuc"),
    "cond": torch.linalg.cond,
}


def _route(name: str):
    """The dense route the cost model picks for these small matrices, or the factored route."""
    limit = 0 if name == "factored" else LA.costs.DENSE_MAX_ELEMENTS
    return mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", limit)


def _sum(gen, batch, m, n, r, dtype, dense_leaf):
    """``A @ B + C @ D`` (or ``A @ B + E``), full rank, with its leaves: rank 2r >= n."""
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    A, B = rand(batch, m, r), rand(batch, r, n)
    other = [rand(batch, m, n)] if dense_leaf else [rand(batch, m, r), rand(batch, r, n)]
    return A, B, other


def _build(A, B, other):
    second = lm.lazy(other[0]) if len(other) == 1 else lm.lazy(other[0]) @ lm.lazy(other[1])
    return lm.lazy(A) @ lm.lazy(B) + second


def _quiet(capfd, fn, refused: str | None = None):
    """``fn()``, asserting that nothing was written to fd 1 or fd 2 while it ran; with
    ``refused``, that it raised NonFiniteError matching it (a rank of a non-finite member)."""
    capfd.readouterr()
    if refused is None:
        out = fn()
    else:
        with pytest.raises(LA.NonFiniteError, match=refused):
            fn()
        out = None
    written = capfd.readouterr()
    text = written.out + written.err
    assert "MKL" not in text and "LASCL" not in text, text
    return out


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", sorted(OPS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), bad=st.integers(0, 2),
       value=st.sampled_from([float("inf"), -float("inf"), float("nan")]),
       dtype=st.sampled_from([torch.float32, torch.float64]), dense_leaf=st.booleans(),
       m=st.sampled_from([5, 8]), in_factor=st.booleans())
def test_a_non_finite_member_of_a_sum_is_answered_quietly(capfd, route, op, seed, batch, bad, value, dtype,
                                                          dense_leaf, m, in_factor):
    gen = torch.Generator().manual_seed(seed)
    n, r = 4, 3
    A, B, other = _sum(gen, batch, m, n, r, dtype, dense_leaf)
    bad %= batch
    # in a factor: a whole row of the sum non-finite (the input MKL complains about)
    (A if in_factor else other[0])[bad, 1, 0] = value
    X = _build(A, B, other)
    with _route(route):
        if op == "matrix_rank":  # that member has no rank (NaN singular values): the call raises
            _quiet(capfd, lambda: OPS[op](X), refused=rf"batch members \[\({bad},\)\]")
            return
        got = _quiet(capfd, lambda: OPS[op](X))
    dense = (A.double() @ B.double() + (other[0].double() if dense_leaf else
                                        other[0].double() @ other[1].double()))
    good = [i for i in range(batch) if i != bad]
    want = OPS[op](dense[good])
    assert bool(got[bad].isnan().all())
    if not good:
        return
    rtol = 1e-9 if dtype == torch.float64 else 2e-3
    torch.testing.assert_close(got[good].double(), want, rtol=rtol, atol=rtol * float(want.abs().max()))


@pytest.mark.parametrize("route", ROUTES)
def test_the_example_prints_nothing(capfd, route):
    """The example: a batch of sums of products in float32, an inf in one member's left factor."""
    gen = torch.Generator().manual_seed(0)
    A, B, other = _sum(gen, 3, 6, 5, 3, torch.float32, dense_leaf=False)
    A[1, 3, 1] = float("inf")
    X = _build(A, B, other)
    dense = A.double() @ B.double() + other[0].double() @ other[1].double()
    with _route(route):
        for name, fn in OPS.items():
            if name == "matrix_rank":  # no rank for member 1 (NaN singular values)
                _quiet(capfd, lambda fn=fn: fn(X), refused=r"batch members \[\(1,\)\]")
                continue
            got = _quiet(capfd, lambda fn=fn: fn(X))
            want = fn(dense[[0, 2]])
            assert bool(got[1].isnan().all()), name
            scale = float(want.max())
            torch.testing.assert_close(got[[0, 2]].double(), want, rtol=2e-3, atol=2e-3 * scale)
