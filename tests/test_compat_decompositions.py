"""lazymat.compat.FactoredMatrix SVD, eigenvalues, norm and composition scores, against dense
torch.linalg and TransformerLens."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix, composition_scores

from conftest import TorchCalls, assert_close, randn

CASES = [((6, 2), (2, 5)), ((4, 6), (6, 5)), ((2, 3, 7), (7, 3)), ((3, 1, 5, 4), (2, 4, 6)),
         ((5, 5), (5, 5))]


def _orthonormal_columns(Q):
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand(*Q.shape[:-2], -1, -1)
    assert_close(Q.mT @ Q, eye, atol=1e-10)


@pytest.mark.parametrize("a,b", CASES)
def test_svd_is_u_diag_s_v_transposed(gen, a, b):
    A, B = randn(gen, *a), randn(gen, *b)
    dense = A @ B
    U, S, V = FactoredMatrix(A, B).svd()
    k = min(A.shape[-2], A.shape[-1], B.shape[-1])
    assert U.shape == (*dense.shape[:-1], k) and S.shape == (*dense.shape[:-2], k)
    assert V.shape == (*dense.shape[:-2], dense.shape[-1], k)
    assert_close(U @ torch.diag_embed(S) @ V.mT, dense)
    assert_close(S, torch.linalg.svdvals(dense)[..., :k])
    _orthonormal_columns(U)
    _orthonormal_columns(V)


@pytest.mark.parametrize("a,b", CASES)
def test_svd_matches_transformer_lens(gen, a, b):
    TL = tl()
    A, B = randn(gen, *a), randn(gen, *b)
    ours, theirs = FactoredMatrix(A, B), TL.FactoredMatrix(A, B)
    for mine, peer in zip(ours.svd(), theirs.svd(), strict=True):
        assert mine.shape == peer.shape
    assert_close(ours.S, theirs.S)
    # singular vectors agree up to sign (distinct singular values)
    assert_close((ours.U.mT @ theirs.U).abs(), torch.eye(ours.S.shape[-1], dtype=A.dtype).expand_as(
        torch.diag_embed(ours.S)), atol=1e-8)


def test_one_svd_serves_every_spectral_property_and_norm_needs_none(gen):
    fm = FactoredMatrix(randn(gen, 3, 50, 8), randn(gen, 8, 40))
    with TorchCalls() as calls:
        fm.norm()
    assert calls.count("linalg_svd") == 0
    with TorchCalls() as calls:
        _ = fm.U, fm.S, fm.V, fm.collapse_l(), fm.collapse_r(), fm.make_even()
    assert calls.count("linalg_svd") == 1


def test_Vh_is_a_deprecated_alias_of_V(gen):
    fm = FactoredMatrix(randn(gen, 6, 2), randn(gen, 2, 5))
    with pytest.warns(DeprecationWarning, match="returns V"):
        Vh = fm.Vh
    torch.testing.assert_close(Vh, fm.V)
    TL = tl()
    with pytest.warns(DeprecationWarning):
        _ = TL.FactoredMatrix(randn(gen, 6, 2), randn(gen, 2, 5)).Vh


@pytest.mark.parametrize("a,b", [((6, 2), (2, 6)), ((2, 5, 3), (3, 5)), ((4, 7), (7, 4)), ((3, 3), (3, 3))])
def test_eigenvalues_are_those_of_the_dense_matrix(gen, a, b):
    A, B = randn(gen, *a), randn(gen, *b)
    got = FactoredMatrix(A, B).eigenvalues
    mdim = A.shape[-1]
    assert got.shape == (*torch.broadcast_shapes(A.shape[:-2], B.shape[:-2]), mdim)
    assert (got.abs()[..., :-1] >= got.abs()[..., 1:] - 1e-12).all()  # descending modulus
    expected = torch.linalg.eigvals(B @ A)  # B A has the nonzero eigenvalues of A B (mdim of them)
    order = expected.abs().argsort(-1, descending=True)
    assert_close(got, expected.gather(-1, order), rtol=1e-8)
    TL = tl()
    theirs = TL.FactoredMatrix(A, B).eigenvalues
    assert theirs.shape == got.shape and theirs.dtype == got.dtype
    assert_close(got.abs().sort(-1).values, theirs.abs().sort(-1).values, rtol=1e-8)


def test_eigenvalues_need_a_square_matrix(gen):
    with pytest.raises(ValueError, match=r"ldim == rdim.*\(6, 5\)"):
        _ = FactoredMatrix(randn(gen, 6, 2), randn(gen, 2, 5)).eigenvalues


@pytest.mark.parametrize("a,b", CASES)
def test_norm_is_frobenius(gen, a, b):
    A, B = randn(gen, *a), randn(gen, *b)
    got = FactoredMatrix(A, B).norm()
    assert_close(got, torch.linalg.matrix_norm(A @ B))
    TL = tl()
    assert_close(got, TL.FactoredMatrix(A, B).norm())


def _dense_scores(L, R):
    return torch.linalg.matrix_norm(L @ R) / torch.linalg.matrix_norm(L) / torch.linalg.matrix_norm(R)


def test_composition_scores_pair_every_left_with_every_right(gen):
    A1, B1 = randn(gen, 3, 4, 8, 2), randn(gen, 3, 4, 2, 8)   # 3 layers x 4 heads, d=8
    A2, B2 = randn(gen, 2, 8, 2), randn(gen, 2, 2, 8)
    got = composition_scores(FactoredMatrix(A1, B1), FactoredMatrix(A2, B2))
    assert got.shape == (3, 4, 2)
    L, R = A1 @ B1, A2 @ B2
    expected = _dense_scores(L[:, :, None], R[None, None])
    assert_close(got, expected)
    same = composition_scores(FactoredMatrix(A1[0], B1[0]), FactoredMatrix(A2[:1], B2[:1]).unsqueeze(0)[0],
                              broadcast_dims=False)
    assert_close(same, _dense_scores(L[0], R[:1]))
    TL = tl()
    theirs = TL.composition_scores(TL.FactoredMatrix(A1, B1), TL.FactoredMatrix(A2, B2))
    assert_close(got, theirs, rtol=1e-8)
    with pytest.raises(ValueError, match="left.rdim == right.ldim"):
        composition_scores(FactoredMatrix(A1, B1), FactoredMatrix(randn(gen, 5, 2), randn(gen, 2, 5)))


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.tuples(st.integers(1, 3), st.booleans(), st.booleans()), max_size=2),
    drop=st.integers(0, 2),
    dims=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**16),
)
def test_random_broadcast_factors_match_dense(lead, drop, dims, seed):
    """AB, singular values, reconstruction and norm for random shapes whose leading dims
    broadcast (size-1 dims on either side, fewer leading dims on B)."""
    lead_a = [1 if one else size for size, one, _ in lead]
    lead_b = [1 if one else size for size, _, one in lead][drop:]
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    A, B = randn(gen, *lead_a, l, m), randn(gen, *lead_b, m, r)
    dense = A @ B
    fm = FactoredMatrix(A, B)
    assert fm.shape == dense.shape
    assert_close(fm.AB, dense)
    U, S, V = fm.svd()
    assert_close(U @ torch.diag_embed(S) @ V.mT, dense, rtol=1e-9)
    assert_close(S, torch.linalg.svdvals(dense)[..., : S.shape[-1]], rtol=1e-9)
    assert_close(fm.norm(), torch.linalg.matrix_norm(dense), rtol=1e-9)
