"""explain's comparison lines as a demanding user reads them (qa18, session 13).

Found: ``explain`` of a leaf's trace printed "lazymat vs dense materialisation: 0.5x fewer
FLOPs" (lazymat's route takes twice the FLOPs: a ratio below 1 worded as "fewer"), and equal
routes "1x fewer FLOPs, 1x less memory"."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

_LINE = re.compile(r"lazymat vs (.+?): (.+FLOPs.*), (.+memory.*)")


def _words(text: str, unit: str, naive: float, planned: float) -> None:
    """``text`` says lazymat's ``planned`` ``unit`` against ``naive`` as a factor above 1 in
    the right word, from the two numbers alone."""
    if planned == 0:
        assert text.startswith(f"no {unit} ") and ("either route" in text) == (naive == 0), text
        return
    if naive == 0:
        assert text.endswith(f"{unit} (vs none)"), text
        return
    m = re.fullmatch(rf"([0-9.e+]+)x (fewer|less|more) {unit}", text)
    if m is None:
        assert text == f"the same {unit}", text
        assert 0.995 < naive / planned < 1.005
        return
    factor, word = float(m.group(1)), m.group(2)
    assert factor > 1, text
    if word == "more":
        assert planned > naive and abs(factor - planned / naive) <= 0.005 * factor, (text, naive, planned)
    else:
        assert word == ("fewer" if unit == "FLOPs" else "less"), text
        assert naive > planned and abs(factor - naive / planned) <= 0.005 * factor, (text, naive, planned)


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(0, 6), min_size=2, max_size=4),
       op=st.sampled_from(["to_dense", "svdvals", "matrix_norm", "trace", "diagonal", "det", "eigvals"]),
       batch=st.sampled_from([(), (2,)]))
def test_every_comparison_is_a_factor_above_one_in_the_right_word(dims, op, batch):
    """Property: each "lazymat vs" line words both comparisons as a factor above 1 ("fewer"/
    "less" or "more"), "the same" when it prints as 1, or in words for a route without work,
    and the factor is the ratio of the routes' own numbers: leaves (a one-factor chain) too."""
    if op in ("trace", "diagonal", "det", "eigvals"):
        dims[-1] = dims[0]
    x = lm.symbol("A0", (*batch, dims[0], dims[1]))
    for i in range(1, len(dims) - 1):
        x = x @ lm.symbol(f"A{i}", (dims[i], dims[i + 1]))
    r = x.explain(op)
    lines = [ln.strip() for ln in str(r).splitlines() if ln.strip().startswith("lazymat vs")]
    assert len(lines) == len(r.naive)
    for line, naive in zip(lines, r.naive, strict=True):
        if line.endswith("no work on either route"):
            assert not (naive.flops or naive.peak_bytes or r.planned.flops or r.planned.peak_bytes)
            continue
        m = _LINE.fullmatch(line)
        assert m is not None and m.group(1) == naive.name, line
        _words(m.group(2), "FLOPs", naive.flops, r.planned.flops)
        _words(m.group(3), "memory", naive.peak_bytes, r.planned.peak_bytes)


def test_a_leaf_trace_takes_more_flops_and_says_so():
    text = str(lm.symbol("A", (2, 4, 4)).explain("trace"))
    assert "x fewer" not in text and "2x more FLOPs, the same memory" in text
