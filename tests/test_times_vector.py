"""``X @ v`` and ``v @ X`` for a vector ``v``: the vector joins the product of ``X``'s form as one
more operand (no node for it), or, for other forms and over budget, the general evaluation.
Checked against eager torch in float64: random chains of leaf views (transposed, sliced,
scaled, batched, broadcast), sums, gradients through ``v`` and the leaves, in-place edits of a
leaf or of ``v`` between calls, and the errors of a mismatched vector."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import execute

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def forms(draw, grad=False):
    """``(X, D, leaves)``: a product of one to four leaf views (some transposed, some batched or
    broadcast), maybe scaled, row-sliced or summed with itself scaled, with ``D`` its value in
    float64 torch and ``leaves`` its tensors (requiring grad when ``grad``)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(1, 4))
    dims = [draw(st.integers(1, 5)) for _ in range(n + 1)]
    batch = draw(st.sampled_from([(), (2,), (3, 1)]))
    X = D = None
    leaves = []
    for i in range(n):
        own = batch[len(batch) - draw(st.integers(0, len(batch))):]
        transposed = draw(st.booleans())
        t = randn(g, *own, *((dims[i + 1], dims[i]) if transposed else (dims[i], dims[i + 1])))
        t.requires_grad_(grad)
        leaves.append(t)
        x, d = (lm.lazy(t).mT, t.mT) if transposed else (lm.lazy(t), t)
        X, D = (x, d) if X is None else (X @ x, D @ d)
    kind = draw(st.sampled_from(["plain", "scaled", "tensor scalar", "rows", "sum"]))
    if kind == "scaled":
        X, D = -2.5 * X, -2.5 * D
    elif kind == "tensor scalar":
        k = torch.tensor(0.75, dtype=torch.float64)
        X, D = X * k, D * k
    elif kind == "rows" and X.shape[-2] > 1:
        X, D = X[..., 1:, :], D[..., 1:, :]
    elif kind == "sum":
        X, D = X + 3.0 * X, D + 3.0 * D
    return X, D, leaves


@SETTINGS
@given(forms(), st.integers(0, 2**31 - 1))
def test_vector_products_match_torch(case, seed):
    X, D, _ = case
    g = torch.Generator().manual_seed(seed)
    v, u = randn(g, X.shape[-1]), randn(g, X.shape[-2])
    assert_close(X @ v, D @ v)
    assert_close(u @ X, u @ D)
    assert_close(torch.matmul(X, v), D @ v)


@SETTINGS
@given(forms(grad=True), st.integers(0, 2**31 - 1))
def test_gradients_reach_the_vector_and_the_leaves(case, seed):
    X, D, leaves = case
    g = torch.Generator().manual_seed(seed)
    v = randn(g, X.shape[-1]).requires_grad_(True)
    w = randn(g, *X.shape[:-1])
    got = torch.autograd.grad((X @ v * w).sum(), [v, *leaves], allow_unused=True)
    want = torch.autograd.grad((D @ v * w).sum(), [v, *leaves], allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b)


def test_in_place_edits_of_a_leaf_or_the_vector_are_seen(gen):
    a, b = randn(gen, 6, 4), randn(gen, 4, 5)
    v = randn(gen, 5)
    X = lm.lazy(a) @ lm.lazy(b)
    assert_close(X @ v, a @ b @ v)
    a.mul_(-3.0)
    v.add_(1.0)
    assert_close(X @ v, a @ b @ v)
    b[0].zero_()
    assert_close(v[:6] @ X.mT, v[:6] @ (a @ b).mT)


def test_a_product_of_leaves_times_a_vector_builds_no_node(gen, monkeypatch):
    """The vector joins the chain as an operand: no node is built for it or for the product,
    and the products run from the vector's end (matrix-vector products on v itself)."""
    from lazymat import expr as E

    ts = [randn(gen, 8, 8) for _ in range(3)]
    X = lm.lazy(ts[0]) @ lm.lazy(ts[1]) @ lm.lazy(ts[2])
    v = randn(gen, 8)
    built = []
    real = E._new_node
    monkeypatch.setattr(E, "_new_node", lambda *args: built.append(args[0]) or real(*args))
    with TorchCalls() as calls:
        out = X @ v
    assert built == []
    assert [s[-1] for s in calls.inputs("matmul")] == [(8,)] * 3  # v itself, no column copy
    assert_close(out, ts[0] @ (ts[1] @ (ts[2] @ v)))


def test_over_budget_the_vector_product_is_sliced_like_any_evaluation(gen, block_counts):
    """A chain whose intermediates exceed the budget takes the general evaluation, which slices
    it into blocks that fit (here blocks of the batch), and gives the same values."""
    h1, h2 = randn(gen, 64, 32, 8), randn(gen, 64, 8, 32)
    v = randn(gen, 32)
    X = lm.lazy(h1) @ lm.lazy(h2)
    with lm.config(memory_budget=1024):  # h2 @ v over all 64 heads takes 4 KiB
        out = X @ v
    assert block_counts and block_counts[-1] > 1
    assert_close(out, h1 @ h2 @ v)
    block_counts.clear()
    assert_close(X @ v, h1 @ h2 @ v)
    assert block_counts == []


def test_vector_errors_name_the_shapes_and_dtypes(gen):
    X = lm.lazy(randn(gen, 3, 4)) @ lm.lazy(randn(gen, 4, 5))
    with pytest.raises(ValueError, match=r"inner dimensions differ, \(3, 5\) @ \(4, 1\)"):
        X @ randn(gen, 4)  # noqa: B018
    with pytest.raises(ValueError, match=r"inner dimensions differ, \(1, 5\) @ \(3, 5\)"):
        randn(gen, 5) @ X  # noqa: B018
    with pytest.raises(TypeError, match=r"dtypes differ, float64 \(3, 5\) vs float32 \(5, 1\)"):
        X @ torch.ones(5)  # noqa: B018
    with pytest.raises(TypeError, match="int64"):
        X @ torch.ones(5, dtype=torch.int64)  # noqa: B018
    sym = lm.symbol("S", (3, 5), dtype=torch.float64)
    with pytest.raises(execute.SymbolHasNoData, match="'S'"):
        sym @ randn(gen, 5)  # noqa: B018
