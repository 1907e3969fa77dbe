"""``coefficient.fold`` of two Python floats (its fast return for a normal product included): the
float product where that is a normal float64, zero, inf or NaN; else a Wide within one rounding
of the exact product (read with ``fractions``, independently of lazymat)."""

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.coefficient import Wide, fold

NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 0.125, 2.0**-1022, 2.0**-1074, 1e-300, 1e300, 2.0**1023, math.inf, math.nan]),
    st.integers(-10, 10))


def special(x) -> bool:
    return x == 0 or not math.isfinite(x)


@settings(max_examples=2000, deadline=None)
@given(NUMBERS, NUMBERS)
def test_fold_of_two_numbers_is_their_product_kept_in_range(a, b):
    out = fold(a, b)
    p = a * b
    if isinstance(p, int) or special(a) or special(b):  # the product as Python forms it
        assert type(out) is type(p) and (out == p or math.isnan(out) and math.isnan(p))
        return
    if 2.0**-1022 <= abs(p) <= 1.7976931348623157e308:  # a normal float: the product, rounded once
        assert type(out) is float and out == p
        return
    exact = Fraction(a) * Fraction(b)  # past the range: kept exactly, up to one rounding
    value = Fraction(out.mantissa) * Fraction(2) ** out.exponent if type(out) is Wide else Fraction(out)
    assert abs(value - exact) <= abs(exact) * Fraction(2) ** -52, (a, b, out)
