"""det of a scaled product: the coefficient's n-th power must not under- or overflow where the
determinant itself is in range (the segments' dets times ``c^n`` are combined as logs when
``c^n`` is far from 1, :func:`lazymat.coefficient.far`).

Found (scale16, session 16): ``(7.96e87 * A) @ (1.78e44 * B)`` with ``A`` 2x4 near ``1e-126`` and
``B`` 4x2 near ``1e-93`` gave 0; torch on the matrix as written gives about ``-4e-172``."""

import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm


def _exact_det(ms: list[torch.Tensor], total: int) -> tuple[float, float]:
    """det(prod(ms) * 2**total) as (sign, natural log of its size), from torch's slogdet of the
    float64 product of the unscaled mantissas (every entry in [0.5, 1.5))."""
    product = ms[0]
    for m in ms[1:]:
        product = product @ m
    sign, logabs = torch.linalg.slogdet(product)
    n = product.shape[-1]
    return float(sign), float(logabs) + n * total * math.log(2.0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 3),
    inner=st.integers(0, 2),
    leaf_exps=st.tuples(st.integers(-400, 400), st.integers(-400, 400)),
    scal_exps=st.tuples(st.integers(-600, 600), st.integers(-600, 600)),
)
@example(seed=0, n=2, inner=2, leaf_exps=(-418, -309), scal_exps=(292, 147))  # the report's case
def test_det_of_a_scaled_product_is_in_range_where_the_answer_is(seed, n, inner, leaf_exps, scal_exps):
    gen = torch.Generator().manual_seed(seed)
    dims = (n, n + inner, n)
    ms = [torch.rand(dims[i], dims[i + 1], generator=gen, dtype=torch.float64) + 0.5 for i in range(2)]
    x, total = None, 0
    for m, a, e in zip(ms, leaf_exps, scal_exps, strict=True):
        leaf = 2.0**e * lm.lazy(torch.ldexp(m, torch.tensor(float(a), dtype=torch.float64)))
        total += a + e
        x = leaf if x is None else x @ leaf
    sign, logabs = _exact_det(ms, total)
    if sign == 0.0 or not -667.0 < logabs < 667.0:
        return  # the answer itself is zero, or within 1e-290 of the edges of float64's normal range
    expected = sign * math.exp(logabs)
    got = float(lm.linalg.det(x))
    assert math.isclose(got, expected, rel_tol=1e-8), (dims, leaf_exps, scal_exps, got, expected)
