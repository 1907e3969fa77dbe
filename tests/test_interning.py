"""Hash-consing and the canonical form over shared sub-expressions (DAGs, not trees).

Nodes are interned: an identical node built while one is alive is that node; a dead node's
entry never hands back a stale node or keeps a tensor alive. The canonical form reads every
node once however many parents it has; random DAGs with shared products, sums and leaves
are checked against eager float64 torch."""

import gc
import weakref

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import expr as lm_expr

from conftest import assert_close


def test_identical_nodes_are_one_while_alive(gen):
    A, B = torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen)
    X = lm.lazy(A) @ lm.lazy(B)
    assert lm.lazy(A) @ lm.lazy(B) is X
    c = torch.tensor(2.0)
    assert X * c is X * c
    assert X * c is not X * torch.tensor(2.0)  # tensor scalars are told apart by identity
    uid = X.uid
    del X
    assert (lm.lazy(A) @ lm.lazy(B)).uid != uid  # a new node once the old one is gone


def test_interning_keeps_no_tensor_alive(gen):
    A, B = torch.randn(3, 4, generator=gen), torch.randn(4, 2, generator=gen)
    refs = [weakref.ref(A), weakref.ref(B)]
    X = (lm.lazy(A) @ lm.lazy(B) * 2.0).mT
    X.to_dense()
    del X, A, B  # no reference cycle: freed at once, without the cyclic GC
    assert [r() for r in refs] == [None, None]


def test_a_reused_tensor_id_never_returns_a_stale_leaf():
    gc.disable()  # freed tensors' ids are reused at once by new ones of the same size
    try:
        for _ in range(200):
            t = torch.randn(2, 2)
            X = lm.lazy(t)
            assert X.tensor is t
            assert torch.equal(X.to_dense(), t)
            del X, t
    finally:
        gc.enable()


def test_the_table_of_dead_nodes_stays_bounded(gen):
    """A dead node's entry goes when the next node is built: building and dropping
    expressions leaves the table, and the objects the cyclic GC tracks, as they were."""
    t = torch.randn(2, 2, generator=gen)
    kept = [lm.lazy(torch.randn(2, 2, generator=gen)) for _ in range(10)]
    before = len(lm_expr._interned)
    for _ in range(5000):
        lm.lazy(t) @ lm.lazy(torch.randn(2, 2))  # every node dies at once
    gc.collect()
    tracked = len(gc.get_objects())
    for _ in range(5000):
        lm.lazy(t) @ lm.lazy(torch.randn(2, 2))
    lm.lazy(t)  # building a node drops the entries of the last ones
    assert len(lm_expr._interned) <= before + 1
    assert all(ref.key is key for key, ref in lm_expr._interned.items())
    assert len(gc.get_objects()) <= tracked + 100  # nothing per expression lingers
    assert all(k.tensor is not None for k in kept)


@st.composite
def dags(draw):
    """(lazy, dense) of a random DAG over square n x n float64 leaves: each step combines
    one or two earlier nodes (possibly the same one twice), so products, sums, scales and
    leaves get several parents; some interior nodes are evaluated first (their forms are
    then cached mid-DAG)."""
    n = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    pool = []
    for _ in range(draw(st.integers(1, 3))):
        t = torch.randn(n, n, generator=g, dtype=torch.float64)
        pool.append((lm.lazy(t), t))
    for _ in range(draw(st.integers(1, 8))):
        (x, a), (y, b) = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
        op = draw(st.sampled_from(["matmul", "matmul", "add", "scale", "T", "index"]))
        if op == "matmul":
            pool.append((x @ y, a @ b))
        elif op == "add":
            pool.append((x + y, a + b))
        elif op == "scale":
            k = draw(st.sampled_from([-2.0, 0.5, 3]))
            pool.append((k * x, k * a))
        elif op == "T":
            pool.append((x.mT, a.mT))
        else:
            rows = draw(st.lists(st.integers(0, n - 1), min_size=n, max_size=n))
            pool.append((x[rows] @ y, a[rows] @ b))  # keeps the pool square
        if draw(st.integers(0, 3)) == 0:
            pool[-1][0].to_dense()
    return pool[-1]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_match_torch(pair):
    X, D = pair
    assert_close(X.to_dense(), D, rtol=1e-9, atol=1e-9 * max(1.0, D.abs().max().item()))
