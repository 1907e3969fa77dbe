"""qa28: a 0-dim tensor scaling a product keeps torch's dtype in a trace.

torch multiplies a matrix by a 0-dim tensor in the matrix's dtype unless the tensor is of a
higher kind (``float32 X * float64 t`` is float32; a complex ``t`` makes it complex), so
``torch.trace((A * t) @ B)`` is float32 for float32 leaves. lazymat applied the term's 0-dim
tensors to the trace's 0-dim value, where torch promotes two 0-dim tensors to the wider dtype:
float64 (the compiled call and the general path alike). Compared with torch on the dense matrix
(its dtype, and its value to the dtype's rounding)."""

import itertools

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import linalg as LA

from conftest import general_path

LEAF_DTYPES = [torch.float32, torch.float64, torch.complex64, torch.bfloat16, torch.float16]
SCALE_DTYPES = [torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128,
                torch.int64, torch.bool]
TOL = {torch.float32: 1e-4, torch.complex64: 1e-4, torch.float64: 1e-10, torch.complex128: 1e-10,
       torch.bfloat16: 5e-2, torch.float16: 1e-2}


def scaled_product(tensors, t, where):
    """``(A * t) @ B @ ...`` (``where`` "leaf") or ``(A @ B @ ...) * t`` ("product"), lazy and dense."""
    lazy = [lm.lazy(a) for a in tensors]
    if where == "leaf":
        lazy[0] = lazy[0] * t
        dense = [tensors[0] * t, *tensors[1:]]
    else:
        dense = list(tensors)
    x, D = lazy[0], dense[0]
    for a, b in zip(lazy[1:], dense[1:], strict=True):
        x, D = x @ a, D @ b
    if where == "product":
        x, D = x * t, D * t
    return x, D


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), dims=st.lists(st.integers(1, 12), min_size=2, max_size=4),
       leaf_dtype=st.sampled_from(LEAF_DTYPES), scale_dtype=st.sampled_from(SCALE_DTYPES),
       where=st.sampled_from(["leaf", "product"]), general=st.booleans(), batch=st.booleans())
def test_trace_of_a_product_scaled_by_a_0dim_tensor_has_torchs_dtype(seed, dims, leaf_dtype, scale_dtype,
                                                                     where, general, batch):
    assume(not (scale_dtype.is_complex and leaf_dtype.itemsize == 2))  # (torch's experimental complex32)
    gen = torch.Generator().manual_seed(seed)
    dims = [*dims, dims[0]]  # a square product
    lead = (2,) if batch else ()
    tensors = [torch.randn(*lead, m, n, generator=gen).to(leaf_dtype) for m, n in itertools.pairwise(dims)]
    number = 0.75 - 0.5j if scale_dtype.is_complex else -1.25
    value = {torch.bool: True, torch.int64: 3}.get(scale_dtype, number)
    t = torch.tensor(value, dtype=scale_dtype)
    try:
        x, D = scaled_product(tensors, t, where)
    except (RuntimeError, TypeError):  # both refuse a complex factor times a real one
        return
    want = torch.diagonal(D, dim1=-2, dim2=-1).sum(-1)
    with general_path() if general else torch.no_grad():
        got = torch.trace(x) if not batch else LA.trace(x)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape
    wide = torch.complex128 if want.dtype.is_complex else torch.float64
    scale = max(float(D.abs().to(torch.float64).max()), 1.0) * dims[0] * max(dims)
    assert (got.to(wide) - want.to(wide)).abs().max().item() <= TOL[x.dtype] * scale


@pytest.mark.parametrize("general", [False, True])
def test_float32_trace_scaled_by_a_float64_tensor_is_float32(general):
    """The reproducer: ``torch.trace((lazy(A) * tensor(0.5, float64)) @ lazy(B))`` of float32
    leaves was float64 (torch: float32)."""
    gen = torch.Generator().manual_seed(0)
    A, B = torch.randn(5, 3, generator=gen), torch.randn(3, 5, generator=gen)
    t = torch.tensor(0.5, dtype=torch.float64)
    with general_path() if general else torch.no_grad():
        got = torch.trace((lm.lazy(A) * t) @ lm.lazy(B))
    want = torch.trace((A * t) @ B)
    assert got.dtype == want.dtype == torch.float32
    torch.testing.assert_close(got, want)
