"""Products hash-consed in their left factor's own table (:func:`lazymat.expr.matmul`): one node per
live product whatever the order or thread it is built in, nothing kept alive by the table, the
table swept of dead references as a long-lived factor meets fresh ones, and the checks of a new
product (shapes, dtypes, devices) still made and named.

Values are compared against eager float64 torch."""

import gc
import random
import time
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qa_session7 import race

import lazymat as lm

from conftest import assert_close


def _product_refs(x) -> list:
    """The weak references ``x`` keeps to its products (none, one, or a table's)."""
    kept = x._products
    if kept is None:
        return []
    return [ref for uid, ref in kept.items() if uid is not None] if isinstance(kept, dict) else [kept]


def _live_products(x) -> int:
    return sum(1 for ref in _product_refs(x) if ref() is not None)


@st.composite
def product_plans(draw):
    """Square float64 leaves and pairs (i, j) to multiply (a leaf the left factor of several
    products, or of its own square), each pair built several times in a drawn order, some
    results dropped as soon as they are built."""
    n = draw(st.integers(2, 5))
    size = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    tensors = [torch.randn(size, size, generator=g, dtype=torch.float64) for _ in range(n)]
    index = st.integers(0, n - 1)
    pairs = draw(st.lists(st.tuples(index, index), min_size=1, max_size=10))
    order = draw(st.permutations(pairs * 2))
    dropped = draw(st.sets(st.tuples(index, index)))
    return tensors, order, dropped


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(product_plans())
def test_a_product_is_one_node_while_it_lives_in_any_build_order(plan):
    """``lazy(a) @ lazy(b)`` built again (any order, other products of the same factors built
    between) is the node built first while that lives, a new correct node once it died, and
    never another pair's product; products over those products too."""
    tensors, order, dropped = plan
    leaves = [lm.lazy(t) for t in tensors]
    kept: dict[tuple, object] = {}
    for i, j in order:
        x = leaves[i] @ leaves[j]
        if (i, j) in kept:
            assert x is kept[(i, j)]
        else:
            assert all(x is not y for y in kept.values())
        assert x.children == (leaves[i], leaves[j])
        assert_close(x.to_dense(), tensors[i] @ tensors[j])
        kept[(i, j)] = x
        if (i, j) in dropped:  # dies now: the next build of this pair makes a new node
            probe = weakref.ref(kept.pop((i, j)))
            del x
            assert probe() is None
    for (i, j), x in kept.items():
        assert leaves[i] @ leaves[j] is x
        assert x @ leaves[i] is x @ leaves[i]
        assert_close((x @ leaves[i]).to_dense(), tensors[i] @ tensors[j] @ tensors[i])


def test_a_dropped_chain_dies_with_its_references(gen):
    """The left factors' tables hold their products weakly: a fresh chain and its leaves die as
    soon as the user's references go (no cyclic GC needed), and the tensors with them."""
    ts = [torch.randn(4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    gc.disable()
    try:
        X = lm.lazy(ts[0]) @ lm.lazy(ts[1]) @ lm.lazy(ts[2])
        assert_close(X.to_dense(), ts[0] @ ts[1] @ ts[2])
        assert X.children[0]._products is not None  # the tables the fresh chain made
        probes = [weakref.ref(n) for n in lm.expr.postorder(X)]
        tensor_probe = weakref.ref(ts[0])
        del X
        assert all(p() is None for p in probes)
        del ts[0]
        assert tensor_probe() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kept_every", [0, 3])
def test_a_long_lived_factor_meeting_fresh_ones_keeps_a_bounded_table(gen, kept_every):
    """``W @ lazy(x)`` for many fresh ``x``: W's table is swept of the products that died, so it
    stays within a constant factor of the live ones, and the live ones are still found."""
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    W = lm.lazy(w)
    alive = []
    for i in range(3000):
        x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
        P = W @ lm.lazy(x)
        if kept_every and i % kept_every == 0:
            alive.append((P, x))
    del P
    live = len(alive)
    assert _live_products(W) == live
    assert len(_product_refs(W)) <= 2 * live + 34  # the live ones, twice over at most, and a few dead
    for P, x in alive[:: max(1, live // 20)]:
        assert W @ lm.lazy(x) is P
        assert_close(P.to_dense(), w @ x)


def test_threads_building_the_same_products_get_correct_nodes():
    """Threads building and dropping products of shared factors at once (a thread switch every
    microsecond) always get a product of the factors they asked for, with the right value."""
    gen = torch.Generator().manual_seed(5)
    ts = [torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(4)]
    leaves = [lm.lazy(t) for t in ts]
    errors: list[str] = []
    stop = time.monotonic() + 1.0

    def work(seed):
        pick = random.Random(seed)
        try:
            while time.monotonic() < stop:
                i, j = pick.randrange(4), pick.randrange(4)
                x = leaves[i] @ leaves[j]
                assert x.children == (leaves[i], leaves[j])
                y = x @ lm.lazy(ts[j].clone())  # a fresh right factor: W's table churns
                if pick.random() < 0.05:
                    assert_close(y.to_dense(), ts[i] @ ts[j] @ ts[j])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"{type(e).__name__}: {e}")

    race(work, 4)
    assert errors == []


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["inner", "dtype", "batch"]))
def test_a_factor_with_products_still_checks_a_new_one(m, k, n, fault):
    """A left factor that already has products (its table found, the new one not in it) checks
    the new product as a fresh one would, naming both shapes or dtypes."""
    g = torch.Generator().manual_seed(m * 100 + k * 10 + n)
    A = lm.lazy(torch.randn(2, m, k, generator=g, dtype=torch.float64))
    B = lm.lazy(torch.randn(k, n, generator=g, dtype=torch.float64))
    P = A @ B
    assert A._products is not None
    if fault == "inner":
        bad = lm.lazy(torch.randn(k + 1, n, generator=g, dtype=torch.float64))
        match = rf"inner dimensions differ, \(2, {m}, {k}\) @ \({k + 1}, {n}\)"
        error = ValueError
    elif fault == "dtype":
        bad = lm.lazy(torch.randn(k, n, generator=g, dtype=torch.float32))
        match = rf"dtypes differ, float64 \(2, {m}, {k}\) vs float32 \({k}, {n}\)"
        error = TypeError
    else:
        bad = lm.lazy(torch.randn(3, k, n, generator=g, dtype=torch.float64))
        match = r"batch dims \(2,\) and \(3,\) do not broadcast"
        error = ValueError
    with pytest.raises(error, match=match):
        A @ bad
    assert A @ B is P
