"""Reductions in ``explain`` and their own ``memory_budget=``.

``lm.explain(X, "topk", k=...)`` shows the route :mod:`lazymat.reduce` takes (checked here by
running it: the number of blocks, whether the far factor is formed once, the closed routes of
sums and 2-norms); every reduction takes a per-call ``memory_budget=`` like ``to_dense``, and a
budget below one line raises ``BudgetTooSmall`` naming a minimum that works when passed back.
"""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import reduce as RD

from conftest import randn


@pytest.fixture
def streams(block_counts):
    """Block counts of the streamed loops run since the last clear."""
    return block_counts


def qk(gen, vocab=600, d=24, r=4):
    E, Q, K = randn(gen, vocab, d), randn(gen, d, r), randn(gen, d, r)
    return lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E).mT, E @ Q @ K.mT @ E.mT


CALLS = {  # name: (call with a budget, dense answer)
    "topk": (lambda X, b: X.topk(3, memory_budget=b).indices, lambda D: D.topk(3).indices),
    "amax": (lambda X, b: RD.amax(X, -1, memory_budget=b), lambda D: D.amax(-1)),
    "amin": (lambda X, b: X.amin(0, memory_budget=b), lambda D: D.amin(0)),
    "argmax": (lambda X, b: X.argmax(-1, memory_budget=b), lambda D: D.argmax(-1)),
    "argmin": (lambda X, b: RD.argmin(X, memory_budget=b), lambda D: D.argmin()),
    "max": (lambda X, b: X.max(-1, memory_budget=b).values, lambda D: D.max(-1).values),
    "min": (lambda X, b: RD.min(X, memory_budget=b), lambda D: D.min()),
    "vector_norm": (lambda X, b: RD.vector_norm(X, 1, -1, memory_budget=b),
                    lambda D: torch.linalg.vector_norm(D, 1, -1)),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_streamed_reduction_takes_its_own_budget(gen, streams, name):
    X, D = qk(gen)
    call, dense = CALLS[name]
    with pytest.raises(lm.BudgetTooSmall) as info:
        call(X, 100)
    need = int(re.search(r"at least (\d+) bytes", str(info.value))[1])
    assert "memory budget of 100 bytes" in str(info.value)
    with lm.config(memory_budget=2**40):  # the call's own budget wins over the process's
        got = call(X, need)
    assert streams and streams[-1] > 1  # one line (or a few) per block
    torch.testing.assert_close(got, dense(D))
    with pytest.raises(lm.BudgetTooSmall):
        call(X, need - 1)


def test_closed_reductions_take_a_budget_too(gen):
    X, D = qk(gen)
    torch.testing.assert_close(X.sum(-1, memory_budget="1MiB"), D.sum(-1))
    torch.testing.assert_close(RD.mean(X, 0, memory_budget=10**6), D.mean(0))
    torch.testing.assert_close(lm.topk(X, 2, memory_budget="1MiB").values, D.topk(2).values)


@pytest.mark.parametrize("dim", [-1, -2])
def test_explain_topk_shows_the_blocks_that_run(gen, streams, dim):
    X, D = qk(gen)
    budget = 60_000
    report = lm.explain(X, "topk", k=5, dim=dim, memory_budget=budget)
    (part,) = report.slicing
    X.topk(5, dim=dim, memory_budget=budget)
    assert streams == [part.slices] and part.slices > 1
    line = "rows" if dim == -1 else "columns"
    assert f"topk streamed over {line}: {part.slices} slices over {line} 600/" in str(report)
    assert "far factor, formed once" in report.rows[0].op  # the narrow core: 4
    assert "narrow core 4: far factor formed once" in report.planned.note
    assert report.planned.peak_bytes <= budget
    assert report.planned.flops == sum(r.flops for r in report.rows)
    assert report.planned.peak_bytes == max(r.live_bytes for r in report.rows)
    # the far factor once, then one (lines, 4) @ (4, 600) product per block: no work added
    assert part.added_flops == 0


def test_explain_of_a_reduction_without_a_narrow_core_streams_the_expression(gen, streams):
    X = lm.lazy(randn(gen, 300, 200))
    report = lm.explain(X, "argmax", dim=-1, memory_budget=20_000)
    X.argmax(-1, memory_budget=20_000)
    assert streams == [report.slicing[0].slices] and "far factor" not in str(report)


@pytest.mark.parametrize("op, options, route", [
    ("sum", {"dim": -1}, "a product with ones"),
    ("mean", {}, "a product with ones"),
    ("vector_norm", {"dim": -1}, "the diagonal of X X^H"),
    ("vector_norm", {"dim": 0}, "the diagonal of X^H X"),
    ("vector_norm", {}, "the Frobenius norm"),
])
def test_explain_of_closed_reductions_names_the_route(gen, streams, op, options, route):
    X, D = qk(gen)
    report = X.explain(op, **options)
    assert f"closed route: {route}, no streaming" in report.planned.note
    assert report.planned.peak_bytes < D.numel() * 8 / 10  # never the matrix
    getattr(RD, op)(X, **options)
    assert streams == []


def test_explain_of_a_reduction_refuses_what_the_call_refuses(gen):
    X, _ = qk(gen)
    with pytest.raises(lm.BudgetTooSmall, match="at least"):
        lm.explain(X, "topk", k=3, memory_budget=100)
    with pytest.raises(TypeError, match="needs k="):
        lm.explain(X, "topk")
    with pytest.raises(TypeError, match="'amax' takes dim="):
        lm.explain(X, "amax", k=3)
    with pytest.raises(TypeError, match="'to_dense' takes no options"):
        lm.explain(X, "to_dense", dim=0)


def test_cli_explain_takes_a_reduction(capsys):
    from lazymat.cli import main

    expr = "W_E @ W_Q[0, 0] @ W_K[0, 0].T @ W_E.T"
    assert main(["explain", expr, "--preset", "gpt2-small", "--op", "topk", "--k", "10",
                 "--memory-budget", "1GiB"]) == 0
    out = capsys.readouterr().out
    assert "topk streamed over rows" in out and "far factor formed once" in out
    assert main(["explain", expr, "--preset", "gpt2-small", "--op", "topk"]) == 2
    assert "needs --k" in capsys.readouterr().err
    assert main(["explain", expr, "--preset", "gpt2-small", "--k", "3"]) == 2
    assert "options of a reduction" in capsys.readouterr().err


REDUCTION_CALLS = {
    "topk": lambda x, k, dim: (lm.topk(x, k, dim=dim), {"k": k, "dim": dim}),
    "amax": lambda x, k, dim: (lm.reduce.amax(x, dim=dim), {"dim": dim}),
    "argmin": lambda x, k, dim: (lm.reduce.argmin(x, dim=dim), {"dim": dim}),
    "max": lambda x, k, dim: (lm.reduce.max(x, dim=dim), {"dim": dim}),
    "sum": lambda x, k, dim: (lm.reduce.sum(x, dim=dim), {"dim": dim}),
    "vector_norm": lambda x, k, dim: (lm.reduce.vector_norm(x, dim=dim), {"dim": dim}),
}


@settings(max_examples=120, deadline=None)
@given(m=st.integers(0, 4), inner=st.integers(1, 3), n=st.integers(0, 4),
       op=st.sampled_from(sorted(REDUCTION_CALLS)), k=st.integers(-1, 5), dim=st.sampled_from([0, 1, -1, -2]),
       budget=st.sampled_from([None, 4096]))
def test_explain_answers_wherever_evaluation_does(m, inner, n, op, k, dim, budget):
    """explain of a reduction raises exactly where evaluating it raises (the same error type),
    empty dims and out-of-range k included: it divided by zero on a 0-row matrix and accepted a
    topk k that evaluation refuses (found by qa11)."""
    g = torch.Generator().manual_seed(m * 100 + n * 10 + inner)
    x = lm.lazy(torch.randn(m, inner, generator=g)) @ lm.lazy(torch.randn(inner, n, generator=g))
    ran = explained = None
    try:
        with lm.config(memory_budget=budget):
            _, options = REDUCTION_CALLS[op](x, k, dim)
    except (RuntimeError, IndexError, ValueError, TypeError) as err:
        ran = type(err)
        options = {"k": k, "dim": dim} if op == "topk" else {"dim": dim}
    try:
        lm.explain(x, op, memory_budget=budget, **options)
    except (RuntimeError, IndexError, ValueError, TypeError) as err:
        explained = type(err)
    assert explained is ran or (ran is not None and explained is not None and issubclass(ran, explained)), \
        (op, (m, n), k, dim, ran, explained)
