"""Views that copy (a list index) in products, counted as the executor holds them: the peak
``explain`` reports bounds what an unbudgeted ``to_dense`` allocates, and a sliced ``to_dense``
allocates within its budget (both beside the result, counted by torch's allocator hooks).

Two ways the count fell short: a block of the batch views a list-indexed factor's copy, and a
view of a copy holds the copy's whole storage (the block ``(t1x1 @ t1x1 @ t2x1x1)[:, :, [0]][:1]``
held the 16 B copy, counted as its 8 B view: 40 B ran under 16 B + the 16 B result); the factors
of a term are formed in order, so a nested block read by a later factor is formed beside the
earlier factors' copies (``((t1x3 @ (t3x1 @ t1x1 + t3x1 @ t1x1))[None] + -1 * t1x1)[[0]]``
allocated 96 B where 80 B were explained: the block was counted as formed before the copies).
"""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_peak import _check_peak
from test_budget_slices import _check_sliced_to_dense_fits

import lazymat as lm

from conftest import assert_close


@st.composite
def copying_products(draw):
    """(lazy, dense) products of 2-3 factors, each a leaf or a sum of two leaves (a nested
    block), most read through a list index of their columns, some with a batch of 2-3; the
    product is maybe indexed again (a batch list, or a new axis and a list over it)."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    batch = (draw(st.integers(2, 3)),)
    rows = draw(st.integers(1, 3))
    lazy = dense = None
    for _ in range(draw(st.integers(2, 3))):
        cols = draw(st.integers(1, 3))
        shape = (*(batch if draw(st.booleans()) else ()), rows, cols)
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        x = lm.lazy(t)
        if draw(st.booleans()):
            u = torch.randn(rows, cols, generator=g, dtype=torch.float64)
            x, t = x + lm.lazy(u), t + u
        if draw(st.integers(0, 3)) > 0:
            idx = draw(st.lists(st.integers(0, cols - 1), min_size=1, max_size=3))
            x, t = x[..., idx], t[..., idx]
        lazy = x if lazy is None else lazy @ x
        dense = t if dense is None else dense @ t
        rows = t.shape[-1]
    last = draw(st.sampled_from(["none", "batch", "new"]))
    if last == "batch" and dense.ndim > 2:
        idx = draw(st.lists(st.integers(0, dense.shape[0] - 1), min_size=1, max_size=3))
        lazy, dense = lazy[idx], dense[idx]
    elif last == "new":
        lazy, dense = lazy[None][[0]], dense[None][[0]]
    return lazy, dense


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(copying_products())
def test_the_explained_peak_counts_the_copies_of_views(block_counts, pair):
    X, D = pair
    assert_close(_check_peak(X, "to_dense", block_counts), D)


@SETTINGS
@given(copying_products(), st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_a_sliced_to_dense_counts_the_copies_of_views(pair, frac):
    X, D = pair
    _check_sliced_to_dense_fits(X, D, frac)


def test_a_block_of_a_list_index_holds_the_whole_copy(gen):
    a, b, c = (torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(1, 1), (1, 1), (2, 1, 1)])
    X = (lm.lazy(a) @ lm.lazy(b) @ lm.lazy(c))[:, :, [0]]
    _check_sliced_to_dense_fits(X, (a @ b @ c)[:, :, [0]], 0.0)


def test_a_nested_block_is_formed_beside_the_copies_before_it(block_counts, gen):
    a, b, c, d, e, f = (torch.randn(*s, generator=gen, dtype=torch.float64)
                        for s in [(1, 3), (3, 1), (1, 1), (3, 1), (1, 1), (1, 1)])
    la, lb, lc, ld, le, lf = map(lm.lazy, (a, b, c, d, e, f))
    # rows [0, 0] copy the first factor of each term (a new axis repeated, [None][[0, 0]], is an
    # expand: a view with no copy)
    X = ((la @ (lb @ lc + ld @ le))[None] + -1 * lf)[:, [0, 0]]
    assert lm.explain(X, memory_budget=2**50).planned.peak_bytes == 120
    out = _check_peak(X, "to_dense", block_counts)
    assert_close(out, ((a @ (b @ c + d @ e))[None] - f)[:, [0, 0]])
