"""Gradients under a memory budget: a call whose leaves require grad runs within the minimum its
``BudgetTooSmall`` names, as without gradients, counting what autograd keeps for the backward
pass (the call recomputes itself with autograd in backward); its answer equals dense float64 and
its gradients equal dense autograd's.

What autograd saved once went uncounted: the Frobenius norm of ``(2,3) @ (3,2)`` named 32 B and
held 330 B until the backward pass; the SVD of ``(2,5,3) @ (3,4)`` named 976 B and held 2992 B.
"""

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_budget_minimum_exact import named_minimum
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

OPS = {
    "fro": (lambda X, **k: LA.matrix_norm(X, **k), torch.linalg.matrix_norm),
    "nuc": (lambda X, **k: LA.matrix_norm(X, "nuc", **k), lambda D: torch.linalg.matrix_norm(D, "nuc")),
    "2": (lambda X, **k: LA.matrix_norm(X, 2, **k), lambda D: torch.linalg.matrix_norm(D, 2)),
    "svdvals": (lambda X, **k: LA.svdvals(X, **k), torch.linalg.svdvals),
    "svd": (lambda X, **k: LA.svd(X, **k), torch.linalg.svdvals),
    "trace": (lambda X, **k: LA.trace(X, **k), lambda D: torch.diagonal(D, dim1=-2, dim2=-1).sum(-1)),
    "diagonal": (lambda X, **k: LA.diagonal(X, **k), lambda D: torch.diagonal(D, dim1=-2, dim2=-1)),
    "pinv": (lambda X, **k: LA.pinv(X, **k), torch.linalg.pinv),
}


@st.composite
def products(draw):
    """Leaves (float64, requiring grad) of a product of 2-3 factors of 1-4 rows/columns, some
    with a batch of 2 or 3, the op, and whether the product is square (trace, diagonal)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(2, 3))
    dims = [draw(st.integers(1, 4)) for _ in range(n + 1)]
    op = draw(st.sampled_from(sorted(OPS)))
    if op in ("trace", "diagonal"):
        dims[-1] = dims[0]
    batch = draw(st.sampled_from([(), (2,), (3,)]))
    return op, [torch.randn(*(batch if draw(st.booleans()) else ()), dims[i], dims[i + 1], generator=g,
                            dtype=torch.float64, requires_grad=True) for i in range(n)]


def _bytes(out) -> int:
    """Bytes of a call's answer (a tensor, or the tensors of a tuple: the caller's)."""
    if isinstance(out, torch.Tensor):
        return out.untyped_storage().nbytes()
    return sum(t.untyped_storage().nbytes() for t in out)


def _product(ts):
    X, D = lm.lazy(ts[0]), ts[0]
    for t in ts[1:]:
        X, D = X @ lm.lazy(t), D @ t
    return X, D


def _simple(values: torch.Tensor) -> bool:
    """Singular values apart (and from zero) enough for their gradients to be well defined."""
    v = values.detach().flatten(0, -2) if values.ndim > 1 else values.detach()[None]
    gaps = (v[:, :-1] - v[:, 1:]).abs() if v.shape[-1] > 1 else v.new_ones(1)
    return bool(v.shape[-1] == 0 or (gaps.min() > 1e-3 and v.min() > 1e-3))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(products())
def test_a_differentiable_call_runs_within_its_named_minimum(case):
    op, ts = case
    fn, dense = OPS[op]
    X, D = _product(ts)
    minimum = named_minimum(X, fn)
    X.clear_cache()
    with Allocated() as counter:
        out = fn(X, memory_budget=minimum)
    assume(not isinstance(out, lm.Expr))  # a lazy pinv (its factors): recorded as without a budget
    assert counter.peak - _bytes(out) <= minimum, (counter.peak, _bytes(out), minimum, op, tuple(X.shape))
    if op == "svd":  # (the vectors' signs are LAPACK's: their gradients are checked through S's)
        out = out[1]
    expected = dense(D)
    if op in ("svdvals", "svd"):
        expected = expected[..., :out.shape[-1]]
    assert_close(out, expected)
    S = torch.linalg.svdvals(D)
    if op == "pinv" and (S.min() < 1e-3 if S.numel() else False):
        return  # pinv's gradient jumps at a rank-deficient matrix
    if op in ("nuc", "2", "svdvals", "svd") and not _simple(S[..., :out.shape[-1]] if op in ("svdvals", "svd")
                                                            else S):
        return  # repeated values: their gradients are not defined
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((out * w).sum(), ts, allow_unused=True)
    want = torch.autograd.grad((expected * w).sum(), ts, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert_close(a if a is not None else torch.zeros_like(b), b)
