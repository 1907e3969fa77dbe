"""How many torch operations the Frobenius norm and the trace of a QK-shaped product run
(``E @ Q @ K^T @ E^T``, factored route, the expression's caches cleared): on a GPU each compute
operation is a kernel launch and each view a host dispatch, and the hand-written routes of
``benchmarks/bench_layout.py`` run 7 compute ops and 2 views (norm), 4 compute ops (trace).
Counts are deterministic (unlike times): these are upper bounds, each op accounted for below.
"""

from unittest import mock

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat import linalg as LA

VIEWS = {"view", "transpose", "permute", "t", "unsqueeze", "squeeze", "alias", "_unsafe_view",
         "expand", "slice", "select", "view_as_real", "_reshape_alias", "diagonal"}


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.compute, self.views, self.reads = [], [], 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name == "_local_scalar_dense":
            self.reads += 1
        (self.views if name in VIEWS else self.compute).append(name)
        return func(*args, **(kwargs or {}))


def _qk(gen, dtype=torch.float64):
    E, Q, K = (torch.randn(*s, generator=gen, dtype=dtype) for s in ((96, 32), (32, 8), (32, 8)))
    return lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E).mT, (E, Q, K)


def _counted(fn, X):
    X.clear_cache()
    fn(X)  # plans made
    X.clear_cache()
    with Ops() as ops:
        out = fn(X)
    return ops, out


def test_the_factored_frobenius_norm_runs_the_hand_written_ops(gen):
    """``L = E Q``, ``R^H = E K``, their two Grams (a transpose each), one dot product of the
    Grams' entries (two flattening views) and a clamped square root: 7 compute ops, 4 views."""
    X, (E, Q, K) = _qk(gen)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        assert LA.norms.fro_route(X)[0] == "split"
        ops, out = _counted(LA.matrix_norm, X)
    assert sorted(ops.compute) == ["clamp_min", "dot", "mm", "mm", "mm", "mm", "sqrt_"]
    assert len(ops.views) <= 4 and ops.reads == 0, ops.views
    torch.testing.assert_close(out, torch.linalg.matrix_norm(E @ Q @ K.mT @ E.mT))


def test_the_trace_runs_two_gemms_and_a_dot(gen):
    """``tr(E Q K^T E^T)``: the network's two GEMMs and the trace of the last product as one dot
    product of two matrices' entries (einsum ran the same 3 compute ops with 36 views)."""
    X, (E, Q, K) = _qk(gen)
    ops, out = _counted(LA.trace, X)
    assert sorted(ops.compute) == ["dot", "mm", "mm"]
    assert len(ops.views) <= 8 and ops.reads == 0, ops.views
    torch.testing.assert_close(out, torch.trace(E @ Q @ K.mT @ E.mT))


def test_the_network_frobenius_norm_of_all_heads_runs_no_elementwise_tail(gen):
    """The norms of 12 heads' QK circuits by the network ``tr(X^T X)`` (``E^T E`` formed once):
    its GEMMs, einsum's copies of two operands, and a clamped root: no scaling of an unscaled
    term by 1 and no where-guard without a gradient."""
    shapes = ((120, 20), (12, 20, 10), (12, 20, 10))
    E, Q, K = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in shapes)
    X = lm.lazy(E) @ lm.lazy(Q) @ lm.lazy(K).mT @ lm.lazy(E).mT
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        assert LA.norms.fro_route(X)[0] == "network"
        ops, out = _counted(LA.matrix_norm, X)
    assert ops.compute.count("mm") + ops.compute.count("bmm") == 6, ops.compute
    assert sorted(set(ops.compute) - {"mm", "bmm"}) == ["clamp_min", "clone", "sqrt_"], ops.compute
    assert len(ops.compute) <= 10 and len(ops.views) <= 16 and ops.reads == 0, (ops.compute, ops.views)
    torch.testing.assert_close(out, torch.linalg.matrix_norm(E @ Q @ K.mT @ E.mT))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_split_frobenius_norm_matches_float64(data):
    """The split route of one matrix (one dot product of the Grams, the root without a gradient
    clamped) against the norm of the dense product in float64, real and complex."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64, torch.complex64]))
    dims = data.draw(st.lists(st.integers(1, 6), min_size=3, max_size=5))
    mats = [torch.randn(a, b, generator=g, dtype=dtype) for a, b in zip(dims, dims[1:], strict=False)]
    if data.draw(st.booleans()):
        mats[0] = mats[0] * 0  # a zero norm
    X = lm.lazy(mats[0])
    for m in mats[1:]:
        X = X @ lm.lazy(m)
    with mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        out = LA.matrix_norm(X)
    dense = mats[0].to(torch.complex128 if dtype.is_complex else torch.float64)
    for m in mats[1:]:
        dense = dense @ m.to(dense.dtype)
    expected = torch.linalg.matrix_norm(dense)
    tol = 1e-5 if dtype in (torch.float32, torch.complex64) else 1e-12
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol * float(expected.abs()) + 1e-30)
    assert out.dtype == (torch.float32 if dtype == torch.complex64 else dtype)


def _laid_out(g, shape, transposed, dtype):
    if transposed:
        return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g, dtype=dtype).mT
    return torch.randn(*shape, generator=g, dtype=dtype)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_frobenius_route_costs_kept_by_structure_are_the_fresh_ones(data):
    """The split and network routes' (FLOPs, peak) are kept by the product's structure, its
    leaves' strides and the planner's settings: a second product of the same kind, laid out
    alike or not, repeated leaves or not, gets the costs it would get on its own."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    dtype = data.draw(st.sampled_from([torch.float64, torch.complex128]))
    batch = data.draw(st.sampled_from([(), (2,)]))
    dims = data.draw(st.lists(st.integers(1, 9), min_size=3, max_size=5))

    repeat = not batch and data.draw(st.booleans())  # a leaf read twice, as W_E in a QK circuit
    if repeat:
        dims[-1] = dims[1]

    def product():
        mats = [_laid_out(g, (*(batch if i == 0 else ()), a, b), data.draw(st.booleans()), dtype)
                for i, (a, b) in enumerate(zip(dims, dims[1:], strict=False))]
        leaves = [lm.lazy(m) for m in mats]
        X = leaves[0]
        for leaf in leaves[1:]:
            X = X @ leaf
        return X @ leaves[0].mT if repeat else X

    first, second = product(), product()
    LA.norms._fro_costs(first)
    kept = LA.norms._fro_costs(second)
    LA.norms._FRO_COSTS.clear()
    assert kept == LA.norms._fro_costs(second)
