"""What a lazy sum refuses (a number, a 0-dim or 1-D tensor, a numpy scalar) is refused by one
message, whichever way it is written (``+``, ``-``, either side, ``X.add``, ``torch.sub``);
a zero is dropped by all of them (``X + 0j`` is complex, as torch's). Before, ``X - 2.5`` said
"cannot combine ... with float" and ``X + torch.tensor(2.5)`` "lazymat.lazy needs a tensor with
at least 2 dims"."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

WAYS = {
    "X + v": lambda X, v: X + v, "v + X": lambda X, v: v + X, "X - v": lambda X, v: X - v,
    "v - X": lambda X, v: v - X, "X.add(v)": lambda X, v: X.add(v), "X.sub(v)": lambda X, v: X.sub(v),
    "X.add(v, alpha=2)": lambda X, v: X.add(v, alpha=2), "torch.add(X, v)": lambda X, v: torch.add(X, v),
    "torch.sub(X, v)": lambda X, v: torch.sub(X, v), "torch.sub(v, X)": lambda X, v: torch.sub(v, X),
}
NOT_MATRICES = {
    "int": lambda n: 3, "float": lambda n: 2.5, "complex": lambda n: 1j,
    "numpy": lambda n: np.float64(2.5), "0-dim": lambda n: torch.tensor(2.5, dtype=torch.float64),
    "1-D": lambda n: torch.ones(n, dtype=torch.float64),
}


@settings(max_examples=60, deadline=None)
@given(m=st.integers(1, 4), n=st.integers(1, 4), batch=st.sampled_from([(), (2,)]),
       way=st.sampled_from(sorted(WAYS)), what=st.sampled_from(sorted(NOT_MATRICES)))
def test_a_non_matrix_addend_is_refused_by_one_message(m, n, batch, way, what):
    A, B = torch.randn(*batch, m, 2, dtype=torch.float64), torch.randn(2, n, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    shape = ", ".join(map(str, X.shape))
    with pytest.raises(TypeError, match=rf"cannot add .* to a lazy matrix expression of shape \({shape}\)"):
        WAYS[way](X, NOT_MATRICES[what](n))


@settings(max_examples=30, deadline=None)
@given(way=st.sampled_from(sorted(WAYS)), zero=st.sampled_from([0, 0.0, 0j, np.float32(0)]),
       dtype=st.sampled_from([torch.float16, torch.float32, torch.float64, torch.complex64]))
def test_a_zero_is_dropped_in_torchs_dtype(way, zero, dtype):
    t = torch.randn(3, 4, dtype=torch.float64).to(dtype)
    want = WAYS[way](t, zero)
    got = WAYS[way](lm.lazy(t), zero).to_dense()
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want)
