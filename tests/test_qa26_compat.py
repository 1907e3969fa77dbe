"""lazymat.compat.FactoredMatrix as a TransformerLens user porting code meets it (qa26,
session 19): side by side with TransformerLens 4.3's and with eager torch.

Found and fixed: ``fm * c`` with a one-element tensor or array that has dims (``torch.tensor([2.],
dtype=torch.float64)`` of a float32 ``fm``) kept ``fm``'s dtype, where ``AB * c`` is promoted (a
tensor with dims has its full say in torch's promotion; only a 0-dim one has none)."""

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lazymat.compat import FactoredMatrix

FM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128)
SCALAR_DTYPES = (torch.bool, torch.int64, torch.float16, torch.float32, torch.float64, torch.complex64,
                 torch.complex128)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(FM_DTYPES),
       scalar_dtype=st.sampled_from(SCALAR_DTYPES), scalar_ndim=st.integers(0, 4), as_array=st.booleans(),
       left=st.booleans(),
       batch=st.lists(st.integers(1, 3), max_size=2))
def test_scaling_by_a_one_element_tensor_is_AB_times_it_in_dtype_and_shape(seed, dtype, scalar_dtype,
                                                                          scalar_ndim, as_array, left, batch):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, 4, 2, generator=gen, dtype=torch.float64).to(dtype)
    B = torch.randn(2, 3, generator=gen, dtype=torch.float64).to(dtype)
    c = (torch.rand((1,) * scalar_ndim, generator=gen, dtype=torch.float64) + 0.5).to(scalar_dtype)
    scalar = c.numpy() if as_array and scalar_dtype != torch.bfloat16 else c
    assume(torch.result_type(A, c) != torch.complex32)  # (torch has no complex-half matmul on the CPU)
    fm = FactoredMatrix(A, B)
    got = (scalar * fm if left else fm * scalar).AB
    want = (A @ B) * c  # eager torch: the dtype and shape the user's AB * c has
    assert (got.dtype, got.shape) == (want.dtype, want.shape), (dtype, c)
    exact = (A.to(torch.complex128) @ B.to(torch.complex128)) * c.to(torch.complex128)
    tols = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.complex64: 1e-5}
    tol = tols.get(got.dtype, 1e-12)
    torch.testing.assert_close(got.to(torch.complex128), exact, rtol=tol, atol=tol)
