"""The expression language with odd input (qa14, session 11).

Found: a number past float64's range (``1e309 * A``) parsed as inf and scaled the matrix by it."""

import math
import re

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.parse import MAX_NESTING, ParseError, parse

A = torch.rand(4, 3, dtype=torch.float64) + 1.0
NAMES = {"A": lm.lazy(A), "B": lm.lazy(torch.rand(3, 4, dtype=torch.float64)),
         "S": lm.symbol("S", (10**12, 7)), "Bt": lm.lazy(torch.rand(2, 4, 3, dtype=torch.float64))}


@settings(max_examples=80, deadline=None)
@given(mantissa=st.from_regex(r"\A(\d{1,4}|\d{1,3}\.\d{0,3}|\.\d{1,3})\Z"),
       exponent=st.one_of(st.just(""), st.integers(-400, 400).map(lambda e: f"e{e:+d}")))
@example(mantissa="1", exponent="e309")
@example(mantissa="1.8", exponent="e308")
@example(mantissa="1.7", exponent="e308")
def test_a_number_scales_by_its_value_or_is_refused(mantissa, exponent):
    """Property: ``<number> * A`` is ``float(number) * A`` (eager torch, float64) for every
    literal float64 holds, and a ParseError pointing at the number for one past its range."""
    text = mantissa + exponent
    value = float(text)
    if math.isinf(value):
        with pytest.raises(ParseError, match=rf"number {re.escape(text)} is out of range .* column 1"):
            parse(f"{text} * A", NAMES)
        return
    got = parse(f"{text} * A", NAMES).to_dense()
    torch.testing.assert_close(got, value * A, rtol=1e-15, atol=0.0, equal_nan=True)

TOKENS = ["A", "B", "S", "Bt", " @ ", " + ", " - ", " * ", " / ", "(", ")", ".T", ".mT", "[", "]", ":", ",",
          "...", "None", "0", "1", "-1", "2.5", "1e309", "é", "\u00a0", "\u200b", "😀", "\x00", "#", "'",
          "\n"]


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.sampled_from(TOKENS), max_size=25))
def test_any_text_parses_or_raises_a_parse_error(parts):
    """Property: any text (tokens, unicode, control characters) gives an expression or a
    ParseError (a ValueError with the column), never another exception."""
    text = "".join(parts)
    try:
        out = parse(text, NAMES)
    except ParseError as e:
        assert "column" in str(e)
        return
    assert lm.is_lazy(out)


@pytest.mark.parametrize("depth", [MAX_NESTING, MAX_NESTING + 1, 20_000])
def test_nesting_is_bounded_without_recursion_errors(depth):
    text = "(" * depth + "A" + ")" * depth
    if depth <= MAX_NESTING:
        assert parse(text, NAMES).shape == (4, 3)
    else:
        with pytest.raises(ParseError, match=f"nested deeper than {MAX_NESTING}"):
            parse(text, NAMES)


def test_long_flat_texts_parse_without_recursion():
    assert parse("-" * 50_001 + "A", NAMES).shape == (4, 3)
    assert parse("A" + ".T" * 50_001, NAMES).shape == (3, 4)
    assert parse("A" + " + A" * 5_000, NAMES).shape == (4, 3)
