"""The trace and diagonal of an expression with a user's ``cat`` at an outer end of a term read
the cat's parts, never the cat: a cat inside a sum (``cat([A @ B, C @ D]) + P @ Q``: the diagonal
of a sum is the sum of its terms'), at the right end of a product (``M @ [X1, X2]`` has the
diagonal blocks ``M[:n1] @ X1`` and ``M[n1:] @ X2``) or at the left (rows alike), see
rewrite.diagonal_pieces. Random such expressions against dense float64 torch; on shape-only
symbols explain's FLOPs stay far below forming the cat; explain's peak is what a run allocates
(the blocks' results held while later blocks run, counted)."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_budget_peak import _check_peak, _copies_a_view
from test_cat_routes import cats
from test_properties import SETTINGS, assert_close, chains

import lazymat as lm
from lazymat import linalg as LA


@st.composite
def cats_at_outer_ends(draw):
    """(lazy, dense): a random cat (either axis, batched, scaled, transposed, nested) made square
    inside a sum with a product, a sum with another cat, or at either end of a product."""
    X, D = draw(cats())
    batch = tuple(D.shape[:-2])
    m, n = D.shape[-2:]
    kind = draw(st.sampled_from(["left", "right", "sum", "both"]))
    if kind in ("left", "both"):  # P @ X: the cat at the right end (square: P is n x m)
        P, E = draw(chains(n, m, batch, torch.float64))
        X, D = P @ X, E @ D
    if kind in ("right", "both"):  # X @ Q: the cat at the left end
        k = D.shape[-2]
        Q, F = draw(chains(D.shape[-1], k, batch, torch.float64))
        X, D = X @ Q, D @ F
    if kind == "sum":  # square the cat by its leading block, then add a product and another cat
        k = min(m, n)
        X, D = X[..., :k, :k], D[..., :k, :k]
        S, G = draw(chains(k, k, batch, torch.float64))
        X, D = X + S, D + G
        Y, H = draw(cats())
        k2 = min(k, *H.shape[-2:])
        if len(batch) == len(H.shape) - 2 and batch[:1] == tuple(H.shape[:-2]):
            X, D = X[..., :k2, :k2] - 0.5 * Y[..., :k2, :k2], D[..., :k2, :k2] - 0.5 * H[..., :k2, :k2]
    return X, D


def _diag(D: torch.Tensor, offset: int = 0) -> torch.Tensor:
    return torch.diagonal(D, offset=offset, dim1=-2, dim2=-1)


@SETTINGS
@given(cats_at_outer_ends(), st.data())
def test_trace_and_diagonal_of_cats_in_sums_and_products_match_torch(case, data):
    X, D = case
    m, n = D.shape[-2:]
    offset = data.draw(st.integers(-(m - 1), n - 1))
    assert_close(LA.diagonal(X, offset=offset), _diag(D, offset))
    k = min(m, n)
    assert_close(LA.trace(X), _diag(D[..., :k, :k]).sum(-1))


def _symbol_cat(draw, n: int, r: int, axis: int, name: str):
    """A cat of 2-3 rank-``r`` symbol products along ``axis`` filling an ``n x n`` matrix."""
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=1, max_size=2, unique=True)))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    parts = []
    for k, size in enumerate(sizes):
        rows, cols = (n, size) if axis == -1 else (size, n)
        parts.append(lm.symbol(f"{name}L{k}", (rows, r)) @ lm.symbol(f"{name}R{k}", (r, cols)))
    return lm.cat(parts, dim=axis)


@SETTINGS
@given(st.data())
def test_explain_of_cats_in_sums_and_products_of_symbols_never_forms_the_cat(data):
    """On 4096-row rank-``r`` symbols: forming the cat costs ``2 n^2 r`` FLOPs; its parts' blocks
    cost ``O(n r^2)``, here below ``n^2``."""
    n, r = 4096, data.draw(st.integers(1, 8))
    X = _symbol_cat(data.draw, n, r, data.draw(st.sampled_from([-1, -2])), "X")
    X = X.mT if data.draw(st.booleans()) else X
    P, Q = lm.symbol("P", (n, r)), lm.symbol("Q", (r, n))
    kind = data.draw(st.sampled_from(["sum", "cats", "left", "right", "both"]))
    axis = data.draw(st.sampled_from([-1, -2]))
    Y = {"sum": lambda: X + P @ Q, "left": lambda: P @ Q @ X, "right": lambda: X @ P @ Q,
         "both": lambda: P @ Q @ X @ P @ Q,
         "cats": lambda: X - 2 * _symbol_cat(data.draw, n, r, axis, "Y")}[kind]()
    for op in ("trace", "diagonal"):
        planned = lm.explain(Y, op).planned
        assert planned.flops < n * n, (kind, op, planned.flops)
        assert planned.peak_bytes < n * n, (kind, op, planned.peak_bytes)


@pytest.fixture
def sliced_runs(block_counts):
    """The sliced or blocked loops run since the last clear."""
    return block_counts


@settings(SETTINGS, suppress_health_check=list(HealthCheck))
@given(cats_at_outer_ends(), st.sampled_from(["trace", "diagonal"]))
def test_explained_peak_of_cats_in_sums_and_products_is_what_runs(sliced_runs, case, op):
    """explain's peak (the earlier blocks' results held beside the later blocks' networks) is at
    least what torch allocates, a budget of it runs unsliced, one byte less is sliced or refused.
    Blocks a sum forms count the products their parts keep on the leaves, held beside the
    networks (``t3x1 @ t1x2 @ t2x2x4 @ cat([t2x3 - t2x2x3 @ t3x3 @ t3x3, t1x3, t1x3])``: 264 B
    named, 280 B allocated)."""
    X, D = case
    k = min(D.shape[-2:])
    X, D = X[..., :k, :k], D[..., :k, :k]
    assume(not _copies_a_view(X))
    out = _check_peak(X, op, sliced_runs)
    assert_close(out, _diag(D) if op == "diagonal" else _diag(D).sum(-1))
