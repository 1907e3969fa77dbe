"""Small matrices: whether an expression is decomposed dense (formed, then LAPACK on the matrix)
or reduced (one QR of its longer side first) rather than by its factors, decided by the
measured costs (:mod:`.costs`) and the memory budget, and kept per structure (``_ROUTES``)."""
from __future__ import annotations

import contextvars
import math
from typing import Any

import torch

from .. import settings
from ..core import factor, shared_outer
from ..execute import device_budget
from ..expr import Expr, Leaf
from ..rewrite import View, canonical, term_expr
from ..settings import BudgetTooSmall
from . import costs
from ._common import _form, _inner_width
from .costs import (
    FACTORED_OVER_REDUCED_FLOPS,
    FACTORED_OVERHEAD_FLOPS,
    REDUCED_OVERHEAD_FLOPS,
    SQUARE_OPS,
    _square_spans,
    small_route,
    small_route_flops,
    square_route_flops,
)
from .peaks import _fits, _peak_bound


def dense_is_cheaper(x: Expr, op: str = "svdvals", k: int = 0, rhs: tuple | None = None) -> bool:
    """True when ``op`` (``"svdvals"`` for every answer read off the singular values: rank,
    pinv, cond, the nuclear and spectral norms; ``"svd"``; ``"matrix_norm"`` for the Frobenius
    norm; :data:`SQUARE_OPS`, ``"det"``, ``"slogdet"``, ``"solve"`` with ``k`` right-hand sides) on ``x``
    runs on the materialised matrix: over the batch, the dense route's FLOPs are at most the
    factored route's plus :data:`FACTORED_OVERHEAD_FLOPS` (a per-call cost, per square segment
    beyond the first for the square ops; see :func:`small_route_flops`,
    :func:`square_route_flops`), each matrix has at most :data:`DENSE_MAX_ELEMENTS`
    elements, the materialised batch fits the memory budget, and no sum sits inside a product
    (the rounding floor of a dense sum, :func:`_sum_floor`, is known only for a sum of
    products).

    Under a budget the generous bound may not fit where the dense route does: it is then
    weighed by its own peak (a square op's, :func:`_formed_fits`, ``rhs`` the shape of a ``B``
    whose batch dims ``solve`` broadcasts past ``x``'s), so a route that fits is taken.

    Asked on every call: for a single product of leaf views the part fixed by the structure
    (the FLOPs, and whether the generous peak bound fits without asking the device) is decided
    once per :attr:`_Form.key` and kept in a small table (:data:`_ROUTES_KEPT` decisions)."""
    key = _form(x).key
    if key is None:
        cheaper, small = _cheaper_by_flops(x, op), False
    else:
        key = (op, key, costs.DENSE_MAX_ELEMENTS, FACTORED_OVERHEAD_FLOPS.get(op),
               REDUCED_OVERHEAD_FLOPS.get(op), FACTORED_OVER_REDUCED_FLOPS.get(op), k)
        hit = _ROUTES.get(key)
        if hit is None:
            hit = _remember(key, (_cheaper_by_flops(x, op, k), _peak_bound(x, op, k) <= settings.ALWAYS_FITS))
        cheaper, small = hit
    if not cheaper:
        return False
    if small and settings.get("memory_budget") is None:
        return True
    # the generous bound settles it without a schedule unless the budget is tight; then the dense
    # route's own peak (the budget check of the route taken follows: _lu_in_blocks for a square op)
    if _fits(x, _peak_bound(x, op, k))[0]:
        return True
    return _formed_fits(x, op, k, rhs) if op in SQUARE_OPS else _fits(x, _dense_peak(x, op))[0]


# set while explain schedules the formed route of a square op for _formed_fits: _square_parts
# then answers (1, [x]) without asking dense_is_cheaper
_FORMING: contextvars.ContextVar[bool] = contextvars.ContextVar("forming", default=False)


def _formed_fits(x: Expr, op: str, k: int, rhs: tuple | None) -> bool:
    """Whether the formed route of the square op ``op`` (``x`` formed whole, one LU; ``k``
    right-hand sides, of shape ``rhs`` where ``B`` adds batch dims) fits the active budget on
    the whole batch, by :func:`lazymat.explain`'s schedule of it under that budget: the figure
    :func:`_lu_in_blocks` checks it against. Cached on ``x`` by the budget."""
    from ..explain import whole_batch  # explain reads linalg's routes: imported on use

    budget = device_budget(x.device)
    key = ("formed fits", op, k, rhs, budget)
    hit = x._cache.get(key)
    if hit is None:
        options = ({"k": k} if rhs is None else {"B": rhs}) if op == "solve" else {}
        token = _FORMING.set(True)
        try:
            hit = whole_batch(x, op, **options).planned.peak_bytes <= budget
        except BudgetTooSmall:  # no slicing of the product's formation fits
            hit = False
        finally:
            _FORMING.reset(token)
        x._cache[key] = hit
    return hit


# Route decisions by structure (no tensors held), the oldest dropped first: dense_is_cheaper's
# (op, _Form.key, the constants it reads) -> (cheaper by FLOPs, peak bound within
# settings.ALWAYS_FITS); _rotated_core's ("eig split", _Form.key) -> factor's split.
_ROUTES: dict[tuple, Any] = {}
_ROUTES_KEPT = 1024


def _remember(key: tuple, decision: Any) -> Any:
    """``decision`` stored in :data:`_ROUTES` under ``key`` (the oldest dropped past
    :data:`_ROUTES_KEPT`), and returned."""
    _ROUTES[key] = decision
    if len(_ROUTES) > _ROUTES_KEPT:
        del _ROUTES[next(iter(_ROUTES))]
    return decision


def _cheaper_by_flops(x: Expr, op: str, k: int = 0) -> bool:
    """The part of :func:`dense_is_cheaper` that the shapes decide: element count, no nested
    block, and the FLOPs with the factored route's per-call cost."""
    m, n = x.shape[-2], x.shape[-1]
    if not 0 < m * n <= costs.DENSE_MAX_ELEMENTS:
        return False
    form = _form(x)
    if form.nested:
        return False
    if op in SQUARE_OPS:
        dense, factored, calls = square_route_flops(x, op, k)
        return calls > 0 and dense - factored <= calls * FACTORED_OVERHEAD_FLOPS[op]
    if op == "matrix_norm" and form.terms > 1:
        op = "svdvals"  # a sum's Frobenius norm is read off its singular values
    factored = small_route_flops(m, n, min(m, n, _inner_width(x)), op)[1]
    route, cost = _small_route(x, op)
    overhead = (FACTORED_OVERHEAD_FLOPS if route == "dense" else FACTORED_OVER_REDUCED_FLOPS)[op]
    return cost - math.prod(x.shape[:-2]) * factored <= overhead


def _small_route(x: Expr, op: str) -> tuple[str, float]:
    """:func:`small_route` of ``x``: the reduced routes only for a single product (a sum's
    factors are stacked; its dense route keeps :func:`_sum_floor`) with no batched side ending
    in a tall leaf the batch shares (:func:`_shares_outer_leaf`)."""
    m, n = x.shape[-2], x.shape[-1]
    single = _form(x).width is not None and not _shares_outer_leaf(x)
    return small_route(m, n, min(m, n, _inner_width(x)), math.prod(x.shape[:-2]), op, single)


def _shares_outer_leaf(x: Expr) -> bool:
    """Whether a batched side of ``factor(x)`` ends in a tall leaf that the batch shares
    (:func:`lazymat.core.shared_outer`, ``W_E`` at both ends of a batch of heads): the factored
    route factorises that leaf once for the batch (:func:`lazymat.core.outer_reductions`) where
    the reduced route factorises every member's side, a saving the small routes' FLOP counts do
    not price (144 heads of ``96 x 32 @ 32 x 4 @ 4 x 32 @ 32 x 96``: reduced 2.7 ms, factored
    2.1 ms under load), so such a product keeps the dense or factored route. Read off the
    structure, not the batch's size: a block of the batch (a memory budget's, even of one
    member) decides as the whole batch, so its answers (the vectors' signs) are the same."""
    if len(x.shape) == 2:
        return False
    L, R = factor(x)
    return any(len(side.shape) > 2 and shared_outer(side, adjoint) is not None
               for side, adjoint in ((L, False), (R, True)))


def small_reduction(x: Expr, op: str) -> str | None:
    """``"right"`` or ``"left"``, the side whose QR the small route of ``op`` on ``x`` reduces
    (:func:`small_route`), or None for the whole matrix materialised. Asked only of a matrix
    :func:`dense_is_cheaper` sends to the small route."""
    if op not in REDUCED_OVERHEAD_FLOPS:
        return None
    route = _small_route(x, op)[0]
    return None if route == "dense" else route


def _dense_peak(x: Expr, op: str) -> int:
    """Peak bytes of the dense route of ``op`` on the whole batch of ``x``, as
    :func:`lazymat.explain` schedules it (the figure the budget is checked against); cached on
    ``x``."""
    hit = x._cache.get(("dense peak", op))
    if hit is None:
        from ..explain import dense_route_peak  # explain reads linalg's routes: imported on use

        hit = x._cache[("dense peak", op)] = dense_route_peak(x, op)
    return hit


def dense_norm_route(x: Expr) -> bool:
    """Whether :func:`matrix_norm` takes the Frobenius norm of ``x`` from the materialised
    matrix: a single product (a sum's norm is read off its singular values) for which
    :func:`dense_is_cheaper` says so (within the budget; else the factored route, which can be
    sliced to fit)."""
    return _form(x).terms == 1 and dense_is_cheaper(x, "matrix_norm")


def _pinv_is_dense(x: Expr) -> bool:
    """Whether :func:`pinv` answers ``x`` with a tensor: its ``n x m`` matrix holds no more
    numbers than its factors ``V S^-1`` and ``U^H`` at the largest rank the shapes allow."""
    m, n = x.shape[-2], x.shape[-1]
    return n * m <= (n + m) * min(m, n, _inner_width(x))


def _square_parts(x: Expr, op: str | None = None, k: int = 0,
                  rhs: tuple | None = None) -> tuple[Any, list[Expr | View]]:
    """:func:`square_segments` with a segment that is one view of a data leaf left a view:
    :func:`_segment` reads it as it is, without building, planning and running an expression
    (a chain of two 64 x 64 leaves' ``det`` ran ~580 lines of lazymat, ~460 of them to form
    the two segments). With ``op`` (``k`` right-hand sides for ``"solve"``), the segments its
    route factorises: for :data:`SQUARE_OPS`, ``(1, [x])`` (``x`` formed whole) where
    :func:`dense_is_cheaper` says so. ``c`` exact: a :class:`~lazymat.coefficient.Wide` past
    the float range (a number's reader applies it with :func:`_times_coefficient`), tensor
    scales multiplied with the folded number in range (:meth:`Term.times` of a float64 one:
    ``X * 1e200 * 1e200 * t`` with ``t = 1e-300`` is ``1e100``, where ``Term.coefficient``'s
    float product overflowed to inf and ``inv`` answered 0)."""
    c = canonical(x)
    if len(c.terms) != 1:
        return 1, [x]
    t, n = c.terms[0], x.shape[-1]
    spans = _square_spans(t, n)
    if op in SQUARE_OPS and len(spans) > 1 and (_FORMING.get() or dense_is_cheaper(x, op, k, rhs)):
        return 1, [x]
    c = t.times(torch.ones((), dtype=torch.float64, device=x.device)) if t.scalars else t.coef
    return c, [
        t.factors[a] if b == a + 1 and type(t.factors[a].base) is Leaf
        and t.factors[a].base.tensor is not None
        else term_expr(t, t.factors[a:b], with_coef=False) for a, b in spans]
