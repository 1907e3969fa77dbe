"""A fresh chain reads its leaves' tensors and shapes in one pass (``execute._fresh_chain``): with
a leaf written or resized in place, or a symbol among the leaves, its evaluation answers as the
form's evaluation of the same chain does (the same values, eager torch's in float64, or the same
error naming the shapes)."""

import functools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close, randn

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):
    """``(batches, dims, change, where, dtype, seed)``: per leaf its batch, the chain's dims,
    what happens to leaf ``where`` after wrapping (``None``, ``"write"``, ``"resize"``,
    ``"symbol"``: built as a symbol)."""
    n = draw(st.integers(2, 4))
    batches = [draw(st.sampled_from([(), (), (2,), (1,)])) for _ in range(n)]
    dims = draw(st.lists(st.integers(1, 5), min_size=n + 1, max_size=n + 1))
    change = draw(st.sampled_from([None, "write", "resize", "symbol"]))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    return batches, dims, change, draw(st.integers(0, n - 1)), dtype, draw(st.integers(0, 2**31 - 1))


def _outcome(X):
    try:
        return X.to_dense(), None
    except (ValueError, TypeError) as e:
        return None, (type(e), str(e))


@SETTINGS
@given(cases())
def test_a_fresh_chain_answers_as_its_form(case):
    batches, dims, change, where, dtype, seed = case
    outcomes = []
    for fresh in (True, False):
        gen = torch.Generator().manual_seed(seed)
        tensors = [randn(gen, *b, dims[i], dims[i + 1], dtype=dtype) for i, b in enumerate(batches)]
        leaves = [lm.symbol("s", t.shape, dtype) if change == "symbol" and i == where else lm.lazy(t)
                  for i, t in enumerate(tensors)]
        X = functools.reduce(lambda a, b: a @ b, leaves)
        if change == "write":
            tensors[where].mul_(-2.0)
        elif change == "resize":
            t = tensors[where]
            t.resize_(*t.shape[:-1], t.shape[-1] + 1)
        if not fresh:
            X._cache["read"] = True  # as if evaluated before: through its form
        out, error = _outcome(X)
        if change in (None, "write"):
            assert error is None
            assert_close(out, functools.reduce(torch.matmul, tensors))
        outcomes.append(error)
    assert outcomes[0] == outcomes[1]
    if change == "resize":
        assert outcomes[0] is not None and "resized in place" in outcomes[0][1]
    if change == "symbol":
        assert outcomes[0] is not None and "has no data" in outcomes[0][1]
