"""A factor whose batch index only expands along a dim that another factor spans is multiplied
once per distinct member (``W[a] @ V[b]`` with ``a, b = torch.meshgrid(...)``, as
``W[:, None] @ V[None]``), not once per expanded copy: the same answers as eager torch, and the
FLOPs of the broadcast-written form."""

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

import lazymat as lm


@st.composite
def pair_product(draw):
    """Two stacks of factors ``A (h, m, k) @ B (h, k, n)`` and ``C (g, n, p)``, read as every
    pair (i, j) through meshgrid index arrays, with optional extra repeats in the arrays."""
    h, g = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    m, k, n, p = (draw(st.integers(1, 6)) for _ in range(4))
    seed = draw(st.integers(0, 2**16))
    repeat = draw(st.booleans())
    return h, g, m, k, n, p, seed, repeat


def _tensors(h, g, m, k, n, p, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(h, m, k, generator=gen, dtype=torch.float64),
            torch.randn(h, k, n, generator=gen, dtype=torch.float64),
            torch.randn(g, n, p, generator=gen, dtype=torch.float64))


def _indices(h, g, repeat):
    ia, ib = torch.arange(h), torch.arange(g)
    if repeat:  # the same member twice along a dim: a gather that varies there, not an expand
        ia = torch.cat([ia, ia[:1]])
    return torch.meshgrid(ia, ib, indexing="ij")


@given(pair_product())
@settings(max_examples=60, deadline=None)
def test_meshgrid_pairs_answer_as_eager_torch(case):
    h, g, m, k, n, p, seed, repeat = case
    A, B, C = _tensors(h, g, m, k, n, p, seed)
    a, b = _indices(h, g, repeat)
    X = lm.lazy(A)[a] @ lm.lazy(B)[a] @ lm.lazy(C)[b]
    dense = A[a] @ B[a] @ C[b]
    torch.testing.assert_close(X.to_dense(), dense)
    torch.testing.assert_close(lm.linalg.matrix_norm(X), torch.linalg.matrix_norm(dense))
    torch.testing.assert_close(lm.linalg.svdvals(X, full=True), torch.linalg.svdvals(dense),
                               atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(X[1 % a.shape[0], 0].to_dense(), dense[1 % a.shape[0], 0])


@given(pair_product())
@settings(max_examples=30, deadline=None)
def test_meshgrid_pairs_cost_what_the_broadcast_form_costs(case):
    h, g, m, k, n, p, seed, _ = case
    A, B, C = (lm.lazy(t) for t in _tensors(h, g, m, k, n, p, seed))
    a, b = _indices(h, g, False)
    gathered = A[a] @ B[a] @ C[b]
    broadcast = A[:, None] @ B[:, None] @ C[None]
    for op in ("to_dense", "matrix_norm", "svdvals"):
        assert lm.explain(gathered, op).flops == lm.explain(broadcast, op).flops, op


def test_all_pairs_products_run_once_per_head():
    """12 heads' ``W_V W_O`` against 12 heads' ``W_Q W_K^T`` by meshgrid indices: each head's
    products once, not 144 times (2.87e9 FLOPs before; the broadcast form's 1.2e9 now)."""
    H, D, d = 12, 96, 8
    W = [lm.symbol(name, (H, D, d)) for name in ("W_V", "W_Q", "W_K")]
    W_O = lm.symbol("W_O", (H, d, D))
    a, b = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    gathered = W[0][a] @ W_O[a] @ (W[1][b] @ W[2][b].mT).mT
    broadcast = W[0][:, None] @ W_O[:, None] @ (W[1][None] @ W[2][None].mT).mT
    got, want = lm.explain(gathered, "matrix_norm"), lm.explain(broadcast, "matrix_norm")
    assert got.flops == want.flops
    assert got.planned.peak_bytes == want.planned.peak_bytes


def test_a_lone_expanded_product_still_answers():
    """No factor spans the expanded dim: nothing is cut (the result keeps its batch)."""
    A, B = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    Y = X[None][[0, 0, 0]]
    torch.testing.assert_close(Y.to_dense(), (A @ B).expand(3, 5, 4))
    torch.testing.assert_close(lm.linalg.svdvals(Y, full=True), torch.linalg.svdvals((A @ B).expand(3, 5, 4)))


def test_explain_names_a_factor_read_once_per_repeated_member():
    """Where repeats still cost (a flat list of pairs; an expand no factor spans), the report
    says which factor and how many distinct members it reads; where they are cut, nothing."""
    H = 6
    W = lm.symbol("W", (H, 10, 3))
    V = lm.symbol("V", (H, 3, 10))
    a, b = torch.meshgrid(torch.arange(H), torch.arange(H), indexing="ij")
    flat = lm.explain(W[a.reshape(-1)] @ V[b.reshape(-1)], "matrix_norm").planned.note
    assert "reads 6 distinct of 36 batch members" in flat
    assert "reads" not in lm.explain(W[a] @ V[b], "matrix_norm").planned.note
    X = lm.symbol("A", (5, 2)) @ lm.symbol("B", (2, 5))
    assert "reads 1 distinct of 3 batch members" in lm.explain(X[None][[0, 0, 0]], "svdvals").planned.note
    assert "reads" not in lm.explain(W[[0, 1, 2]] @ V[[0, 1, 2]], "to_dense").planned.note
