"""The minimum a spectral call's ``BudgetTooSmall`` names is a budget it runs within: for the
spectral and nuclear norms, the condition number, the rank, the singular values, the SVD and the
pseudo-inverse of
random small products (batched or not, leaves without gradients), the named minimum runs,
allocates at most that many bytes beside its result (counted by the budget tests' dispatch mode;
the result is the caller's, as for ``to_dense``) and matches dense float64; one byte less is
refused, or runs within it (a compiled small call, warm from an earlier call of the shape, checks
its own figure).

``torch.linalg.svdvals`` forms ``U`` and ``Vh`` too whenever a dispatch mode is on: the budget
named 96 B for the nuclear norm of ``(3,2) @ (2,3)`` and the call allocated 240 B. A batch run in
blocks held every block's result and then their assembly, thresholded its values with a dozen
device tensors beside them, and factorised a tall leaf its blocks (on the dense route) never
read: svdvals of ``(3,4) @ (3,4,4)`` named 120 B and allocated 168 B beside its result. pinv
named the SVD's minimum and then formed ``U / S`` beside the spectrum: 664 B named, 704 B used
for ``(2,2,4,3) @ (2,2,3,2)``.
"""

from unittest import mock

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget_minimum_exact import named_minimum
from test_budget_peak import Allocated

import lazymat as lm
from lazymat import linalg as LA
from lazymat.expr import leaves

from conftest import assert_close

OPS = {
    "nuc": (lambda X, **k: LA.matrix_norm(X, "nuc", **k), lambda D: torch.linalg.matrix_norm(D, "nuc")),
    "2": (lambda X, **k: LA.matrix_norm(X, 2, **k), lambda D: torch.linalg.matrix_norm(D, 2)),
    "cond": (lambda X, **k: LA.cond(X, **k), torch.linalg.cond),
    "svdvals": (lambda X, **k: LA.svdvals(X, **k), None),
    "rank": (lambda X, **k: LA.matrix_rank(X, **k), None),
    "svd": (lambda X, **k: LA.svd(X, **k), None),
    "pinv": (lambda X, **k: LA.pinv(X, **k), torch.linalg.pinv),
}


def _bytes(out) -> int:
    """Bytes of a call's result (a tensor, the tensors of a tuple, or the leaves of a lazy
    product: pinv's factors)."""
    if isinstance(out, torch.Tensor):
        return out.untyped_storage().nbytes()
    if isinstance(out, lm.Expr):
        return sum(leaf.tensor.untyped_storage().nbytes() for leaf in leaves(out))
    return sum(t.untyped_storage().nbytes() for t in out)


@st.composite
def products(draw):
    """(lazy, dense) products of 2-3 float64 leaves of 1-4 rows/columns, unbatched or some of
    them with a batch of one to four."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = draw(st.integers(2, 3))
    dims = [draw(st.integers(1, 4)) for _ in range(n + 1)]
    batch = draw(st.sampled_from([(), (2,), (3,), (2, 2)]))
    X = D = None
    for i in range(n):
        shape = (*(batch if draw(st.booleans()) else ()), dims[i], dims[i + 1])
        t = torch.randn(*shape, generator=g, dtype=torch.float64)
        X, D = (lm.lazy(t), t) if X is None else (X @ lm.lazy(t), D @ t)
    return X, D


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(products(), st.sampled_from(sorted(OPS)))
def test_a_spectral_calls_named_minimum_runs_within_itself(pair, op):
    X, D = pair
    fn, dense = OPS[op]
    minimum = named_minimum(X, fn)
    if minimum > 1:  # one byte less: refused, or another route (the compiled small call's) runs within it
        X.clear_cache()
        try:
            with Allocated() as counter:
                less = fn(X, memory_budget=minimum - 1)
        except lm.BudgetTooSmall:
            pass
        else:
            assert counter.peak - _bytes(less) <= minimum - 1, (counter.peak, minimum, op, tuple(X.shape))
    X.clear_cache()
    with Allocated() as counter:
        out = fn(X, memory_budget=minimum)
    assert counter.peak - _bytes(out) <= minimum, (counter.peak, _bytes(out), minimum, op, tuple(X.shape))
    S = torch.linalg.svdvals(D)
    if op == "cond":  # a rank-deficient product's is inf (torch: a huge number from rounding noise)
        deficient = torch.linalg.matrix_rank(D) < min(D.shape[-2:])
        assert_close(out, torch.where(deficient, torch.inf, torch.linalg.cond(D)))
    elif dense is not None:
        assert_close(out.to_dense() if isinstance(out, lm.Expr) else out, dense(D))
    elif op == "rank":
        assert torch.equal(out, torch.linalg.matrix_rank(D))
    elif op == "svd":
        U, S_, Vh = out
        assert_close(S_, S[..., :S_.shape[-1]])
        assert_close(U @ torch.diag_embed(S_) @ Vh, D)
    else:
        assert_close(out, S[..., :out.shape[-1]])



@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(2, 3), st.lists(st.sampled_from([(), (1,), (0,)]), min_size=2, max_size=3),
       st.sampled_from(["svdvals", "svd"]), st.sampled_from([1, 64, 120, 160, 165, 200, 400]),
       st.integers(0, 2**16))
def test_peaks_kept_by_structure_are_the_routes_own(n, batches, op, budget, seed):
    """The route peaks kept by structure (linalg.peaks._PEAKS, shared by expressions of the same
    shapes) equal explain's for the expression at hand, whichever were kept before: the first
    member of a batch of 2 or 3 (the same view shapes and ops, a block of leaves of other
    shapes) once found another's peak, and the minimum named for a batch moved between calls
    (165 B, then 168 B)."""
    g = torch.Generator().manual_seed(seed)
    X = None
    for b in batches:  # (0,): a batch of n
        t = lm.lazy(torch.randn(*(n if size == 0 else size for size in b), 2, 2, generator=g,
                                dtype=torch.float64))
        X = t if X is None else X @ t
    X = X[0:1] if X.ndim > 2 else X
    with lm.config(memory_budget=budget), mock.patch.object(LA.costs, "DENSE_MAX_ELEMENTS", 0):
        kept = LA.peaks._route_costs(X, op)
        X.clear_cache()
        try:
            route = lm.explain(X, op).planned
        except lm.BudgetTooSmall as err:
            route = lm.explain(X, op, memory_budget=err.minimum).planned
    assert kept == (route.peak_bytes, route.flops), (kept, route, tuple(X.shape))


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(products(), st.booleans())
def test_pinvs_named_minimum_counts_what_it_forms_after_its_spectrum(pair, tight):
    """pinv holds its spectrum (the SVD's answer) while it forms ``U / S`` (a dense answer) or
    the reciprocals (a lazy one): the named minimum (``tight``), or any budget its spectrum's
    blocks fit, runs within itself and matches ``torch.linalg.pinv`` in float64."""
    X, D = pair
    fn = OPS["pinv"][0]
    budget = named_minimum(X, fn)
    if not tight:
        X.clear_cache()
        budget = named_minimum(X, OPS["svd"][0])  # the SVD's minimum: pinv runs or refuses
    X.clear_cache()
    try:
        with Allocated() as counter:
            out = fn(X, memory_budget=budget)
    except lm.BudgetTooSmall as err:
        assert not tight and err.minimum > budget, (err.minimum, budget)
        return
    assert counter.peak - _bytes(out) <= budget, (counter.peak, _bytes(out), budget, tuple(X.shape))
    assert_close(out.to_dense() if isinstance(out, lm.Expr) else out, torch.linalg.pinv(D))


def test_pinv_of_a_batch_in_blocks_counts_the_scaled_side(gen):
    """``(2,2,4,3) @ (2,2,3,2)``: the minimum named was the SVD's (664 B), and the dense answer's
    ``U / S`` formed beside the whole spectrum made 704 B."""
    A = torch.randn(2, 2, 4, 3, generator=gen, dtype=torch.float64)
    B = torch.randn(2, 2, 3, 2, generator=gen, dtype=torch.float64)
    X = lm.lazy(A) @ lm.lazy(B)
    minimum = named_minimum(X, LA.pinv)
    X.clear_cache()
    with Allocated() as counter:
        out = LA.pinv(X, memory_budget=minimum)
    assert counter.peak - _bytes(out) <= minimum, (counter.peak, minimum)
    assert_close(out, torch.linalg.pinv(A @ B))
