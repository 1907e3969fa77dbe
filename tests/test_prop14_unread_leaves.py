"""A leaf that takes part in an expression gets a gradient, zeros where its contribution is
indexed away, as torch gives one on the formed matrix (lazymat/unread.py).

Found (prop14, session 14, hypothesis exploring test_qa_session8's vector norms): the
gradient of ``torch.linalg.vector_norm(cat([A, B], -1)[:, [0]])`` for ``B`` was None where
torch gives zeros: the canonical form selects from the cat's parts and never reads ``B``, so
``B`` dropped out of autograd's graph on every route (dense value, linalg, reductions)."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm

OPS = {
    "to_dense": lambda X: X.to_dense().sum() if isinstance(X, lm.Expr) else X.sum(),
    "vector_norm": lambda X: torch.linalg.vector_norm(X),
    "fro": lambda X: torch.linalg.matrix_norm(X),
    "svdvals": lambda X: torch.linalg.svdvals(X).sum(),
    "lm svdvals": lambda X: (lm.linalg.svdvals(X, full=True) if isinstance(X, lm.Expr)
                             else torch.linalg.svdvals(X)).sum(),
    "sum": lambda X: torch.sum(X, -1).sum(),
    "amax": lambda X: torch.amax(X, -1).sum(),
    "svd U": lambda X: torch.linalg.svd(X, full_matrices=False)[1].sum(),
}


def _grads(out: torch.Tensor, tensors: list) -> list:
    if not out.requires_grad:
        return [None] * len(tensors)
    return list(torch.autograd.grad(out, tensors, allow_unused=True))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), sizes=st.lists(st.integers(1, 3), min_size=2, max_size=3),
       product=st.booleans(), axis=st.sampled_from([-1, -2]), op=st.sampled_from(sorted(OPS)),
       pick=st.data(), grad_of=st.sampled_from(["all", "first", "rest"]))
@example(seed=0, sizes=[2, 1], product=False, axis=-1, op="vector_norm", pick=None, grad_of="rest")
def test_a_leaf_indexed_away_gets_zero_gradients_as_torch(seed, sizes, product, axis, op, pick, grad_of):
    """Property: a cat (of leaves, or of products) along rows or columns, indexed by a list or a
    slice of the cat's dim: every leaf's gradient through lazymat is torch's on the float64
    formed matrix, zeros for a part indexed away (not None), None only where torch's is."""
    gen = torch.Generator().manual_seed(seed)
    n = 3
    shapes = [(s, n) if axis == -2 else (n, s) for s in sizes]
    parts = [torch.randn(*sh, generator=gen, dtype=torch.float64) for sh in shapes]
    inner = ([torch.randn(sh[-1], sh[-1], generator=gen, dtype=torch.float64) for sh in shapes]
             if product else [])
    tensors = parts + inner
    wanted = {"all": tensors, "first": tensors[:1], "rest": tensors[1:]}[grad_of]
    for t in wanted:
        t.requires_grad_(True)
    total = sum(sizes)
    if pick is None:  # the found case: the first column of [A (3 x 2), B (3 x 1)]
        key = [0]
    else:
        key = pick.draw(st.one_of(st.lists(st.integers(0, total - 1), min_size=1, max_size=3),
                                  st.integers(0, total - 1).map(lambda i: slice(i, i + 1))))
    index = (slice(None), key) if axis == -1 else (key, slice(None))

    def build(wrap, cat):
        ops = [wrap(p) @ wrap(q) if product else wrap(p) for p, q in zip(parts, inner or parts, strict=True)]
        return cat(ops, axis)[index]

    X = build(lm.lazy, lm.cat)
    D = build(lambda t: t, torch.cat)
    if op.startswith("svd") and min(D.shape) == 0:
        return
    got = _grads(OPS[op](X), wanted)
    want = _grads(OPS[op](D), wanted)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None or not g.any()
        else:
            assert g is not None and g.shape == w.shape
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-7)


def test_a_leaf_read_keeps_its_gradient_and_no_graph_is_added_without_one():
    """Nothing is joined where every leaf is read, or no leaf requires grad, or gradients are
    off: the answer is the route's own tensor (no identity node on top)."""
    A = torch.randn(3, 2, dtype=torch.float64)
    B = torch.randn(3, 1, dtype=torch.float64)
    X = lm.cat([lm.lazy(A), lm.lazy(B)], -1)[:, [0]]
    assert not X.to_dense().requires_grad
    B.requires_grad_(True)
    with torch.no_grad():
        assert not X.to_dense().requires_grad
    out = X.to_dense()
    assert out.requires_grad and out.grad_fn is not None
    (g,) = torch.autograd.grad(out.sum(), [B])
    assert torch.equal(g, torch.zeros_like(B))
    Y = lm.lazy(A) @ lm.lazy(A.mT.contiguous())
    assert Y.to_dense().grad_fn is None


@pytest.mark.parametrize("call", [lambda X: torch.linalg.svd(X, full_matrices=False),
                                  lambda X: torch.max(X, -1)])
def test_tuple_answers_join_each_float_tensor(call):
    """A tuple answer (svd's triplets, max's values and indices) keeps its type; its float
    tensors carry the zero gradients, its integer ones stay integers."""
    A = torch.randn(3, 2, dtype=torch.float64)
    B = torch.randn(3, 1, dtype=torch.float64, requires_grad=True)
    X = lm.cat([lm.lazy(A), lm.lazy(B)], -1)[:, [0, 1]]
    out = call(X)
    want = call(torch.cat([A, B], -1)[:, [0, 1]])
    assert type(out) is type(want)
    for o in out:
        if o.is_floating_point():
            (g,) = torch.autograd.grad(o.sum(), [B], retain_graph=True)
            assert torch.equal(g, torch.zeros_like(B))
        else:
            assert not o.requires_grad
