"""explain's report of to_dense and of a matrix-vector product says how much memory the result
takes beside the peak it reports (a lone GEMM reported "peak memory 0 B" while it formed 9.41 GiB:
the caller's result, which the peak leaves out by convention); to_dict carries it."""

import math

import hypothesis.strategies as st
import torch
from hypothesis import given, settings

import lazymat as lm
from lazymat.settings import format_bytes


@given(st.lists(st.integers(1, 40), min_size=3, max_size=5), st.sampled_from([torch.float32, torch.float64]),
       st.sampled_from(["to_dense", "matvec"]))
@settings(max_examples=40, deadline=None)
def test_the_report_names_the_results_size(dims, dtype, op):
    x = lm.symbol("A0", (dims[0], dims[1]), dtype=dtype)
    for i, (m, n) in enumerate(zip(dims[1:-1], dims[2:], strict=True), 1):
        x = x @ lm.symbol(f"A{i}", (m, n), dtype=dtype)
    report = lm.explain(x, op)
    rows = dims[0] * (1 if op == "matvec" else dims[-1])
    assert report.result_bytes == rows * dtype.itemsize == report.to_dict()["result_bytes"]
    assert f"takes {format_bytes(rows * dtype.itemsize)} beside it" in str(report)


def test_a_leaf_is_returned_as_a_view_and_takes_nothing_new():
    report = lm.explain(lm.symbol("A", (3, 4)))
    assert "beside it" not in str(report) and not report.rows
    assert lm.explain(lm.symbol("A", (3, 4)), "svdvals").result_bytes is None
    assert math.prod((3, 4)) * 4 == lm.explain(lm.symbol("A", (3, 4)) @ lm.symbol("B", (4, 4))).result_bytes
