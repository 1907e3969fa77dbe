"""solve and lstsq refuse a right-hand side on another device than X, naming both, as torch
refuses it (solve returned a meta tensor for a CPU X and a meta B: an answer with no values)."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import lazymat as lm


@given(n=st.integers(1, 6), k=st.integers(1, 3), call=st.sampled_from(["solve", "lstsq"]),
       x_on_meta=st.booleans(), lazy_b=st.booleans())
@settings(max_examples=30, deadline=None)
def test_a_right_hand_side_on_another_device_is_refused(n, k, call, x_on_meta, lazy_b):
    A = torch.randn(n, n, dtype=torch.float64) + n * torch.eye(n, dtype=torch.float64)
    B = torch.randn(n, k, dtype=torch.float64)
    A, B = (A.to("meta"), B) if x_on_meta else (A, B.to("meta"))
    X = lm.lazy(A) @ lm.lazy(A).mT
    with pytest.raises(ValueError, match=rf"{call}: X and B must be on the same device .*meta.*") as err:
        getattr(lm.linalg, call)(X, lm.lazy(B) if lazy_b else B)
    assert "cpu" in str(err.value) and f"({n}, {k})" in str(err.value)
