"""The node table and node caches of :mod:`lazymat.expr`: interning keys as cheap as each node
type allows (a product by its children's uids, a wrapped tensor by its id), and caches made on a
node's first use, each node's own, that follow in-place edits of the leaves.

Values are checked against eager float64 torch recomputed from the tensors as they are now."""

import gc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.expr import LeafChanged

from conftest import assert_close, randn


def test_a_wrapped_tensor_is_one_leaf_per_name(gen):
    t = randn(gen, 3, 3)
    assert lm.lazy(t) is lm.lazy(t)
    assert lm.lazy(t, name="W") is lm.lazy(t, name="W")
    assert lm.lazy(t, name="W") is not lm.lazy(t)
    assert lm.lazy(t, name="W") is not lm.lazy(t, name="V")


def test_a_tensor_whose_data_changed_dtype_gets_a_new_leaf(gen):
    """A leaf is keyed by its tensor's id; a tensor given new data of another dtype through
    ``.data`` is wrapped anew (the old leaf keeps its dtype), and the old leaf's death leaves the
    new leaf's entry in place."""
    t = randn(gen, 3, 3, dtype=torch.float32)
    X = lm.lazy(t)
    t.data = randn(gen, 3, 3)
    Y = lm.lazy(t)
    assert Y is not X and X.dtype == torch.float32 and Y.dtype == torch.float64
    assert_close(Y.to_dense(), t)
    assert_close((Y @ Y).to_dense(), t @ t)
    del X
    gc.collect()
    lm.lazy(randn(gen, 2, 2))  # building a node drops the entries of the nodes that died
    assert lm.lazy(t) is Y


def test_nodes_over_the_same_children_are_told_apart_by_type(gen):
    a, b = randn(gen, 3, 3), randn(gen, 3, 3)
    A, B = lm.lazy(a), lm.lazy(b)
    nodes = [A @ B, B @ A, A + B, B + A, A.mT, B.mT, (A @ B).mT, 2.0 * A, A[1:], A.to(torch.float32)]
    dense = [a @ b, b @ a, a + b, b + a, a.mT, b.mT, (a @ b).mT, 2.0 * a, a[1:], a]
    assert len({id(x) for x in nodes}) == len(nodes)
    for x, d in zip(nodes, dense, strict=True):
        assert_close(x.to_dense(), d, rtol=1e-6)
    assert A @ B is nodes[0] and A + B is nodes[2] and A.mT is nodes[4]


def test_a_node_that_keeps_nothing_holds_no_cache(gen):
    """Caches are made on first use: evaluating a fresh product once leaves its inner nodes and
    leaves without one; ``clear_cache`` empties what there is and makes nothing."""
    ts = [randn(gen, 4, 4) for _ in range(3)]
    A, B, C = (lm.lazy(t) for t in ts)
    inner = A @ B
    X = inner @ C
    assert_close(X.to_dense(), ts[0] @ ts[1] @ ts[2])
    assert all(n._cache_dict is None for n in (A, B, C, inner))
    X.to_dense()  # the second evaluation keeps the form on the root
    assert "canon" in X._cache
    X.clear_cache()
    assert not X._cache and all(n._cache_dict is None for n in (A, B, C, inner))


@st.composite
def expressions_over_shared_leaves(draw):
    """Float64 leaves (square n x n, maybe batched) and several expressions over them."""
    n = draw(st.integers(1, 5))
    batch = draw(st.sampled_from([(), (2,)]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tensors = [torch.randn(*(batch if draw(st.booleans()) else ()), n, n, generator=g, dtype=torch.float64)
               for _ in range(draw(st.integers(2, 4)))]
    exprs = []
    for _ in range(draw(st.integers(2, 4))):
        picks = draw(st.lists(st.integers(0, len(tensors) - 1), min_size=1, max_size=4))
        kind = draw(st.sampled_from(["chain", "chain", "sum", "scaled", "transposed"]))
        exprs.append((kind, picks))
    edit = draw(st.sampled_from(["mul_", "add_", "copy_"]))
    return tensors, exprs, draw(st.integers(0, len(tensors) - 1)), edit


def _build(kind, picks, tensors):
    """The lazy expression and a function giving its dense value from the tensors as they are."""
    def dense():
        out = tensors[picks[0]]
        for i in picks[1:]:
            out = out @ tensors[i]
        if kind == "sum":
            return out + tensors[picks[0]]
        if kind == "scaled":
            return -0.5 * out
        return out.mT if kind == "transposed" else out

    x = lm.lazy(tensors[picks[0]])
    for i in picks[1:]:
        x = x @ lm.lazy(tensors[i])
    if kind == "sum":
        x = x + lm.lazy(tensors[picks[0]])
    elif kind == "scaled":
        x = -0.5 * x
    elif kind == "transposed":
        x = x.mT
    return x, dense


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions_over_shared_leaves())
def test_cached_results_follow_in_place_edits(case):
    """Expressions over shared leaves, each evaluated enough to cache its form, plan, norm and
    singular values on its own nodes, give the values of the tensors as they are after one leaf
    is edited in place (and never another expression's cached value)."""
    tensors, specs, edited, how = case
    built = [_build(kind, picks, tensors) for kind, picks in specs]
    for x, dense in built:
        for _ in range(2):
            assert_close(x.to_dense(), dense())
        assert_close(lm.linalg.matrix_norm(x), torch.linalg.matrix_norm(dense()))
        assert_close(lm.linalg.svdvals(x)[..., :1], torch.linalg.svdvals(dense())[..., :1])
    t = tensors[edited]
    with torch.no_grad():
        if how == "mul_":
            t.mul_(-3.0)
        elif how == "add_":
            t.add_(1.5)
        else:
            t.copy_(torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(7)))
    for x, dense in built:
        assert_close(x.to_dense(), dense())
        assert_close(lm.linalg.matrix_norm(x), torch.linalg.matrix_norm(dense()))
        assert_close(lm.linalg.svdvals(x)[..., :1], torch.linalg.svdvals(dense())[..., :1])


@pytest.mark.parametrize("op", ["to_dense", "vector", "vector_left"])
@pytest.mark.parametrize("which", [0, 2])
def test_a_fresh_chain_over_a_leaf_resized_in_place_is_an_error(gen, op, which):
    """The first evaluation of a fresh product reads its tensors straight from the leaves; a
    tensor resized since it was wrapped is refused there too, naming both shapes."""
    ts = [randn(gen, 4, 4) for _ in range(3)]
    X = lm.lazy(ts[0]) @ lm.lazy(ts[1]) @ lm.lazy(ts[2])
    ts[which].resize_(3, 4)
    v = randn(gen, 4)
    run = {"to_dense": lambda: X.to_dense(), "vector": lambda: X @ v, "vector_left": lambda: v @ X}[op]
    with pytest.raises(LeafChanged, match=r"shape \(4, 4\) but now has shape \(3, 4\)"):
        run()
