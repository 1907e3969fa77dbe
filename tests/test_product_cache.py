"""Products of unbatched leaves that a batch shares are cached on the leaves and reused by
later evaluations and analyses (lazymat.product_cache)."""

import gc
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.product_cache import MAX_PRODUCTS_PER_LEAF, store
from lazymat.rewrite import canonical

from conftest import TorchCalls, assert_close, randn

# small shapes: every span kept, as a span worth keeping is (product_cache.MIN_KEPT_FLOPS)
pytestmark = pytest.mark.usefixtures("every_product_kept")
V, D, H, DH = 300, 24, 6, 8  # vocabulary, model width, heads, head width: H * DH > D


def _weights(gen):
    return (randn(gen, V, D), randn(gen, D, V), randn(gen, H, D, DH), randn(gen, H, DH, D))


def _shared_count(calls) -> int:
    """How often ``W_U @ W_E`` (the only ``(D, D)`` matmul here) was formed."""
    return calls.matmul_shapes.count((D, D))


def test_two_analyses_form_the_shared_product_once(gen):
    WE, WU, WV, WO = _weights(gen)
    E, U, Vw, O = (lm.lazy(t) for t in (WE, WU, WV, WO))
    with TorchCalls() as calls:
        ev = lm.linalg.eigvals(E @ Vw @ O @ U)  # core W_O @ W_U @ W_E @ W_V over all heads
        head_pairs = (O @ U @ E @ Vw)[:3].to_dense()  # another analysis, a slice of the batch
    assert _shared_count(calls) == 1
    expected = torch.linalg.eigvals(WO @ WU @ WE @ WV)
    assert_close(torch.sort(ev.abs(), dim=-1).values, torch.sort(expected.abs(), dim=-1).values, rtol=1e-8)
    assert_close(head_pairs, (WO @ WU @ WE @ WV)[:3])


def test_explain_shows_the_cached_product_at_no_cost(gen):
    WE, WU, WV, WO = _weights(gen)
    X = lm.lazy(WE, name="W_E") @ lm.lazy(WV, name="W_V") @ lm.lazy(WO, name="W_O") @ lm.lazy(WU, name="W_U")
    before = X.explain("eigvals")
    assert not any("cached" in r.op for r in before.rows)
    X.eigvals()
    after = X.explain("eigvals")
    rows = [r for r in after.rows if r.op.endswith("W_U @ W_E: cached")]
    assert len(rows) == 1 and rows[0].flops == 0
    assert after.flops == before.flops - 2 * D * V * D


def test_in_place_edit_of_either_leaf_invalidates(gen):
    WE, WU, WV, WO = _weights(gen)
    E, U, Vw, O = (lm.lazy(t) for t in (WE, WU, WV, WO))
    C = O @ U @ E @ Vw
    C.to_dense()
    for t in (WE, WU):
        t.mul_(1.5)
        with TorchCalls() as calls:
            out = C[1:].to_dense()
        assert _shared_count(calls) == 1
        assert_close(out, (WO @ WU @ WE @ WV)[1:])


def test_clear_cache_drops_the_product(gen):
    WE, WU, WV, WO = _weights(gen)
    E, U, Vw, O = (lm.lazy(t) for t in (WE, WU, WV, WO))
    C = O @ U @ E @ Vw
    C.to_dense()
    C.clear_cache()
    with TorchCalls() as calls:
        C[:2].to_dense()
    assert _shared_count(calls) == 1


def test_not_stored_while_recording_grads(gen):
    WE, WU, WV, WO = _weights(gen)
    WE.requires_grad_(True)
    C = lm.lazy(WO) @ lm.lazy(WU) @ lm.lazy(WE) @ lm.lazy(WV)
    with torch.no_grad():
        C.to_dense()  # cached: nothing records
    C.to_dense()  # recording: neither uses nor replaces the cached product (it has no graph)
    out = C[:2].to_dense()
    out.sum().backward()
    expected = torch.autograd.grad((WO[:2] @ WU @ WE @ WV[:2]).sum(), WE)[0]
    assert_close(WE.grad, expected)


def test_no_cache_keeps_a_freed_leaf_or_product_alive(gen):
    """With the cyclic GC off: freeing the leaves frees their tensors and the cached product,
    and freeing only the second leaf drops the product cached on the first."""
    WE, WU, WV, WO = _weights(gen)
    gc.collect()
    gc.disable()
    try:
        U, E = lm.lazy(WU), lm.lazy(WE)
        C = lm.lazy(WO) @ U @ E @ lm.lazy(WV)
        C.to_dense()
        product = U._cache["products"]
        (value,) = [v[1] for v in product.values()]
        ref = weakref.ref(value)
        del value, C, E  # W_E's node dies (nothing else holds it): the product goes too
        assert not product and ref() is None
        t = torch.randn(5, 5)
        tref = weakref.ref(t)
        X = lm.lazy(torch.randn(2, 5, 5)) @ lm.lazy(t) @ lm.lazy(t.mT.contiguous())
        X.to_dense()
        del X, t
        assert tref() is None
    finally:
        gc.enable()


def test_the_cache_is_bounded(gen):
    A = lm.lazy(randn(gen, 4, 6))
    batch = lm.lazy(randn(gen, 3, 5, 4))
    others = [lm.lazy(randn(gen, 6, 4)) for _ in range(MAX_PRODUCTS_PER_LEAF + 3)]
    for B in others:  # kept alive: a product is dropped when a leaf it reads is freed
        (batch @ A @ B).to_dense()
    assert len(A._cache["products"]) == MAX_PRODUCTS_PER_LEAF
    X, Y = lm.lazy(randn(gen, 40, 2)), lm.lazy(randn(gen, 2, 40))
    views = canonical(X @ Y).terms[0].factors
    store(views, (X @ Y).to_dense())  # 1600 elements, larger than the 80 it reads: not kept
    assert "products" not in X._cache

@settings(max_examples=60, deadline=None)
@given(heads=st.integers(1, 5), d=st.integers(1, 6), k=st.integers(1, 4), data=st.data())
def test_reuse_matches_dense_float64(heads, d, k, data):
    """Any two evaluations over the same leaves agree with eager torch, whatever was cached
    by the first (slices of the batch, the transposed chain, another head count)."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    A = torch.randn(d, 7, generator=g, dtype=torch.float64)
    B = torch.randn(7, d, generator=g, dtype=torch.float64)
    P = torch.randn(heads, k, d, generator=g, dtype=torch.float64)
    Q = torch.randn(heads, d, k, generator=g, dtype=torch.float64)
    LA, LB, LP, LQ = (lm.lazy(t) for t in (A, B, P, Q))
    first = (LP @ LA @ LB @ LQ).to_dense()
    assert_close(first, P @ A @ B @ Q)
    s = data.draw(st.integers(0, heads - 1))
    assert_close((LP[s:] @ LA @ LB @ LQ[s:]).to_dense(), (P @ A @ B @ Q)[s:])
    assert_close((LP[s] @ LA @ LB @ LQ[s]).to_dense(), P[s] @ A @ B @ Q[s])
    assert_close(lm.linalg.trace(LP @ LA @ LB @ LQ), torch.diagonal(P @ A @ B @ Q, dim1=-2, dim2=-1).sum(-1))
    assert_close(lm.linalg.matrix_norm(LA.mT @ LP[s:].mT), torch.linalg.matrix_norm(A.mT @ P[s:].mT))
    assert_close(lm.linalg.eigvals(LA.mT @ LP.mT @ LQ.mT @ LB.mT, full=True).abs().sum(-1),
                 torch.linalg.eigvals(A.mT @ P.mT @ Q.mT @ B.mT).abs().sum(-1), rtol=1e-6, atol=1e-8)


def _qk(gen):
    WE, WQ, WK = randn(gen, V, D), randn(gen, H, D, DH), randn(gen, H, D, DH)
    E = lm.lazy(WE, name="W_E")
    X = E @ lm.lazy(WQ, name="W_Q") @ lm.lazy(WK, name="W_K").mT @ E.mT
    return X, (WE, WQ, WK)


def test_network_steps_reuse_the_gram_across_calls(gen, network_steps):
    """The Gram ``W_E^T W_E`` of the norms of all QK circuits is formed once, then found by
    the trace of a slice and the norm of another slice."""
    X, (WE, WQ, WK) = _qk(gen)
    dense = WE @ WQ @ WK.mT @ WE.mT
    norm = lm.linalg.matrix_norm(X)
    tr = lm.linalg.trace(X[1:])
    norm2 = lm.linalg.matrix_norm(X[:2])
    assert [out for *_, out in network_steps].count((D, D)) == 1
    assert_close(norm, torch.linalg.matrix_norm(dense))
    assert_close(tr, torch.diagonal(dense[1:], dim1=-2, dim2=-1).sum(-1))
    assert_close(norm2, torch.linalg.matrix_norm(dense[:2]))
    report = X[1:].explain("trace")
    rows = [r for r in report.rows if r.op == "W_E.T @ W_E: cached"]
    assert len(rows) == 1 and rows[0].flops == 0


def test_network_steps_notice_in_place_edits(gen, network_steps):
    X, (WE, WQ, WK) = _qk(gen)
    lm.linalg.matrix_norm(X)
    WE.mul_(0.5)
    network_steps.clear()
    tr = lm.linalg.trace(X[1:])
    assert [out for *_, out in network_steps].count((D, D)) == 1
    assert_close(tr, torch.diagonal((WE @ WQ @ WK.mT @ WE.mT)[1:], dim1=-2, dim2=-1).sum(-1))


def test_a_result_never_aliases_the_cache(gen):
    """``(W_U @ W_E).to_dense()`` is found in the cache; writing into it must not change what
    later evaluations read."""
    WE, WU, WV, WO = _weights(gen)
    E, U, Vw, O = (lm.lazy(t) for t in (WE, WU, WV, WO))
    (O @ U @ E @ Vw).to_dense()
    with TorchCalls() as calls:
        mine = (U @ E).to_dense()
    assert _shared_count(calls) == 0  # read from the cache
    mine.zero_()
    assert_close((O @ U @ E @ Vw)[2:].to_dense(), (WO @ WU @ WE @ WV)[2:])
