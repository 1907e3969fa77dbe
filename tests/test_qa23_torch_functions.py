"""torch's aliases of what lazymat already routes answer as the routed call does.

``torch.linalg.matmul`` (torch's alias of ``torch.matmul``), ``torch.mv``, ``torch.real`` and
``torch.imag`` (``X.real``/``X.imag`` were lazy), ``torch.numel``, ``torch.is_complex``,
``torch.is_floating_point`` (``X.numel()``, ``X.is_complex()`` existed) and ``X.type_as(t)``
(``X.type(...)`` existed) raised "not supported on lazy expressions".
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close


@st.composite
def products(draw):
    """``(X, D)``: a lazy product of two leaves (real or complex, maybe batched) and its dense twin."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex64, torch.complex128]))
    m, r, n = (draw(st.integers(1, 5)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,)]))
    A = torch.randn(*batch, m, r, generator=g, dtype=dtype)
    B = torch.randn(r, n, generator=g, dtype=dtype)
    return lm.lazy(A) @ lm.lazy(B), A @ B


def _dense(y):
    return y.to_dense() if lm.is_lazy(y) else y


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(products())
def test_aliases_answer_as_the_dense_tensor(case):
    X, D = case
    g = torch.Generator().manual_seed(1)
    v = torch.randn(X.shape[-1], generator=g, dtype=X.dtype)
    M = torch.randn(X.shape[-1], 3, generator=g, dtype=X.dtype)
    tol = {"rtol": 1e-4, "atol": 1e-5} if X.dtype in (torch.float32, torch.complex64) else {}
    assert_close(_dense(torch.linalg.matmul(X, M)), D @ M, **tol)
    assert_close(_dense(torch.linalg.matmul(X, v)), D @ v, **tol)
    if X.ndim == 2:
        assert_close(torch.mv(X, v), torch.mv(D, v), **tol)
    else:
        with pytest.raises(RuntimeError, match="2-D matrix"):
            torch.mv(X, v)
    assert_close(_dense(torch.real(X)), torch.real(D), **tol)
    if X.is_complex():
        assert_close(_dense(torch.imag(X)), torch.imag(D), **tol)
    assert torch.numel(X) == torch.numel(D)
    assert torch.is_complex(X) == torch.is_complex(D)
    assert torch.is_floating_point(X) == torch.is_floating_point(D) == X.is_floating_point()


@pytest.mark.parametrize("target", [torch.float16, torch.float64, torch.complex128])
def test_type_as_takes_the_other_type_lazily(target):
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(4, 2, generator=g), torch.randn(2, 3, generator=g)
    X = lm.lazy(A) @ lm.lazy(B)
    other = torch.zeros(1, dtype=target)
    Y = X.type_as(other)
    assert lm.is_lazy(Y) and Y.dtype == target
    assert_close(Y.to_dense(), (A @ B).type_as(other), rtol=1e-3, atol=1e-3)
    assert X.type_as(lm.lazy(torch.zeros(1, 1, dtype=target))).dtype == target
    assert torch.zeros(2, 2).type_as(Y).dtype == target  # a tensor takes an expression's type
