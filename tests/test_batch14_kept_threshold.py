"""A span of unbatched leaves in a batched chain is kept on the leaves only when forming it again
costs at least ``product_cache.MIN_KEPT_FLOPS`` (:func:`lazymat.product_cache.worth_keeping`):
the fresh path, the form's evaluation and the plan's accounting (``shared_steps``,
``cached_steps``) all keep the same spans, values stay eager torch's in float64, and a kept
span is found by a later chain and not read after an in-place change of a leaf."""

import functools

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import product_cache
from lazymat.plan import cached_steps, plan_canon, plan_chain
from lazymat.rewrite import canonical

from conftest import TorchCalls, assert_close, randn

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def chains(draw):
    """``(batch, m, k, n, p, flip, dtype, grad, seed)`` for ``H @ B @ C`` with ``H`` of shape
    ``(*batch, p, m)`` and the unbatched ``B`` (``m x k``, stored transposed when ``flip``) and
    ``C`` (``k x n``): the span ``B @ C`` costs ``2 m k n`` FLOPs, drawn on both sides of the bound."""
    batch = draw(st.sampled_from([(3,), (2, 1), (1, 2), (2, 3)]))
    m, k, n = (draw(st.sampled_from([2, 8, 40, 64, 90])) for _ in range(3))
    p = draw(st.sampled_from([64, 200]))  # tall batched factor: the plan forms B @ C first mostly
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    return batch, m, k, n, p, draw(st.booleans()), dtype, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


def _kept_keys(leaf):
    return set(product_cache._products(leaf) or {})


def _build(case):
    batch, m, k, n, p, flip, dtype, grad, seed = case
    gen = torch.Generator().manual_seed(seed)
    H = randn(gen, *batch, p, m, dtype=dtype).requires_grad_(grad)
    Bt = (randn(gen, k, m, dtype=dtype) if flip else randn(gen, m, k, dtype=dtype)).requires_grad_(grad)
    C = randn(gen, k, n, dtype=dtype).requires_grad_(grad)
    leaves = [lm.lazy(H), lm.lazy(Bt), lm.lazy(C)]
    middle = leaves[1].mT if flip else leaves[1]
    X = leaves[0] @ middle @ leaves[2]
    D = H.detach() @ (Bt.detach().mT if flip else Bt.detach()) @ C.detach()
    return X, D, leaves, (H, Bt, C)


@SETTINGS
@given(chains())
def test_a_span_is_kept_exactly_when_forming_it_costs_the_bound(case):
    batch, m, k, n, p, flip, dtype, grad, seed = case
    X, D, leaves, _ = _build(case)
    plan = plan_chain(tuple(x.shape for x in [leaves[0], leaves[1].mT if flip else leaves[1], leaves[2]]),
                      dtype.itemsize)
    forms_span = plan.program[0] == (1, 2)  # B @ C first: the span of the two unbatched leaves
    expected = forms_span and 2 * m * k * n >= product_cache.MIN_KEPT_FLOPS
    with torch.no_grad():
        assert_close(X.to_dense(), D)
    assert bool(_kept_keys(leaves[1])) is expected
    assert {s for s, *_ in plan.shared_steps} == ({0} if expected else set())
    # the form (a second evaluation reads it) counts and keeps the same span
    form = canonical(X)
    term_plan = plan_canon(form).terms[0]
    assert cached_steps(form.terms[0], term_plan) == (frozenset({0}) if expected else frozenset())
    with torch.no_grad():
        assert_close(X.to_dense(), D)
    assert bool(_kept_keys(leaves[1])) is expected


@SETTINGS
@given(chains())
def test_gradients_and_values_match_eager_on_either_side_of_the_bound(case):
    batch, m, k, n, p, flip, dtype, grad, seed = case
    X, D, leaves, (H, Bt, C) = _build(case)
    out = X.to_dense()
    assert_close(out.detach(), D)
    if grad:
        out.real.sum().backward()
        copies = [t.detach().clone().requires_grad_(True) for t in (H, Bt, C)]
        (copies[0] @ (copies[1].mT if flip else copies[1]) @ copies[2]).real.sum().backward()
        for t, copy in zip((H, Bt, C), copies, strict=True):
            assert_close(t.grad, copy.grad)
        assert not _kept_keys(leaves[1])  # recorded: nothing kept (the value has no graph)


def test_a_kept_span_is_found_later_and_not_read_after_an_in_place_change(gen):
    """``2 * 64 * 64 * 64`` FLOPs (the bound): kept by the first chain, found by a second chain
    over the same unbatched leaves (no product of them formed again), and formed again once
    ``C`` is written in place."""
    H, B, C = randn(gen, 3, 256, 64), randn(gen, 64, 64), randn(gen, 64, 64)
    b, c = lm.lazy(B), lm.lazy(C)
    assert product_cache.MIN_KEPT_FLOPS <= 2 * 64**3
    assert_close((lm.lazy(H) @ b @ c).to_dense(), H @ B @ C)
    assert len(_kept_keys(b)) == 1
    H2 = randn(gen, 3, 256, 64)
    with TorchCalls() as calls:
        assert_close((lm.lazy(H2) @ b @ c).to_dense(), H2 @ B @ C)
    assert calls.reading("matmul", B, C) == 0  # found on b
    C.mul_(2)
    with TorchCalls() as calls:
        assert_close((lm.lazy(H2) @ b @ c).to_dense(), H2 @ B @ C)
    assert calls.reading("matmul", B, C) == 1  # C changed: formed again


def test_a_cheap_span_leaves_no_entry_and_no_owner(gen):
    """Below the bound nothing is kept: no products on the leaves, and an unbatched evaluation
    after it still skips the search (``product_cache.holds_none`` answers from the empty registry)."""
    owners = len(product_cache._owners)
    H, B, C = randn(gen, 4, 64, 32), randn(gen, 32, 32), randn(gen, 32, 64)
    assert product_cache.MIN_KEPT_FLOPS > 2 * 32 * 32 * 64
    leaves = [lm.lazy(t) for t in (H, B, C)]
    X = functools.reduce(lambda a, b: a @ b, leaves)
    assert_close(X.to_dense(), H @ B @ C)
    assert not any(_kept_keys(x) for x in leaves)
    assert len(product_cache._owners) == owners
