"""Session 18 QA (qa25): every streamed reduction (not only a row's argmin, amax and top-1)
under budgets from the least one up: what it allocates stays within the budget (its results
aside), and its values are torch's on the dense float64 tensor."""

import math

import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_properties import assert_close, expressions

import lazymat as lm
from lazymat.allocated import Allocated

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _bytes(out) -> int:
    return sum(t.numel() * t.element_size() for t in (out if isinstance(out, tuple) else (out,)))


def _ops(D, draw):
    """A streamed reduction of ``D``'s shape: (name, call on a tensor or expression, the dim of
    the one-dim reductions)."""
    nd = D.ndim
    d = draw(st.integers(-nd, nd - 1))
    dims = draw(st.lists(st.integers(0, nd - 1), unique=True, min_size=1, max_size=nd).map(tuple))
    keep = draw(st.booleans())
    k = draw(st.integers(0, D.shape[d]))
    ord_ = draw(st.sampled_from([1, 3, math.inf, -math.inf, 0]))
    name = draw(st.sampled_from(["topk", "amax", "amin", "argmax", "argmin", "argmax_all", "max_dim",
                                 "norm", "batch_sum"]))
    batch = tuple(range(nd - 2))
    if name == "batch_sum":
        assume(batch)
    return name, d % nd, {
        "topk": lambda Y: tuple(torch.topk(Y, k, d, largest=keep)),
        "amax": lambda Y: torch.amax(Y, dims, keep),
        "amin": lambda Y: torch.amin(Y, dims, keep),
        "argmax": lambda Y: torch.argmax(Y, d, keep),
        "argmin": lambda Y: torch.argmin(Y, d, keep),
        "argmax_all": lambda Y: torch.argmax(Y),
        "max_dim": lambda Y: tuple(torch.max(Y, d, keep)),
        "norm": lambda Y: torch.linalg.vector_norm(Y, ord_, dims, keep),
        "batch_sum": lambda Y: torch.sum(Y, batch, keep),
    }[name]


@SETTINGS
@given(expressions(), st.floats(0, 1), st.data())
def test_every_streamed_reduction_allocates_within_its_budget(pair, fraction, data):
    """Property: from the least budget to plenty, a streamed reduction allocates at most the
    budget beside twice its results (the blocks' partial results and their concatenation), and
    answers as torch does on the dense tensor (indices compared through the values they pick)."""
    X, D = pair
    assume(X.numel() > 0)
    name, d, call = _ops(D, data.draw)
    try:
        with lm.config(memory_budget=1):
            call(X)
        return  # a closed route, or no data: no budget asked
    except lm.BudgetTooSmall as e:
        least = e.minimum
    event(f"streamed: {name}")
    budget = least + int(fraction * 4 * least)
    with lm.config(memory_budget=budget), Allocated() as held:
        got = call(X)
    want = call(D)
    assert held.peak <= budget + 2 * _bytes(want), (name, held.peak, budget, _bytes(want), X)
    if name == "argmax_all":  # ties: the values picked
        assert got.shape == want.shape
        assert_close(D.flatten()[got], D.flatten()[want])
    elif name in ("argmax", "argmin"):
        assert got.shape == want.shape
        at = lambda i: i if i.ndim == D.ndim else i.unsqueeze(d)  # noqa: E731
        assert_close(D.gather(d, at(got)), D.gather(d, at(want)))
    elif isinstance(want, tuple):
        assert_close(got[0], want[0])
    else:
        assert_close(got, want)

