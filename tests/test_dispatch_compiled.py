"""``torch.linalg.<op>(fresh product)`` asks the structure's compiled call first, straight from the
torch dispatch (``interop._COMPILED_CALLS``): every call so routed answers exactly what the routed
lazymat function answers (the same values, bit for bit, dtypes and shapes), and what eager
torch answers in float64 for the values torch defines alike."""

import functools
import sys
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import interop, linalg

from conftest import assert_close, randn

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CALLS = sorted(interop._COMPILED_CALLS, key=repr)


@st.composite
def fresh_products(draw):
    """``(tensors, flips, dtype)``: a chain of 2-3 factors (maybe batched, maybe read as ``.mT``)."""
    n = draw(st.integers(2, 3))
    dims = draw(st.lists(st.integers(1, 6), min_size=n + 1, max_size=n + 1))
    dims[-1] = dims[0] if draw(st.booleans()) else dims[-1]  # square often (eigvals)
    batch = draw(st.sampled_from([(), (), (2,)]))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex128]))
    flips = [draw(st.booleans()) for _ in range(n)]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    shapes = [(*(batch if i == 0 else ()), *((dims[i + 1], dims[i]) if flip else (dims[i], dims[i + 1])))
              for i, flip in enumerate(flips)]
    tensors = [randn(gen, *shape, dtype=dtype) for shape in shapes]
    return tensors, flips, dtype


def _fresh(tensors, flips):
    ops = [lm.lazy(t.clone()) for t in tensors]
    ops = [x.mT if flip else x for x, flip in zip(ops, flips, strict=True)]
    return functools.reduce(lambda a, b: a @ b, ops)


def _call(key, x):
    func, rest, kwargs = key
    return func(x, *rest, **dict(kwargs))


def _same(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            _same(u, v)
        return
    if lm.is_lazy(a):
        assert lm.is_lazy(b)
        a, b = a.to_dense(), b.to_dense()
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num())


@SETTINGS
@given(fresh_products(), st.sampled_from(CALLS))
def test_a_call_asked_first_answers_as_the_routed_function(case, key):
    tensors, flips, dtype = case
    x = _fresh(tensors, flips)
    if key[0] is torch.linalg.eigvals and x.shape[-1] != x.shape[-2]:
        return
    asked = []
    real = linalg.compiled._compiled

    def spy(*args):
        out = real(*args)
        if sys._getframe(1).f_code is interop.dispatch.__code__:  # asked by the dispatch itself
            asked.append(out is not None)
        return out

    try:
        with mock.patch.object(linalg.compiled, "_compiled", spy):
            fast = _call(key, x)
    except Exception as e:  # the routed function must then raise the same
        with mock.patch.object(interop, "_COMPILED_CALLS", {}), pytest.raises(type(e)):
            _call(key, _fresh(tensors, flips))
        return
    assert len(asked) == 1  # asked first (answered, or routed on when it has no answer)
    with mock.patch.object(interop, "_COMPILED_CALLS", {}):
        routed = _call(key, _fresh(tensors, flips))
    _same(fast, routed)
    if key[0] in (torch.linalg.svdvals, torch.linalg.matrix_norm):  # (cond: inf where torch has noise)
        wide = torch.complex128 if dtype.is_complex else torch.float64
        factors = [(t.mT if f else t).to(wide) for t, f in zip(tensors, flips, strict=True)]
        expected = _call(key, functools.reduce(torch.matmul, factors))
        rtol = 1e-4 if dtype == torch.float32 else 1e-9
        atol = rtol * (1 + expected.abs().max().item())
        assert_close(fast.to(expected.dtype), expected, rtol=rtol, atol=atol)


def test_the_calls_asked_first_are_torchs_defaults_of_each_function(gen):
    """Each table entry is a call torch users write (the expression alone, or with the order or
    ``full_matrices=False``), and a fresh product of leaves is answered from the table; switching
    ``linalg.compiled._compiled`` off (the general path, as benchmarks and tests compare) switches it
    off here too."""
    a, b = randn(gen, 6, 3), randn(gen, 3, 6)

    def fresh():  # (a product answered once is read again through its form, not asked)
        return lm.lazy(a.clone()) @ lm.lazy(b.clone())

    asked = []

    def spy(*args):
        if sys._getframe(1).f_code is interop.dispatch.__code__:  # asked by the dispatch itself
            asked.append(args[1:])

    with mock.patch.object(linalg.compiled, "_compiled", spy):
        torch.linalg.svdvals(fresh())
        torch.linalg.matrix_norm(fresh(), "nuc")
        torch.linalg.svd(fresh(), full_matrices=False)
        torch.linalg.svd(fresh(), False)
        torch.linalg.cond(fresh(), -2)
        # look-alike arguments (equal and hashing alike, of another type) go to the routed function,
        # which tells some apart (cond of 2.0 is not compiled there)
        torch.linalg.matrix_norm(fresh(), 2.0)
        torch.linalg.cond(fresh(), 2.0)
    assert asked == [("svdvals", (True,)), ("norm", ("nuc",)), ("svd", ()), ("svd", ()), ("cond", (True,))]
    with mock.patch.object(linalg.compiled, "_compiled", lambda *args: None), \
            mock.patch.object(linalg.spectrum, "_small_spectrum",
                              wraps=linalg.spectrum._small_spectrum) as general:
        torch.linalg.svdvals(fresh())
    assert general.called  # the general path ran
