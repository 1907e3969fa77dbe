"""The applications as a demanding user tries them: lazymat.compat against TransformerLens and
dense torch, the circuit analyses on real MiniLM weights against dense float64, factorize
against the Eckart-Young optimum."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn


def _assert_orthonormal_columns(Q):
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand(*Q.shape[:-2], -1, -1)
    assert_close(Q.mH @ Q, eye, atol=1e-10)


# ---- compat: svd() of a rank-deficient FactoredMatrix --------------------------------------

def _check_full_width_svd(A, B):
    fm, dense = FactoredMatrix(A, B), A @ B
    width = min(A.shape[-2], A.shape[-1], B.shape[-1])
    U, S, V = fm.svd()
    assert U.shape == (*dense.shape[:-1], width)
    assert S.shape == (*dense.shape[:-2], width)
    assert V.shape == (*dense.shape[:-2], dense.shape[-1], width)
    _assert_orthonormal_columns(U)
    _assert_orthonormal_columns(V)
    assert_close(U @ torch.diag_embed(S).to(U.dtype) @ V.mH, dense, rtol=1e-9)
    assert_close(S, torch.linalg.svdvals(dense)[..., :width], rtol=1e-9, atol=1e-9 * max(1, S.abs().max()))
    assert fm.collapse_l().shape == (*dense.shape[:-2], width, dense.shape[-1])
    assert fm.collapse_r().shape == (*dense.shape[:-1], width)
    even = fm.make_even()
    assert even.mdim == width
    assert_close(even.AB, dense, rtol=1e-9)
    return U, S, V


def test_svd_of_a_rank_deficient_matrix_is_min_ldim_mdim_rdim_wide(gen):
    """A rank-2 factor in a (6, 4) @ (4, 6) product: TransformerLens returns 4 singular
    triplets (two zero), lazymat.compat returned 2."""
    A, B = randn(gen, 6, 2) @ randn(gen, 2, 4), randn(gen, 4, 6)
    _check_full_width_svd(A, B)
    _check_full_width_svd(torch.zeros(5, 3, dtype=torch.float64), randn(gen, 3, 4))


def test_svd_of_a_rank_deficient_matrix_has_transformer_lens_shapes(gen):
    TL = tl()
    A, B = randn(gen, 3, 6, 2) @ randn(gen, 2, 4), randn(gen, 4, 6)
    A[1] = 0
    ours, theirs = FactoredMatrix(A, B), TL.FactoredMatrix(A, B)
    for mine, peer in zip(ours.svd(), theirs.svd(), strict=True):
        assert mine.shape == peer.shape
    assert_close(ours.S, theirs.S, atol=1e-9 * theirs.S.abs().max())
    assert ours.make_even().A.shape == theirs.make_even().A.shape


@settings(max_examples=60, deadline=None)
@given(
    dims=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    rank=st.integers(0, 6),
    batch=st.lists(st.integers(0, 6), max_size=3),
    complex_=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_low_rank_svd_is_full_width_and_orthonormal(dims, rank, batch, complex_, seed):
    """Every member of a batch of random rank (``rank`` of each, capped by its shape; a member
    of rank 0 included) gives ``min(ldim, mdim, rdim)`` triplets with orthonormal U, V."""
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    dtype = torch.complex128 if complex_ else torch.float64
    lead = (len(batch),) if batch else ()
    A = randn(gen, *lead, l, rank, dtype=dtype) @ randn(gen, *lead, rank, m, dtype=dtype)
    for i, member_rank in enumerate(batch):  # each member keeps only its own leading columns
        A[i, :, min(member_rank, m):] = 0
    _check_full_width_svd(A, randn(gen, m, r, dtype=dtype))
