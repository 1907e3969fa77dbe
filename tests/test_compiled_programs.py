"""A chain plan's program compiled to one Python function (``ChainPlan.run``,
``plan.compiled_program``) and its opt_einsum path (``plan._path_of``): fresh chains with random
shapes, batches (broadcast, so that some steps go through ``layout.matmul``), transposed leaves,
complex dtypes and autograd give eager torch's float64 answers; the path agrees with an
independent simulation of opt_einsum's shrinking operand list."""

import functools

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import plan as lm_plan


def simulated_path(steps, n: int) -> tuple:
    """opt_einsum's path of the merges ``steps`` (Step.left, Step.right spans), by searching the
    list of live spans (the quadratic reading ``_path_of`` replaced)."""
    live = [(i, i) for i in range(n)]
    path = []
    for step in steps:
        i, j = live.index(step.left), live.index(step.right)
        path.append((min(i, j), max(i, j)))
        for k in sorted((i, j), reverse=True):
            del live[k]
        live.append((step.left[0], step.right[1]))
    return tuple(path)


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 9), min_size=2, max_size=14),
       optimizer=st.sampled_from([None, "greedy", "left-to-right", "dp"]))
def test_path_matches_the_operand_list(dims, optimizer):
    shapes = tuple((a, b) for a, b in zip(dims, dims[1:], strict=False))
    plan = lm_plan.plan_chain(shapes, 4, optimizer)
    assert plan.path == simulated_path(plan.steps, len(shapes))


def test_path_of_a_long_chain():
    """3,000-factor programs (left to right, and pairs of the two oldest operands: a balanced
    tree) give the simulated operand list's positions."""
    n = 3000
    left_to_right = [(0 if k == 0 else n + k - 1, k + 1) for k in range(n - 1)]
    balanced, queue, nxt = [], list(range(n)), n
    while len(queue) > 1:
        balanced.append((queue.pop(0), queue.pop(0)))
        queue.append(nxt)
        nxt += 1
    for program in (left_to_right, balanced):
        want, live = [], list(range(n))
        for k, (a, b) in enumerate(program):
            i, j = live.index(a), live.index(b)
            want.append((min(i, j), max(i, j)))
            live.remove(a)
            live.remove(b)
            live.append(n + k)
        assert lm_plan._path_of(program, n) == tuple(want)
    assert lm_plan._path_of(left_to_right, n)[1] == (0, n - 2)  # the first product is last in the list


@st.composite
def chains(draw):
    """2-6 factors with matrix dims 1-5, each with its own batch (none, (3,), (2, 1) or (1, 3):
    broadcast against each other), sometimes read transposed; float32/64 or complex."""
    n = draw(st.integers(2, 6))
    dims = draw(st.lists(st.integers(1, 5), min_size=n + 1, max_size=n + 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex128]))
    batches = draw(st.lists(st.sampled_from([(), (), (3,), (2, 1), (1, 3)]), min_size=n, max_size=n))
    flips = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    return dims, dtype, batches, flips, seed


def tensors_of(dims, dtype, batches, flips, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for (a, b), batch, flip in zip(zip(dims, dims[1:], strict=False), batches, flips, strict=True):
        shape = (*batch, b, a) if flip else (*batch, a, b)
        t = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
        out.append((t, flip))
    return out


def build(pairs, requires_grad=False):
    leaves = [t.detach().clone().requires_grad_(requires_grad) for t, _ in pairs]
    x = None
    for leaf, (_, flip) in zip(leaves, pairs, strict=True):
        y = lm.lazy(leaf).mT if flip else lm.lazy(leaf)
        x = y if x is None else x @ y
    return x, leaves


def eager(pairs):
    wide = [(t.mT if f else t).to(torch.complex128 if t.is_complex() else torch.float64) for t, f in pairs]
    return functools.reduce(torch.matmul, wide)


@settings(max_examples=60, deadline=None)
@given(chains())
def test_fresh_chain_values(case):
    pairs = tensors_of(*case)
    want = eager(pairs)
    x, _ = build(pairs)
    tol = 1e-4 if case[1] == torch.float32 else 1e-10
    torch.testing.assert_close(x.to_dense().to(want.dtype), want, rtol=tol, atol=tol)
    v = torch.randn(x.shape[-1], dtype=torch.float64).to(case[1])
    x, _ = build(pairs)
    torch.testing.assert_close((x @ v).to(want.dtype), want @ v.to(want.dtype), rtol=tol, atol=tol)


@settings(max_examples=30, deadline=None)
@given(chains())
def test_fresh_chain_gradients(case):
    dims, dtype, batches, flips, seed = case
    pairs = tensors_of(dims, torch.float64, batches, flips, seed)
    x, leaves = build(pairs, requires_grad=True)
    x.to_dense().sum().backward()
    wanted = [t.detach().clone().requires_grad_(True) for t, _ in pairs]
    read = [w.mT if f else w for w, f in zip(wanted, flips, strict=True)]
    functools.reduce(torch.matmul, read).sum().backward()
    for got, want in zip(leaves, wanted, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-10)


def test_no_grad_reads_leaves_detached():
    """Under ``torch.no_grad`` a chain over leaves that require grad answers a tensor with no
    graph, as eager torch does."""
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    with torch.no_grad():
        out = (lm.lazy(ts[0]) @ lm.lazy(ts[1]) @ lm.lazy(ts[2])).to_dense()
        want = ts[0] @ ts[1] @ ts[2]
    assert not out.requires_grad and out.grad_fn is None
    torch.testing.assert_close(out, want)


def test_in_place_change_is_read():
    """A fresh chain reads its leaves' current values: a leaf changed in place between two
    evaluations of chains built over it gives the new product."""
    g = torch.Generator().manual_seed(1)
    A, B, C = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    first = (lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)).to_dense()
    torch.testing.assert_close(first, A @ B @ C)
    B.mul_(2)
    torch.testing.assert_close((lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C)).to_dense(), A @ B @ C)


def test_program_empties_values_and_frees_operands():
    """``run`` takes the factors out of the list it is given (the caller's list holds no tensor
    after it), so each intermediate is freed once read, as the step loop did."""
    plan = lm_plan.plan_chain(((2, 3), (3, 4), (4, 5)), 8)
    values = [torch.ones(2, 3, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64),
              torch.ones(4, 5, dtype=torch.float64)]
    out = plan.run(values, torch.matmul, lm.layout.matmul)
    assert values == []
    torch.testing.assert_close(out, torch.full((2, 5), 12.0, dtype=torch.float64))
