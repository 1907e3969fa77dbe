"""``memory_budget=`` on the linear algebra: blocks of the batch dims when the predicted peak is
over the budget, results equal to the unsliced call and to dense float64 torch."""

import inspect
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, randn

PUBLIC = ["svd", "svdvals", "eigvals", "eig", "matrix_norm", "matrix_rank", "pinv", "cond", "trace",
          "diagonal", "truncate", "make_even"]


@pytest.fixture
def blocks(monkeypatch):
    """Records the number of blocks of every sliced evaluation, and checks each block's
    predicted peak against the budget it ran under."""
    seen = []
    real_blocks, real_keys = lm.progress.blocks, LA.blocks._block_keys

    def keys(x, op, budget, route=None, result=None):
        out = real_keys(x, op, budget, route, result)
        for k in out if route is None else ():  # beside the batch's result, which the blocks write into
            assert block_need(x, x[k], op) <= budget, (k, block_need(x, x[k], op), budget)
        return out

    def record(items, total=None, **kw):
        seen.append(total)
        return real_blocks(items, total=total, **kw)

    monkeypatch.setattr(LA.blocks, "_block_keys", keys)
    monkeypatch.setattr(lm.progress, "blocks", record)
    return seen


def block_need(X, block, op: str) -> int:
    """The budget a ``block`` of ``X``'s batch runs in: its route's peak beside the batch's
    result, which each block is written into, and the shared leaves' QRs
    (:func:`lazymat.linalg.blocks._beside_blocks`)."""
    return LA.peaks._peak(block, op) + LA.blocks._beside_blocks(X, op)


def heads(gen, batch=(4, 3), vocab=150, d_model=12, d_head=3, shared=True):
    """``E Q_h K_h^T E^T`` over a batch of heads (150 x 150 each: the factored route)."""
    E = randn(gen, vocab, d_model)
    Q, K = randn(gen, *batch, d_model, d_head), randn(gen, *batch, d_model, d_head)
    if not shared:
        E = E.expand(*batch, vocab, d_model).clone()
    e = lm.lazy(E)
    return e @ lm.lazy(Q) @ lm.lazy(K).mT @ e.mT, E @ Q @ K.mT @ E.mT


def test_every_public_function_takes_a_keyword_only_budget():
    for name in PUBLIC:
        p = inspect.signature(getattr(LA, name)).parameters["memory_budget"]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is None, name


def fresh(shared=False):
    """The same heads, built again from new tensors (a new expression: no caches)."""
    return heads(torch.Generator().manual_seed(7), shared=shared)


FNS = {"svdvals": LA.svdvals, "svd": lambda x, **k: LA.svd(x, **k)[1], "trace": LA.trace,
       "diagonal": LA.diagonal, "matrix_norm": LA.matrix_norm}
DENSE = {"svdvals": lambda d: torch.linalg.svdvals(d)[..., :3],
         "svd": lambda d: torch.linalg.svdvals(d)[..., :3],
         "trace": lambda d: d.diagonal(dim1=-2, dim2=-1).sum(-1),
         "diagonal": lambda d: d.diagonal(dim1=-2, dim2=-1), "matrix_norm": torch.linalg.matrix_norm}


@pytest.mark.parametrize("op", ["svdvals", "svd", "matrix_norm"])  # trace/diagonal: the executor
def test_budgets_forcing_one_two_and_many_blocks(blocks, op, monkeypatch,  # slices them (test_budget_exec)
                                                 factored_route):
    X, D = fresh()
    whole, one = LA.peaks._peak(X, op), block_need(X, X[0:1, 0:1], op)
    assert one < whole
    dense = DENSE[op](D)
    unsliced = FNS[op](X)
    assert blocks == []
    assert_close(unsliced, dense, rtol=1e-9)
    for budget, count in ((whole, None), ((whole + one) // 2, 2), (one, 12)):  # blocks: 1, 2+, 12
        with lm.config(memory_budget=budget):  # a route that fits is taken before slicing
            refit = LA.peaks._peak(fresh()[0], op) <= budget
        n = len(blocks)
        got = FNS[op](fresh()[0], memory_budget=budget)
        if count is None or (count == 2 and refit):
            assert len(blocks) == n
        elif count == 2:
            assert 2 <= blocks[-1] < 12
        else:
            assert blocks[-1] == count
        assert_close(got, unsliced, rtol=1e-12)
        assert_close(got, dense, rtol=1e-9)
    factored_route.assert_forced(X)


def test_sliced_svd_equals_unsliced(gen, blocks):
    X, D = fresh(shared=True)
    U0, S0, V0 = LA.svd(X)
    X, _ = fresh(shared=True)
    U, S, Vh = LA.svd(X, memory_budget=block_need(X, X[0:1, 0:1], "svd"))
    assert blocks[-1] == 12
    assert_close(S, S0, rtol=1e-12)
    assert_close(U @ torch.diag_embed(S) @ Vh, D, rtol=1e-9)
    assert_close(U, U0, rtol=1e-9)
    assert torch.equal(LA.matrix_rank(X), torch.linalg.matrix_rank(D))
    assert_close(LA.pinv(X).to_dense(), torch.linalg.pinv(D), rtol=1e-7)


def test_config_budget_applies_too(gen, blocks):
    X, D = heads(gen, shared=False)
    with lm.config(memory_budget=block_need(X, X[0:1], "svdvals")):
        S = LA.svdvals(X)
    assert blocks and blocks[-1] > 1  # sliced (the fixture checks each block fits; under the
    # configured budget the route itself may slice a block, so blocks of two members can fit)
    assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)


def test_too_small_budget_names_the_minimum(gen):
    X, D = heads(gen, shared=False)
    with pytest.raises(lm.BudgetTooSmall, match=r"at least (\d+) bytes") as err:
        LA.svdvals(X, memory_budget="1KiB")
    assert "(4, 3, 150, 150)" in str(err.value) and "1024 bytes" in str(err.value)
    need = int(str(err.value).split("at least ")[1].split(" ")[0])
    assert need > 1024
    assert_close(LA.svdvals(X, memory_budget=need), torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
    with pytest.raises(lm.BudgetTooSmall):
        LA.svdvals(heads(gen, shared=False)[0], memory_budget=need - 1)


def test_small_matrices_cost_no_device_query(gen, monkeypatch):
    """No budget set and a small bound: the device's free memory is never read."""
    def boom(device):
        raise AssertionError("asked the device")
    monkeypatch.setattr(lm.settings, "available_memory", boom)
    X, D = heads(gen, vocab=40)
    assert_close(LA.svdvals(X), torch.linalg.svdvals(D)[..., :3], rtol=1e-9)


def test_gradients_flow_through_sliced_norm_and_trace(gen, blocks, monkeypatch, factored_route):
    A, B = randn(gen, 4, 150, 3).requires_grad_(), randn(gen, 4, 3, 150).requires_grad_()
    X = lm.lazy(A) @ lm.lazy(B)
    whole = lm.explain(X, "trace", memory_budget=2**50).planned.peak_bytes  # with einsum's copy of a leaf
    loss = LA.matrix_norm(X, memory_budget=block_need(X, X[0:1], "matrix_norm")).sum() \
        + LA.trace(X, memory_budget=whole).sum()
    assert len(blocks) == 1 and blocks[0] >= 2  # the norm sliced (by the executor), the trace whole
    got = torch.autograd.grad(loss, (A, B))
    D = A @ B
    want = torch.autograd.grad(torch.linalg.matrix_norm(D).sum() + D.diagonal(dim1=-2, dim2=-1).sum(), (A, B))
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, rtol=1e-9)
    factored_route.assert_forced(X)


def test_blocks_share_the_leaf_qr_and_its_cache(gen, blocks):
    """The tall E all heads share is factorised once for the whole batch, not per block, and
    stays cached on the leaf for the next call."""
    X, D = heads(gen)
    with TorchCalls() as calls:
        S = LA.svdvals(X, memory_budget=block_need(X, X[0:1, 0:1], "svdvals"))
    assert blocks[-1] >= 2
    assert calls.qr_inputs().count((150, 12)) == 1 and not any(s[-2:] == (150, 3) for s in calls.qr_inputs())
    assert_close(S, torch.linalg.svdvals(D)[..., :3], rtol=1e-9)
    X._cache.clear()
    with TorchCalls() as calls:
        again = LA.svdvals(X)
    assert (150, 12) not in calls.qr_inputs()
    assert_close(again, S, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(batch=st.lists(st.integers(1, 4), min_size=1, max_size=3), frac=st.floats(0.0, 1.0),
       op=st.sampled_from(["svdvals", "matrix_norm"]), seed=st.integers(0, 2**16))
def test_random_budgets_give_the_unsliced_answer(batch, frac, op, seed):
    gen = torch.Generator().manual_seed(seed)
    A, B = randn(gen, *batch, 140, 4), randn(gen, *batch, 4, 140)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    one = block_need(X, X[tuple(slice(0, 1) for _ in batch)], op)
    # a sliced network holds its whole (batch) output besides one block's work
    budget = int(one + frac * max(LA.peaks._peak(X, op) - one, 0)) + 8 * math.prod(batch)
    fn = {"svdvals": LA.svdvals, "matrix_norm": LA.matrix_norm, "trace": LA.trace}[op]
    want = {"svdvals": lambda d: torch.linalg.svdvals(d)[..., :4], "matrix_norm": torch.linalg.matrix_norm,
            "trace": lambda d: d.diagonal(dim1=-2, dim2=-1).sum(-1)}[op](D)
    assert_close(fn(X, memory_budget=budget), want, rtol=1e-9)


def test_fro_route_takes_the_route_that_fits(gen, monkeypatch):
    """The cheaper Frobenius route (here the closed network) is left for the split Gram route
    when only the latter's predicted peak fits the budget; the answer is unchanged."""
    A, B, C = randn(gen, 3, 300, 4), randn(gen, 3, 4, 4), randn(gen, 3, 4, 300)
    X, D = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C), A @ B @ C
    assert LA.norms.fro_route(X)[0] == "network"
    L, R = lm.factor(X)
    split_peak = LA.norms._split_gram_peak(L, R, 8)
    real = LA.norms._fro_costs  # the routes' (FLOPs, peak, kind) that fro_route weighs
    monkeypatch.setattr(LA.norms, "_fro_costs", lambda x: [
        (flops, 10 * split_peak if kind == "network" else peak, kind) for flops, peak, kind in real(x)])
    assert LA.norms.fro_route(X)[0] == "network"  # no budget set: both fit the default
    with lm.config(memory_budget=2 * split_peak):
        assert LA.norms.fro_route(X)[0] == "split"
    with lm.config(memory_budget=split_peak // 2):  # neither fits: the network, sliced
        assert LA.norms.fro_route(X)[0] == "network"
    X2 = lm.lazy(A.clone()) @ lm.lazy(B) @ lm.lazy(C)
    assert_close(LA.matrix_norm(X2, memory_budget=2 * split_peak), torch.linalg.matrix_norm(D), rtol=1e-10)


@pytest.mark.parametrize("ord", [1, -1, float("inf"), -float("inf")])
def test_abs_sum_norms_stream_within_the_budget(gen, blocks, ord):
    A, B = randn(gen, 2, 90, 3), randn(gen, 2, 3, 70)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    row = 2 * 70 * 2 * 8
    got = LA.matrix_norm(X, ord, memory_budget=10 * row)
    assert blocks[-1] > 1  # the 1-norms of the lines, streamed by lazymat.reduce
    assert_close(got, torch.linalg.matrix_norm(D, ord))
    with pytest.raises(lm.BudgetTooSmall) as err:
        LA.matrix_norm(X, ord, memory_budget=row // 10)
    assert_close(LA.matrix_norm(X, ord, memory_budget=err.value.minimum), torch.linalg.matrix_norm(D, ord))


@settings(max_examples=40, deadline=None)
@given(dims=st.lists(st.integers(1, 60), min_size=2, max_size=6), batch=st.sampled_from([(), (3,), (2, 2)]),
       terms=st.integers(1, 2), op=st.sampled_from(["svd", "svdvals", "matrix_norm", "trace", "diagonal"]))
def test_the_fast_path_bound_is_above_explains_peak(dims, batch, terms, op):
    """Work under the bound skips asking explain: the bound must hold for every route."""
    if op in ("trace", "diagonal"):
        dims = [*dims[:-1], dims[0]]
    x = None
    for k in range(terms):
        fs = [lm.symbol(f"F{k}{i}", (*(batch if i == 0 else ()), dims[i], dims[i + 1]), dtype=torch.float64)
              for i in range(len(dims) - 1)]
        term = fs[0]
        for f in fs[1:]:
            term = term @ f
        x = term if x is None else x + term
    assert LA.peaks._peak(x, op) <= LA.peaks._peak_bound(x, op)


def test_peaks_are_remembered_by_structure(monkeypatch):
    """A new expression of the same shapes (a new one every call) asks explain once."""
    import sys
    explain_module = sys.modules["lazymat.explain"]
    calls = []
    real = explain_module.explain
    monkeypatch.setattr(explain_module, "explain", lambda x, op, *a: calls.append(op) or real(x, op, *a))
    for _ in range(3):
        x = lm.lazy(torch.randn(3, 200, 5)) @ lm.lazy(torch.randn(5, 200))
        want = real(x, "svdvals").planned.peak_bytes
        assert LA.peaks._peak(x, "svdvals") == want
    assert len(calls) == 1
    with lm.config(memory_budget="1GiB"):  # a budget can change the route: asked again
        LA.peaks._peak(x, "svdvals")
    assert len(calls) == 2
