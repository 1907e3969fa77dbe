"""qa27: factorize on arguments of mixed dtypes, checked against float64 convolutions."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_conv2d

REAL = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _conv(X, Wa, Wb, biasA, biasB, padding):
    """The layer (or factored pair) as torch runs it, in float64."""
    d = torch.float64
    out = F.conv2d(X.to(d), Wa.to(d), None if biasA is None else biasA.to(d), padding=padding)
    if Wb is not None:
        out = F.conv2d(out, Wb.to(d), None if biasB is None else biasB.to(d))
    return out


@settings(max_examples=40, deadline=None)
@given(x=st.sampled_from(REAL + [torch.int64]), wa=st.sampled_from(REAL), wb=st.sampled_from(REAL + [None]),
       ba=st.sampled_from(REAL + [None]), bb=st.sampled_from(REAL + [None]),
       padding=st.sampled_from([0, 1, "same"]), seed=st.integers(0, 2**16))
def test_any_mix_of_dtypes_gives_the_layers_dtype_and_the_float64_nmse(x, wa, wb, ba, bb, padding, seed):
    g = torch.Generator().manual_seed(seed)
    X = (torch.randn(3, 4, 6, 6, generator=g) * 3).to(x)
    d = 5 if wb is not None else 6
    Wa = torch.randn(d, 4, 3, 3, generator=g).to(wa)
    Wb = None if wb is None else torch.randn(6, d, 1, 1, generator=g).to(wb)
    biasA = None if ba is None else torch.randn(d, generator=g).to(ba)
    biasB = None if bb is None or wb is None else torch.randn(6, generator=g).to(bb)
    sol = factorize_conv2d(X, Wa, Wb, rank=2, biasA=biasA, biasB=biasB, padding=padding)
    layer = [t.dtype for t in (Wa, Wb, biasA, biasB) if t is not None]
    want = layer[0]
    for dtype in layer[1:]:
        want = torch.promote_types(want, dtype)
    assert (sol.Wa.dtype, sol.Wb.dtype, sol.bias.dtype) == (want, want, want)
    assert sol.Wa.shape == (2, 4, 3, 3) and sol.Wb.shape == (6, 2, 1, 1) and sol.bias.shape == (6,)
    Y = _conv(X, Wa, Wb, biasA, biasB, padding)
    Y_hat = _conv(X, sol.Wa, sol.Wb, None, sol.bias, padding)
    nmse = float(((Y - Y_hat) ** 2).mean() / Y.var())
    assert sol.nmse == pytest.approx(nmse, rel=1e-3)  # (the fit works in float32 at least)
    assert 0 < nmse < 1


@settings(max_examples=40, deadline=None)
@given(percent=st.integers(1, 99), D=st.sampled_from([10, 100, 200, 300]),
       kind=st.sampled_from(["float", "numpy", "tensor32"]))
@example(percent=29, D=100, kind="float")
def test_a_fractional_rank_is_that_share_of_the_width_as_written(percent, D, kind):
    """``rank=0.29`` of 100 features gave 28 (``int(0.29 * 100)`` is 28 in binary floating point)."""
    import numpy as np

    from lazymat.factorize import factorize_matrix

    text = f"0.{percent:02d}"
    rank = {"float": float(text), "numpy": np.float64(text), "tensor32": torch.tensor(float(text))}[kind]
    g = torch.Generator().manual_seed(percent)
    X, W = torch.randn(D + 5, D, generator=g), torch.randn(D, D, generator=g)
    sol = factorize_matrix(X, X @ W, W, rank=rank, n_iters=0)
    k = max(1, percent * D // 100)
    assert sol.rank == (k if k < D else -1)
    if sol.rank > 0:
        assert sol.Wa.shape == (D, k) and sol.Wb.shape == (k, D)
