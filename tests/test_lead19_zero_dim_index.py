"""A 0-d integer index, NumPy's or torch's, is an int to torch: it removes its dim. NumPy's kept a
dim of 1 (``X[np.array(2)]`` had shape ``(1, 3, 5)``, torch's ``(3, 5)``: found by qa27 through
``Circuits.OV(np.array(3), 0)``)."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


@st.composite
def keys(draw, shape):
    """Keys mixing ints (as Python, NumPy scalar, 0-d NumPy and 0-d torch), slices and Ellipsis."""
    key = []
    for size in shape[: draw(st.integers(1, len(shape)))]:
        kind = draw(st.sampled_from(["int", "np scalar", "np 0-d", "torch 0-d", "slice"]))
        i = draw(st.integers(-size, size - 1))
        key.append({"int": i, "np scalar": np.int64(i), "np 0-d": np.array(i),
                    "torch 0-d": torch.tensor(i), "slice": slice(None)}[kind])
    return tuple(key)


@settings(max_examples=80, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), data=st.data(), product=st.booleans())
def test_zero_dim_integer_indices_remove_their_dim_as_torch(shape, data, product):
    key = data.draw(keys(shape))
    gen = torch.Generator().manual_seed(len(key))
    a = torch.randn(*shape, generator=gen, dtype=torch.float64)
    if product:
        b = torch.randn(shape[-1], shape[-1], generator=gen, dtype=torch.float64)
        X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    else:
        X, D = lm.lazy(a), a
    got = X[key]
    got = got.to_dense() if isinstance(got, lm.Expr) else got
    want = D[key]
    assert got.shape == want.shape, (key, got.shape, want.shape)
    assert torch.allclose(got, want)
