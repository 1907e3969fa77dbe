"""lazymat.compat.FactoredMatrix indexing: leading dims, rows and columns (TransformerLens's
semantics: an integer row or column keeps its dim, the inner dim is never indexed)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tl_reference import tl

from lazymat.compat import FactoredMatrix

from conftest import assert_close, randn

S_ = slice(None)
MASK = torch.tensor([True, False, True])
# (key, the same selection on the dense product): ints on rows/columns become 1-wide slices
KEYS = [
    ((0,), (0,)),
    ((0, 1), (0, 1)),
    ((S_, 2, 3), (S_, 2, slice(3, 4))),
    ((0, 1, 2, 5), (0, 1, slice(2, 3), slice(5, 6))),
    ((0, 1, -1, -1), (0, 1, slice(-1, None), slice(-1, None))),
    ((..., 1), (..., slice(1, 2))),
    ((..., 2, S_), (..., slice(2, 3), S_)),
    ((..., None, 1), (..., None, slice(1, 2))),
    ((..., 1, None), (..., slice(1, 2), None)),
    ((None,), (None,)),
    ((0, 1, None), (0, 1, None)),
    ((slice(1, 3), S_, slice(0, 5, 2)), (slice(1, 3), S_, slice(0, 5, 2))),
    ((0, [1, 3]), (0, [1, 3])),
    ((MASK,), (MASK,)),
    ((0, 1, 10), (0, 1, slice(10, 11))),  # an integer past the end gives an empty dim, as in TL
    ((torch.tensor(1), S_, torch.tensor(2)), (1, S_, slice(2, 3))),
    ((0, np.int64(1), np.int64(2)), (0, 1, slice(2, 3))),
]


def _factors(gen):
    return randn(gen, 3, 1, 6, 4), randn(gen, 5, 4, 6)  # product (3, 5, 6, 6), mdim 4


@pytest.mark.parametrize("key,dense_key", KEYS, ids=[str(k) for k, _ in KEYS])
def test_getitem_matches_dense_torch(gen, key, dense_key):
    A, B = _factors(gen)
    got = FactoredMatrix(A, B)[key]
    expected = (A @ B)[dense_key]
    assert got.shape == expected.shape
    assert got.mdim == 4  # the inner dim is never indexed
    assert_close(got.AB, expected)


@pytest.mark.parametrize("key,dense_key", KEYS, ids=[str(k) for k, _ in KEYS])
def test_getitem_matches_transformer_lens(gen, key, dense_key):
    TL = tl()
    A, B = _factors(gen)
    ours, theirs = FactoredMatrix(A, B)[key], TL.FactoredMatrix(A, B)[key]
    assert ours.shape == theirs.shape
    assert ours.A.shape == theirs.A.shape and ours.B.shape == theirs.B.shape
    assert_close(ours.A, theirs.A)
    assert_close(ours.B, theirs.B)


def test_a_key_longer_than_the_matrix_raises_naming_the_shape(gen):
    fm = FactoredMatrix(*_factors(gen))
    with pytest.raises(ValueError, match=r"too long .*\(3, 5, 6, 6\)"):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match="single ellipsis"):
        fm[..., 0, ...]


def test_indexing_a_lazy_chain_keeps_it_lazy(gen):
    A, B, W = randn(gen, 4, 30, 5), randn(gen, 5, 30), randn(gen, 30, 40)
    fm = FactoredMatrix(A, B) @ W  # TL would form B @ W here; we keep the chain
    got = fm[2, 3:7]
    assert got.shape == (4, 40)
    assert_close(got.AB, (A @ B @ W)[2, 3:7])


@settings(max_examples=60, deadline=None)
@given(
    lead=st.lists(st.integers(1, 3), max_size=2),
    dims=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 5)),
    picks=st.lists(
        st.one_of(st.integers(-8, 8), st.none(), st.tuples(st.integers(-6, 6), st.integers(-6, 6))),
        min_size=1, max_size=4,
    ),
    seed=st.integers(0, 2**16),
)
def test_random_int_and_slice_keys_match_dense(lead, dims, picks, seed):
    """ints on leading dims select, ints on rows/columns keep a 1-wide dim, slices slice."""
    gen = torch.Generator().manual_seed(seed)
    l, m, r = dims
    A, B = randn(gen, *lead, l, m), randn(gen, m, r)
    fm = FactoredMatrix(A, B)
    shape = fm.shape
    key, dense_key = [], []
    for dim, pick in enumerate(picks[: len(shape)]):
        size = shape[dim]
        if pick is None:
            key.append(slice(None))
            dense_key.append(slice(None))
        elif isinstance(pick, tuple):
            key.append(slice(*pick))
            dense_key.append(slice(*pick))
        else:
            i = pick % size
            key.append(i)
            dense_key.append(i if dim < len(shape) - 2 else slice(i, i + 1))
    assert_close(fm[tuple(key)].AB, (A @ B)[tuple(dense_key)])
