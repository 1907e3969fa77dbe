"""The applications as a demanding user tries them: lazymat.compat against TransformerLens and
dense torch, the circuit analyses on real MiniLM weights against dense float64, factorize
against the Eckart-Young optimum."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.circuits import Circuits, random_baseline
from lazymat.compat import FactoredMatrix

from circuit_models import canonical
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


# ---- circuits: layer and head arguments ------------------------------------------------------

L, H = 3, 4


def _tiny():
    w = canonical(V=30, D=10, L=L, H=H, Dh=3, d_mlp=14, n_ctx=7, seed=0)
    keep = ("W_E", "W_U", "W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_pos")
    return Circuits({k: w[k] for k in keep}), w


def _selection(size):
    """An index argument in each form a user may pass, and the torch key it means."""
    ints = st.integers(-size, size - 1)
    return st.one_of(
        st.none().map(lambda _: (None, slice(None))),
        ints.map(lambda i: (i, i)),
        ints.map(lambda i: (np.int64(i), i)),
        ints.map(lambda i: (torch.tensor(i), i)),
        st.lists(ints, max_size=3).map(lambda xs: (xs, xs)),
        st.lists(ints, max_size=3).map(lambda xs: (tuple(xs), list(xs))),
        st.lists(ints, min_size=1, max_size=3).map(lambda xs: (torch.tensor(xs), xs)),
        st.tuples(st.integers(0, size), st.integers(0, size)).map(lambda t: (range(*t), list(range(*t)))),
        st.tuples(st.integers(-size, size), st.sampled_from([None, 1, 2])).map(
            lambda t: (slice(t[0], None, t[1]), slice(t[0], None, t[1]))),
    )


@settings(max_examples=80, deadline=None)
@given(layer=_selection(L), head=_selection(H))
def test_layer_and_head_arguments_index_like_torch(layer, head):
    """Ints of any integer type, sequences, ranges, slices and None select the same circuits
    as torch indexing of the dense weights (numpy ints, 0-d tensors and slices failed with
    "'numpy.int64' object is not iterable" and the like)."""
    c, w = _tiny()
    (arg_l, key_l), (arg_h, key_h) = layer, head
    OV = w["W_V"] @ w["W_O"]
    want = OV[key_l][key_h] if isinstance(key_l, int) else OV[key_l][:, key_h]
    got = c.OV(arg_l, arg_h)
    assert got.shape == want.shape
    assert_close(got.to_dense(), want)
    w_in = c.w_in(arg_l).to_dense()
    assert_close(w_in, w["W_in"][key_l].mT)


@pytest.mark.parametrize("bad", [1.0, "0", True, b"0", torch.tensor(1.0), torch.tensor([[0]])])
def test_layer_arguments_of_the_wrong_type_are_named(bad):
    c, _ = _tiny()
    with pytest.raises(TypeError, match=r"layer .*expected an int"):
        c.OV(bad, 0)
    with pytest.raises(TypeError, match=r"head .*expected an int"):
        c.QK(0, bad)
    with pytest.raises(TypeError, match=r"layer .*expected an int"):
        c.path([(bad, 0, "OV")])


def test_singular_directions_name_negative_indices_from_the_front_and_check_k():
    c, w = _tiny()
    last = c.singular_directions("OV", -1, -2, k=3, top=4)
    same = c.singular_directions("OV", np.int64(L - 1), torch.tensor(H - 2), k=3, top=4)
    assert last.name == same.name == f"OV L{L - 1}H{H - 2}"
    assert_close(last.values, torch.linalg.svdvals(w["W_V"][-1, -2] @ w["W_O"][-1, -2])[:3])
    assert last.top_ids.tolist() == same.top_ids.tolist()
    assert c.singular_directions("w_out", -1, k=2).name == f"w_out layer {L - 1}"
    for k, top in ((-1, 3), (3, -2), (2.5, 3), (True, 3)):
        with pytest.raises(ValueError, match=r"(k|top) must be a non-negative int, got"):
            c.singular_directions("OV", 0, 0, k=k, top=top)
    with pytest.raises(TypeError, match=r"layer \[0, 1\]: expected an int"):
        c.singular_directions("OV", [0, 1], 0)


def test_random_baseline_and_token_check_their_arguments():
    c, _ = _tiny()
    with pytest.raises(ValueError, match="composition kind 'Z'"):
        random_baseline(c, "Z")
    with pytest.raises(IndexError, match="token id 30 out of range for 30 token ids"):
        c.token(30)
    assert c.token(-1) == "29"


def test_a_non_floating_dtype_is_refused_when_loading(tmp_path):
    from circuit_models import as_transformer_lens

    sd = as_transformer_lens(canonical(V=30, D=10, L=2, H=2, Dh=3, d_mlp=14, n_ctx=7))
    with pytest.raises(TypeError, match="dtype torch.int32: circuit weights need a floating dtype"):
        Circuits.from_state_dict(sd, dtype=torch.int32)
