"""What a fresh batched chain keeps on its leaves (``product_cache.store_span``, called by
``execute.evaluate``'s fresh path without building views) is what its form's evaluation keeps
(``product_cache.store``): the same entries on the same leaves, found by a later chain over the
same unbatched leaves (whose values are eager torch's in float64), not read once a leaf it reads
is changed in place, dropped when such a leaf is freed, and never kept while autograd records."""

import functools
import gc
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import product_cache

from conftest import TorchCalls, assert_close, randn

# small shapes: every span kept, as a span worth keeping is (product_cache.MIN_KEPT_FLOPS)
pytestmark = pytest.mark.usefixtures("every_product_kept")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PRODUCTS = {"matmul", "einsum", "bmm", "mm"}


@st.composite
def batched_chains(draw):
    """``(batches, flips, dims, dtype, grad, seed)``: per factor its batch (``()``: unbatched; at
    least one batched and two unbatched) and whether it is read as ``lazy(t).mT``."""
    n = draw(st.integers(3, 5))
    batch = draw(st.sampled_from([(3,), (2, 1), (1, 2)]))
    batched = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 2))
    batches = [batch if i in batched else () for i in range(n)]
    flips = [draw(st.booleans()) for _ in range(n)]
    dims = draw(st.lists(st.integers(1, 5), min_size=n + 1, max_size=n + 1))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    return batches, flips, dims, dtype, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


def _tensors(gen, batches, flips, dims, dtype):
    """Each factor's stored tensor (transposed where it is read as ``.mT``)."""
    shapes = [(*b, dims[i + 1], dims[i]) if flip else (*b, dims[i], dims[i + 1])
              for i, (b, flip) in enumerate(zip(batches, flips, strict=True))]
    return [randn(gen, *shape, dtype=dtype) for shape in shapes]


def _chain(leaves, tensors, flips):
    """``(lazy chain, eager value)`` over ``leaves`` wrapping ``tensors``."""
    ops = [x.mT if flip else x for x, flip in zip(leaves, flips, strict=True)]
    values = [t.mT if flip else t for t, flip in zip(tensors, flips, strict=True)]
    return functools.reduce(lambda a, b: a @ b, ops), functools.reduce(torch.matmul, values)


def _kept(leaves):
    """Per leaf, its kept entries as (positions, view ops) of what each reads."""
    where = {x.uid: i for i, x in enumerate(leaves)}
    return [sorted(tuple((where[uid], ops) for uid, ops in key) for key in (product_cache._products(x) or {}))
            for x in leaves]


def _products_run(call):
    with TorchCalls() as calls:
        out = call()
    return out, sum(calls.count(name) for name in PRODUCTS)


@SETTINGS
@given(batched_chains())
def test_a_fresh_chain_keeps_its_forms_entries_and_a_later_chain_finds_them(case):
    batches, flips, dims, dtype, grad, seed = case
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for fresh in (True, False):
        tensors = [t.requires_grad_(grad) for t in _tensors(gen, batches, flips, dims, dtype)]
        leaves = [lm.lazy(t) for t in tensors]
        X, D = _chain(leaves, tensors, flips)
        if not fresh:
            X._cache["read"] = True  # as if evaluated before: through its form
        with torch.no_grad():
            out, formed = _products_run(X.to_dense)
        assert ("canon" in X._cache) is not fresh
        assert_close(out, D.detach())
        runs.append(_kept(leaves))
    assert runs[0] == runs[1]
    kept = any(runs[0])
    # a later chain over the same unbatched leaves, its batched ones new: finds what was kept
    new = _tensors(gen, batches, flips, dims, dtype)
    tensors = [new[i] if b else t for i, (b, t) in enumerate(zip(batches, tensors, strict=True))]
    leaves = [lm.lazy(t) for t in tensors]
    Y, E = _chain(leaves, tensors, flips)
    with torch.no_grad():
        out, later = _products_run(Y.to_dense)
    assert_close(out, E.detach())
    assert (later < formed) is kept
    if grad:  # recording: nothing kept, nothing read (the value would have no graph)
        Z, F = _chain(leaves, tensors, flips)
        Z.clear_cache()
        out = Z.to_dense()
        assert_close(out.detach(), F.detach())
        wrt = [t for t in tensors if t.requires_grad]  # the unbatched leaves (the batched ones are new)
        ours = torch.autograd.grad(out.abs().sum(), wrt)
        for g, e in zip(ours, torch.autograd.grad(F.abs().sum(), wrt), strict=True):
            assert_close(g, e)


@SETTINGS
@given(batched_chains())
def test_a_kept_entry_is_not_read_after_an_in_place_change_and_goes_with_its_leaves(case):
    batches, flips, dims, dtype, _, seed = case
    gen = torch.Generator().manual_seed(seed)
    tensors = _tensors(gen, batches, flips, dims, dtype)
    gc.collect()
    gc.disable()
    try:
        leaves = [lm.lazy(t) for t in tensors]
        X, _ = _chain(leaves, tensors, flips)
        X.to_dense()
        Y = None
        owners = [i for i, x in enumerate(leaves) if product_cache._products(x)]
        for i in owners:  # written in place: a later evaluation reads the new values
            (key,) = product_cache._products(leaves[i])
            last = max(j for j, x in enumerate(leaves) if x.uid in {uid for uid, _ in key})
            tensors[last].mul_(-2.0)
            Y, E = _chain(leaves, tensors, flips)
            Y.clear_cache()
            assert_close(Y.to_dense(), E)
        del X, Y
        for i in owners:  # freed: another leaf an entry reads dies, the entry goes with it
            (key,) = product_cache._products(leaves[i])
            other = max(j for j, x in enumerate(leaves) if x is not None and x.uid in {uid for uid, _ in key})
            ref = weakref.ref(product_cache._products(leaves[i])[key][1])
            leaves[other] = None
            assert not product_cache._products(leaves[i])
            assert ref() is None
    finally:
        gc.enable()
