"""Python and torch conversions of an expression: each one either converts as the docs say
(``np.asarray`` under ``implicit_dense_limit``, ``len``) or raises a ``TypeError`` naming the
shape and dtype and pointing at ``X.to_dense()``; none is swallowed into torch's generic
"not a sequence" / "could not determine the shape"."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

CONVERSIONS = {
    "torch.as_tensor": torch.as_tensor,
    "torch.tensor": torch.tensor,
    "torch.asarray": torch.asarray,
    "torch.from_dlpack": torch.from_dlpack,
    "float": float,
    "int": int,
    "complex": complex,
    "index": lambda x: [0, 1][x],
    "bool": bool,
    "iter": list,
}


@settings(max_examples=40, deadline=None)
@given(batch=st.sampled_from([(), (0,), (2,), (2, 3)]), m=st.integers(0, 4), n=st.integers(0, 4),
       r=st.integers(0, 3), symbolic=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]),
       how=st.sampled_from(sorted(CONVERSIONS)))
def test_a_refused_conversion_names_shape_and_dtype(batch, m, n, r, symbolic, dtype, how):
    """Property: every refused conversion raises TypeError with the expression's shape and
    dtype and a way out; the expression is never evaluated (a symbol has no data to read)."""
    if symbolic:
        x = lm.symbol("A", (*batch, m, r), dtype=dtype) @ lm.symbol("B", (r, n), dtype=dtype)
    else:
        x = lm.lazy(torch.randn(*batch, m, r, dtype=dtype)) @ lm.lazy(torch.randn(r, n, dtype=dtype))
    with pytest.raises(TypeError) as info:
        CONVERSIONS[how](x)
    text = str(info.value)
    assert str(tuple(x.shape)) in text and "to_dense()" in text
    if how != "iter":
        assert str(dtype).replace("torch.", "") in text


def test_what_converts_still_converts():
    """``len`` is torch's (the first dim); ``np.asarray`` evaluates once below the limit."""
    a, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    x = lm.lazy(a) @ lm.lazy(b)
    assert len(x) == 3
    np.testing.assert_allclose(np.asarray(x), (a @ b).numpy(), rtol=1e-12)
    with lm.config(implicit_dense_limit=8), pytest.raises(MemoryError, match=r"\(3, 4\) float64"):
        np.asarray(x)


@pytest.mark.parametrize("func,name", [
    (torch.linalg.cholesky, "torch.linalg.cholesky"), (torch.linalg.lu_factor, "torch.linalg.lu_factor"),
    (torch.special.expit, "torch.special.expit"), (torch.fft.fft2, "torch.fft.fft2"),
    (torch.einsum, "torch.einsum"),
])
def test_an_unsupported_torch_function_is_named_as_users_write_it(func, name):
    """``torch.linalg.cholesky(X)`` was reported as ``torch.linalg_cholesky`` (the binding's name;
    ``torch.linalg.det``, the example first found, is routed since session 12)."""
    x = lm.lazy(torch.randn(2, 4, 4))
    with pytest.raises(TypeError, match=rf"^{name.replace('.', '[.]')} is not supported on lazy expressions"):
        func("ij->i", x) if func is torch.einsum else func(x)
