"""Indexing a ``cat`` takes the index into the parts it selects from (as indexing a product takes
it to the factors): ``lm.cat([A @ B, C @ D], dim=-2)[i]`` runs ``A[i] @ B`` alone, never the
other part nor the whole joined matrix. Random parts, axes and keys against dense float64 torch;
the parts a key selects nothing from are symbols, which have no data to run."""

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
    """(lazy, dense, key, used, build): a cat of 2-3 random chains along rows or columns, maybe
    transposed, a key (maybe with a batch entry), which parts the key's entry along the joined
    axis reads, and ``build(parts)``, the same expression of other parts."""
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
    along = torch.arange(D.shape[joined])[col if joined == -1 else row].reshape(-1).tolist()
    ends = torch.tensor([d.shape[axis] for _, d in parts]).cumsum(0).tolist()
    used = {sum(i >= e for e in ends) for i in along}
    return X, D, key, used, [p for p, _ in parts], build


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(cats())
def test_an_index_of_a_cat_equals_dense_and_runs_only_the_parts_it_selects(case):
    X, D, key, used, parts, build = case
    out = X[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, D[key])
    # the same cat with the unused parts as symbols (no data): the index never reaches them
    sym = [p if k in used else lm.symbol(f"s{k}", p.shape, torch.float64) for k, p in enumerate(parts)]
    out = build(sym)[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, D[key])


def test_a_row_of_a_cat_of_products_is_a_row_of_one_product(gen):
    """``cat([A @ B, C @ E], dim=-2)[5:7]`` is ``A[1:3] @ B``: no block is left in its form."""
    A, B, C, E = _leaves(gen)
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), lm.lazy(C) @ lm.lazy(E)], dim=-2)
    form = canonical(X[1:3])
    assert len(form.terms) == 1 and not any(isinstance(f.base, Nested) for f in form.terms[0].factors)
    assert_close(X[1:3].to_dense(), (A @ B)[1:3])
    assert_close(X[5], (C @ E)[1])


@pytest.mark.parametrize("key", [(slice(None), 4), ([5, 0, 6, 1],)])
def test_an_index_across_parts_joins_the_indexed_parts(gen, key):
    A, B, C, E = _leaves(gen)
    X = lm.cat([lm.lazy(A) @ lm.lazy(B), 2.0 * (lm.lazy(C) @ lm.lazy(E))], dim=-2)
    out = X[key]
    assert_close(out.to_dense() if lm.is_lazy(out) else out, torch.cat([A @ B, 2.0 * C @ E], -2)[key])
