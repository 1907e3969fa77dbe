"""Small dense decompositions on the CPU: one intra-op thread each, a batch split across threads.

torch runs a batch of LAPACK calls (``geev`` for ``eigvals``, ``gesdd`` for ``svd``) one matrix
after the other on one thread, and a 64..256-wide matrix is too small for LAPACK's own threads to
help: copying scores of 144 heads spent ~0.6 s in one thread's ``eigvals`` loop. Here the batch
is cut into one contiguous chunk per torch thread, the chunks run in a thread pool (torch releases
the GIL inside its operators) and the results are concatenated: the same LAPACK calls, so the
same answers, on every core (``benchmarks/bench_eigvals.py`` measures it).

Every such call runs with one intra-op thread (:func:`one_intra_op_thread`), split or not: a
small matrix gains nothing from torch's OpenMP team, and when the cores are busy each parallel
region waits for a descheduled team member. On the loaded 2-core CPU a 16 x 8 ``triu`` took
45 ms with two threads and 2 us with one, and an ``eigvals`` of a 64 x 64 matrix 15 ms against
1 ms; a split batch whose workers each started a team of their own would oversubscribe the
cores (benchmarks/results/cpu-small-crossover.txt).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["MIN_THREAD_WORK", "ONE_THREAD_WIDTHS", "for_shape", "one_intra_op_thread", "split_batch"]

# Measured on the loaded 2-core CPU (benchmarks/results/cpu-small-crossover.txt, "split" part):
# Least work a thread is handed, in ``k^2 k'`` per ``k x k'`` matrix summed over its chunk (a
# 64 x 64 eigvals is ~1 ms): below it the hand-off to a worker costs more than it saves.
MIN_THREAD_WORK = 64**3
# Widths ``max(k, k')`` decomposed with one intra-op thread when not split: from 32 (a single
# 32 x 32 svd took 443 ms with two threads, 2.9 ms with one) to 256 (4.05 s against 132 ms for an
# eigvals); narrower ones never wait on a team, and the switch costs MKL ~30 us per call.
ONE_THREAD_WIDTHS = (32, 256)

_pool: tuple[int, ThreadPoolExecutor] | None = None  # (its size, the pool), made on first use


def _workers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads; a smaller one made earlier is shut down (its idle
    threads exit; work it still runs finishes first) when it is replaced."""
    global _pool
    if _pool is None or _pool[0] < n:
        old, _pool = _pool, (n, ThreadPoolExecutor(n, thread_name_prefix="lazymat-cpu-batch"))
        if old is not None:
            old[1].shutdown(wait=False)
    return _pool[1]


@contextlib.contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 inside the block, and back to the caller's count after.
    Under OpenMP the count is per OS thread (each keeps its own), so blocks entered from several
    Python threads at once restore each its own; a block that found 1 changes nothing."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def split_batch(fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]],
                t: torch.Tensor, threads: int | None = None,
                min_work: float = MIN_THREAD_WORK) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``fn(t)`` for a batch of matrices ``t (..., k, k')`` on the CPU, its leading dims split
    across ``threads`` (default ``torch.get_num_threads()``) threads, each given at least
    ``min_work`` (see :data:`MIN_THREAD_WORK`) and each running with one intra-op thread;
    ``fn`` must treat batch members independently (``torch.linalg.eigvals``, ``svdvals``, ...).
    Not split (one matrix, too little work, one thread, gradients being recorded, or a torch
    function mode active, which is thread-local and would not see the workers' calls), it is
    ``fn(t)``, with one intra-op thread for widths in :data:`ONE_THREAD_WIDTHS`. Another device:
    ``fn(t)`` as is."""
    available = torch.get_num_threads()
    if t.device.type != "cpu" or (available == 1 and threads is None):
        return fn(t)  # one intra-op thread already, and no pool asked for
    batch = t.shape[:-2]
    count = math.prod(batch)
    k, k2 = min(t.shape[-2:]), max(t.shape[-2:])
    threads = min(threads or available, count, int(count * k * k * k2 // max(min_work, 1)))
    split = (threads >= 2 and not (torch.is_grad_enabled() and t.requires_grad)
             and not torch._C._is_torch_function_mode_enabled())
    if not split and not ONE_THREAD_WIDTHS[0] <= k2 <= ONE_THREAD_WIDTHS[1]:
        return fn(t)
    with one_intra_op_thread():
        if not split:
            return fn(t)
        flat = t.reshape(count, *t.shape[-2:])
        parts = list(_workers(threads).map(fn, flat.tensor_split(threads)))
    if isinstance(parts[0], torch.Tensor):
        out = torch.cat(parts)
        return out.reshape(*batch, *out.shape[1:])
    return tuple(torch.cat(p).reshape(*batch, *p[0].shape[1:]) for p in zip(*parts, strict=True))


def for_shape(fn: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]], shape: tuple[int, ...],
              device: torch.device) -> Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]:
    """``t -> split_batch(fn, t)`` for tensors ``t`` of ``shape`` on ``device``, with what the
    shape settles decided once (a compiled call runs it for every call of one structure): a
    batch goes through :func:`split_batch`; one matrix is never split, so it is ``fn`` itself off
    the CPU or outside :data:`ONE_THREAD_WIDTHS`, else ``fn`` with one intra-op thread when more
    are set (the thread count is read on every call: the caller may change it)."""
    if math.prod(shape[:-2]) != 1:
        return functools.partial(split_batch, fn)  # (no Python frame of its own)
    lo, hi = ONE_THREAD_WIDTHS
    if torch.device(device).type != "cpu" or not lo <= max(shape[-2:]) <= hi:
        return fn
    get_threads, set_threads = torch.get_num_threads, torch.set_num_threads

    def one_thread(t: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        n = get_threads()
        if n == 1:
            return fn(t)
        set_threads(1)
        try:
            return fn(t)
        finally:
            set_threads(n)

    return one_thread
