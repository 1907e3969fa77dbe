"""Leaves that are torch's lazy views (conj bit, neg bit, transposes, expanded) convert to numpy.

``np.asarray(lm.lazy(torch._neg_view(t)))`` raised torch's "Can't call numpy() on Tensor that
has negative bit set": the conversion resolved the conj bit only, and ``to_dense`` of a lone leaf
is the leaf itself (a view with its bits), as torch's ``t.conj()`` is.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm


@st.composite
def view_leaves(draw):
    """A complex or real tensor seen through torch's lazy views, and its resolved values."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float64, torch.complex128]))
    t = torch.randn(draw(st.integers(1, 4)), draw(st.integers(1, 4)), generator=g, dtype=dtype)
    views = draw(st.lists(st.sampled_from(["neg", "conj", "mT", "expand"]), max_size=3))
    for v in views:
        if v == "neg":
            t = torch._neg_view(t)
        elif v == "conj":
            t = t.conj()
        elif v == "mT":
            t = t.mT
        else:
            t = t[:1].expand(3, t.shape[-1])
    return t, t.resolve_conj().resolve_neg().numpy()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(view_leaves(), st.booleans())
def test_numpy_conversion_of_view_leaves(case, scaled):
    t, expected = case
    X = lm.lazy(t)
    if scaled:
        X, expected = 2 * X, 2 * expected
    np.testing.assert_array_equal(np.asarray(X), expected)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=3))
def test_a_nested_tensor_is_refused_by_name(shapes):
    """``lm.lazy`` of a nested tensor raised torch's "Internal error: NestedTensorImpl doesn't
    support sizes. Please file an issue." reading its shape; now a TypeError naming it."""
    with warnings.catch_warnings():  # (torch warns that nested tensors are a prototype)
        warnings.simplefilter("ignore")
        nt = torch.nested.nested_tensor([torch.zeros(m, n) for m, n in shapes])
    with pytest.raises(TypeError, match="nested tensor of"):
        lm.lazy(nt)
    with pytest.raises(TypeError, match="nested tensor of"):
        lm.lazy(torch.zeros(3, 3)) @ nt
