"""Bugs qa22 (session 17) found outside its files, each a minimal failing test for the owner.

Compared with TransformerLens 4.3's ``FactoredMatrix`` and with torch's own broadcasting of
``fm.AB * c``."""

import pytest
import torch

from lazymat.compat import FactoredMatrix


@pytest.mark.xfail(strict=True, reason="compat FactoredMatrix * a one-element tensor of more dims "
                   "than the matrix drops the tensor's leading 1s (TransformerLens and torch keep them)")
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
