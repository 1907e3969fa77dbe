"""``Plan.flops`` is what the evaluation runs: a product the executor's memo forms once and finds
again (a span two terms share, a part a cat repeats) is counted once, as ``explain`` lists it
(``: shared`` rows at 0 FLOPs) and as torch's GEMMs count it (the executed FLOPs, counted at
the ATen level by test_qa_costs's ``Executed``)."""

import torch
from hypothesis import HealthCheck, given, settings
from test_properties import expressions
from test_qa_costs import Executed

import lazymat as lm


def test_a_span_two_terms_share_is_counted_once():
    a, b, c, d = (torch.randn(1, 1, dtype=torch.float64) for _ in range(4))
    e = torch.randn(2, 1, dtype=torch.float64)
    X = lm.cat([lm.lazy(a), lm.lazy(b)], dim=-1) @ (lm.lazy(e) @ lm.lazy(c) @ lm.lazy(d))
    assert X.plan().flops == lm.explain(X).flops == 11  # (c d) once: 2 + 2 + 2, 0 + 2 + 2, one add


def test_a_part_a_cat_repeats_is_counted_once():
    A, B = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64)
    C = torch.randn(2, 1, dtype=torch.float64)
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C)], -1)[None][:, :, [0, 1, 0]]
    with Executed() as ran:
        X.to_dense()
    assert X.plan().flops == lm.explain(X).flops == ran.flops == 12  # A @ B once


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expressions())
def test_plan_flops_are_explains(pair):
    X, _ = pair
    report = X.explain()
    assert X.plan().flops == report.flops == sum(r.flops for r in report.rows), str(report)
