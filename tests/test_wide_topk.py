"""The chunked top-k of long rows (lazymat.wide_topk) against torch.topk on the whole row:
the same values and indices, ties, NaN and infinities included."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lazymat as lm
from lazymat import wide_topk


@pytest.fixture(autouse=True)
def short_rows(monkeypatch):
    monkeypatch.setattr(wide_topk, "MIN_WIDTH", 16)  # the chunked route on test-sized rows


def check(t, k, largest):
    got = wide_topk.topk_last(t, k, largest, True)
    want = torch.topk(t, k, dim=-1, largest=largest, sorted=True)
    torch.testing.assert_close(got[0], want.values, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got[1], want.indices)


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 6), n=st.integers(16, 400), k=st.integers(0, 12), largest=st.booleans(),
       levels=st.sampled_from([None, 2, 5, 50]), specials=st.integers(0, 6), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_chunked_topk_equals_torch(rows, n, k, largest, levels, specials, seed, dtype):
    """Random rows, with few distinct values (ties) or with NaN and infinities placed at random."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(rows, n, generator=g, dtype=dtype)
    if levels is not None:
        t = torch.randint(0, levels, (rows, n), generator=g).to(dtype)
    for _ in range(specials):
        r, c = torch.randint(0, rows, (1,), generator=g).item(), torch.randint(0, n, (1,), generator=g).item()
        t[r, c] = [float("nan"), float("inf"), -float("inf")][torch.randint(0, 3, (1,), generator=g).item()]
    check(t, min(k, n), largest)


def test_the_answer_may_sit_in_one_chunk_and_the_tail(gen):
    """All of the top 5 in one chunk, then all in the tail (the part no whole chunk covers)."""
    t = torch.randn(3, 1000, generator=gen, dtype=torch.float64)
    t[0, 40:45] = torch.tensor([9.0, 8, 7, 6, 5], dtype=torch.float64)
    t[1, -5:] = torch.tensor([9.0, 8, 7, 6, 5], dtype=torch.float64)
    t[2, -5:] = -torch.tensor([9.0, 8, 7, 6, 5], dtype=torch.float64)
    for largest in (True, False):
        check(t, 5, largest)


def test_lazy_topk_of_long_rows_takes_the_chunked_route(gen, monkeypatch):
    """lm.topk along the last dim of a lazy product runs the chunked route on each block, with
    torch's answer on the dense product."""
    calls = []
    real = wide_topk.topk_last
    monkeypatch.setattr(wide_topk, "topk_last", lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(lm.reduce, "topk_last", wide_topk.topk_last)
    A, B = torch.randn(50, 8, generator=gen), torch.randn(8, 300, generator=gen)
    got = lm.topk(lm.lazy(A) @ lm.lazy(B), 7, dim=-1)
    want = torch.topk(A @ B, 7, dim=-1)
    assert calls
    torch.testing.assert_close(got.values, want.values)
    assert torch.equal(got.indices, want.indices)
