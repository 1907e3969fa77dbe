"""A closed network's pairwise steps run as the GEMM ``torch.einsum`` lowers them to, called
directly (:func:`lazymat.network.pairwise_form`, :func:`lazymat.execute._pairwise`): the same
values as einsum, the result laid out with the strides the network's model gives the next step,
and the same bytes allocated beside it (:func:`lazymat.network.einsum_temporaries`), for
operands of every layout, batch labels, several labels per group and labels of size 1 (which
stay with einsum)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import Allocated
from test_network_layouts import assert_einsum_model, draw_step

import lazymat as lm
from lazymat import network
from lazymat.execute import _pairwise
from lazymat.network import pairwise_form
from lazymat.rewrite import canonical

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(st.data())
def test_a_lowered_step_is_einsum_with_its_layout_and_copies(data):
    run, out, operands, strides, sizes = draw_step(data, "abcdef", (1, 4), 4)
    with Allocated() as counted:
        result = _pairwise(run, operands)
    expected = torch.einsum(run, *operands)
    assert result.shape == expected.shape, run
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)
    assert_einsum_model(run, out, strides, sizes, result, counted.peak)


def test_the_forms_of_a_trace_are_two_gemms_and_a_dot():
    """``tr(E Q K^T E^T)``'s steps: ``E K``, ``E^T (E K)`` and the trace of ``Q^T M``, a
    contraction over both of its labels: one dot product of the two matrices' entries."""
    assert pairwise_form("ab,bc->ac", ((5, 3), (3, 2)))[2] == "mm"
    assert pairwise_form("ab,ab->", ((5, 3), (5, 3)))[2] == "dot"
    assert pairwise_form("ab,ba->", ((5, 3), (3, 5)))[2] == "dot"
    assert pairwise_form("zab,zbc->zac", ((4, 5, 3), (4, 3, 2)))[2] == "bmm"
    assert pairwise_form("ab,ab->ab", ((5, 3), (5, 3))) is None  # elementwise: einsum's mul
    assert pairwise_form("ab,bc->a", ((5, 3), (3, 2))) is None  # c summed on one side only
    assert pairwise_form("ab,bc->ac", ((5, 1), (1, 2))) is None  # a label of size 1


@SETTINGS
@given(st.data())
def test_a_lowered_step_of_complex_operands_is_einsum(data):
    """Complex operands, some read conjugated (a Frobenius network's ``conj(V)``, torch's lazy
    conjugate bit): the values are einsum's."""
    run, _, operands, _, _ = draw_step(data, "abcd", (2, 4), 3, torch.complex128)
    operands = [x.conj() if data.draw(st.booleans()) else x for x in operands]
    expected = torch.einsum(run, *[x.resolve_conj() for x in operands])
    torch.testing.assert_close(_pairwise(run, operands), expected, rtol=1e-12, atol=1e-12)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_a_lone_network_without_a_budget_is_planned_as_in_turn(data):
    """A call's only network without a budget takes a cached run (``network._alone``): the one
    the general loop over a call's networks gives it, for traces, diagonals and squared norms of
    products with batches (steps kept on the leaves) and without, beside any reserve."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    dims = data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=5))
    dims.append(dims[0])
    batch = data.draw(st.sampled_from([(), (3,), (2, 1)]))
    mats = [torch.randn(*(batch if i == 0 else ()), a, b, generator=g, dtype=torch.float64)
            for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False))]
    X = lm.lazy(mats[0])
    for m in mats[1:]:
        X = X @ lm.lazy(m)
    views = list(canonical(X).terms[0].factors)
    kind = data.draw(st.sampled_from(["trace", "diagonal", "norm"]))
    if kind == "norm":
        net = network.gram_trace(views, 8, False)
    else:
        net = network.closed_chain(views, kind == "diagonal", 8)
    reserve = data.draw(st.sampled_from([0, 8, 96]))
    assert network.plan_networks([net], None, reserve) == network._in_turn([net], None, reserve, "cpu", None)
