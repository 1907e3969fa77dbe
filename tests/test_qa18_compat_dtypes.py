"""lazymat.compat.FactoredMatrix with factors of two dtypes (qa18, session 13).

TransformerLens 4.3 accepts them at construction and then fails in ``AB`` and ``@`` with
torch's "expected m1 and m2 to have the same dtype" (``svd`` and ``norm`` work only where both
are 16-bit or 16-bit with float32, each factor upcast alone). lazymat refuses them where they
enter, as its products and torch's do (docs/migrating-from-transformer-lens.md); found: the
message named neither shape, nor why, nor the cure."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128]


@settings(max_examples=30, deadline=None)
@given(pair=st.permutations(DTYPES).map(lambda p: p[:2]), ldim=st.integers(1, 5), mdim=st.integers(1, 4),
       rdim=st.integers(1, 5), batch=st.sampled_from([(), (2,)]), seed=st.integers(0, 2**16))
def test_mixed_dtypes_are_refused_naming_shapes_dtypes_and_the_cure(pair, ldim, mdim, rdim, batch, seed):
    """Property: factors of two dtypes raise a TypeError naming both shapes and dtypes and the
    cast that cures them; TransformerLens's ``AB`` of the same factors fails too (so nothing
    that works there is refused here); the cured matrix is ``A @ B`` of float64 eager torch."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*batch, ldim, mdim, generator=g, dtype=torch.float64).to(pair[0])
    B = torch.randn(mdim, rdim, generator=g, dtype=torch.float64).to(pair[1])
    with pytest.raises(TypeError) as info:
        FactoredMatrix(A, B)
    text = str(info.value)
    for t in (A, B):
        assert str(tuple(t.shape)) in text and str(t.dtype) in text, text
    common = torch.promote_types(A.dtype, B.dtype)
    assert f"to({common})" in text, text
    with pytest.raises(RuntimeError):  # (torch's mixed-dtype matmul error: "same dtype", "scalar type")
        tl().FactoredMatrix(A, B).AB  # noqa: B018 (the property raises)
    cured = FactoredMatrix(A.to(common), B.to(common)).AB
    expected = A.to(torch.complex128 if common.is_complex else torch.float64) @ B.to(
        torch.complex128 if common.is_complex else torch.float64)
    torch.testing.assert_close(cured.to(expected.dtype), expected, rtol=1e-2, atol=1e-2)
