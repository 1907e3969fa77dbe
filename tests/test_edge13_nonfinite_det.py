"""det, slogdet and logdet of an expression with an inf or NaN entry answer what torch answers
on the formed matrix (edge13, session 13; docs/linear-algebra.md).

Found: the product-of-segments route answered +-inf (``det A * det B`` with ``det A`` inf) for a
chain ``A @ B`` with an inf entry in ``A``, where torch's det of the formed ``A @ B`` (a whole
infinite row, LU then meets ``inf - inf``) is NaN; likewise for an inf coefficient."""

import math
from unittest import mock

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got.to(want.dtype), want, equal_nan=True, rtol=1e-7, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), n=st.integers(2, 6),
       batch=st.sampled_from([(), (3,)]), coef=st.sampled_from([None, 2.5, "tensor"]),
       value=st.sampled_from([math.inf, -math.inf, math.nan]), where=st.data(),
       dtype=st.sampled_from([torch.float64, torch.complex128]), factored=st.booleans())
def test_det_of_a_non_finite_product_is_torchs_on_the_formed_matrix(seed, k, n, batch, coef, value, where,
                                                                   dtype, factored):
    # c * (complex inf) has a NaN part (inf * 0): a lone scaled complex segment is not followed
    assume(not (dtype.is_complex and k == 1 and coef is not None))
    gen = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(*(batch if i == 0 else ()), n, n, generator=gen, dtype=dtype) for i in range(k)]
    c = None if coef is None else (coef if coef == 2.5 else torch.tensor(-1.5, dtype=torch.float64))
    # plant the value in a leaf (or in a tensor coefficient), at one entry
    target = where.draw(st.integers(0, k if isinstance(c, torch.Tensor) else k - 1))
    if target == k:
        c = torch.tensor(value, dtype=torch.float64)
    else:
        i, j = where.draw(st.integers(0, n - 1)), where.draw(st.integers(0, n - 1))
        leaves[target][..., i, j] = value
    x = lm.lazy(leaves[0])
    dense = leaves[0]
    for leaf in leaves[1:]:
        x, dense = x @ lm.lazy(leaf), dense @ leaf
    if c is not None:
        x, dense = c * x, c * dense
    with mock.patch.object(LA, "DENSE_MAX_ELEMENTS", 0 if factored else LA.DENSE_MAX_ELEMENTS):
        det, (sign, logabs), logdet = lm.linalg.det(x), lm.linalg.slogdet(x), lm.linalg.logdet(x)
    want_sign, want_logabs = torch.linalg.slogdet(dense)
    _close(det, torch.linalg.det(dense))
    _close(sign, want_sign)
    _close(logabs, want_logabs)
    _close(logdet, torch.logdet(dense))
