"""lazymat.compat.FactoredMatrix times a scalar, on either side."""

import pytest
import torch
from tl_reference import tl

from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn

SCALARS = [2, -0.5, torch.tensor(3.0, dtype=torch.float64), torch.tensor([[1.5]], dtype=torch.float64)]


@pytest.mark.parametrize("c", SCALARS, ids=["int", "float", "0-d", "1x1"])
def test_scalar_on_either_side(gen, c):
    A, B = randn(gen, 2, 5, 3), randn(gen, 3, 4)
    fm = FactoredMatrix(A, B)
    expected = (A @ B) * (c.item() if isinstance(c, torch.Tensor) else c)
    for got in (fm * c, c * fm):
        assert isinstance(got, FactoredMatrix) and got.shape == fm.shape
        assert_close(got.AB, expected)
    TL = tl()
    assert_close((fm * c).A, (TL.FactoredMatrix(A, B) * c).A)  # the scale lands on A, as in TL


def test_non_scalar_tensor_is_rejected_naming_its_shape(gen):
    fm = FactoredMatrix(randn(gen, 5, 3), randn(gen, 3, 4))
    with pytest.raises(ValueError, match=r"tensor of shape \(5, 4\).*use @"):
        fm * randn(gen, 5, 4)
    with pytest.raises(AssertionError):  # TransformerLens's kind
        randn(gen, 2) * fm
