"""Bugs qa22 (session 17) found outside its files (fixed by the lead; each failed on 184d31f).

Compared with TransformerLens 4.3's ``FactoredMatrix`` and with torch's own broadcasting of
``fm.AB * c``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.compat import FactoredMatrix


@pytest.mark.parametrize("scalar_shape", [(1, 1, 1), (1, 1, 1, 1)])
@pytest.mark.parametrize("left", [False, True])
def test_scaling_by_a_one_element_tensor_broadcasts_as_torch(scalar_shape, left):
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(4, 2, generator=gen), torch.randn(2, 3, generator=gen)
    c = torch.full(scalar_shape, 2.0)
    fm = FactoredMatrix(A, B)
    got = (c * fm if left else fm * c).AB
    want = (A @ B) * c  # torch: shape (1, ..., 4, 3); TransformerLens's A * c gives the same
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)


@settings(max_examples=60, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), scalar_ndim=st.integers(0, 4), left=st.booleans(),
       array=st.booleans())
def test_scaling_broadcasts_as_torch_for_any_batch_and_scalar_dims(batch, scalar_ndim, left, array):
    """Property: ``fm * c`` and ``c * fm`` for a one-element ``c`` of any number of dims (a tensor or
    a NumPy array) have the shape and values of ``AB * c`` for a batched ``fm``."""
    gen = torch.Generator().manual_seed(len(batch) + 7 * scalar_ndim)
    A = torch.randn(*batch, 4, 2, generator=gen, dtype=torch.float64)
    B = torch.randn(*batch, 2, 3, generator=gen, dtype=torch.float64)
    c = torch.full((1,) * scalar_ndim, -1.5, dtype=torch.float64)
    fm = FactoredMatrix(A, B)
    operand = c.numpy() if array else c
    got = (operand * fm if left and not array else fm * operand).AB
    want = (A @ B) * c
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
