"""Folding two scales into one never changes the answer: ``X * a * b`` either matches torch's two
multiplications or raises OverflowError when ``a * b`` leaves the multiply type's normal range."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm


def _in_range(k: float, dtype: torch.dtype) -> bool:
    info = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32)
    return info.tiny <= abs(k) <= info.max


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([torch.float32, torch.float64]),
    ea=st.integers(-300, 300),
    eb=st.integers(-300, 300),
    ex=st.integers(-300, 300),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_two_scales_match_torch_or_refuse(dtype, ea, eb, ex, sign):
    limit = 37 if dtype == torch.float32 else 300
    a, b = sign * 10.0 ** (ea * limit // 300), 10.0 ** (eb * limit // 300)
    x = torch.full((2, 3), 10.0 ** (ex * limit // 300), dtype=dtype)
    expected = (x.double() * a * b) if dtype == torch.float64 else (x * a * b).double()
    expr = lm.lazy(x) * a * b
    if not _in_range(a * b, dtype):
        try:
            got = expr.to_dense()
        except OverflowError as err:
            assert "folding the scales" in str(err)
            return
        raise AssertionError(f"{a!r} * {b!r} folded out of range without an error: {got}")
    got = expr.to_dense().double()
    # torch rounds twice, lazymat once: equal up to a couple of ulps where torch's answer is a
    # normal finite number (where torch's intermediate overflows or underflows lazymat's is better)
    info = torch.finfo(dtype)
    mid, end = (x * a).abs(), expected.abs()
    normal = (end >= info.tiny) & (end <= info.max) & (mid >= info.tiny) & (mid <= info.max)
    assert torch.allclose(got[normal], expected[normal], rtol=4 * torch.finfo(dtype).eps, atol=0)


def test_overflowing_fold_names_values_and_dtype():
    x = torch.full((2, 2), 1e-300, dtype=torch.float64)
    try:
        (lm.lazy(x) * 1e200 * 1e200).to_dense()
    except OverflowError as err:
        assert "1e+200" in str(err) and "float64" in str(err)
    else:
        raise AssertionError("expected OverflowError")
    assert torch.isfinite(x * 1e200 * 1e200).all()  # torch's answer is finite: folding would be wrong
    assert math.isinf(1e200 * 1e200)


def test_scales_in_a_product_fold_checked():
    x = torch.full((2, 2), 1e-200, dtype=torch.float64)
    try:
        ((lm.lazy(x) * 1e200) @ (lm.lazy(x) * 1e200)).to_dense()
    except OverflowError as err:
        assert "folding the scales" in str(err)
    else:
        raise AssertionError("expected OverflowError")
