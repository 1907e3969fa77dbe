"""Batch indices paired with the rows (and columns): ``X[b, rows, cols]`` reads one batch member
per pair, so where that reads fewer entries (each read counted ``CALL_ENTRIES`` more) it computes
the entries asked for, grouped by the member they read (``2 T r`` FLOPs for ``T`` distinct
triples of a rank-``r`` product, as ``lm.explain`` costs each group's diagonal), not the
distinct members times the distinct pairs; ``X[b, rows]`` forms each member's own rows, not
every member's rows. Values, shapes and dtypes as torch's on the
dense tensor, out-of-range entries refused as torch refuses them."""

import ast
import pathlib

import numpy as np
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm
import lazymat.linalg.entries as entries
import lazymat.linalg.norms as norms
from lazymat.expr import Expr

from conftest import assert_close, torch_or_index_error


def _diagonals(monkeypatch) -> list:
    """The lazy squares whose diagonals the entries are read from, as they are asked for."""
    seen: list = []
    diagonal = norms.diagonal
    monkeypatch.setattr(norms, "diagonal", lambda x: seen.append(x) or diagonal(x))
    return seen


def test_triples_cost_two_r_flops_each(monkeypatch):
    g = torch.Generator().manual_seed(0)
    H, m, r, n, T = 12, 3000, 6, 4000, 3000
    A = torch.randn(H, m, r, generator=g, dtype=torch.float64)
    B = torch.randn(H, r, n, generator=g, dtype=torch.float64)
    X = lm.lazy(A, name="A") @ lm.lazy(B, name="B")
    b = torch.randint(0, H, (T,), generator=g)
    rows = torch.randint(-m, m, (T,), generator=g)
    cols = torch.randint(0, n, (T,), generator=g)
    seen = _diagonals(monkeypatch)
    got = X[b, rows, cols]
    assert_close(got, (A @ B)[b, rows, cols])
    triples = len({(int(i) % H, int(j) % m, int(k)) for i, j, k in zip(b, rows, cols, strict=True)})
    flops = sum(lm.explain(s, "diagonal").planned.flops for s in seen)
    assert flops == 2 * r * triples  # on main: the 12 members times the ~3000 pairs, 12x this
    assert len(seen) == len(set(b.tolist()))


def test_rows_paired_with_members_form_only_their_rows(monkeypatch):
    g = torch.Generator().manual_seed(1)
    H, m, r, n = 16, 50, 3, 400
    A = torch.randn(H, m, r, generator=g, dtype=torch.float64)
    B = torch.randn(r, n, generator=g, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    b = torch.arange(H).repeat(2)  # each member twice, apart: rows 3h and 3h + 1 of member h
    rows = torch.cat([torch.arange(H) * 3, torch.arange(H) * 3 + 1])
    formed = []
    to_dense = Expr.to_dense
    monkeypatch.setattr(Expr, "to_dense", lambda x, *a, **k: formed.append(x.numel()) or to_dense(x, *a, **k))
    got = X[b, rows]
    assert_close(got, (A @ B)[b, rows])
    assert sum(formed) == 2 * H * n  # on main: 16 members x 32 rows x 400 columns


def _index(data, size: int, shape: tuple):
    lo, hi = (-size, size - 1) if size else (-1, 1)
    if data.draw(st.integers(0, 9)) == 0:
        lo, hi = lo - 2, hi + 2
    values = np.array(data.draw(st.lists(st.integers(lo, hi), min_size=int(np.prod(shape)),
                                         max_size=int(np.prod(shape))))).reshape(shape)
    if data.draw(st.booleans()):
        return torch.tensor(values, dtype=torch.long)
    return values.tolist() if values.ndim else int(values)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_members_paired_with_rows_and_columns_match_torch(data):
    """Random batch, row (and column) index arrays broadcasting together, on products, sums and
    leaves; a sum's product terms cost at most ``2 r`` FLOPs per distinct triple."""
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    H, m, r, n = (data.draw(st.integers(1, 4)) for _ in range(4))
    A = torch.randn(H, m, r, generator=gen, dtype=torch.float64)
    B = torch.randn(H, r, n, generator=gen, dtype=torch.float64)
    C = torch.randn(H, m, n, generator=gen, dtype=torch.float64)
    kind = data.draw(st.sampled_from(["product", "sum", "leaf"]))
    X, D = {"product": (lm.lazy(A) @ lm.lazy(B), A @ B), "leaf": (lm.lazy(C), C),
            "sum": (lm.lazy(A) @ lm.lazy(B) + lm.lazy(C), A @ B + C)}[kind]
    pair = tuple(data.draw(st.lists(st.integers(0, 3), max_size=2)))
    with_cols = data.draw(st.booleans())
    key = [_index(data, size, pair[data.draw(st.integers(0, len(pair))):])
           for size in ((H, m, n) if with_cols else (H, m))]
    key = tuple(key)
    note(f"{kind} {tuple(D.shape)}, key {key!r}")
    want = torch_or_index_error(X, D, key)
    if want is None:
        return
    seen: list = []
    diagonal = norms.diagonal
    norms.diagonal = lambda x: seen.append(x) or diagonal(x)
    try:
        got = X[key]
    finally:
        norms.diagonal = diagonal
    got = got.to_dense() if lm.is_lazy(got) else got  # (an int and one list: an outer index, lazy)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want)
    if seen and want.numel():
        triples = {tuple(t) for t in np.stack([np.broadcast_to(np.asarray(k) % s, want.shape).reshape(-1)
                                                for k, s in zip(key, (H, m, n), strict=True)], 1).tolist()}
        members = len({t[0] for t in triples})  # (a read of each member's own costs CALL_ENTRIES more)
        bound = 2 * r * (len(triples) + members * entries.CALL_ENTRIES)
        assert sum(lm.explain(s, "diagonal").planned.flops for s in seen) <= bound


def test_indexing_imports_nothing_above_the_nodes():
    """lazymat.indexing sits with lazymat.expr at the bottom layer: it imports only that (and
    reaches the layers above only through Expr's import-on-use, ``expr._layer``)."""
    source = pathlib.Path(lm.__file__).with_name("indexing.py").read_text()
    found = {node.module for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.ImportFrom) and node.level}
    assert found <= {"expr"}, found
