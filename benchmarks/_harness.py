"""Timing helpers shared by the benchmarks (medians of repeated runs, CUDA-synchronised)."""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn: Callable[[], object], device="cpu", repeat: int = 7, warmup: int = 2,
                min_time: float = 0.0) -> float:
    """Median seconds per call; calls are batched so that each sample lasts >= ``min_time``."""
    for _ in range(warmup):
        fn()
    sync(device)
    inner = 1
    if min_time:
        t = time.perf_counter()
        fn()
        sync(device)
        once = max(time.perf_counter() - t, 1e-7)
        inner = max(1, int(min_time / once))
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        samples.append((time.perf_counter() - t) / inner)
    return statistics.median(samples)


def best_time(fn: Callable[[], object], repeats: int = 10) -> float:
    """Least seconds of ``repeats`` single calls (the CPU: no device to wait for)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def compare(fns: dict[str, Callable[[], object]], device="cpu", rounds: int = 9,
            min_time: float = 0.02, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin (one sample of each
    per round) so that drifts in clock speed or cache state hit every route alike.
    ``clock=time.process_time`` counts only this process's CPU time (steadier on a
    loaded machine; CPU only, and only meaningful with one torch thread)."""
    inner = {}
    for name, fn in fns.items():
        fn()
        fn()
        sync(device)
        t = clock()
        fn()
        sync(device)
        inner[name] = max(1, int(min_time / max(clock() - t, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = clock()
            for _ in range(inner[name]):
                fn()
            sync(device)
            samples[name].append((clock() - t) / inner[name])
    return {name: statistics.median(v) for name, v in samples.items()}


def rss_bytes() -> int:
    """Current resident set size (Linux), for peak-growth checks."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def lines_of(call: Callable[[], object]) -> int:
    """Line events in lazymat's own files during ``call()`` (``sys.settrace``): a per-call cost
    that does not depend on the machine's load."""
    import lazymat

    package = os.path.dirname(lazymat.__file__) + os.sep
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code.co_filename.startswith(package) else None

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count
