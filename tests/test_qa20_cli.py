"""The ``lazymat`` command's bad arguments (qa20, session 15): ``--op solve/lstsq --k -2``
costed a B of -2 columns (negative FLOPs and bytes, exit 0): ``lm.explain`` now refuses a k
that is not an int >= 0, which the command prints as one line; a name given twice by
``--shape`` took the last shape silently."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.cli import main


@settings(max_examples=40, deadline=None)
@given(op=st.sampled_from(["solve", "lstsq"]), k=st.one_of(st.integers(-5, 6), st.floats(-2, 4),
       st.booleans(), st.sampled_from([np.int64(3), np.int32(0)])), m=st.integers(1, 4))
def test_explain_of_solve_takes_k_columns_for_a_non_negative_int_only(op, k, m):
    x = lm.lazy(torch.randn(m, 2)) @ lm.lazy(torch.randn(2, m))
    integer = not isinstance(k, (bool, float)) and int(k) >= 0
    if not integer:
        with pytest.raises(ValueError, match=rf"{op}'s k is the number of columns of B, an int >= 0"):
            lm.explain(x, op, k=k)
        return
    report = lm.explain(x, op, k=k)
    assert report.planned.flops >= 0 and report.planned.peak_bytes >= 0
    for route in report.naive:
        assert route.flops >= 0 and route.peak_bytes >= 0, route


@pytest.mark.parametrize("args, words", [
    (["--op", "solve", "--k", "-2"], ["k is the number of columns of B", "-2"]),
    (["--op", "lstsq", "--k", "-1"], ["k is the number of columns of B", "-1"]),
    (["--shape", "A=3x5"], ["--shape A is given twice", "'A=3x4'", "'A=3x5'"]),
])
def test_bad_arguments_are_one_line_and_exit_code_2(args, words, capsys):
    assert main(["explain", "A @ B", "--shape", "A=3x4", "--shape", "B=4x3", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err


def test_a_preset_name_may_still_be_reshaped_once(capsys):
    assert main(["explain", "W_E @ W_U", "--preset", "gpt2-small", "--shape", "W_E=3x768"]) == 0
    assert "(3,768)" in capsys.readouterr().out
