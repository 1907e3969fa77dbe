"""Scales written on the factors of a chain (``(2**a A) @ B @ (2**c C)``) fold into one coefficient,
and the term is rescaled only where a run of them reaches far from 1 for the chain's dtype
(:func:`lazymat.coefficient.chain_fold` marks the reach only then). Elsewhere the coefficient is a
plain number: one multiplication where it is not 1, none where the scales cancel, on the fresh path
and on the canonical path alike, with bit-identical answers within eager float64's rounding."""

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.rewrite import canonical

from conftest import Multiplied

FAR = {torch.float64: 64, torch.float32: 32, torch.float16: 8}  # independent of coefficient._FAR


@st.composite
def chains(draw):
    """dtype, n + 1 dims, each operand's power-of-two exponent (None: unscaled), cancelled so the
    product is 1 where drawn, a parenthesisation, a seed."""
    n = draw(st.integers(3, 5))
    dtype = draw(st.sampled_from(list(FAR)))
    dims = draw(st.lists(st.integers(1, 6), min_size=n + 1, max_size=n + 1))
    exps = draw(st.lists(st.one_of(st.none(), st.integers(-80, 80)), min_size=n, max_size=n))
    scaled = [i for i, e in enumerate(exps) if e is not None]
    if len(scaled) >= 2 and draw(st.booleans()):  # the last scale cancels the others
        exps[scaled[-1]] = -sum(exps[i] for i in scaled[:-1])
    joins = draw(st.one_of(st.just([0] * (n - 1)),
                           st.lists(st.integers(0, 4), min_size=n - 1, max_size=n - 1)))
    return dtype, dims, exps, joins, draw(st.integers(0, 2**16))


def build(case, tensors, leaf):
    _, _, exps, joins, _ = case
    nodes = [leaf(t) if e is None else 2.0**e * leaf(t) for t, e in zip(tensors, exps, strict=True)]
    for j in joins:
        i = j % (len(nodes) - 1)
        nodes[i:i + 2] = [nodes[i] @ nodes[i + 1]]
    return nodes[0]


def reach_is_far(case) -> bool:
    """Whether a run of consecutive scales (unscaled factors as 1) has a product past the dtype's
    far exponent: read from the exponents, not from lazymat."""
    dtype, _, exps, _, _ = case
    logs = [e for e in exps if e is not None]
    spans = [abs(sum(logs[i:j])) for i in range(len(logs)) for j in range(i + 1, len(logs) + 1)]
    return bool(spans) and max(spans) > FAR[dtype]


@settings(max_examples=200, deadline=None)
@given(chains())
@example((torch.float64, [4, 4, 4, 4], [9, None, -9], [0, 0], 0))  # cancelling, reach 9: was a * 1 pass
@example((torch.float32, [4, 4, 4, 4], [-3, None, -6], [0, 0], 1))  # (A / 8) @ B @ (C / 64): one pass
@example((torch.float64, [4, 4, 4, 4], [70, None, -70], [0, 0], 2))  # reach 70: far, rescaled
def test_scales_on_factors_multiply_only_where_the_reach_is_far(case):
    dtype, dims, exps, _, seed = case
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(dims[i], dims[i + 1], generator=g, dtype=torch.float64).to(dtype)
               for i in range(len(exps))]
    answers, counts = [], []
    for path in ("fresh", "canonical"):
        x = build(case, tensors, lambda t: lm.lazy(t.clone()))
        if path == "canonical":
            canonical(x)  # the form built first: the evaluation reads it
        with Multiplied() as mul:
            answers.append(x.to_dense())
        counts.append(mul)
    fresh, form = answers
    assert torch.equal(fresh.nan_to_num(), form.nan_to_num()) and torch.equal(fresh.isnan(), form.isnan())
    product = sum(e for e in exps if e is not None)
    for mul in counts:
        if reach_is_far(case):
            assert mul.calls >= 1  # rescaled: the operands' copies are multiplied
        elif product == 0:
            assert mul.calls == 0, (case, mul.calls)  # scales that cancel: no pass at all
        else:
            assert mul.calls == 1, (case, mul.calls)  # one pass, over a factor or the answer
            assert mul.elements in {t.numel() for t in tensors} | {form.numel()}
    # within rounding of eager float64, where the answer is in the dtype's range with room
    ref = build(case, tensors, torch.Tensor.double)
    size = build(case, [t.abs() for t in tensors], torch.Tensor.double)
    fi = torch.finfo(dtype)
    inner = sum(dims) + len(exps) + 4
    bound = 4 * fi.eps * inner * size + 8 * inner * fi.tiny * (1 + size)
    if bool(ref.abs().max() < fi.max / 4) and bool(torch.isfinite(form).all()):
        assert bool(((form.double() - ref).abs() <= bound).all()), (form.double() - ref).abs().max()
