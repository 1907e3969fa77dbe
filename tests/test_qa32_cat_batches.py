"""A ``cat`` broadcasts its parts to its batch; indexing it can keep only parts of a narrower
batch (``cat([P1 (3, 4, 1), P2 (4, 2)])[..., 1:3]`` reads ``P2`` alone, still ``(3, 4, 2)``).
Whatever read the cat as its parts lost the batch the dropped part carried: a product
distributed over them (``(cat[..., 1:3] @ W).to_dense()`` came back ``(4, 3)`` for a
``(3, 4, 3)`` expression), its factors (``X.factor()``: svdvals, norms, amax, topk of the wrong
shape). Checked on random expression trees against eager torch in float64 on the dense tensors."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close

FULL_BATCH = (2, 3)


@st.composite
def leaves(draw, m: int, n: int):
    r = draw(st.integers(0, len(FULL_BATCH)))
    batch = tuple(draw(st.sampled_from([1, s])) for s in FULL_BATCH[len(FULL_BATCH) - r:])
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    t = torch.randn((*batch, m, n), generator=g, dtype=torch.float64)
    return lm.lazy(t), t


def _expanded(t: torch.Tensor, batch: torch.Size) -> torch.Tensor:
    return t.expand(*batch, *t.shape[-2:])


@st.composite
def trees(draw, m: int, n: int, depth: int):
    """An ``m x n`` expression of products, differences, scalings, transposes, cats and
    indexing (of cats too: a slice that keeps one part): (lazy, dense)."""
    kinds = ["leaf", "product", "difference", "scale", "transpose", "index", "cat"] if depth else ["leaf"]
    kind = draw(st.sampled_from(kinds))
    if kind == "leaf":
        return draw(leaves(m, n))
    if kind == "product":
        k = draw(st.integers(1, 4))
        (a, A), (b, B) = draw(trees(m, k, depth - 1)), draw(trees(k, n, depth - 1))
        return a @ b, A @ B
    if kind == "difference":
        (a, A), (b, B) = draw(trees(m, n, depth - 1)), draw(trees(m, n, depth - 1))
        return a - b, A - B
    if kind == "scale":
        a, A = draw(trees(m, n, depth - 1))
        return -0.5 * a, -0.5 * A
    if kind == "transpose":
        a, A = draw(trees(n, m, depth - 1))
        return a.mT, A.mT
    if kind == "index":
        a, A = draw(trees(m + 2, n + 1, depth - 1))
        start = draw(st.integers(0, 2))
        key = (..., slice(start, start + m), slice(1, None))
        return a[key], A[key]
    # a cat of columns (or rows); sliced, only its second part is kept
    rows, sliced = draw(st.booleans()), draw(st.booleans())
    size = m if rows else n
    if not sliced and size < 2:
        return draw(leaves(m, n))
    j = draw(st.integers(1, 3)) if sliced else draw(st.integers(1, size - 1))
    rest = size if sliced else size - j
    (a, A), (b, B) = draw(trees(j, n, depth - 1) if rows else trees(m, j, depth - 1)), \
        draw(trees(rest, n, depth - 1) if rows else trees(m, rest, depth - 1))
    batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    dim = -2 if rows else -1
    X, D = lm.cat([a, b], dim=dim), torch.cat([_expanded(A, batch), _expanded(B, batch)], dim=dim)
    if sliced:
        key = (..., slice(j, None), slice(None)) if rows else (..., slice(None), slice(j, None))
        X, D = X[key], D[key]
    return X, D


@st.composite
def expressions(draw):
    m, n = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return draw(trees(m, n, 3))


@settings(max_examples=300, deadline=None)
@given(expressions())
def test_random_trees_keep_their_batch(case):
    X, D = case
    assert tuple(X.shape) == tuple(D.shape)
    out = X.to_dense()
    assert out.shape == D.shape
    # (absolute: a difference may cancel to rounding noise, where a relative check fails)
    assert_close(out, D, atol=1e-9)
    v = torch.linspace(-1, 1, D.shape[-1], dtype=torch.float64)
    assert_close(X @ v, D @ v, atol=1e-9)
    assert_close(X.sum(-2), D.sum(-2), atol=1e-9)


@pytest.mark.parametrize("rows", [False, True])
def test_a_product_with_a_cat_indexed_to_one_narrower_part(rows):
    g = torch.Generator().manual_seed(0)
    P1 = torch.randn(3, 4, 1, generator=g, dtype=torch.float64)
    P2 = torch.randn(4, 2, generator=g, dtype=torch.float64)
    W = torch.randn(2, 3, generator=g, dtype=torch.float64)
    if rows:
        X = lm.cat([lm.lazy(P1.mT), lm.lazy(P2.mT)], dim=-2)[..., 1:3, :].mT @ lm.lazy(W)
    else:
        X = lm.cat([lm.lazy(P1), lm.lazy(P2)], dim=-1)[..., 1:3] @ lm.lazy(W)
    D = torch.cat([P1, P2.expand(3, 4, 2)], dim=-1)[..., 1:3] @ W
    for _ in range(2):  # fresh, then from the cached form
        assert_close(X.to_dense(), D)
    assert_close(X.sum(-1), D.sum(-1))
    assert_close(torch.linalg.matrix_norm(X), torch.linalg.matrix_norm(D))
    assert_close(lm.linalg.trace(X[..., :3, :]), D[..., :3, :].diagonal(dim1=-2, dim2=-1).sum(-1))


def test_the_factors_of_a_cat_indexed_to_one_narrower_part_keep_its_batch():
    g = torch.Generator().manual_seed(0)
    P1 = torch.randn(3, 6, 1, generator=g, dtype=torch.float64)
    L = torch.randn(6, 1, generator=g, dtype=torch.float64)
    R = torch.randn(1, 5, generator=g, dtype=torch.float64)
    X = lm.cat([lm.lazy(P1), lm.lazy(L) @ lm.lazy(R)], dim=-1)[..., 1:]
    D = torch.cat([P1, (L @ R).expand(3, 6, 5)], dim=-1)[..., 1:]
    left, right = X.factor()
    assert_close((left @ right).to_dense(), D)
    assert_close(torch.linalg.matrix_norm(X), torch.linalg.matrix_norm(D))
    assert_close(lm.linalg.svdvals(X, full=True), torch.linalg.svdvals(D), atol=1e-9)
    assert_close(X.amax(-1), D.amax(-1))


def _narrow_part_case():
    """The example the reductions below fail on: a cat indexed to a part of a narrower batch."""
    g = torch.Generator().manual_seed(1)
    G1 = torch.randn(1, 5, 2, generator=g, dtype=torch.float64)
    G2 = torch.randn(2, 1, 5, 2, generator=g, dtype=torch.float64)
    P1 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    P2 = torch.randn(2, 3, 2, 1, generator=g, dtype=torch.float64)
    X = ((lm.lazy(G1) - lm.lazy(G2)) @ lm.cat([lm.lazy(P1), lm.lazy(P2)], dim=-1))[:, :, 1:4, 0:3]
    D = ((G1 - G2) @ torch.cat([P1.expand(2, 3, 2, 3), P2], dim=-1))[:, :, 1:4, 0:3]
    return X, D


@settings(max_examples=300, deadline=None)
@given(expressions())
@example(_narrow_part_case())
def test_reductions_of_random_trees_keep_their_batch(case):
    X, D = case
    assert_close(X.amax(0), D.amax(0), atol=1e-9)
    inf = float("inf")
    assert_close(torch.linalg.matrix_norm(X, inf), torch.linalg.matrix_norm(D, inf), atol=1e-9)
    assert_close(lm.linalg.svdvals(X, full=True), torch.linalg.svdvals(D), atol=1e-9)
