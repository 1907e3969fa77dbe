"""``explain``'s FLOPs for a product of shape-only symbols equal an independent count: 2 m k n per
GEMM, times the broadcast batch, over the order it reports (and the left-to-right route's over the
written order); each step's operands are the products of the factor spans it names."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

FULL_BATCH = (2, 3)


@st.composite
def chains(draw):
    n = draw(st.integers(2, 6))
    dims = draw(st.lists(st.sampled_from([1, 2, 3, 7, 16, 50, 200]), min_size=n + 1, max_size=n + 1))
    shapes = []
    for i in range(n):
        r = draw(st.integers(0, len(FULL_BATCH)))
        batch = tuple(draw(st.sampled_from([1, s])) for s in FULL_BATCH[len(FULL_BATCH) - r:])
        shapes.append((*batch, dims[i], dims[i + 1]))
    return shapes


def _gemm_flops(left: tuple, right: tuple) -> int:
    batch = torch.broadcast_shapes(tuple(left[:-2]), tuple(right[:-2]))
    return 2 * math.prod(batch) * left[-2] * left[-1] * right[-1]


@settings(max_examples=200, deadline=None)
@given(chains(), st.booleans())
def test_explained_flops_are_two_mkn_per_gemm_of_the_reported_order(shapes, scaled):
    X = lm.symbol("S0", shapes[0])
    for i, s in enumerate(shapes[1:], 1):
        X = X @ lm.symbol(f"S{i}", s)
    if scaled:
        X = 0.5 * X
    planned = X.plan()
    (term,) = planned.terms
    total = 0
    for step in term.steps:
        for (lo, hi), shape in ((step.left, step.left_shape), (step.right, step.right_shape)):
            batch = torch.broadcast_shapes(*[tuple(s[:-2]) for s in shapes[lo : hi + 1]])
            assert tuple(shape) == (*batch, shapes[lo][-2], shapes[hi][-1])
        assert step.flops == _gemm_flops(step.left_shape, step.right_shape)
        total += step.flops
    assert term.flops == total
    assert planned.flops == total + planned.add_flops + planned.scale_flops
    assert lm.explain(X).planned.flops == planned.flops  # what the report prints
    written, naive = shapes[0], 0
    for s in shapes[1:]:
        naive += _gemm_flops(written, s)
        written = (*torch.broadcast_shapes(tuple(written[:-2]), tuple(s[:-2])), written[-2], s[-1])
    assert term.naive_flops == naive
