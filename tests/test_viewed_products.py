"""The form of one-child nodes (indexing, casts, transposes, multiples) stacked over a run of ``@``
over leaves (``rewrite._viewed_product``, :func:`lazymat.rewrite.canonical`'s shortcut for
``chain[:, :5]`` or ``chain.to(torch.float64)``) is the form the general pass makes: the same
terms, coefficients and views (base and ops), shapes, dtype and device; and its values are eager
torch's in float64."""

import functools
import random
from unittest import mock

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import rewrite

from conftest import assert_close, randn

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENTRIES = [0, 1, -1, slice(None), slice(0, 1), slice(1, None), slice(None, None, 2), [0, 1], [1], None,
           Ellipsis]
CASTS = [torch.float64, torch.float32, torch.complex128, torch.float16]


@st.composite
def viewed_chains(draw):
    """``(batches, flips, dims, dtype, stack, seed)``: a chain of 2-4 leaves (some batched, some read
    as ``.mT``) and the one-child nodes put over it, innermost first."""
    n = draw(st.integers(2, 4))
    full = draw(st.sampled_from([(), (3,), (2, 3), (1, 3)]))
    batches = [tuple(d if draw(st.booleans()) else 1 for d in full)[draw(st.integers(0, len(full))):]
               for _ in range(n)]
    flips = [draw(st.booleans()) for _ in range(n)]
    dims = draw(st.lists(st.integers(1, 4), min_size=n + 1, max_size=n + 1))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex128]))
    stack = draw(st.lists(st.one_of(
        st.tuples(st.just("index"), st.integers(0, 2**31 - 1)), st.tuples(st.just("mT"), st.none()),
        st.tuples(st.just("scale"), st.sampled_from([2.5, -1.0])),
        st.tuples(st.just("to"), st.sampled_from(CASTS))), min_size=1, max_size=4))
    return batches, flips, dims, dtype, stack, draw(st.integers(0, 2**31 - 1))


def _stacked(X, D, stack):
    """``(X, D)`` with the stack's nodes applied to both (an index key drawn per node that torch and
    lazymat both take; None where lazymat gives a tensor, not an expression)."""
    for kind, arg in stack:
        if kind == "mT":
            X, D = X.mT, D.mT
        elif kind == "scale":
            X, D = arg * X, arg * D
        elif kind == "to":
            if X.dtype.is_complex and not arg.is_complex:
                continue  # (torch drops the imaginary part, lazymat refuses)
            X, D = X.to(arg), D.to(arg)
        else:
            rng = random.Random(arg)
            for _ in range(20):
                key = tuple(rng.choice(ENTRIES) for _ in range(rng.randint(1, 3)))
                if sum(k is Ellipsis for k in key) > 1:
                    continue
                try:
                    expected = D[key]
                    got = X[key]
                except (IndexError, NotImplementedError):
                    continue
                if not lm.is_lazy(got):
                    return None
                X, D = got, expected
                break
    return X, D


def _general(X):
    """``X``'s form by the general pass (the shortcut switched off), not cached on ``X``."""
    X.clear_cache()
    with mock.patch.object(rewrite, "_viewed_product", lambda root: None):
        form = rewrite.canonical(X)
    X.clear_cache()
    return form


def _same_form(a, b):
    assert (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
    assert (a.rounds is None) == (b.rounds is None)
    assert len(a.terms) == len(b.terms)
    for s, t in zip(a.terms, b.terms, strict=True):
        assert s.coef == t.coef and s.shape == t.shape
        assert len(s.scalars) == len(t.scalars)
        assert all(x is y for x, y in zip(s.scalars, t.scalars, strict=True))
        assert len(s.factors) == len(t.factors)
        for u, v in zip(s.factors, t.factors, strict=True):
            assert u.ops == v.ops and u.shape == v.shape
            if isinstance(u.base, rewrite.Nested):  # a block made anew by each pass: alike, not the same
                assert isinstance(v.base, rewrite.Nested)
                assert (u.base.kind, u.base.axis, u.base.shape) == (v.base.kind, v.base.axis, v.base.shape)
                for p, q in zip(u.base.parts, v.base.parts, strict=True):
                    _same_form(p, q)
            else:
                assert u.base is v.base


@SETTINGS
@given(viewed_chains())
def test_a_viewed_chains_form_is_the_general_passs(case):
    batches, flips, dims, dtype, stack, seed = case
    gen = torch.Generator().manual_seed(seed)
    shapes = [(*b, dims[i + 1], dims[i]) if flip else (*b, dims[i], dims[i + 1])
              for i, (b, flip) in enumerate(zip(batches, flips, strict=True))]
    tensors = [randn(gen, *shape, dtype=dtype) for shape in shapes]
    operands = [lm.lazy(t).mT if flip else lm.lazy(t) for t, flip in zip(tensors, flips, strict=True)]
    values = [t.mT if flip else t for t, flip in zip(tensors, flips, strict=True)]
    X = functools.reduce(lambda a, b: a @ b, operands)
    D = functools.reduce(torch.matmul, [v.to(torch.complex128 if dtype.is_complex else torch.float64)
                                        for v in values])
    stacked = _stacked(X, D, stack)
    if stacked is None:
        return
    X, D = stacked
    general = _general(X)
    X.clear_cache()
    short = rewrite._viewed_product(X)
    if short is not None:
        _same_form(short, general)
    X.clear_cache()
    dtypes = {dtype, *(arg for kind, arg in stack if kind == "to")}
    rtol = 1e-2 if torch.float16 in dtypes else 1e-4 if torch.float32 in dtypes else 1e-10
    assert_close(X.to_dense().to(D.dtype), D, rtol=rtol)
