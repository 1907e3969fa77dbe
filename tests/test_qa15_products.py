"""qa15: ``matrix_power`` takes ``n`` as torch does (an int, a NumPy int, a 0-dim integer
tensor), answering what float64 torch answers; a float or bool ``n`` is refused as torch does."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

KINDS = [int, np.int64, np.int32, torch.tensor]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 6), st.sampled_from(KINDS), st.sampled_from([(), (2,), (0,), (3, 1)]),
       st.integers(1, 5), st.integers(0, 2**16))
def test_index_like_powers_are_torchs(n, kind, batch, size, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, size, size, generator=g, dtype=torch.float64) / size
    expected = torch.linalg.matrix_power(A, n)
    for out in (torch.linalg.matrix_power(lm.lazy(A), kind(n)), lm.lazy(A).matrix_power(kind(n))):
        assert out.shape == expected.shape
        assert torch.allclose(out.to_dense(), expected, atol=1e-12)


@pytest.mark.parametrize("n", [2.0, True, torch.tensor(2.0), "2"])
def test_powers_that_are_no_int_are_refused(n):
    A = torch.randn(3, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="matrix_power: n must be an int"):
        lm.linalg.matrix_power(lm.lazy(A), n)
    with pytest.raises(TypeError):
        torch.linalg.matrix_power(A, n)


@pytest.mark.parametrize("n", [50, 200])
def test_a_long_power_runs_in_linear_key_work(n):
    """A planned ``matrix_power(X, n)`` of a low-rank ``X`` (a chain of ``2 n`` views) hashes O(n)
    views as it runs again: the executor keyed every span of the chain for the memo (a tuple of the
    span's views, ~n^2 hashes: 1M at n = 1000, 0.2 s of a 0.21 s call) though the memo keeps
    only the spans the plans form twice. The answer is float64 torch's."""
    from unittest import mock

    from lazymat import rewrite

    g = torch.Generator().manual_seed(n)
    L = torch.randn(30, 3, generator=g, dtype=torch.float64) / 3
    R = torch.randn(3, 30, generator=g, dtype=torch.float64) / 3
    X = lm.lazy(L) @ lm.lazy(R)
    P = torch.linalg.matrix_power(X, n)
    P.to_dense()  # planned: its form holds its plan and what its memo keeps
    calls = [0]
    plain = rewrite.View.__hash__

    def counted(view):
        calls[0] += 1
        return plain(view)

    with mock.patch.object(rewrite.View, "__hash__", counted):
        out = P.to_dense()
    assert calls[0] <= 8 * n, calls[0]
    expected = torch.linalg.matrix_power(L @ R, n)
    assert torch.allclose(out, expected, rtol=1e-9, atol=1e-12 * expected.abs().max().item())
