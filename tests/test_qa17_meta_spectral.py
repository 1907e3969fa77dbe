"""Spectral calls on expressions of meta tensors answer shapes and dtypes (meta tensors), as torch
does, where they read values and raised; symbols keep their error."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

CALLS = {
    "svdvals": lambda x: lm.linalg.svdvals(x),
    "svd": lambda x: lm.linalg.svd(x),
    "pinv": lambda x: lm.linalg.pinv(x),
    "matrix_rank": lambda x: lm.linalg.matrix_rank(x),
    "cond": lambda x: lm.linalg.cond(x),
    "matrix_norm_2": lambda x: lm.linalg.matrix_norm(x, ord=2),
}
SQUARE = {
    "eigvals": lambda x: lm.linalg.eigvals(x),
    "eig": lambda x: lm.linalg.eig(x),
    "eigvalsh": lambda x: lm.linalg.eigvalsh(x),
}


def _parts(out):
    out = out.to_dense() if isinstance(out, lm.Expr) else out
    return [out] if isinstance(out, torch.Tensor) else [p for o in out for p in _parts(o)]


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(CALLS) + sorted(SQUARE)),
    batch=st.lists(st.integers(1, 3), max_size=2),
    m=st.integers(1, 6),
    n=st.integers(1, 6),
    inner=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]),
)
def test_meta_leaves_answer_the_real_answers_shapes(name, batch, m, n, inner, dtype):
    call = CALLS.get(name) or SQUARE[name]
    n = m if name in SQUARE else n
    a = torch.randn(*batch, m, inner, dtype=torch.float64).to(dtype)
    a = a + 1  # (no exact zeros: cond is finite)
    b = a.mH if name == "eigvalsh" else torch.randn(*batch, inner, n, dtype=torch.float64).to(dtype)
    real = _parts(call(lm.lazy(a) @ lm.lazy(b)))
    meta = _parts(call(lm.lazy(a.to("meta")) @ lm.lazy(b.to("meta"))))
    assert [(p.shape, p.dtype) for p in meta] == [(p.shape, p.dtype) for p in real]
    assert all(p.device.type == "meta" for p in meta)


def test_svdvals_of_a_meta_leaf_is_torchs():
    t = torch.empty(5, 3, device="meta", dtype=torch.float64)
    got, expected = lm.linalg.svdvals(lm.lazy(t)), torch.linalg.svdvals(t)
    assert (got.shape, got.dtype, got.device) == (expected.shape, expected.dtype, expected.device)


def test_symbols_keep_their_error():
    with pytest.raises(Exception, match="symbol|value|bind"):
        lm.linalg.svdvals(lm.symbol("A", (5, 3)))
