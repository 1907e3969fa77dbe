"""The lean path of small matrices (issue 12, item 4): the dense route decided once per structure
(``linalg.small._ROUTES``), a whole batch's singular values read back once and thresholded on the host
(``linalg.spectrum._host_kept``), and the cached spectrum of a single product
(``linalg.spectrum._small_spectrum``).

Every answer is compared with eager torch on the dense matrix in float64 (members of a batch one
by one), on the dense route and on the factored one (``DENSE_MAX_ELEMENTS = 0``)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, forced_route

SETTINGS = settings(max_examples=60, deadline=None)


def _ranked_batch(gen, batch, m, n, r, ranks, dtype):
    """``U diag(s) V^T`` per member (``U (..., m, r)``, ``V (n, r)`` orthonormal) whose member
    ``i`` has ``ranks[i]`` singular values in [0.5, 1] and exact zeros after them, as a lazy
    product of three leaves, and its dense float64 twin."""
    count = math.prod(batch)
    U = torch.linalg.qr(torch.randn(count, m, r, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))[0]
    s = 0.5 + 0.5 * torch.rand(count, r, generator=gen, dtype=torch.float64)
    s = s.sort(-1, descending=True).values * (torch.arange(r) < torch.tensor(ranks)[:, None])
    S = torch.diag_embed(s)
    U, S = U.reshape(*batch, m, r), S.reshape(*batch, r, r)
    X = lm.lazy(U.to(dtype)) @ lm.lazy(S.to(dtype)) @ lm.lazy(V.mT.to(dtype))
    return X, (U @ S @ V.mT)


@pytest.fixture(params=["dense", "factored"])
def route(request):
    """The dense or the factored route forced for the test (a recorder: ``route.assert_forced``)."""
    with forced_route(request.param) as ran:
        yield ran


@SETTINGS
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(3,), (2, 2), (1,), (4, 1)]),
       mn=st.sampled_from([(9, 8), (6, 11), (12, 12)]), r=st.integers(2, 5),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.complex128]),
       tol=st.sampled_from([None, ("atol", 0.3), ("rtol", 0.45), ("both", 0.2)]), data=st.data())
def test_members_keeping_different_counts_follow_torch(seed, batch, mn, r, dtype, tol, data):
    """Members of one batch keep different numbers of values (the host's mask, not a common
    count): rank, values, norms, cond and pinv of each member are torch's on its float64 matrix."""
    gen = torch.Generator().manual_seed(seed)
    m, n = mn
    ranks = data.draw(st.lists(st.integers(0, r), min_size=math.prod(batch), max_size=math.prod(batch)))
    X, D = _ranked_batch(gen, batch, m, n, r, ranks, dtype)
    kwargs = {} if tol is None else {"atol": tol[1], "rtol": 0.0} if tol[0] == "atol" else \
        {"rtol": tol[1]} if tol[0] == "rtol" else {"atol": tol[1], "rtol": tol[1]}
    rtol = 1e-10 if dtype != torch.float32 else 2e-5
    want_rank = torch.linalg.matrix_rank(D, **kwargs)
    assert torch.equal(LA.matrix_rank(X, **kwargs), want_rank)
    assert_close(LA.pinv(X, **kwargs).to_dense(), torch.linalg.pinv(D, **kwargs).to(dtype), rtol=rtol * 100)
    want_s = torch.linalg.svdvals(D)
    k = int(torch.linalg.matrix_rank(D).max())
    kept = torch.where(torch.arange(min(m, n)) < torch.linalg.matrix_rank(D)[..., None], want_s, 0)
    got = LA.svdvals(X, full=True)
    assert got.shape == want_s.shape and got.dtype == want_s.to(dtype).real.dtype
    assert_close(got, kept, rtol=rtol)
    assert LA.svdvals(X).shape[-1] == k
    for ord in ("nuc", 2, "fro"):
        assert_close(LA.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord), rtol=rtol)
    full = torch.linalg.matrix_rank(D) == min(m, n)
    want_cond = torch.where(full, want_s[..., 0] / want_s[..., -1], math.inf)
    want_cond = torch.where(want_s[..., 0] == 0, math.nan, want_cond)  # 0 / 0
    torch.testing.assert_close(LA.cond(X).double(), want_cond, rtol=rtol * 10, atol=0, equal_nan=True)


@pytest.mark.parametrize("op", ["svdvals", "matrix_rank", "nuc", "cond"])
def test_a_batch_is_thresholded_on_the_host(op):
    """The dense route of a batch reads its values back once and keeps no reduction on the
    device: besides forming the matrix, one LAPACK call and the copy out (a batch of 4 ran 26
    torch calls for svdvals before; eager torch runs 10 with the product)."""
    gen = torch.Generator().manual_seed(0)
    X, D = _ranked_batch(gen, (4,), 12, 10, 4, [4, 4, 4, 4], torch.float32)
    assert LA.small.dense_is_cheaper(X)
    fn = {"svdvals": lambda x: LA.svdvals(x, full=True), "matrix_rank": LA.matrix_rank,
          "nuc": lambda x: LA.matrix_norm(x, "nuc"), "cond": LA.cond}[op]
    with TorchCalls() as calls:
        out = fn(X)
    # the answer's own (cond: the rank bound 4 < 10, so the least value is an exact zero: no amin)
    answer = {"nuc": {"sum": 1}, "cond": {"amax": 1}}.get(op, {})
    for reduction in ("amax", "amin", "max", "sum", "vector_norm", "gt", "maximum", "isnan"):
        assert calls.count(reduction) == answer.get(reduction, 0), (reduction, calls.names)
    want = {"svdvals": lambda d: torch.linalg.svdvals(d)[..., :10], "matrix_rank": torch.linalg.matrix_rank,
            "nuc": lambda d: torch.linalg.matrix_norm(d, "nuc"),
            "cond": lambda d: torch.full((4,), math.inf, dtype=d.dtype)}[op](D)  # rank 4 of 10: S_min = 0
    if op == "matrix_rank":
        assert torch.equal(out, want)
    else:
        assert_close(out, want, rtol=2e-5)


def test_routes_are_decided_per_structure_shape_dtype_and_constants(monkeypatch):
    """A route decided for one structure is not reused for another shape, dtype or setting of
    the constants, and expressions of one structure each get their own answer."""
    ran = []
    real = LA.spectrum.reduced_factors
    for reader in (LA.spectrum, LA.norms):  # the factored route's QRs (of the SVD, of the Frobenius core)
        monkeypatch.setattr(reader, "reduced_factors", lambda *a, **k: ran.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(1)

    def product(m, r, dtype=torch.float64):
        a, b, c = (torch.randn(s, generator=gen, dtype=dtype) for s in ((m, r), (r, r), (r, m)))
        return lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c), a @ b @ c

    for m, r, factored in ((16, 8, False), (600, 16, True), (16, 8, False)):
        X, D = product(m, r)
        ran.clear()
        assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[:r])
        assert bool(ran) == factored
    X32, D32 = product(16, 8, torch.float32)
    assert LA.svdvals(X32).dtype == torch.float32
    X64, D64 = product(16, 8)
    assert_close(LA.svdvals(X64), torch.linalg.svdvals(D64)[:8], rtol=1e-12)  # float64, not float32's
    monkeypatch.setattr(LA.costs, "DENSE_MAX_ELEMENTS", 0)
    ran.clear()
    X, D = product(16, 8)
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[:8])
    assert ran  # the changed constant changed the route


@pytest.mark.parametrize("edit", ["mul_", "copy_", "set_"])
def test_a_cached_small_spectrum_follows_in_place_edits(edit, route):
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 10, 4, generator=gen, dtype=torch.float64), torch.randn(4, 9, generator=gen,
                                                                                   dtype=torch.float64)
    X = lm.lazy(a) @ lm.lazy(b)
    assert_close(LA.svdvals(X), torch.linalg.svdvals(a @ b)[..., :4])
    assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(a @ b))
    new = torch.randn(3, 10, 4, generator=gen, dtype=torch.float64)
    new[1, :, 2:] = 0  # member 1 drops to rank 2
    {"mul_": lambda: a.mul_(new), "copy_": lambda: a.copy_(new), "set_": lambda: a.set_(new)}[edit]()
    want = a @ b
    assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(want))
    assert_close(LA.svdvals(X, full=True)[..., :4], torch.where(
        torch.arange(4) < torch.linalg.matrix_rank(want)[..., None], torch.linalg.svdvals(want)[..., :4], 0))
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag_embed(S) @ Vh, want)
    route.assert_forced(X)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (3,)]), ord=st.sampled_from(["nuc", 2]))
def test_gradients_take_the_general_path_on_both_routes(seed, batch, ord):
    """A leaf that requires grad turns the lean path off: the answer is differentiable and its
    gradient is eager torch's on the float64 product."""
    for factored in (False, True):
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(*batch, 7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
        b = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
        X = lm.lazy(a) @ lm.lazy(b)
        with forced_route("factored" if factored else "dense", X):
            got = LA.matrix_norm(X, ord).sum()
        ga, gb = torch.autograd.grad(got, (a, b))
        want = torch.linalg.matrix_norm(a @ b, ord).sum()
        wa, wb = torch.autograd.grad(want, (a, b))
        assert_close(got.detach(), want.detach())
        assert_close(ga, wa, rtol=1e-8)
        assert_close(gb, wb, rtol=1e-8)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_a_non_finite_member_of_a_batch_is_nan_and_the_others_are_torchs(bad, route):
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(3, 8, 3, generator=gen, dtype=torch.float64), torch.randn(3, 8, generator=gen,
                                                                                  dtype=torch.float64)
    a[1, 2, 0] = bad
    X = lm.lazy(a) @ lm.lazy(b)
    S = LA.svdvals(X, full=True)
    assert bool(S[1, :3].isnan().all())  # its triplets up to the rank bound; zeros pad as for all
    for i in (0, 2):
        assert_close(S[i, :3], torch.linalg.svdvals(a[i] @ b)[:3])
        assert bool((S[i, 3:] == 0).all())
    route.assert_forced(X)


def _matched(got: torch.Tensor, want: torch.Tensor, atol: float) -> bool:
    """Whether each value of ``want`` has its own value of ``got`` within ``atol`` (greedy)."""
    left = got.tolist()
    for w in want.tolist():
        i = min(range(len(left)), key=lambda i: abs(left[i] - w))
        if abs(left[i] - w) > atol:
            return False
        left.pop(i)
    return True


@st.composite
def chains(draw):
    """``(X, dense)``: a square product of 2..5 leaf views (transposes, a repeated leaf, a scale,
    a batch on some factors), and eager torch's float64 product of the same tensors (a
    function, so that it reads them after they are made to require grad)."""
    n = draw(st.integers(2, 5))
    outer = draw(st.integers(1, 7))
    dims = [outer, *(draw(st.integers(1, 7)) for _ in range(n - 1)), outer]
    batch = draw(st.sampled_from([(), (2,), (3, 1)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    made: dict[tuple, tuple] = {}
    X, steps = None, []
    for i in range(n):
        fb = batch if draw(st.booleans()) else ()
        shape = (*fb, dims[i], dims[i + 1])
        if shape in made and draw(st.booleans()):
            lz, step = made[shape]  # the same leaf again
        elif draw(st.booleans()):
            t = torch.randn(*fb, dims[i + 1], dims[i], generator=g, dtype=torch.float64)
            lz, step = lm.lazy(t).mT, (t, True)  # a transposed view
        else:
            t = torch.randn(*shape, generator=g, dtype=torch.float64)
            lz, step = lm.lazy(t), (t, False)
        made[shape] = (lz, step)
        steps.append(step)
        X = lz if X is None else X @ lz
    k = draw(st.sampled_from([1.0, -0.5, torch.tensor(1.5, dtype=torch.float64)]))
    X = X * k

    def dense():
        D = None
        for t, transposed in steps:
            v = t.mT if transposed else t
            D = v if D is None else D @ v
        return D * k

    return X, dense


@settings(max_examples=100, deadline=None)
@given(chains(), st.sampled_from([torch.float64, torch.complex128]))
def test_eigvals_of_a_product_from_its_rotated_chain_follow_torch(case, dtype):
    """eigvals of a single product read the core ``R @ L`` formed from the chain's own views
    rotated (``linalg.eigen._rotated_core``): torch's eigenvalues of the float64 matrix, member by
    member, zeros past the core's width."""
    X, dense = case
    X, D = X.to(dtype=dtype), dense().to(dtype)
    got = LA.eigvals(X, full=True)
    want = torch.linalg.eigvals(D)
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, D.abs().max().item()) ** 2 * D.shape[-1]
    for g, w in zip(got.reshape(-1, got.shape[-1]), want.reshape(-1, want.shape[-1]), strict=True):
        assert _matched(g, w, 1e-7 * scale), (g, w)


@settings(max_examples=30, deadline=None)
@given(chains())
def test_eigvals_through_the_rotated_chain_are_differentiable(case):
    """``sum(lambda^2) = tr(X^2)``: its gradient through lazymat's eigenvalues is eager torch's
    gradient of the trace of the float64 product squared."""
    X, dense = case
    leaves = list({id(leaf.tensor): leaf.tensor for leaf in lm.expr.leaves(X)}.values())
    for t in leaves:
        t.requires_grad_(True)
    got = LA.eigvals(X).pow(2).sum().real.sum()
    D = dense()
    want = (D @ D).diagonal(dim1=-2, dim2=-1).sum()
    assert_close(got.detach(), want.detach(), rtol=1e-7)
    for g, w in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves), strict=True):
        assert_close(g, w, rtol=1e-6)
