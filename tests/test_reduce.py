"""Reductions along dims of lazy expressions (lazymat.reduce) against torch on the dense tensor
(float64): values, indices, ties, NaN, empty dims and errors, under budgets that force one
block, two blocks and one line per block."""

import doctest
import math
import pathlib
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import expressions

import lazymat as lm
from lazymat import progress, reduce

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INF = math.inf


def _need(call) -> int | None:
    """The smallest budget ``call`` accepts, read from its error under a 1-byte budget (None when
    it does not stream: closed routes and empty tensors take no budget)."""
    try:
        with lm.config(memory_budget=1):
            call()
    except lm.BudgetTooSmall as e:
        return int(re.search(r"at least (\d+)", str(e))[1])
    return None


def _under(budget: str, call):
    """``call()`` under the default budget, the smallest it accepts (one line per block), or
    three times that."""
    if budget == "default":
        return call()
    need = _need(call)
    with lm.config(memory_budget=(need or 1) * (1 if budget == "min" else 3)):
        return call()


def _close(actual, expected):
    finite = expected[expected.isfinite()]
    scale = max(finite.abs().max().item() if finite.numel() else 0.0, 1.0)
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=1e-9, atol=1e-9 * scale,
                               equal_nan=True)


def _check_indices(D, dim, indices, values):
    """``indices`` pick ``values`` out of ``D`` (with float data, near-ties may be ordered either
    way by rounding; the exact-ties test below compares indices themselves)."""
    _close(D.gather(dim, indices), values)


# ---- every reduction on random expressions ------------------------------------------------------
def _dim_of(draw, D, allow_none=False, allow_tuple=False):
    choices = [st.integers(-D.ndim, D.ndim - 1)]
    if allow_none:
        choices.append(st.none())
    if allow_tuple:
        choices.append(st.lists(st.integers(0, D.ndim - 1), unique=True, max_size=D.ndim).map(tuple))
    return draw(st.one_of(*choices))


@SETTINGS
@given(expressions(), st.sampled_from(["default", "min", "three"]), st.data())
def test_reductions_match_torch(pair, budget, data):
    X, D = pair
    draw = data.draw
    op = draw(st.sampled_from(["topk", "amax", "amin", "argmax", "argmin", "max", "min", "sum",
                               "mean", "vector_norm"]))
    keepdim = draw(st.booleans())
    if op == "topk":
        dim = _dim_of(draw, D)
        k = draw(st.integers(0, D.shape[dim]))
        largest, sort = draw(st.booleans()), draw(st.booleans())
        got = _under(budget, lambda: torch.topk(X, k, dim, largest, sort))
        want = torch.topk(D, k, dim, largest, sort)
        assert isinstance(got, torch.return_types.topk)
        if sort:
            _close(got.values, want.values)
        else:  # torch leaves the order unspecified: compare as sets
            _close(got.values.sort(dim).values, want.values.sort(dim).values)
        _check_indices(D, dim, got.indices, got.values)
    elif op in ("amax", "amin"):
        dim = _dim_of(draw, D, allow_tuple=True)
        fn = getattr(torch, op)
        _close(_under(budget, lambda: fn(X, dim, keepdim)), fn(D, dim, keepdim))
    elif op in ("argmax", "argmin"):
        dim = _dim_of(draw, D, allow_none=True)
        got = _under(budget, lambda: getattr(X, op)(dim, keepdim))
        want = getattr(torch, op)(D, dim, keepdim)
        assert got.shape == want.shape and got.dtype == want.dtype
        best = (torch.amax if op == "argmax" else torch.amin)(D, () if dim is None else dim, keepdim=True)
        at = got if keepdim or dim is None else got.unsqueeze(dim)
        picked = D.flatten()[at.flatten()] if dim is None else D.gather(dim, at)
        _close(picked.reshape(-1), best.reshape(-1))
    elif op in ("max", "min"):
        dim = _dim_of(draw, D, allow_none=True)
        fn = getattr(torch, op)
        if dim is None:
            _close(_under(budget, lambda: fn(X)), fn(D))
        else:
            got, want = _under(budget, lambda: fn(X, dim, keepdim)), fn(D, dim, keepdim)
            assert type(got) is type(want)
            _close(got.values, want.values)
            _check_indices(D, dim, got.indices if keepdim else got.indices.unsqueeze(dim),
                           want.values if keepdim else want.values.unsqueeze(dim))
    elif op in ("sum", "mean"):
        dim = _dim_of(draw, D, allow_none=True, allow_tuple=True)
        fn = getattr(torch, op)
        got = _under(budget, lambda: fn(X, dim, keepdim))
        _close(got, fn(D, dim, keepdim))
        _close(getattr(X, op)(dim, keepdim), fn(D, dim, keepdim))
    else:
        dim = _dim_of(draw, D, allow_none=True, allow_tuple=True)
        ord = draw(st.sampled_from([2, 1, 0, INF, -INF, 3, -1, 0.5]))
        got = _under(budget, lambda: torch.linalg.vector_norm(X, ord, dim, keepdim))
        want = torch.linalg.vector_norm(D, ord, dim, keepdim)
        if ord == 2:  # squared entries: relative to the norm's scale, not each entry's
            assert_close(got, want, rtol=1e-7)
        else:
            _close(got, want)


# ---- exact ties: integer-valued data, indices compared exactly ----------------------------------
@st.composite
def integer_products(draw):
    """``A @ B`` (optionally ``+ C``, batched, transposed) with entries in {-1, 0, 1}: exact in
    float64 in any order, full of ties."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    m, r, n = draw(st.integers(1, 12)), draw(st.integers(1, 3)), draw(st.integers(1, 12))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))

    def ints(*shape):
        return torch.randint(-1, 2, shape, generator=g).double()

    A, B = ints(*batch, m, r), ints(r, n)
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    if draw(st.booleans()):
        C = ints(*batch, m, n)
        X, D = X + lm.lazy(C), D + C
    if draw(st.booleans()):
        X, D = X.mT, D.mT
    return X, D


@settings(SETTINGS, max_examples=60)
@given(integer_products(), st.sampled_from(["default", "min", "three"]), st.data())
def test_ties_are_broken_like_torch(pair, budget, data):
    X, D = pair
    dim = data.draw(st.integers(-D.ndim, D.ndim - 1))
    keepdim, largest = data.draw(st.booleans()), data.draw(st.booleans())
    k = data.draw(st.integers(0, D.shape[dim]))
    got, want = _under(budget, lambda: torch.topk(X, k, dim, largest)), torch.topk(D, k, dim, largest)
    assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    for name in ("argmax", "argmin"):
        for d in (dim, None):
            got = _under(budget, lambda: getattr(torch, name)(X, d, keepdim))  # noqa: B023
            assert torch.equal(got, getattr(torch, name)(D, d, keepdim)), (name, d)
    for name in ("max", "min"):
        got = _under(budget, lambda: getattr(torch, name)(X, dim, keepdim))  # noqa: B023
        want = getattr(torch, name)(D, dim, keepdim)
        assert torch.equal(got.values, want.values) and torch.equal(got.indices, want.indices)
    assert torch.equal(_under(budget, lambda: X.sum(dim, keepdim)), D.sum(dim, keepdim))


# ---- NaN, empty dims, errors ---------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["default", "min"])
def test_nan_follows_torch(gen, budget):
    a = randn(gen, 2, 9, 3)
    a[0, 4, 1] = a[1, 0, 0] = math.nan
    b = randn(gen, 3, 7)
    b[2, 5] = math.nan
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    for dim in (-1, -2, 0):
        got, want = _under(budget, lambda: torch.topk(X, 2, dim)), torch.topk(D, 2, dim)  # noqa: B023
        assert torch.equal(got.indices, want.indices)
        _close(got.values, want.values)
        for name in ("argmax", "argmin"):
            assert torch.equal(_under(budget, lambda: getattr(X, name)(dim)), getattr(D, name)(dim))  # noqa: B023
        for name in ("amax", "amin"):
            _close(_under(budget, lambda: getattr(torch, name)(X, dim)), getattr(torch, name)(D, dim))  # noqa: B023
        for ord in (2, 1, INF, 0):
            _close(_under(budget, lambda: torch.linalg.vector_norm(X, ord, dim)),  # noqa: B023
                   torch.linalg.vector_norm(D, ord, dim))
    assert torch.equal(_under(budget, lambda: X.argmax()), D.argmax())
    assert torch.equal(_under(budget, lambda: X.argmin()), D.argmin())
    _close(_under(budget, lambda: X.max()), D.max())


@pytest.mark.parametrize("shape", [(0, 4, 5), (2, 0, 5), (2, 4, 0), (0, 0, 0)])
def test_empty_dims_follow_torch(gen, shape):
    *batch, m, n = shape
    a, b = randn(gen, *batch, m, 3), randn(gen, 3, n)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    calls = [lambda T, d: T.sum(d), lambda T, d: T.mean(d), lambda T, d: torch.amax(T, d),
             lambda T, d: torch.argmax(T, d), lambda T, d: torch.topk(T, 0, d).values,
             lambda T, d: torch.max(T, d).values, lambda T, d: torch.linalg.vector_norm(T, 1, d),
             lambda T, d: torch.linalg.vector_norm(T, 2, d), lambda T, d: torch.argmin(T)]
    for call in calls:
        for d in (0, 1, 2, (1, 2)):
            if not isinstance(d, int) and call not in calls[:3] + calls[6:8]:
                continue
            try:
                want = call(D, d)
            except (RuntimeError, IndexError) as e:
                with pytest.raises(type(e)):
                    call(X, d)
            else:
                _close(call(X, d), want)


def test_bad_arguments_name_the_values(gen):
    X = lm.lazy(randn(gen, 6, 2)) @ lm.lazy(randn(gen, 2, 5))
    with pytest.raises(RuntimeError, match=r"k=6 .*dim -1 of size 5.*\(6, 5\)"):
        torch.topk(X, 6)
    with pytest.raises(RuntimeError, match=r"k=-1"):
        X.topk(-1)
    with pytest.raises(TypeError, match=r"k must be an int, got 2.0"):
        X.topk(2.0)
    with pytest.raises(IndexError, match=r"dim 2 is out of range .*\(6, 5\).*\[-2, 1\]"):
        X.topk(1, dim=2)
    with pytest.raises(IndexError, match=r"dim -3"):
        torch.amax(X, (-3, 0))
    with pytest.raises(RuntimeError, match=r"names a dim twice"):
        X.sum((0, -2))
    with pytest.raises(TypeError, match=r"ord must be a number, got 'fro'"):
        reduce.vector_norm(X, "fro")
    Z = X.to(torch.complex128)
    with pytest.raises(RuntimeError, match=r"dtype should be complex .*complex128\), got torch.float64"):
        torch.linalg.vector_norm(Z, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"elementwise max .*\(6, 5\)"):
        torch.max(X, X)


def test_budget_too_small_names_the_minimum(gen):
    X = lm.lazy(randn(gen, 30, 4)) @ lm.lazy(randn(gen, 4, 20))
    need = _need(lambda: X.topk(3))
    assert need is not None and need >= 20 * 8  # at least one row of the block
    with lm.config(memory_budget=need - 1), pytest.raises(lm.BudgetTooSmall) as info:
        X.topk(3)
    assert f"{need - 1} bytes" in str(info.value) and f"at least {need}" in str(info.value)
    assert "topk of a (30, 20) float64 expression" in str(info.value)
    with lm.config(memory_budget=need):
        assert torch.equal(X.topk(3).indices, (X.to_dense()).topk(3).indices)


# ---- blocks: counts, the far factor formed once, progress, interruption ---------------------------
class _BlockSpy:
    def __init__(self, monkeypatch, interrupt_after=None):
        self.totals, self.estimates, self.interrupt_after = [], [], interrupt_after
        self._blocks = progress.blocks
        monkeypatch.setattr(progress, "blocks", self)

    def __call__(self, items, total=None, desc="", estimate_seconds=None, unit="block"):
        self.totals.append(total)
        self.estimates.append(estimate_seconds)
        for n, item in enumerate(self._blocks(items, total, desc, estimate_seconds, unit)):
            if n == self.interrupt_after:
                raise KeyboardInterrupt
            yield item


def test_budgets_force_one_two_and_many_blocks(gen, monkeypatch):
    X = lm.lazy(randn(gen, 40, 3)) @ lm.lazy(randn(gen, 3, 25))
    D = X.to_dense()
    spy = _BlockSpy(monkeypatch)
    need = _need(lambda: X.argmax(-1))
    lo, hi = need, need * 64  # the smallest budget giving two blocks
    while lo < hi:
        mid = (lo + hi) // 2
        with lm.config(memory_budget=mid):
            X.argmax(-1)
        lo, hi = (mid + 1, hi) if spy.totals[-1] > 2 else (lo, mid)
    spy.totals.clear()
    for budget in (need, lo, None):
        with lm.config(memory_budget=budget):
            assert torch.equal(X.argmax(-1), D.argmax(-1))
            assert torch.equal(X.topk(4, dim=-1).indices, D.topk(4, dim=-1).indices)
    assert spy.totals == [40, 40, 2, 2, 1, 1]
    with lm.config(memory_budget=_need(lambda: X.topk(4, dim=-2))):  # column blocks
        assert torch.equal(X.topk(4, dim=-2).indices, D.topk(4, dim=-2).indices)
    assert spy.totals[-1] == 25
    assert all(e is not None and e >= 0 for e in spy.estimates)


def test_the_far_factor_is_formed_once(gen):
    A, B, C, W = randn(gen, 60, 10), randn(gen, 10, 2), randn(gen, 2, 10), randn(gen, 10, 50)
    X = lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C) @ lm.lazy(W)
    need = _need(lambda: X.topk(5))
    with lm.config(memory_budget=need * 4), TorchCalls() as calls:
        got = X.topk(5)
    want = torch.topk(A @ B @ C @ W, 5)
    assert torch.equal(got.indices, want.indices)
    _close(got.values, want.values)
    assert calls.matmul_shapes.count((2, 50)) == 1  # C @ W once, however many blocks
    assert max(s[0] for s in calls.matmul_shapes) < 60  # never all rows at once


def test_sums_and_row_norms_never_form_the_matrix(gen):
    a, b = randn(gen, 3, 40, 4), randn(gen, 4, 30)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    with TorchCalls() as calls:
        results = [X.sum(-1), X.sum(-2), X.sum(), X.mean((0, 2)), torch.linalg.vector_norm(X, dim=-1),
                   torch.linalg.vector_norm(X, dim=(0, 1)), torch.linalg.norm(X, dim=-2)]
    assert all(s[-2:] != (40, 30) for s in calls.matmul_shapes), calls.matmul_shapes
    wants = [D.sum(-1), D.sum(-2), D.sum(), D.mean((0, 2)), torch.linalg.vector_norm(D, dim=-1),
             torch.linalg.vector_norm(D, dim=(0, 1)), torch.linalg.norm(D, dim=-2)]
    for got, want in zip(results, wants, strict=True):
        assert_close(got, want)


def test_ctrl_c_mid_stream_leaves_nothing_behind(gen, monkeypatch):
    a, b = randn(gen, 50, 3), randn(gen, 3, 20)
    X = lm.lazy(a) @ lm.lazy(b)
    need = _need(lambda: X.topk(2))
    spy = _BlockSpy(monkeypatch, interrupt_after=3)
    with lm.config(memory_budget=need), pytest.raises(KeyboardInterrupt):
        X.topk(2)
    assert spy.totals == [50]
    after_interrupt = {k: set(v._cache) for k, v in (("X", X), ("a", X.children[0]))}
    spy.interrupt_after = None
    with lm.config(memory_budget=need):
        assert torch.equal(X.topk(2).indices, torch.topk(a @ b, 2).indices)
    assert after_interrupt == {k: set(v._cache) for k, v in (("X", X), ("a", X.children[0]))}


def test_progress_off_and_gradients(gen):
    a = randn(gen, 2, 12, 3).requires_grad_()
    b = randn(gen, 3, 9).requires_grad_()
    X = lm.lazy(a) @ lm.lazy(b)
    with lm.config(progress=False, memory_budget=_need(lambda: X.amax(-2))):
        loss = X.topk(2).values.sum() + X.amax(-2).sum() + torch.linalg.vector_norm(X, 1, -1).sum() \
            + X.sum(-1).square().sum() + torch.linalg.vector_norm(X, dim=-1).sum()
    got = torch.autograd.grad(loss, (a, b))
    D = a @ b
    loss = D.topk(2).values.sum() + D.amax(-2).sum() + torch.linalg.vector_norm(D, 1, -1).sum() \
        + D.sum(-1).square().sum() + torch.linalg.vector_norm(D, dim=-1).sum()
    for g, w in zip(got, torch.autograd.grad(loss, (a, b)), strict=True):
        assert_close(g, w, rtol=1e-8)


@pytest.mark.parametrize("budget", ["default", "min"])
def test_complex_sums_and_norms(gen, budget):
    a = torch.complex(randn(gen, 2, 8, 3), randn(gen, 2, 8, 3))
    b = torch.complex(randn(gen, 3, 6), randn(gen, 3, 6))
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    for dim in (-1, -2, 0, None, (0, 1)):
        assert_close(_under(budget, lambda: X.sum(dim)), D.sum(dim))  # noqa: B023
        assert_close(_under(budget, lambda: X.mean(dim)), D.mean(dim))  # noqa: B023
        for ord in (2, 1, 0, INF, 3):
            got = _under(budget, lambda: torch.linalg.vector_norm(X, ord, dim))  # noqa: B023
            want = torch.linalg.vector_norm(D, ord, dim)
            assert got.dtype == want.dtype
            assert_close(got, want, rtol=1e-8)


def test_docs_examples_run():
    assert doctest.testmod(reduce, optionflags=doctest.ELLIPSIS).failed == 0
    text = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "reductions.md").read_text()
    namespace: dict = {}
    exec(compile(re.findall(r"```python\n(.*?)```", text, flags=re.S)[0], "reductions.md", "exec"),  # noqa: S102
         namespace)
    W_E, W_Q, W_K = (namespace[k].double() for k in ("W_E", "W_Q", "W_K"))
    rows = torch.tensor([3, 1200, 4999])
    left, right = W_E @ W_Q, W_K.T @ W_E.T  # eager, in the cheap order
    dense = left[rows] @ right
    assert torch.equal(namespace["top"].indices[rows], dense.topk(10, dim=-1).indices)
    assert torch.equal(namespace["best_query"], (left @ right).argmax(0))
    assert_close(namespace["row_norms"][rows], torch.linalg.vector_norm(dense, dim=-1), rtol=1e-5)
    assert_close(namespace["row_sums"][rows], dense.sum(-1), rtol=1e-4)


def test_methods_and_exports(gen):
    X = lm.lazy(randn(gen, 5, 2)) @ lm.lazy(randn(gen, 2, 4))
    D = X.to_dense()
    assert torch.equal(lm.topk(X, 2).indices, D.topk(2).indices)
    assert torch.equal(X.max(0).indices, D.max(0).indices) and type(X.min(1)) is torch.return_types.min
    _close(X.amin(), D.amin())
    # a narrowing dtype= floats out of the sum's product with ones (docs/expressions.md): the mean
    # in float64 rounded once, within float32's rounding of torch's cast-first mean
    mean = X.mean(dtype=torch.float32)
    assert mean.dtype == torch.float32
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(mean, D.mean().float(), rtol=eps, atol=0)
    torch.testing.assert_close(mean, D.mean(dtype=torch.float32), rtol=8 * eps, atol=0)


@pytest.mark.cuda
@pytest.mark.parametrize("budget", ["default", "min"])
def test_cuda_results_match_torch_on_the_device(budget):
    g = torch.Generator().manual_seed(7)
    a, b = randn(g, 2, 300, 8, device="cuda"), randn(g, 8, 200, device="cuda")
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    got = _under(budget, lambda: torch.topk(X, 5, dim=-1))
    assert got.values.device.type == "cuda" and torch.equal(got.indices, torch.topk(D, 5, dim=-1).indices)
    assert torch.equal(_under(budget, lambda: X.argmax()), D.argmax())
    assert torch.equal(_under(budget, lambda: torch.max(X, -2).indices), torch.max(D, -2).indices)
    for ord in (1, 2, INF):
        assert_close(_under(budget, lambda: torch.linalg.vector_norm(X, ord, -2)),  # noqa: B023
                     torch.linalg.vector_norm(D, ord, -2))
    assert_close(X.sum(-1), D.sum(-1))
