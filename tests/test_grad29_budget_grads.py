"""Gradients of lazymat.linalg calls under a memory budget (``lazymat.linalg.gradients``: the
call runs unrecorded and is recomputed with autograd in the backward) against eager torch's on
the formed matrix, float64 and complex128.

Found (grad29): under a budget, a tensor argument other than the expression (``solve``'s right
side, ``lstsq``'s, a tensor of ``pinv`` tolerances) got no gradient (None: dropped silently),
where without a budget, and in torch, it gets one."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

_CALLS = {  # (lazymat's call, torch's on the formed matrix), both on (X, C)
    "solve": (lambda X, C: LA.solve(X, C), lambda E, C: torch.linalg.solve(E, C)),
    "solve left=False": (lambda X, C: LA.solve(X, C.mT, left=False),
                         lambda E, C: torch.linalg.solve(E, C.mT, left=False)),
    "lstsq": (lambda X, C: LA.lstsq(X, C).solution, lambda E, C: torch.linalg.lstsq(E, C).solution),
}


@pytest.mark.parametrize("call", sorted(_CALLS))
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 4), k=st.integers(1, 3),
       dtype=st.sampled_from([torch.float64, torch.complex128]), budget=st.sampled_from([None, 8192, 10**6]),
       right=st.sampled_from(["C", "A", "2 * A"]))
def test_gradient_to_every_tensor_argument_under_a_budget(call, seed, n, k, dtype, budget, right):
    """``call(A @ B, right)``: the gradients to ``A``, ``B`` and ``C`` are torch's, with and without
    a budget, where the right side is ``C``, ``A`` itself (one tensor both a leaf and the right
    side) or made from ``A`` by autograd."""
    gen = torch.Generator().manual_seed(seed)
    A0 = torch.randn(n, n, generator=gen, dtype=dtype) + 3 * torch.eye(n, dtype=dtype)
    B0 = torch.randn(n, n, generator=gen, dtype=dtype) + 3 * torch.eye(n, dtype=dtype)
    C0 = torch.randn(n, k, generator=gen, dtype=dtype)
    lazy_call, torch_call = _CALLS[call]
    A, B, C = (t.clone().requires_grad_() for t in (A0, B0, C0))
    with lm.config(memory_budget=budget):
        got = lazy_call(lm.lazy(A) @ lm.lazy(B), {"C": C, "A": A, "2 * A": 2 * A}[right])
        got = got.to_dense() if lm.is_lazy(got) else got
        grads = torch.autograd.grad(got.abs().square().sum(), (A, B, C), allow_unused=True)
    Ae, Be, Ce = (t.clone().requires_grad_() for t in (A0, B0, C0))
    want = torch_call(Ae @ Be, {"C": Ce, "A": Ae, "2 * A": 2 * Ae}[right])
    wants = torch.autograd.grad(want.abs().square().sum(), (Ae, Be, Ce), allow_unused=True)
    torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-8, atol=1e-8)
    for name, g, w in zip("ABC", grads, wants, strict=True):
        assert (g is None) == (w is None), f"gradient to {name}: {g} where torch's is {w}"
        if w is not None:
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-7, msg=f"gradient to {name}")


_BATCHWISE = {  # lazymat's call on a plain tensor, torch's
    "svdvals": (LA.svdvals, torch.linalg.svdvals),
    "trace": (LA.trace, lambda E: E.diagonal(dim1=-2, dim2=-1).sum(-1)),
    "diagonal": (LA.diagonal, lambda E: E.diagonal(dim1=-2, dim2=-1)),
    "matrix_norm fro": (LA.matrix_norm, torch.linalg.matrix_norm),
    "matrix_norm nuc": (lambda E: LA.matrix_norm(E, "nuc"), lambda E: torch.linalg.matrix_norm(E, "nuc")),
    "pinv": (LA.pinv, torch.linalg.pinv),
}


@pytest.mark.parametrize("call", sorted(_BATCHWISE))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(2,), (3,), (2, 2)]), m=st.integers(1, 4),
       n=st.integers(1, 4), dtype=st.sampled_from([torch.float64, torch.complex128]),
       budget=st.sampled_from([10**5, 10**7]))
def test_gradient_of_a_batched_tensor_argument_under_a_budget(call, seed, batch, m, n, dtype, budget):
    """A call on a batch of plain tensors (not wrapped) made by autograd from a leaf: under a
    budget its backward runs block by block of the batch, and the gradient is torch's (it was
    dropped: the block cut in the backward, unrecorded, reached no leaf)."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(*batch, m, n, generator=gen, dtype=dtype, requires_grad=True)
    lazy_call, torch_call = _BATCHWISE[call]
    want = torch_call(2 * W)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64)

    def loss(out: torch.Tensor) -> torch.Tensor:  # (a value past the rank lazymat keeps: 0)
        out = out.abs() if out.is_complex() else out
        return (out * (weights if out.shape == weights.shape else weights[..., :out.shape[-1]])).sum()

    with lm.config(memory_budget=budget):
        got = lazy_call(2 * W)
        (grad,) = torch.autograd.grad(loss(got), W, allow_unused=True)
    (wanted,) = torch.autograd.grad(loss(want), W)
    assert grad is not None, f"{call} under a budget: no gradient to the batch's leaf"
    torch.testing.assert_close(grad, wanted, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("call", sorted(_BATCHWISE))
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.sampled_from([(), (2,), (3,)]), m=st.integers(1, 4),
       n=st.integers(1, 4), dtype=st.sampled_from([torch.float64, torch.complex128]),
       budget=st.sampled_from([None, 10**5, 10**7]))
def test_gradient_through_leaves_made_from_one_tensor_under_a_budget(call, seed, batch, m, n, dtype, budget):
    """``call(lazy(A) @ lazy(2 * A).mT)``: leaves made from one leaf by autograd. The backward's
    recompute differentiated to ``A`` itself took the path through ``2 * A`` twice (once more
    when autograd passed ``2 * A``'s own gradient on), or freed ``2 * A``'s graph for the outer
    backward (an error)."""
    gen = torch.Generator().manual_seed(seed)
    A0 = torch.randn(*batch, m, n, generator=gen, dtype=dtype)
    lazy_call, torch_call = _BATCHWISE[call]
    A, Ae = A0.clone().requires_grad_(), A0.clone().requires_grad_()
    want = torch_call(Ae @ (2 * Ae).mT)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64)

    def loss(out: torch.Tensor) -> torch.Tensor:  # (a value past the rank lazymat keeps: 0)
        out = out.to_dense() if lm.is_lazy(out) else out
        out = out.abs() if out.is_complex() else out
        return (out * (weights if out.shape == weights.shape else weights[..., :out.shape[-1]])).sum()

    with lm.config(memory_budget=budget):
        (grad,) = torch.autograd.grad(loss(lazy_call(lm.lazy(A) @ lm.lazy(2 * A).mT)), A)
    (wanted,) = torch.autograd.grad(loss(want), Ae)
    torch.testing.assert_close(grad, wanted, rtol=1e-7, atol=1e-7)


_FUNC_CALLS = {
    "svdvals": (lambda X: LA.svdvals(X), lambda E: torch.linalg.svdvals(E)),
    "matrix_norm": (lambda X: LA.matrix_norm(X), lambda E: torch.linalg.matrix_norm(E)),
    "trace": (lambda X: LA.trace(X), lambda E: E.diagonal(dim1=-2, dim2=-1).sum(-1)),
    "sum": (lambda X: lm.reduce.sum(X, dim=-1), lambda E: E.sum(-1)),
    "amax": (lambda X: lm.reduce.amax(X, dim=-1), lambda E: E.amax(-1)),
}


@pytest.mark.parametrize("call", sorted(_FUNC_CALLS))
@pytest.mark.parametrize("budget", [None, 4000])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(2, 4), n=st.integers(2, 4))
def test_torch_func_grad_under_a_budget(call, budget, seed, m, n):
    """``torch.func.grad`` of a function that builds an expression and calls lazymat on it, with
    a memory budget set: torch's gradient (it raised torch's "must override the setup_context
    staticmethod" from the budget's recompute)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(3, m, 2, generator=gen, dtype=torch.float64)
    B = torch.randn(2, n, generator=gen, dtype=torch.float64)
    lazy_call, torch_call = _FUNC_CALLS[call]

    def loss(a, b):
        with lm.config(memory_budget=budget):
            out = lazy_call(lm.lazy(a) @ lm.lazy(b))
        return out[..., :2].sum()

    got = torch.func.grad(loss, argnums=(0, 1))(A, B)
    Ae, Be = A.clone().requires_grad_(), B.clone().requires_grad_()
    want = torch.autograd.grad(torch_call(Ae @ Be)[..., :2].sum(), (Ae, Be))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("call", ["trace", "svdvals", "matrix_norm"])
def test_gradcheck_under_a_budget(call):
    """torch.autograd.gradcheck of a function that wraps its tensor arguments (as a user writes
    it), under a memory budget: as without one, the finite differences see every perturbation."""
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    B = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = getattr(LA, call)

    def f(a, b):
        with lm.config(memory_budget=10**6):
            return fn(lm.lazy(a) @ lm.lazy(b))

    assert torch.autograd.gradcheck(f, (A, B), raise_exception=False)
