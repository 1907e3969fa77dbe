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
from lazymat.factorize import factorize_conv2d_module, factorize_linear, factorize_matrix

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


@pytest.mark.parametrize("n", [-1, 2.0, True])
def test_scores_top_refuses_a_count_that_is_not_a_non_negative_int(n):
    """Regression: ``top(-1)`` failed in torch.topk with "selected index k out of range"."""
    c, _ = _tiny()
    for scores in (c.copying_scores(), c.composition_scores("K")):
        with pytest.raises(ValueError, match=f"top: n must be a non-negative int, got {n!r}"):
            scores.top(n)
        entries = L * H if scores.valid is None else int(scores.valid.sum())
        assert len(scores.top(1000)) == entries


def test_a_non_floating_dtype_is_refused_when_loading(tmp_path):
    from circuit_models import as_transformer_lens

    sd = as_transformer_lens(canonical(V=30, D=10, L=2, H=2, Dh=3, d_mlp=14, n_ctx=7))
    with pytest.raises(TypeError, match="dtype torch.int32: circuit weights need a floating dtype"):
        Circuits.from_state_dict(sd, dtype=torch.int32)


# ---- factorize: arguments -------------------------------------------------------------------

def _rank_forms():
    """``(rank argument, k it means for D = 10)`` in each form a user may pass."""
    ints = st.integers(1, 6)
    return st.one_of(
        ints.map(lambda k: (k, k)), ints.map(lambda k: (np.int64(k), k)),
        ints.map(lambda k: (torch.tensor(k), k)), ints.map(lambda k: (float(k), k)),
        st.integers(1, 9).map(lambda tenths: (tenths / 10, max(1, min(int(tenths / 10 * 10), 8)))),
    )


@settings(max_examples=40, deadline=None)
@given(rank=_rank_forms(), seed=st.integers(0, 2**16))
def test_rank_of_any_integer_type_or_a_fraction_gives_k_columns(rank, seed):
    """numpy and 0-d tensor ranks were refused ("got np.int64(4)"); the factors are ``k`` wide
    and no worse than the best rank-k truncation of the layer's weight applied to the data."""
    arg, k = rank
    gen = torch.Generator().manual_seed(seed)
    X, W = randn(gen, 40, 10), randn(gen, 10, 8)
    Y = X @ W
    sol = factorize_matrix(X, Y, W, rank=arg)
    if k >= 8:
        assert sol.rank == -1
        return
    assert sol.rank == k and sol.Wa.shape == (10, k) and sol.Wb.shape == (k, 8)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    truncated = X @ (U[:, :k] * S[:k]) @ Vh[:k]
    truncated_nmse = float(((Y - truncated) ** 2).mean() / Y.var())
    assert sol.nmse <= truncated_nmse * (1 + 1e-9) + 1e-15


@pytest.mark.parametrize("rank", [2.5, float("inf"), float("nan"), 0, -1, True, "4", torch.tensor(1.5)])
def test_a_rank_that_is_neither_an_int_nor_a_fraction_is_refused(gen, rank):
    X, W = randn(gen, 20, 6), randn(gen, 6, 5)
    with pytest.raises(ValueError, match="rank must be a positive int, or a float in \\(0, 1\\)"):
        factorize_matrix(X, X @ W, W, rank=rank)


def test_factorize_refuses_no_samples_and_non_tensors_by_name(gen):
    X, W = randn(gen, 20, 6), randn(gen, 6, 5)
    with pytest.raises(ValueError, match=r"X \(0, 6\) holds no samples"):
        factorize_matrix(X[:0], (X @ W)[:0], W, rank=2)
    with pytest.raises(TypeError, match="X must be a torch.Tensor, got list"):
        factorize_matrix(X.tolist(), X @ W, W, rank=2)
    with pytest.raises(TypeError, match="X must be a torch.Tensor, got list"):
        factorize_linear(torch.nn.Linear(6, 5), X.tolist(), rank=2)
    with pytest.raises(ValueError, match="n_iters must be a non-negative int, got True"):
        factorize_matrix(X, X @ W, W, rank=2, n_iters=True)


def test_modules_take_data_of_another_dtype_in_their_own(gen):
    """A float64 (or integer) batch for a float32 layer failed inside the layer's forward
    ("mat1 and mat2 must have the same dtype"); it is fitted in the layer's dtype."""
    torch.manual_seed(0)
    linear, conv = torch.nn.Linear(6, 5), torch.nn.Conv2d(3, 4, 3, padding=1)
    X, Xc = randn(gen, 30, 6), randn(gen, 2, 3, 6, 6)
    for module, data, rank in ((linear, X, 2), (conv, Xc, 2)):
        factorize = factorize_linear if module is linear else factorize_conv2d_module
        got, same = factorize(module, data, rank=rank), factorize(module, data.float(), rank=rank)
        for a, b in zip(got.parameters(), same.parameters(), strict=True):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    counts = torch.randint(0, 4, (30, 6), generator=gen)
    assert factorize_linear(linear, counts, rank=2)[0].weight.dtype == torch.float32
