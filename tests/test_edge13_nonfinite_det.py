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


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    try:
        torch.testing.assert_close(got.to(want.dtype), want, equal_nan=True, rtol=1e-7, atol=1e-9)
    except AssertionError:
        return False
    return True


def _torchs_on_either_layout(got: torch.Tensor, dense: torch.Tensor, op) -> None:
    """``got`` is, member by member, torch's ``op`` of ``dense`` row-major or column-major."""
    rows, cols = op(dense), op(dense.mT.contiguous().mT)
    for g, r, c in zip(got.reshape(-1), rows.reshape(-1), cols.reshape(-1), strict=True):
        assert _close(g, r) or _close(g, c), (got, rows, cols)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**16), k=st.integers(1, 3), n=st.integers(2, 6),
       batch=st.sampled_from([(), (3,)]), coef=st.sampled_from([None, 2.5, "tensor"]),
       value=st.sampled_from([math.inf, -math.inf, math.nan]), where=st.data(),
       dtype=st.sampled_from([torch.float64, torch.complex128]), factored=st.booleans())
def test_det_of_a_non_finite_product_is_torchs_on_the_formed_matrix(seed, k, n, batch, coef, value, where,
                                                                   dtype, factored):
    # c * (complex inf) has a NaN part (inf * 0): a lone scaled complex segment is not followed
    assume(not (dtype.is_complex and k == 1 and coef is not None))
    target = where.draw(st.integers(0, k if coef == "tensor" else k - 1))
    i, j = where.draw(st.integers(0, n - 1)), where.draw(st.integers(0, n - 1))
    _check(seed, k, n, batch, coef, value, (target, i, j), dtype, factored)


def test_det_of_an_infinite_row_whose_torch_det_is_inf_row_major():
    """The case hypothesis found in session 14 (seed 1): ``A`` has inf at (1, 1), so ``A @ B``
    has a whole infinite row; the third member's torch det is inf row-major, NaN column-major
    (since edge15 the route answers torch's on the matrix formed as written: row-major, inf)."""
    _check(1, 2, 2, (3,), "tensor", math.inf, (0, 1, 1), torch.float64, True)


def _check(seed, k, n, batch, coef, value, where, dtype, factored) -> None:
    """det, slogdet and logdet of ``c * L_1 @ ... @ L_k`` with ``value`` planted at ``where``
    (``(leaf, i, j)``; leaf ``k`` is a tensor coefficient) against torch's on the formed matrix."""
    gen = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(*(batch if i == 0 else ()), n, n, generator=gen, dtype=dtype) for i in range(k)]
    c = None if coef is None else (coef if coef == 2.5 else torch.tensor(-1.5, dtype=torch.float64))
    # plant the value in a leaf (or in a tensor coefficient), at one entry
    target, i, j = where
    if target == k:
        c = torch.tensor(value, dtype=torch.float64)
    else:
        leaves[target][..., i, j] = value
    x = lm.lazy(leaves[0])
    dense = leaves[0]
    for leaf in leaves[1:]:
        x, dense = x @ lm.lazy(leaf), dense @ leaf
    if c is not None:
        x, dense = c * x, c * dense
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0 if factored else LA.costs.DENSE_MAX_ELEMENTS):
        det, (sign, logabs), logdet = lm.linalg.det(x), lm.linalg.slogdet(x), lm.linalg.logdet(x)
    _torchs_on_either_layout(det, dense, torch.linalg.det)
    _torchs_on_either_layout(sign, dense, lambda d: torch.linalg.slogdet(d).sign)
    _torchs_on_either_layout(logabs, dense, lambda d: torch.linalg.slogdet(d).logabsdet)
    _torchs_on_either_layout(logdet, dense, torch.logdet)
