"""Caches: what invalidates them, what needs X.clear_cache(), and that none keeps data alive."""

import gc
import weakref

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm
from lazymat.expr import LeafChanged

from conftest import assert_close, randn

OPS = {
    "to_dense": lambda X: X.to_dense(),
    "svdvals": lambda X: X.svdvals(),
    "svd": lambda X: X.svd(),
    "plan": lambda X: X.plan(),
    "matrix_norm": lambda X: X.matrix_norm(),
    "nuc": lambda X: X.matrix_norm("nuc"),
    "trace": lambda X: X.trace(),
    "eigvals": lambda X: X.eigvals(),
    "factor": lambda X: X.factor(),
    "explain": lambda X: X.explain("svdvals"),
    "conj": lambda X: X.conj().to_dense(),
}

BUILDS = {
    "leaf": lambda t: lm.lazy(t),
    "product": lambda t: lm.lazy(t[:, :2]) @ lm.lazy(t[:2]),
    "sum": lambda t: lm.lazy(t) + 2.0 * lm.lazy(t).T,
    "cast": lambda t: lm.lazy(t).to(torch.float32),
    "index": lambda t: lm.lazy(t)[1:, 1:],
}


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("op", sorted(OPS))
def test_no_cache_keeps_the_tensor_alive(build, op):
    """``del X, t`` frees the tensor at once: no cache holds a reference back to its owner
    (a cycle would wait for the cyclic GC; on a GPU, empty_cache() would free nothing)."""
    gc.collect()
    gc.disable()
    try:
        t = torch.randn(6, 6, dtype=torch.float64)
        X = BUILDS[build](t)
        OPS[op](X)
        ref = weakref.ref(t)
        del X, t
        assert ref() is None
    finally:
        gc.enable()


def test_writes_through_torch_invalidate(gen):
    a, b = randn(gen, 5, 2), randn(gen, 2, 5)
    X = lm.lazy(a) @ lm.lazy(b)
    X.svdvals(), X.trace(), X.matrix_norm()
    a.mul_(2.0)  # bumps the version
    assert_close(X.svdvals(), torch.linalg.svdvals(a @ b)[:2])
    a.set_(randn(gen, 5, 2))  # new memory, same shape
    assert_close(X.matrix_norm(), torch.linalg.matrix_norm(a @ b))
    assert_close(X.trace(), torch.trace(a @ b))


def test_writes_torch_cannot_see_need_clear_cache(gen):
    """Writes through ``t.data`` or a shared numpy array bump no version: documented, and
    ``clear_cache()`` recomputes."""
    arr = np.random.default_rng(0).standard_normal((5, 5))
    t = torch.from_numpy(arr)
    X = lm.lazy(t) @ lm.lazy(t).T
    before = X.matrix_norm()
    arr *= 3.0
    t.data.mul_(2.0)
    assert torch.equal(X.matrix_norm(), before)  # stale, as documented
    X.clear_cache()
    assert_close(X.matrix_norm(), torch.linalg.matrix_norm(t @ t.T))
    assert_close(X.svdvals(), torch.linalg.svdvals(t @ t.T))


@pytest.mark.parametrize("resize", ["resize_", "set_"])
@pytest.mark.parametrize("op", ["to_dense", "svdvals", "trace", "matrix_norm", "row"])
def test_a_leaf_resized_in_place_is_an_error(gen, resize, op):
    t = randn(gen, 4, 4)
    X = lm.lazy(t) @ lm.lazy(randn(gen, 4, 4))
    X.svdvals(), X.trace(), X.matrix_norm()  # fill the caches first
    if resize == "resize_":
        t.resize_(3, 4)
    else:
        t.set_(randn(gen, 5, 4))
    run = {"to_dense": lambda: X.to_dense(), "svdvals": lambda: X.svdvals(),
           "trace": lambda: X.trace(), "matrix_norm": lambda: X.matrix_norm(),
           "row": lambda: X[0]}[op]
    with pytest.raises(LeafChanged, match=r"shape \(4, 4\) but now has shape \((3|5), 4\)"):
        run()


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions(), st.integers(0, 10), st.sampled_from(["mul_", "set_", "copy_"]))
def test_cached_results_follow_in_place_changes(pair, which, how):
    """Random expressions: after any in-place change through torch to one leaf, the cached
    norms and singular values are those of the new values (compared with dense torch)."""
    X, _ = pair
    X.matrix_norm(), X.svdvals()
    leaf = lm.expr.leaves(X)[which % len(lm.expr.leaves(X))]
    t = leaf.tensor
    new = torch.randn(t.shape, generator=torch.Generator().manual_seed(which), dtype=t.dtype)
    {"mul_": lambda: t.mul_(-2.0), "set_": lambda: t.set_(new), "copy_": lambda: t.copy_(new)}[how]()
    D = X.to_dense()
    assert_close(X.matrix_norm(), torch.linalg.matrix_norm(D))
    S = X.svdvals()
    assert_close(S, torch.linalg.svdvals(D)[..., : S.shape[-1]], rtol=1e-9)


def test_sparse_leaves_are_cached_by_version_and_shape(gen):
    s = randn(gen, 5, 5).to_sparse()
    b = randn(gen, 5, 3)
    X = lm.lazy(s) @ lm.lazy(b)
    assert_close(X.svdvals(), torch.linalg.svdvals(s.to_dense() @ b))
    s.mul_(3.0)
    assert_close(X.svdvals(), torch.linalg.svdvals(s.to_dense() @ b))
