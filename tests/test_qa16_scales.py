"""Non-finite and extreme scalars (qa16, session 12).

Found: ``X / 1e-320`` (float64) folded the division into the multiplier ``1 / 1e-320 = inf``,
answering NaN (``0 * inf``) and inf where torch's division of each entry is 0 or finite; session
12 refused such a reciprocal (``OverflowError``); since session 13 it is kept exact (a mantissa
and a power of two, :mod:`lazymat.coefficient`) and the quotient is answered.
In the ``lazymat`` expression language ``nan * A`` was blamed on the operator ("'*' multiplies
by a number"): ``nan`` read as a matrix name; now the word itself is named.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.parse import ParseError, check_syntax, parse


def _product(gen, dtype):
    """A 4 x 3 lazy product with a zero column and tiny entries, and its float64 dense twin."""
    a = torch.randn(4, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    b[:, 0] = 0
    a[0] *= 1e-30
    a, b = a.to(dtype), b.to(dtype)
    return lm.lazy(a) @ lm.lazy(b), a.to(torch.float64) @ b.to(torch.float64)


@settings(max_examples=80, deadline=None)
@given(exponent=st.floats(-330, 5), sign=st.sampled_from([1, -1]),
       dtype=st.sampled_from([torch.float64, torch.float32]), seed=st.integers(0, 2**16))
def test_a_division_answers_the_quotient_in_range(exponent, sign, dtype, seed):
    """Each entry divided in float64 and rounded once to ``dtype``: a reciprocal past the float
    range is kept exact (lazymat.coefficient), and torch's own float32 division, which rounds
    the divisor to float32 first (``1e-46`` to 0: NaN and inf), is not the reference."""
    divisor = sign * 10.0**exponent
    if divisor == 0:
        return
    x, dense = _product(torch.Generator().manual_seed(seed), dtype)
    expected = (dense / divisor).to(dtype).to(torch.float64)
    got = (x / divisor).to_dense().to(torch.float64)
    assert torch.equal(got.isnan(), expected.isnan()), (divisor, got, expected)
    assert torch.equal(got.isinf(), expected.isinf()), (divisor, got, expected)
    finite = expected.isfinite()
    tiny = torch.finfo(dtype).tiny  # below it, the subnormal spacing
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=tiny)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", ["left", "right", "tensor"])
def test_non_finite_multiples_answer_as_torch(value, side):
    x, dense = _product(torch.Generator().manual_seed(0), torch.float64)
    scaled = {"left": lambda: value * x, "right": lambda: x * value,
              "tensor": lambda: torch.tensor(value, dtype=torch.float64) * x}[side]()
    expected = dense * value
    got = scaled.to_dense()
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.isinf(), expected.isinf())
    torch.testing.assert_close(got[expected.isfinite()], expected[expected.isfinite()])


@settings(max_examples=60, deadline=None)
@given(word=st.sampled_from(["nan", "inf", "NaN", "Inf", "infinity"]),
       template=st.sampled_from(["{w} * A", "A * {w}", "A / {w}", "-{w} * A", "A + ({w} * A)", "{w}"]))
def test_the_expression_language_names_a_non_finite_word(word, template):
    text = template.format(w=word)
    a = lm.lazy(torch.randn(3, 3, dtype=torch.float64))
    for check in (lambda: check_syntax(text), lambda: parse(text, {"A": a})):
        with pytest.raises(ParseError, match=f"'{word}' is not a number here") as info:
            check()
        assert info.value.column == text.index(word)


@pytest.mark.parametrize("word", ["nan", "Inf"])
def test_the_command_refuses_a_non_finite_word_as_a_name(word, capsys):
    from lazymat.cli import main

    assert main(["explain", "A @ B", "--shape", "A=3x3", "--shape", f"{word}=3x3"]) == 2
    assert f"'{word}' cannot name a matrix" in capsys.readouterr().err


@pytest.mark.parametrize("text, key", [("A[1,]", (1,)), ("A[1, 0:2,]", (1, slice(0, 2))),
                                       ("A[..., 1:,]", (..., slice(1, None)))])
def test_an_index_may_end_in_a_comma_as_in_python(text, key):
    a = torch.randn(2, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(parse(text, {"A": lm.lazy(a)}).to_dense(), a[key])
    with pytest.raises(ParseError, match="expected an integer"):
        check_syntax("A[1,,]")
