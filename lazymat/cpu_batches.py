"""Batches of small dense decompositions on the CPU, split across threads.

torch runs a batch of LAPACK calls (``geev`` for ``eigvals``, ``gesdd`` for ``svd``) one matrix
after the other on one thread, and a 64..256-wide matrix is too small for LAPACK's own threads to
help: copying scores of 144 heads spent ~0.6 s in one thread's ``eigvals`` loop. Here the batch
is cut into one contiguous chunk per torch thread, the chunks run in a thread pool (torch releases
the GIL inside its operators) and the results are concatenated: the same LAPACK calls, so the
same answers, on every core (``benchmarks/bench_eigvals.py`` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["MIN_THREAD_WORK", "split_batch"]

# Least work a thread is handed, in ``k^2 k'`` per ``k x k'`` matrix summed over its chunk:
# below it a thread hand-off costs more than it saves.
MIN_THREAD_WORK = 8**3

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (its size, the pool), made on first use


def _workers(n: int) -> ThreadPoolExecutor:
    global _pool
    if _pool is None or _pool[0] < n:
        _pool = (n, ThreadPoolExecutor(n, thread_name_prefix="lazymat-cpu-batch"))
    return _pool[1]


def split_batch(fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
                t: torch.Tensor, threads: int | None = None,
                min_work: float = MIN_THREAD_WORK) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``fn(t)`` for a batch of matrices ``t (..., k, k')`` on the CPU, its leading dims split
    across ``threads`` (default ``torch.get_num_threads()``) threads, each given at least
    ``min_work`` (see :data:`MIN_THREAD_WORK`); ``fn`` must treat batch members independently
    (``torch.linalg.eigvals``, ``svdvals``, ...). Anything else (another device, one matrix,
    too little work, one thread, recording gradients, or a torch function mode active, which
    is thread-local and would not see the workers' calls) is ``fn(t)`` as is."""
    batch = t.shape[:-2]
    count = math.prod(batch)
    k, k2 = min(t.shape[-2:]), max(t.shape[-2:])
    threads = min(threads or torch.get_num_threads(), count, int(count * k * k * k2 // max(min_work, 1)))
    if (t.device.type != "cpu" or threads < 2
            or (torch.is_grad_enabled() and t.requires_grad) or torch._C._is_torch_function_mode_enabled()):
        return fn(t)
    flat = t.reshape(count, *t.shape[-2:])
    parts = list(_workers(threads).map(fn, flat.tensor_split(threads)))
    if isinstance(parts[0], torch.Tensor):
        out = torch.cat(parts)
        return out.reshape(*batch, *out.shape[1:])
    return tuple(torch.cat(p).reshape(*batch, *p[0].shape[1:]) for p in zip(*parts, strict=True))
