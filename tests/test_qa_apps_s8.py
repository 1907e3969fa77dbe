"""Session-8 QA of the applications (compat, circuits, factorize, CLI), each test against eager
torch in float64, TransformerLens itself, or an independent formula."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import TL

from lazymat.compat import FactoredMatrix

from conftest import assert_close

# ---- compat: shape errors keep TransformerLens's exception kinds -------------------------

_batch = st.lists(st.integers(1, 3), min_size=0, max_size=2)


def _outcome(fn):
    """``("ok", value)`` or ``("error", exception)``."""
    try:
        return "ok", fn()
    except Exception as error:  # noqa: BLE001 - the kind is what is compared
        return "error", error


@settings(max_examples=120, deadline=None)
@given(fm_batch=_batch, other_batch=_batch, dims=st.tuples(*[st.integers(1, 4)] * 4),
       inner_off=st.booleans(), vector=st.booleans(), left=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_shape_errors_are_value_errors_of_transformer_lens_kind(
        fm_batch, other_batch, dims, inner_off, vector, left, seed):
    """Mismatched leading dims or vector lengths in ``fm @ W``/``W @ fm`` raised a plain
    ``ValueError``: ``except RuntimeError`` (what TransformerLens raised) did not catch it."""
    g = torch.Generator().manual_seed(seed)
    ld, md, rd, n = dims
    A = torch.randn(*fm_batch, ld, md, generator=g, dtype=torch.float64)
    B = torch.randn(*fm_batch, md, rd, generator=g, dtype=torch.float64)
    width = (ld if left else rd) + inner_off
    if vector:
        W = torch.randn(width, generator=g, dtype=torch.float64)
    elif left:
        W = torch.randn(*other_batch, n, width, generator=g, dtype=torch.float64)
    else:
        W = torch.randn(*other_batch, width, n, generator=g, dtype=torch.float64)

    dense_kind, dense = _outcome(lambda: W @ (A @ B) if left else (A @ B) @ W)
    fm = FactoredMatrix(A, B)
    kind, got = _outcome(lambda: W @ fm if left else fm @ W)
    if dense_kind == "ok":
        assert kind == "ok", got
        assert_close(got if isinstance(got, torch.Tensor) else got.AB, dense)
        return
    assert kind == "error" and isinstance(got, ValueError), repr(got)
    assert str(tuple(fm.shape)) in str(got) and str(tuple(W.shape)) in str(got)
    if TL is not None:
        tl_kind, tl_error = _outcome(lambda: W @ TL.FactoredMatrix(A, B) if left
                                     else TL.FactoredMatrix(A, B) @ W)
        assert tl_kind == "error"
        if isinstance(tl_error, (AssertionError, RuntimeError)):
            assert isinstance(got, type(tl_error)), (repr(tl_error), repr(got))


def test_batches_that_do_not_broadcast_are_runtime_errors_too():
    fm = FactoredMatrix(torch.randn(3, 4, 2), torch.randn(3, 2, 4))
    with pytest.raises(RuntimeError, match=r"\(3, 4, 4\) and \(2, 4, 5\) do not broadcast"):
        fm @ torch.randn(2, 4, 5)
    with pytest.raises(RuntimeError, match=r"\(2, 5, 4\) and \(3, 4, 4\) do not broadcast"):
        torch.randn(2, 5, 4) @ fm
    with pytest.raises(RuntimeError, match=r"vector \(5,\): the vector needs length 4"):
        fm @ torch.randn(5)
