"""Sliced evaluation forms the work its blocks share once.

When ``to_dense`` runs in blocks of rows, columns or batch entries, a product that reads no
sliced dim (``W_K.T @ W_E.T`` for row blocks of ``W_E @ W_Q @ W_K.T @ W_E.T``) is formed before
the blocks and held through them, when holding it fits the budget and takes fewer FLOPs than
forming it in every block. The FLOPs are counted as they run (torch's ``FlopCounterMode``: every
``mm``/``bmm``, a multiply-add counting 2) and compared with what ``slice_plan`` and ``explain``
report; values are compared with the unsliced evaluation and with dense float64 torch.
"""

import importlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import assert_close, chains, expressions
from torch.utils.flop_counter import FlopCounterMode

import lazymat as lm
from lazymat.rewrite import canonical

from conftest import TorchCalls

P = importlib.import_module("lazymat.plan")  # lm.plan is the function, not the module
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Products(list):
    """The operand shapes of the matmuls run; ``formed(a, b)`` counts the products of an
    ``a``-shaped and a ``b``-shaped matrix, also where run transposed (``(b^T @ a^T)^T``,
    :mod:`lazymat.layout`)."""

    def formed(self, a: tuple, b: tuple) -> int:
        return sum(1 for s in self if s in ((a, b), (b[::-1], a[::-1])))


def _run(X, budget: int) -> tuple[torch.Tensor, int, Products]:
    """``X.to_dense`` under ``budget``: the result, the matmul FLOPs run, the matmuls' operands."""
    with FlopCounterMode(display=False) as flops, TorchCalls() as calls:
        out = X.to_dense(memory_budget=budget)
    return out, flops.get_total_flops(), Products(calls.inputs("matmul"))


def _smallest_block(X) -> int:
    """The largest peak of one entry of ``X``, one in each run of rows (columns) reading the same
    parts of a ``cat``."""
    rows, cols = (P.block_kinds(X.shape[d], 1, P.dim_cuts(X, d)) for d in (X.ndim - 2, X.ndim - 1))
    first = tuple(slice(0, 1) for _ in X.shape[:-2])
    return max(X[(*first, slice(i, i + 1), slice(j, j + 1))].plan().peak_bytes for i in rows for j in cols)


def _shared_route_budget(X) -> int | None:
    """A budget under which the unsliced order's shared products, held, fit beside blocks of one
    row (None when there is one row, the rows share no work or the plan fits unsliced there)."""
    if X.shape[-2] < 2:
        return None
    c = canonical(X)
    plan = P.plan_canon(c)
    shared = P._shared_work(c, plan, {X.ndim - 2})
    if shared is None:
        return None
    block = shared.expr[P._block_key(X.ndim, {X.ndim - 2: (0, 1)})]
    budget = max(shared.forming_peak, shared.held_bytes + block.plan().peak_bytes)
    return budget if budget < plan.work_bytes else None


def _qk(V: int, D: int, H: int, V2: int | None = None):
    g = torch.Generator().manual_seed(0)
    E, Q, K = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(V, D), (D, H), (D, H)])
    E2 = E if V2 is None else torch.randn(V2, D, generator=g, dtype=torch.float64)
    X = lm.lazy(E, name="W_E") @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E2).mT
    return X, E @ Q @ K.mT @ E2.mT


def test_row_blocks_form_the_shared_product_once():
    """Row blocks of the QK circuit: ``W_K.T @ W_E.T`` (H x V) is formed once, each block runs
    ``(W_E[i:j] @ W_Q) @ shared``, and the FLOPs run equal the unsliced plan's and what
    ``slice_plan`` and ``explain`` report."""
    V, D, H = 300, 40, 6
    X, dense = _qk(V, D, H)
    budget = 20_000  # the H x V product (14 KiB) and blocks of a few rows
    sp = P.slice_plan(X, budget)
    assert [kind for *_, kind in sp.dims] == ["row"] and sp.slices > 2
    assert sp.shared and sp.held_bytes == H * V * 8 and sp.peak_bytes <= budget
    out, flops, shapes = _run(X, budget)
    assert_close(out, dense)
    assert_close(out, X.to_dense())
    assert shapes.formed((H, D), (D, V)) == 1
    assert flops == sp.flops == X.plan().flops
    report = lm.explain(X, memory_budget=budget)
    assert report.planned.flops == flops
    assert report.slicing[0].note == sp.note and "formed once" in sp.note
    assert "1 product, 14.1 KiB held) formed once" in str(report)


def test_column_blocks_form_the_left_product_once():
    """A QK circuit between a short and a long vocabulary: holding the right product (H x 400)
    does not fit, so the columns are sliced and the left product (40 x H) is formed once."""
    X, dense = _qk(40, 30, 4, V2=400)
    budget = 6000
    sp = P.slice_plan(X, budget)
    assert [kind for *_, kind in sp.dims] == ["column"]
    assert sp.shared and sp.held_bytes == 40 * 4 * 8
    out, flops, shapes = _run(X, budget)
    assert_close(out, dense)
    assert shapes.formed((40, 30), (30, 4)) == 1
    assert flops == sp.flops == X.plan().flops


def test_batch_blocks_form_the_unbatched_product_once():
    """``W_O[h] @ W_U @ W_E @ W_V[h]`` in blocks of heads: ``W_U @ W_E`` (no head dim) is formed
    once; the leaves require grad, so no product is found in the leaves' cache either."""
    g = torch.Generator().manual_seed(1)
    heads, H, D, dv = 8, 6, 40, 200
    WO, WU, WE, WV = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
                      for s in [(heads, H, D), (D, dv), (dv, D), (heads, D, H)])
    X = lm.lazy(WO) @ lm.lazy(WU) @ lm.lazy(WE) @ lm.lazy(WV)
    budget = X.plan().work_bytes - 1
    sp = P.slice_plan(X, budget)
    assert [kind for *_, kind in sp.dims] == ["batch"] and sp.slices >= 2 and sp.shared
    out, flops, shapes = _run(X, budget)
    assert_close(out, WO @ WU @ WE @ WV)
    assert shapes.formed((D, dv), (dv, D)) == 1
    assert flops == sp.flops == X.plan().flops
    out.sum().backward()  # autograd reaches the leaves through the held product
    assert WU.grad is not None and WU.grad.shape == WU.shape


def test_blocks_form_the_shared_work_again_when_holding_it_does_not_fit():
    """The H x V product takes 14 KiB; under 12,000 bytes every block forms its work again (the
    per-block route, chosen and said), and the FLOPs run are still the ones reported."""
    X, dense = _qk(300, 40, 6)
    budget = 12_000
    sp = P.slice_plan(X, budget)
    assert not sp.shared and sp.held_bytes == 0 and sp.added_flops > 0
    assert sp.note == "each block forms again the work the blocks share (holding it does not fit)"
    out, flops, _ = _run(X, budget)
    assert_close(out, dense)
    assert flops == sp.flops
    assert "(holding it does not fit)" in str(lm.explain(X, memory_budget=budget))


def test_a_block_order_holding_less_is_shared_when_the_unsliced_one_does_not_fit():
    """``F0 @ F1 @ F2 @ F3`` (dims 64, 32, 8, 32, 4) in row blocks under 716 bytes: the unsliced
    order shares ``F1 F2 F3`` (32 x 4, 1 KiB, does not fit); a block's own order shares
    ``F2 F3`` (8 x 4), formed once: fewer FLOPs than every block forming all its work."""
    g = torch.Generator().manual_seed(2)
    dims = [64, 32, 8, 32, 4]
    F = [torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64) for i in range(4)]
    X = lm.lazy(F[0])
    for f in F[1:]:
        X = X @ lm.lazy(f)
    budget = 716
    c = canonical(X)
    assert P.shared_spans(c, P.plan_canon(c), {0}) == ((0, 1, 3),)
    sp = P.slice_plan(X, budget)
    assert sp.shared == ((0, 2, 3),) and [kind for *_, kind in sp.dims] == ["row"]
    per_block = P._block_costs(X, 0, P._largest_block(X, 0, budget))[0]  # every block forming all its work
    assert sp.flops < per_block
    with TorchCalls() as calls:
        out = X.to_dense(memory_budget=budget)
    assert_close(out, torch.linalg.multi_dot(F))
    assert _run(X, budget)[1] == sp.flops
    assert calls.reading("matmul", F[2], F[3]) == 1  # F2 F3 formed once (blocks read F0 and F1)


def _budgets(X) -> list[int]:
    """Budgets forcing one block, about two, blocks around the shared work, and the smallest."""
    whole = X.plan().work_bytes
    smallest = _smallest_block(X) if X.numel() else 0
    out = {whole, max(whole // 2, smallest), smallest}
    shared = _shared_route_budget(X) if X.numel() else None
    if shared is not None:
        out.add(shared)
    return sorted(out, reverse=True)


@st.composite
def wide_chains(draw):
    """(lazy, dense) chains of 2..5 factors whose dims range over 1..32, on a batch of up to two
    dims that each factor carries or broadcasts; the leaves require grad (so that no product is
    found in the leaves' cache: every FLOP counted is run)."""
    n = draw(st.integers(2, 5))
    dims = [draw(st.sampled_from([1, 2, 3, 8, 16, 32])) for _ in range(n + 1)]
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lazy = dense = None
    for i in range(n):
        own = tuple(s if draw(st.booleans()) else 1 for s in batch)
        t = torch.randn(*own, dims[i], dims[i + 1], generator=g, dtype=torch.float64, requires_grad=True)
        lazy = lm.lazy(t) if lazy is None else lazy @ lm.lazy(t)
        dense = t if dense is None else dense @ t
    return lazy, dense


@st.composite
def small_chains(draw):
    """The property tests' chains (dims 1..5, leaves requiring grad)."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    m, n = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    return draw(chains(m, n, batch, torch.float64, []))


@SETTINGS
@given(st.one_of(wide_chains(), small_chains()))
def test_sliced_chains_run_the_reported_flops(pair):
    """Random (batched, broadcast) chains under budgets forcing 1, 2 and many blocks: the result
    equals the unsliced one and dense torch, the FLOPs run equal ``slice_plan``'s, the peak is
    within the budget, and where the unsliced order's shared products fit beside one-row blocks
    the sliced run takes no more FLOPs than the unsliced plan (each block re-forming them did)."""
    X, D = pair
    unsliced = X.to_dense()
    shared_budget = _shared_route_budget(X) if X.numel() else None
    for budget in _budgets(X):
        sp = P.slice_plan(X, budget)
        assert sp.peak_bytes <= budget or sp.slices == 1
        out, flops, _ = _run(X, budget)
        assert out.shape == D.shape
        assert_close(out, D.detach())
        assert_close(out, unsliced)
        assert flops == sp.flops
        if budget == shared_budget:
            assert sp.flops <= X.plan().flops, (sp, X.plan())


@SETTINGS
@given(expressions())
def test_sliced_expressions_equal_unsliced_and_torch(pair):
    """Random expressions (sums, nested sums, concatenations, casts, indexing) under budgets
    forcing 1, 2 and many blocks, and around the rows' shared work."""
    X, D = pair
    unsliced = X.to_dense()
    for budget in _budgets(X):
        sp = P.slice_plan(X, budget)
        assert sp.peak_bytes <= budget or sp.slices == 1
        out = X.to_dense(memory_budget=budget)
        assert out.shape == D.shape
        assert_close(out, D)
        assert_close(out, unsliced)


def test_sums_share_equal_products_across_terms():
    """``A @ B @ C + 2 * D @ B @ C`` (200x6, 6x40, 40x5) in row blocks: ``B @ C`` is one shared
    product for both terms, formed once."""
    g = torch.Generator().manual_seed(3)
    A, D = (torch.randn(200, 6, generator=g, dtype=torch.float64) for _ in range(2))
    B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in [(6, 40), (40, 5)])
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) + 2 * (lm.lazy(D) @ lm.lazy(B) @ lm.lazy(C))
    budget = X.plan().work_bytes // 3
    sp = P.slice_plan(X, budget)
    assert sp.shared == ((0, 1, 2), (1, 1, 2)) and sp.held_bytes == 6 * 5 * 8
    assert "(1 product, 240 B held) formed once" in sp.note
    out, _, shapes = _run(X, budget)
    assert_close(out, A @ B @ C + 2 * D @ B @ C)
    assert shapes.formed((6, 40), (40, 5)) == 1


def test_explicit_budget_reaches_the_blocks():
    """``to_dense(memory_budget=b)`` evaluates each block under ``b`` (less what is held), not
    under the configured default: a default far below ``b`` would slice every block again."""
    X, dense = _qk(300, 40, 6)
    budget = 20_000
    with lm.config(memory_budget=1):
        with pytest.raises(lm.BudgetTooSmall):
            X.to_dense()
        assert_close(X.to_dense(memory_budget=budget), dense)


def test_a_block_used_as_a_factor_is_formed_once():
    """``A @ (W1 @ W2 + W3 @ W4) @ C``: the sum (full rank, so a block of its own) is formed whole
    by any block of rows; sliced, it is formed once and held, not once per block."""
    g = torch.Generator().manual_seed(4)
    m = 40
    W1, W2, W3, W4, A, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in
                            [(m, 30), (30, m), (m, 30), (30, m), (200, m), (m, 200)])
    X = lm.lazy(A) @ (lm.lazy(W1) @ lm.lazy(W2) + lm.lazy(W3) @ lm.lazy(W4)) @ lm.lazy(C)
    budget = X.plan().work_bytes // 2
    sp = P.slice_plan(X, budget)
    assert sp.slices > 2 and sp.shared == ((0, 1, 1),) and sp.held_bytes == m * m * 8
    out, flops, shapes = _run(X, budget)
    assert_close(out, A @ (W1 @ W2 + W3 @ W4) @ C)
    assert shapes.formed((m, 30), (30, m)) == 2
    assert flops == sp.flops - m * m  # the plan counts the sum's addition, FlopCounterMode does not
