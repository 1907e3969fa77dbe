"""Spectral answers off the core against dense torch.linalg in float64."""

import gc
import math
import weakref

import pytest
import torch

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, randn


def product(gen, dims, batch=()):
    ts = [randn(gen, *batch, dims[i], dims[i + 1]) for i in range(len(dims) - 1)]
    X = lm.lazy(ts[0])
    D = ts[0]
    for t in ts[1:]:
        X, D = X @ t, D @ t
    return X, D


CASES = [
    ([30, 4, 25], ()),
    ([12, 7, 3, 9, 15], ()),
    ([20, 8, 2, 8, 20], (3,)),
    ([9, 6, 9], (2, 2)),
    ([16, 5, 4, 6, 3, 8, 11], ()),
    ([5, 9, 7], ()),  # no narrow inner dim: the matrix itself is the core
]


@pytest.mark.parametrize("dims,batch", CASES)
def test_svd_family(gen, dims, batch):
    X, D = product(gen, dims, batch)
    U, S, Vh = LA.svd(X)
    r = min(dims)
    assert S.shape == (*batch, r) and U.shape == (*batch, dims[0], r) and Vh.shape == (*batch, r, dims[-1])
    assert_close(U @ torch.diag_embed(S) @ Vh, D)
    dense_S = torch.linalg.svdvals(D)
    assert_close(S, dense_S[..., :r])
    assert_close(LA.svdvals(X), dense_S[..., :r])
    assert_close(LA.svdvals(X, full=True), dense_S)
    eye = torch.eye(r, dtype=torch.float64).expand(*batch, r, r)
    assert_close(U.mT @ U, eye)
    assert_close(Vh @ Vh.mT, eye)
    scale = torch.linalg.matrix_norm(D, 2).max().item()
    for ord in ["fro", "nuc", 2, -2, 1, -1, math.inf, -math.inf]:
        # ord=-2 of a rank-deficient matrix is exactly 0 here, rounding noise in the dense SVD
        assert_close(LA.matrix_norm(X, ord), torch.linalg.matrix_norm(D, ord), rtol=1e-9,
                     atol=1e-12 * scale if ord == -2 else None)
    assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(D))
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-8)
    if r < min(dims[0], dims[-1]):  # exactly singular: inf here, rounding-noise-sized in dense
        assert torch.isinf(LA.cond(X)).all() and (torch.linalg.cond(D) > 1e12).all()
    else:
        assert_close(LA.cond(X), torch.linalg.cond(D), rtol=1e-6)


@pytest.mark.parametrize("dims,batch", [c for c in CASES if c[0][0] == c[0][-1]])
def test_square_family(gen, dims, batch):
    X, D = product(gen, dims, batch)
    assert_close(LA.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1))
    assert_close(LA.diagonal(X), torch.diagonal(D, dim1=-2, dim2=-1))
    vals = LA.eigvals(X)
    r = min(dims)
    assert vals.dtype == torch.complex128 and vals.shape == (*batch, r)
    dense = torch.linalg.eigvals(D)
    _assert_eig_match(vals, dense, r)
    full = LA.eigvals(X, full=True)
    assert full.shape == (*batch, dims[0]) and torch.all(full[..., r:] == 0)
    vals, vecs = LA.eig(X)
    assert_close(D.to(vecs.dtype) @ vecs, vecs * vals[..., None, :], rtol=1e-9)
    assert_close(torch.linalg.vector_norm(vecs, dim=-2), torch.ones(vals.shape, dtype=torch.float64))


def _assert_eig_match(vals, dense, r):
    order = torch.argsort(dense.abs(), dim=-1, descending=True)
    top = dense.gather(-1, order)[..., :r]
    v, t = vals.reshape(-1, r), top.reshape(-1, r)
    for a, b in zip(v, t, strict=True):
        # same multiset: every lazymat eigenvalue has a dense partner
        dist = (a[:, None] - b[None, :]).abs()
        assert dist.min(-1).values.max() < 1e-9 * b.abs().max()
    assert torch.all(vals.abs()[..., :-1] >= vals.abs()[..., 1:])


def test_complex_eigenvalues_of_non_symmetric_product(gen):
    X, D = product(gen, [40, 6, 40])
    vals = LA.eigvals(X)
    assert (vals.imag.abs() > 1e-6).any()
    _assert_eig_match(vals, torch.linalg.eigvals(D), 6)


def _prescribed(gen, m, n, s):
    """A two-factor product with exactly the singular values ``s`` (up to rounding)."""
    k = len(s)
    Q1 = torch.linalg.qr(randn(gen, m, k))[0]
    Q2 = torch.linalg.qr(randn(gen, n, k))[0]
    M = torch.eye(k, dtype=torch.float64) + 0.1 * randn(gen, k, k)
    return lm.lazy(Q1 @ torch.diag(s) @ M) @ lm.lazy(torch.linalg.solve(M, Q2.T))


def test_ill_conditioned_singular_values(gen):
    s = torch.logspace(0, -12, 10, dtype=torch.float64)
    X = _prescribed(gen, 300, 200, s)
    got = LA.svdvals(X)
    assert (got - s).abs().max() < 1e-13 * s[0]
    assert LA.matrix_rank(X) == 10


def test_rank_below_narrowest_width(gen):
    s = torch.tensor([3.0, 1.0, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    X = _prescribed(gen, 50, 40, s)
    assert LA.matrix_rank(X) == 3
    S = LA.svdvals(X)  # the three nonzero values; the zeros are dropped, not noise
    assert S.shape == (3,) and (S - s[:3]).abs().max() < 1e-14 * 3
    assert LA.svdvals(X, full=True)[3:].eq(0).all()
    assert torch.isinf(LA.cond(X))


def test_sum_of_low_rank_terms(gen):
    X1, D1 = product(gen, [60, 3, 50])
    X2, D2 = product(gen, [60, 8, 2, 50])
    X, D = 2 * X1 - X2.T.T, 2 * D1 - D2
    L, R = lm.factor(X)
    assert L.shape == (60, 5) and R.shape == (5, 50)
    assert_close((L @ R).to_dense(), D)
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[:5])
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D))


def test_factor_picks_the_narrowest_split(gen):
    X = lm.symbol("E", (50257, 768)) @ lm.symbol("Q", (768, 64)) @ lm.symbol("K", (64, 768)) \
        @ lm.symbol("Et", (768, 50257))
    L, R = lm.factor(X)
    assert L.shape == (50257, 64) and R.shape == (64, 50257)


def test_all_pairs_norms_broadcast(gen):
    x, y = randn(gen, 4, 1, 30, 5), randn(gen, 1, 3, 5, 20)
    N = LA.matrix_norm(lm.lazy(x) @ lm.lazy(y))
    assert N.shape == (4, 3)
    assert_close(N, torch.linalg.matrix_norm(x @ y))


def test_frobenius_prefers_cheaper_route_and_agrees(gen):
    # closed network tr(X^H X) with Gram of a shared wide factor: batched heads
    E, U = randn(gen, 300, 16), randn(gen, 16, 300)
    V, O = randn(gen, 6, 16, 4), randn(gen, 6, 4, 16)
    X = lm.lazy(E) @ V @ O @ U
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(E @ V @ O @ U))


def test_truncate_and_make_even(gen):
    X, D = product(gen, [40, 6, 30])
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    T = X.truncate(3)
    assert_close(T.to_dense(), U[:, :3] @ torch.diag(S[:3]) @ Vh[:3])
    E = X.make_even()
    assert_close(E.to_dense(), D)
    L, R = E.children
    assert_close(torch.linalg.svdvals(L.to_dense()), torch.linalg.svdvals(R.to_dense()))


def test_edge_cases(gen):
    one = lm.lazy(randn(gen, 1, 1)) @ lm.lazy(randn(gen, 1, 1))
    d = one.to_dense()
    assert_close(LA.svdvals(one), d.abs().flatten())
    assert_close(LA.eigvals(one), d.flatten().to(torch.complex128))
    assert_close(LA.trace(one), d.flatten()[0])
    empty = lm.lazy(randn(gen, 0, 3)) @ lm.lazy(randn(gen, 3, 4))
    assert LA.svdvals(empty).shape == (0,)
    assert LA.matrix_norm(empty).item() == 0
    assert LA.matrix_rank(empty).item() == 0


def test_bad_arguments_name_the_fault(gen):
    X, _ = product(gen, [5, 2, 4])
    for fn in (LA.eigvals, LA.eig):
        with pytest.raises(ValueError, match=r"\(5, 4\)"):
            fn(X)
    with pytest.raises(ValueError, match="-1"):
        X.truncate(-1)
    with pytest.raises(ValueError, match="'max'"):
        LA.matrix_norm(X, "max")
    with pytest.raises(NotImplementedError, match="full_matrices"):
        LA.svd(X, full_matrices=True)
    with pytest.raises(NotImplementedError, match="p='fro'"):
        LA.cond(X, "fro")


def test_torch_functions_route_here(gen):
    X, D = product(gen, [20, 3, 15])
    assert_close(torch.linalg.svdvals(X), torch.linalg.svdvals(D), atol=1e-12 * D.abs().max())
    assert_close(torch.linalg.matrix_norm(X), torch.linalg.matrix_norm(D))
    assert_close(torch.linalg.norm(X), torch.linalg.norm(D))
    assert_close(torch.linalg.norm(X, ord="nuc"), torch.linalg.norm(D, ord="nuc"))
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    assert_close(U @ torch.diag(S) @ Vh, D)
    Y, E = product(gen, [15, 3, 15])
    assert_close(torch.trace(Y), torch.trace(E))
    with pytest.raises(TypeError, match="exp"):
        torch.exp(X)


def test_cache_follows_in_place_edits(gen):
    a, b = randn(gen, 30, 4), randn(gen, 4, 20)
    X = lm.lazy(a) @ lm.lazy(b)
    LA.svdvals(X)  # a first call on a fresh product (its compiled call) caches nothing
    first = LA.svdvals(X).clone()
    with TorchCalls() as calls:
        again = LA.svdvals(X)
    assert torch.equal(again, first)
    assert not {"linalg_qr", "matmul", "linalg_svdvals", "_linalg_svd"} & set(calls.names)  # from the cache
    a.mul_(2)
    assert_close(LA.svdvals(X), 2 * first)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(a @ b))


def test_pinv_and_truncate_are_snapshots_of_the_leaves(gen):
    """As docs/linear-algebra.md says: built from the SVD at build time, they keep the values
    of that moment after an in-place edit of a leaf (compared with dense torch)."""
    a, b = randn(gen, 30, 4), randn(gen, 4, 20)
    X = lm.lazy(a) @ lm.lazy(b)
    dense = a @ b
    P, T = LA.pinv(X), LA.truncate(X, 2)
    a.mul_(2)
    assert_close(P.to_dense(), torch.linalg.pinv(dense))
    U, S, Vh = torch.linalg.svd(dense)
    assert_close(T.to_dense(), U[:, :2] * S[:2] @ Vh[:2])
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(a @ b))  # built again: follows the edit


def test_dropping_the_expression_frees_its_tensors(gen):
    a, b = randn(gen, 30, 4), randn(gen, 4, 20)
    ref = weakref.ref(a)
    X = lm.lazy(a) @ lm.lazy(b)
    LA.svd(X)
    LA.matrix_norm(X)
    del a, X
    gc.collect()
    assert ref() is None


def test_16_bit_inputs_are_upcast(gen):
    a, b = randn(gen, 40, 4).half(), randn(gen, 4, 30).half()
    X = lm.lazy(a) @ lm.lazy(b)
    S = LA.svdvals(X)
    assert S.dtype == torch.float16
    ref = torch.linalg.svdvals((a.float() @ b.float()).double())[:4]
    assert_close(S.double(), ref, rtol=2e-3)
    assert LA.eigvals(lm.lazy(a) @ lm.lazy(randn(gen, 4, 40).half())).dtype == torch.complex64


def test_gradients_flow_through_svdvals_and_norm(gen):
    a = randn(gen, 20, 3).requires_grad_()
    b = randn(gen, 3, 10).requires_grad_()
    X = lm.lazy(a) @ lm.lazy(b)
    (LA.svdvals(X).sum() + LA.matrix_norm(X) + LA.trace(X[:10])).backward()
    ga, gb = a.grad.clone(), b.grad.clone()
    a.grad = b.grad = None
    D = a @ b
    (torch.linalg.svdvals(D).sum() + torch.linalg.matrix_norm(D) + torch.trace(D[:10])).backward()
    assert_close(ga, a.grad, rtol=1e-8)
    assert_close(gb, b.grad, rtol=1e-8)


def test_complex_products(gen):
    def c(*s):
        return torch.complex(randn(gen, *s), randn(gen, *s))

    a, b, d = c(30, 4), c(4, 5), c(5, 30)
    X, D = lm.lazy(a) @ b @ d, a @ b @ d
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[:4])
    U, S, Vh = LA.svd(X)
    assert_close(U @ torch.diag(S).to(U.dtype) @ Vh, D)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D))
    assert_close(LA.trace(X), torch.trace(D))
    vals, vecs = LA.eig(X)
    assert_close(D @ vecs, vecs * vals, rtol=1e-9)
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-8)


@pytest.mark.parametrize("shape, op, where", [
    ((64, 64), "eig", "cpu"), ((512, 512), "eig", "meta"), ((144, 64, 64), "svdvals", "cpu"),
    ((144, 16, 16), "svd", "meta"), ((16, 16), "svd", "cpu"), ((256, 256), "svd", "meta"),
    ((512, 512), "svdvals", "cpu"),
])
def test_small_cores_are_placed_where_measured_fastest(shape, op, where):
    core = torch.empty(shape, device="meta")  # stands for a tensor on an accelerator
    assert LA._common._core_device(core, op).type == where


def test_deep_uniform_chain(gen):
    mats = [torch.eye(4, dtype=torch.float64) + 0.01 * randn(gen, 4, 4) for _ in range(2000)]
    X = lm.lazy(mats[0])
    D = mats[0]
    for m in mats[1:]:
        X, D = X @ m, D @ m
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D), rtol=1e-12)
    assert_close(LA.trace(X), torch.trace(D), rtol=1e-12)


class LargestOutput(TorchCalls):
    """Also records the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs)
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("op", ["svd", "svdvals", "eigvals", "eig", "matrix_norm", "trace", "diagonal",
                                "matrix_rank", "pinv", "cond"])
def test_spectral_ops_never_form_the_matrix(gen, op):
    vocab, d_model, d_head = 3000, 48, 8
    E, Q, K = randn(gen, vocab, d_model), randn(gen, d_model, d_head), randn(gen, d_model, d_head)
    qk = lm.lazy(E) @ Q @ lm.lazy(K).T @ lm.lazy(E).T
    with LargestOutput() as rec:
        getattr(LA, op)(qk)
    assert rec.largest <= vocab * d_model  # the largest input; the matrix is vocab * vocab


def test_stacked_factors_keep_their_own_batch_when_indexed(gen):
    """A low-rank sum whose terms have fewer batch dims than the sum, used inside a product and
    then indexed: the stacks keep their parts' batch, and factor()/svdvals agree with dense."""
    d = [randn(gen, *s) for s in [(1, 1, 1, 1), (1, 3), (1, 3), (3, 1), (1, 1, 1, 3), (3, 1), (1, 3)]]
    a, b, b2, c, e, f, g = (lm.lazy(t) for t in d)
    X = (a @ (b + b2) @ (c @ e + f @ g))[None]
    D = (d[0] @ (d[1] + d[2]) @ (d[3] @ d[4] + d[5] @ d[6]))[None]
    assert_close(X.to_dense(), D)
    L, R = X.factor()
    assert_close((L @ R).to_dense(), D)
    assert_close(lm.linalg.svdvals(X), torch.linalg.svdvals(D))


def test_identity_side_costs_nothing(gen):
    """A matrix that is its own core pairs with an identity marker: no torch.eye is made,
    and evaluating the marker (only if asked) gives the identity."""
    d = randn(gen, 80, 80)
    s = randn(gen, 80, 80)
    for X in (lm.lazy(d), lm.lazy(d) + lm.lazy(s)):
        with TorchCalls() as calls:
            for op in ("svdvals", "eigvals", "eig", "matrix_norm", "matrix_rank", "cond", "svd"):
                getattr(LA, op)(X)
            LA.matrix_norm(X, "nuc")
            X.explain("svdvals")
        assert calls.count("eye") == 0
        L, R = X.factor()
        assert lm.core.is_identity(L) and not lm.core.is_identity(R)
        assert_close((L @ R).to_dense(), X.to_dense())


def test_user_symbols_never_collide_with_the_identity():
    lm.symbol("J", (64, 64)).factor()  # makes the internal 64 x 64 identity
    user = lm.symbol("I64", (64, 64))
    assert not lm.core.is_identity(user)
    L, R = user.factor()
    assert L is not user and R is user and lm.core.is_identity(L)
    t = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    X = lm.lazy(torch.eye(64) * 2, name="I64") @ lm.lazy(t)
    assert_close(LA.svdvals(X).double(), torch.linalg.svdvals(2 * t).double()[:8], rtol=1e-5)
    report = (user @ lm.symbol("B", (64, 64))).explain("svdvals")
    assert report.flops > 0 and "I64" in str(report)
