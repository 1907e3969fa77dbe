"""The BLAS workspace on a GPU: deducted once from every CUDA budget.

torch gives each (cuBLAS handle, stream) a workspace from its caching allocator on the first
matrix product and keeps it (``aten/src/ATen/cuda/CublasHandlePool.cpp``); it is in the measured
``max_memory_allocated`` but in no plan's peak. The sizes are checked here against torch's
defaults and environment variables on a CPU-only machine (the device properties patched), and,
on a GPU (``pytest -m cuda tests/test_blas_workspace.py``), a fresh process's measured peak
against the budget it was given.
"""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

import lazymat as lm
from lazymat import settings

KIB, MIB = 2**10, 2**20


@pytest.fixture
def gpu(monkeypatch):
    """A pretend CUDA device of compute capability ``gpu(major, minor)``, no env overrides."""
    for name in ("CUBLAS_WORKSPACE_CONFIG", "CUBLASLT_WORKSPACE_SIZE", "TORCH_CUBLASLT_UNIFIED_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(settings, "_blas_workspaces", {})

    def make(major, minor):
        settings._blas_workspaces.clear()
        props = SimpleNamespace(major=major, minor=minor)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    return make


def test_default_workspace_sizes(gpu):
    gpu(9, 0)  # Hopper: 32 MiB for cuBLAS, 1 MiB for cuBLASLt
    assert settings.blas_workspace("cuda:0") == 32 * MIB + 1 * MIB
    gpu(8, 0)  # others: 4096 KiB x 2 + 16 KiB x 8, and 1 MiB
    assert settings.blas_workspace("cuda:0") == (4096 * 2 + 16 * 8) * KIB + 1 * MIB
    assert settings.blas_workspace("cpu") == 0


def test_workspace_follows_torchs_environment_variables(gpu, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the deterministic-mode setting
    gpu(9, 0)
    assert settings.blas_workspace("cuda:0") == 16 * 8 * KIB + 16 * 8 * KIB  # cuBLASLt capped at cuBLAS's
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:2:16:8")
    monkeypatch.setenv("CUBLASLT_WORKSPACE_SIZE", "2048")
    gpu(8, 6)
    assert settings.blas_workspace("cuda:0") == (4096 * 2 + 16 * 8) * KIB + 2048 * KIB
    monkeypatch.setenv("TORCH_CUBLASLT_UNIFIED_WORKSPACE", "1")
    gpu(8, 6)
    assert settings.blas_workspace("cuda:0") == (4096 * 2 + 16 * 8) * KIB


def test_cuda_budgets_leave_the_workspace_out(gpu, monkeypatch):
    gpu(9, 0)
    ws = 33 * MIB
    monkeypatch.setattr(settings, "available_memory", lambda d: 8 * 2**30)
    assert settings.memory_budget("cuda:0") == 4 * 2**30 - ws  # half the free memory, less the workspace
    assert settings.memory_budget("cuda:0", "1GiB") == 2**30 - ws
    with lm.config(memory_budget="2GiB"):
        assert settings.memory_budget("cuda:0") == 2 * 2**30 - ws
        assert settings.memory_budget("cpu") == 2 * 2**30  # nothing held back on the CPU
    assert settings.memory_budget("cuda:0", 10 * MIB) == 0


def test_budget_error_on_cuda_counts_the_workspace(gpu):
    """The error speaks in the budget the user set: what the plan may use plus the workspace."""
    gpu(9, 0)
    err = lm.BudgetTooSmall("to_dense of a (4, 4) float32 expression", "one entry", 100, 200, "cuda:0")
    assert (err.budget, err.minimum, err.device) == (100 + 33 * MIB, 200 + 33 * MIB, torch.device("cuda:0"))
    assert f"at least {200 + 33 * MIB} bytes" in str(err) and "workspace" in str(err)


_MEASURE = textwrap.dedent("""
    import json, sys, torch, lazymat as lm
    budget = int(sys.argv[1])
    g = torch.Generator(device="cuda").manual_seed(0)
    E = torch.randn(16384, 256, device="cuda", generator=g)
    Q, K = (torch.randn(256, 64, device="cuda", generator=g) for _ in range(2))
    OV = torch.randn(12, 256, 256, device="cuda", generator=g)
    X = lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E).mT  # 16384 x 16384: 1 GiB dense
    pairs = lm.lazy(OV)[:, None] @ lm.lazy(OV)[None].mT            # 144 products of 256 x 256
    out = {}
    for name, run in [("topk", lambda: torch.topk(X, 10).values),
                      ("all_pairs_norm", lambda: lm.linalg.matrix_norm(pairs)),
                      ("to_dense", lambda: pairs.to_dense())]:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with lm.config(memory_budget=budget):
            result = run()
        torch.cuda.synchronize()
        out[name] = torch.cuda.max_memory_allocated() - base - result.numel() * result.element_size()
        del result
    print(json.dumps(out))
""")


@pytest.mark.cuda
@pytest.mark.parametrize("budget", [48 * MIB, 256 * MIB])
def test_measured_peak_stays_within_the_budget_on_cuda(budget):
    """A fresh process (its first GEMM allocates the workspace inside the measurement): the
    peak above the operands and the result stays within the budget the user set."""
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(budget)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    for name, peak in peaks.items():
        assert peak <= budget, f"{name}: measured {peak} bytes above the operands, budget {budget}"
