"""qa28: ``lm.lazy(t)`` after ``t``'s data changed shape or device gives a leaf of the tensor as it
is now.

Leaves are interned by their tensor's id; a tensor whose ``.data`` was replaced by one of another
dtype was wrapped anew, but one of another shape (``t.data = ...``, ``t.resize_(...)``) or device
(``model.to(device)`` replaces each parameter's ``.data``) got the old leaf back: its recorded
shape no longer the tensor's, so every use raised ``LeafChanged``, whose message says to "wrap it
again with lm.lazy(t)", which gave the same stale leaf. Values are checked against torch on the
tensors as they are now."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.expr import LeafChanged

from conftest import assert_close


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), m=st.integers(1, 6), n=st.integers(1, 6), m2=st.integers(1, 6),
       n2=st.integers(1, 6), how=st.sampled_from(["data", "resize_"]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_a_tensor_given_a_new_shape_is_wrapped_anew(seed, m, n, m2, n2, how, dtype):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(m, n, generator=gen, dtype=torch.float64)
    old = lm.lazy(t)
    assert_close((old @ old.mT).to_dense(), t @ t.mT)
    if how == "data":
        t.data = torch.randn(m2, n2, generator=gen, dtype=torch.float64).to(dtype)
    else:
        t.resize_(m2, n2).copy_(torch.randn(m2, n2, generator=gen, dtype=torch.float64))
    new = lm.lazy(t)
    assert tuple(new.shape) == (m2, n2) and new.dtype == t.dtype
    assert_close((new @ new.mT).to_dense(), t @ t.mT, rtol=1e-5 if t.dtype == torch.float32 else 1e-10)
    if (m2, n2) != (m, n):
        assert new is not old
        with pytest.raises(LeafChanged, match=r"wrap it again"):  # the old leaf still refuses
            old.to_dense()
    else:
        assert lm.lazy(t) is new


@pytest.mark.cuda
def test_a_tensor_moved_to_another_device_is_wrapped_anew():
    """``t.data = t.data.cuda()`` (as ``module.to`` moves parameters): the leaf is on the new
    device, and a product over it is torch's."""
    t = torch.randn(4, 3, dtype=torch.float64)
    assert lm.lazy(t).device.type == "cpu"
    t.data = t.data.cuda()
    leaf = lm.lazy(t)
    assert leaf.device == t.device and leaf.shape == t.shape
    assert lm.lazy(t) is leaf
    assert_close((leaf @ leaf.mT).to_dense(), t @ t.mT)
