"""Non-finite input, one rule (qa14, session 11; docs/linear-algebra.md): the calls answering
floats give NaN for a matrix with an inf or NaN entry; ``matrix_rank``, an integer, raises
``lm.linalg.NonFiniteError`` (a ``torch.linalg.LinAlgError``, as torch raises for NaN, and a
``ValueError``) naming the batch members.

Found: ``matrix_rank`` of a NaN expression returned 0 on every route (dense, factored,
compiled, batches) where ``torch.linalg.matrix_rank`` raises."""

import itertools
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

RANKS = {
    "default": lambda x: LA.matrix_rank(x),
    "atol": lambda x: LA.matrix_rank(x, atol=0.5, rtol=0.0),
    "tol": lambda x: LA.matrix_rank(x, 0.5),
    "tensor atol": lambda x: LA.matrix_rank(x, atol=torch.tensor(0.5, dtype=torch.float64)),
    "hermitian": lambda x: LA.matrix_rank(x, hermitian=True),
    "method": lambda x: x.matrix_rank(),
    "torch": torch.linalg.matrix_rank,
}


def _build(kind, gen, batch, n, r, dtype):
    """A square ``(*batch, n, n)`` expression, its leaves (the first batched) and a float64 dense twin."""
    def t(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    if kind == "leaf":
        leaves = [t(*batch, n, n)]
    elif kind == "sum":
        leaves = [t(*batch, n, r), t(r, n), t(n, r), t(r, n)]
    else:
        leaves = [t(*batch, n, r), t(r, r), t(r, n)]

    def expr(ts, wrap):
        if kind == "leaf":
            return wrap(ts[0])
        if kind == "sum":
            return wrap(ts[0]) @ wrap(ts[1]) + wrap(ts[2]) @ wrap(ts[3])
        return wrap(ts[0]) @ wrap(ts[1]) @ wrap(ts[2])

    wide = torch.complex128 if dtype.is_complex else torch.float64
    return expr(leaves, lm.lazy), leaves, lambda: expr([x.to(wide) for x in leaves], lambda v: v)


@settings(max_examples=60, deadline=None)
@example(seed=1089, kind="product", batch=(2, 2), n=2, r=1, value=None, data=None, how="hermitian",
         second=False, dtype=torch.float32)
@example(seed=27, kind="product", batch=(2, 2), n=2, r=1, value=None, data=None, how="hermitian",
         second=True, dtype=torch.float32)
@given(seed=st.integers(0, 2**16), kind=st.sampled_from(["leaf", "product", "sum"]),
       batch=st.sampled_from([(), (3,), (2, 2)]), n=st.integers(2, 7), r=st.integers(1, 3),
       value=st.sampled_from([math.nan, math.inf, -math.inf, None]), data=st.data(),
       how=st.sampled_from(sorted(RANKS)), second=st.booleans(),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.complex128]))
def test_a_rank_of_non_finite_input_raises_naming_the_members(seed, kind, batch, n, r, value, data, how,
                                                              second, dtype):
    """Property: a rank (any route: a fresh product's compiled call, or a second call's general
    path; tolerances as numbers or tensors; hermitian) raises NonFiniteError naming exactly the
    members with an inf or NaN entry; with none, it is torch's rank of the float64 matrix."""
    gen = torch.Generator().manual_seed(seed)
    x, leaves, dense = _build(kind, gen, batch, n, r, dtype)
    members = list(itertools.product(*map(range, batch)))
    bad = sorted(set(data.draw(st.lists(st.sampled_from(members), max_size=2)))) if value is not None else []
    for member in bad:
        leaves[0][member][data.draw(st.integers(0, n - 1)), 0] = value
    if how == "hermitian":  # symmetric matrices (torch reads one triangle)
        x = x + x.mH
    if second:
        LA.svdvals(x)  # the next call reads the cached spectrum (the general path)
    if bad:
        with pytest.raises(LA.NonFiniteError, match="inf or NaN") as info:
            RANKS[how](x)
        assert isinstance(info.value, torch.linalg.LinAlgError) and isinstance(info.value, ValueError)
        if batch:
            assert f"batch members {bad}" in str(info.value)
        return
    D = dense()
    if how == "hermitian":
        D = D + D.mH
    low, high = _rank_bounds(D, dtype, 0.5 if how in ("atol", "tol", "tensor atol") else None)
    got = RANKS[how](x)
    assert bool(((low <= got) & (got <= high)).all()), (got, low, high)


def _rank_bounds(D: torch.Tensor, dtype: torch.dtype, atol: float | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ranks torch's rule gives the float64 matrix ``D`` (``atol`` with ``rtol=0``, or the
    default ``rtol = eps * max(m, n)`` with the eps of ``dtype``, the dtype the rank is computed
    in) when every singular value within rounding of the tolerance may count either way: those
    above ``tol + band`` count, those above ``tol - band`` may, ``band = 4 n eps ||D||_F``
    (float32 rounding of the matrix and its values, and lazymat's rounding floor, which raises
    the tolerance to ``eps (width + sqrt(m + n)) ||D||_F``, docs/linear-algebra.md). The bounds
    are equal for every member not at the boundary.

    Found (prop14, session 14): a float32 Hermitian sum of a rank-1 product had a value 3.4e-7
    of the largest in float64, above torch's float32 tolerance 2.4e-7 but under lazymat's floor
    (and torch's own float32 rank of the float64 matrix counted it, a float64 eps): rounding
    at the boundary, not a tolerance rule that differs."""
    S = torch.linalg.svdvals(D)
    eps = torch.finfo(dtype).eps
    n = max(D.shape[-2:])
    tol = torch.full_like(S[..., :1], atol) if atol is not None else eps * n * S[..., :1]
    band = 4 * n * eps * torch.linalg.vector_norm(S, dim=-1, keepdim=True)
    surely, maybe = tol + band, tol - band
    return (surely < S).sum(-1), (maybe < S).sum(-1)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_the_float_answers_are_nan_for_the_member_alone(value):
    """The same batch: the float-valued calls answer NaN for the member with the entry and
    torch's values for the others (torch raises for NaN on the CPU: the rule is lazymat's)."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64)
    B = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    A[1, 2, 0] = value
    x = lm.lazy(A) @ lm.lazy(B)
    D = (A @ B)[[0, 2]]
    answers = {
        "svdvals": (LA.svdvals(x, full=True), torch.linalg.svdvals(D)),
        "nuc": (LA.matrix_norm(x, "nuc"), torch.linalg.matrix_norm(D, "nuc")),
        "2": (LA.matrix_norm(x, 2), torch.linalg.matrix_norm(D, 2)),
        "pinv": (LA.pinv(x).to_dense(), torch.linalg.pinv(D)),
        "eigvals": (LA.eigvals(x, full=True), None),
    }
    for name, (got, want) in answers.items():
        assert bool(got[1].isnan().all()), name
        if want is not None:
            torch.testing.assert_close(got[[0, 2]], want, rtol=1e-8, atol=1e-8)
    with pytest.raises(LA.NonFiniteError, match=r"batch members \[\(1,\)\]"):
        LA.matrix_rank(x)
