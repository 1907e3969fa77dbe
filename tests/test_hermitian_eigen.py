"""``eigvalsh`` / ``eigh`` of Hermitian lazy expressions (``lm.linalg`` and ``torch.linalg``'s
names), against float64/complex128 torch on the dense matrix; a matrix that is not Hermitian is
refused by name; explain lists the route that runs."""

import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated
from test_properties import expressions
from test_qa_costs import Executed, gemm_flops

import lazymat as lm
from lazymat import linalg as LA

from conftest import forced_route

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def hermitian(draw):
    """``(X, D)``: a lazy Hermitian expression of rank at most ``2 r`` and its dense value: the
    Hermitian part of a product ``A B^H`` (a sum of two products), or a Gram ``A S A^H``."""
    n, r = draw(st.integers(1, 9)), draw(st.integers(1, 4))
    batch = draw(st.sampled_from([(), (2,), (3, 1)]))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    A = torch.randn(*batch, n, r, generator=g, dtype=dtype)
    if draw(st.booleans()):
        B = torch.randn(n, r, generator=g, dtype=dtype)
        X = (lm.lazy(A) @ lm.lazy(B).mH + lm.lazy(B) @ lm.lazy(A).mH) / 2
        D = (A @ B.mH + B @ A.mH) / 2
    else:
        S = torch.diag(torch.randn(r, generator=g, dtype=torch.float64)).to(dtype)
        X = lm.lazy(A) @ lm.lazy(S) @ lm.lazy(A).mH
        D = A @ S @ A.mH
    return X, D


@SETTINGS
@given(hermitian())
def test_eigenvalues_are_torchs(pair):
    X, D = pair
    expected = torch.linalg.eigvalsh(D)
    scale = 1 + expected.abs().max().item() if expected.numel() else 1
    full = torch.linalg.eigvalsh(X)  # torch's name: all n, ascending
    assert full.dtype == expected.dtype and full.shape == expected.shape
    assert torch.allclose(full, expected, atol=1e-9 * scale)
    w = LA.eigvalsh(X)  # the nonzero triplets' k, ascending
    assert w.shape[-1] <= min(X.shape[-1], 2 * 4) and bool((w[..., 1:] >= w[..., :-1]).all())


@SETTINGS
@given(hermitian())
def test_eigenpairs_rebuild_the_matrix_with_orthonormal_vectors(pair):
    X, D = pair
    w, Q = torch.linalg.eigh(X)
    scale = 1 + D.abs().max().item()
    rebuilt = (Q * w.to(Q.dtype)[..., None, :]) @ Q.mH
    assert torch.allclose(rebuilt, D, atol=1e-9 * scale)
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype)
    assert torch.allclose(Q.mH @ Q, eye.expand_as(Q.mH @ Q), atol=1e-9)
    assert torch.allclose(D @ Q, Q * w.to(Q.dtype)[..., None, :], atol=1e-9 * scale)


@SETTINGS
@given(st.integers(2, 8), st.integers(1, 3), st.integers(0, 2**16))
def test_a_matrix_that_is_not_hermitian_is_refused(n, r, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, r, generator=g, dtype=torch.float64)
    B = torch.randn(n, r, generator=g, dtype=torch.float64)
    D = A @ B.T
    asymmetry = torch.linalg.matrix_norm(D - D.T) / torch.linalg.matrix_norm(D, 2)
    X = lm.lazy(A) @ lm.lazy(B).mT
    if asymmetry > 1e-6:
        with pytest.raises(ValueError, match="need a Hermitian matrix"):
            LA.eigvalsh(X)
        with pytest.raises(ValueError, match="need a Hermitian matrix"):
            torch.linalg.eigh(X)


def test_rounding_noise_is_not_asymmetry_and_bad_arguments_are_refused():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 5, generator=g)  # float32: X = A A^T is Hermitian up to rounding
    X = lm.lazy(A) @ lm.lazy(A).mT
    assert torch.allclose(torch.linalg.eigvalsh(X).double()[-5:],
                          torch.linalg.eigvalsh((A @ A.T).double())[-5:], rtol=1e-4)
    with pytest.raises(ValueError, match="UPLO must be 'L' or 'U'"):
        LA.eigvalsh(X, "X")
    with pytest.raises(ValueError, match=r"square matrix, got shape \(300, 4\)"):
        LA.eigh(X[:, :4])
    bad = torch.stack([A @ A.T, A @ A.T])[:, :5, :5].double()
    bad[1, 0, 0] = math.nan
    w = LA.eigvalsh(lm.lazy(bad[..., :3]) @ lm.lazy(bad[..., :3]).mT, full=True)
    assert bool(w[1].isnan().all()) and not bool(w[0].isnan().any())


def test_gradients_are_torchs():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    (torch.linalg.eigvalsh(lm.lazy(A) @ lm.lazy(A).mT) * c).sum().backward()
    ours, A.grad = A.grad, None
    (torch.linalg.eigvalsh(A @ A.T) * c).sum().backward()
    # the zero eigenvalues' order among themselves is arbitrary in both: c is weighed only on
    # the three nonzero (largest) ones by checking those gradients via a second contraction
    assert ours is not None and torch.isfinite(ours).all()
    A.grad = None
    (torch.linalg.eigvalsh(lm.lazy(A) @ lm.lazy(A).mT)[-3:] * c[-3:]).sum().backward()
    ours, A.grad = A.grad, None
    (torch.linalg.eigvalsh(A @ A.T)[-3:] * c[-3:]).sum().backward()
    assert torch.allclose(ours, A.grad, atol=1e-9)


@pytest.mark.parametrize("op", ["eigvalsh", "eigh"])
@pytest.mark.parametrize("factored", [False, True])
def test_explain_lists_the_route_that_runs(op, factored):
    """GEMM FLOPs counted at the ATen level equal the explained product rows (the numerical rank
    is the inner width here); the peak allocated is within the explained peak."""
    g = torch.Generator().manual_seed(2)
    A = torch.randn(60, 3, generator=g, dtype=torch.float64)
    B = torch.randn(60, 3, generator=g, dtype=torch.float64)
    X = (lm.lazy(A) @ lm.lazy(B).mT + lm.lazy(B) @ lm.lazy(A).mT) / 2
    with forced_route("factored", X) if factored else contextlib.nullcontext():
        report = lm.explain(X, op)
        with Executed() as ran:
            getattr(LA, op)(X)
        with Allocated() as held:
            out = getattr(LA, op)((lm.lazy(A) @ lm.lazy(B).mT + lm.lazy(B) @ lm.lazy(A).mT) / 2)
    assert ran.flops == gemm_flops(report, 6), str(report)
    answer = sum(t.numel() * t.element_size() for t in (out if isinstance(out, tuple) else (out,)))
    assert held.peak <= report.planned.peak_bytes + answer, str(report)


@SETTINGS
@given(expressions(), st.booleans())
def test_grams_of_random_expressions(pair, outer):
    """``Y Y^H`` or ``Y^H Y`` of random expressions (sums, slices, cats, casts, batches): the
    eigenvalues torch gives on the dense Gram."""
    Y, D = pair
    X, G = (Y @ Y.mH, D @ D.mH) if outer else (Y.mH @ Y, D.mH @ D)
    expected = torch.linalg.eigvalsh(G)
    scale = 1 + (expected.abs().max().item() if expected.numel() else 0)
    assert torch.allclose(torch.linalg.eigvalsh(X), expected, atol=1e-9 * scale)
