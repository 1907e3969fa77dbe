"""A coefficient below 1 is applied where it costs the fewest multiplications (coef17, session 17).

scale16 placed a coefficient below 1 on the smaller operand of the first product, so that every
product is formed scaled down; where the answer is smaller than that operand (``(A @ B) / 8`` of
a ``2 x 64`` and a ``64 x 2``) scaling the answer is the cheaper pass (4 multiplications, not
128), and the coefficient, near 1, moves the products by at most its own factor. Checked
against what runs: the elements torch's multiplications write, the plan's and explain's counts."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.plan import plan_expr
from lazymat.rewrite import canonical

from conftest import Multiplied


def _first_operands(x):
    """Elements of the two operands of the first product the planner runs, and of the answer."""
    c = canonical(x)
    (t,), (tp,) = c.terms, plan_expr(x).terms
    a, b = tp.program[0]
    sizes = [math.prod(f.shape) for f in t.factors]
    return sizes[a], sizes[b], math.prod(x.shape)


@settings(max_examples=60, deadline=None)
@given(dims=st.lists(st.integers(1, 9), min_size=3, max_size=5), seed=st.integers(0, 2**16),
       coef=st.sampled_from([0.125, 0.5, 0.75, 2.0**-20]), on=st.integers(0, 3))
def test_a_coefficient_below_one_costs_the_cheaper_pass(dims, seed, coef, on):
    gen = torch.Generator().manual_seed(seed)
    pairs = zip(dims[:-1], dims[1:], strict=True)
    leaves = [torch.rand(m, n, generator=gen, dtype=torch.float64) for m, n in pairs]
    lazies = [lm.lazy(t) for t in leaves]
    k = on % len(lazies)
    lazies[k] = coef * lazies[k]
    x = lazies[0]
    for f in lazies[1:]:
        x = x @ f
    a, b, out = _first_operands(x)
    with Multiplied() as m:
        got = x.to_dense()
    assert m.elements == min(a, b, out), (m.elements, a, b, out)
    assert plan_expr(x).scale_flops == m.elements
    shown = [r for r in lm.explain(x).rows if r.op.split(" ")[0] == "scale"]
    assert [r.flops for r in shown] == [m.elements]
    eager = leaves[0]
    for t in leaves[1:]:
        eager = eager @ t
    torch.testing.assert_close(got, coef * eager, rtol=1e-12, atol=0)


def test_a_small_answer_is_scaled_last():
    gen = torch.Generator().manual_seed(0)
    A, B = torch.rand(2, 64, generator=gen), torch.rand(64, 2, generator=gen)
    x = (lm.lazy(A) / 8) @ lm.lazy(B)
    with Multiplied() as m:
        got = x.to_dense()
    assert m.elements == 4
    torch.testing.assert_close(got, (A / 8) @ B, rtol=1e-6, atol=0)
    rows = lm.explain(x).rows
    assert [r.op.split(" ")[0] for r in rows][-1] == "scale" and rows[-1].flops == 4
