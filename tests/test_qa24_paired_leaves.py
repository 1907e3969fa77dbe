"""Paired row and column index arrays on a sum of lone leaves (``X[rows, cols]`` with ``X`` a
leaf, a transpose, a slice, a widening cast, scaled, summed, broadcast along the batch) read
``P`` entries of each leaf for ``P`` pairs, as torch does: never the ``len(set(rows)) x
len(set(cols))`` block of them (a 10k-pair key on a 50257 x 50257 leaf formed 400 MB)."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat.allocated import Allocated


@st.composite
def lone_sums(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.complex64]))
    batch = draw(st.sampled_from([(), (2,), (3, 2)]))
    m, n = draw(st.integers(100, 160)), draw(st.integers(100, 160))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    eager, lazy = None, None
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["plain", "mT", "slice", "cast", "broadcast"]))
        fb = batch[draw(st.integers(0, len(batch))):] if kind == "broadcast" else batch
        if kind == "mT":
            t = torch.randn(*fb, n, m, dtype=dtype, generator=g)
            e, z = t.mT, lm.lazy(t).mT
        elif kind == "slice":
            t = torch.randn(*fb, m + 3, n + 2, dtype=dtype, generator=g)
            e, z = t[..., 2:m + 2, 1:n + 1], lm.lazy(t)[..., 2:m + 2, 1:n + 1]
        elif kind == "cast" and dtype != torch.float32:  # a widening cast, on the leaf
            t = torch.randn(*fb, m, n, dtype=torch.float32, generator=g)
            e, z = t.to(dtype), lm.lazy(t).to(dtype)
        else:
            t = torch.randn(*fb, m, n, dtype=dtype, generator=g)
            e, z = t, lm.lazy(t)
        k = draw(st.sampled_from([1.0, -0.5, 3.0]))
        e, z = k * e, k * z
        eager, lazy = (e, z) if eager is None else (eager + e, lazy + z)
    return eager, lazy, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=lone_sums(), pairs=st.integers(90, 140), batch_array=st.booleans(), negative=st.booleans())
def test_paired_entries_of_lone_leaves_read_only_the_pairs(x, pairs, batch_array, negative):
    eager, lazy, seed = x
    m, n = eager.shape[-2:]
    pairs = min(pairs, m, n)
    g = torch.Generator().manual_seed(seed + 1)
    rows = torch.randperm(m, generator=g)[:pairs]  # distinct rows and columns: P^2 distinct entries
    cols = torch.randperm(n, generator=g)[:pairs]
    if negative:
        rows, cols = rows - m, cols - n
    key = (..., rows, cols)
    if batch_array and eager.ndim > 2:  # a batch array broadcast with the pairs
        key = (torch.randint(0, eager.shape[0], (pairs,), generator=g), ..., rows, cols)
    expected = eager[key]
    with Allocated() as counted:
        got = lazy[key]
    assert got.shape == expected.shape and got.dtype == expected.dtype
    wide = torch.complex128 if got.is_complex() else torch.float64
    torch.testing.assert_close(got.to(wide), expected.to(wide), rtol=1e-5, atol=1e-5)
    # what the pairs need: the index arrays (int64) and, per term, a few entries per result entry
    entries = expected.numel()
    assert counted.peak <= 8 * 4 * pairs + 16 * 8 * entries, (counted.peak, entries)
