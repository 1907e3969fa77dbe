"""Random expressions with shared structure against dense torch in float64: batches that
share a tall leaf, sums whose terms share outer factors, products that repeat a leaf.
With generic random data the core width must equal the dense rank, and every answer the
dense one."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _leaf(g, *shape):
    t = torch.randn(*shape, generator=g, dtype=torch.float64)
    return lm.lazy(t), t


def _chain(draw, g, dims, batch):
    """A product through ``dims`` with each factor batched over ``batch`` or not."""
    lazy = dense = None
    for i in range(len(dims) - 1):
        b = batch if draw(st.booleans()) else ()
        x, t = _leaf(g, *b, dims[i], dims[i + 1])
        lazy, dense = (x, t) if lazy is None else (lazy @ x, dense @ t)
    return lazy, dense


def _check(X, D):
    """Width = dense rank (per member), values, factors and norms = dense. The dense rank
    uses a 1e-9 relative tolerance: the dense product's rounding noise (up to ~1e-14 of
    the largest value after cancellation) is above matrix_rank's default one."""
    rank = torch.linalg.matrix_rank(D, rtol=1e-9)
    S = LA.svdvals(X)
    assert torch.all(rank == S.shape[-1]), (S.shape, rank)
    r = S.shape[-1]
    scale = torch.linalg.matrix_norm(D, 2).max().item()
    assert_close(S, torch.linalg.svdvals(D)[..., :r], rtol=1e-8)
    U, S2, Vh = LA.svd(X)
    assert_close(U @ torch.diag_embed(S2) @ Vh, D, rtol=1e-8, atol=1e-8 * scale)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-8)
    if D.shape[-1] == D.shape[-2]:
        assert_close(LA.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1), rtol=1e-8,
                     atol=1e-8 * scale * D.shape[-1])


@SETTINGS
@given(st.data())
def test_batch_sharing_tall_outer_leaves(data):
    """``E @ M_b @ F^T`` with ``E``, ``F`` unbatched tall leaves (``F`` may be ``E``) and a
    random batched chain ``M_b`` in between, sometimes narrower than the leaves."""
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=2)))
    k = draw(st.integers(2, 7))
    E, e = _leaf(g, draw(st.integers(k + 1, 40)), k)
    same = draw(st.booleans())
    F, f = (E, e) if same else _leaf(g, draw(st.integers(k + 1, 40)), k)
    inner = [k] + [draw(st.integers(1, 8)) for _ in range(draw(st.integers(0, 3)))] + [k]
    M, m = _chain(draw, g, inner, batch)
    X, D = E @ M @ F.mT, e @ m @ f.mT
    _check(X, D)
    if batch:  # the same leaves again, other heads: any cached QR must still be right
        M2, m2 = _chain(draw, g, inner, batch)
        _check(E @ M2 @ F.mT, e @ m2 @ f.mT)


@SETTINGS
@given(st.data())
def test_sums_with_shared_outer_factors(data):
    """``sum_i c_i P @ M_i @ S`` (written expanded) with random prefix, suffix, middles and
    coefficients; the first middle may be empty (the term is ``P @ S``; two such terms
    could cancel exactly, which is cancellation, not a structural rank)."""
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=1)))
    dims_p = [draw(st.integers(1, 12)) for _ in range(draw(st.integers(2, 4)))]
    dims_s = [dims_p[-1] if draw(st.booleans()) else draw(st.integers(1, 12))]
    dims_s += [draw(st.integers(1, 12)) for _ in range(draw(st.integers(0, 2)))]
    P, p = _chain(draw, g, dims_p, batch)
    S, s = _chain(draw, g, dims_s, batch) if len(dims_s) > 1 else (None, None)
    X = D = None
    for i in range(draw(st.integers(2, 3))):
        c = draw(st.sampled_from([1.0, -1.0, 0.5, 2.5]))
        empty = i == 0 and dims_s[0] == dims_p[-1] and draw(st.booleans())
        n_mid = 0 if empty else draw(st.integers(1, 3))
        mids = [dims_p[-1]] + [draw(st.integers(1, 8)) for _ in range(n_mid - 1)] + [dims_s[0]]
        if n_mid:
            Mi, mi = _chain(draw, g, mids, batch)
            x, d = P @ Mi, p @ mi
        else:
            x, d = P, p
        if S is not None:
            x, d = x @ S, d @ s
        X, D = (c * x, c * d) if X is None else (X + c * x, D + c * d)
    _check(X, D)


@SETTINGS
@given(st.data())
def test_networks_over_repeated_leaves(data):
    """Trace, diagonal and Frobenius norm of sums of products drawn from a pool of two or
    three leaves (each used as itself or transposed, some batched): repeated steps are run
    once and must give the dense answer, for real and complex data."""
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    n = draw(st.integers(1, 6))
    pool = []
    for _ in range(draw(st.integers(2, 3))):
        t = torch.randn(*((3,) if draw(st.booleans()) else ()), n, n, generator=g, dtype=torch.float64)
        t = t.to(dtype) if dtype == torch.float64 else torch.complex(t, torch.randn(t.shape, generator=g,
                                                                                   dtype=torch.float64))
        pool.append((lm.lazy(t), t))
    X = D = None
    for _ in range(draw(st.integers(1, 3))):
        x = d = None
        for _ in range(draw(st.integers(1, 5))):
            lz, t = pool[draw(st.integers(0, len(pool) - 1))]
            if draw(st.booleans()):
                lz, t = lz.mT, t.mT
            x, d = (lz, t) if x is None else (x @ lz, d @ t)
        X, D = (x, d) if X is None else (X + x, D + d)
    scale = max(torch.linalg.matrix_norm(D).max().item(), 1.0)
    assert_close(LA.trace(X), torch.diagonal(D, dim1=-2, dim2=-1).sum(-1), rtol=1e-9, atol=1e-9 * scale)
    assert_close(LA.diagonal(X), torch.diagonal(D, dim1=-2, dim2=-1), rtol=1e-9, atol=1e-9 * scale)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)


@SETTINGS
@given(st.data())
def test_frobenius_norm_of_irregular_chains(data):
    """``tr(X^H X)`` of a random chain: where opt_einsum contracts ``conj(B) conj(C)`` and
    ``B C`` alike, the two are different tensors for complex data and must not be shared."""
    draw = data.draw
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    dims = [draw(st.integers(1, 30)) for _ in range(draw(st.integers(3, 6)))]
    X = D = None
    for i in range(len(dims) - 1):
        t = torch.randn(dims[i], dims[i + 1], generator=g, dtype=dtype)
        X, D = (lm.lazy(t), t) if X is None else (X @ t, D @ t)
    assert_close(LA.matrix_norm(X), torch.linalg.matrix_norm(D), rtol=1e-9)
