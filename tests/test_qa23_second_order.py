"""Second derivatives of the values ``lm.linalg`` reads off a low-rank core.

The differentiable route projects the core onto bases found without autograd, which is exact to
first order only: Hessian-vector products (``create_graph=True``, ``gradgradcheck``) of
``svdvals``, the nuclear and spectral norms and ``svd``'s values of ``A @ B``
(5 x 3 @ 3 x 5) differed from dense torch's by up to 1.7, silently; complex ones were as wrong.
The values now take the second-order pull of the directions outside the bases (zero in value and
in first derivative), so their Hessians are dense torch's.
"""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.autograd import gradgradcheck

import lazymat as lm
from lazymat import linalg as LA

from conftest import assert_close

VALUES = {
    "svdvals": (LA.svdvals, lambda S: S),
    "svd": (lambda X: LA.svd(X)[1], lambda S: S),
    "nuc": (lambda X: LA.matrix_norm(X, "nuc"), lambda S: S.sum(-1)),
    "2": (lambda X: LA.matrix_norm(X, 2), lambda S: S[..., 0]),
}


def _reference_values(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The singular values of ``A @ B`` (both of full rank ``r``, the inner width) by torch's
    differentiable QR of each side and the SVD of the ``r x r`` core: twice differentiable where
    the values are apart and nonzero, unlike dense ``svdvals``, whose double backward at a
    rank-deficient matrix is off (torch's nuclear norm of ``a @ b.T`` has the wrong Hessian)."""
    _, Ra = torch.linalg.qr(A)
    _, Rb = torch.linalg.qr(B.mH)
    return torch.linalg.svdvals(Ra @ Rb.mH)


@st.composite
def low_rank(draw):
    """Leaves (requiring grad) of a product ``A @ B`` of inner width 1-3 with 4-6 rows and
    columns, or of a sum of two such products sharing ``A`` (its stacked factors then may be rank
    deficient); real or complex, maybe batched."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    m, r, n = draw(st.integers(4, 6)), draw(st.integers(1, 3)), draw(st.integers(4, 6))
    batch = draw(st.sampled_from([(), (2,)]))
    shapes = [(*batch, m, r), (r, n)] + ([(r, n)] if draw(st.booleans()) else [])
    return [torch.randn(*s, generator=g, dtype=dtype, requires_grad=True) for s in shapes]


def _expr(ts):
    """The lazy expression and its two full-rank factors (the sum is ``A @ (B + 2 C)``)."""
    A, B = lm.lazy(ts[0]), lm.lazy(ts[1])
    if len(ts) == 2:
        return A @ B, ts[0], ts[1]
    return A @ B + 2 * (A @ lm.lazy(ts[2])), ts[0], ts[1] + 2 * ts[2]


def _hvp(out, ts, w, v, square=False):
    """``d/dt <v, d/dt Re<w, out>>``: one Hessian-vector product of ``Re<w, out>`` (plus
    ``|A|^2`` with ``square``)."""
    total = (out * w.conj()).real.sum() + ((ts[0].abs() ** 2).sum() if square else 0)
    g = torch.autograd.grad(total, ts, create_graph=True)
    total = sum((gi * vi.conj()).real.sum() for gi, vi in zip(g, v, strict=True))
    return torch.autograd.grad(total, ts, allow_unused=True)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(low_rank(), st.sampled_from(sorted(VALUES)))
def test_hessian_of_values_off_the_core_is_torchs(ts, op):
    lazy_fn, reference_fn = VALUES[op]
    X, A, B = _expr(ts)
    S = _reference_values(A.detach(), B.detach())
    gaps = S[..., :-1] - S[..., 1:]
    assume(bool(S.min() > 0.05 * S.max()) and (S.shape[-1] < 2 or bool(gaps.min() > 0.05 * S.max())))
    out, want = lazy_fn(X), reference_fn(_reference_values(A, B))
    assert_close(out, want)
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in ts]
    got, expected = _hvp(out, ts, w, v), _hvp(want, ts, w, v)
    for a, b in zip(got, expected, strict=True):
        assert_close(a if a is not None else torch.zeros_like(b), b, atol=1e-8, rtol=1e-6)


def test_gradgradcheck_of_the_nuclear_norm_of_a_complex_product():
    """The first finding: ``gradgradcheck`` failed for the nuclear norm of ``A @ B``."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(5, 3, generator=g, dtype=torch.complex128, requires_grad=True)
    B = torch.randn(3, 5, generator=g, dtype=torch.complex128, requires_grad=True)
    assert gradgradcheck(lambda a, b: LA.matrix_norm(lm.lazy(a) @ lm.lazy(b), "nuc"), (A, B))


DENSE = {
    "fro": (LA.matrix_norm, torch.linalg.matrix_norm),
    "diagonal": (LA.diagonal, lambda D: torch.diagonal(D, dim1=-2, dim2=-1)),
    "trace": (LA.trace, lambda D: torch.diagonal(D, dim1=-2, dim2=-1).sum(-1)),
}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(low_rank(), st.sampled_from(sorted(VALUES) + sorted(DENSE)))
def test_hessian_under_a_memory_budget_is_recorded(ts, op):
    """Under a memory budget a call recomputes itself in the backward; with ``create_graph=True``
    that recompute recorded nothing: the second derivative raised "does not require grad" alone
    and was silently zero beside another term (here ``|A|^2``, whose own part survived)."""
    X, A, B = _expr(ts)
    if op in DENSE:
        lazy_fn, dense_fn = DENSE[op]
        assume(X.shape[-1] == X.shape[-2] or op == "fro")
        reference = dense_fn(A @ B)
    else:
        S = _reference_values(A.detach(), B.detach())
        gaps = S[..., :-1] - S[..., 1:]
        assume(bool(S.min() > 0.05 * S.max()) and (S.shape[-1] < 2 or bool(gaps.min() > 0.05 * S.max())))
        lazy_fn, reference_fn = VALUES[op]
        reference = reference_fn(_reference_values(A, B))
    with lm.config(memory_budget="1MiB"):
        out = lazy_fn(X)
    assert_close(out, reference)
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    v = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in ts]
    got, expected = _hvp(out, ts, w, v, True), _hvp(reference, ts, w, v, True)
    for a, b in zip(got, expected, strict=True):
        assert_close(a if a is not None else torch.zeros_like(b), b, atol=1e-8, rtol=1e-6)


def _pinv_sum(X):
    return LA.pinv(X).real.sum()


def _svd_product(X):  # U S Vh: the matrix itself, through the vectors
    U, S, Vh = LA.svd(X)
    return ((U * S[..., None, :].to(U.dtype)) @ Vh).real.sum()


def _eigh_vectors(X):  # the eigenvectors' squared moduli: no sign or phase in them
    W = LA.eigh(X @ X.mH).eigenvectors
    return (W.real ** 2 + W.imag ** 2)[..., 0, :].sum() if W.is_complex() else (W ** 2)[..., 0, :].sum()


def _lstsq(X):
    b = torch.ones(*X.shape[:-1], 2, dtype=X.dtype)
    return LA.lstsq(X, b).solution.real.sum()


VECTORS = {"pinv": _pinv_sum, "svd": _svd_product, "eigh": _eigh_vectors, "lstsq": _lstsq}


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(low_rank(), st.sampled_from(sorted(VECTORS)))
def test_second_derivatives_through_vectors_are_refused(ts, op):
    """The vectors' route is exact to first order only: a Hessian-vector product of ``pinv``'s sum
    of ``A @ B`` was off by 0.59, of the eigenvectors of ``A A^T`` by 0.39, without a word (complex
    ones raised torch's phase error). Their first derivatives stay exact; a second one raises."""
    X, A, B = _expr(ts)
    S = _reference_values(A.detach(), B.detach())
    gaps = S[..., :-1] - S[..., 1:]
    assume(bool(S.min() > 0.05 * S.max()) and (S.shape[-1] < 2 or bool(gaps.min() > 0.05 * S.max())))
    out = VECTORS[op](X)
    first = torch.autograd.grad(out, ts, create_graph=True, allow_unused=True)
    assert any(g is not None and g.requires_grad for g in first)
    with pytest.raises(LA.SecondDerivativeRefused, match="exact to first order only"):
        total = sum((g.real if g.is_complex() else g).sum() for g in first if g is not None)
        torch.autograd.grad(total, ts, allow_unused=True)


def test_first_derivatives_through_vectors_stay_exact():
    """A plain backward (and ``create_graph=True`` read once) is unchanged: ``pinv``'s gradient
    equals the one through torch's differentiable QR of the full-rank factors."""
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(_pinv_sum(lm.lazy(A) @ lm.lazy(B)), (A, B), create_graph=True)
    want = torch.autograd.grad(torch.linalg.pinv(A @ B).sum(), (A, B))
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_forward_over_forward_through_vectors_is_exact():
    """Forward mode alone carries the bases' tangents: ``jacfwd(jacfwd(f))`` through ``eigh``'s
    vectors is exact, and not refused. The reference reads them off torch's QR of ``A`` (dense
    torch's own second forward derivative of ``eigh`` of the rank-2 ``A A^T`` is off)."""
    g = torch.Generator().manual_seed(4)
    A = torch.randn(5, 2, generator=g, dtype=torch.float64)

    def reference(a):
        Q, R = torch.linalg.qr(a)
        return (((Q @ torch.linalg.eigh(R @ R.mT).eigenvectors) ** 2)[0]).sum()

    def lazy(a):
        return _eigh_vectors(lm.lazy(a))

    twice = torch.func.jacfwd(torch.func.jacfwd(lazy))(A)
    assert_close(twice, torch.func.jacfwd(torch.func.jacfwd(reference))(A), rtol=1e-8, atol=1e-10)
    with pytest.raises(LA.SecondDerivativeRefused):
        torch.func.hessian(lazy)(A)  # (reverse mode inside: refused)


@pytest.mark.parametrize("op", ["eigvalsh", "eigh"])
def test_torch_func_grad_through_hermitian_calls(op):
    """``torch.func.grad`` of ``eigvalsh``/``eigh`` raised "Cannot access storage of TensorWrapper"
    (the Hermitian check sized its blocks by the triplets' storages)."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(5, 2, generator=g, dtype=torch.float64)

    def lazy(a):
        X = lm.lazy(a) @ lm.lazy(a).mT
        return (LA.eigvalsh(X) if op == "eigvalsh" else LA.eigh(X).eigenvalues).square().sum()

    def reference(a):
        return torch.linalg.eigvalsh(a @ a.mT).square().sum()

    assert_close(torch.func.grad(lazy)(A), torch.func.grad(reference)(A), rtol=1e-9, atol=1e-12)
