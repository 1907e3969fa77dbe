"""explain's memory figures for det, slogdet, inv, solve and lstsq against the bytes torch
allocates (qa19, session 14), counted by :class:`lazymat.allocated.Allocated` (every storage a
torch op makes, from its allocation to its release). Before, the naive dense route left out
the LU's copy of the matrix (a 4 x 4 det's naive peak was its 8-byte answer, so lazymat's
188 bytes read "23.5x more memory"), and a structurally singular det left out the two ones
vectors of its ``1^T X 1`` check (136 bytes reported, 392 allocated)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import lazymat as lm
from lazymat.allocated import Allocated

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPES = [[(4, 4)], [(3, 16, 16)], [(2, 12, 20), (20, 12)], [(24, 24), (24, 24)], [(9, 9), (2, 9, 9)]]
TORCH = {"det": torch.linalg.det, "slogdet": torch.linalg.slogdet, "inv": torch.linalg.inv}


def _product(shapes: list[tuple], dtype: torch.dtype, g: torch.Generator) -> lm.Expr:
    X = None
    for shape in shapes:
        f = lm.lazy(torch.randn(*shape, generator=g, dtype=dtype))
        X = f if X is None else X @ f
    return X


@SETTINGS
@given(shapes=st.sampled_from(SHAPES), op=st.sampled_from(["det", "slogdet", "inv", "solve"]),
       dtype=st.sampled_from([torch.float64, torch.complex128, torch.float32]), seed=st.integers(0, 99))
def test_naive_dense_route_counts_the_lu_copy(shapes, op, dtype, seed):
    """Property: the naive route's peak (the matrix formed, torch's LU of it) is at least what
    torch allocates for ``X.to_dense()`` then its call, and for det, slogdet and solve at most
    16 bytes a member more (the report's int32 status and the answer's scalars against the few
    torch allocates: a slack of one status and one scalar per member). torch's inv writes its
    LU where the counter cannot see it: its figure is an upper bound only."""
    g = torch.Generator().manual_seed(seed)
    X = _product(shapes, dtype, g)
    B = torch.randn(*X.shape[:-1], 2, generator=g, dtype=dtype)
    naive = lm.explain(X, op, **({"k": 2} if op == "solve" else {})).naive[0].peak_bytes
    with Allocated() as counted:
        D = X.to_dense()
        torch.linalg.solve(D, B) if op == "solve" else TORCH[op](D)
        del D
    members = max(1, X.shape[:-2].numel())
    assert counted.peak <= naive, (counted.peak, naive)
    if op != "inv":
        assert naive - counted.peak <= 16 * members, (counted.peak, naive)


@SETTINGS
@given(m=st.integers(3, 24), r=st.integers(1, 6), batch=st.sampled_from([(), (3,)]),
       op=st.sampled_from(["det", "slogdet"]), dtype=st.sampled_from([torch.float64, torch.complex128]),
       seed=st.integers(0, 99))
def test_structurally_singular_det_peak_is_what_runs(m, r, batch, op, dtype, seed):
    """Property: a structurally singular det (``m x r @ r x m``, ``r < m``) allocates exactly the
    peak explain reports (the ones vectors, the ``1^T X 1`` product's steps, the zeros)."""
    if r >= m:
        return
    g = torch.Generator().manual_seed(seed)
    X = _product([(*batch, m, r), (r, m)], dtype, g)
    planned = lm.explain(X, op).planned.peak_bytes
    with Allocated() as counted:
        getattr(lm.linalg, op)(X)
    assert counted.peak <= planned, (counted.peak, planned)
    assert planned - counted.peak <= 16 * max(1, X.shape[:-2].numel()), (counted.peak, planned)


def test_lstsq_naive_route_counts_lapacks_copies():
    """The naive lstsq route holds LAPACK's copies of X and B beside the formed X: a 4 x 4 leaf's
    naive peak is no longer just its answer."""
    X = lm.lazy(torch.randn(6, 4, dtype=torch.float64))
    naive = lm.explain(X, "lstsq", k=2).naive[0].peak_bytes
    assert naive >= (6 * 4 + 6 * 2) * 8


@SETTINGS
@given(n=st.integers(2, 40), k=st.integers(1, 3), own=st.sampled_from([(), (2,), (2, 1)]),
       extra=st.sampled_from([(), (5,), (3, 2)]), chain=st.booleans(), vector=st.booleans(),
       seed=st.integers(0, 99))
def test_solve_with_b_batch_dims_is_explained_and_budgeted(n, k, own, extra, chain, vector, seed):
    """Property: ``explain(X, "solve", B=B)`` counts the batch dims ``B`` adds to ``X``'s (before,
    ``k=`` alone costed ``B`` with ``X``'s batch, and so did solve's budget check): at a budget
    ``b`` (explain's peak, and one byte less), solve runs exactly when the peak explain reports
    at ``b`` is within ``b`` (the route may change with the budget), the bytes torch allocates
    for it stay within that peak, and its answer is torch's."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(*own, n, n, generator=g, dtype=torch.float64) + n * torch.eye(n, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(torch.eye(n, dtype=torch.float64) * 2) if chain else lm.lazy(A)
    B = torch.randn(*extra, *own, n, generator=g, dtype=torch.float64)
    B = B if vector and not extra and not own else B.unsqueeze(-1).expand(*B.shape, k).clone()
    whole = lm.explain(X, "solve", B=B).planned.peak_bytes
    for budget in (whole, whole - 1):
        try:
            peak = lm.explain(X, "solve", B=B, memory_budget=budget).planned.peak_bytes
        except lm.BudgetTooSmall:  # explain refuses where the call does (linalg.systems.lu_route)
            peak = budget + 1
        if peak > budget:
            with pytest.raises(lm.BudgetTooSmall):
                lm.linalg.solve(X, B, memory_budget=budget)
            continue
        with Allocated() as counted:
            Y = lm.linalg.solve(X, B, memory_budget=budget)
        assert counted.peak - Y.untyped_storage().nbytes() <= peak, (counted.peak, peak)
        torch.testing.assert_close(Y, torch.linalg.solve(X.to_dense(), B))


def test_explain_b_option_checks_its_shape():
    X = lm.lazy(torch.randn(2, 6, 4, dtype=torch.float64))
    report = lm.explain(X, "lstsq", B=(3, 2, 6, 5))
    assert report.rows[-1].output == (3, 2, 4, 5)
    assert lm.explain(X, "lstsq", B=(2, 6)).rows[-1].output == (2, 4, 1)  # a batch of vectors
    with pytest.raises(ValueError, match=r"takes a B of 6 rows and k=2 columns, got B \(3, 2, 6, 5\)"):
        lm.explain(X, "lstsq", B=(3, 2, 6, 5), k=2)


class _SumReads(TorchDispatchMode):
    """Counts the entries that torch's sum reductions read."""

    def __init__(self) -> None:
        super().__init__()
        self.entries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.sum:
            self.entries += args[0].numel()
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("batch", [(), (3,)])
def test_det_check_flops_are_what_runs(batch):
    """The inf/NaN check of a det of several square segments reads its answer back (edge15: a
    segment's det is NaN or inf where an entry is), no segment's entries: explain's LU rows
    carry the LUs' FLOPs alone, and the only sum reduction while the det runs is the batch's
    dets' (edge13's check summed each segment's entries)."""
    g = torch.Generator().manual_seed(4)
    n = 120
    X = _product([(*batch, n, n), (n, n)], torch.float64, g)
    report = lm.explain(X, "det")
    assert "2 square segments" in report.planned.note
    lu_rows = [row for row in report.rows if "(LU)" in row.op]
    with _SumReads() as counted:
        lm.linalg.det(X)
    members = max(1, math.prod(batch))
    lus = sum(round(2 * n**3 / 3 * (members if i == 0 else 1)) for i, _ in enumerate(lu_rows))
    assert counted.entries == (members if members > 1 else 0)  # the dets' sum, read back
    assert sum(row.flops for row in lu_rows) == lus
