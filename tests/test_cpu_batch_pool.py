"""The thread pool behind :func:`lazymat.cpu_batches.split_batch`: a larger pool replaces a
smaller one, and the smaller one's threads then exit (they used to stay parked for the life
of the process, one set per size ever asked for)."""

import pytest
import torch

from lazymat import cpu_batches


@pytest.fixture
def fresh_pool():
    saved = cpu_batches._pool
    cpu_batches._pool = None
    yield
    if cpu_batches._pool is not None:
        cpu_batches._pool[1].shutdown(wait=True)
    cpu_batches._pool = saved


def test_a_replaced_pool_is_shut_down_and_its_threads_exit(fresh_pool):
    small = cpu_batches._workers(2)
    assert sorted(small.map(lambda v: v * 2, range(4))) == [0, 2, 4, 6]  # starts its threads
    threads = list(small._threads)
    assert threads and all(t.is_alive() for t in threads)
    assert cpu_batches._workers(2) is small  # big enough: kept
    big = cpu_batches._workers(3)
    assert big is not small and cpu_batches._workers(1) is big
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    with pytest.raises(RuntimeError, match="shutdown"):
        small.submit(int)
    t = torch.randn(4, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = cpu_batches.split_batch(torch.linalg.svdvals, t, threads=3, min_work=1)
    torch.testing.assert_close(got, torch.linalg.svdvals(t), rtol=0, atol=0)
