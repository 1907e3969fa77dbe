"""Batched small decompositions split across CPU threads (lazymat.cpu_batches), and the batched
eigenvalue routes of linalg, against dense float64 torch."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import cpu_batches
from lazymat import linalg as LA

from conftest import TorchCalls, assert_close, randn


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _svd(t):
    return torch.linalg.svd(t, full_matrices=False)


OPS = {"eigvals": torch.linalg.eigvals, "eig": torch.linalg.eig, "svdvals": torch.linalg.svdvals, "svd": _svd}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("batch", [(0,), (1,), (5,), (2, 3), (3, 0, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128])
def test_split_batch_gives_torchs_answer(gen, two_threads, op, batch, dtype):
    t = randn(gen, *batch, 12, 12).to(dtype)
    fn = OPS[op]
    got, want = cpu_batches.split_batch(fn, t), fn(t)
    got = (got,) if isinstance(got, torch.Tensor) else got
    want = (want,) if isinstance(want, torch.Tensor) else tuple(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # the same LAPACK calls, matrix by matrix


def test_split_batch_uses_one_chunk_per_thread(gen, two_threads):
    seen = []

    def record(chunk):
        seen.append(chunk.shape[0])
        return torch.linalg.eigvals(chunk)

    cpu_batches.split_batch(record, randn(gen, 7, 64, 64))
    assert sorted(seen) == [3, 4]
    seen.clear()
    cpu_batches.split_batch(record, randn(gen, 7, 16, 16))  # under MIN_THREAD_WORK a thread
    assert seen == [7]
    seen.clear()
    cpu_batches.split_batch(record, randn(gen, 7, 4, 4))  # too small to hand off
    assert seen == [7]
    seen.clear()
    cpu_batches.split_batch(record, randn(gen, 7, 16, 16).requires_grad_())  # autograd: as is
    assert seen == [7]


def _heads(gen, heads, d_model, d_head, vocab, dtype=torch.float64):
    E = randn(gen, vocab, d_model).to(dtype)
    V = randn(gen, heads, d_model, d_head).to(dtype)
    O = randn(gen, heads, d_head, d_model).to(dtype)
    U = randn(gen, d_model, vocab).to(dtype)
    X = lm.lazy(E) @ lm.lazy(V) @ lm.lazy(O) @ lm.lazy(U)
    return X, E @ V @ O @ U


def _match(vals, dense, r, tol):
    order = torch.argsort(dense.abs(), dim=-1, descending=True)
    top = dense.gather(-1, order)[..., :r]
    for a, b in zip(vals.reshape(-1, r), top.reshape(-1, r), strict=True):
        dist = (a[:, None] - b[None, :]).abs()
        assert dist.min(-1).values.max() <= tol * b.abs().max(), (a, b)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.complex128, 1e-9),
                                       (torch.float32, 2e-3)])
def test_batched_copying_eigenvalues_match_dense(gen, two_threads, dtype, tol):
    X, D = _heads(gen, 6, 24, 8, 40, dtype)
    vals = LA.eigvals(X)
    assert vals.shape == (6, 8)
    _match(vals, torch.linalg.eigvals(D.to(torch.complex128)), 8, tol)
    vals, vecs = LA.eig(X)
    D = D.to(vecs.dtype)
    assert_close(D @ vecs, vecs * vals[..., None, :], rtol=tol)


@settings(max_examples=40, deadline=None)
@given(heads=st.integers(1, 9), d_head=st.integers(1, 12), d_model=st.integers(1, 16),
       seed=st.integers(0, 2**16))
def test_batched_eigenvalues_match_dense(heads, d_head, d_model, seed):
    gen = torch.Generator().manual_seed(seed)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        X, D = _heads(gen, heads, d_model, d_head, 30)
        r = min(d_head, d_model)
        vals = LA.eigvals(X)
        assert vals.shape[-1] <= r
        _match(vals, torch.linalg.eigvals(D), vals.shape[-1], 1e-8)
        assert_close(LA.svdvals(X, full=True)[..., :r], torch.linalg.svdvals(D)[..., :r], rtol=1e-9)
    finally:
        torch.set_num_threads(old)


@pytest.mark.cuda
def test_cuda_cores_come_back_on_the_device(gen):
    X, D = _heads(gen, 4, 24, 8, 40)
    X = X.to("cuda")
    vals = LA.eigvals(X)
    assert vals.device.type == "cuda"
    _match(vals.cpu(), torch.linalg.eigvals(D), 8, 1e-9)


@pytest.mark.parametrize("placement, where", [("auto", ["cpu", "meta"]), ("cpu", ["cpu", "cpu"]),
                                              ("device", ["meta", "meta"])])
def test_small_core_placement_is_switchable(placement, where):
    small = torch.empty(144, 64, 64, device="meta")  # stands for cores on an accelerator
    large = torch.empty(1024, 1024, device="meta")
    with lm.config(small_cores=placement):
        assert [LA._common._core_device(c, "eig").type for c in (small, large)] == where
    with pytest.raises(ValueError, match="'gpu'"):
        lm.config(small_cores="gpu")


def test_a_torch_function_mode_sees_every_decomposition(gen, two_threads):
    """Modes are thread-local: with one active, the batch is not handed to worker threads."""
    with TorchCalls() as calls:
        cpu_batches.split_batch(torch.linalg.eigvals, randn(gen, 6, 16, 16))
    assert calls.count("linalg_eigvals") == 1


def test_small_decompositions_run_with_one_intra_op_thread(gen, two_threads):
    """Split workers and unsplit matrices of ONE_THREAD_WIDTHS see one torch thread (no OpenMP
    team to wait on, none per worker); others keep torch's threads; the count is restored."""
    seen = []

    def record(chunk):
        seen.append(torch.get_num_threads())
        return torch.linalg.svdvals(chunk)

    lo, hi = cpu_batches.ONE_THREAD_WIDTHS
    cpu_batches.split_batch(record, randn(gen, lo, lo))  # one matrix: not split, one thread
    cpu_batches.split_batch(record, randn(gen, 6, 64, 64))  # split across the two threads
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    seen.clear()
    cpu_batches.split_batch(record, randn(gen, lo - 1, lo - 1))  # too narrow to wait on a team
    cpu_batches.split_batch(record, torch.zeros(hi + 1, 2))  # wide enough for torch's threads
    assert seen == [2, 2]


@settings(max_examples=40, deadline=None)
@given(batch=st.sampled_from([(), (1,), (3,), (2, 2)]), m=st.integers(1, 40), n=st.integers(1, 40),
       threads=st.sampled_from([1, 2]), op=st.sampled_from(["svdvals", "svd", "eigvals"]),
       seed=st.integers(0, 99))
def test_for_shape_is_split_batch_for_that_shape(batch, m, n, threads, op, seed):
    """``for_shape(fn, shape, device)`` answers as ``split_batch(fn, .)`` bit for bit, with the
    intra-op threads split_batch would give ``fn``, the caller's count restored after."""
    if op == "eigvals":
        n = m
    t = randn(torch.Generator().manual_seed(seed), *batch, m, n)
    seen = []

    def record(chunk):
        seen.append(torch.get_num_threads())
        return OPS[op](chunk)

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = cpu_batches.split_batch(record, t)
        expected, seen[:] = list(seen), []
        got = cpu_batches.for_shape(record, tuple(t.shape), t.device)(t)
        assert seen == expected and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(old)
    got = (got,) if isinstance(got, torch.Tensor) else got
    want = (want,) if isinstance(want, torch.Tensor) else tuple(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True)


def test_one_intra_op_thread_restores_the_count_across_python_threads(two_threads):
    """Blocks entered from several Python threads at once: each sees one thread inside, and
    every thread has the user's count again after all have left, whichever order they leave in."""
    import threading

    inside, leave = threading.Barrier(2), [threading.Event(), threading.Event()]
    counts: dict = {}

    def block(k):
        torch.set_num_threads(2)  # the user's count in this thread
        with cpu_batches.one_intra_op_thread():
            inside.wait()
            counts[k, "in"] = torch.get_num_threads()
            leave[k].wait()
        leave[1 - k].wait()
        counts[k, "out"] = torch.get_num_threads()

    workers = [threading.Thread(target=block, args=(k,)) for k in range(2)]
    for w in workers:
        w.start()
    leave[1].set()  # the thread that entered second may leave first
    leave[0].set()
    for w in workers:
        w.join()
    assert counts == {(0, "in"): 1, (1, "in"): 1, (0, "out"): 2, (1, "out"): 2}
    assert torch.get_num_threads() == 2
