"""factorize's bad input named where it enters (qa20, session 15): tensors on several devices
(torch failed later, naming none; a meta tensor failed in ``.item()``), and a convolution input
smaller than its kernel after padding (``F.unfold``'s "calculated shape of the array of sliding
blocks as (0, 0)")."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_conv2d, factorize_matrix


@pytest.mark.parametrize("moved", ["X", "Y", "Wa", "Wb", "bias"])
def test_tensors_on_several_devices_are_named(moved):
    g = torch.Generator().manual_seed(0)
    args = {"X": torch.randn(20, 6, generator=g), "Y": torch.randn(20, 5, generator=g),
            "Wa": torch.randn(6, 4, generator=g), "Wb": torch.randn(4, 5, generator=g),
            "bias": torch.randn(5, generator=g)}
    args[moved] = args[moved].to("meta")
    shape = tuple(args[moved].shape)
    with pytest.raises(ValueError, match=rf"different devices: .*{moved} \({shape[0]}.* on meta"):
        factorize_matrix(**args, rank=2)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 4), w=st.integers(1, 4), kh=st.integers(1, 4), kw=st.integers(1, 4),
       padding=st.sampled_from([0, 1, 2, (0, 1), (2, 0), "same", "valid"]), seed=st.integers(0, 99))
def test_a_conv_input_smaller_than_its_kernel_is_named(h, w, kh, kw, padding, seed):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(2, 3, h, w, generator=g, dtype=torch.float64)
    Wa = torch.randn(4, 3, kh, kw, generator=g, dtype=torch.float64)
    try:
        want = F.conv2d(X, Wa, padding=padding)
    except RuntimeError:  # torch: no output position
        want = None
    if want is None or want.numel() == 0:
        with pytest.raises(ValueError, match=rf"X \(2, 3, {h}, {w}\) is smaller than the {kh} x {kw} kernel"):
            factorize_conv2d(X, Wa, rank=2, padding=padding)
        return
    solution = factorize_conv2d(X, Wa, rank=2, padding=padding)
    got = F.conv2d(F.conv2d(X, solution.Wa, padding=padding), solution.Wb) + solution.bias[:, None, None]
    err = float((got - want).square().mean())
    var = float(want.var()) if want.numel() > 1 else 0.0
    assert err == pytest.approx(solution.nmse * var, rel=1e-6, abs=1e-12)  # the error it reports
