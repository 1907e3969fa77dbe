"""Number scales never change the answer (session 13, fold13).

Found: the canonical form multiplied Python-number scales together as floats, so
``lazy(X) * 1e200 * 1e200`` with ``1e-300`` entries answered inf where torch's two
multiplications answer ``1e100`` (a product past the range, or an underflow to 0, from any fold:
a scale of a scale, a product's factors, a sum's terms, a cat's parts), and ``X / 1e-310`` was
refused (``OverflowError``). The 0-dim tensor multipliers of a term were multiplied together
first, overflowing where torch's multiplications one at a time do not.

Each case is an expression with scales and divisions by numbers from ``1e-320`` to ``1e300``
(and 0-dim tensors) on small tensors (tiny, huge and subnormal entries on a lone leaf), over
products, sums and cats, evaluated lazily and compared with an independent exact evaluation in
rationals (:class:`fractions.Fraction`) of the same structure: the answer is finite and close
wherever the exact one is well inside the dtype's range, and not finite where it is well past
it; and finite wherever torch's own eager sequence answers a finite nonzero number.
"""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [torch.float64, torch.float32, torch.complex128, torch.complex64, torch.float16, torch.bfloat16]
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# the leaves' entries in products, sums and cats: their unscaled products stay in range (a scale
# is applied to the product of the leaves, as the form is written)
MODERATE = {torch.float64: 100, torch.float32: 12, torch.float16: 1, torch.bfloat16: 12}


def _real(dtype: torch.dtype) -> torch.dtype:
    return dtype.to_real() if dtype.is_complex else dtype


# ---- the structures -------------------------------------------------------------------------
# A node: ("leaf", name) | ("chain", ops, node) | ("mm", a, b) | ("add", a, b) | ("cat", a, b, dim).
# An op: ("mul", number) | ("div", number) | ("tmul", number) (a 0-dim tensor, applied first).
SHAPES = {"X": (3, 3), "A": (3, 2), "B": (2, 3), "C": (3, 3), "D": (2, 3), "E": (3, 1), "P": (3, 3),
          "G": (3, 3), "F": (2, 2)}


def _family(k: int, ch) -> tuple:
    leaf = lambda n: ch(("leaf", n))  # noqa: E731
    return [
        lambda: leaf("X"),                                                         # a lone leaf
        lambda: ch(("mm", leaf("A"), leaf("B"))),                                  # a product
        lambda: ch(("add", ch(("mm", leaf("A"), leaf("B"))), leaf("C"))),          # a sum
        lambda: ch(("mm", ("cat", leaf("A"), leaf("F"), -2), leaf("D"))),          # a cat at an end
        lambda: ch(("mm", ("mm", leaf("P"), ("cat", leaf("A"), leaf("E"), -1)), leaf("G"))),  # inside
    ][k]()


@st.composite
def _number(draw, complex_: bool):
    exponent = draw(st.floats(-320, 300))
    value = draw(st.floats(1, 10)) * 10.0**exponent * draw(st.sampled_from([1, -1]))
    if value == 0:
        value = 5e-324
    if complex_ and draw(st.booleans()):
        angle = draw(st.floats(0, 2 * math.pi))
        value = complex(value * math.cos(angle), value * math.sin(angle))
        if value == 0:
            value = 5e-324
    return value


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    family = draw(st.integers(0, 4))

    def ch(node):
        ops = [("tmul", draw(st.floats(0.5, 2)) * draw(st.sampled_from([1, -1])))
               for _ in range(draw(st.integers(0, 1)))] if node[0] == "leaf" else []
        ops += [(draw(st.sampled_from(["mul", "mul", "div"])), draw(_number(dtype.is_complex)))
                for _ in range(draw(st.integers(0, 3)))]
        return ("chain", tuple(ops), node) if ops else node

    spec = _family(family, ch)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    real = _real(dtype)
    info = torch.finfo(real)
    tensors = {}
    for name, shape in SHAPES.items():
        t = torch.randn(shape, generator=gen, dtype=torch.float64)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(shape, generator=gen, dtype=torch.float64))
        if family == 0:  # a lone leaf: entries across the whole range, subnormals and zeros too
            low, high = math.log10(info.smallest_normal) - 2, math.log10(info.max) - 1
            mags = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=gen)
            t = t * 10.0**mags
            t[0, 0] = 0
        else:
            spread = MODERATE[real]
            t = t * 10.0 ** torch.empty(shape, dtype=torch.float64).uniform_(-spread, spread, generator=gen)
        tensors[name] = t.to(dtype)
    return dtype, spec, tensors


# ---- three evaluations of a structure -------------------------------------------------------
def _evaluate(node, leaf, mm, add, cat, mul, div, tmul):
    kind = node[0]
    rec = lambda n: _evaluate(n, leaf, mm, add, cat, mul, div, tmul)  # noqa: E731
    if kind == "leaf":
        return leaf(node[1])
    if kind == "chain":
        x = rec(node[2])
        for op, k in node[1]:
            x = {"mul": mul, "div": div, "tmul": tmul}[op](x, k)
        return x
    if kind == "mm":
        return mm(rec(node[1]), rec(node[2]))
    if kind == "add":
        return add(rec(node[1]), rec(node[2]))
    return cat(rec(node[1]), rec(node[2]), node[3])


def _lazy(spec, tensors, dtype):
    return _evaluate(spec, lambda n: lm.lazy(tensors[n]), lambda a, b: a @ b, lambda a, b: a + b,
                     lambda a, b, d: lm.cat([a, b], dim=d), lambda x, k: x * k, lambda x, k: x / k,
                     lambda x, k: x * torch.tensor(k, dtype=dtype)).to_dense()


def _torch(spec, tensors, dtype):
    return _evaluate(spec, lambda n: tensors[n], lambda a, b: a @ b, lambda a, b: a + b,
                     lambda a, b, d: torch.cat([a, b], dim=d), lambda x, k: x * k, lambda x, k: x / k,
                     lambda x, k: x * torch.tensor(k, dtype=dtype))


# exact: a matrix is a list of rows of (re, im) pairs of Fractions
def _q(z) -> tuple:
    z = complex(z)
    return Fraction(z.real), Fraction(z.imag)


def _qmul(a, b):
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]


def _qrecip(a):
    size = a[0] * a[0] + a[1] * a[1]
    return a[0] / size, -a[1] / size


def _exact_ops(tensors, dtype, absolute: bool):
    """The operations on exact matrices; with ``absolute``, on entries' magnitudes (``|re| +
    |im|``) and the scales' magnitudes: a bound on every partial sum (the error scale)."""
    def num(k):
        q = _q(k)
        return (abs(q[0]) + abs(q[1]), Fraction(0)) if absolute else q

    def leaf(n):
        t = tensors[n].to(torch.complex128)
        return [[num(z) for z in row] for row in t.tolist()]

    def scaled(x, k):
        return [[_qmul(e, k) for e in row] for row in x]

    def mm(a, b):
        out = []
        for row in a:
            out.append([])
            for j in range(len(b[0])):
                s = (Fraction(0), Fraction(0))
                for i, e in enumerate(row):
                    p = _qmul(e, b[i][j])
                    s = (s[0] + p[0], s[1] + p[1])
                out[-1].append(s)
        return out

    def add(a, b):
        return [[(x[0] + y[0], x[1] + y[1]) for x, y in zip(r, s, strict=True)]
                for r, s in zip(a, b, strict=True)]

    def cat(a, b, d):
        return a + b if d == -2 else [r + s for r, s in zip(a, b, strict=True)]

    def div(x, k):
        q = _qrecip(_q(k))
        return scaled(x, (abs(q[0]) + abs(q[1]), Fraction(0)) if absolute else q)

    def tmul(x, k):  # the 0-dim tensor holds k rounded to the dtype
        return scaled(x, num(torch.tensor(k, dtype=dtype).item()))

    return leaf, mm, add, cat, lambda x, k: scaled(x, num(k)), div, tmul


def _float(q: Fraction) -> float:
    try:
        return float(q)
    except OverflowError:
        return math.inf if q > 0 else -math.inf


def _to_tensor(m) -> tuple[torch.Tensor, torch.Tensor]:
    re = torch.tensor([[_float(e[0]) for e in row] for row in m], dtype=torch.float64)
    im = torch.tensor([[_float(e[1]) for e in row] for row in m], dtype=torch.float64)
    return re, im


# ---- the property ----------------------------------------------------------------------------
def _check(dtype, spec, tensors):
    got = _lazy(spec, tensors, dtype)
    assert got.dtype == dtype
    got = got.to(torch.complex128)
    exact_re, exact_im = _to_tensor(_evaluate(spec, *_exact_ops(tensors, dtype, absolute=False)))
    bound = _to_tensor(_evaluate(spec, *_exact_ops(tensors, dtype, absolute=True)))[0]
    info = torch.finfo(_real(dtype))
    top, tiny, rtol = info.max, info.smallest_normal, RTOL[_real(dtype)]
    for part, exact in ((got.real, exact_re), (got.imag, exact_im)):
        inside = bound < top / 4  # every partial sum, scaled, well inside the range
        assert part[inside].isfinite().all(), (got, exact_re, exact_im, bound)
        err = (part[inside] - exact[inside]).abs()
        # the magnitudes bound the rounding of each step; below the smallest normal, the spacing
        assert (err <= 4 * rtol * bound[inside] + 4 * tiny).all(), (got, exact_re, exact_im, bound)
        past = exact.abs() > 4 * top  # well past the range: no finite answer
        assert not part[past].isfinite().any(), (got, exact_re, exact_im)
    eager = _torch(spec, tensors, dtype).to(torch.complex128)
    size = torch.maximum(eager.real.abs(), eager.imag.abs())
    answered = eager.isfinite() & (size > 0) & (size < top / 4)  # away from where rounding decides
    assert got[answered].isfinite().all(), (got, eager)


@SETTINGS
@given(case=cases())
def test_number_scales_answer_as_exact_arithmetic(case):
    _check(*case)


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_two_huge_scales_of_tiny_entries(dtype):
    x = torch.full((3, 3), 1e-300, dtype=dtype)
    got = (lm.lazy(x) * 1e200 * 1e200).to_dense()
    torch.testing.assert_close(got, x * 1e200 * 1e200, rtol=1e-14, atol=0)
    # (torch's complex128 division by the subnormal 1e-310 answers inf + nan j: the real quotient
    # is the reference)
    torch.testing.assert_close((lm.lazy(x) / 1e-310).to_dense(), (x.real / 1e-310).to(dtype),
                               rtol=1e-14, atol=0)
    torch.testing.assert_close((lm.lazy(x) * 1e-200 * 1e-200 * 1e300 * 1e300).to_dense(),
                               torch.full((3, 3), 1e-100, dtype=torch.float64).to(dtype), rtol=1e-12, atol=0)


def test_zero_dim_tensor_scales_are_applied_one_at_a_time():
    """Two float32 0-dim tensors of ``1e20``: their product overflows float32; torch's
    multiplications of ``1e-30`` entries one at a time answer ``1e10``."""
    x = torch.full((2, 2), 1e-30)
    s = torch.tensor(1e20)
    expected = x * s * s
    assert expected.isfinite().all()
    torch.testing.assert_close((lm.lazy(x) * s * s).to_dense(), expected)
    a, b = torch.full((2, 3), 1e-15), torch.full((3, 2), 1e-15)
    torch.testing.assert_close(((lm.lazy(a) * s) @ (lm.lazy(b) * s)).to_dense(), (a * s) @ (b * s))
