"""lazymat.compat.FactoredMatrix properties and reshaping: T, BA, get_corner, unsqueeze,
collapse_l/r, make_even, 16-bit upcasts and in-place edits."""

import pytest
import torch
from tl_reference import tl

from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn


def test_transpose_and_reverse_product(gen):
    A, B = randn(gen, 2, 5, 3), randn(gen, 3, 5)
    fm = FactoredMatrix(A, B)
    assert_close(fm.T.AB, (A @ B).mT)
    assert (fm.T.ldim, fm.T.mdim, fm.T.rdim) == (5, 3, 5)
    assert_close(fm.BA, B @ A)
    with pytest.raises(ValueError, match=r"ldim == rdim.*\(5, 4\)"):
        _ = FactoredMatrix(randn(gen, 5, 3), randn(gen, 3, 4)).BA


@pytest.mark.parametrize("k", [1, 3, 10])
def test_get_corner_cuts_every_dim(gen, k):
    A, B = randn(gen, 4, 6, 3), randn(gen, 3, 7)
    dense = A @ B
    assert_close(FactoredMatrix(A, B).get_corner(k), dense[:k, :k, :k])
    TL = tl()
    assert_close(FactoredMatrix(A, B).get_corner(k), TL.FactoredMatrix(A, B).get_corner(k))


@pytest.mark.parametrize("k", [0, 1, -3, -4])
def test_unsqueeze_matches_the_factors(gen, k):
    A, B = randn(gen, 2, 5, 3), randn(gen, 3, 4)
    got = FactoredMatrix(A, B).unsqueeze(k)
    A_b = A
    B_b = B.broadcast_to(2, 3, 4)
    assert_close(got.A, A_b.unsqueeze(k))
    assert_close(got.B, B_b.unsqueeze(k))
    TL = tl()
    theirs = TL.FactoredMatrix(A, B).unsqueeze(k)
    assert got.shape == theirs.shape
    assert_close(got.AB, theirs.AB)


@pytest.mark.parametrize("k", [2, -1])
def test_unsqueeze_into_the_matrix_dims_breaks_the_inner_dim(gen, k):
    fm = FactoredMatrix(randn(gen, 2, 5, 3), randn(gen, 3, 4))
    with pytest.raises(ValueError, match="inner dim"):
        fm.unsqueeze(k)


@pytest.mark.parametrize("a,b", [((2, 6, 3), (3, 5)), ((5, 4), (4, 6)), ((3, 3, 8), (3, 8, 2))])
def test_collapse_and_make_even_keep_the_matrix(gen, a, b):
    A, B = randn(gen, *a), randn(gen, *b)
    fm, dense = FactoredMatrix(A, B), A @ B
    U, S, V = fm.svd()
    k = min(A.shape[-2], A.shape[-1], B.shape[-1])
    left, right = fm.collapse_l(), fm.collapse_r()
    assert left.shape == (*dense.shape[:-2], k, dense.shape[-1])
    assert right.shape == (*dense.shape[:-2], dense.shape[-2], k)
    assert_close(U @ left, dense)  # U @ (S V^T) == M
    assert_close(right @ V.mT, dense)
    even = fm.make_even()
    assert_close(even.AB, dense)
    assert_close(even.A.mT @ even.A, torch.diag_embed(S))  # orthogonal columns, S on the diagonal
    assert_close(even.B @ even.B.mT, torch.diag_embed(S))
    TL = tl()
    theirs = TL.FactoredMatrix(A, B)
    assert_close(left.mT @ left, theirs.collapse_l().mT @ theirs.collapse_l())  # sign-free
    assert even.A.shape == theirs.make_even().A.shape


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sixteen_bit_factors_are_decomposed_in_float32(gen, dtype):
    A, B = randn(gen, 6, 3).to(dtype), randn(gen, 3, 6).to(dtype)
    fm = FactoredMatrix(A, B)
    dense = A.double() @ B.double()
    assert fm.AB.dtype == dtype
    assert fm.S.dtype == fm.U.dtype == fm.norm().dtype == torch.float32
    assert_close(fm.S.double(), torch.linalg.svdvals(dense)[:3], rtol=2e-2)
    assert_close(fm.norm().double(), torch.linalg.matrix_norm(dense), rtol=2e-2)
    assert fm.eigenvalues.dtype == torch.complex64
    TL = tl()
    theirs = TL.FactoredMatrix(A, B)
    for name in ("S", "U", "V", "eigenvalues"):
        assert getattr(theirs, name).dtype == getattr(fm, name).dtype, name
    assert theirs.norm().dtype == fm.norm().dtype


def test_in_place_edits_are_seen(gen):
    """lazymat recomputes after an in-place edit of a factor (TransformerLens's cached SVD
    goes stale: its issue tracker lists it)."""
    A, B = randn(gen, 6, 3), randn(gen, 3, 5)
    fm = FactoredMatrix(A, B)
    before = fm.S.clone()
    A.mul_(2)
    assert_close(fm.S, 2 * before)
    assert_close(fm.S, torch.linalg.svdvals(A @ B)[:3])
