"""Indexing follows torch dim by dim; rows/columns go to the first/last factor."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close, randn


@pytest.fixture
def batched(gen):
    a, b, c = randn(gen, 3, 6, 4), randn(gen, 4, 5), randn(gen, 1, 5, 7)
    return lm.lazy(a) @ b @ lm.lazy(c), a @ b @ c


KEYS = [
    0, -1, slice(1, 3), (slice(None), [0, 2, 5]), (..., [1, 3], slice(None)), (..., slice(None), [6, 0]),
    (..., 2, slice(None)), (..., slice(None), 3), (1, 2, 3), (..., 1, 2), (None,), (slice(None), None),
    (slice(0, 3, 2), slice(1, None), slice(None, None, 3)), (torch.tensor([2, 0]),),
    (..., torch.tensor([True, False, True, False, False, True]), slice(None)), (..., [0, 4], [1, 6]),
    (-2, slice(None), -1), (slice(2, 2),),
    (np.array([2, 0]),), (..., np.array([True, False, True, False, False, True]), slice(None)),
    (np.int64(1), slice(None), np.array([0, 6])), ([True, False, True],),
]


@pytest.mark.parametrize("key", KEYS, ids=[repr(k) for k in KEYS])
def test_matches_torch(batched, key):
    X, D = batched
    got = X[key]
    expected = D[key]
    if lm.is_lazy(got):
        assert got.shape == expected.shape
        got = got.to_dense()
    assert got.shape == expected.shape
    assert_close(got, expected)


def test_row_and_column_go_to_end_factors(gen):
    a, b, c = randn(gen, 50, 4), randn(gen, 4, 3), randn(gen, 3, 60)
    X = lm.lazy(a) @ b @ c
    rows = X[[1, 7, 9]]
    p = rows.plan()
    # the selected rows (3 x 4) are pushed through the chain: nothing 50 x 60 is formed
    assert all(s.out_shape[-2] == 3 for s in p.steps)
    cols = X[:, 10:12]
    assert all(s.out_shape[-1] == 2 for s in cols.plan().steps)


def test_int_row_returns_tensor_without_forming_matrix(gen):
    a, b = randn(gen, 500, 3), randn(gen, 3, 400)
    X = lm.lazy(a) @ b
    row = X[17]
    assert isinstance(row, torch.Tensor) and row.shape == (400,)
    assert_close(row, (a @ b)[17])
    assert X[3, 4].shape == ()


def test_index_of_sum_and_transpose(gen):
    a, b, c = randn(gen, 2, 5, 3), randn(gen, 3, 4), randn(gen, 5, 4)
    X = (lm.lazy(a) @ b + c).mT * 3
    D = (a @ b + c).mT * 3
    assert_close(X[1, [0, 2]].to_dense(), D[1, [0, 2]])
    assert_close(X[:, 1:3, ::2].to_dense(), D[:, 1:3, ::2])


def test_two_lists_are_paired_like_torch(gen):
    a = randn(gen, 3, 4, 5)
    got = lm.lazy(a)[[0, 1], [0, 1], :]  # each member's own row, side by side: lazy
    assert_close(got.to_dense() if isinstance(got, lm.Expr) else got, a[[0, 1], [0, 1], :])


def test_none_after_matrix_dims_is_torchs_shape(gen):
    a = randn(gen, 4, 5)
    got = lm.lazy(a)[:, :, None]
    assert_close(got.to_dense() if isinstance(got, lm.Expr) else got, a[:, :, None])


def test_random_keys_on_a_broadcast_sum_match_torch(gen):
    """Random torch keys (ints, slices, lists, None, ...) on a sum whose terms broadcast."""
    import random

    a, b, c = randn(gen, 2, 1, 4, 5), randn(gen, 3, 5, 4), randn(gen, 4, 4)
    X, D = lm.lazy(a) @ lm.lazy(b) + lm.lazy(c), a @ b + c
    rng = random.Random(0)
    entries = [0, 1, -1, slice(None), slice(0, 1), slice(1, None), [0, 1], [1], None, Ellipsis]
    checked = 0
    for _ in range(1500):
        key = tuple(rng.choice(entries) for _ in range(rng.randint(1, 4)))
        if sum(k is Ellipsis for k in key) > 1:
            continue  # torch accepts several; lazymat refuses like numpy
        try:
            expected = D[key]
        except IndexError:
            with pytest.raises(IndexError):
                X[key]
            continue
        try:
            got = X[key]
        except NotImplementedError:
            continue  # two lists apart, or None after the row dim: refused with a message
        got = got.to_dense() if lm.is_lazy(got) else got
        assert got.shape == expected.shape, key
        assert_close(got, expected)
        checked += 1
    assert checked > 500


@pytest.mark.parametrize("key", [
    torch.tensor([True, False]), [True, False, True, True], (slice(None), torch.tensor([True] * 7)),
    (..., np.array([True] * 5), slice(None)),
], ids=repr)
def test_masks_of_the_wrong_length_raise_like_torch(batched, key):
    X, D = batched
    with pytest.raises(IndexError, match="mask") as torch_error:
        D[key]
    with pytest.raises(IndexError, match="mask") as our_error:
        X[key]
    same = [str(e.value).split(" does not")[0].lower() for e in (torch_error, our_error)]
    assert same[0] == same[1]  # "the shape of the mask [n] at index d"


def test_float_index_arrays_are_refused(batched):
    X, _ = batched
    with pytest.raises(TypeError, match="float64"):
        X[np.array([0.0, 1.0])]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2), st.lists(st.booleans(), min_size=0, max_size=8),
       st.sampled_from(["tensor", "list", "numpy"]))
def test_random_masks_behave_like_torch(dim, mask, kind):
    """Right-length masks select like torch; wrong-length ones raise IndexError like torch."""
    g = torch.Generator().manual_seed(len(mask) * 3 + dim)
    a = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, 7, generator=g, dtype=torch.float64)
    X, D = lm.lazy(a) @ lm.lazy(b), a @ b
    m = {"tensor": torch.tensor(mask, dtype=torch.bool), "list": mask,
         "numpy": np.array(mask, dtype=bool)}[kind]
    key = (*(slice(None),) * dim, m)
    if kind == "list" and not mask:
        return  # an empty list is an (empty) integer index, not a mask
    try:
        expected = D[key]
    except IndexError:
        with pytest.raises(IndexError):
            X[key]
        return
    got = X[key]
    assert_close(got.to_dense() if lm.is_lazy(got) else got, expected)
