"""factorize_conv2d_module takes what nn.Conv2d takes: an unbatched ``(C_in, H, W)`` input too."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_conv2d, factorize_conv2d_module


@settings(max_examples=30, deadline=None)
@given(h=st.integers(1, 5), w=st.integers(1, 5), kernel=st.sampled_from([(3, 3), (1, 3), (2, 2)]),
       padding=st.sampled_from([0, 1, "same"]), mode=st.sampled_from(["zeros", "circular", "replicate"]),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_an_unbatched_input_is_one_sample(h, w, kernel, padding, mode, bias, seed):
    """Property: fitted on one ``(C_in, H, W)`` image whose patches span fewer than ``k``
    directions, the two layers reproduce the original module on it (float64, exact up to
    rounding) and take the same unbatched input; the fit equals the one on ``X[None]``."""
    torch.manual_seed(seed)
    # nn.Conv2d refuses these too (an even 'same' kernel with padding; no output)
    assume(not (padding == "same" and kernel == (2, 2)))
    assume(padding != 0 or (h >= kernel[0] and w >= kernel[1]))
    conv = torch.nn.Conv2d(4, 40, kernel, padding=padding, padding_mode=mode, bias=bias).double()
    X = torch.randn(4, h, w, dtype=torch.float64)
    with torch.no_grad():
        want = conv(X)
    patches = want.shape[-2] * want.shape[-1]
    rank = max(patches, 1)  # >= the rank of the centred patch matrix: an exact fit exists
    assume(rank < min(4 * kernel[0] * kernel[1], 40))  # else nothing to shrink
    small = factorize_conv2d_module(conv, X, rank=rank)
    with torch.no_grad():
        got = small(X)
        batched = factorize_conv2d_module(conv, X[None], rank=rank)(X[None])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(batched[0], got, rtol=1e-9, atol=1e-9)


def test_functional_form_takes_an_unbatched_input_and_names_bad_shapes():
    Wa = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    X = torch.randn(3, 5, 5, dtype=torch.float64)
    one, batched = factorize_conv2d(X, Wa, rank=2), factorize_conv2d(X[None], Wa, rank=2)
    torch.testing.assert_close(one.Wa, batched.Wa)
    with pytest.raises(ValueError, match=r"\(C_in, H, W\).*got X \(5, 5\)"):
        factorize_conv2d(X[0], Wa, rank=2)
    with pytest.raises(ValueError, match=r"got X \(4, 5, 5\), Wa \(6, 3, 3, 3\)"):  # as given, not unsqueezed
        factorize_conv2d(torch.randn(4, 5, 5, dtype=torch.float64), Wa, rank=2)
