"""A differentiated call reads and keeps no cached answer (lazymat.caching), also where it runs
its forward unrecorded (a memory budget's recompute) and on the routes that keep work on the
leaves (a shared outer leaf's QR, kept products): ``torch.autograd.gradcheck``, which perturbs
its inputs through ``.data`` (no version counter sees it), then differentiates every route."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import lazymat as lm
from lazymat import linalg as LA
from lazymat.caching import caches, uncached

OPS = {"svdvals": LA.svdvals, "matrix_norm": LA.matrix_norm, "nuc": lambda x: LA.matrix_norm(x, "nuc"),
       "trace": LA.trace}


@given(op=st.sampled_from(sorted(OPS)), budget=st.sampled_from([None, 10**6]), seed=st.integers(0, 2**16),
       heads=st.integers(1, 3))
@settings(max_examples=25, deadline=None)
def test_gradcheck_of_shared_leaf_products(op, budget, seed, heads):
    """``E @ W_a @ W_b^T @ E^T`` per head pair: ``E`` shared by the batch (its QR is kept on the
    leaf by an undifferentiated call), ``W`` batched."""
    gen = torch.Generator().manual_seed(seed)
    E = torch.randn(9, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    W = torch.randn(heads, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = OPS[op]

    def f(e, w):
        x = lm.lazy(e) @ lm.lazy(w)[:, None] @ lm.lazy(w)[None].mT @ lm.lazy(e).mT
        with lm.config(memory_budget=budget):
            return fn(x)

    assert torch.autograd.gradcheck(f, (E, W), raise_exception=False)


def test_nothing_is_kept_inside_uncached():
    gen = torch.Generator().manual_seed(0)
    E, W = torch.randn(40, 6, generator=gen), torch.randn(3, 6, 2, generator=gen)
    x = lm.lazy(E) @ lm.lazy(W)[:, None] @ lm.lazy(W)[None].mT @ lm.lazy(E).mT
    with uncached():
        assert not caches([E])
        inside = LA.svdvals(x)
    assert not any(k in x._cache for k in ("svd", "svdvals"))
    assert not any(isinstance(k, tuple) and k[:1] == ("qr",) for k in lm.lazy(E)._cache)
    outside = LA.svdvals(x)  # kept now
    assert "svdvals" in x._cache or "svd" in x._cache
    torch.testing.assert_close(inside, outside)


@pytest.mark.parametrize("grad", [True, False])
def test_caches_predicate(grad):
    t = torch.randn(2, requires_grad=True)
    with torch.set_grad_enabled(grad):
        assert caches([t]) is (not grad)
        assert caches([t.detach()])
