"""An index list a slice can stand for (one entry, or evenly increasing entries) is read as that
slice: the same values and shape as torch's indexing, but a view of the leaf where a list would
gather a copy (explain shows no copy step, and the planned peak is the slice's)."""

import itertools

import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.rewrite import canonical

from conftest import assert_close


def _progression(data, size: int) -> list[int]:
    """Evenly increasing indices into a dim of ``size`` (one or none included), some negative."""
    start = data.draw(st.integers(0, size - 1))
    step = data.draw(st.integers(1, 3))
    count = data.draw(st.integers(0, len(range(start, size, step))))
    items = list(range(start, size, step))[:count]
    return [i - size if data.draw(st.booleans()) else i for i in items]


def _other(data, size: int, batch: bool):
    kinds = ["full", "slice"] + (["int"] if batch else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "int":
        return data.draw(st.integers(-size, size - 1))
    if kind == "slice":
        bound = st.none() | st.integers(-size - 1, size + 1)
        return slice(data.draw(bound), data.draw(bound), data.draw(st.sampled_from([None, 1, 2])))
    return slice(None)


def _copies(x: lm.Expr) -> int:
    """Index entries of the form's views that are lists (each a gathered copy)."""
    return sum(isinstance(e, tuple) for t in canonical(x).terms for f in t.factors
               for op in f.ops if op[0] == "index" for e in (*op[1], op[2], op[3]))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_progressions_index_as_torch_does_without_a_copy(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=4)))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    T = torch.randn(*shape, generator=gen, dtype=torch.float64)
    nb = len(shape) - 2
    at = data.draw(st.integers(0, len(shape) - 1))
    key = [_progression(data, s) if d == at else _other(data, s, d < nb) for d, s in enumerate(shape)]
    if data.draw(st.booleans()):
        key.insert(data.draw(st.integers(0, nb)), None)
    if data.draw(st.booleans()) and key[0] == slice(None):
        key[0] = Ellipsis
    key = tuple(key)
    note(f"{shape}[{key}]")
    x = lm.lazy(T)[key]
    assert tuple(x.shape) == tuple(T[key].shape)
    assert_close(x.to_dense(), T[key])
    assert _copies(x) == 0
    W = torch.randn(x.shape[-1], 3, generator=gen, dtype=torch.float64)
    assert_close((x @ lm.lazy(W)).to_dense(), T[key] @ W)


def test_one_entry_list_is_the_slice_in_explain():
    """``x[:, [1]] @ w`` plans as ``x[:, 1:2] @ w``: no copy step, the slice's peak (0 B)."""
    x, w = lm.symbol("x", (2, 3, 400, 500)), lm.symbol("w", (500, 60))
    for listed, sliced in [((slice(None), [1]), (slice(None), slice(1, 2))),
                           (([0],), (slice(0, 1),)),
                           ((Ellipsis, [2, 4, 6], slice(None)), (Ellipsis, slice(2, 7, 2), slice(None)))]:
        report = lm.explain(x[listed] @ w)
        assert "copy of" not in str(report), listed
        assert report.planned.peak_bytes == lm.explain(x[sliced] @ w).planned.peak_bytes
        assert report.planned.peak_bytes < 8 * 2 * 400 * 500, listed  # under one gathered copy


def test_lists_a_slice_cannot_stand_for_still_gather():
    """Repeated or decreasing entries stay a list (and a copy), with torch's values."""
    T = torch.randn(4, 5, 6, dtype=torch.float64)
    for key in [([1, 1],), ([3, 1],), (slice(None), [0, 2, 3]), (slice(None), slice(None), [5, 3, 1])]:
        x = lm.lazy(T)[key]
        assert_close(x.to_dense(), T[key])
        assert _copies(x) == 1, key


def test_paired_row_and_column_lists_stay_paired():
    """Two lists on the rows and columns pair up elementwise in torch (one dim, not two): a
    one-entry or evenly spaced pair is not read as two slices."""
    T = torch.randn(3, 5, 6, dtype=torch.float64)
    for rows, cols in itertools.product([[0], [1, 2, 3], [4]], [[2], [0, 2, 4], [5]]):
        if len(rows) != len(cols) and 1 not in (len(rows), len(cols)):
            continue
        got = lm.lazy(T)[:, rows, cols]
        assert tuple(got.shape) == tuple(T[:, rows, cols].shape)
        assert_close(got, T[:, rows, cols])


def test_a_list_beside_ints_keeps_torchs_order_and_shape():
    """torch reads an int as a select, not an advanced index: a list beside ints (even apart from
    them) keeps its axis in place, with or without the slice a range list is read as."""
    T = torch.randn(4, 5, 6, 7, dtype=torch.float64)
    for key in [(slice(None), [0, 1], slice(None), 3), (slice(None), [1], 2), ([2, 3], Ellipsis, 0),
                ([3, 1], slice(None), 5), (1, [0, 2, 4], slice(1, 6, 2)), (Ellipsis, [5], 2)]:
        got = lm.lazy(T)[key]
        got = got if isinstance(got, torch.Tensor) else got.to_dense()
        assert got.shape == T[key].shape, key
        assert torch.equal(got, T[key]), key
