"""``explain`` of a trace or diagonal shows the coefficient's rows that run (coef17, session 17).

:func:`lazymat.execute.contract_sum` multiplies each closed network's value by its term's
coefficient, and for a coefficient far from 1 first rescales every operand by a power of two
(:func:`lazymat.execute.rescaled`); ``explain`` showed neither, so its FLOPs missed the passes.
Checked against what runs: the elements torch's multiplications write (a dispatch count), the
same expression without its coefficients as the baseline (the networks' own products)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import Multiplied

COEFS = [1.0, 0.5, 3.0, 1e-300, 1e300, 2.0**-100]


def _sum(seed, n, terms, with_coefs):
    gen = torch.Generator().manual_seed(seed)
    x = None
    for factors, coef in terms:
        dims = [n, *[int(d) for d in torch.randint(1, 5, (factors - 1,), generator=gen)], n]
        t = None
        for i in range(factors):
            leaf = lm.lazy(torch.rand(dims[i], dims[i + 1], generator=gen, dtype=torch.float64) + 0.5)
            t = leaf if t is None else t @ leaf
        t = COEFS[coef] * t if with_coefs else t
        x = t if x is None else x + t
    return x


def _multiplied(fn, x):
    with Multiplied() as m:
        fn(x)
    return m.elements


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 5), op=st.sampled_from(["trace", "diagonal"]),
       terms=st.lists(st.tuples(st.integers(1, 3), st.integers(0, len(COEFS) - 1)), min_size=1, max_size=3))
def test_closed_network_scale_rows_are_what_runs(seed, n, op, terms):
    x, bare = _sum(seed, n, terms, True), _sum(seed, n, terms, False)
    fn = getattr(LA, op)
    ran = _multiplied(fn, x) - _multiplied(fn, bare)
    report, base = lm.explain(x, op), lm.explain(bare, op)
    kinds = [r.op.split(": ")[-1].split(" ")[0] for r in report.rows]
    shown = sum(r.flops for r, kind in zip(report.rows, kinds, strict=True) if kind in ("scale", "rescale"))
    assert ran == shown, (ran, [(r.op, r.flops) for r in report.rows])
    assert report.planned.flops - base.planned.flops == shown
    # every factor of a product with a far coefficient rescaled, nothing else
    assert kinds.count("rescale") == sum(f for f, k in terms if f > 1 and COEFS[k] not in (1.0, 0.5, 3.0))
    torch.testing.assert_close(fn(x), fn(x.to_dense()), rtol=1e-9, atol=0)


def test_far_coefficient_of_a_sum_shows_its_rescale_rows():
    gen = torch.Generator().manual_seed(0)
    A, B, C, D = (torch.rand(6, 6, generator=gen, dtype=torch.float64) for _ in range(4))
    x = 1e-300 * (lm.lazy(A) @ lm.lazy(B)) + lm.lazy(C) @ lm.lazy(D)
    for op in ("trace", "diagonal"):
        ops = [r.op for r in lm.explain(x, op).rows]
        assert [o.split(" ")[2] for o in ops[:2]] == ["rescale", "rescale"], ops
        assert ops[3] == "term 0: scale", ops


def test_a_rescaled_network_counts_its_operands_copies():
    # execute.rescaled holds every operand's rescaled copy until the network has run: the call's
    # reserve (network.terms_reserve) holds them beside it, as the planned peak and explain's do
    gen = torch.Generator().manual_seed(0)
    A = torch.rand(40, 8, generator=gen, dtype=torch.float64)
    B = torch.rand(8, 40, generator=gen, dtype=torch.float64)
    copies = (A.numel() + B.numel()) * 8
    for coef, rescaled in ((1e-300, True), (0.5, False)):
        x = coef * (lm.lazy(A) @ lm.lazy(B))
        for op in ("trace", "diagonal"):
            peak = lm.explain(x, op).planned.peak_bytes
            assert (peak >= copies) is rescaled, (coef, op, peak)
            with lm.config(memory_budget=peak):  # the figure the executor checks: it runs
                want = getattr(torch, op)(coef * (A @ B))
                torch.testing.assert_close(getattr(LA, op)(x), want, rtol=1e-9, atol=0)
