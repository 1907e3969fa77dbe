"""A sliced closed network whose program computes one value twice (a Gram network's ``B C`` on
each side of ``tr(X^H X)``), once from sliced operands and once not, must keep the unsliced
value for later blocks: the sliced copy overwrote it, and the Frobenius norm of ``A B C``
under a 272-byte budget came out 8.30 where it is 12.35."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import lazymat as lm
from lazymat.settings import BudgetTooSmall

OPS = {
    "fro": (lambda X: lm.linalg.matrix_norm(X), lambda D: torch.linalg.matrix_norm(D)),
    "trace": (lm.linalg.trace, lambda D: D.diagonal(dim1=-2, dim2=-1).sum(-1)),
    "diagonal": (lm.linalg.diagonal, lambda D: D.diagonal(dim1=-2, dim2=-1)),
}


def _chain(seed: int, batch: tuple, dims: list[int]):
    gen = torch.Generator().manual_seed(seed)
    mats = [torch.randn(*batch, a, b, generator=gen, dtype=torch.float64)
            for a, b in zip(dims[:-1], dims[1:], strict=True)]
    X, D = lm.lazy(mats[0]), mats[0]
    for m in mats[1:]:
        X, D = X @ lm.lazy(m), D @ m
    return X, D


def test_the_frobenius_norm_under_a_tight_budget():
    g = torch.Generator().manual_seed(0)  # the example found: A(5,4) B(4,6) C(6,5) from seed 0
    A, B, C = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((5, 4), (4, 6), (6, 5)))
    with lm.config(memory_budget=272):
        got = lm.linalg.matrix_norm(lm.lazy(A) @ lm.lazy(B) @ lm.lazy(C))
    assert_close(got, torch.linalg.matrix_norm(A @ B @ C), rtol=1e-12, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(sorted(OPS)), st.lists(st.integers(1, 3), max_size=1),
       st.lists(st.integers(2, 8), min_size=2, max_size=3), st.integers(2, 8), st.floats(0.0, 1.0))
def test_sliced_networks_match_torch_between_the_minimum_and_the_unsliced_peak(seed, op, batch, inner, size,
                                                                              where):
    X, D = _chain(seed, tuple(batch), [size, *inner, size])
    lazy_op, torch_op = OPS[op]
    try:
        with lm.config(memory_budget=1):
            lazy_op(X)
        return  # fits any budget: nothing is sliced
    except BudgetTooSmall as err:
        least = err.minimum - err.budget + 1  # the budget as set, without the BLAS workspace
    with lm.config(memory_budget=least + int(where * 4 * least)):  # sliced, more or less finely
        got = lazy_op(X)
    assert_close(got, torch_op(D), rtol=1e-9, atol=1e-9 * float(D.abs().max()))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.lists(st.integers(1, 3), max_size=1),
       st.lists(st.integers(2, 6), min_size=1, max_size=3), st.integers(2, 6), st.data())
def test_a_gram_network_sliced_on_any_label_is_the_squared_norm(seed, batch, inner, size, data):
    """The executor's blocks, chosen here instead of by the slicer (which picks the same label
    only under some budgets): any label, any block size, against float64 torch."""
    from lazymat.execute import _prepared, _run_sliced
    from lazymat.network import NetworkCost, gram_trace
    from lazymat.rewrite import canonical

    X, D = _chain(seed, tuple(batch), [size, *inner, size])
    views = list(canonical(X).terms[0].factors)
    net = gram_trace(views, 8, False)
    sizes = dict(net.sizes)
    label = data.draw(st.sampled_from(sorted(sizes)))
    block = data.draw(st.integers(1, sizes[label]))
    slices = -(-sizes[label] // block)
    cost = NetworkCost(0, 0, ((label, block),), slices)
    tensors = [v.base.tensor for v in views] * 2
    got = _run_sliced(net, cost, _prepared(net, tensors), {}, frozenset(), None, None)
    assert_close(got, torch.linalg.matrix_norm(D) ** 2, rtol=1e-9, atol=1e-9)
