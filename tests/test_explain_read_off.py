"""explain costs every lm.linalg call: ``matrix_rank``, ``cond`` and ``matrix_norm`` of any
``ord`` report the route they are read off, and that route is what runs (GEMM FLOPs counted at
the ATen level and the decompositions torch runs, as in test_qa_costs, independently of
explain), and what they answer agrees with float64 torch."""

import contextlib
import io
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_properties import expressions
from test_qa_costs import Executed, executed_decompositions, explained_decompositions, gemm_flops

import lazymat as lm
from lazymat import linalg as LA
from lazymat import reduce

from conftest import forced_route

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALLS = [("matrix_rank", {}, LA.matrix_rank), ("cond", {}, LA.cond)] + [
    ("matrix_norm", {"ord": o}, lambda X, o=o: LA.matrix_norm(X, ord=o))
    for o in ("nuc", 2, -2, 1, -1, math.inf, -math.inf)]


def _batched_sum() -> tuple:
    """``t1x1 @ t1x1 @ t2x1x1 + -1 * t1x1`` (hypothesis seeds 4, 6 and 8): a batched term whose
    leaf span ``t1x1 @ t1x1`` is too cheap to keep on the leaves (``MIN_KEPT_FLOPS``); the rank's
    floor evaluates the term again and forms it again, which explain listed as cached (10 FLOPs
    explained, 12 run)."""
    g = torch.Generator().manual_seed(4)
    shapes = ((1, 1), (1, 1), (2, 1, 1), (1, 1))
    A, B, C, E = (torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes)
    return lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) + -1 * lm.lazy(E), A @ B @ C - E


@SETTINGS
@given(expressions(), st.sampled_from(CALLS), st.booleans())
@example(pair=_batched_sum(), call=CALLS[0], factored=False)
@example(pair=_batched_sum(), call=CALLS[0], factored=True)
def test_what_runs_is_the_route_explained(pair, call, factored):
    X, D = pair
    op, options, fn = call
    if op == "matrix_norm" and options["ord"] in (-2, -1, -math.inf) and min(X.shape[-2:]) == 0:
        return  # the minimum over no values: an IndexError, as torch
    spectral = not (op == "matrix_norm" and options["ord"] in (1, -1, math.inf, -math.inf))
    with forced_route("factored", X if spectral else None) if factored else contextlib.nullcontext():
        report = X.explain(op, **options)
        with Executed() as ran:
            out = fn(X)
    if spectral:  # the singular values' route: its GEMMs and decompositions, as explain lists them
        assert ran.flops == gemm_flops(report), str(report)
        listed, done = explained_decompositions(report), executed_decompositions(ran)
        assert [d[:2] for d in done if d[0] == "QR"] == [d[:2] for d in listed if d[0] == "QR"], str(report)
    else:  # the streamed 1-norms of the lines: the GEMMs are within the blocks' costed work (whose
        # rows also count scalings and the norms; test_reduce_explain checks those rows)
        assert ran.flops <= sum(r.flops for r in report.rows if not r.op.startswith("vector_norm")), \
            str(report)
    if op == "matrix_norm":
        expected = torch.linalg.matrix_norm(D, ord=options["ord"])
        assert torch.allclose(out.double(), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("op, options", [("matrix_rank", {}), ("cond", {}), ("matrix_norm", {"ord": "nuc"}),
                                         ("matrix_norm", {"ord": 2}), ("matrix_norm", {"ord": -1}),
                                         ("matrix_norm", {"ord": math.inf})])
def test_shape_only_symbols_are_costed_and_labelled(op, options):
    W_E, W_Q, W_K = lm.symbol("W_E", (50257, 768)), lm.symbol("W_Q", (768, 64)), lm.symbol("W_K", (768, 64))
    report = lm.explain(W_E @ W_Q @ W_K.T @ W_E.T, op, **options)
    assert report.op.startswith(op) and "read off" in report.planned.note
    if options.get("ord") in (-1, math.inf):
        assert "vector_norm" in report.planned.note and "streamed" in report.planned.note
    else:  # the singular values of a rank-64 core: two QRs of the tall factors, no dense SVD
        assert report.flops < 2e10 < report.naive[0].flops


def test_an_unsupported_order_or_option_is_refused():
    X = lm.lazy(torch.randn(4, 2)) @ lm.lazy(torch.randn(2, 4))
    with pytest.raises(ValueError, match="unsupported ord 3"):
        lm.explain(X, "matrix_norm", ord=3)
    with pytest.raises(TypeError, match="takes no options"):
        lm.explain(X, "cond", ord=2)
    for order in ("nuc", True, torch.tensor([1.0, 2.0])):  # as the reduction itself refuses them
        with pytest.raises(TypeError, match="ord must be a number"):
            lm.explain(X, "vector_norm", ord=order, dim=-1)
        with pytest.raises(TypeError, match="ord must be a number"):
            reduce.vector_norm(X, ord=order, dim=-1)


def test_the_command_line_takes_a_matrix_norm_order():
    """``--ord`` reaches matrix_norm (a number, inf, fro or nuc); a word that is no order and
    ``--ord`` on an op without one are usage errors (exit 2)."""
    from lazymat.cli import main

    qk = ["explain", "W_E @ W_Q @ W_K.T @ W_E.T", "--shape", "W_E=5000x96", "--shape", "W_Q=96x8",
          "--shape", "W_K=96x8", "--json"]
    for order, read in (("nuc", "svdvals"), ("-2", "svdvals"), ("inf", "vector_norm")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*qk, "--op", "matrix_norm", "--ord", order]) == 0
        d = json.loads(out.getvalue())
        assert d["op"].startswith("matrix_norm(ord=") and f"read off {read}" in d["planned"]["note"]
    for bad in (["--op", "matrix_norm", "--ord", "bogus"], ["--op", "cond", "--ord", "2"]):
        try:  # argparse exits; lazymat's own usage errors return the code
            code = main([*qk, *bad])
        except SystemExit as stop:
            code = stop.code
        assert code == 2
