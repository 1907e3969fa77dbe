"""A rank reaching ``D`` or ``M`` fits the least-squares matrix and its bias, as every lower rank
fits its factors and bias: a higher rank never fits worse. At full rank the bias was the given
one or none (Composer's rule), so with no bias given rank 6 of 8 x 6 gave nmse 0.0082 where
rank 5 gave 0.0003 (found by qa27)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.factorize import factorize_matrix


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(12, 60), d=st.integers(2, 7), m=st.integers(2, 7),
       offset=st.floats(-5, 5), with_bias=st.booleans(), data=st.data())
def test_a_higher_rank_never_fits_worse(seed, n, d, m, offset, with_bias, data):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) + offset
    W = torch.randn(d, m, generator=g, dtype=torch.float64)
    bias = torch.randn(m, generator=g, dtype=torch.float64) * 3
    Y = X @ W + bias + 0.1 * torch.randn(n, m, generator=g, dtype=torch.float64)
    k = data.draw(st.integers(1, min(d, m) - 1)) if min(d, m) > 1 else None
    full = factorize_matrix(X, Y, W, bias=bias if with_bias else None, rank=min(d, m), n_iters=10)
    # the joint optimum over W and bias, an independent formula
    X1 = torch.cat([X, X.new_ones(n, 1)], 1)
    best = ((X1 @ torch.linalg.pinv(X1) @ Y - Y) ** 2).mean() / Y.var()  # (lazymat's nmse)
    assert full.rank == -1
    assert full.nmse <= float(best) * (1 + 1e-9) + 1e-15
    if k is not None:
        low = factorize_matrix(X, Y, W, bias=bias if with_bias else None, rank=k, n_iters=10)
        assert full.nmse <= low.nmse * (1 + 1e-9) + 1e-15


def test_a_split_larger_than_its_layer_warns():
    """``Linear(8, 8)`` split at rank 5 holds 8*5 + 5*8 + 8 = 88 parameters against 72 (found by
    qa27): a drop-in, but no smaller; rank 3 (56) saves and says nothing."""
    import warnings

    import pytest

    from lazymat.factorize import factorize_conv2d_module, factorize_linear

    layer = torch.nn.Linear(8, 8).double()
    X = torch.randn(40, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="88 parameters, more than its 72"):
        grown = factorize_linear(layer, X, rank=5)
    assert sum(p.numel() for p in grown.parameters()) == 88
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        factorize_linear(layer, X, rank=3)
    conv = torch.nn.Conv2d(8, 4, 1).double()  # 32 + 4 parameters; rank 3: 24 + (12 + 4)
    Xc = torch.randn(2, 8, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="40 parameters, more than its 36"):
        factorize_conv2d_module(conv, Xc, rank=3)
