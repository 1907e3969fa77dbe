"""Building ``a @ b`` reads the product's shape from a table keyed by the two shapes
(``expr._product_shapes``) once they have been checked: the shape is torch's, every mismatch
raises as before whether the shapes were seen or not (inner dims, then dtypes and devices, then
batch dims), and equal products are one node (hash-consing)."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import expr

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

batch_dims = st.lists(st.sampled_from([1, 2, 3]), max_size=3).map(tuple)


@st.composite
def operand_pairs(draw):
    """Two shapes ``(*ba, m, k)``, ``(*bb, k', n)`` (``k' != k`` sometimes, batches that may not
    broadcast) and each operand's dtype and whether it is a transposed view."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    k2 = draw(st.sampled_from([k, k, k, k + 1]))
    ba, bb = draw(batch_dims), draw(batch_dims)
    dtypes = draw(st.sampled_from([(torch.float64, torch.float64), (torch.complex128, torch.complex128),
                                   (torch.float32, torch.float64)]))
    return (*ba, m, k), (*bb, k2, n), dtypes, draw(st.booleans()), draw(st.booleans())


def _operand(shape, dtype, flip):
    """A leaf of ``shape`` (as ``lazy(t).mT`` of a stored transpose when ``flip``) and its tensor."""
    if flip:
        t = torch.zeros(*shape[:-2], shape[-1], shape[-2], dtype=dtype)
        return lm.lazy(t).mT, t.mT
    t = torch.zeros(shape, dtype=dtype)
    return lm.lazy(t), t


def _outcome(call):
    try:
        return call(), None
    except (ValueError, TypeError, RuntimeError) as e:
        return None, e


@SETTINGS
@given(operand_pairs())
def test_product_shapes_and_errors_are_torchs_seen_or_not(case):
    sa, sb, (da, db), flip_a, flip_b = case
    (a, ta), (b, tb) = _operand(sa, da, flip_a), _operand(sb, db, flip_b)
    want, torch_error = _outcome(lambda: torch.matmul(ta, tb).shape)
    for _ in range(2):  # the second build finds the shapes in the table when they multiply
        got, error = _outcome(lambda: a @ b)
        if torch_error is None:
            assert error is None
            assert type(got.shape) is torch.Size and got.shape == want
            assert (a @ b) is got  # hash-consed: one node
            assert expr._product_shapes[(a.shape, b.shape)] == want
        else:
            assert isinstance(error, (ValueError, TypeError))
            assert str(tuple(sa)) in str(error) or str(tuple(sa[:-2])) in str(error)
            if sa[-1] != sb[-2]:
                assert "inner dimensions differ" in str(error)
            elif da is not db:
                assert isinstance(error, TypeError) and "dtypes differ" in str(error)
            else:
                assert "do not broadcast" in str(error)


def test_shapes_seen_with_one_dtype_still_refuse_another():
    """The table holds shapes alone: a pair seen in float64 raises naming the dtypes in float32."""
    a64 = lm.lazy(torch.zeros(2, 3, 4, dtype=torch.float64))
    b64 = lm.lazy(torch.zeros(4, 5, dtype=torch.float64))
    assert (a64 @ b64).shape == (2, 3, 5)
    b32 = lm.lazy(torch.zeros(4, 5, dtype=torch.float32))
    with pytest.raises(TypeError, match=r"matmul: dtypes differ, float64 \(2, 3, 4\) vs float32 \(4, 5\)"):
        a64 @ b32


def test_symbols_and_tensors_share_the_table_and_get_a_torch_size():
    """A symbol's shape is a tuple, a tensor's a ``torch.Size``; equal shapes are one key."""
    x = lm.symbol("x", (3, 2, 4), torch.float64) @ lm.symbol("y", (4, 6), torch.float64)
    assert type(x.shape) is torch.Size and x.shape == (3, 2, 6)
    t = lm.lazy(torch.zeros(3, 2, 4, dtype=torch.float64)) @ lm.lazy(torch.zeros(4, 6, dtype=torch.float64))
    assert t.shape == x.shape and type(t.shape) is torch.Size


def test_the_table_is_bounded(monkeypatch):
    monkeypatch.setattr(expr, "_PRODUCT_SHAPES_KEPT", 3)
    expr._product_shapes.clear()
    for n in range(1, 8):
        x = lm.symbol("a", (2, n), torch.float64) @ lm.symbol("b", (n, 2), torch.float64)
        assert x.shape == (2, 2)
        assert len(expr._product_shapes) <= 3
