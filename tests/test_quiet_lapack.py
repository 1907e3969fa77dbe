"""Non-finite input never reaches LAPACK from a sum: MKL prints "Intel oneMKL ERROR: Parameter 4
was incorrect on entry to SLASCL" (on stdout) for a matrix with a row of infs, and a library
must not write to the user's terminal. The answers stay torch's: NaN for the member with the
non-finite entry, torch's float64 answer on the dense matrix for the others (a rank raises
NonFiniteError naming that member, docs/linear-algebra.md)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import forced_route

ROUTES = ["dense", "factored"]
OPS = {
    "svdvals": torch.linalg.svdvals,
    "matrix_rank": torch.linalg.matrix_rank,
    "nuc": lambda X: torch.linalg.matrix_norm(X, "nuc"),
    "cond": torch.linalg.cond,
}


def _sum(gen, batch, m, n, r, dtype, dense_leaf):
    """``A @ B + C @ D`` (or ``A @ B + E``) with its leaves: rank 2r (full rank when 2r >= n)."""
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
    # the factored route is real only below full rank (a dense leaf is full rank): 2r < n
    n, r = 4, (1 if route == "factored" else 3)
    dense_leaf = dense_leaf and route == "dense"
    A, B, other = _sum(gen, batch, m, n, r, dtype, dense_leaf)
    bad %= batch
    # in a factor: a whole row of the sum non-finite (the input MKL complains about)
    (A if in_factor else other[0])[bad, 1, 0] = value
    X = _build(A, B, other)
    with forced_route(route, X):
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
    got = got[good].double()
    scale = float(want.abs().max())
    if op == "cond":  # below full rank (the factored route's case) the reciprocal, in [0, 1], is well posed
        got, want, scale = 1 / got, 1 / want, 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("route", ROUTES)
def test_the_example_prints_nothing(capfd, route):
    """The example: a batch of sums of products in float32, an inf in one member's left factor."""
    gen = torch.Generator().manual_seed(0)
    A, B, other = _sum(gen, 3, 6, 5, 2 if route == "factored" else 3, torch.float32, dense_leaf=False)
    A[1, 3, 1] = float("inf")
    X = _build(A, B, other)
    dense = A.double() @ B.double() + other[0].double() @ other[1].double()
    wants = {name: fn(dense[[0, 2]]) for name, fn in OPS.items()}  # (outside the forced route)
    with forced_route(route, X):
        for name, fn in OPS.items():
            if name == "matrix_rank":  # no rank for member 1 (NaN singular values)
                _quiet(capfd, lambda fn=fn: fn(X), refused=r"batch members \[\(1,\)\]")
                continue
            got = _quiet(capfd, lambda fn=fn: fn(X))
            want = wants[name]
            assert bool(got[1].isnan().all()), name
            got, scale = got[[0, 2]].double(), float(want.max())
            if name == "cond":  # below full rank the reciprocal, in [0, 1], is well posed
                got, want, scale = 1 / got, 1 / want, 1.0
            torch.testing.assert_close(got, want, rtol=2e-3, atol=2e-3 * scale)
