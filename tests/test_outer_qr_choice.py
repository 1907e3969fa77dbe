"""The shared-QR choice of :func:`lazymat.core.outer_reductions` counts a side's QR as free
only when the other side reduces the same leaf's matrix (a different leaf with the same view
needs its own QR)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.core import _side_flops, factor, outer_reductions, shared_outer


def _chain(rows_left: int, rows_right: int, k: int, batch: int, same: bool) -> lm.Expr:
    g = torch.Generator().manual_seed(rows_left * 131 + rows_right)
    W = torch.randn(rows_left, k, generator=g, dtype=torch.float64)
    V = W if same else torch.randn(rows_right, k, generator=g, dtype=torch.float64)
    B = torch.randn(batch, k, 3, generator=g, dtype=torch.float64)
    C = torch.randn(3, k, generator=g, dtype=torch.float64)
    return lm.lazy(W) @ lm.lazy(B) @ lm.lazy(C) @ lm.lazy(V).mT


def test_a_different_leaf_with_the_same_view_pays_its_own_qr():
    # both ends are plain views of (rows, 8) leaves, with equal cache keys: the right one's QR
    # was costed as free, so the shared route was taken where its QR costs twice the direct one
    X = _chain(60, 50, 8, 4, same=False)
    _, R = factor(X)
    s = shared_outer(R, adjoint=True)
    assert s is not None and _side_flops(R, s, True, False) > _side_flops(R, None, True, False)
    assert outer_reductions(X, vectors=False)[1] is None


@settings(max_examples=60, deadline=None)
@given(st.integers(9, 80), st.integers(9, 80), st.integers(1, 6), st.booleans(), st.booleans())
def test_a_side_takes_the_shared_qr_only_where_it_pays(rows_left, rows_right, batch, same, vectors):
    X = _chain(rows_left, rows_left if same else rows_right, 8, batch, same)
    L, R = factor(X)
    left, right = outer_reductions(X, vectors)
    for (side, adjoint), chosen in zip(((L, False), (R, True)), (left, right), strict=True):
        s = shared_outer(side, adjoint)
        if chosen is None or s is None:
            continue
        # free only when the left end reduced the very same leaf (W @ ... @ W.mT)
        free = adjoint and left is not None and left.view.base is s.view.base
        assert _side_flops(side, s, adjoint, vectors, free) < _side_flops(side, None, adjoint, vectors)
    # the answer is unchanged by the route: singular values against float64 torch
    dense = X.to_dense()
    ref = torch.linalg.svdvals(dense)
    got = lm.linalg.svdvals(X)
    torch.testing.assert_close(got, ref[..., : got.shape[-1]], rtol=1e-9, atol=1e-9 * float(ref.max()))
