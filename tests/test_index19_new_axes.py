"""``None`` (a new axis) anywhere in a key, as torch places it: at or after the row dim too
(``X[:, None]`` on a matrix, ``X[0, None]``, ``X[..., None, :]``, ``X[..., 2, :, None]``). The
result has torch's shape and values; it stays lazy where its last two dims are a matrix of
``X``'s (a new axis standing for the dim an int drops, transposed where the columns come
first), and a key whose new axis leaves a matrix dim among the batch dims is computed (one
slice, never more) within ``implicit_dense_limit``."""

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm

from conftest import assert_close, torch_or_index_error


def _expression(data, gen):
    batch = tuple(data.draw(st.lists(st.integers(1, 3), min_size=0, max_size=2), label="batch"))
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    a = torch.randn(*batch, m, k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, n, generator=gen, dtype=torch.float64)
    c = torch.randn(m, n, generator=gen, dtype=torch.float64)
    kind = data.draw(st.sampled_from(["leaf", "product", "sum"]), label="kind")
    if kind == "leaf":
        return lm.lazy(a), a
    if kind == "product":
        return lm.lazy(a) @ lm.lazy(b), a @ b
    return lm.lazy(a) @ lm.lazy(b) + lm.lazy(c), a @ b + c


def _entry(data, size: int):
    choice = data.draw(st.sampled_from(["int", "slice", "list", "all"]))
    if choice == "int":
        return data.draw(st.integers(-size, size - 1))
    if choice == "slice":
        return slice(data.draw(st.integers(-size, size)), None)
    if choice == "list":
        return data.draw(st.lists(st.integers(-size, size - 1), max_size=3))
    return slice(None)


def _key(data, shape: tuple) -> tuple:
    """Entries for a prefix of the dims (an ellipsis now and then), new axes sprinkled anywhere;
    at most one index list (an outer index: no pairing)."""
    out, lists = [], 0
    used = data.draw(st.integers(0, len(shape)))
    for dim in range(used):
        while data.draw(st.integers(0, 2)) == 2:
            out.append(None)
        e = _entry(data, shape[dim])
        if isinstance(e, list):
            if lists:
                e = slice(None)
            lists += 1
        out.append(e)
    if data.draw(st.booleans()):
        out.insert(data.draw(st.integers(0, len(out))), Ellipsis)
    while data.draw(st.integers(0, 2)) == 2:
        out.insert(data.draw(st.integers(0, len(out))), None)
    return tuple(out)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_new_axes_anywhere_match_torch(data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    X, D = _expression(data, gen)
    key = _key(data, tuple(D.shape))
    note(f"shape {tuple(D.shape)}, key {key!r}")
    want = torch_or_index_error(X, D, key)
    if want is None:
        return
    got = X[key]
    if lm.is_lazy(got):
        assert want.ndim >= 2
        got = got.to_dense()
    assert tuple(got.shape) == tuple(want.shape)
    assert got.dtype == want.dtype
    assert_close(got, want)


@pytest.mark.parametrize("key, lazy", [
    ((slice(None), None), False),  # rows become a batch dim: (m, 1, n)
    ((0, None), True),  # x[0:1]
    ((None, 0), True),
    ((Ellipsis, None, slice(None)), False),
    ((Ellipsis, 2, slice(None), None), True),  # x[2:3].mT: (n, 1)
    ((Ellipsis, None, slice(None), 2), True),  # x[:, 2:3].mT: (1, m)
    ((Ellipsis, slice(None), 2, None), True),  # x[:, 2:3]: (m, 1)
    ((1, 2, None), False),  # (1,): one entry
    ((1, 2, None, None), True),  # x[1:2, 2:3]
    ((None, None, slice(1, 3), None, slice(None)), False),
])
def test_a_matrix_of_x_stays_lazy(key, lazy, gen):
    a = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 4, generator=gen, dtype=torch.float64)
    X = lm.lazy(a) @ lm.lazy(b)
    got, want = X[key], (a @ b)[key]
    assert lm.is_lazy(got) == lazy
    got = got.to_dense() if lazy else got
    assert got.shape == want.shape
    assert_close(got, want)


def test_a_new_axis_that_leaves_the_matrix_is_refused_past_the_implicit_limit():
    W = lm.lazy(torch.randn(600, 8), name="W")
    X = W @ W.T  # 600 x 600 float32: 1.4 MB
    with lm.config(implicit_dense_limit="1MB"), pytest.raises(MemoryError, match=r"new axis at result dim 1"):
        X[:, None]
    with lm.config(implicit_dense_limit="1MB"):
        assert X[:2, None].shape == (2, 1, 600)  # two rows, within the limit


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_normalised_keys_apply_as_torch(data):
    """``normalise`` (the parser's and the composition's key) of keys with new axes anywhere: a
    key that applies as torch's, or NotImplementedError only for a new axis after the row index."""
    from lazymat.indexing import apply_key, normalise

    shape = tuple(data.draw(st.lists(st.integers(1, 3), min_size=2, max_size=4)))
    T = torch.arange(float(torch.Size(shape).numel()), dtype=torch.float64).reshape(shape)
    key = _key(data, shape)
    note(f"shape {shape}, key {key!r}")
    try:
        want = T[key]
    except IndexError:
        return
    try:
        normalised = normalise(shape, key)
    except NotImplementedError:
        consumed = sum(k is not None and k is not Ellipsis for k in key)
        spelt = [[slice(None)] * (len(shape) - consumed) if k is Ellipsis else [k] for k in key]
        entries = [e for part in spelt for e in part]
        entries += [slice(None)] * (len(shape) - sum(e is not None for e in entries))
        row = [i for i, e in enumerate(entries) if e is not None][-2]
        assert None in entries[row:], key
        return
    assert torch.equal(apply_key(T, *normalised), want)
