"""torch's conventions where lazymat departed from them (qa23): ``lm.symbol`` takes torch's
default dtype as torch's factory functions do, and a bool or a numpy 0-dim array scales an
expression as it scales a tensor (``t * True``, ``t * np.array(2.0)``)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


@pytest.mark.parametrize("default", [torch.float64, torch.float32, torch.bfloat16])
def test_a_symbol_takes_torchs_default_dtype(default):
    before = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        assert lm.symbol("A", (3, 4)).dtype == torch.empty(3, 4).dtype == default
        assert lm.symbol("A", (3, 4), dtype=torch.float16).dtype == torch.float16
    finally:
        torch.set_default_dtype(before)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["bool", "np0d", "np_bool", "np_generic"]), st.booleans(),
       st.floats(-4, 4, allow_nan=False).filter(lambda v: v != 0), st.booleans(), st.integers(0, 99))
def test_bools_and_numpy_scalars_scale_as_they_scale_a_tensor(kind, flag, value, divide, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    B = torch.randn(3, 5, generator=g, dtype=torch.float64)
    c = {"bool": flag, "np0d": np.array(value), "np_bool": np.bool_(flag),
         "np_generic": np.float32(value)}[kind]
    X, D = lm.lazy(A) @ lm.lazy(B), A @ B
    if divide:
        if float(c) == 0:
            with pytest.raises(ZeroDivisionError, match=r"\(2, 4, 5\)"):
                X / c
            return
        got, expected = (X / c).to_dense(), D / torch.as_tensor(c, dtype=torch.float64)
    else:
        got, expected = (c * X).to_dense(), D * torch.as_tensor(c, dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_a_numpy_array_with_dims_is_refused_naming_its_type():
    X = lm.lazy(torch.randn(3, 3))
    with pytest.raises(TypeError, match=r"shape \(3, 3\).*ndarray"):
        X * np.array([2.0])
