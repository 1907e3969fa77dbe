"""Session 6 QA of linalg's edges (issue 12): non-finite batch members, answers that are safe
to write into, cond's gradient at a rank-deficient matrix. Each property runs on both
routes (each forced and, where shapes tell them apart, checked to run: conftest.forced_route)
and compares with eager torch in float64 on the dense matrix."""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import forced_route

ROUTES = ["dense", "factored"]
KINDS = ["product", "leaf", "sum"]


def _route(name: str, x=None):
    """The dense or the factored route, forced (:func:`conftest.forced_route`); with ``x``, checked
    to have run for ``x`` on the way out."""
    return forced_route(name, x)


def _expression(kind: str, gen: torch.Generator, batch: tuple, m: int, n: int, r: int, dtype: torch.dtype):
    """``(lazy X, its leaf tensors)``: a product ``A @ B`` (rank <= r), a dense matrix that
    is its own core (``2 * D``), or a sum ``A @ B + C @ E``."""
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    if kind == "leaf":
        leaves = [rand(*batch, m, n)]
    elif kind == "product":
        leaves = [rand(*batch, m, r), rand(r, n)]
    else:
        leaves = [rand(*batch, m, r), rand(r, n), rand(*batch, m, r), rand(r, n)]
    return _build(leaves), leaves


def _build(leaves: list[torch.Tensor]):
    if len(leaves) == 1:
        return 2.0 * lm.lazy(leaves[0])
    X = lm.lazy(leaves[0]) @ lm.lazy(leaves[1])
    return X if len(leaves) == 2 else X + lm.lazy(leaves[2]) @ lm.lazy(leaves[3])


def _dense(leaves: list[torch.Tensor]) -> torch.Tensor:
    """The matrix in float64 (complex128), from the leaves widened: exact products of them."""
    wide = torch.complex128 if leaves[0].dtype.is_complex else torch.float64
    return _build([t.to(wide) for t in leaves]).to_dense()


# ---- a batch member with non-finite input ------------------------------------------------
# Found: matrix_rank counted a NaN member's NaN singular values as kept (its rank came out
# as the rank bound, up to the full width) where torch answers 0 (an inf entry on the CPU;
# torch raises for a NaN entry there); svdvals(full=True) padded that member with zeros past
# the rank bound where torch answers NaN for all its values. Since session 11 such a member
# has no rank: matrix_rank raises NonFiniteError naming it (as torch raises for NaN).

@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), bad=st.integers(0, 2), r=st.integers(1, 3),
       value=st.sampled_from([math.inf, -math.inf, math.nan]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.complex128]))
def test_a_non_finite_member_has_no_rank_and_nan_values(route, kind, seed, batch, bad, r, value, dtype):
    gen = torch.Generator().manual_seed(seed)
    m, n = 5, 4
    X, leaves = _expression(kind, gen, (batch,), m, n, r, dtype)
    bad %= batch
    leaves[0][bad, 1, 0] = value  # a batched leaf: only that member reads it
    with _route(route, X):
        with pytest.raises(LA.NonFiniteError, match=rf"batch members \[\({bad},\)\]"):
            LA.matrix_rank(X)
        full = LA.svdvals(X, full=True)
        nuc = LA.matrix_norm(X, "nuc")
    good = [i for i in range(batch) if i != bad]
    D = _dense(leaves)[good]
    assert full.shape == (batch, n)
    torch.testing.assert_close(full[good].to(torch.float64), torch.linalg.svdvals(D),
                               rtol=1e-4, atol=1e-4 * float(torch.linalg.svdvals(D).max()) if good else 0.0)
    assert bool(full[bad].isnan().all())
    assert bool(nuc[bad].isnan())


def test_an_inf_entry_gives_torchs_values_and_no_rank():
    """The example: torch answers a member with an inf entry NaN values on the CPU (and rank 0,
    its NaN values compared with a tolerance: lazymat raises, see above)."""
    A = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    B = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64).abs()
    A[1] = A[1].abs()
    A[1, 0, 0] = math.inf  # a row of +inf in the dense matrix: torch answers it
    X = lm.lazy(A) @ lm.lazy(B)
    for route in ROUTES:
        with _route(route, X):
            with pytest.raises(torch.linalg.LinAlgError, match=r"batch members \[\(1,\)\]"):
                LA.matrix_rank(X)
            want = torch.linalg.svdvals(A @ B)
            got = LA.svdvals(X, full=True)
            assert torch.equal(got.isnan(), want.isnan())
            torch.testing.assert_close(got[[0, 2]], want[[0, 2]])


# Found: with gradients recorded, such a member made svdvals, svd, pinv, cond, the nuclear and
# spectral norms, eig and truncate raise LinAlgError (the projected core of the differentiable
# route went to LAPACK with NaN entries) where the same call without gradients answers NaN.

_GRAD_OPS = {
    "svdvals": lambda X: LA.svdvals(X, full=True),
    "svd": lambda X: (lambda U, S, Vh: (U * S[..., None, :]) @ Vh)(*LA.svd(X)),
    "pinv": lambda X: LA.pinv(X).to_dense(),
    "cond": LA.cond,
    "nuc": lambda X: LA.matrix_norm(X, "nuc"),
    "two": lambda X: LA.matrix_norm(X, 2),
    "truncate": lambda X: LA.truncate(X, 1).to_dense(),
}
_TORCH_OPS = {
    "svdvals": torch.linalg.svdvals,
    "svd": lambda D: D,
    "pinv": torch.linalg.pinv,
    "cond": torch.linalg.cond,
    "nuc": lambda D: torch.linalg.matrix_norm(D, "nuc"),
    "two": lambda D: torch.linalg.matrix_norm(D, 2),
    "truncate": lambda D: (lambda U, S, Vh: (U[..., :1] * S[..., None, :1]) @ Vh[..., :1, :])(
        *torch.linalg.svd(D, full_matrices=False)),
}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", sorted(_GRAD_OPS))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(2, 3), bad=st.integers(0, 2),
       kind=st.sampled_from(KINDS), value=st.sampled_from([math.inf, math.nan]))
def test_a_non_finite_member_with_gradients(route, op, seed, batch, bad, kind, value):
    """The answer with gradients recorded: NaN for the member, torch's for the others, and the
    others' gradients torch's (the first leaf's rows of the good members)."""
    gen = torch.Generator().manual_seed(seed)
    X, leaves = _expression(kind, gen, (batch,), 5, 4, 4, torch.float64)  # full rank: cond finite
    bad %= batch
    leaves[0][bad, 1, 0] = value
    for t in leaves:
        t.requires_grad_()
    good = [i for i in range(batch) if i != bad]
    with _route(route, X):
        got = _GRAD_OPS[op](X)
    assert bool(got[bad].isnan().all())
    want = _TORCH_OPS[op](_dense(leaves)[good])
    torch.testing.assert_close(got[good], want, rtol=1e-7, atol=1e-9)
    (grad,) = torch.autograd.grad(got[good].sum(), leaves[0])
    (want_grad,) = torch.autograd.grad(want.sum(), leaves[0])
    scale = float(want_grad[good].abs().max())  # pinv's gradient grows with cond(X)^2
    torch.testing.assert_close(grad[good], want_grad[good], rtol=1e-6, atol=1e-7 * scale)


# ---- every answer is the caller's to write into ------------------------------------------
# Found: pinv's right leaf was a view of the cached U (a write into it changed every later
# svd and pinv of the expression), and eigvals, eig, trace, diagonal and the Frobenius norm
# handed out the one cached tensor on every call (a write into one answer changed the
# answers already handed out).

def _answers(X, square: bool) -> dict:
    """Every tensor the public linalg functions hand out for ``X``."""
    U, S, Vh = LA.svd(X)
    P = LA.pinv(X)
    T = LA.truncate(X, 2)
    out = {"U": U, "S": S, "Vh": Vh, "svdvals": LA.svdvals(X), "svdvals_full": LA.svdvals(X, full=True),
           "rank": LA.matrix_rank(X), "fro": LA.matrix_norm(X), "nuc": LA.matrix_norm(X, "nuc"),
           "two": LA.matrix_norm(X, 2), "minus_two": LA.matrix_norm(X, -2), "one": LA.matrix_norm(X, 1),
           "cond": LA.cond(X), "pinv": P.to_dense(), "trunc_left": T.children[0].tensor,
           "trunc_right": T.children[1].tensor,
           "trace": LA.trace(X), "diagonal": LA.diagonal(X)}
    if square:
        vals, vecs = LA.eig(X)
        out |= {"eigvals": LA.eigvals(X), "eigvals_full": LA.eigvals(X, full=True), "eig_vals": vals,
                "eig_vecs": vecs}
    # pinv's two factors, or the matrix itself when that is no larger
    parts = (P,) if isinstance(P, torch.Tensor) else tuple(leaf.tensor for leaf in P.children)
    out |= {f"pinv_{i}": part for i, part in enumerate(parts)}
    return out


def _check_against_torch(got: dict, D: torch.Tensor) -> None:
    S = torch.linalg.svdvals(D)
    k = got["S"].shape[-1]
    c = D.dtype
    close = {"rtol": 1e-7, "atol": 1e-9}
    torch.testing.assert_close(got["svdvals_full"].double(), S, **close)
    torch.testing.assert_close(got["svdvals"].double(), S[..., :k], **close)
    torch.testing.assert_close(got["S"].double(), S[..., :k], **close)
    rebuilt = (got["U"].to(c) * got["S"].to(c)[..., None, :]) @ got["Vh"].to(c)
    torch.testing.assert_close(rebuilt, D, **close)
    assert torch.equal(got["rank"].expand(D.shape[:-2]), torch.linalg.matrix_rank(D))
    for name, ord in (("fro", "fro"), ("nuc", "nuc"), ("two", 2), ("minus_two", -2), ("one", 1)):
        torch.testing.assert_close(got[name].double(), torch.linalg.matrix_norm(D, ord), **close)
    pinv = torch.linalg.pinv(D)
    torch.testing.assert_close(got["pinv"].to(c), pinv, **close)
    parts = [got[name] for name in sorted(got) if name.startswith("pinv_")]
    torch.testing.assert_close(functools.reduce(torch.matmul, parts).to(c), pinv, **close)
    U, S2, Vh = torch.linalg.svd(D, full_matrices=False)
    best = (U[..., :2] * S2[..., None, :2].to(c)) @ Vh[..., :2, :]
    torch.testing.assert_close((got["trunc_left"] @ got["trunc_right"]).to(c), best, **close)
    torch.testing.assert_close(got["trace"].to(c), D.diagonal(dim1=-2, dim2=-1).sum(-1), **close)
    torch.testing.assert_close(got["diagonal"].to(c), D.diagonal(dim1=-2, dim2=-1), **close)
    if "eigvals" in got:
        want = torch.linalg.eigvals(D).abs().sort(-1).values
        torch.testing.assert_close(got["eigvals_full"].abs().sort(-1).values, want, **close)
        vals, vecs = got["eig_vals"], got["eig_vecs"]
        torch.testing.assert_close(D.to(vecs.dtype) @ vecs, vecs * vals[..., None, :], **close)


def _scribble(t: torch.Tensor) -> None:
    """Write into every entry of ``t`` (a value no answer has)."""
    t.fill_(-123.0) if t.numel() else None


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (2,)]), r=st.integers(1, 3),
       dtype=st.sampled_from([torch.float64, torch.complex128]))
def test_writing_into_any_answer_changes_no_other(route, kind, seed, batch, r, dtype):
    """Answers asked twice, every tensor of the first set written into: the second set, and a
    third asked afterwards, are still torch's."""
    gen = torch.Generator().manual_seed(seed)
    X, leaves = _expression(kind, gen, batch, 5, 5, r, dtype)
    D = _dense(leaves)
    with _route(route):  # (pinv's answer is the whole matrix: no check)
        first = _answers(X, square=True)
        second = _answers(X, square=True)
        for t in first.values():
            _scribble(t)
        _check_against_torch(second, D)
        _check_against_torch(_answers(X, square=True), D)


@pytest.mark.parametrize("route", ROUTES)
def test_writing_into_pinvs_right_leaf_leaves_svd_torchs(route):
    """The example: pinv's right factor written into, then svd and pinv asked again."""
    gen = torch.Generator().manual_seed(4)
    A = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    B = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    with _route(route):  # (pinv's answer is the whole matrix: no check)
        LA.pinv(X).children[1].tensor.zero_()
        U, S, Vh = LA.svd(X)
        torch.testing.assert_close((U * S) @ Vh, A @ B)
        torch.testing.assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(A @ B))


def test_two_traces_are_two_tensors():
    """The example: the trace asked twice, the first answer zeroed; the second is untouched."""
    M = torch.randn(4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    X = lm.lazy(M) * 1.0
    first, second = LA.trace(X), LA.trace(X)
    first.zero_()
    torch.testing.assert_close(second, M.trace())


# ---- cond's gradient at a rank-deficient matrix -------------------------------------------
# lazymat counts singular values below the rounding floor as exactly zero, so its answers are
# torch's for an exactly singular matrix: cond inf with NaN gradients, cond(p=-2) 0 with a
# finite gradient. Found: cond(p=-2) was computed as 1 / cond, whose gradient at inf is NaN.

@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (2,)]), m=st.integers(3, 6),
       n=st.integers(3, 6), dtype=st.sampled_from([torch.float64, torch.complex128]))
def test_cond_gradient_of_a_rank_deficient_product(route, seed, batch, m, n, dtype):
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n) - 1  # rank-deficient: the smallest singular value is exactly 0
    A = torch.randn(*batch, m, r, generator=gen, dtype=dtype).requires_grad_()
    B = torch.randn(r, n, generator=gen, dtype=dtype).requires_grad_()
    with _route(route, lm.lazy(A) @ lm.lazy(B)):
        inverse = LA.cond(lm.lazy(A) @ lm.lazy(B), -2)
        got = torch.autograd.grad(inverse.sum(), (A, B))
        kappa = LA.cond(lm.lazy(A) @ lm.lazy(B))
        nan_grads = torch.autograd.grad(kappa.sum(), (A, B))
    want_inverse = torch.linalg.cond(A @ B, -2)
    want = torch.autograd.grad(want_inverse.sum(), (A, B))
    torch.testing.assert_close(inverse.detach(), want_inverse.detach(), rtol=0.0, atol=1e-12)
    for g, w in zip(got, want, strict=True):  # the smallest value is 0 near X: no gradient from it
        assert bool(g.isfinite().all())
        torch.testing.assert_close(g, w, rtol=0.0, atol=1e-10)
    assert bool(torch.isinf(kappa).all())
    assert all(bool(g.isnan().all()) for g in nan_grads)


def test_cond_gradient_is_torchs_at_an_exactly_singular_matrix():
    """The example against torch on a matrix whose smallest singular value is exactly 0."""
    M = torch.diag(torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)).requires_grad_()
    for p in (None, 2):
        got = torch.autograd.grad(LA.cond(2.0 * lm.lazy(M), p), M)[0]
        want = torch.autograd.grad(torch.linalg.cond(2.0 * M, p), M)[0]
        assert bool(got.isnan().all()) and bool(want.isnan().all())
    got = torch.autograd.grad(LA.cond(2.0 * lm.lazy(M), -2), M)[0]
    want = torch.autograd.grad(torch.linalg.cond(2.0 * M, -2), M)[0]
    # torch's derivative of the last triplet's side at the kink; lazymat's is 0 there
    torch.testing.assert_close(got, want - torch.diag(torch.tensor([0.0, 0.0, 1 / 3.0], dtype=torch.float64)))


# ---- MKL prints nothing for a single term with an inf entry --------------------------------
# Found: a product or a dense matrix (a single term, no floor read before LAPACK) with an
# infinite entry made MKL write "Intel oneMKL ERROR: Parameter 4 was incorrect on entry to
# SLASCL" on stdout for svdvals, matrix_rank, cond and the nuclear and spectral norms.

_QUIET_OPS = {
    "svdvals": lambda X: LA.svdvals(X, full=True),
    "rank": LA.matrix_rank,
    "cond": LA.cond,
    "nuc": lambda X: LA.matrix_norm(X, "nuc"),
    "two": lambda X: LA.matrix_norm(X, 2),
    "pinv": lambda X: LA.pinv(X).to_dense(),
}

_TORCH_QUIET = {
    "svdvals": torch.linalg.svdvals,
    "rank": torch.linalg.matrix_rank,
    "cond": torch.linalg.cond,
    "nuc": lambda D: torch.linalg.matrix_norm(D, "nuc"),
    "two": lambda D: torch.linalg.matrix_norm(D, 2),
    "pinv": torch.linalg.pinv,
}


def _mkl_prints(capfd) -> str:
    """What MKL writes on fd 1/2 for torch's own SVD of a matrix with an inf row."""
    capfd.readouterr()
    D = torch.ones(4, 4)
    D[1] = math.inf
    torch.linalg.svdvals(D)
    written = capfd.readouterr()
    return written.out + written.err


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("op", sorted(_QUIET_OPS))
@pytest.mark.parametrize("kind", ["product", "leaf"])
@pytest.mark.parametrize("batch", [(), (3,)])
def test_an_inf_entry_of_a_single_term_is_answered_quietly(capfd, route, op, kind, batch):
    gen = torch.Generator().manual_seed(7)
    X, leaves = _expression(kind, gen, batch, 5, 4, 4, torch.float32)
    leaves[0].abs_()
    if kind == "product":
        leaves[1].abs_()  # a row of +inf in the matrix (no inf - inf: a NaN is refused quietly)
    row = (*((1,) if batch else ()), 1)
    leaves[0][row] = math.inf
    capfd.readouterr()
    with _route(route):
        if op == "rank":  # no rank for the member with the inf entry (NonFiniteError)
            where = r"batch members \[\(1,\)\]" if batch else "inf or NaN"
            with pytest.raises(LA.NonFiniteError, match=where):
                _QUIET_OPS[op](X)
        else:
            got = _QUIET_OPS[op](X)
    written = capfd.readouterr()
    assert "MKL" not in written.out + written.err and "SLASCL" not in written.out + written.err
    if op == "rank":
        return
    bad = got[1] if batch else got
    assert bool(bad.isnan().all())
    if batch:
        good = [0, 2]
        want = _TORCH_QUIET[op](_dense(leaves)[good])
        torch.testing.assert_close(got[good].to(want.dtype), want, rtol=1e-4, atol=1e-5)
    # MKL's own printer is back: lazymat silences only its own calls
    assert not torch.backends.mkl.is_available() or "SLASCL" in _mkl_prints(capfd)
