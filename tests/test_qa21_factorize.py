"""lazymat.factorize at the edges of the float range and on the meta device (qa21, session 16).

Found and fixed: the fit does not depend on the scale of the outputs, but its reported
``nmse`` did: squares of outputs near 1e-160 or 1e160 (float64) underflowed to an "exact" 0.0
or overflowed to NaN. Tensors or layers on the meta device failed deep in a solve with
torch's "Tensor.item() cannot be called on meta tensors", naming nothing."""

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_conv2d, factorize_conv2d_module, factorize_linear, factorize_matrix

_EXPONENTS = {torch.float64: 1000, torch.float32: 120}  # 2**e and its square's reciprocal stay normal


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(list(_EXPONENTS)), fraction=st.floats(-1, 1),
       rank=st.integers(1, 3))
@example(seed=0, dtype=torch.float64, fraction=1.0, rank=2)
@example(seed=0, dtype=torch.float64, fraction=-1.0, rank=2)
def test_nmse_is_the_error_of_the_solution_at_any_scale_of_the_outputs(seed, dtype, fraction, rank):
    g = torch.Generator().manual_seed(seed)
    X, Y, W = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((24, 5), (24, 4), (5, 4)))
    scale = 2.0 ** round(fraction * _EXPONENTS[dtype])
    solution = factorize_matrix(X.to(dtype), (Y * scale).to(dtype), (W * scale).to(dtype), rank=rank)
    # the error of the returned tensors, read at unit scale in float64 (powers of two: exact)
    Y_hat = (X @ solution.Wa.double() @ solution.Wb.double() + solution.bias.double()) / scale
    expected = float((Y - Y_hat).square().mean() / Y.var())
    assert 0 < expected < 1
    assert solution.nmse == pytest.approx(expected, rel=1e-3 if dtype == torch.float32 else 1e-9)


def _meta(*shape):
    return torch.empty(*shape, device="meta")


@pytest.mark.parametrize("call, named", [
    (lambda: factorize_matrix(_meta(6, 4), _meta(6, 3), _meta(4, 3), rank=1), r"X \(6, 4\)"),
    (lambda: factorize_conv2d(_meta(2, 4, 5, 5), _meta(3, 4, 3, 3), rank=1), r"X \(2, 4, 5, 5\)"),
    (lambda: factorize_linear(torch.nn.Linear(4, 3, device="meta"), torch.randn(6, 4), rank=1),
     r"Linear\(in_features=4.*weight \(3, 4\)"),
    (lambda: factorize_conv2d_module(torch.nn.Conv2d(4, 3, 3, device="meta"), torch.randn(2, 4, 5, 5),
                                     rank=1),
     r"Conv2d\(4, 3.*weight \(3, 4, 3, 3\)"),
])
def test_meta_tensors_and_layers_are_named(call, named):
    with pytest.raises(ValueError, match=named + r".* meta device .*needs its values"):
        call()
