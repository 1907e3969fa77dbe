"""Costing a CUDA plan on a machine without a GPU: shape-only symbols on ``cuda`` are explained
with a memory budget (torch's default BLAS workspace is assumed), and without one the error
says to give one. Before, both raised torch's "Torch not compiled with CUDA enabled" from a
device query."""

import pytest
import torch

import lazymat as lm

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without CUDA answers")


@pytest.mark.parametrize("op", ["to_dense", "svd", "matrix_norm", "eigvals"])
def test_cuda_symbols_are_costed_like_cpu_ones_under_a_budget(op):
    def x(device):
        E, Q = lm.symbol("E", (5000, 64), device=device), lm.symbol("Q", (64, 64), device=device)
        return E @ Q @ E.mT

    gpu, cpu = lm.explain(x("cuda"), op, memory_budget="1GiB"), lm.explain(x("cpu"), op, memory_budget="1GiB")
    assert gpu.planned.flops == cpu.planned.flops and gpu.planned.peak_bytes == cpu.planned.peak_bytes


def test_without_a_budget_the_error_asks_for_one():
    x = lm.symbol("A", (100, 8), device="cuda") @ lm.symbol("B", (8, 100), device="cuda")
    with pytest.raises(RuntimeError, match="memory_budget="):
        lm.explain(x, "svd")
    with lm.config(memory_budget="64MiB"):
        assert lm.explain(x, "svd").planned.flops > 0
