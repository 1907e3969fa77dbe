"""The shortcuts of the per-call hot path give what the general paths give.

A product of leaves is read in one walk (``rewrite._leaf_product``), a form of distinct
leaves skips the sharing analysis, an evaluation skips the leaves' product cache while no
leaf holds a product, and ``lazy``/``@`` build their nodes without the generic constructor.
Each is checked on random bracketings (shared sub-products, repeated leaves, broadcast batch
dims) against eager torch in float64 and against the leaves read off the tree in order.
"""

import gc
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import layout, product_cache
from lazymat.plan import clear_plan_tables, plan_canon
from lazymat.rewrite import canonical

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def bracketed_products(draw):
    """``(X, D, leaves)``: a product over a chain of dims, bracketed at random, whose leaves
    repeat (the same leaf, or the same tensor under another leaf) and whose sub-products may
    be one node read twice; ``D`` is the same product in float64 torch, ``leaves`` the leaf
    nodes of the tree from left to right."""
    n = draw(st.integers(2, 7))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    square = draw(st.booleans())  # square factors let one leaf appear anywhere in the chain
    k = draw(st.integers(1, 4))
    dims = [k] * (n + 1) if square else [draw(st.integers(1, 4)) for _ in range(n + 1)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    made: dict[tuple, tuple] = {}
    items = []  # (lazy, dense, leaves) per factor
    for i in range(n):
        fb = tuple(1 if draw(st.booleans()) and draw(st.booleans()) else s
                   for s in batch[len(batch) - draw(st.integers(0, len(batch))):])
        shape = (*fb, dims[i], dims[i + 1])
        reuse = made.get(shape) if draw(st.booleans()) else None
        if reuse is None:
            t = torch.randn(*shape, generator=g, dtype=torch.float64)
            leaf = lm.lazy(t)
            made[shape] = (leaf, t)
        else:
            leaf, t = reuse
            if draw(st.booleans()):
                leaf = lm.lazy(t, name="again")  # the same tensor under another leaf
        items.append((leaf, t, [leaf]))
    while len(items) > 1:  # join two neighbours, at random, until one product is left
        i = draw(st.integers(0, len(items) - 2))
        (xa, da, la), (xb, db, lb) = items[i], items[i + 1]
        joined = (xa @ xb, da @ db, la + lb)
        items[i : i + 2] = [joined]
        if draw(st.integers(0, 3)) == 0:  # the same sub-product node read again, further right
            j = draw(st.integers(0, len(items) - 1))
            x, d, leaves = items[j]
            if x.shape[-1] == x.shape[-2] == k and square:
                items[j] = (x @ x, d @ d, leaves + leaves)
    X, D, leaves = items[0]
    return X, D, leaves


@SETTINGS
@given(bracketed_products())
def test_products_of_leaves_read_in_one_walk(case):
    X, D, leaves = case
    form = canonical(X)
    (term,) = form.terms
    assert [v.base for v in term.factors] == leaves  # the leaves, left to right
    assert all(v.ops == () and v.plain for v in term.factors)
    assert term.coef == 1.0 and term.scalars == ()
    assert tuple(term.shape) == tuple(D.shape) == tuple(form.shape)
    assert_close(X.to_dense(), D)


@SETTINGS
@given(bracketed_products(), st.sampled_from([2.0, -0.5]))
def test_the_walk_gives_the_general_passs_factors(case, k):
    """A scaled product is formed by the general pass (its root is no product): the same views
    of the same leaves, the coefficient apart."""
    X, D, _ = case
    general = canonical(X * k).terms[0]
    assert general.factors == canonical(X).terms[0].factors
    assert general.coef == k
    assert_close((X * k).to_dense(), k * D)


@SETTINGS
@given(bracketed_products(), st.integers(0, 2**31 - 1))
def test_repeated_leaves_and_products_evaluate_like_torch(case, seed):
    """Forms that repeat a leaf take the sharing route, those of distinct leaves skip it; both
    agree with torch, for the matrix and for a vector."""
    X, D, _ = case
    v = torch.randn(X.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert_close(X.to_dense(), D)
    assert_close(X @ v, D @ v)


@pytest.mark.parametrize("same_leaf", [True, False])
def test_a_repeated_sub_product_is_formed_once(gen, same_leaf):
    """``(A @ B) @ (A @ B)`` repeats its views: the sharing analysis runs (it is skipped only
    for distinct leaves) and ``A @ B`` is formed once; over four distinct leaves of the same
    tensors nothing is shared and each product is formed."""
    a, b = randn(gen, 5, 5), randn(gen, 5, 5)
    A, B = lm.lazy(a), lm.lazy(b)
    A2, B2 = (A, B) if same_leaf else (lm.lazy(a, name="a2"), lm.lazy(b, name="b2"))
    X = (A @ B) @ (A2 @ B2)
    with TorchCalls() as calls:
        out = X.to_dense()
    assert calls.count("matmul") == (2 if same_leaf else 3)
    assert_close(out, a @ b @ a @ b)


def test_the_product_cache_is_searched_again_once_a_leaf_holds_a_product(gen):
    """An unbatched evaluation finds a product that a batched one left on the leaves (the
    search is skipped only while no leaf holds any), and a freed owner stops counting.
    The owners are followed by identity, not counted: owners left by earlier tests can be
    freed by the cyclic GC at any time during this one."""
    A, B = lm.lazy(randn(gen, 8, 8192)), lm.lazy(randn(gen, 8192, 8))  # worth keeping: 2**20 FLOPs
    heads = lm.lazy(randn(gen, 4, 5, 8))
    (heads @ A @ B).to_dense()  # A @ B is formed once for the batch and kept on A
    mine = {r for r in product_cache._owners if r() is A._cache["products"]}  # (a leaf's products)
    assert len(mine) == 1
    assert "products" not in B._cache and "products" not in heads._cache
    form = canonical(A @ B)
    found, _, _ = product_cache.leaf_products(form.terms[0], plan_canon(form).terms[0])
    assert list(found) == [0]
    assert_close((A @ B).to_dense(), A.tensor @ B.tensor)
    del A, B, heads, form, found
    gc.collect()
    assert not mine & product_cache._owners


@SETTINGS
@given(bracketed_products(), st.sampled_from([1, 16, 64, 2**25]))
def test_a_plain_step_is_a_torch_matmul_of_the_operands_it_meets(case, threshold):
    """A plan marks a step plain from its shapes (:func:`lazymat.layout.is_plain_product`) and
    the executor then calls ``torch.matmul`` without looking at the tensors: the shapes the
    plan read must be those of the operands the step meets (broadcast batch dims included),
    so that a plain step is exactly what :func:`lazymat.layout.matmul` would have done. Small
    thresholds make the layout and einsum routes reachable on small factors."""
    X, D, _ = case
    with mock.patch.object(layout, "MIN_LAYOUT_MACS", threshold):
        clear_plan_tables()
        X.clear_cache()
        (term,) = canonical(X).terms
        plan = plan_canon(canonical(X)).terms[0]
        values = [v.base.tensor for v in term.factors]
        for (a, b), plain in zip(plan.program, plan.plain, strict=True):
            x, y = values[a], values[b]
            assert plain == layout.is_plain_product(tuple(x.shape), tuple(y.shape))
            out = layout.matmul(x, y)
            if plain:
                want = torch.matmul(x, y)
                assert torch.equal(out, want) and out.stride() == want.stride()
            values.append(out)
        assert_close(X.to_dense(), D)
    X.clear_cache()  # no plan made under the patched threshold outlives the test
    clear_plan_tables()


@pytest.mark.parametrize("dtype", sorted({d for d in vars(torch).values() if isinstance(d, torch.dtype)},
                                         key=str))
def test_lazy_accepts_exactly_the_floating_and_complex_dtypes(dtype):
    try:
        t = torch.empty(2, 3, dtype=dtype, device="meta")
    except (RuntimeError, NotImplementedError):
        pytest.skip(f"torch makes no {dtype} tensor here")
    if dtype.is_floating_point or dtype.is_complex:
        assert lm.lazy(t).dtype == dtype
    else:
        with pytest.raises(TypeError, match=str(dtype).replace("torch.", "")):
            lm.lazy(t)


def test_small_evaluations_never_ask_the_device_for_free_memory(monkeypatch):
    """Reading free memory costs a system call (``/proc/meminfo``): an evaluation whose work is
    small fits without it, matrix and ``@ v`` alike, while one whose work is large still asks."""
    from lazymat import execute
    from lazymat import settings as lm_settings

    asked = []

    def available(device):
        asked.append(device)
        return 2**30

    monkeypatch.setattr(lm_settings, "available_memory", available)
    monkeypatch.setattr(execute, "_device_budgets", {})
    g = torch.Generator().manual_seed(0)
    A, B, C = (torch.randn(16, 16, generator=g, dtype=torch.float64) for _ in range(3))
    v = torch.randn(16, generator=g, dtype=torch.float64)
    assert_close((lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)).to_dense(), A @ B @ C)
    assert_close(lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) @ v, A @ (B @ (C @ v)))
    assert asked == []
    n = 1 + int((lm_settings.ALWAYS_FITS / 8) ** 0.5)  # an n x n float64 term is over ALWAYS_FITS
    L, R, L2, R2 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(n, 2), (2, n)] * 2)
    X = lm.lazy(L) @ lm.lazy(R) + lm.lazy(L2) @ lm.lazy(R2)  # a term is held while the other runs
    assert_close(X.to_dense(), L @ R + L2 @ R2)
    assert asked, "an evaluation with work over ALWAYS_FITS must read the device's free memory"


def test_node_types_keep_attribute_loads_specialisable():
    """No node type answers missing attributes with ``__getattr__`` (CPython would then load
    every ``node.shape``/``node.uid`` through the generic path): tensor methods are class
    attributes that route (``X.neg()``) or raise naming the dense size, and Python's own
    messages name ``Expr``, not a node class."""
    from lazymat import expr as E

    types = [E.Expr, *E._node_types()]
    assert all("__getattr__" not in vars(k) and k.__getattribute__ is object.__getattribute__
               for k in types)
    assert {k.__name__ for k in types} == {"Expr"} and "MatMul" in {k.__qualname__ for k in types}
    g = torch.Generator().manual_seed(0)
    a, b = randn(g, 3, 4), randn(g, 4, 2)
    X = lm.lazy(a) @ lm.lazy(b)
    assert_close(X.neg().to_dense(), -(a @ b))
    assert_close(X.mm(torch.eye(2, dtype=torch.float64)).to_dense(), a @ b)
    with pytest.raises(TypeError, match=r"Tensor\.cumsum .*\(3, 2\).*6 entries"):
        X.cumsum(0)
    assert not hasattr(X, "cumsum") and not hasattr(lm.Expr, "cumsum")
    assert "cumsum" not in dir(X) and "neg" in dir(X) and "shape" in dir(X)
    with pytest.raises(AttributeError, match="'Expr' object has no attribute 'no_such_thing'"):
        X.no_such_thing  # noqa: B018


@st.composite
def unbatched_chains(draw):
    """``(tensors, D)``: 2 to 7 float64 matrices along a chain of dims (0 included) and their
    product in torch."""
    n = draw(st.integers(2, 7))
    dims = [draw(st.integers(0, 6)) for _ in range(n + 1)]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tensors = [torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64) for i in range(n)]
    D = tensors[0]
    for t in tensors[1:]:
        D = D @ t
    return tensors, D


def _chain(tensors):
    X = lm.lazy(tensors[0])
    for t in tensors[1:]:
        X = X @ lm.lazy(t)
    return X


@SETTINGS
@given(unbatched_chains())
def test_a_chains_work_bytes_are_its_forms(case):
    """A fresh product of leaves is checked against the budget by its chain plan's
    ``work_bytes``: the same bytes as the plan of its form (``evaluation_bytes``)."""
    tensors, _ = case
    X = _chain(tensors)
    chain = plan_canon(canonical(X)).terms[0]
    assert chain.work_bytes == plan_canon(canonical(X)).work_bytes
    assert chain.work_bytes <= chain.peak_bytes


@SETTINGS
@given(unbatched_chains(), st.integers(0, 2**31 - 1))
def test_a_fresh_product_of_leaves_builds_no_form(case, seed):
    """A fresh product of distinct data leaves is evaluated (matrix or ``@ v``) straight from its
    leaves: no form is cached on it, and the values are torch's. Evaluated again, it makes its
    form (later evaluations read it): the same values."""
    tensors, D = case
    v = torch.randn(D.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for first in ("matrix", "vector"):
        X = _chain(tensors)
        X.clear_cache()  # fresh, even where hash-consing handed back the node of the last round
        assert_close(X.to_dense() if first == "matrix" else X @ v, D if first == "matrix" else D @ v)
        assert "canon" not in X._cache
        assert_close(X @ v, D @ v)
        assert "canon" in X._cache
        assert_close(X.to_dense(), D)


@pytest.mark.usefixtures("every_product_kept_here")  # 6x6 @ 6x6 kept
def test_fresh_products_that_share_or_overflow_take_the_general_path(gen):
    """Repeated leaves (sharing), a leaf holding a product, and a budget the work exceeds (sliced)
    go through the form; a batch does not (its batch-shared step is kept on the leaves as the
    form's evaluation keeps it, and then found there)."""
    a, b = randn(gen, 6, 6), randn(gen, 6, 6)
    A, B = lm.lazy(a), lm.lazy(b)
    X = A @ B @ A
    assert_close(X.to_dense(), a @ b @ a)
    assert "canon" in X._cache
    h = randn(gen, 4, 5, 6)
    X = lm.lazy(h) @ A @ B
    assert_close(X.to_dense(), h @ (a @ b))  # A @ B kept on A
    assert "canon" not in X._cache
    X = A @ B
    assert_close(X.to_dense(), a @ b)
    assert "canon" in X._cache
    p, q, r = randn(gen, 64, 64), randn(gen, 64, 64), randn(gen, 64, 64)
    X = lm.lazy(p) @ lm.lazy(q) @ lm.lazy(r)
    assert_close(X.to_dense(memory_budget=4096), p @ q @ r)  # a 32 KiB intermediate: in blocks
    assert "canon" in X._cache
