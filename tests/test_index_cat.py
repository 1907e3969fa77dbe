"""Indexing a ``cat`` takes the index into its parts (as indexing a product takes it to the
factors): the batch entries and the entry across the joined axis index every part, the entry
along it only the parts it selects from, as runs within one part (see rewrite._index_cat):
``lm.cat([A @ B, C @ D], dim=-1)[i]`` joins ``A[i] @ B`` and ``C[i] @ D``, and
``lm.cat([A @ B, C @ D], dim=-1)[:, :10]`` is ``A @ B[:, :10]``. Random parts, axes (transposed
too) and keys against dense float64 torch; the form's parts have the rows (columns) the key
selects, and the parts it selects nothing from are symbols, which have no data to run."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import assert_close, chains

import lazymat as lm
from lazymat.rewrite import Nested, canonical


def _entry(draw, size: int):
    """An int, a slice (step 1-3, maybe negative bounds) or a list of indices into ``size``."""
    kind = draw(st.sampled_from(["int", "slice", "list", "all"]))
    if kind == "int":
        return draw(st.integers(-size, size - 1))
    if kind == "slice":
        a, b = sorted(draw(st.lists(st.integers(0, size), min_size=2, max_size=2)))
        return slice(a, b if b > a else a + 1, draw(st.integers(1, 3)))
    if kind == "list":
        return draw(st.lists(st.integers(-size, size - 1), min_size=1, max_size=5))
    return slice(None)


def _leaves(gen) -> list[torch.Tensor]:
    return [torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(4, 3), (3, 5), (6, 2), (2, 5)]]


@st.composite
def cats(draw):
    """(lazy, dense, key, across, used, parts, build): a cat of 2-3 random chains along rows or
    columns, maybe transposed, a key (maybe with a batch entry), how many entries it selects
    across the joined axis, which parts its entry along the axis selects from, the parts and
    ``build(parts)``, the same expression of other parts."""
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=1)))
    axis = draw(st.sampled_from([-1, -2]))
    other = draw(st.integers(1, 4))
    parts = []
    for _ in range(draw(st.integers(2, 3))):
        n = draw(st.integers(1, 4))
        rows, cols = (other, n) if axis == -1 else (n, other)
        parts.append(draw(chains(rows, cols, batch, torch.float64)))
    transposed = draw(st.booleans())  # index the transposed cat: its rows are the parts' columns

    def build(lazy_parts):
        X = lm.cat(lazy_parts, dim=axis)
        return X.mT if transposed else X

    X = build([p for p, _ in parts])
    D = torch.cat([d.expand(*X.shape[:-2], *d.shape[-2:]) for _, d in parts], dim=axis)
    D = D.mT if transposed else D
    row, col = _entry(draw, D.shape[-2]), _entry(draw, D.shape[-1])
    if isinstance(row, list) and isinstance(col, list):  # torch pairs two lists: not this test's case
        col = slice(None)
    first = ... if X.ndim == 2 or draw(st.booleans()) else draw(st.integers(0, X.shape[0] - 1))
    key = (first, row, col)
    joined = axis if not transposed else -3 - axis  # the joined axis of X
    across = len(torch.arange(D.shape[-3 - joined])[row if joined == -1 else col].reshape(-1))
    along = torch.arange(D.shape[joined])[col if joined == -1 else row].reshape(-1).tolist()
    ends = torch.tensor([d.shape[axis] for _, d in parts]).cumsum(0).tolist()
    used = {sum(i >= e for e in ends) for i in along}
    return X, D, key, across, used, [p for p, _ in parts], build


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(cats())
def test_an_index_of_a_cat_equals_dense_and_indexes_its_parts(case):
    X, D, key, across, used, parts, build = case
    out = X[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, D[key])
    if D[key].numel() == 0:  # (an empty index of a symbol has no data either)
        return
    # the same cat with the parts the key selects nothing from as symbols: it never reaches them
    sym = [p if k in used else lm.symbol(f"s{k}", p.shape, torch.float64) for k, p in enumerate(parts)]
    out = build(sym)[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, D[key])
    if lm.is_lazy(out):  # a cat block left in the form has only the selected entries across its axis
        for t in canonical(out).terms:
            for f in t.factors:
                if isinstance(f.base, Nested) and f.base.kind == "cat":
                    assert f.base.shape[-3 - f.base.axis] == across


def test_a_row_of_a_column_cat_of_products_joins_rows_of_the_products(gen):
    """``cat([A @ B, C @ E], dim=-1)[1:3]`` joins ``A[1:3] @ B`` and ``C[1:3] @ E``: the parts
    are planned on two rows (the whole cat formed 4 rows of each); a symbol part still has no
    data to run, so evaluating reads only the parts' selected rows."""
    A, B, C, E = _leaves(gen)
    C = C[:4]
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C) @ lm.lazy(E[:, :3])], dim=-1)
    form = canonical(X[1:3])
    (view,) = form.terms[0].factors
    assert [p.shape for p in view.base.parts] == [(2, 5), (2, 3)]
    assert_close(X[1:3].to_dense(), torch.cat([A @ B, C @ E[:, :3]], -1)[1:3])
    assert_close(X[..., 2, 6], (C @ E[:, :3])[2, 1])


def test_columns_within_one_part_of_a_column_cat_are_that_part_alone(gen):
    """``cat([A @ B, C @ E], dim=-1)[:, 1:4]`` is ``A @ B[:, 1:4]``: one term, no cat block (it
    stayed an index of the whole joined block, which a memory budget formed whole)."""
    A, B, C, E = _leaves(gen)
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C[:4]) @ lm.lazy(E)], dim=-1)
    form = canonical(X[:, 1:4])
    assert len(form.terms) == 1 and not any(isinstance(f.base, Nested) for f in form.terms[0].factors)
    assert_close(X[:, 1:4].to_dense(), (A @ B)[:, 1:4])


@pytest.mark.parametrize("key", [(slice(None), 4), ([5, 0, 6, 1],)])
def test_an_index_across_parts_joins_the_indexed_parts(gen, key):
    A, B, C, E = _leaves(gen)
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), 2.0 * (lm.lazy(C) @ lm.lazy(E))], dim=-2)
    out = X[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, torch.cat([A @ B, 2.0 * C @ E], -2)[key])
