"""An index of an index is one index: values against torch's indexing in float64, the planned
peak bounded by what the last key keeps, and the entries of explain/factor taking tensors."""

import math

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.compat.transformer_lens import FactoredMatrix
from lazymat.indexing import compose
from lazymat.rewrite import canonical

from conftest import assert_close


def _entry(data, size: int, batch: bool, list_ok: bool):
    """One key entry for a dim of ``size``: an int (batch dims), a slice (negative bounds,
    steps 1-3), a list with repeats (negative entries), or the full slice."""
    kinds = ["full", "slice"] + (["int"] if batch and size else []) + (["list"] if list_ok else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "int":
        return data.draw(st.integers(-size, size - 1))
    if kind == "slice":
        bound = st.none() | st.integers(-size - 1, size + 1)
        return slice(data.draw(bound), data.draw(bound), data.draw(st.sampled_from([None, 1, 2, 3])))
    if kind == "list":
        if not size:
            return []
        return data.draw(st.lists(st.integers(-size, size - 1), min_size=1, max_size=5))
    return slice(None)


def _key(data, shape: tuple) -> tuple:
    """A key for ``shape`` that keeps the result lazy: at most one list, no int on the matrix
    dims, maybe a new axis among the batch dims and an ellipsis for the full leading dims."""
    nb = len(shape) - 2
    list_dim = data.draw(st.sampled_from([None, *range(len(shape))]))
    entries = [_entry(data, s, d < nb, d == list_dim) for d, s in enumerate(shape)]
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, nb))
        entries.insert(at, None)
    if data.draw(st.booleans()):  # an ellipsis for the leading full slices
        lead = 0
        while lead < len(entries) and entries[lead] == slice(None):
            lead += 1
        if lead:
            entries = [Ellipsis, *entries[lead:]]
    return tuple(entries)


def _adjacent_indexes(c) -> list:
    return [(a, b) for t in c.terms for f in t.factors
            for a, b in zip(f.ops, f.ops[1:], strict=False) if a[0] == b[0] == "index"]


@settings(max_examples=120, deadline=None)
@given(st.data())
def test_keys_in_turn_are_torch_indexing_once(data):
    batch = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    m, k, n = (data.draw(st.integers(1, 4)) for _ in range(3))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    A = torch.randn(*batch, m, k, generator=gen, dtype=torch.float64)
    B = torch.randn(k, n, generator=gen, dtype=torch.float64)
    product = data.draw(st.booleans())
    x = lm.lazy(A) @ lm.lazy(B) if product else lm.lazy(A)
    dense = A @ B if product else A
    inner = k if product else 0
    note(f"product={product} batch={batch} m, k, n = {m, k, n}")
    new_axes = False
    for _ in range(data.draw(st.integers(2, 3))):
        key = _key(data, tuple(dense.shape))
        note(f"{tuple(dense.shape)}[{key}]")
        dense = dense[key]
        new_axes = new_axes or None in key
        x = x[key]
        assert tuple(x.shape) == tuple(dense.shape)
    assert_close(x.to_dense(), dense)
    if dense.numel():
        scale = max(1.0, dense.abs().max().item())
        assert_close(lm.linalg.svdvals(x, full=True), torch.linalg.svdvals(dense), atol=1e-10 * scale)
        C = torch.randn(dense.shape[-1], 2, generator=gen, dtype=torch.float64)
        assert_close((x @ lm.lazy(C)).to_dense(), dense @ C)
    # each view carries one index op where one key can say it (torch_key's outer lists); only
    # a new axis repeated or emptied (and two lists beside a new axis) stay two
    pairs = _adjacent_indexes(canonical(x))
    assert all(compose(a[1:], b[1:]) is None for a, b in pairs)
    if new_axes:
        return
    assert not pairs
    # the peak: the same op on fresh matrices the size of what the last key keeps, plus one
    # gathered copy of each factor's kept part; never the earlier keys' larger intermediates
    out = dense.shape
    rows_part = math.prod(out[:-2]) * out[-2] * (inner or out[-1])
    cols_part = inner * out[-1]
    fresh = (lm.lazy(torch.zeros(*out[:-2], out[-2], inner, dtype=torch.float64))
             @ lm.lazy(torch.zeros(inner, out[-1], dtype=torch.float64))) if product \
        else lm.lazy(torch.zeros(out, dtype=torch.float64))
    for op in ("to_dense", "svdvals"):
        bound = lm.explain(fresh, op).planned.peak_bytes + 8 * (rows_part + cols_part) + 64
        assert lm.explain(x, op).planned.peak_bytes <= bound, op


def test_gathered_heads_then_one_head_reads_one_head():
    """qa21's repro: ``x[:, [0] * 32][31, 31]`` is ``x[31, 0]``; the eigvals plan reads that one
    (4096, 128) slice and peaks at the (128, 128) core, not at the 2 GiB gather."""
    x = lm.symbol("x", (32, 8, 4096, 128))
    o = lm.symbol("o", (32, 32, 128, 4096))
    r = lm.explain(x[:, [0] * 32][31, 31] @ o[31, 31], "eigvals")
    assert r.planned.peak_bytes < 2**20
    assert "x[31, 0]" in str(r)


def test_lists_composed_index_their_own_dims():
    """Two lists composed into one key index each its own dim (an outer index), as indexing
    twice does."""
    T = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    x = lm.lazy(T)[[3, 0, 3]][:, [4, 4, 1]][..., [2, 0], :]
    assert_close(x.to_dense(), T[[3, 0, 3]][:, [4, 4, 1]][..., [2, 0], :])
    (view,) = canonical(x).terms[0].factors
    assert [op[0] for op in view.ops] == ["index"]


def test_explain_and_factor_take_what_linalg_takes():
    T = torch.randn(3, 3, dtype=torch.float64)
    assert lm.explain(T, "svdvals").shape == (3, 3)
    L, R = lm.factor(T)
    assert_close((L @ R).to_dense(), T)
    a, b = torch.randn(5, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    fm = FactoredMatrix(a, b)
    L, R = lm.factor(fm)
    assert_close((L @ R).to_dense(), a @ b)
    same = lm.explain(lm.lazy(a) @ lm.lazy(b), "svdvals")
    assert lm.explain(fm, "svdvals").planned.flops == same.planned.flops
    with pytest.raises(TypeError, match="list"):
        lm.explain([[1.0]])
