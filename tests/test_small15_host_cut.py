"""The host cut of the compiled calls (``linalg.compiled._host_cut``): how many of a matrix's singular
values read back its tolerance rule keeps. Its commonest answer (the whole prefix up to the rank
bound) is decided before the relative threshold is rounded to float32; the property: the count
is always the rule's, computed independently here (the threshold rounded by torch, the kept
values counted one by one), for values near every edge (subnormal thresholds, zeros, ties with
the threshold, inf and NaN)."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat import linalg as LA

SETTINGS = settings(max_examples=300, deadline=None)

F32_TINY = 2.0**-149  # float32's smallest subnormal


def rule(values: list[float], width: int, least: float, relative: float, scale: float, f32: bool) -> int:
    """The tolerance rule, one value at a time: -1 when a value is not finite, else how many of
    the first ``width`` values lie above ``max(least, relative * largest (as float32 holds it
    where f32), scale * 2-norm)``."""
    if not all(map(math.isfinite, values)):
        return -1
    top = relative * values[0] if width else 0.0
    if f32:
        top = torch.tensor(top, dtype=torch.float64).to(torch.float32).item()
    tol = max(least, top, scale * math.sqrt(math.fsum(v * v for v in values)))
    k = 0
    while k < width and values[k] > tol:
        k += 1
    return k


def float32s(lo: float, hi: float):
    return st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def spectra(draw):
    """Non-increasing float32 values (as LAPACK returns them) and the rule's constants; the
    relative threshold sometimes lands exactly on a value, or in float32's subnormal range."""
    p = draw(st.integers(1, 12))
    width = draw(st.integers(0, p))
    magnitude = draw(st.sampled_from([1e-44, 1e-40, 1e-38, 1e-20, 1.0, 1e20, 3e38]))
    values = sorted((draw(float32s(0.0, 1.0)) * magnitude for _ in range(p)), reverse=True)
    values = [torch.tensor(v, dtype=torch.float32).item() for v in values]
    f32 = draw(st.booleans())
    relative = draw(st.sampled_from([0.0, 1e-7, 2.4e-6, 1e-3, 0.5, 1.0]))
    if width and values[0] and draw(st.booleans()):  # the threshold at a kept value, within an ulp
        near = draw(st.sampled_from([1 - 2.0**-30, 1 - 2.0**-25, 1.0, 1 + 2.0**-30]))
        relative = values[draw(st.sampled_from([0, width - 1]))] * near / values[0]
    least = draw(st.sampled_from([0.0, F32_TINY, 1e-30, 1e-3]))
    scale = draw(st.sampled_from([0.0, 1e-7, 1e-6]))
    if draw(st.integers(0, 9)) == 0:
        values[draw(st.integers(0, p - 1))] = draw(st.sampled_from([math.inf, math.nan]))
        values.sort(key=lambda v: -v if not math.isnan(v) else -math.inf)
    return values, width, least, relative, scale, f32


@SETTINGS
@given(spectra())
def test_host_cut_is_the_rule(case):
    values, width, least, relative, scale, f32 = case
    kept = LA.compiled._host_cut(width, least, relative, scale, f32)
    assert kept(values) == rule(values, width, least, relative, scale, f32), case


def test_subnormal_threshold_rounds_up():
    """A threshold below float32's smallest normal rounds up to a subnormal float32 equal to the
    last kept value: that value is cut (the fast answer, the whole prefix, would keep it)."""
    top = 1.5 * F32_TINY  # rounds to 2 * F32_TINY (ties to even)
    values = [1.0, 2 * F32_TINY]
    kept = LA.compiled._host_cut(2, 0.0, top, 0.0, True)
    assert rule(values, 2, 0.0, top, 0.0, True) == 1
    assert kept(values) == 1
