"""Round-robin timing: every implementation of a case takes one sample per round, so drifts in
clock speed, cache state or other load on the machine hit every route alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work (a no-op on the CPU), so a sample times the work, not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> tuple[float, object]:
    """Seconds one call takes (synchronised), and its result."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


FAILURES = (RuntimeError, MemoryError, ValueError)  # torch's out-of-memory errors are RuntimeErrors


def round_robin(fns: dict[str, Callable[[], object]], device: str, repeats: int, budget_s: float,
                slow_s: float = 1.0, min_sample_s: float = 0.02
                ) -> tuple[dict[str, list[float]], dict[str, object], dict[str, BaseException]]:
    """Samples (seconds per call) of each function, the result of its first call, and the error
    of each function whose first call failed (it takes no samples: a failure is a result).

    A first call is a warm-up and not kept, unless it took over ``slow_s`` (warm-up effects are
    negligible there and a second call would double the cost). Then ``repeats`` rounds, one
    call of each function per round; a function stops taking samples once its samples add up
    to ``budget_s`` (at least one is always taken), so one slow peer cannot hold the suite.
    A call shorter than ``min_sample_s`` is repeated within a sample (the sample is the mean),
    so timer resolution and scheduler noise do not swamp microsecond calls."""
    samples: dict[str, list[float]] = {}
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            seconds, results[name] = timed(fn, device)
        except FAILURES as e:
            errors[name] = e
            continue
        samples[name] = [seconds] if seconds > slow_s else []
        if seconds < min_sample_s:  # time a second (warm) call to size the batch
            calls[name] = max(1, int(min_sample_s / max(timed(fn, device)[0], 1e-7)))
        else:
            calls[name] = 1
    for _ in range(repeats):
        for name, fn in fns.items():
            if name in errors:
                continue
            if samples[name] and (len(samples[name]) >= repeats or sum(samples[name]) >= budget_s):
                continue
            samples[name].append(timed(lambda fn=fn, k=calls[name]: [fn() for _ in range(k)], device)[0]
                                 / calls[name])
    return samples, results, errors


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def gemm_throughput(device: str, n: int | None = None, repeats: int = 5) -> float:
    """Measured FLOP/s (multiply-add = 2) of an ``n x n`` float32 matrix product: the speed
    against which each workload's floor is set."""
    n = n or (8192 if torch.device(device).type == "cuda" else 2048)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
    samples = round_robin({"gemm": lambda: a @ b}, device, repeats, budget_s=10.0)[0]
    return 2 * n**3 / median(samples["gemm"])

