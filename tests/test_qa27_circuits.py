"""qa27: circuit results and analyses checked against plain Python and float64 formulas."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymat.circuits.results import Scores, head_name

# scores that tie, or differ past float32's digits (0.5 and 0.5 + 1e-9 are one float32)
NEAR = st.sampled_from([0.5, 0.5 + 1e-9, 0.5 + 2e-9, 0.5 - 1e-12, 0.25, -0.5, math.nan])


@settings(max_examples=60, deadline=None)
@given(L=st.integers(1, 3), H=st.integers(1, 4), pairwise=st.booleans(), largest=st.booleans(),
       data=st.data())
def test_top_ranks_as_a_float64_sort_with_ties_in_head_order(L, H, pairwise, largest, data):
    shape = (L, H, L, H) if pairwise else (L, H)
    values = data.draw(st.lists(NEAR, min_size=math.prod(shape), max_size=math.prod(shape)))
    scores = torch.tensor(values, dtype=torch.float64).reshape(shape)
    valid = None
    if pairwise:
        layers = torch.arange(L)
        valid = (layers[:, None, None, None] < layers[None, None, :, None]).expand(shape)
    n = data.draw(st.integers(0, len(values) + 2))
    kind = data.draw(st.sampled_from([int, np.int64, torch.tensor]))
    got = Scores(scores, "s", valid=valid).top(kind(n), largest=largest)
    entries = [(v, i) for i, v in enumerate(values) if not math.isnan(v)
               and (valid is None or bool(valid.flatten()[i]))]
    entries.sort(key=lambda e: (-e[0] if largest else e[0], e[1]))  # ties: the earlier index first

    def name(i):
        c = np.unravel_index(i, shape)
        return (f"{head_name(c[0], c[1])} -> {head_name(c[2], c[3])}" if pairwise
                else head_name(c[0], c[1]))

    assert [line.split(":")[0] for line in got] == [name(i) for _, i in entries[:n]]
    printed = [float(line.split(": ")[1]) for line in got]
    assert printed == pytest.approx([v for v, _ in entries[:n]], abs=1e-4)


@pytest.mark.parametrize("n", [-1, 2.0, True, "3", np.float64(2.0)])
def test_top_names_a_count_that_is_not_a_non_negative_int(n):
    with pytest.raises(ValueError, match="top: n must be a non-negative int, got"):
        Scores(torch.zeros(2, 3), "s").top(n)
