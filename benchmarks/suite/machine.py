"""What the figures were measured on: CPU model, threads, GPU, torch version, GEMM throughput."""

from __future__ import annotations

import os
import platform

import torch

from .timing import gemm_throughput


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str, gemm_size: int | None = None) -> dict:
    """The machine as a JSON-ready dict (``gemm_flops`` measured now, float32, on square
    matrices of ``gemm_size``; see :func:`gemm_throughput`)."""
    cuda = torch.device(device).type == "cuda"
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gemm_flops": gemm_throughput(device, gemm_size),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def one_line(m: dict) -> str:
    where = m["gpu"] or f"{m['cpu']}, {m['torch_threads']} threads"
    return (f"{where}; torch {m['torch']}; float32 GEMM {m['gemm_flops'] / 1e9:.0f} GFLOP/s; "
            f"load average {m['load_average']:.1f} on {m['cpu_count']} cores"
            if m["load_average"] is not None else f"{where}; torch {m['torch']}")
