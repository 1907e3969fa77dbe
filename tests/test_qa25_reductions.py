"""Session 18 QA (qa25): streamed reductions tried as a demanding user. Each section names what
was found; every property compares with eager torch on the dense float64 tensor."""

import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.autograd import forward_ad

import lazymat as lm

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _least_budget(call) -> int | None:
    """The least budget ``call()`` accepts (None: it takes no budget)."""
    try:
        with lm.config(memory_budget=1):
            call()
    except lm.BudgetTooSmall as e:
        return e.minimum
    return None


# ---- the gradient of an extreme over both matrix dims, among ties in several blocks -----------
# Found: amax/amin/max/min over both matrix dims and the infinity norms reduce each block of rows,
# then reduce the blocks' extremes again. torch splits the gradient evenly among the tied
# entries of the whole tensor; the second reduction split it evenly among the tied *blocks*, then
# within each block: for A @ B = [[3, 0, 3], [0, 3, 0], [3, 0, 3]] (one row a block) the gradient
# of amax to A[0, 0] was 1.0 against torch's 1.2, with or without a budget.
@st.composite
def tied_products(draw):
    """``(A, B, transpose)``: the product ``A @ B`` (``.mT`` when ``transpose``) has entries in
    {-1, 0, 1} products: exact in float64 in any order, its extremes tied across rows (a NaN
    entry of ``A`` in some)."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    m, r, n = draw(st.integers(2, 8)), draw(st.integers(1, 3)), draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    A = torch.randint(-1, 2, (*batch, m, r), generator=g).double()
    B = torch.randint(-1, 2, (r, n), generator=g).double()
    if draw(st.booleans()):  # a NaN: torch's gradient is NaN for amax, zero for a norm
        A.view(-1)[draw(st.integers(0, A.numel() - 1))] = math.nan
    return A, B, draw(st.booleans())


def _product(A, B, transpose: bool, lazy: bool):
    P = lm.lazy(A) @ lm.lazy(B) if lazy else A @ B
    return P.mT if transpose else P


EXTREMES = {
    "amax": lambda Y, dim: torch.amax(Y, dim),
    "amin": lambda Y, dim: torch.amin(Y, dim),
    "max": lambda Y, dim: torch.max(Y),
    "min": lambda Y, dim: torch.min(Y),
    "inf norm": lambda Y, dim: torch.linalg.vector_norm(Y, math.inf, dim),
    "-inf norm": lambda Y, dim: torch.linalg.vector_norm(Y, -math.inf, dim),
}


@SETTINGS
@given(tied_products(), st.sampled_from(sorted(EXTREMES)), st.booleans(), st.booleans(),
       st.sampled_from(["default", "min"]))
def test_the_gradient_of_an_extreme_over_blocks_is_shared_among_ties_like_torchs(
        case, op, with_batch, forward, budget):
    """Property: reverse- (or forward-) mode derivatives of an extreme over both matrix dims (and
    the batch dim) equal torch's on the dense product, under the default and the least budget."""
    A, B, transpose = case
    # torch.max() (no dim) of a NaN gives the NaN entries the gradient, amax all of them NaN;
    # lazymat's max() differentiates as amax there (a known difference, not this property)
    assume(op not in ("max", "min") or not A.isnan().any())
    ndim = A.ndim
    dim = tuple(range(0 if with_batch else ndim - 2, ndim))
    fn = EXTREMES[op]
    least = _least_budget(lambda: fn(_product(A, B, transpose, True), dim)) if budget == "min" else None
    if forward:
        tangent = torch.randn(A.shape, generator=torch.Generator().manual_seed(1), dtype=A.dtype)
        answers = []
        for lazy in (False, True):
            with forward_ad.dual_level(), lm.config(memory_budget=least if lazy else None):
                out = fn(_product(forward_ad.make_dual(A, tangent), B, transpose, lazy), dim)
                answers.append(tuple(t.clone() for t in forward_ad.unpack_dual(out)))
        (want, want_d), (got, got_d) = answers
    else:
        answers = []
        for lazy in (False, True):
            leaf = A.clone().requires_grad_()
            with lm.config(memory_budget=least if lazy else None):
                out = fn(_product(leaf, B, transpose, lazy), dim)
                answers.append((out.detach(), torch.autograd.grad(out.sum(), leaf)[0]))
        (want, want_d), (got, got_d) = answers
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(got_d, want_d, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_the_gradient_of_amax_over_three_tied_rows_is_torchs():
    """The example found: two tied entries in rows 0 and 2, one in row 1."""
    A = torch.tensor([[1.0, 0], [0, 1], [1, 0]], dtype=torch.float64, requires_grad=True)
    B = torch.tensor([[3.0, 0, 3], [0, 3, 0]], dtype=torch.float64)
    want = torch.autograd.grad(torch.amax(A @ B), A)[0]
    got = torch.autograd.grad(torch.amax(lm.lazy(A) @ lm.lazy(B)), A)[0]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(want, torch.tensor([[1.2, 0], [0, 0.6], [1.2, 0]], dtype=torch.float64))


@pytest.mark.parametrize("transform", [torch.func.jacfwd, torch.func.jacrev, torch.func.grad])
@pytest.mark.parametrize("op", ["amax", "-inf norm", "inf norm"])
def test_torch_func_transforms_differentiate_a_tied_extreme_like_torch(transform, op):
    """jacfwd batches the forward-mode derivative with vmap: the combine step has a vmap rule."""
    A = torch.tensor([[1.0, 0], [0, 1], [1, 0]], dtype=torch.float64)
    B = torch.tensor([[3.0, 0, 3], [0, 3, 0]], dtype=torch.float64)
    fn = EXTREMES[op]
    got = transform(lambda a: fn(lm.lazy(a) @ lm.lazy(B), (0, 1)))(A)
    want = transform(lambda a: fn(a @ B, (0, 1)))(A)
    torch.testing.assert_close(got, want)
