"""``(A @ B)[rows, cols]`` of rank r is the row-wise dot of ``A[rows]`` and ``B[:, cols]``:
the diagonal of ``X[rows][:, cols]`` as a closed network, ``2 P r`` FLOPs for ``P`` pairs, and
no ``P x P`` (nor ``m x n``) matrix; explain shows that route on ``X[rows][:, cols]``."""

import torch

import lazymat as lm
import lazymat.linalg.norms as norms
from lazymat.allocated import Allocated

from conftest import assert_close


def test_paired_rows_and_columns_of_a_product_are_row_wise_dots(monkeypatch):
    g = torch.Generator().manual_seed(0)
    m, r, n, P = 2000, 8, 3000, 500
    A = torch.randn(3, m, r, generator=g, dtype=torch.float64)
    B = torch.randn(r, n, generator=g, dtype=torch.float64)
    X = lm.lazy(A, name="A") @ lm.lazy(B, name="B")
    rows = torch.randperm(m, generator=g)[:P]  # distinct rows: every pair is distinct
    cols = torch.randint(0, n, (P,), generator=g)
    seen = []
    diagonal = norms.diagonal
    monkeypatch.setattr(norms, "diagonal", lambda x: seen.append(x) or diagonal(x))
    got = X[:, rows, cols]
    assert_close(got, (A @ B)[:, rows, cols])
    assert len(seen) == 1 and tuple(seen[0].shape) == (3, P, P)  # the (lazy) pairs' square, never formed
    report = lm.explain(seen[0], "diagonal")
    assert report.planned.flops == 3 * 2 * P * r
    # the gathered rows and columns and the answer (qa24: their copies are counted), not (3, P, P) = 6 MB
    assert report.planned.peak_bytes <= 2 * (3 * P * r + P * r + 3 * P) * 8
    with Allocated() as held:
        diagonal(seen[0])
    assert held.peak <= report.planned.peak_bytes  # what runs is within what explain reports
    assert "diag(A[" in str(report)
    assert report.planned.flops * 100 < lm.explain(X, "to_dense").planned.flops


def test_a_sum_with_a_lone_leaf_splits_its_terms(monkeypatch):
    """``(A @ B + C)[rows, cols]``: the product's pairs by the diagonal, the leaf's read from it."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(40, 3, generator=g, dtype=torch.float64)
    B = torch.randn(3, 50, generator=g, dtype=torch.float64)
    C = torch.randn(2, 40, 50, generator=g, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B) + lm.lazy(C)
    rows, cols = [[3], [7], [3]], [[0, 49, 5, 5], [5, 0, 0, 49], [49, 0, 5, 5]]
    seen = []
    diagonal = norms.diagonal
    monkeypatch.setattr(norms, "diagonal", lambda x: seen.append(x) or diagonal(x))
    got = X[1, rows, cols]
    assert_close(got, (A @ B + C)[1, rows, cols])
    assert len(seen) == 1 and tuple(seen[0].shape)[-2:] == (6, 6)  # the 6 distinct pairs
