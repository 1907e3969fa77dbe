"""Evaluation under a memory budget: sliced results equal the unsliced ones and dense torch.

Budgets are chosen from the plan's own peak so that each random expression runs in 1 block,
in 2 or more, and in the smallest blocks there are; a budget below the smallest block raises
``BudgetTooSmall``. The predicted peak is checked against the peak RSS growth of a fresh
process.
"""

import json
import math
import subprocess
import sys
import textwrap
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import assert_close, chains, expressions

import lazymat as lm
from lazymat import linalg as LA
from lazymat.execute import _Memo, run_canon
from lazymat.network import Shared, closed_chain, schedule_cost, slice_network
from lazymat.plan import _needed_wholes, _repeated_spans, block_kinds, dim_cuts, slice_plan
from lazymat.rewrite import canonical

from conftest import TorchCalls

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _smallest_block(X) -> int:
    """Peak of evaluating one entry of ``X`` (the smallest block slicing can reach): the largest
    over its entries, one in each run of rows (columns) reading the same parts of a ``cat``."""
    rows, cols = (block_kinds(X.shape[d], 1, dim_cuts(X, d)) for d in (X.ndim - 2, X.ndim - 1))
    first = tuple(slice(0, 1) for _ in X.shape[:-2])
    return max(X[(*first, slice(i, i + 1), slice(j, j + 1))].plan().peak_bytes for i in rows for j in cols)


def _budgets(whole: int, smallest: int) -> list[int]:
    """One budget that fits unsliced, one that forces about two blocks, the smallest feasible."""
    return sorted({whole, max(whole // 2, smallest), smallest}, reverse=True)


@SETTINGS
@given(expressions())
def test_sliced_to_dense_equals_unsliced_and_torch(pair):
    X, D = pair
    unsliced = X.to_dense()
    whole = X.plan().work_bytes
    smallest = _smallest_block(X) if X.numel() else 0
    for budget in _budgets(whole, smallest):
        sliced = slice_plan(X, budget)
        assert sliced.peak_bytes <= budget or sliced.slices == 1
        if budget < whole:  # in blocks, or in one after forming the work blocks would share
            assert sliced.slices >= 2 or sliced.shared, (budget, whole, sliced)
        out = X.to_dense(memory_budget=budget)
        assert out.shape == D.shape
        assert_close(out, D)
        assert_close(out, unsliced)


@SETTINGS
@given(st.data())
def test_sliced_closed_networks_equal_torch(data):
    """trace, diagonal and the Frobenius norm (network route) of random batched chains, under
    budgets forcing 1 block, about 2, and the smallest blocks."""
    batch = tuple(data.draw(st.lists(st.integers(1, 3), max_size=2)))
    m = data.draw(st.integers(1, 5))
    X, D = data.draw(chains(m, m, batch, torch.float64))
    op = data.draw(st.sampled_from(["trace", "diagonal", "matrix_norm"]))
    factors = canonical(X).terms[0].factors
    if op == "matrix_norm":
        route = LA.norms.fro_route(X)
        if route[0] != "network":
            return
        net = route[1]
        expected = torch.linalg.matrix_norm(D)
    else:
        net = closed_chain(list(factors), op == "diagonal", 8, Shared())
        diag = torch.diagonal(D, dim1=-2, dim2=-1)
        expected = diag if op == "diagonal" else diag.sum(-1)
    whole = schedule_cost(net).peak_bytes
    smallest = schedule_cost(net, {c: 1 for c, n in net.sizes if n > 1}).peak_bytes
    if math.prod(n for _, n in net.sizes) > lm.settings.get("max_slices"):
        smallest = whole // 2  # blocks of 1 everywhere would take more slices than the bound allows
    fn = getattr(LA, op)
    for budget in _budgets(whole, smallest):
        cost = slice_network(net, budget)
        if cost is None:  # only where no slicing within the max_slices bound fits
            assert budget < whole and math.prod(n for _, n in net.sizes) > lm.settings.get("max_slices")
            continue
        assert cost.peak_bytes <= budget
        if budget < whole:  # sliced (possibly into one block, which keeps less), or reordered
            assert cost.blocks or cost.network.path != net.path
        X.clear_cache()
        # the network's own route, however small the matrix (not the dense one small ones take)
        with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
            try:
                with lm.config(memory_budget=budget):
                    out = fn(X)
            except lm.BudgetTooSmall as err:
                # the call plans its own network under the budget (fro_route and the order
                # depend on it) and counts its result: the minimum it names is within one
                # result of this network's, and then runs
                result = math.prod(expected.shape) * expected.element_size()
                assert budget < err.minimum <= budget + result, (budget, err.minimum, result)
                X.clear_cache()
                with lm.config(memory_budget=err.minimum):
                    out = fn(X)
        assert_close(out, expected)


def test_only_reused_sub_products_are_held(gen):
    """In a sum, a sub-product is kept to the end of the evaluation only if another term forms
    it again (the plan's peak frees every other intermediate after its last reader)."""
    A, B, C, D, E = (torch.randn(30, 30, generator=gen, dtype=torch.float64) for _ in range(5))
    a, b, c, d, e = map(lm.lazy, (A, B, C, D, E))
    for X, dense, kept in [(a @ b @ c + d @ e @ c, A @ B @ C + D @ E @ C, 0),
                           (a @ b @ c + a @ b @ d, A @ B @ C + A @ B @ D, 1)]:
        form = canonical(X)
        keep = _needed_wholes(list(form.terms)) | _repeated_spans(form)
        memo = _Memo(True, keep)
        with TorchCalls() as calls:
            assert_close(run_canon(form, memo), dense)
        assert len(memo.chains) == kept
        assert calls.count("matmul") == 4 - kept


def test_budget_too_small_names_the_minimum():
    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(4, 30, 20, generator=g, dtype=torch.float64) for _ in range(2))
    X = lm.lazy(A) @ lm.lazy(B).mT + lm.lazy(B) @ lm.lazy(A).mT
    need = _smallest_block(X)
    with pytest.raises(lm.BudgetTooSmall, match=f"at least {need} bytes"):
        X.to_dense(memory_budget=need - 1)
    assert_close(X.to_dense(memory_budget=need), A @ B.mT + B @ A.mT)
    Y = lm.lazy(A) @ lm.lazy(B).mT
    net = LA.norms.fro_route(Y @ Y.mT)
    assert net[0] == "network"
    with pytest.raises(lm.BudgetTooSmall, match="memory budget of 10 bytes") as err, \
            lm.config(memory_budget=10):
        LA.matrix_norm(Y @ Y.mT)
    assert (err.value.budget, err.value.device) == (10, torch.device("cpu")) and err.value.minimum > 10


def test_all_pairs_composition_is_sliced_without_added_work():
    """The acceptance workload's shape, small: ``||OV_i QK_j^T||_F`` for all pairs of heads,
    under a third of its unsliced peak: blocks of one side's heads (the other side's stack is
    formed once and held) or of the shared ``d_model`` index add no work, and the norms match
    the dense ones."""
    g = torch.Generator().manual_seed(1)
    layers, heads, D, Dh = 2, 3, 48, 8
    V, O, Q, K = (torch.randn(layers, heads, *s, generator=g, dtype=torch.float64) for s in
                  [(D, Dh), (Dh, D), (D, Dh), (D, Dh)])
    X = (lm.lazy(V) @ lm.lazy(O))[:, :, None, None] @ (lm.lazy(Q) @ lm.lazy(K).mT).mT
    net = next(route for _, _, route in LA.norms.fro_candidates(X) if route[0] == "network")[1]
    budget = schedule_cost(net).peak_bytes // 3
    cost = slice_network(net, budget)
    assert cost.slices >= 2 and cost.peak_bytes <= budget
    assert cost.flops - net.flops < 0.01 * net.flops
    with lm.config(memory_budget=budget):  # no other route fits: the network runs, sliced
        assert LA.norms.fro_route(X)[0] == "network"
        out = LA.matrix_norm(X)
    assert_close(out, torch.linalg.matrix_norm((V @ O)[:, :, None, None] @ (Q @ K.mT).mT))


def test_a_memory_limited_order_runs_when_it_adds_less_work():
    """tr(A0 A1 A2 A3 A4) whose cheapest order holds a 12 x 12 product: under 40% of its peak,
    opt_einsum's order under a memory limit, sliced, adds less work than slicing the cheapest."""
    g = torch.Generator().manual_seed(3)
    dims = [6, 4, 12, 6, 12, 6]
    A = [torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64) for i in range(5)]
    X = lm.lazy(A[0])
    for a in A[1:]:
        X = X @ a
    net = closed_chain(list(canonical(X).terms[0].factors), False, 8, Shared())
    budget = int(0.4 * schedule_cost(net).peak_bytes)
    cost = slice_network(net, budget)
    assert cost.network.path != net.path and cost.peak_bytes <= budget
    with lm.config(memory_budget=budget):
        assert_close(LA.trace(X), torch.linalg.multi_dot(A).trace())


def test_explain_reports_the_slicing():
    L, H, D, Dh = 4, 4, 256, 48  # d_head 48: the Gram network is the cheapest route
    V, O, Q, K = (lm.symbol(n, (L, H, *s)) for n, s in
                  [("V", (D, Dh)), ("O", (Dh, D)), ("Q", (D, Dh)), ("K", (D, Dh))])
    X = (V @ O)[:, :, None, None] @ (Q @ K.mT).mT
    route, net = LA.norms.fro_route(X)[:2]
    assert route == "network"
    budget = net.peak_bytes // 3
    report = lm.explain(X, "matrix_norm", memory_budget=budget)
    cost = slice_network(net, budget)
    assert [s.slices for s in report.slicing] == [cost.slices] and cost.slices >= 3
    assert report.planned.peak_bytes == cost.peak_bytes <= budget
    assert f"tr(X^H X): {cost.slices} slices over " in str(report)
    assert report.to_dict()["slicing"][0]["slices"] == cost.slices
    unbudgeted = lm.explain(X, "matrix_norm", memory_budget=2**50)
    assert unbudgeted.slicing[0].slices == 1
    assert unbudgeted.planned.peak_bytes == schedule_cost(net).peak_bytes
    # one product's only array is its result, which the budget does not count; a sum's terms are
    assert lm.explain(V @ O, "to_dense", memory_budget=1).slicing[0].slices == 1
    with pytest.raises(lm.BudgetTooSmall):
        lm.explain((V @ O) + (Q @ K.mT), "to_dense", memory_budget=1)


def test_interrupted_sliced_run_leaves_valid_caches(monkeypatch):
    """Ctrl-C between blocks: nothing partial is cached; the next run is right."""
    g = torch.Generator().manual_seed(2)
    E = torch.randn(40, 16, generator=g, dtype=torch.float64)
    W = torch.randn(6, 16, 16, generator=g, dtype=torch.float64)
    X = lm.lazy(E) @ lm.lazy(W) @ lm.lazy(E).mT
    net = LA.norms.fro_route(X)[1]
    from lazymat import execute

    real = execute.progress.blocks

    def interrupted(items, **kwargs):
        for k, item in enumerate(real(items, **kwargs)):
            if k == 1:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(execute.progress, "blocks", interrupted)
    with pytest.raises(KeyboardInterrupt), lm.config(memory_budget=net.peak_bytes // 2):
        LA.matrix_norm(X)
    monkeypatch.setattr(execute.progress, "blocks", real)
    dense = torch.linalg.matrix_norm(E @ W @ E.mT)
    with lm.config(memory_budget=net.peak_bytes // 2):
        assert_close(LA.matrix_norm(X), dense)
    assert_close(LA.matrix_norm(X), dense)


_MEASURE = textwrap.dedent("""
    import json, sys, torch
    import lazymat as lm
    from lazymat import linalg as LA
    from lazymat.network import slice_network
    torch.set_num_threads(1)
    L, H, D, Dh, budget = (int(a) for a in sys.argv[1:6])
    g = torch.Generator().manual_seed(0)
    V, O, Q, K = (lm.lazy(torch.randn(L, H, *s, generator=g)) for s in [(D, Dh), (Dh, D), (D, Dh), (D, Dh)])
    X = (V @ O)[:, :, None, None] @ (Q @ K.mT).mT
    route, net = LA.norms.fro_route(X)[:2]
    assert route == "network", route
    predicted = slice_network(net, budget).peak_bytes

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    with lm.config(memory_budget=budget):
        LA.matrix_norm(X)
    grown = status("VmHWM") - before
    print(json.dumps({"predicted": predicted, "measured": grown, "unsliced": net.peak_bytes}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("fraction", [1.0, 0.4])
def test_predicted_peak_matches_peak_rss_growth(fraction):
    """All-pairs composition of 8 x 8 heads, d_model 768, d_head 64 (the Gram network's route:
    two 144 MiB stacks): the predicted peak
    of the run (unsliced, and sliced to 40% of it) within 25% of the peak RSS growth of a fresh
    process (the peak is reset through ``/proc/self/clear_refs`` just before the run; CPU
    tensors of this size, blocks included, are mmapped by malloc and freed at once, so RSS
    follows them; below ~32 MiB glibc keeps freed blocks in its heap and RSS overstates)."""
    shape = (8, 8, 768, 64)
    probe = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, shape), str(2**50)],
                           capture_output=True, text=True, check=True)
    unsliced = json.loads(probe.stdout)["unsliced"]
    budget = int(unsliced * fraction)
    run = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, shape), str(budget)],
                         capture_output=True, text=True, check=True)
    r = json.loads(run.stdout)
    assert r["predicted"] <= budget
    assert abs(r["measured"] - r["predicted"]) <= 0.25 * r["predicted"], r


def test_cli_explain_memory_budget(capsys):
    from lazymat.cli import main

    expr = "(W_V @ W_O)[:, :, None, None] @ (W_Q @ W_K.T).T"
    assert main(["explain", expr, "--preset", "gpt2-small", "--op", "matrix_norm",
                 "--memory-budget", "300MiB"]) == 0
    out = capsys.readouterr().out
    assert "slices over" in out and "memory budget of 300 MiB" in out
    assert main(["explain", expr, "--preset", "gpt2-small", "--op", "matrix_norm",
                 "--memory-budget", "10B"]) == 2
    assert "memory budget of 10 bytes (10 B) on cpu is below" in capsys.readouterr().err


def test_explain_method_takes_the_budget_like_the_function():
    X = lm.symbol("A", (4, 64, 64)) @ lm.symbol("B", (4, 64, 64)) @ lm.symbol("C", (4, 64, 64))
    by_method = X.explain("to_dense", memory_budget="32KiB")
    by_function = lm.explain(X, "to_dense", memory_budget="32KiB")
    assert by_method.memory_budget == by_function.memory_budget == 32 * 1024
    assert [sl.slices for sl in by_method.slicing] == [sl.slices for sl in by_function.slicing]
    assert by_method.slicing and by_method.slicing[0].slices > 1
