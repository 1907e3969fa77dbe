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
