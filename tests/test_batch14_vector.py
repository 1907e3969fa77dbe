"""``X @ v`` and ``v @ X`` keep ``v`` 1-D through the chain's products when the plan multiplies it
by 2-D factors alone before its last step (``ChainPlan.vector_ends``; the last product
broadcasts the batch), else as a column or row: values and gradients are eager torch's in
float64 for any batches (broadcast, size-1, on either side), transposed leaves, complex dtypes,
and after a leaf is written in place between calls."""

import functools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def chains(draw):
    """``(batches, flips, dims, dtype, left, grad, seed)``: per factor its batch dims and
    whether it is read as ``lazy(t).mT``; ``left`` for ``v @ X``."""
    n = draw(st.integers(1, 4))
    batches = [draw(st.sampled_from([(), (), (), (3,), (1,), (2, 1), (1, 3)])) for _ in range(n)]
    flips = [draw(st.booleans()) for _ in range(n)]
    dims = draw(st.lists(st.integers(1, 6), min_size=n + 1, max_size=n + 1))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    left, grad = draw(st.booleans()), draw(st.booleans())
    return batches, flips, dims, dtype, left, grad, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(chains())
def test_a_chain_times_a_vector_is_eagers(case):
    batches, flips, dims, dtype, left, grad, seed = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(*b, dims[i + 1], dims[i]) if flip else (*b, dims[i], dims[i + 1])
              for i, (b, flip) in enumerate(zip(batches, flips, strict=True))]
    stored = [randn(gen, *s, dtype=dtype) for s in shapes]
    stored = [t.requires_grad_(grad) for t in stored]
    v = randn(gen, dims[0] if left else dims[-1], dtype=dtype)

    def lazy_chain():
        ops = [lm.lazy(t).mT if flip else lm.lazy(t) for t, flip in zip(stored, flips, strict=True)]
        return functools.reduce(lambda a, b: a @ b, ops)

    def eager(tensors):
        M = functools.reduce(torch.matmul, [t.mT if f else t for t, f in zip(tensors, flips, strict=True)])
        return (v[..., None, :] @ M).squeeze(-2) if left else (M @ v[:, None]).squeeze(-1)

    for _ in range(2):  # fresh, then a leaf written in place (read again by the next fresh chain)
        out = v @ lazy_chain() if left else lazy_chain() @ v
        copies = [t.detach().clone().requires_grad_(grad) for t in stored]
        want = eager(copies)
        assert out.shape == want.shape
        assert_close(out.detach(), want.detach())
        if grad:
            out.real.sum().backward()
            want.real.sum().backward()
            for t, c in zip(stored, copies, strict=True):
                assert_close(t.grad, c.grad)
                t.grad = None
        with torch.no_grad():
            stored[-1].mul_(-0.5)


def test_a_batched_first_factor_takes_the_vector_as_it_is(gen):
    """``H @ B @ C @ v`` with only ``H`` batched: matrix-vector products from ``v``, the last one
    broadcast over ``H``'s batch (no column made, none squeezed)."""
    H, B, C, v = randn(gen, 4, 64, 32), randn(gen, 32, 32), randn(gen, 32, 64), randn(gen, 64)
    X = lm.lazy(H) @ lm.lazy(B) @ lm.lazy(C)
    with TorchCalls() as calls:
        out = X @ v
    assert_close(out, H @ (B @ (C @ v)))
    assert calls.count("unsqueeze") == calls.count("squeeze") == 0
    assert [shapes[1] for shapes in calls.inputs("matmul")] == [(64,), (32,), (32,)]
