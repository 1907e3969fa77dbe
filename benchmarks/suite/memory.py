"""Peak memory of one implementation of one case, measured in a fresh child process so that
nothing else the suite ran raises the peak.

CPU: growth of the peak resident set size during the call (Linux: the high-water mark
``VmHWM`` is reset with ``/proc/self/clear_refs`` once the weights are drawn, then read after
the call, minus the RSS before it). CUDA: ``torch.cuda.max_memory_allocated`` growth. The call
is the first one in its process (a cold call, as a user's first analysis is)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import torch

METHOD = {"cpu": "peak RSS growth of the call in a fresh process (VmHWM after clear_refs)",
          "cuda": "torch.cuda.max_memory_allocated growth of the call in a fresh process"}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


def peak_bytes_of(fn, device: str) -> int:
    """Peak memory growth while ``fn()`` runs, by the method of :data:`METHOD`."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = _rss()
    fn()
    return max(_peak_rss() - before, 0)


def measure(workload: str, case: str, impl: str, argv: list[str], timeout_s: float) -> tuple[int | None, str]:
    """Run ``python -m benchmarks --memory-child ...`` and return (peak bytes, error text)."""
    cmd = [sys.executable, "-m", "benchmarks", "--memory-child", workload, case, impl, *argv]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    except subprocess.TimeoutExpired:
        return None, f"memory child over {timeout_s:.0f} s"
    if out.returncode:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"memory child failed: {tail[:160]}"
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"], ""
