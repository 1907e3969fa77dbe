"""A nested block that two parts of a cat read is formed once, and costed once (qa16, session 12).

Found: ``cat([A, B @ C @ D]).T @ S`` with ``S`` a sum: both parts of the cat read the block of
``S`` and the executor's memo forms it once, but ``explain`` listed its products twice (904
GEMM FLOPs ran, 1364 explained) and ``Plan.flops`` counted it twice (1414 where 929 run).
GEMM FLOPs are counted at the ATen level (tests/test_qa_costs.py), independently of lazymat."""

from unittest import mock

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_qa_costs import explained_and_executed, gemm_flops

import lazymat as lm
from lazymat import linalg as LA


@st.composite
def _shared_sum_in_a_cat(draw):
    """``cat([C.T @ S, E.T @ H @ S]) @ W``: both parts of the cat read the sum ``S``; and its
    float64 dense twin."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    n, r, k1, k2, m = (draw(st.integers(1, 5)) for _ in range(5))
    shapes = {"A": (n, r), "B": (r, n), "F": (n, n), "C": (n, k1), "E": (n, k2), "H": (n, n), "W": (n, m)}
    dense = {name: torch.randn(*shape, generator=g, dtype=torch.float64) for name, shape in shapes.items()}
    lazy = {name: lm.lazy(d) for name, d in dense.items()}
    middle = draw(st.booleans())  # the second part reads S through another factor, or directly

    def build(v):
        s = v["A"] @ v["B"] + v["F"]
        second = v["E"].mT @ v["H"] @ s if middle else v["E"].mT @ s
        parts = [v["C"].mT @ s, second]
        return (lm.cat(parts, dim=-2) if isinstance(s, lm.Expr) else torch.cat(parts, -2)) @ v["W"]

    return build(lazy), build(dense), lambda: build({k: lm.lazy(d) for k, d in dense.items()})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shared_sum_in_a_cat(), st.sampled_from(["to_dense", "svdvals", "svd", "matvec"]), st.booleans())
def test_a_block_two_parts_read_is_costed_once(case, op, factored):
    x, dense, fresh = case
    torch.testing.assert_close(x.to_dense(), dense, rtol=1e-10, atol=1e-10)
    x = fresh()  # cold caches: nothing found on the leaves
    report, ran = explained_and_executed(x, op, factored)
    assert ran.flops == gemm_flops(report, ran.rank), str(report)
    if op == "to_dense":
        adds = sum(r.flops for r in report.rows if "sum + term" in r.op)
        assert fresh().plan().flops == ran.flops + adds == report.planned.flops, str(report)


def test_the_found_example():
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return lm.lazy(torch.randn(*shape, generator=g, dtype=torch.float64))

    s = t(5, 2) @ t(2, 5) + t(5, 4) @ t(4, 4) @ t(4, 5)
    x = lm.cat([t(5, 4), t(5, 4) @ t(4, 4) @ t(4, 2)], dim=-1).mT @ s
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        report = x.explain("svd")
    assert sum(r.op.endswith("sum + term 1") for r in report.rows) == 1, str(report)
    assert x.plan().flops == 929  # 904 GEMM FLOPs (counted by hand from the rows) + 25 additions
