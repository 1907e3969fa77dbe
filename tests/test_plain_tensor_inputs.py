"""Every ``lazymat.linalg`` call takes a plain tensor as torch's does (``as_expr`` reads it as a
leaf): the compiled-call lookup read an expression's cache on it and raised ``AttributeError``
for svdvals, svd, eigvals, matrix_norm, cond, matrix_rank and pinv. Random tensors (batched,
real and complex) against ``torch.linalg`` in float64."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close

LA = lm.linalg


def _spectrum_close(a: torch.Tensor, b: torch.Tensor) -> None:
    """Eigenvalues compared as multisets (their order among ties is arbitrary)."""
    key = lambda t: torch.sort(t.real * 1e6 + t.imag, dim=-1).indices  # noqa: E731
    assert_close(a.gather(-1, key(a)), b.gather(-1, key(b)), rtol=1e-8, atol=1e-8)


@st.composite
def tensors(draw, square: bool = False):
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    m = draw(st.integers(1, 6))
    n = m if square else draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn(*batch, m, n, dtype=dtype, generator=g)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(tensors())
def test_rectangular_calls_on_a_plain_tensor_match_torch(A):
    scale = 1 + A.abs().amax().item()
    assert_close(LA.svdvals(A), torch.linalg.svdvals(A), rtol=1e-10, atol=1e-10 * scale)
    for ord in ("fro", "nuc", 2, -2, 1, float("inf")):
        assert_close(LA.matrix_norm(A, ord), torch.linalg.matrix_norm(A, ord), rtol=1e-10, atol=1e-10 * scale)
    assert torch.equal(LA.matrix_rank(A), torch.linalg.matrix_rank(A))
    assert_close(LA.pinv(A), torch.linalg.pinv(A), rtol=1e-8, atol=1e-8)
    U, S, Vh = LA.svd(A)
    assert_close((U * S.to(U.dtype)[..., None, :]) @ Vh, A, rtol=1e-10, atol=1e-10 * scale)
    assert_close(LA.trace(A), torch.diagonal(A, dim1=-2, dim2=-1).sum(-1), rtol=1e-12, atol=1e-12 * scale)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(tensors(square=True))
def test_square_calls_on_a_plain_tensor_match_torch(A):
    _spectrum_close(LA.eigvals(A), torch.linalg.eigvals(A))
    assert_close(LA.cond(A), torch.linalg.cond(A), rtol=1e-6, atol=0)
    assert_close(LA.det(A), torch.linalg.det(A), rtol=1e-10, atol=1e-10)
    H = A + A.mH
    tol = 1e-10 * (1 + H.abs().amax().item())
    assert_close(LA.eigvalsh(H), torch.linalg.eigvalsh(H), rtol=1e-10, atol=tol)
