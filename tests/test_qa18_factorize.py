"""lazymat.factorize's nmse at the edges (qa18, session 13).

Found: ``factorize_matrix`` with no outputs (``M = 0``), a constant ``Y`` or a single entry
reported ``nmse`` NaN (``0 / 0``: an empty mean over an empty variance, or an exact fit over
zero variance) for a fit that is exact."""

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_matrix


def _expected_nmse(Y: np.ndarray, Y_hat: np.ndarray) -> float:
    """The documented nmse in NumPy float64: mean squared error over the (unbiased) variance of
    all of ``Y``'s entries; an exact fit is 0 whatever the variance, an inexact one over zero
    variance infinite."""
    error = float(np.mean(np.abs(Y - Y_hat) ** 2)) if Y.size else 0.0
    if error == 0:
        return 0.0
    variance = float(np.var(Y, ddof=1)) if Y.size > 1 else 0.0
    return error / variance if variance > 0 else math.inf


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), N=st.integers(1, 8), D=st.integers(1, 5), M=st.integers(0, 4),
       constant=st.booleans(), bias=st.booleans(), rank=st.integers(1, 3))
def test_nmse_is_the_documented_error_of_the_returned_tensors(seed, N, D, M, constant, bias, rank):
    """Property: ``nmse`` equals the documented formula recomputed in NumPy from the returned
    tensors, and is never NaN: no outputs, one sample, a constant ``Y`` included."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    Y = (torch.full((N, M), 2.5, dtype=torch.float64) if constant
         else torch.randn(N, M, generator=g, dtype=torch.float64))
    Wa = torch.randn(D, M, generator=g, dtype=torch.float64)
    b = torch.randn(M, generator=g, dtype=torch.float64) if bias else None
    sol = factorize_matrix(X, Y, Wa, bias=b, rank=rank)
    x, wa = X.numpy(), sol.Wa.numpy()
    Y_hat = x @ wa if sol.Wb is None else (x @ wa) @ sol.Wb.numpy()
    if sol.bias is not None:
        Y_hat = Y_hat + sol.bias.numpy()
    expected = _expected_nmse(Y.numpy(), Y_hat)
    assert not math.isnan(sol.nmse)
    assert sol.nmse == expected or math.isclose(sol.nmse, expected, rel_tol=1e-9, abs_tol=1e-12)


def test_no_outputs_is_an_exact_fit():
    X = torch.randn(6, 3, dtype=torch.float64)
    sol = factorize_matrix(X, X.new_zeros(6, 0), X.new_zeros(3, 0), rank=1)
    assert sol.nmse == 0.0 and sol.Wa.shape == (3, 0)
