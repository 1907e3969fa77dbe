"""Batch indices paired with the rows, the pairs in the rows' place and the columns a slice
(``X[b, rows]``, ``X[:, b, rows, 1:]``, a mask over a batch dim and the rows), or paired with
the columns when every batch dim is paired or an int (``X[b, :, cols]``, the pairs first): the
result is a matrix stack whose line ``p`` is a line of member ``b[p]``: lazy where each member's
pairs sit side by side (a cat of each member's own lines), else a tensor of each member's
distinct lines formed once and put in order; torch's values, shape and dtype."""

import numpy as np
import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.expr import Expr

from conftest import assert_close, torch_or_index_error


def _expression(data, gen, batch: tuple):
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    a = torch.randn(*batch, m, k, generator=gen, dtype=torch.float64)
    b = torch.randn(k, n, generator=gen, dtype=torch.float64)
    c = torch.randn(*batch, m, n, generator=gen, dtype=torch.float64)
    kind = data.draw(st.sampled_from(["leaf", "product", "sum", "transpose", "cat"]), label="kind")
    if kind == "leaf":
        return lm.lazy(c), c
    if kind == "product":
        return lm.lazy(a) @ lm.lazy(b), a @ b
    if kind == "sum":
        return lm.lazy(a) @ lm.lazy(b) + lm.lazy(c), a @ b + c
    if kind == "cat":
        return lm.cat([lm.lazy(a) @ lm.lazy(b), lm.lazy(c)], dim=-1), torch.cat([a @ b, c], -1)
    return (lm.lazy(a) @ lm.lazy(b)).mT, (a @ b).mT


def _array(data, size: int, length: int):
    lo, hi = (-size, size - 1)
    if data.draw(st.integers(0, 12)) == 0:
        hi += 2  # now and then out of range
    values = data.draw(st.lists(st.integers(lo, hi), min_size=length, max_size=length))
    if length == 1 and data.draw(st.booleans()):
        return values[0] if data.draw(st.booleans()) else torch.tensor(values)  # broadcasts
    return torch.tensor(values, dtype=torch.long) if data.draw(st.booleans()) else values


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_members_paired_with_lines_match_torch(data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    batch = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="batch"))
    X, D = _expression(data, gen, batch)
    shape = tuple(D.shape)
    P = data.draw(st.integers(0, 5), label="pairs")
    on_cols = data.draw(st.booleans(), label="columns")
    key = []
    for d, size in enumerate(shape[:-2]):
        kind = data.draw(st.sampled_from(["array", "int", "slice"] if not on_cols else ["array", "int"]))
        if d == len(shape) - 3 and not any(isinstance(k, (list, torch.Tensor)) for k in key):
            kind = "array"  # at least one batch dim paired
        entry = (_array(data, size, P) if kind == "array" else data.draw(st.integers(-size, size - 1))
                 if kind == "int" else slice(data.draw(st.integers(0, 1)), None))
        if kind == "array" and data.draw(st.booleans()) and isinstance(entry, list):
            entry = sorted(entry)  # members side by side: a lazy result
        key.append(entry)
    line = _array(data, shape[-1 if on_cols else -2], P)
    key += [slice(None), line] if on_cols else [line, slice(data.draw(st.integers(-2, 1)), None)]
    key = tuple(key)
    note(f"shape {shape}, key {key!r}")
    want = torch_or_index_error(X, D, key)
    if want is None:
        return
    got = X[key]
    if lm.is_lazy(got):
        got = got.to_dense()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want)


@pytest.mark.parametrize("kind", ["product", "leaf", "sum"])
def test_rows_and_columns_of_members_side_by_side_are_lazy(kind, gen):
    H, m, r, n = 5, 7, 3, 6
    A = torch.randn(H, m, r, generator=gen, dtype=torch.float64)
    B = torch.randn(r, n, generator=gen, dtype=torch.float64)
    C = torch.randn(H, m, n, generator=gen, dtype=torch.float64)
    X, D = {"product": (lm.lazy(A) @ lm.lazy(B), A @ B), "leaf": (lm.lazy(C), C),
            "sum": (lm.lazy(A) @ lm.lazy(B) + lm.lazy(C), A @ B + C)}[kind]
    b, rows, cols = [0, 2, 4, 4, 4], [3, 3, -1, 6, -1], [0, 5, 5, 1, 2]
    mask = torch.zeros(H, m, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = mask[3, 6] = True
    for key in [(b, rows), (b, rows, slice(1, None)), (b, slice(None), cols), (mask,),
                (torch.tensor(b), torch.tensor(rows), slice(None, None, 2))]:
        got = X[key]
        assert lm.is_lazy(got), key  # on main: a tensor
        assert_close(got.to_dense(), D[key])
    unsorted = ([4, 0, 4, 2, 4], rows)
    assert_close(X[unsorted], D[unsorted])


def test_members_side_by_side_compute_their_own_rows():
    H, m, r, n = 12, 300, 8, 200
    X = lm.symbol("A", (H, m, r)) @ lm.symbol("B", (r, n))
    g = np.random.default_rng(0)
    b, rows = np.sort(g.integers(0, H, 400)), g.integers(0, m, 400)
    got = X[b.tolist(), rows.tolist()]
    assert lm.explain(got).planned.flops == 2 * 400 * r * n  # one row each: on main, 12 x ~290 rows


def test_members_apart_form_each_members_distinct_rows_once(monkeypatch):
    H, m, r, n = 12, 300, 8, 200
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(H, m, r, generator=g), torch.randn(r, n, generator=g)
    X = lm.lazy(A) @ lm.lazy(B)
    b, rows = torch.randint(0, H, (400,), generator=g), torch.randint(0, m, (400,), generator=g)
    formed = []
    to_dense = Expr.to_dense
    monkeypatch.setattr(Expr, "to_dense", lambda x, *a, **k: formed.append(x.numel()) or to_dense(x, *a, **k))
    got = X[b, rows]
    torch.testing.assert_close(got, (A @ B)[b, rows])
    distinct = len({(int(i), int(j)) for i, j in zip(b, rows, strict=True)})
    assert formed == [distinct * n]  # on main: 12 members x ~290 rows


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_batch_lists_beside_a_line_list_are_one_lazy_index(data):
    """Batch lists varying along the batch dims alone (``[[0], [1]]``) and a row list along the
    rows alone (``[1, 2, 3]``, negative entries too), or a column list when every batch dim is
    paired or an int: one lazy index (a Gather and a list), torch's values and shape."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    batch = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="batch"))
    X, D = _expression(data, gen, batch)
    shape = tuple(D.shape)
    on_cols = data.draw(st.booleans(), label="columns")
    members = data.draw(st.integers(1, 3), label="members")
    key: list = []
    for d, size in enumerate(shape[:-2]):
        kind = data.draw(st.sampled_from(["array", "int"] if on_cols else ["array", "int", "slice"]))
        if d == len(shape) - 3 and not any(isinstance(k, list) for k in key):
            kind = "array"
        if kind == "array":
            values = data.draw(st.lists(st.integers(-size, size - 1), min_size=members, max_size=members))
            key.append([[v] for v in values])  # (members, 1): along the batch dims alone
        else:
            key.append(data.draw(st.integers(-size, size - 1)) if kind == "int" else slice(None))
    size = shape[-1 if on_cols else -2]
    line = data.draw(st.lists(st.integers(-size, size - 1), min_size=1, max_size=4))
    key += [slice(None), line] if on_cols else [line, slice(0, None)]
    key = tuple(key)
    note(f"shape {shape}, key {key!r}")
    got, want = X[key], D[key]
    assert lm.is_lazy(got)  # on main: a tensor
    got = got.to_dense()
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want)
