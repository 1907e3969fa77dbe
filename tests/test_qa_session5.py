"""Session 5 QA of the small-matrix dense route of the spectral answers (issue 12 item 4),
both routes, against eager torch on the dense matrix in float64."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import forced_route

SETTINGS = settings(max_examples=60, deadline=None)
ROUTES = ["dense", "factored"]


def _route(name: str, x=None):
    """The dense or the factored route, forced (:func:`conftest.forced_route`); with ``x``, checked
    to have run for ``x`` on the way out."""
    return forced_route(name, x)


def _orthonormal(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))[0]


# ---- singular values near the top of the dtype's range -------------------------------------
# Found: on the dense route a batch member (or, in float64, one matrix) whose singular values
# are all finite but whose ||S||_2 passes the dtype's largest value (float32 values near 1e38)
# made the norm the floor is read from inf: the floor became inf and every value counted as
# zero (matrix_rank 0, svdvals empty) where torch answers the full rank. The same for a sum:
# its floor read from its terms' Frobenius norms, whose sums of squares overflow from float32
# entries near 1.8e19 (rank 0, ||X||_2 = 0).

@pytest.mark.parametrize("route", ROUTES)
@SETTINGS
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]),
       batch=st.sampled_from([(), (2,), (3,)]), power=st.floats(0.5, 1.0), rank=st.integers(2, 3),
       summed=st.booleans())
def test_finite_values_whose_norm_overflows_keep_their_rank(route, seed, dtype, batch, power, rank, summed):
    """Singular values from the square root of the dtype's largest value (where sums of
    squares overflow) up to near it, of a product or of a sum (a dense leaf plus the last
    triplet's product); the answers must be torch's on the dense float64 matrix."""
    gen = torch.Generator().manual_seed(seed)
    m, n = 6, 5
    big = 0.9 * torch.finfo(dtype).max ** power
    s = torch.tensor([big] * (rank - 1) + [1e-2 * big], dtype=torch.float64)
    U = torch.stack([_orthonormal(gen, m, rank) for _ in range(batch[0] if batch else 1)])
    U = U.reshape(*batch, m, rank)
    V = _orthonormal(gen, n, rank)
    # |entries| <= s_max (unit rows), so every factor product stays finite in the dtype
    X = lm.lazy(U.to(dtype)) @ lm.lazy(torch.diag(s).to(dtype)) @ lm.lazy(V.mT.to(dtype))
    if summed:
        head = (U[..., :-1] * s[:-1]) @ V[:, :-1].mT
        last = lm.lazy(U[..., -1:].to(dtype)) @ lm.lazy((s[-1] * V[:, -1:].mT).to(dtype))
        X = lm.lazy(head.to(dtype)) + last
    D = X.to_dense().to(torch.float64)
    with _route(route, X):
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


# ---- tensors made under torch.inference_mode ------------------------------------------------
# Found: every cached answer (svdvals, matrix_rank, pinv, svd, eigvals, matrix_norm, trace)
# raised "Inference tensors do not track version counter" for leaves made under
# torch.inference_mode (the cache read their version counter), where torch answers; such a
# tensor has no counter, so a write to it cannot be seen and its answers are not cached.

def _answers(X) -> dict:
    return {"svdvals": LA.svdvals(X, full=True), "rank": LA.matrix_rank(X), "pinv": LA.pinv(X).to_dense(),
            "nuc": LA.matrix_norm(X, "nuc"), "fro": LA.matrix_norm(X), "trace": LA.trace(X),
            "eigvals": LA.eigvals(X, full=True).abs().sort(-1).values}


def _torch_answers(D: torch.Tensor) -> dict:
    return {"svdvals": torch.linalg.svdvals(D), "rank": torch.linalg.matrix_rank(D),
            "pinv": torch.linalg.pinv(D), "nuc": torch.linalg.matrix_norm(D, "nuc"),
            "fro": torch.linalg.matrix_norm(D), "trace": D.diagonal(dim1=-2, dim2=-1).sum(-1),
            "eigvals": torch.linalg.eigvals(D).abs().sort(-1).values}


def _agree(got: dict, want: dict) -> None:
    for name, value in want.items():
        if name == "rank":
            assert torch.equal(got[name].expand_as(value), value), name
        else:
            torch.testing.assert_close(got[name], value, rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (2,)]), r=st.integers(1, 5),
       inside=st.booleans())
def test_inference_tensors_answer_and_see_writes(route, seed, batch, r, inside):
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        A = torch.randn(*batch, 5, r, generator=gen, dtype=torch.float64)
        B = torch.randn(r, 5, generator=gen, dtype=torch.float64)
        X = lm.lazy(A) @ lm.lazy(B)
    with _route(route), torch.inference_mode(inside):  # (pinv's answer is the whole matrix)
        _agree(_answers(X), _torch_answers(A @ B))
    with _route(route), torch.inference_mode():
        A.mul_(-3.0)
        A[..., 0, :] = 0.0
        _agree(_answers(X), _torch_answers(A @ B))  # the write is seen, not a cached answer


def test_svdvals_of_an_inference_tensor():
    """The example: svdvals of a product made under inference_mode, asked inside and outside."""
    with torch.inference_mode():
        A, B = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        X = lm.lazy(A) @ lm.lazy(B)
        torch.testing.assert_close(LA.svdvals(X), torch.linalg.svdvals(A @ B)[:3])
    torch.testing.assert_close(LA.matrix_rank(X), torch.linalg.matrix_rank(A @ B))


# ---- cond is differentiable, as torch.linalg.cond ----------------------------------------
# Found: cond read its values from the spectrum computed without autograd, so its answer
# had no gradient (a loss using it silently got none from it; backward alone raised).

@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (2,)]), m=st.integers(1, 5),
       n=st.integers(1, 5), extra=st.integers(0, 2), dtype=st.sampled_from([torch.float64, torch.complex128]),
       p=st.sampled_from([None, -2]))
def test_cond_gradient_is_torchs(route, seed, batch, m, n, extra, dtype, p):
    gen = torch.Generator().manual_seed(seed)
    r = min(m, n) + extra  # full rank: a finite condition number
    A = torch.randn(*batch, m, r, generator=gen, dtype=dtype).requires_grad_()
    B = torch.randn(r, n, generator=gen, dtype=dtype).requires_grad_()
    with _route(route, lm.lazy(A) @ lm.lazy(B)):
        got = LA.cond(lm.lazy(A) @ lm.lazy(B), p)
        assert got.requires_grad
        got_grads = torch.autograd.grad(got.sum(), (A, B))
    want = torch.linalg.cond(A @ B, p)
    want_grads = torch.autograd.grad(want.sum(), (A, B))
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-7, atol=0.0)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("route", ROUTES)
def test_cond_gradcheck(route):
    """The example: gradcheck of cond of a complex product scaled by a real tensor."""
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(2, 5, 3, generator=gen, dtype=torch.complex128, requires_grad=True)
    B = torch.randn(3, 3, generator=gen, dtype=torch.complex128, requires_grad=True)
    c = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    with _route(route, lm.lazy(A) @ lm.lazy(B)):
        assert torch.autograd.gradcheck(lambda A, B, c: LA.cond(c * (lm.lazy(A) @ lm.lazy(B))), (A, B, c))


# ---- answers handed out are the caller's --------------------------------------------------
# Found: eigvals, eig, matrix_norm('fro'), trace handed out the tensor they cached on the
# expression: a caller writing into an answer (v /= v.abs().max(), v.zero_()) changed the
# next call's answer for the same expression (svd/svdvals were fixed so in f06d2ce).

_WRITES = {
    "zero": lambda t: t.zero_(),
    "scale": lambda t: t.mul_(-2.5),
    "first": lambda t: t[(0,) * t.ndim].fill_(7.0) if t.numel() else t,
}


def _cached_answers(X, full_eig: bool) -> dict:
    vals, vecs = LA.eig(X)
    return {"eigvals": LA.eigvals(X, full=full_eig), "eig_vals": vals, "eig_vecs": vecs,
            "fro": LA.matrix_norm(X), "trace": LA.trace(X), "diagonal": LA.diagonal(X)}


@pytest.mark.parametrize("route", ROUTES)
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (3,)]), r=st.integers(1, 6),
       dtype=st.sampled_from([torch.float64, torch.complex128]), write=st.sampled_from(sorted(_WRITES)))
def test_writing_into_an_answer_leaves_the_next_answer_torchs(route, seed, batch, r, dtype, write):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, 5, r, generator=gen, dtype=dtype)
    B = torch.randn(r, 5, generator=gen, dtype=dtype)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    with _route(route, X):
        first = _cached_answers(X, full_eig=False)
        for answer in first.values():
            _WRITES[write](answer)
        again = _cached_answers(X, full_eig=True)
    torch.testing.assert_close(again["fro"], torch.linalg.matrix_norm(D))
    torch.testing.assert_close(again["trace"], D.diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(again["diagonal"], D.diagonal(dim1=-2, dim2=-1))
    moduli = torch.linalg.eigvals(D).abs().sort(-1).values
    torch.testing.assert_close(again["eigvals"].abs().sort(-1).values, moduli, rtol=1e-7, atol=1e-9)
    vals, vecs = again["eig_vals"], again["eig_vecs"]
    torch.testing.assert_close(D.to(vecs.dtype) @ vecs, vecs * vals[..., None, :], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(torch.linalg.vector_norm(vecs, dim=-2), torch.ones_like(vals.real))


def test_zeroed_eigvals_answer_is_not_served_again():
    """The example: eigvals of a leaf, the answer zeroed by the caller, asked again."""
    M = torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    X = lm.lazy(M) * 1.0
    LA.eigvals(X).zero_()
    want = torch.linalg.eigvals(M)
    torch.testing.assert_close(LA.eigvals(X).abs().sort().values, want.abs().sort().values)
