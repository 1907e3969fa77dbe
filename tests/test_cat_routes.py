"""A user's ``cat`` read through its parts: the trace and diagonal of a cat are joined from each
part's diagonal block (``diag([X1, X2]) = [diag(X1[:n1]), diag(X2[n1:])]``, see
rewrite.diagonal_pieces), and a transposed cat inside a product is distributed over its
transposed parts like a plain one (rewrite._distribute_cats). Random cats (either axis, batched,
broadcast, transposed, scaled, nested; parts products, sums or leaves) against dense float64
torch; explain's FLOPs are those of the networks that run, and fall to the parts' order."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_properties import SETTINGS, assert_close, chains

import lazymat as lm
from lazymat import linalg as LA
from lazymat.rewrite import Nested, canonical


@st.composite
def parts(draw, rows, cols, batch):
    """(lazy, dense): a product, a sum of two products, or a cat of two of those."""
    kind = draw(st.sampled_from(["chain", "sum", "cat"] if min(rows, cols) > 1 else ["chain", "sum"]))
    X, D = draw(chains(rows, cols, batch, torch.float64))
    if kind == "sum":
        Y, E = draw(chains(rows, cols, batch, torch.float64))
        return X - Y, D - E
    if kind == "cat":
        axis = draw(st.sampled_from([-1, -2]))
        k = draw(st.integers(1, (cols if axis == -1 else rows) - 1))
        a = (rows, k) if axis == -1 else (k, cols)
        b = (rows, cols - k) if axis == -1 else (rows - k, cols)
        (P, F), (Q, G) = draw(chains(*a, batch, torch.float64)), draw(chains(*b, batch, torch.float64))
        b = torch.broadcast_shapes(F.shape[:-2], G.shape[:-2])
        return lm.cat([P, Q], dim=axis), torch.cat([F.expand(*b, *F.shape[-2:]), G.expand(*b, *G.shape[-2:])],
                                                   dim=axis)
    return X, D


@st.composite
def cats(draw):
    """(lazy, dense): a cat of 2-3 random parts along rows or columns, maybe batched (parts
    broadcast), scaled and transposed."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    axis = draw(st.sampled_from([-1, -2]))
    other = draw(st.integers(1, 6))
    got = []
    for _ in range(draw(st.integers(2, 3))):
        n = draw(st.integers(1, 4))
        got.append(draw(parts(*((other, n) if axis == -1 else (n, other)), batch)))
    X = lm.cat([p for p, _ in got], dim=axis)
    D = torch.cat([d.expand(*X.shape[:-2], *d.shape[-2:]) for _, d in got], dim=axis)
    if draw(st.booleans()):
        k = draw(st.floats(0.5, 2)) * draw(st.sampled_from([-1, 1]))
        X, D = k * X, k * D
    if draw(st.booleans()):
        X, D = X.mT, D.mT
    return X, D


@SETTINGS
@given(cats(), st.data())
def test_trace_and_diagonal_of_a_cat_match_torch(case, data):
    X, D = case
    m, n = D.shape[-2:]
    offset = data.draw(st.integers(-(m - 1), n - 1))
    assert_close(LA.diagonal(X, offset=offset), torch.diagonal(D, offset=offset, dim1=-2, dim2=-1))
    assert_close(LA.diagonal(X, dim1=-1, dim2=-2), torch.diagonal(D, dim1=-1, dim2=-2))
    k = min(m, n)
    assert_close(LA.trace(X), torch.diagonal(D[..., :k, :k], dim1=-2, dim2=-1).sum(-1))


@SETTINGS
@given(cats(), st.data())
def test_a_cat_inside_a_product_matches_torch(case, data):
    """Neighbours on either side: the cat (transposed or not) is distributed where its joined
    dim is contracted; the product's value, trace and diagonal against torch."""
    X, D = case
    batch = tuple(D.shape[:-2])
    P, E = data.draw(chains(data.draw(st.integers(1, 5)), D.shape[-2], batch, torch.float64))
    Q, F = data.draw(chains(D.shape[-1], data.draw(st.integers(1, 5)), batch, torch.float64))
    Y, G = P @ X @ Q, E @ D @ F
    assert_close(Y.to_dense(), G)
    assert_close(LA.diagonal(Y), torch.diagonal(G, dim1=-2, dim2=-1))
    k = min(G.shape[-2:])
    assert_close(LA.trace(Y), torch.diagonal(G[..., :k, :k], dim1=-2, dim2=-1).sum(-1))


def test_a_transposed_cat_in_a_product_is_distributed_over_its_parts():
    """``H @ [X1, X2].mT = H[:, :n1] @ X1.mT + H[:, n1:] @ X2.mT``: two terms, no cat block."""
    g = torch.Generator().manual_seed(0)
    A, B, C, D, H = (torch.randn(*s, generator=g, dtype=torch.float64)
                     for s in [(9, 2), (2, 4), (9, 3), (3, 5), (6, 9)])
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C) @ lm.lazy(D)], dim=-1)
    Y = lm.lazy(H) @ X.mT
    form = canonical(Y)
    assert len(form.terms) == 2
    assert not any(isinstance(f.base, Nested) for t in form.terms for f in t.factors)
    assert_close(Y.to_dense(), H @ torch.cat([A @ B, C @ D], dim=-1).mT)


def _run_flops(X, op: str, monkeypatch) -> int:
    """The FLOPs of the closed networks linalg runs for ``op`` on ``X``, plus the additions that
    join the terms' and parts' traces, counted from the networks it builds."""
    built = []
    real = LA.norms.closed_chain

    def record(*args, **kwargs):
        net = real(*args, **kwargs)
        built.append(net.flops)
        return net

    monkeypatch.setattr(LA.norms, "closed_chain", record)
    getattr(LA, op)(X)
    return sum(built)


@SETTINGS
@given(cats())
def test_explain_counts_the_networks_that_run(case):
    """Explained before anything runs: a run keeps leaf products that a later explain counts free."""
    X, _ = case
    explained = {op: lm.explain(X, op).rows for op in ("trace", "diagonal")}
    for op, rows in explained.items():
        with pytest.MonkeyPatch.context() as mp:
            ran = _run_flops(X, op, mp)
        # the networks' FLOPs (a coefficient's scale/rescale rows: test_coef17_explain_closed)
        networks = [r for r in rows if "sum +" not in r.op and r.op.split(": ")[-1].split(" ")[0]
                    not in ("scale", "rescale")]
        assert sum(r.flops for r in networks) == ran


def test_explain_of_a_cat_of_low_rank_symbols_costs_its_parts():
    """The brief's case: ``cat([A @ B, C @ D], dim=-1)`` of 50000-row rank-64 parts: ~3.2e11
    FLOPs when the cat was formed; now each part's diagonal block, ``diag(A[:25000] @ B)`` and
    ``diag(C[25000:] @ D)``, built here by hand."""
    r, n, h = 64, 50000, 25000
    A, C = lm.symbol("A", (n, r)), lm.symbol("C", (n, r))
    B, D = lm.symbol("B", (r, h)), lm.symbol("D", (r, h))
    X = lm.cat([A @ B, C @ D], dim=-1)
    for op in ("trace", "diagonal"):
        parts = [lm.explain(A[:h] @ B, op).planned.flops, lm.explain(C[h:] @ D, op).planned.flops]
        flops = lm.explain(X, op).planned.flops
        assert flops == sum(parts) + (1 if op == "trace" else 0)  # the one addition of two traces
        assert flops - (op == "trace") == 2 * 2 * h * r  # each diagonal entry a length-r dot product
    assert lm.explain(X.mT, "trace").planned.flops == lm.explain(X, "trace").planned.flops


@SETTINGS
@given(st.sampled_from([-1, -2]), st.lists(st.integers(1, 400), min_size=2, max_size=4), st.integers(1, 8),
       st.booleans())
def test_explain_of_a_cat_of_symbols_is_the_sum_of_its_blocks(axis, sizes, rank, transposed):
    """Random cats of rank-``rank`` symbol products: the trace and diagonal cost what the hand-built
    diagonal blocks cost (plus the additions joining the traces), at most ``4 n r``, never the
    ``n^2 r`` of forming the cat."""
    n = sum(sizes)
    parts, blocks, offset = [], [], 0
    for k, size in enumerate(sizes):
        L = lm.symbol(f"L{k}", (n, rank) if axis == -1 else (size, rank))
        R = lm.symbol(f"R{k}", (rank, size) if axis == -1 else (rank, n))
        parts.append(L @ R)
        blocks.append(L[offset:offset + size] @ R if axis == -1 else L @ R[:, offset:offset + size])
        offset += size
    X = lm.cat(parts, dim=axis)
    X = X.mT if transposed else X
    for op in ("trace", "diagonal"):
        flops = lm.explain(X, op).planned.flops
        joins = len(sizes) - 1 if op == "trace" else 0
        assert flops == sum(lm.explain(b, op).planned.flops for b in blocks) + joins
        assert flops <= 4 * n * rank + joins
